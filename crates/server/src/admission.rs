//! `admission.k8s.io/v1` AdmissionReview in and out, and the decision of what
//! the engine is asked to do with a request.
//!
//! The request is decoded into small structs of our own whose `object` and
//! `oldObject` stay raw [`serde_json::Value`]s: the engine must see the object
//! exactly as the API server sent it, unknown fields included, because the
//! JSON patch is computed against those bytes.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Namespace annotation choosing the mode for pods in that namespace:
/// `audit` (compute and warn, never patch) or `enforce` (patch, even when
/// the server runs in audit mode globally).
pub const ANNOTATION_MODE: &str = "kube-hardener.io/mode";

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// Why a request body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BadReview {
    #[error("the body is not a valid AdmissionReview JSON document: {0}")]
    Json(String),
    #[error("`apiVersion` must be \"{API_VERSION}\", got {0}")]
    ApiVersion(String),
    #[error("`kind` must be \"{KIND}\", got {0}")]
    Kind(String),
    #[error("the AdmissionReview has no `request`")]
    MissingRequest,
    #[error("`request.uid` is missing or empty")]
    MissingUid,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<RequestIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RequestIn {
    uid: Option<String>,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    sub_resource: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    operation: Option<String>,
    object: Option<serde_json::Value>,
    old_object: Option<serde_json::Value>,
    dry_run: Option<bool>,
}

// kube-core has GroupVersionKind/Resource and a whole AdmissionReview type,
// but they require every field and (for the review) decode `object` into a
// typed DynamicObject. This webhook must answer a review whatever it lacks and
// hand the engine `object` byte-for-byte as sent, so it keeps these lenient
// copies of the seven fields it reads; `operation` stays a string because an
// operation it does not know is ignored, not refused.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct GroupVersionKind {
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct GroupVersionResource {
    pub group: String,
    pub version: String,
    pub resource: String,
}

/// The parts of an AdmissionRequest the webhook uses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Review {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub resource: GroupVersionResource,
    pub sub_resource: String,
    pub name: String,
    pub namespace: String,
    pub operation: String,
    pub object: Option<serde_json::Value>,
    pub old_object: Option<serde_json::Value>,
    pub dry_run: bool,
}

impl Review {
    /// A name for logs: the object name, or its `generateName` prefix for pods
    /// created by controllers (the API server assigns the name after admission).
    pub fn display_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        self.object
            .as_ref()
            .and_then(|object| object.pointer("/metadata/generateName"))
            .and_then(serde_json::Value::as_str)
            .map(|prefix| format!("{prefix}*"))
            .unwrap_or_default()
    }

    /// Bounded set of operation names, safe as a metrics label.
    pub fn operation_label(&self) -> &'static str {
        match self.operation.as_str() {
            "CREATE" => "CREATE",
            "UPDATE" => "UPDATE",
            "DELETE" => "DELETE",
            "CONNECT" => "CONNECT",
            _ => "other",
        }
    }
}

/// Decodes and checks an AdmissionReview body.
pub(crate) fn parse(body: &[u8]) -> Result<Review, BadReview> {
    let review: ReviewIn =
        serde_json::from_slice(body).map_err(|error| BadReview::Json(error.to_string()))?;
    match review.api_version.as_deref() {
        Some(API_VERSION) => {}
        other => return Err(BadReview::ApiVersion(describe(other))),
    }
    match review.kind.as_deref() {
        Some(KIND) => {}
        other => return Err(BadReview::Kind(describe(other))),
    }
    let request = review.request.ok_or(BadReview::MissingRequest)?;
    let uid = match request.uid {
        Some(uid) if !uid.is_empty() => uid,
        _ => return Err(BadReview::MissingUid),
    };
    Ok(Review {
        uid,
        kind: request.kind,
        resource: request.resource,
        sub_resource: request.sub_resource.unwrap_or_default(),
        name: request.name.unwrap_or_default(),
        namespace: request.namespace.unwrap_or_default(),
        operation: request.operation.unwrap_or_default(),
        object: request.object,
        old_object: request.old_object,
        dry_run: request.dry_run.unwrap_or(false),
    })
}

