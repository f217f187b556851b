//! Typed, shape-checked reads from the raw JSON.
//!
//! The engine never deserializes into Kubernetes types (that would drop unknown
//! fields), so every read goes through these helpers: a value of the wrong JSON
//! type becomes an [`EngineError::WrongType`] naming the field, and `null` counts
//! as "not set", as it does for the API server.

use serde_json::{Map, Value};

use crate::EngineError;

pub(crate) type Object = Map<String, Value>;

/// `base.key`, or `key` at the root.
pub(crate) fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

fn wrong(base: &str, key: &str, expected: &'static str) -> EngineError {
    EngineError::WrongType {
        path: join(base, key),
        expected,
    }
}

/// The value under `key`, treating an explicit `null` as absent.
pub(crate) fn present<'v>(map: &'v Object, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

pub(crate) fn object<'v>(
    map: &'v Object,
    base: &str,
    key: &str,
) -> Result<Option<&'v Object>, EngineError> {
    match present(map, key) {
        None => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(wrong(base, key, "an object")),
    }
}

pub(crate) fn array<'v>(
    map: &'v Object,
    base: &str,
    key: &str,
) -> Result<Option<&'v Vec<Value>>, EngineError> {
    match present(map, key) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(wrong(base, key, "an array")),
    }
}

pub(crate) fn boolean(map: &Object, base: &str, key: &str) -> Result<Option<bool>, EngineError> {
    match present(map, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(wrong(base, key, "a boolean")),
    }
}

pub(crate) fn integer(map: &Object, base: &str, key: &str) -> Result<Option<i64>, EngineError> {
    match present(map, key) {
        None => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong(base, key, "an integer")),
    }
}

pub(crate) fn string<'v>(
    map: &'v Object,
    base: &str,
    key: &str,
) -> Result<Option<&'v str>, EngineError> {
    match present(map, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong(base, key, "a string")),
    }
}

/// Items of an array that must all be objects (containers, volumes, mounts).
pub(crate) fn objects<'v>(
    map: &'v Object,
    base: &str,
    key: &str,
) -> Result<Vec<&'v Object>, EngineError> {
    let Some(items) = array(map, base, key)? else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_object().ok_or_else(|| EngineError::WrongType {
                path: format!("{}[{i}]", join(base, key)),
                expected: "an object",
            })
        })
        .collect()
}

/// Items of an array that must all be strings (capability lists).
pub(crate) fn strings<'v>(
    map: &'v Object,
    base: &str,
    key: &str,
) -> Result<Option<Vec<&'v str>>, EngineError> {
    let Some(items) = array(map, base, key)? else {
        return Ok(None);
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().ok_or_else(|| EngineError::WrongType {
                path: format!("{}[{i}]", join(base, key)),
                expected: "a string",
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Cuts user-controlled text so rendered warnings stay short (the API server
/// truncates long admission warnings and drops them past a total size).
pub(crate) fn clip(text: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..cut])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::rules::test_support::object as map;

    #[test]
    fn null_counts_as_absent_for_every_reader() {
        let m = map(json!({"k": null}));
        assert_eq!(object(&m, "a", "k"), Ok(None));
        assert_eq!(array(&m, "a", "k"), Ok(None));
        assert_eq!(boolean(&m, "a", "k"), Ok(None));
        assert_eq!(integer(&m, "a", "k"), Ok(None));
        assert_eq!(string(&m, "a", "k"), Ok(None));
        assert_eq!(strings(&m, "a", "k"), Ok(None));
        assert_eq!(objects(&m, "a", "k"), Ok(Vec::new()));
    }

    #[test]
    fn wrong_types_name_the_field_and_the_expected_type() {
        let m = map(json!({"k": "text", "list": [1, {"x": 1}], "n": 1.5}));
        let cases: Vec<(Result<(), EngineError>, &str, &str)> = vec![
            (object(&m, "spec", "k").map(drop), "spec.k", "an object"),
            (array(&m, "spec", "k").map(drop), "spec.k", "an array"),
            (boolean(&m, "spec", "k").map(drop), "spec.k", "a boolean"),
            (integer(&m, "spec", "k").map(drop), "spec.k", "an integer"),
            (integer(&m, "spec", "n").map(drop), "spec.n", "an integer"),
            (string(&m, "", "list").map(drop), "list", "a string"),
            (
                objects(&m, "spec", "list").map(drop),
                "spec.list[0]",
                "an object",
            ),
            (
                strings(&m, "spec", "list").map(drop),
                "spec.list[0]",
                "a string",
            ),
        ];
        for (result, path, expected) in cases {
            assert_eq!(
                result,
                Err(EngineError::WrongType {
                    path: path.to_owned(),
                    expected
                })
            );
        }
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééééé", 2), "éé…");
        assert_eq!(clip(&"x".repeat(300), 40).chars().count(), 41);
    }
}
