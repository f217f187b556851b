//! Builds a minimal RFC 6902 patch against the object as received.
//!
//! Rules never edit the input. They ask the builder to set a field or append to
//! an array; the builder checks what exists in the original and emits an `add`
//! for the first missing level only, merging later additions below that level
//! into the value of the same pending operation. So `/spec/securityContext` is
//! created once as a whole object instead of failing on
//! `/spec/securityContext/runAsNonRoot`, and an absent annotation map is added
//! whole. Every operation therefore applies to the original in order, and
//! nothing is cloned but the values being added.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use rustc_hash::FxHashMap;
use serde_json::{Map, Value};

/// One unescaped JSON-pointer token. Every key the engine writes is a
/// constant, so paths are cheap to copy and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Token {
    Key(&'static str),
    Index(usize),
    /// `-`: the end of an array.
    End,
}

/// The JSON pointer for a list of tokens. Keys are escaped as RFC 6901
/// requires (`~` → `~0`, `/` → `~1`): annotation keys such as
/// `kube-hardener.io/applied` contain a `/`.
pub(crate) fn pointer(tokens: &[Token]) -> PointerBuf {
    let mut pointer = PointerBuf::new();
    for token in tokens {
        match *token {
            Token::Key(key) => pointer.push_back(key),
            Token::Index(index) => pointer.push_back(index),
            Token::End => pointer.push_back("-"),
        }
    }
    pointer
}

#[derive(Debug)]
struct Op {
    replace: bool,
    path: Vec<Token>,
    value: Value,
}

/// Records `add` / `replace` operations against `root` (never modified).
#[derive(Debug)]
pub(crate) struct PatchBuilder<'v> {
    root: &'v Value,
    ops: Vec<Op>,
    /// Index into `ops` of the pending `add` at each path. A pod with
    /// thousands of containers adds thousands of operations; a linear search
    /// here made a review cost the square of its container count.
    /// Keyed by the engine's own constant tokens and indices (never by
    /// request-chosen strings), so the unseeded Fx hash is safe and cheap.
    pending: FxHashMap<Vec<Token>, usize>,
}

/// The child of `node` at `token`; `null` counts as absent.
fn child(node: &Value, token: Token) -> Option<&Value> {
    let next = match (node, token) {
        (Value::Object(map), Token::Key(key)) => map.get(key),
        (Value::Array(items), Token::Index(index)) => items.get(index),
        _ => None,
    };
    next.filter(|v| !v.is_null())
}

/// Walks (creating as needed) nested objects inside a value the builder owns.
fn descend<'a>(mut slot: &'a mut Value, rest: &[Token]) -> Option<&'a mut Map<String, Value>> {
    for token in rest {
        let Token::Key(key) = *token else {
            return None;
        };
        slot = slot
            .as_object_mut()?
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    slot.as_object_mut()
}

impl<'v> PatchBuilder<'v> {
    pub(crate) fn new(root: &'v Value) -> Self {
        PatchBuilder {
            root,
            ops: Vec::new(),
            pending: FxHashMap::default(),
        }
    }

    /// Records an `add`; the first one at a path is the one later fields
    /// below that path merge into.
    fn add(&mut self, path: Vec<Token>, value: Value) -> usize {
        let index = self.ops.len();
        // An append (`…/-`) is never a parent that later fields merge into.
        if path.last() != Some(&Token::End) {
            self.pending.entry(path.clone()).or_insert(index);
        }
        self.ops.push(Op {
            replace: false,
            path,
            value,
        });
        index
    }

    /// How many leading tokens of `path` exist in the original object.
    fn existing_depth(&self, path: &[Token]) -> usize {
        let mut node = self.root;
        for (depth, token) in path.iter().enumerate() {
            match child(node, *token) {
                Some(next) => node = next,
                None => return depth,
            }
        }
        path.len()
    }

    /// The value of the pending `add` at exactly `path`, created with `empty`
    /// when there is none yet.
    fn pending(&mut self, path: &[Token], empty: fn() -> Value) -> &mut Value {
        let index = match self.pending.get(path) {
            Some(&index) => index,
            None => self.add(path.to_vec(), empty()),
        };
        &mut self.ops[index].value
    }

    /// Sets `key` to `value` in the object at `parent`, creating `parent` (and
    /// any missing ancestors) when absent. The caller has checked that `key`
    /// is not set in the original.
    pub(crate) fn set(&mut self, parent: &[Token], key: &'static str, value: Value) {
        let depth = self.existing_depth(parent);
        if depth == parent.len() {
            let mut path = parent.to_vec();
            path.push(Token::Key(key));
            self.add(path, value);
            return;
        }
        let (create, rest) = parent.split_at(depth + 1);
        let slot = self.pending(create, || Value::Object(Map::new()));
        if let Some(map) = descend(slot, rest) {
            map.insert(key.to_owned(), value);
        }
    }

    /// Appends `value` to the array at `array`, creating the array (and any
    /// missing ancestors) when absent.
    pub(crate) fn push(&mut self, array: &[Token], value: Value) {
        let depth = self.existing_depth(array);
        if depth == array.len() {
            let mut path = array.to_vec();
            path.push(Token::End);
            self.add(path, value);
            return;
        }
        let (create, rest) = array.split_at(depth + 1);
        let list = match rest.split_last() {
            None => Some(self.pending(create, || Value::Array(Vec::new()))),
            Some((last, between)) => {
                let slot = self.pending(create, || Value::Object(Map::new()));
                match (descend(slot, between), last) {
                    (Some(map), Token::Key(key)) => {
                        Some(map.entry(*key).or_insert_with(|| Value::Array(Vec::new())))
                    }
                    _ => None,
                }
            }
        };
        if let Some(Value::Array(items)) = list {
            items.push(value);
        }
    }