fn describe(value: Option<&str>) -> String {
    match value {
        Some(value) => format!("{value:?}"),
        None => "nothing".to_owned(),
    }
}

/// What the engine is asked to do with a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A Pod being created: harden the whole pod.
    Pod,
    /// `kubectl debug`: harden the ephemeral containers the update adds.
    EphemeralContainers,
    /// The pod template of a workload object (only when configured).
    Workload,
    /// Allowed unchanged, with the reason for logs.
    Ignore(&'static str),
}

const WORKLOADS: [(&str, &str, &str); 6] = [
    ("apps", "Deployment", "deployments"),
    ("apps", "StatefulSet", "statefulsets"),
    ("apps", "DaemonSet", "daemonsets"),
    ("apps", "ReplicaSet", "replicasets"),
    ("batch", "Job", "jobs"),
    ("batch", "CronJob", "cronjobs"),
];

pub(crate) fn classify(review: &Review, mutate_workloads: bool) -> Target {
    let resource = &review.resource;
    let core_pods = resource.group.is_empty() && resource.resource == "pods";
    if core_pods {
        return match (review.sub_resource.as_str(), review.operation.as_str()) {
            ("", "CREATE") => Target::Pod,
            // Pod specs are immutable: mutating a pod UPDATE would get it rejected.
            ("", _) => Target::Ignore("pod operation other than CREATE"),
            ("ephemeralcontainers", "UPDATE") => Target::EphemeralContainers,
            _ => Target::Ignore("pod subresource"),
        };
    }
    let is_workload = WORKLOADS.iter().any(|(group, kind, plural)| {
        resource.group == *group && resource.resource == *plural && review.kind.kind == *kind
    });
    if !is_workload {
        return Target::Ignore("unsupported resource");
    }
    if !review.sub_resource.is_empty() {
        return Target::Ignore("workload subresource");
    }
    if !matches!(review.operation.as_str(), "CREATE" | "UPDATE") {
        return Target::Ignore("workload operation other than CREATE/UPDATE");
    }
    if mutate_workloads {
        Target::Workload
    } else {
        Target::Ignore("workload mutation is disabled")
    }
}

/// Whether patches are returned (`Enforce`) or only reported (`Audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Enforce,
    Audit,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// The namespace annotation wins over the global switch in both directions:
/// an operator rolling out in audit mode can let namespaces opt into
/// enforcement one by one, and a namespace can shadow-run before enforcing.
/// An unrecognised value keeps the global mode and is reported.
pub(crate) fn effective_mode(
    global_audit: bool,
    namespace_annotations: Option<&BTreeMap<String, String>>,
) -> (Mode, Option<String>) {
    let global = if global_audit {
        Mode::Audit
    } else {
        Mode::Enforce
    };
    let Some(value) = namespace_annotations.and_then(|a| a.get(ANNOTATION_MODE)) else {
        return (global, None);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "audit" => (Mode::Audit, None),
        "enforce" => (Mode::Enforce, None),
        _ => (
            global,
            Some(format!(
                "namespace annotation {ANNOTATION_MODE}={value:?} is neither \"audit\" nor \"enforce\"; using {}",
                global.label()
            )),
        ),
    }
}

/// The answer to one review. Always `allowed: true`: this is a defaulting
/// webhook, enforcement belongs to Pod Security Admission.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// Serialized RFC 6902 patch; `None` when nothing is to change.
    pub patch: Option<Vec<u8>>,
    pub warnings: Vec<String>,
    pub audit_annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: &'a BTreeMap<&'static str, String>,
}

