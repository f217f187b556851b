//! Where the pod spec and the pod's metadata live for each supported kind.

use crate::EngineError;
use crate::patch::Token;
use crate::shape::{self, Object};

/// The location of the pod spec (and of the metadata that carries the pod's
/// annotations) inside an object of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Tokens from the object root to the pod spec.
    pub spec: &'static [&'static str],
    /// Tokens from the object root to the pod (or pod template) metadata.
    pub metadata: &'static [&'static str],
    /// `spec` in Kubernetes' dotted field-path style, for messages.
    pub spec_field: &'static str,
    pub metadata_field: &'static str,
}

const POD: Layout = Layout {
    spec: &["spec"],
    metadata: &["metadata"],
    spec_field: "spec",
    metadata_field: "metadata",
};

const TEMPLATE: Layout = Layout {
    spec: &["spec", "template", "spec"],
    metadata: &["spec", "template", "metadata"],
    spec_field: "spec.template.spec",
    metadata_field: "spec.template.metadata",
};

const CRON_JOB: Layout = Layout {
    spec: &["spec", "jobTemplate", "spec", "template", "spec"],
    metadata: &["spec", "jobTemplate", "spec", "template", "metadata"],
    spec_field: "spec.jobTemplate.spec.template.spec",
    metadata_field: "spec.jobTemplate.spec.template.metadata",
};

impl Layout {
    /// The layout for `kind`, or `None` for kinds without a pod spec. The
    /// apiVersion is not checked: every served version of these kinds keeps
    /// the pod template at the same place.
    pub(crate) fn for_kind(kind: &str) -> Option<Layout> {
        match kind {
            "Pod" => Some(POD),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some(TEMPLATE),
            "CronJob" => Some(CRON_JOB),
            _ => None,
        }
    }

    pub(crate) fn spec_tokens(&self) -> Vec<Token> {
        self.spec.iter().map(|t| Token::Key(t)).collect()
    }

    pub(crate) fn metadata_tokens(&self) -> Vec<Token> {
        self.metadata.iter().map(|t| Token::Key(t)).collect()
    }

    /// The pod spec (required) and the pod metadata (optional) of `object`.
    pub(crate) fn locate<'v>(
        &self,
        object: &'v Object,
    ) -> Result<(&'v Object, Option<&'v Object>), EngineError> {
        let spec = walk(object, self.spec)?.ok_or_else(|| EngineError::WrongType {
            path: self.spec_field.to_owned(),
            expected: "an object",
        })?;
        let metadata = walk(object, self.metadata)?;
        Ok((spec, metadata))
    }
}

/// Follows `path` through nested objects; `None` when a level is absent.
fn walk<'v>(root: &'v Object, path: &[&str]) -> Result<Option<&'v Object>, EngineError> {
    let mut node = root;
    let mut field = String::new();
    for key in path {
        match shape::object(node, &field, key)? {
            Some(next) => node = next,
            None => return Ok(None),
        }
        field = shape::join(&field, key);
    }
    Ok(Some(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::rules::test_support::object as obj;

    #[test]
    fn every_supported_kind_maps_to_its_pod_spec() {
        let cases = [
            ("Pod", "spec"),
            ("Deployment", "spec.template.spec"),
            ("StatefulSet", "spec.template.spec"),
            ("DaemonSet", "spec.template.spec"),
            ("ReplicaSet", "spec.template.spec"),
            ("Job", "spec.template.spec"),
            ("CronJob", "spec.jobTemplate.spec.template.spec"),
        ];
        for (kind, field) in cases {
            let layout = Layout::for_kind(kind).unwrap();
            assert_eq!(layout.spec_field, field, "{kind}");
            assert_eq!(layout.spec.join("."), field, "{kind}");
            assert_eq!(
                layout.metadata_field,
                field.trim_end_matches("spec").to_owned() + "metadata",
                "{kind}"
            );
        }
        for kind in ["Service", "ConfigMap", "pod", "PodTemplate", ""] {
            assert_eq!(Layout::for_kind(kind), None, "{kind}");
        }
    }

    #[test]
    fn locate_finds_spec_and_optional_metadata() {
        let cron = obj(json!({"spec": {"jobTemplate": {"spec": {"template": {
            "metadata": {"labels": {}}, "spec": {"containers": []}}}}}}));
        let (spec, meta) = Layout::for_kind("CronJob").unwrap().locate(&cron).unwrap();
        assert!(spec.contains_key("containers"));
        assert!(meta.is_some_and(|m| m.contains_key("labels")));

        let deploy = obj(json!({"spec": {"template": {"spec": {}}}}));
        let (_, meta) = Layout::for_kind("Deployment")
            .unwrap()
            .locate(&deploy)
            .unwrap();
        assert!(meta.is_none());
    }

    #[test]
    fn locate_rejects_missing_or_malformed_specs_naming_the_field() {
        let cases = [
            ("Pod", json!({}), "spec"),
            ("Pod", json!({"spec": []}), "spec"),
            ("Deployment", json!({"spec": {}}), "spec.template.spec"),
            (
                "Deployment",
                json!({"spec": {"template": "x"}}),
                "spec.template",
            ),
            (
                "CronJob",
                json!({"spec": {"jobTemplate": {"spec": 1}}}),
                "spec.jobTemplate.spec",
            ),
            ("Pod", json!({"spec": {}, "metadata": 3}), "metadata"),
        ];
        for (kind, object, path) in cases {
            let err = Layout::for_kind(kind)
                .unwrap()
                .locate(&obj(object))
                .unwrap_err();
            assert_eq!(
                err,
                EngineError::WrongType {
                    path: path.to_owned(),
                    expected: "an object"
                }
            );
        }
    }
}
