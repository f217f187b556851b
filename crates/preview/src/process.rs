//! From documents to per-object outcomes: List expansion, namespace
//! resolution and the engine.

use std::collections::BTreeMap;

use kube_hardener_engine::{Context, Outcome, Policy, harden};
use serde_json::Value;

use crate::PreviewError;
use crate::input::{Document, Location};

/// Kinds that live outside namespaces, so no namespace is shown for them.
/// Only the common built-ins: an unknown cluster-scoped CRD merely shows the
/// default namespace next to its name, which changes nothing else.
const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CSIDriver",
    "CSINode",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "IngressClass",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

/// How objects without `metadata.namespace` and namespaces without a
/// Namespace object in the input are treated.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Namespace of objects that do not name one.
    pub default_namespace: String,
    /// Annotations of every namespace that has no Namespace object in the input.
    pub namespace_annotations: BTreeMap<String, String>,
    /// What the input's images run as (`--resolve-images`); `None` keeps
    /// preview offline and decides `runAsNonRoot` without them.
    pub images: Option<kube_hardener_engine::ImageFacts>,
}

/// One object (a document, or an item of a List document) and what the
/// engine would do to it.
#[derive(Debug, Clone)]
pub struct ObjectReport {
    pub location: Location,
    pub kind: String,
    pub api_version: Option<String>,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// `metadata.name`, or `generateName` followed by `*`.
    pub name: Option<String>,
    pub outcome: Outcome,
}

impl ObjectReport {
    pub fn changed(&self) -> bool {
        !self.outcome.patch.0.is_empty()
    }

    /// `Kind namespace/name` or `Kind name`, as people write it.
    pub fn identity(&self) -> String {
        let name = self.name.as_deref().unwrap_or("<unnamed>");
        match &self.namespace {
            Some(namespace) => format!("{} {namespace}/{name}", self.kind),
            None => format!("{} {name}", self.kind),
        }
    }
}

/// A document with the reports of the object(s) it holds.
#[derive(Debug, Clone)]
pub struct DocumentReport {
    pub location: Location,
    /// The document exactly as read.
    pub original: Value,
    /// Items of a List document, in order; otherwise exactly one object.
    pub objects: Vec<ObjectReport>,
    pub is_list: bool,
}

impl DocumentReport {
    /// The object `object` of this document as read.
    pub fn original_object(&self, object: &ObjectReport) -> &Value {
        match object.location.item {
            Some(item) => self
                .original
                .get("items")
                .and_then(|items| items.get(item - 1))
                .unwrap_or(&Value::Null),
            None => &self.original,
        }
    }

    /// The object `object` with its patch applied; `None` when unchanged.
    /// Computed on demand: only the yaml and diff outputs need it, and a
    /// copy per object is the largest cost of a preview otherwise.
    pub fn mutated_object(&self, object: &ObjectReport) -> Result<Option<Value>, PreviewError> {
        if !object.changed() {
            return Ok(None);
        }
        let mut value = self.original_object(object).clone();
        apply(&mut value, object)?;
        Ok(Some(value))
    }

    /// The document as it would be stored: mutated objects, a List kept as a List.
    pub fn mutated(&self) -> Result<Value, PreviewError> {
        self.clone().into_mutated()
    }

    /// [`DocumentReport::mutated`] without copying the document.
    pub fn into_mutated(self) -> Result<Value, PreviewError> {
        let mut document = self.original;
        for object in self.objects.iter().filter(|o| o.changed()) {
            let target = match object.location.item {
                Some(item) => document
                    .get_mut("items")
                    .and_then(|items| items.get_mut(item - 1)),
                None => Some(&mut document),
            };
            if let Some(target) = target {
                apply(target, object)?;
            }
        }
        Ok(document)
    }
}

fn apply(value: &mut Value, object: &ObjectReport) -> Result<(), PreviewError> {
    json_patch::patch(value, &object.outcome.patch.0).map_err(|e| PreviewError::PatchDoesNotApply {
        location: object.location.clone(),
        message: e.to_string(),
    })
}