    /// Replaces the existing value at `path`.
    pub(crate) fn replace(&mut self, path: Vec<Token>, value: Value) {
        self.ops.push(Op {
            replace: true,
            path,
            value,
        });
    }

    pub(crate) fn finish(self) -> Patch {
        Patch(
            self.ops
                .into_iter()
                .map(|op| {
                    let path = pointer(&op.path);
                    if op.replace {
                        PatchOperation::Replace(ReplaceOperation {
                            path,
                            value: op.value,
                        })
                    } else {
                        PatchOperation::Add(AddOperation {
                            path,
                            value: op.value,
                        })
                    }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toks(path: &[&'static str]) -> Vec<Token> {
        path.iter()
            .map(|t| t.parse().map_or(Token::Key(t), Token::Index))
            .collect()
    }

    fn ops(builder: PatchBuilder<'_>) -> Value {
        serde_json::to_value(builder.finish()).unwrap()
    }

    #[test]
    fn escapes_tilde_and_slash_in_tokens() {
        let cases = [
            ("plain", "plain"),
            ("kube-hardener.io/applied", "kube-hardener.io~1applied"),
            ("a~b", "a~0b"),
            ("~/", "~0~1"),
            ("/~1", "~1~01"),
        ];
        for (raw, escaped) in cases {
            let raw: &'static str = Box::leak(raw.to_owned().into_boxed_str());
            let tokens = vec![
                Token::Key("metadata"),
                Token::Key(raw),
                Token::Index(3),
                Token::End,
            ];
            assert_eq!(
                pointer(&tokens).as_str(),
                format!("/metadata/{escaped}/3/-")
            );
        }
    }

    #[test]
    fn creates_a_missing_parent_once_and_merges_later_fields_into_it() {
        let root = json!({"spec": {"containers": [{"name": "a"}]}});
        let mut b = PatchBuilder::new(&root);
        let security_context = toks(&["spec", "containers", "0", "securityContext"]);
        b.set(&security_context, "allowPrivilegeEscalation", json!(false));
        b.set(
            &toks(&["spec", "containers", "0", "securityContext", "capabilities"]),
            "drop",
            json!(["ALL"]),
        );
        b.set(&security_context, "readOnlyRootFilesystem", json!(true));
        assert_eq!(
            ops(b),
            json!([{"op": "add", "path": "/spec/containers/0/securityContext", "value": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": true
            }}])
        );
    }

    #[test]
    fn adds_into_existing_objects_and_treats_null_as_missing() {
        let root = json!({"spec": {"securityContext": {"fsGroup": 1}, "os": null}});
        let mut b = PatchBuilder::new(&root);
        b.set(
            &toks(&["spec", "securityContext"]),
            "runAsNonRoot",
            json!(true),
        );
        b.set(&toks(&["spec", "os"]), "name", json!("linux"));
        assert_eq!(
            ops(b),
            json!([
                {"op": "add", "path": "/spec/securityContext/runAsNonRoot", "value": true},
                {"op": "add", "path": "/spec/os", "value": {"name": "linux"}}
            ])
        );
    }

    #[test]
    fn appends_to_existing_arrays_and_creates_missing_ones_whole() {
        let root = json!({"spec": {"volumes": [{"name": "v"}], "containers": [{}]}});
        let mut b = PatchBuilder::new(&root);
        b.push(&toks(&["spec", "volumes"]), json!({"name": "a"}));
        b.push(&toks(&["spec", "volumes"]), json!({"name": "b"}));
        b.push(
            &toks(&["spec", "containers", "0", "volumeMounts"]),
            json!(1),
        );
        b.push(
            &toks(&["spec", "containers", "0", "volumeMounts"]),
            json!(2),
        );
        b.push(
            &toks(&[
                "spec",
                "containers",
                "0",
                "securityContext",
                "capabilities",
                "drop",
            ]),
            json!("ALL"),
        );
        assert_eq!(
            ops(b),
            json!([
                {"op": "add", "path": "/spec/volumes/-", "value": {"name": "a"}},
                {"op": "add", "path": "/spec/volumes/-", "value": {"name": "b"}},
                {"op": "add", "path": "/spec/containers/0/volumeMounts", "value": [1, 2]},
                {"op": "add", "path": "/spec/containers/0/securityContext",
                 "value": {"capabilities": {"drop": ["ALL"]}}}
            ])
        );
    }

    #[test]
    fn every_patch_it_builds_applies_to_the_original() {
        let root = json!({"metadata": {}, "spec": {"containers": [{"name": "a"}]}});
        let mut b = PatchBuilder::new(&root);
        b.set(&toks(&["metadata", "annotations"]), "x/y", json!("1"));
        b.set(
            &toks(&["spec", "securityContext"]),
            "runAsNonRoot",
            json!(true),
        );
        b.set(
            &toks(&["spec", "securityContext", "seccompProfile"]),
            "type",
            json!("RuntimeDefault"),
        );
        b.push(&toks(&["spec", "volumes"]), json!({"name": "t"}));
        b.replace(toks(&["spec", "containers", "0", "name"]), json!("b"));
        let patch = b.finish();
        let mut doc = root.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"annotations": {"x/y": "1"}}, "spec": {
                "containers": [{"name": "b"}],
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "volumes": [{"name": "t"}]
            }})
        );
    }
}
