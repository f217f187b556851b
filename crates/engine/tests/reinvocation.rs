//! Mutating webhooks run one after another and may be called again
//! (`reinvocationPolicy: IfNeeded`). When another webhook (a service mesh
//! injector, say) adds containers after kube-hardener, the second call must
//! harden only what is new, keep everything the first call set, and record
//! the union of both calls in the provenance annotation.

// Test helpers outside #[test] functions fail loudly on broken fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube_hardener_engine::{ANNOTATION_APPLIED, Context, Outcome, Policy, Setting, harden};
use serde_json::{Value, json};

fn apply(object: &Value, outcome: &Outcome) -> Value {
    let mut out = object.clone();
    json_patch::patch(&mut out, &outcome.patch).expect("patch applies");
    out
}

fn op_paths(outcome: &Outcome) -> Vec<String> {
    outcome
        .patch
        .iter()
        .map(|op| op.path().as_str().to_owned())
        .collect()
}

/// What a sidecar injector typically adds: an init container that runs as
/// root with explicit values, and a proxy sidecar without a securityContext
/// for capabilities or the root filesystem.
fn inject_mesh(pod: &mut Value) {
    let spec = pod["spec"].as_object_mut().unwrap();
    spec.insert(
        "initContainers".to_owned(),
        json!([{
            "name": "mesh-init",
            "image": "registry.example/mesh/proxy:1",
            "securityContext": {
                "runAsUser": 0, "runAsNonRoot": false, "runAsGroup": 0,
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
            }
        }]),
    );
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "mesh-proxy",
            "image": "registry.example/mesh/proxy:1",
            "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}
        }));
    pod["metadata"]["annotations"]["mesh.example/status"] = json!("injected");
}

#[test]
fn a_container_added_by_a_later_webhook_is_hardened_alone() {
    // The application container already drops ALL, so the first call does
    // not apply `capabilities`; the proxy added later needs it.
    let original = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shop", "namespace": "apps"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
            "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}
    });
    let policy = Policy::default();
    let first = harden(&original, &Context::default(), &policy).unwrap();
    assert!(!first.applied.contains(&Setting::Capabilities));
    let mut hardened = apply(&original, &first);
    assert_eq!(
        hardened["metadata"]["annotations"][ANNOTATION_APPLIED],
        json!("runAsNonRoot,seccompProfile,allowPrivilegeEscalation,readOnlyRootFilesystem")
    );

    inject_mesh(&mut hardened);
    let second = harden(&hardened, &Context::default(), &policy).unwrap();
    let out = apply(&hardened, &second);

    // Only the proxy, a new volume for its /tmp and the annotation change.
    let proxy = "/spec/containers/1";
    for path in op_paths(&second) {
        assert!(
            path.starts_with(proxy)
                || path == "/spec/volumes/-"
                || path == "/metadata/annotations/kube-hardener.io~1applied",
            "second call touched {path}"
        );
    }
    assert_eq!(
        out["spec"]["containers"][1]["securityContext"],
        json!({"runAsUser": 1337, "runAsGroup": 1337, "allowPrivilegeEscalation": false,
               "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true})
    );
    assert_eq!(
        out["spec"]["containers"][1]["volumeMounts"],
        json!([{"name": "kh-mesh-proxy-tmp", "mountPath": "/tmp"}])
    );
    // The init container's explicit values are the injector's: untouched.
    assert_eq!(
        out["spec"]["initContainers"],
        hardened["spec"]["initContainers"]
    );
    // Everything the first call set is still there.
    assert_eq!(
        out["spec"]["containers"][0],
        hardened["spec"]["containers"][0]
    );
    assert_eq!(
        out["spec"]["securityContext"],
        hardened["spec"]["securityContext"]
    );
    // The annotation is the union, in canonical order.
    assert_eq!(
        out["metadata"]["annotations"][ANNOTATION_APPLIED],
        json!(
            "runAsNonRoot,seccompProfile,allowPrivilegeEscalation,capabilities,readOnlyRootFilesystem"
        )
    );
    assert_eq!(
        out["metadata"]["annotations"]["mesh.example/status"],
        json!("injected")
    );

    // A third call (another reinvocation) changes nothing.
    let third = harden(&out, &Context::default(), &policy).unwrap();
    assert!(third.is_empty(), "{}", third.patch);
}

#[test]
fn an_added_root_container_after_pod_level_run_as_non_root_is_reported() {
    // The first call put runAsNonRoot at pod level; a later webhook adds a
    // container with runAsUser 0 but no runAsNonRoot of its own. The
    // engine never overrides a value, its own earlier ones included, so the
    // pod-level value stays and an admission warning says the container
    // will not start.
    let original = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shop", "namespace": "apps"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    });
    let policy = Policy::default();
    let first = harden(&original, &Context::default(), &policy).unwrap();
    let mut hardened = apply(&original, &first);
    assert_eq!(
        hardened["spec"]["securityContext"]["runAsNonRoot"],
        json!(true)
    );
    hardened["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "late", "securityContext": {"runAsUser": 0}}));
    let second = harden(&hardened, &Context::default(), &policy).unwrap();
    for path in op_paths(&second) {
        assert!(
            path.starts_with("/spec/containers/1") || path == "/spec/volumes/-",
            "{path}"
        );
    }
    let reported: Vec<String> = second.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        reported,
        vec![
            "spec.containers{late}.securityContext.runAsUser: runs as UID 0 under runAsNonRoot: true; the kubelet will not start it"
        ]
    );
    let out = apply(&hardened, &second);
    assert_eq!(out["spec"]["securityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(
        out["spec"]["containers"][1]["securityContext"].get("runAsNonRoot"),
        None
    );
}