/// What is read from an object's metadata before the engine runs.
struct Meta {
    location: Location,
    kind: String,
    api_version: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

/// Namespace annotations by namespace name, from Namespace objects in the input.
pub type Namespaces = BTreeMap<String, BTreeMap<String, String>>;

/// Runs the engine over every object of every document. Namespace objects
/// anywhere in the input supply the annotations of their namespace, so they
/// are collected first. Documents are moved into the reports, not copied.
pub fn evaluate(
    documents: Vec<Document>,
    options: &Options,
    policy: &Policy,
) -> Result<Vec<DocumentReport>, PreviewError> {
    let mut namespaces = Namespaces::new();
    collect_namespaces(&documents, &mut namespaces)?;
    evaluate_with(documents, &namespaces, options, policy)
}

/// Adds the annotations of every core Namespace object in `documents`;
/// later definitions win, as they would with `kubectl apply`.
pub fn collect_namespaces(
    documents: &[Document],
    namespaces: &mut Namespaces,
) -> Result<(), PreviewError> {
    for document in documents {
        let (is_list, metas) = shape(document)?;
        for (meta, value) in metas.iter().zip(objects_of(&document.value, is_list)) {
            // A CRD may reuse the kind name in its own group; only core
            // Namespaces carry the opt-out annotations.
            let core = meta.api_version.as_deref().is_none_or(|v| v == "v1");
            if meta.kind == "Namespace" && core {
                let (name, annotations) = namespace_annotations(meta, value)?;
                namespaces.insert(name, annotations);
            }
        }
    }
    Ok(())
}

/// [`evaluate`] with the namespaces of the whole input already collected,
/// for documents processed a piece at a time.
pub fn evaluate_with(
    documents: Vec<Document>,
    namespaces: &Namespaces,
    options: &Options,
    policy: &Policy,
) -> Result<Vec<DocumentReport>, PreviewError> {
    let mut reports = Vec::with_capacity(documents.len());
    for document in documents {
        let (is_list, metas) = shape(&document)?;
        let mut objects = Vec::with_capacity(metas.len());
        for (meta, value) in metas.into_iter().zip(objects_of(&document.value, is_list)) {
            let (namespace, annotations) = namespace_of(meta.namespace, namespaces, options);
            let ctx = Context {
                namespace: Some(&namespace),
                namespace_annotations: Some(annotations),
                images: options.images.as_ref(),
            };
            let outcome = harden(value, &ctx, policy).map_err(|source| PreviewError::Engine {
                location: meta.location.clone(),
                source,
            })?;
            let scoped = !CLUSTER_SCOPED.contains(&meta.kind.as_str());
            objects.push(ObjectReport {
                location: meta.location,
                kind: meta.kind,
                api_version: meta.api_version,
                namespace: scoped.then_some(namespace),
                name: meta.name,
                outcome,
            });
        }
        reports.push(DocumentReport {
            location: document.location,
            original: document.value,
            objects,
            is_list,
        });
    }
    Ok(reports)
}

/// An object's namespace (its own, else `--namespace`) and that namespace's
/// annotations (from the input's Namespace objects, else
/// `--namespace-annotation`).
fn namespace_of<'a>(
    own: Option<String>,
    namespaces: &'a Namespaces,
    options: &'a Options,
) -> (String, &'a BTreeMap<String, String>) {
    let namespace = own.unwrap_or_else(|| options.default_namespace.clone());
    let annotations = namespaces
        .get(&namespace)
        .unwrap_or(&options.namespace_annotations);
    (namespace, annotations)
}

/// What `--resolve-images` must look up for one document: the engine's image
/// query of each of its objects, in the context pass 2 will give them.
pub(crate) fn image_queries(
    document: &Document,
    namespaces: &Namespaces,
    options: &Options,
    policy: &Policy,
) -> Result<Vec<kube_hardener_engine::ImageQuery>, PreviewError> {
    let (is_list, metas) = shape(document)?;
    let mut queries = Vec::with_capacity(metas.len());
    for (meta, value) in metas.into_iter().zip(objects_of(&document.value, is_list)) {
        let (namespace, annotations) = namespace_of(meta.namespace, namespaces, options);
        let ctx = Context {
            namespace: Some(&namespace),
            namespace_annotations: Some(annotations),
            images: None,
        };
        // A malformed object fails in pass 2, with its location.
        if let Ok(query) = kube_hardener_engine::image_query(value, &ctx, policy) {
            queries.push(query);
        }
    }
    Ok(queries)
}