/// Renders the AdmissionReview response for `uid`.
pub(crate) fn render(uid: &str, answer: &Answer) -> Result<Vec<u8>, serde_json::Error> {
    let patch = answer
        .patch
        .as_ref()
        .map(|patch| base64::engine::general_purpose::STANDARD.encode(patch));
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseOut {
            uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: &answer.warnings,
            audit_annotations: &answer.audit_annotations,
        },
    };
    serde_json::to_vec(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review_json(request: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": request,
        }))
        .unwrap()
    }

    fn review_for(group: &str, kind: &str, resource: &str, sub: &str, op: &str) -> Review {
        let mut request = json!({
            "uid": "u-1",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "operation": op,
            "namespace": "team-a",
            "object": {"kind": kind},
        });
        if !sub.is_empty() {
            request["subResource"] = json!(sub);
        }
        parse(&review_json(request)).unwrap()
    }

    #[test]
    fn parses_the_fields_the_webhook_uses() {
        let body = review_json(json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "object": {"metadata": {"generateName": "web-7d9f-"}, "x-unknown": [1, 2]},
            "dryRun": true,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        }));
        let review = parse(&body).unwrap();
        assert_eq!(review.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(review.resource.resource, "pods");
        assert_eq!(review.namespace, "team-a");
        assert!(review.dry_run);
        assert_eq!(review.display_name(), "web-7d9f-*");
        // Unknown fields inside the object are kept verbatim.
        assert_eq!(review.object.unwrap()["x-unknown"], json!([1, 2]));
    }

    #[test]
    fn malformed_reviews_are_rejected_with_the_reason() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"not json", "not a valid AdmissionReview JSON"),
            (b"[]", "not a valid AdmissionReview JSON"),
            (b"", "not a valid AdmissionReview JSON"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"a"}}"#,
                "`apiVersion` must be \"admission.k8s.io/v1\", got \"admission.k8s.io/v1beta1\"",
            ),
            (
                br#"{"kind":"AdmissionReview","request":{"uid":"a"}}"#,
                "got nothing",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"a"}}"#,
                "`kind` must be \"AdmissionReview\", got \"Pod\"",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "has no `request`",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
                "`request.uid` is missing",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""}}"#,
                "`request.uid` is missing",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
                "invalid type: integer `7`, expected a string",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{:?}: {error:?} lacks {expected:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn classification_table() {
        use Target::*;
        let cases = [
            (("", "Pod", "pods", "", "CREATE"), false, Pod),
            (
                ("", "Pod", "pods", "", "UPDATE"),
                false,
                Ignore("pod operation other than CREATE"),
            ),
            (
                ("", "Pod", "pods", "", "DELETE"),
                false,
                Ignore("pod operation other than CREATE"),
            ),
            (
                ("", "Pod", "pods", "ephemeralcontainers", "UPDATE"),
                false,
                EphemeralContainers,
            ),
            (
                ("", "Pod", "pods", "status", "UPDATE"),
                false,
                Ignore("pod subresource"),
            ),
            (
                ("", "Pod", "pods", "ephemeralcontainers", "CREATE"),
                false,
                Ignore("pod subresource"),
            ),
            (
                ("", "Service", "services", "", "CREATE"),
                true,
                Ignore("unsupported resource"),
            ),
            (
                ("apps", "Deployment", "deployments", "", "CREATE"),
                true,
                Workload,
            ),
            (
                ("apps", "Deployment", "deployments", "", "UPDATE"),
                true,
                Workload,
            ),
            (
                ("apps", "Deployment", "deployments", "", "CREATE"),
                false,
                Ignore("workload mutation is disabled"),
            ),
            (
                ("apps", "Deployment", "deployments", "scale", "UPDATE"),
                true,
                Ignore("workload subresource"),
            ),
            (
                ("apps", "Deployment", "deployments", "", "DELETE"),
                true,
                Ignore("workload operation other than CREATE/UPDATE"),
            ),
            (
                ("apps", "StatefulSet", "statefulsets", "", "CREATE"),
                true,
                Workload,
            ),
            (
                ("apps", "DaemonSet", "daemonsets", "", "CREATE"),
                true,
                Workload,
            ),
            (
                ("apps", "ReplicaSet", "replicasets", "", "CREATE"),
                true,
                Workload,
            ),
            (("batch", "Job", "jobs", "", "CREATE"), true, Workload),
            (
                ("batch", "CronJob", "cronjobs", "", "CREATE"),
                true,
                Workload,
            ),
            (
                ("extensions", "Deployment", "deployments", "", "CREATE"),
                true,
                Ignore("unsupported resource"),
            ),
        ];
        for ((group, kind, resource, sub, op), workloads, expected) in cases {
            let review = review_for(group, kind, resource, sub, op);
            assert_eq!(
                classify(&review, workloads),
                expected,
                "{group}/{kind} {resource}/{sub} {op} workloads={workloads}"
            );
        }
    }

    #[test]
    fn mode_annotation_overrides_global_switch() {
        let annotations =
            |value: &str| BTreeMap::from([(ANNOTATION_MODE.to_owned(), value.to_owned())]);
        let cases = [
            (false, None, Mode::Enforce, false),
            (true, None, Mode::Audit, false),
            (false, Some("audit"), Mode::Audit, false),
            (true, Some("enforce"), Mode::Enforce, false),
            (true, Some(" Enforce "), Mode::Enforce, false),
            (false, Some("shadow"), Mode::Enforce, true),
            (true, Some(""), Mode::Audit, true),
        ];
        for (global, value, expected, warns) in cases {
            let map = value.map(annotations);
            let (mode, warning) = effective_mode(global, map.as_ref());
            assert_eq!(mode, expected, "global={global} value={value:?}");
            assert_eq!(warning.is_some(), warns, "global={global} value={value:?}");
        }
    }

    /// Any JSON value: leaves of every type, nested up to a few levels.
    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,16}".prop_map(serde_json::Value::from),
            prop::sample::select(vec![
                "CREATE",
                "UPDATE",
                "pods",
                "ephemeralcontainers",
                "apps",
                ""
            ])
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop::sample::select(vec!["group", "version", "kind", "resource", "x"]),
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest::proptest! {
        /// A review whose request fields hold anything: decoding answers Ok
        /// or a typed error, and what decodes classifies and renders.
        #[test]
        fn structured_reviews_decode_classify_and_render(
            fields in proptest::collection::btree_map(
                proptest::sample::select(vec!["uid", "kind", "resource", "subResource", "name",
                    "namespace", "operation", "object", "oldObject", "dryRun"]),
                any_json(),
                0..10,
            ),
            workloads in proptest::bool::ANY,
        ) {
            let request: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Ok(review) = parse(&review_json(serde_json::Value::Object(request))) {
                let _ = classify(&review, workloads);
                let _ = review.display_name();
                let out = render(&review.uid, &Answer::default()).unwrap();
                let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
                proptest::prop_assert_eq!(out["response"]["uid"].as_str(), Some(review.uid.as_str()));
            }
        }

        /// Whatever arrives, decoding answers Ok or a typed error; it never panics.
        #[test]
        fn parse_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&body);
        }

        /// Any uid the API server sends comes back byte for byte, and the
        /// patch survives base64 unchanged.
        #[test]
        fn uid_and_patch_round_trip(uid in "\\PC{1,64}", patch in proptest::collection::vec(proptest::num::u8::ANY, 1..256)) {
            let body = review_json(json!({"uid": uid}));
            let review = parse(&body).unwrap();
            proptest::prop_assert_eq!(&review.uid, &uid);
            let answer = Answer { patch: Some(patch.clone()), ..Answer::default() };
            let out: serde_json::Value = serde_json::from_slice(&render(&review.uid, &answer).unwrap()).unwrap();
            proptest::prop_assert_eq!(out["response"]["uid"].as_str(), Some(uid.as_str()));
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(out["response"]["patch"].as_str().unwrap())
                .unwrap();
            proptest::prop_assert_eq!(decoded, patch);
        }
    }

    #[test]
    fn response_carries_patch_only_when_present() {
        let answer = Answer {
            patch: Some(br#"[{"op":"add","path":"/a","value":1}]"#.to_vec()),
            warnings: vec!["spec.hostNetwork: uses the node's network".to_owned()],
            audit_annotations: BTreeMap::from([("applied", "runAsNonRoot".to_owned())]),
        };
        let out: serde_json::Value =
            serde_json::from_slice(&render("u-9", &answer).unwrap()).unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], "u-9");
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(patch, br#"[{"op":"add","path":"/a","value":1}]"#);
        assert_eq!(
            out["response"]["warnings"][0],
            "spec.hostNetwork: uses the node's network"
        );
        assert_eq!(
            out["response"]["auditAnnotations"]["applied"],
            "runAsNonRoot"
        );

        let empty: serde_json::Value =
            serde_json::from_slice(&render("u-10", &Answer::default()).unwrap()).unwrap();
        assert_eq!(
            empty,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "u-10", "allowed": true}})
        );
    }
}
