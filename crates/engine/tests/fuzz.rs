//! Fuzzing the engine with arbitrary JSON: objects built from the field
//! names the engine reads, holding values of every JSON type at every place,
//! so that each typed read meets each wrong type. The engine must answer
//! every one with an outcome or a typed error, never a panic; an outcome's
//! patch must apply to the object as received, and a second run over the
//! result must add nothing.
//!
//! CI runs the default number of cases; `scripts/fuzz.sh` runs it for hours
//! (`PROPTEST_CASES`), see docs/conformance.md for what was run and found.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube_hardener_engine::{Context, Policy, harden, harden_new_ephemeral_containers};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// The keys the engine looks at, plus a few it never reads.
const KEYS: &[&str] = &[
    "kind",
    "metadata",
    "namespace",
    "annotations",
    "spec",
    "template",
    "jobTemplate",
    "containers",
    "initContainers",
    "ephemeralContainers",
    "name",
    "securityContext",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "fsGroupChangePolicy",
    "seccompProfile",
    "type",
    "capabilities",
    "add",
    "drop",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "procMount",
    "seLinuxOptions",
    "windowsOptions",
    "hostProcess",
    "runAsUserName",
    "sysctls",
    "volumes",
    "volumeMounts",
    "volumeDevices",
    "mountPath",
    "devicePath",
    "hostPath",
    "emptyDir",
    "os",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "kube-hardener.io/skip",
    "kube-hardener.io/writable-paths",
    "kube-hardener.io/applied",
    "seccomp.security.alpha.kubernetes.io/pod",
    "container.seccomp.security.alpha.kubernetes.io/a",
    "x~y/z",
    "",
];

/// Strings the engine compares against, and some it must survive.
const STRINGS: &[&str] = &[
    "Pod",
    "Deployment",
    "CronJob",
    "windows",
    "linux",
    "ALL",
    "all",
    "SYS_ADMIN",
    "CAP_SYS_ADMIN",
    "NET_BIND_SERVICE",
    "RuntimeDefault",
    "Unconfined",
    "Localhost",
    "unconfined",
    "Unmasked",
    "spc_t",
    "ContainerAdministrator",
    "/tmp",
    "/tmp/",
    "/proc",
    "/dev/shm",
    "../etc",
    "a,b,,/x,all",
    "runAsNonRoot,capabilities",
    "",
    "a",
    "kh-a-tmp",
    "é\u{0}\n\u{1b}",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(1000), Just(i64::MAX)]
            .prop_map(Value::from),
        Just(json!(1.5)),
        prop::sample::select(STRINGS).prop_map(Value::from),
        "[a-z/:.~]{0,12}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|entries| {
                let mut map = Map::new();
                for (key, value) in entries {
                    map.insert(key.to_owned(), value);
                }
                Value::Object(map)
            }),
        ]
    })
}

/// An object with a supported kind at the root, anything below.
fn object() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["Pod", "Deployment", "CronJob", "Service", ""][..]),
        value(),
        value(),
    )
        .prop_map(
            |(kind, spec, metadata)| json!({"kind": kind, "spec": spec, "metadata": metadata}),
        )
}

fn check(
    object: &Value,
    outcome: Result<kube_hardener_engine::Outcome, kube_hardener_engine::EngineError>,
    policy: &Policy,
) {
    let Ok(outcome) = outcome else {
        return;
    };
    let mut patched = object.clone();
    if let Err(error) = json_patch::patch(&mut patched, &outcome.patch) {
        panic!(
            "patch does not apply: {error}\nobject: {object}\npatch: {:?}",
            outcome.patch
        );
    }
    let again = harden(&patched, &Context::default(), policy)
        .unwrap_or_else(|error| panic!("the hardened object no longer reads: {error}\n{patched}"));
    assert!(
        again.patch.0.is_empty(),
        "second run changed more: {:?}\nafter the first: {patched}",
        again.patch
    );
}

proptest! {
    #[test]
    fn arbitrary_objects_get_an_outcome_or_a_typed_error(object in object()) {
        let policy = Policy { fs_group: Some(2000), run_as_user: Some(1000), ..Policy::default() };
        let outcome = harden(&object, &Context::default(), &policy);
        check(&object, outcome, &policy);
    }

    #[test]
    fn arbitrary_ephemeral_updates_never_panic(new in object(), old in object()) {
        if let Ok(outcome) =
            harden_new_ephemeral_containers(&new, &old, &Context::default(), &Policy::default())
        {
            let mut patched = new.clone();
            prop_assert!(json_patch::patch(&mut patched, &outcome.patch).is_ok(), "{new}");
        }
    }
}