/// The objects of a document: itself, or the items of a List.
fn objects_of(value: &Value, is_list: bool) -> Box<dyn Iterator<Item = &Value> + '_> {
    if is_list {
        match value.get("items") {
            Some(Value::Array(items)) => Box::new(items.iter()),
            _ => Box::new(std::iter::empty()),
        }
    } else {
        Box::new(std::iter::once(value))
    }
}

/// Checks a document's shape and reads the metadata of its object(s),
/// expanding a List into its items.
fn shape(document: &Document) -> Result<(bool, Vec<Meta>), PreviewError> {
    let location = &document.location;
    let kind = object_kind(&document.value, location, None)?;
    let items = document.value.get("items");
    let is_list = kind == "List" || (kind.ends_with("List") && items.is_some_and(Value::is_array));
    if !is_list {
        return Ok((false, vec![meta(&document.value, location.clone(), kind)?]));
    }
    let items = match items {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(PreviewError::Invalid {
                location: location.clone(),
                message: format!("`items` must be a list, found {}", json_type(other)),
            });
        }
        // An empty List is legitimately written without items.
        None => return Ok((true, Vec::new())),
    };
    // Typed lists (PodList) may omit the items' kind; it is the list's.
    let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
    let mut metas = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let location = Location {
            item: Some(index + 1),
            ..location.clone()
        };
        let kind = object_kind(item, &location, item_kind)?;
        metas.push(meta(item, location, kind)?);
    }
    Ok((true, metas))
}

fn object_kind(
    value: &Value,
    location: &Location,
    inferred: Option<&str>,
) -> Result<String, PreviewError> {
    let invalid = |message: String| PreviewError::Invalid {
        location: location.clone(),
        message,
    };
    let Value::Object(map) = value else {
        return Err(invalid(format!(
            "expected a Kubernetes object (a mapping), found {}",
            json_type(value)
        )));
    };
    match map.get("kind") {
        Some(Value::String(kind)) if !kind.is_empty() => Ok(kind.clone()),
        Some(Value::String(_)) => Err(invalid("`kind` must not be empty".to_owned())),
        Some(other) => Err(invalid(format!(
            "`kind` must be a string, found {}",
            json_type(other)
        ))),
        None => inferred
            .map(str::to_owned)
            .ok_or_else(|| invalid("missing `kind`".to_owned())),
    }
}

fn meta(value: &Value, location: Location, kind: String) -> Result<Meta, PreviewError> {
    let invalid = |message: String| PreviewError::Invalid {
        location: location.clone(),
        message,
    };
    let string_field =
        |object: &Value, field: &str, path: &str| -> Result<Option<String>, PreviewError> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(invalid(format!(
                    "`{path}` must be a string, found {}",
                    json_type(other)
                ))),
            }
        };
    let api_version = string_field(value, "apiVersion", "apiVersion")?;
    let (namespace, name) = match value.get("metadata") {
        None | Some(Value::Null) => (None, None),
        Some(metadata @ Value::Object(_)) => {
            let namespace = string_field(metadata, "namespace", "metadata.namespace")?
                .filter(|n| !n.is_empty());
            let name = match string_field(metadata, "name", "metadata.name")? {
                Some(name) if !name.is_empty() => Some(name),
                _ => string_field(metadata, "generateName", "metadata.generateName")?
                    .map(|prefix| format!("{prefix}*")),
            };
            (namespace, name)
        }
        Some(other) => {
            return Err(invalid(format!(
                "`metadata` must be a mapping, found {}",
                json_type(other)
            )));
        }
    };
    Ok(Meta {
        location,
        kind,
        api_version,
        namespace,
        name,
    })
}

