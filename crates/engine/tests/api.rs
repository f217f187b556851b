//! The public API end to end: kinds, namespaces, opt-outs, the provenance
//! annotation, ephemeral containers and malformed input.

// Test helpers outside #[test] functions fail loudly on broken fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use kube_hardener_engine::{
    ANNOTATION_APPLIED, Context, Disposition, EngineError, Outcome, Policy, Setting, WarningKind,
    harden, harden_new_ephemeral_containers,
};
use serde_json::{Value, json};

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "apps"}, "spec": spec})
}

fn simple_pod() -> Value {
    pod(json!({"containers": [{"name": "app", "image": "nginx"}]}))
}

fn apply(object: &Value, outcome: &Outcome) -> Value {
    let mut out = object.clone();
    json_patch::patch(&mut out, &outcome.patch).expect("patch applies");
    out
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn every_workload_kind_is_hardened_at_its_template() {
    let template =
        json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "app"}]}});
    let cases = [
        (
            "Deployment",
            json!({"template": template}),
            "/spec/template",
        ),
        (
            "StatefulSet",
            json!({"template": template}),
            "/spec/template",
        ),
        ("DaemonSet", json!({"template": template}), "/spec/template"),
        (
            "ReplicaSet",
            json!({"template": template}),
            "/spec/template",
        ),
        ("Job", json!({"template": template}), "/spec/template"),
        (
            "CronJob",
            json!({"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}),
            "/spec/jobTemplate/spec/template",
        ),
    ];
    for (kind, spec, at) in cases {
        let object =
            json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w"}, "spec": spec});
        let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
        assert_eq!(outcome.disposition, Disposition::Hardened, "{kind}");
        let out = apply(&object, &outcome);
        let tpl = out.pointer(at).unwrap();
        assert_eq!(
            tpl["spec"]["securityContext"]["runAsNonRoot"],
            json!(true),
            "{kind}"
        );
        assert_eq!(
            tpl["metadata"]["annotations"][ANNOTATION_APPLIED],
            json!(
                "runAsNonRoot,seccompProfile,allowPrivilegeEscalation,capabilities,readOnlyRootFilesystem"
            ),
            "{kind}"
        );
        // The workload's own metadata is not the pod's.
        assert_eq!(out["metadata"], json!({"name": "w"}), "{kind}");
        for op in outcome.patch.iter() {
            assert!(op.path().as_str().starts_with(at), "{kind}: {}", op.path());
        }
    }
}

#[test]
fn other_kinds_pass_through_untouched() {
    for object in [
        json!({"kind": "Service", "spec": {"containers": "not looked at"}}),
        json!({"kind": "PodTemplate", "template": {}}),
        json!({"spec": {}}),
    ] {
        let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        assert_eq!(outcome.disposition, Disposition::UnsupportedKind(kind));
        assert!(outcome.is_empty() && outcome.applied.is_empty() && outcome.warnings.is_empty());
    }
}

#[test]
fn excluded_namespaces_come_from_the_context_or_the_object() {
    let policy = Policy::default();
    let object = simple_pod();
    let cases = [
        (
            Some("kube-system"),
            Disposition::ExcludedNamespace("kube-system".into()),
        ),
        (Some("apps"), Disposition::Hardened),
        (None, Disposition::Hardened),
    ];
    for (namespace, expected) in cases {
        let ctx = Context {
            namespace,
            namespace_annotations: None,
            images: None,
        };
        let outcome = harden(&object, &ctx, &policy).unwrap();
        assert_eq!(outcome.disposition, expected);
        assert_eq!(outcome.is_empty(), expected != Disposition::Hardened);
    }
    let mut in_system = simple_pod();
    in_system["metadata"]["namespace"] = json!("kube-public");
    let outcome = harden(&in_system, &Context::default(), &policy).unwrap();
    assert_eq!(
        outcome.disposition,
        Disposition::ExcludedNamespace("kube-public".into())
    );
    assert!(outcome.is_empty());
    // The context (the admission request's namespace) wins over the manifest.
    let ctx = Context {
        namespace: Some("apps"),
        namespace_annotations: None,
        images: None,
    };
    assert_eq!(
        harden(&in_system, &ctx, &policy).unwrap().disposition,
        Disposition::Hardened
    );
}

#[test]
fn namespace_skip_annotation() {
    let object = simple_pod();
    let policy = Policy::default();
    let run = |value: &str| {
        let ns = annotations(&[("kube-hardener.io/skip", value)]);
        let ctx = Context {
            namespace: Some("apps"),
            namespace_annotations: Some(&ns),
            images: None,
        };
        harden(&object, &ctx, &policy).unwrap()
    };
    let all = run("all");
    assert_eq!(all.disposition, Disposition::SkippedAll);
    assert!(all.is_empty());

    let some = run("readOnlyRootFilesystem, Capabilities, nonsense");
    assert_eq!(
        some.applied,
        vec![
            Setting::RunAsNonRoot,
            Setting::SeccompProfile,
            Setting::AllowPrivilegeEscalation
        ]
    );
    assert_eq!(some.warnings.len(), 1);
    assert_eq!(some.warnings[0].kind, WarningKind::Annotation);
    assert_eq!(
        some.warnings[0].to_string(),
        "namespace.metadata.annotations[kube-hardener.io/skip]: unknown setting `nonsense` ignored"
    );
    let out = apply(&object, &some);
    assert_eq!(
        out["metadata"]["annotations"][ANNOTATION_APPLIED],
        json!("runAsNonRoot,seccompProfile,allowPrivilegeEscalation")
    );
    assert_eq!(out["spec"]["volumes"], Value::Null);
}

#[test]
fn pod_skip_annotation_only_when_allowed() {
    let mut object = simple_pod();
    object["metadata"]["annotations"] = json!({"kube-hardener.io/skip": "capabilities"});
    let mut policy = Policy::default();

    let ignored = harden(&object, &Context::default(), &policy).unwrap();
    assert!(ignored.applied.contains(&Setting::Capabilities));
    assert_eq!(ignored.warnings.len(), 1);
    assert_eq!(ignored.warnings[0].kind, WarningKind::Annotation);
    assert_eq!(
        ignored.warnings[0].field,
        "metadata.annotations[kube-hardener.io/skip]"
    );

    policy.allow_pod_opt_out = true;
    let honoured = harden(&object, &Context::default(), &policy).unwrap();
    assert!(!honoured.applied.contains(&Setting::Capabilities));
    assert!(honoured.warnings.is_empty());

    object["metadata"]["annotations"]["kube-hardener.io/skip"] = json!("ALL");
    let all = harden(&object, &Context::default(), &policy).unwrap();
    assert_eq!(all.disposition, Disposition::SkippedAll);
    assert!(all.is_empty());

    // Namespace and pod lists add up.
    object["metadata"]["annotations"]["kube-hardener.io/skip"] = json!("capabilities");
    let ns = annotations(&[("kube-hardener.io/skip", "seccompProfile")]);
    let ctx = Context {
        namespace: None,
        namespace_annotations: Some(&ns),
        images: None,
    };
    let both = harden(&object, &ctx, &policy).unwrap();
    assert!(!both.applied.contains(&Setting::Capabilities));
    assert!(!both.applied.contains(&Setting::SeccompProfile));
}

#[test]
fn applied_annotation_is_created_escaped_and_merged() {
    // No metadata at all on a template: created whole.
    let deploy = json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
    let outcome = harden(&deploy, &Context::default(), &Policy::default()).unwrap();
    let last = serde_json::to_value(outcome.patch.0.last().unwrap()).unwrap();
    assert_eq!(last["path"], json!("/spec/template/metadata"));
    assert!(last["value"]["annotations"][ANNOTATION_APPLIED].is_string());

    // Metadata without annotations: the map is created whole.
    let outcome = harden(&simple_pod(), &Context::default(), &Policy::default()).unwrap();
    let last = serde_json::to_value(outcome.patch.0.last().unwrap()).unwrap();
    assert_eq!(last["path"], json!("/metadata/annotations"));

    // Existing annotations: the key is added with `/` escaped.
    let mut object = simple_pod();
    object["metadata"]["annotations"] = json!({"a~b/c": "x"});
    let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
    let last = serde_json::to_value(outcome.patch.0.last().unwrap()).unwrap();
    assert_eq!(last["op"], json!("add"));
    assert_eq!(
        last["path"],
        json!("/metadata/annotations/kube-hardener.io~1applied")
    );
    assert_eq!(
        apply(&object, &outcome)["metadata"]["annotations"]["a~b/c"],
        json!("x")
    );

    // An earlier value is merged (union, canonical order, unknown names kept).
    object["metadata"]["annotations"] = json!({ANNOTATION_APPLIED: "fsGroup,legacyThing"});
    let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
    let last = serde_json::to_value(outcome.patch.0.last().unwrap()).unwrap();
    assert_eq!(last["op"], json!("replace"));
    assert_eq!(
        last["value"],
        json!(
            "runAsNonRoot,seccompProfile,allowPrivilegeEscalation,capabilities,readOnlyRootFilesystem,fsGroup,legacyThing"
        )
    );

    // Nothing new relative to the recorded value: no annotation op.
    let mut object = simple_pod();
    object["spec"]["securityContext"] =
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
    object["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true});
    object["metadata"]["annotations"] = json!({ANNOTATION_APPLIED: "Capabilities"});
    let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
    assert_eq!(outcome.applied, vec![Setting::Capabilities]);
    assert_eq!(outcome.patch.0.len(), 1, "{}", outcome.patch);
}

#[test]
fn hardening_the_output_again_changes_nothing() {
    let object = pod(json!({
        "containers": [{"name": "app"}, {"name": "root", "securityContext": {"runAsUser": 0}}],
        "initContainers": [{"name": "sidecar", "restartPolicy": "Always"}]
    }));
    let first = harden(&object, &Context::default(), &Policy::default()).unwrap();
    let out = apply(&object, &first);
    let second = harden(&out, &Context::default(), &Policy::default()).unwrap();
    assert!(second.is_empty(), "{}", second.patch);
    assert!(second.applied.is_empty());
    assert_eq!(first.warnings, second.warnings);
}

#[test]
fn malformed_objects_are_errors_not_panics() {
    let cases = [
        (json!("pod"), EngineError::NotAnObject),
        (json!({"kind": 5}), wrong("kind", "a string")),
        (json!({"kind": "Pod"}), wrong("spec", "an object")),
        (
            json!({"kind": "Pod", "spec": "x"}),
            wrong("spec", "an object"),
        ),
        (
            json!({"kind": "Pod", "spec": {"containers": {}}}),
            wrong("spec.containers", "an array"),
        ),
        (
            json!({"kind": "Pod", "spec": {"securityContext": "x"}}),
            wrong("spec.securityContext", "an object"),
        ),
        (
            json!({"kind": "Pod", "metadata": [], "spec": {}}),
            wrong("metadata", "an object"),
        ),
        (
            json!({"kind": "Pod", "metadata": {"namespace": 1}, "spec": {}}),
            wrong("metadata.namespace", "a string"),
        ),
        (
            json!({"kind": "Pod", "metadata": {"annotations": []}, "spec": {}}),
            wrong("metadata.annotations", "an object"),
        ),
        (
            json!({"kind": "Pod", "metadata": {"annotations": {"kube-hardener.io/skip": 1}}, "spec": {}}),
            wrong("metadata.annotations[kube-hardener.io/skip]", "a string"),
        ),
        (
            json!({"kind": "Pod", "metadata": {"annotations": {"kube-hardener.io/applied": true}}, "spec": {}}),
            wrong("metadata.annotations[kube-hardener.io/applied]", "a string"),
        ),
        (
            json!({"kind": "Deployment", "spec": {"template": {"spec": {"initContainers": [1]}}}}),
            wrong("spec.template.spec.initContainers[0]", "an object"),
        ),
    ];
    for (object, expected) in cases {
        assert_eq!(
            harden(&object, &Context::default(), &Policy::default()),
            Err(expected),
            "{object}"
        );
    }
}

fn wrong(path: &str, expected: &'static str) -> EngineError {
    EngineError::WrongType {
        path: path.to_owned(),
        expected,
    }
}

#[test]
fn unnamed_containers_are_hardened() {
    let object = pod(json!({"containers": [{"image": "x"}]}));
    let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
    let out = apply(&object, &outcome);
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        json!(true)
    );
    assert_eq!(
        out["spec"]["volumes"][0]["name"],
        json!("kh-containers-0-tmp")
    );
}

#[test]
fn writable_paths_annotation_replaces_the_configuration() {
    let cases = [
        (
            "/var/cache/nginx, /run/",
            vec!["/var/cache/nginx", "/run"],
            0,
        ),
        ("", vec![], 0),
        ("relative,/ok,/x/../y,/c:", vec!["/ok"], 3),
    ];
    for (value, mounted, warnings) in cases {
        let mut object = simple_pod();
        object["metadata"]["annotations"] = json!({"kube-hardener.io/writable-paths": value});
        let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
        let out = apply(&object, &outcome);
        let got: Vec<_> = out["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["mountPath"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(got, mounted, "{value}");
        assert_eq!(outcome.warnings.len(), warnings, "{value}");
        assert!(
            outcome
                .warnings
                .iter()
                .all(|w| w.kind == WarningKind::Annotation
                    && w.field == "metadata.annotations[kube-hardener.io/writable-paths]")
        );
        assert!(outcome.applied.contains(&Setting::ReadOnlyRootFilesystem));
    }
}

#[test]
fn new_ephemeral_containers_only() {
    let old = pod(json!({
        "containers": [{"name": "app"}],
        "ephemeralContainers": [{"name": "debugger-1"}]
    }));
    let mut new = old.clone();
    new["spec"]["ephemeralContainers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "debugger-2", "image": "busybox", "targetContainerName": "app"}));
    let outcome =
        harden_new_ephemeral_containers(&new, &old, &Context::default(), &Policy::default())
            .unwrap();
    assert_eq!(outcome.disposition, Disposition::Hardened);
    for op in outcome.patch.iter() {
        assert!(
            op.path()
                .as_str()
                .starts_with("/spec/ephemeralContainers/1"),
            "{}",
            op.path()
        );
    }
    let out = apply(&new, &outcome);
    assert_eq!(
        out["spec"]["ephemeralContainers"][1]["securityContext"],
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"},
               "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(
        outcome.applied,
        vec![
            Setting::RunAsNonRoot,
            Setting::SeccompProfile,
            Setting::AllowPrivilegeEscalation,
            Setting::Capabilities
        ]
    );
    assert_eq!(outcome.warnings.len(), 1);
    assert_eq!(outcome.warnings[0].kind, WarningKind::NotInjected);
    assert!(outcome.warnings[0].message.contains("/tmp"));

    // Same opt-outs and exclusions as on create.
    let ns = annotations(&[("kube-hardener.io/skip", "all")]);
    let ctx = Context {
        namespace: None,
        namespace_annotations: Some(&ns),
        images: None,
    };
    let skipped = harden_new_ephemeral_containers(&new, &old, &ctx, &Policy::default()).unwrap();
    assert_eq!(skipped.disposition, Disposition::SkippedAll);
    let ctx = Context {
        namespace: Some("kube-system"),
        namespace_annotations: None,
        images: None,
    };
    let excluded = harden_new_ephemeral_containers(&new, &old, &ctx, &Policy::default()).unwrap();
    assert!(excluded.is_empty());

    // Nothing new: nothing to do.
    let same = harden_new_ephemeral_containers(&old, &old, &Context::default(), &Policy::default())
        .unwrap();
    assert!(same.is_empty() && same.warnings.is_empty());

    // Not a pod.
    let other = harden_new_ephemeral_containers(
        &json!({"kind": "Deployment"}),
        &old,
        &Context::default(),
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(
        other.disposition,
        Disposition::UnsupportedKind("Deployment".into())
    );

    // Malformed old object.
    let err = harden_new_ephemeral_containers(
        &new,
        &json!({"spec": {"ephemeralContainers": 1}}),
        &Context::default(),
        &Policy::default(),
    );
    assert_eq!(
        err,
        Err(wrong("oldObject.spec.ephemeralContainers", "an array"))
    );
}

#[test]
fn null_means_unset_everywhere() {
    let object = json!({
        "kind": "Pod",
        "metadata": {"name": "n", "annotations": null},
        "spec": {
            "securityContext": null,
            "volumes": null,
            "os": null,
            "containers": [
                {"name": "a", "securityContext": null, "volumeMounts": null},
                {"name": "b", "securityContext": {"capabilities": null, "runAsNonRoot": null}},
                {"name": "c", "securityContext": {"capabilities": {"drop": null, "add": null}}}
            ]
        }
    });
    let outcome = harden(&object, &Context::default(), &Policy::default()).unwrap();
    let out = apply(&object, &outcome);
    assert_eq!(out["spec"]["securityContext"]["runAsNonRoot"], json!(true));
    for i in 0..3 {
        let sc = &out["spec"]["containers"][i]["securityContext"];
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{i}");
        assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{i}");
    }
    assert_eq!(out["spec"]["volumes"].as_array().map(Vec::len), Some(3));
    assert!(out["metadata"]["annotations"][ANNOTATION_APPLIED].is_string());
    let again = harden(&out, &Context::default(), &Policy::default()).unwrap();
    assert!(again.is_empty(), "{}", again.patch);
}