fn namespace_annotations(
    candidate: &Meta,
    value: &Value,
) -> Result<(String, BTreeMap<String, String>), PreviewError> {
    let invalid = |message: String| PreviewError::Invalid {
        location: candidate.location.clone(),
        message,
    };
    let name = candidate
        .name
        .clone()
        .filter(|n| !n.ends_with('*'))
        .ok_or_else(|| invalid("a Namespace needs `metadata.name`".to_owned()))?;
    let mut annotations = BTreeMap::new();
    match value.pointer("/metadata/annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                let Value::String(value) = value else {
                    return Err(invalid(format!(
                        "`metadata.annotations.{key}` must be a string, found {}",
                        json_type(value)
                    )));
                };
                annotations.insert(key.clone(), value.clone());
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "`metadata.annotations` must be a mapping, found {}",
                json_type(other)
            )));
        }
    }
    Ok((name, annotations))
}

pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_hardener_engine::{Disposition, Setting};
    use serde_json::json;

    fn document(n: usize, value: Value) -> Document {
        Document {
            location: Location {
                file: "in.yaml".to_owned(),
                document: n,
                item: None,
            },
            value,
        }
    }

    fn options() -> Options {
        Options {
            default_namespace: "default".to_owned(),
            namespace_annotations: BTreeMap::new(),
            images: None,
        }
    }

    fn error(docs: &[Document]) -> String {
        match evaluate(docs.to_vec(), &options(), &Policy::default()) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shape_errors_name_file_document_and_field() {
        let cases = [
            (
                json!({"apiVersion": "v1"}),
                "in.yaml: document 1: missing `kind`",
            ),
            (
                json!({"kind": 3}),
                "in.yaml: document 1: `kind` must be a string, found a number",
            ),
            (
                json!({"kind": ""}),
                "in.yaml: document 1: `kind` must not be empty",
            ),
            (
                json!(["a"]),
                "in.yaml: document 1: expected a Kubernetes object (a mapping), found a list",
            ),
            (
                json!("text"),
                "in.yaml: document 1: expected a Kubernetes object (a mapping), found a string",
            ),
            (
                json!({"kind": "Pod", "metadata": []}),
                "in.yaml: document 1: `metadata` must be a mapping, found a list",
            ),
            (
                json!({"kind": "Pod", "metadata": {"namespace": 1}}),
                "in.yaml: document 1: `metadata.namespace` must be a string, found a number",
            ),
            (
                json!({"kind": "Pod", "metadata": {"name": true}}),
                "in.yaml: document 1: `metadata.name` must be a string, found a boolean",
            ),
            (
                json!({"kind": "List", "items": {}}),
                "in.yaml: document 1: `items` must be a list, found a mapping",
            ),
            (
                json!({"kind": "List", "items": [{"kind": "Pod"}, {"metadata": {}}]}),
                "in.yaml: document 1, item 2: missing `kind`",
            ),
            (
                json!({"kind": "Namespace", "metadata": {"name": "a", "annotations": {"x": 1}}}),
                "in.yaml: document 1: `metadata.annotations.x` must be a string, found a number",
            ),
            (
                json!({"kind": "Namespace", "metadata": {}}),
                "in.yaml: document 1: a Namespace needs `metadata.name`",
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(error(&[document(1, value)]), expected);
        }
    }

    #[test]
    fn typed_list_items_inherit_the_kind() {
        let docs = [document(
            1,
            json!({"kind": "PodList", "items": [{"metadata": {"name": "a"}}]}),
        )];
        let reports = evaluate(docs.to_vec(), &options(), &Policy::default()).expect("evaluates");
        assert!(reports[0].is_list);
        assert_eq!(reports[0].objects[0].identity(), "Pod default/a");
        assert_eq!(reports[0].objects[0].location.item, Some(1));
    }

    #[test]
    fn a_kind_ending_in_list_without_items_is_an_ordinary_object() {
        let docs = [document(1, json!({"kind": "AllowList", "spec": {}}))];
        let reports = evaluate(docs.to_vec(), &options(), &Policy::default()).expect("evaluates");
        assert!(!reports[0].is_list);
        assert_eq!(reports[0].objects.len(), 1);
    }

    fn pod(metadata: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
               "spec": {"containers": [{"name": "app", "image": "nginx"}]}})
    }

    #[test]
    fn identity_uses_generate_name_and_omits_namespace_for_cluster_kinds() {
        let docs = [
            document(1, pod(json!({"generateName": "web-", "namespace": "shop"}))),
            document(
                2,
                json!({"kind": "ClusterRole", "metadata": {"name": "reader"}}),
            ),
            document(3, pod(json!({}))),
        ];
        let reports = evaluate(docs.to_vec(), &options(), &Policy::default()).expect("evaluates");
        let ids: Vec<String> = reports.iter().map(|r| r.objects[0].identity()).collect();
        assert_eq!(
            ids,
            vec![
                "Pod shop/web-*",
                "ClusterRole reader",
                "Pod default/<unnamed>"
            ]
        );
    }

    #[test]
    fn namespace_objects_anywhere_decide_for_their_namespace() {
        let skip_all = json!({"kube-hardener.io/skip": "all"});
        let docs = [
            document(1, pod(json!({"name": "in-a", "namespace": "a"}))),
            document(2, pod(json!({"name": "in-b", "namespace": "b"}))),
            document(3, pod(json!({"name": "no-namespace"}))),
            // after the pods that it concerns
            document(
                4,
                json!({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": "a", "annotations": skip_all}}),
            ),
        ];
        // --namespace-annotation applies where the input has no Namespace object
        let mut options = options();
        options.namespace_annotations.insert(
            "kube-hardener.io/skip".to_owned(),
            "capabilities".to_owned(),
        );
        let reports = evaluate(docs.to_vec(), &options, &Policy::default()).expect("evaluates");
        let outcome = |i: usize| &reports[i].objects[0].outcome;

        assert_eq!(outcome(0).disposition, Disposition::SkippedAll);
        assert!(outcome(0).patch.0.is_empty());
        for i in [1, 2] {
            assert_eq!(outcome(i).disposition, Disposition::Hardened);
            assert!(!outcome(i).applied.is_empty());
            assert!(
                !outcome(i).applied.contains(&Setting::Capabilities),
                "{:?}",
                outcome(i)
            );
        }
        assert_eq!(reports[2].objects[0].namespace.as_deref(), Some("default"));
        assert!(reports[3].objects[0].namespace.is_none());
    }

    #[test]
    fn excluded_namespace_is_reported() {
        let docs = [document(
            1,
            pod(json!({"name": "dns", "namespace": "kube-system"})),
        )];
        let reports = evaluate(docs.to_vec(), &options(), &Policy::default()).expect("evaluates");
        assert_eq!(
            reports[0].objects[0].outcome.disposition,
            Disposition::ExcludedNamespace("kube-system".to_owned())
        );
    }

    #[test]
    fn mutated_object_is_the_patch_applied_to_the_input() {
        let original = pod(json!({"name": "p"}));
        let docs = [document(1, original.clone())];
        let reports = evaluate(docs.to_vec(), &options(), &Policy::default()).expect("evaluates");
        let object = &reports[0].objects[0];
        let mut expected = original;
        json_patch::patch(&mut expected, &object.outcome.patch.0).expect("applies");
        assert_eq!(
            reports[0].mutated_object(object).expect("applies"),
            Some(expected.clone())
        );
        assert_eq!(reports[0].mutated().expect("applies"), expected);
    }

    #[test]
    fn engine_errors_name_the_object() {
        let docs = [document(
            7,
            json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": []}),
        )];
        let error = evaluate(docs.to_vec(), &options(), &Policy::default()).expect_err("rejected");
        assert!(
            error.to_string().starts_with("in.yaml: document 7: "),
            "{error}"
        );
    }

    #[test]
    fn list_documents_keep_their_shape_when_mutated() {
        let original =
            json!({"kind": "List", "items": [{"kind": "Service"}, {"kind": "ConfigMap"}]});
        let report = DocumentReport {
            location: document(1, Value::Null).location,
            original: original.clone(),
            objects: Vec::new(),
            is_list: true,
        };
        assert_eq!(report.mutated().expect("applies"), original);
    }
}
