//! Properties over generated pods: random mixes of containers, init
//! (sidecar) and ephemeral containers, random presence and values of every
//! securityContext field, random volumes and mounts, unknown fields, Windows
//! or Linux, and random policies.

// Test helpers outside #[test] functions fail loudly on broken fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use kube_hardener_engine::{
    Context, Disposition, Policy, Setting, harden, harden_new_ephemeral_containers,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const UNKNOWN: &str = "x-kh-unknown";
const PATHS: [&str; 4] = ["/tmp", "/tmp/", "/data", "/var/cache"];

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    prop::option::weighted(0.4, s)
}

fn insert(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

fn uid() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), Just(1000), Just(65534)]
}

fn seccomp() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"type": "RuntimeDefault"})),
        Just(json!({"type": "Localhost", "localhostProfile": "profiles/a.json"})),
        Just(json!({"type": "Unconfined"})),
    ]
}

fn unknown() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"nested": [1, {"deep": true}]})),
        Just(json!("text")),
        Just(json!(42)),
        Just(json!([])),
        Just(json!({})),
    ]
}

fn caps() -> impl Strategy<Value = Value> {
    let add = prop::sample::subsequence(
        vec![
            "NET_BIND_SERVICE",
            "SYS_ADMIN",
            "CAP_SYS_ADMIN",
            "NET_ADMIN",
        ],
        0..=2,
    );
    let drop = prop::sample::subsequence(vec!["NET_RAW", "all", "ALL"], 0..=2);
    (opt(add), opt(drop), opt(unknown())).prop_map(|(add, drop, extra)| {
        let mut m = Map::new();
        insert(&mut m, "add", add.map(|a| json!(a)));
        insert(&mut m, "drop", drop.map(|d| json!(d)));
        insert(&mut m, UNKNOWN, extra);
        Value::Object(m)
    })
}

fn container_sc() -> impl Strategy<Value = Value> {
    (
        opt(any::<bool>()),
        opt(uid()),
        opt(any::<bool>()),
        opt(prop::bool::weighted(0.2)),
        opt(any::<bool>()),
        opt(prop_oneof![4 => caps(), 1 => Just(Value::Null)]),
        opt(seccomp()),
        opt(prop_oneof![Just("Default"), Just("Unmasked")]),
        opt(unknown()),
        opt(uid()),
    )
        .prop_map(
            |(rnr, user, ape, privileged, rorf, caps, seccomp, proc_mount, extra, group)| {
                let mut m = Map::new();
                insert(&mut m, "runAsNonRoot", rnr.map(Value::Bool));
                insert(&mut m, "runAsUser", user.map(Value::from));
                insert(&mut m, "runAsGroup", group.map(Value::from));
                insert(&mut m, "allowPrivilegeEscalation", ape.map(Value::Bool));
                insert(&mut m, "privileged", privileged.map(Value::Bool));
                insert(&mut m, "readOnlyRootFilesystem", rorf.map(Value::Bool));
                insert(&mut m, "capabilities", caps);
                insert(&mut m, "seccompProfile", seccomp);
                insert(&mut m, "procMount", proc_mount.map(Value::from));
                insert(&mut m, UNKNOWN, extra);
                Value::Object(m)
            },
        )
}

fn pod_sc() -> impl Strategy<Value = Value> {
    (
        opt(any::<bool>()),
        opt(uid()),
        opt(uid()),
        opt(seccomp()),
        opt(Just(2000i64)),
        opt(prop_oneof![Just("Always"), Just("OnRootMismatch")]),
        opt(unknown()),
    )
        .prop_map(|(rnr, user, group, seccomp, fs_group, change, extra)| {
            let mut m = Map::new();
            insert(&mut m, "runAsNonRoot", rnr.map(Value::Bool));
            insert(&mut m, "runAsUser", user.map(Value::from));
            insert(&mut m, "runAsGroup", group.map(Value::from));
            insert(&mut m, "seccompProfile", seccomp);
            insert(&mut m, "fsGroup", fs_group.map(Value::from));
            insert(&mut m, "fsGroupChangePolicy", change.map(Value::from));
            insert(&mut m, UNKNOWN, extra);
            Value::Object(m)
        })
}

/// (securityContext, mounted path indexes, has a name, sidecar, unknown
/// field, `/tmp/` spelled with a trailing slash)
type ContainerParts = (Option<Value>, Vec<usize>, bool, bool, Option<Value>, bool);

fn container() -> impl Strategy<Value = ContainerParts> {
    (
        // `null` is how some clients spell "unset".
        opt(prop_oneof![4 => container_sc(), 1 => Just(Value::Null)]),
        prop::sample::subsequence(vec![0usize, 2, 3], 0..=2),
        prop::bool::weighted(0.9),
        any::<bool>(),
        opt(unknown()),
        any::<bool>(),
    )
}

fn volume_kind() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(json!({"emptyDir": {}})),
        2 => Just(json!({"configMap": {"name": "cm"}})),
        2 => Just(json!({"persistentVolumeClaim": {"claimName": "data"}})),
        1 => Just(json!({"hostPath": {"path": "/var/log"}})),
    ]
}

fn pod() -> impl Strategy<Value = Value> {
    (
        prop::bool::weighted(0.15),
        opt(prop_oneof![4 => pod_sc(), 1 => Just(Value::Null)]),
        prop::collection::vec(container(), 1..4),
        prop::collection::vec(container(), 0..3),
        prop::collection::vec(container(), 0..2),
        prop::collection::vec(volume_kind(), 0..3),
        any::<bool>(),
        opt(unknown()),
    )
        .prop_map(|(windows, sc, containers, inits, ephemerals, volume_kinds, clash, extra)| {
            let mut volumes: Vec<Value> = Vec::new();
            let mut spec = Map::new();
            let mut build = |list: &str, parts: Vec<ContainerParts>, spec: &mut Map<String, Value>| {
                let items: Vec<Value> = parts
                    .into_iter()
                    .enumerate()
                    .map(|(i, (sc, paths, named, sidecar, extra, slash))| {
                        let name = format!("{}{i}", &list[..1]);
                        let mut c = Map::new();
                        if named {
                            c.insert("name".into(), json!(name));
                        }
                        c.insert("image".into(), json!("registry.example/app:1"));
                        insert(&mut c, "securityContext", sc);
                        if sidecar && list == "initContainers" {
                            c.insert("restartPolicy".into(), json!("Always"));
                        }
                        if !paths.is_empty() {
                            let mounts: Vec<Value> = paths
                                .iter()
                                .map(|p| {
                                    let vol = format!("v-{name}-{p}");
                                    volumes.push(json!({"name": vol, "emptyDir": {}}));
                                    let p = if *p == 0 && slash { 1 } else { *p };
                                    json!({"name": vol, "mountPath": PATHS[p]})
                                })
                                .collect();
                            c.insert("volumeMounts".into(), Value::Array(mounts));
                        }
                        insert(&mut c, UNKNOWN, extra);
                        Value::Object(c)
                    })
                    .collect();
                if !items.is_empty() {
                    spec.insert(list.to_owned(), Value::Array(items));
                }
            };
            build("containers", containers, &mut spec);
            build("initContainers", inits, &mut spec);
            build("ephemeralContainers", ephemerals, &mut spec);
            for (i, kind) in volume_kinds.into_iter().enumerate() {
                let mut v = kind;
                v["name"] = json!(format!("extra-{i}"));
                volumes.push(v);
            }
            if clash {
                // A volume whose name the engine would pick for c0's /tmp.
                volumes.push(json!({"name": "kh-c0-tmp", "secret": {"secretName": "s"}}));
            }
            if !volumes.is_empty() {
                spec.insert("volumes".into(), Value::Array(volumes));
            }
            if windows {
                spec.insert("os".into(), json!({"name": "windows"}));
            }
            insert(&mut spec, "securityContext", sc);
            insert(&mut spec, UNKNOWN, extra);
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "apps"},
                   "spec": spec})
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::array::uniform6(prop::bool::weighted(0.8)),
        opt(prop_oneof![Just(1000i64), Just(0)]),
        opt(Just(3000i64)),
        opt(Just(2000i64)),
        prop::sample::subsequence(vec!["/tmp", "/var/cache", "/run/"], 0..=3),
    )
        .prop_map(|(switches, user, group, fs_group, paths)| {
            let mut policy = Policy::default();
            let s = &mut policy.settings;
            [
                s.run_as_non_root,
                s.seccomp_profile,
                s.allow_privilege_escalation,
                s.capabilities,
                s.read_only_root_filesystem,
                s.fs_group_change_policy,
            ] = switches;
            policy.run_as_user = user;
            policy.run_as_group = group;
            policy.fs_group = fs_group;
            policy.writable_paths = paths.into_iter().map(str::to_owned).collect();
            policy
        })
}

fn apply(input: &Value, policy: &Policy) -> (Value, kube_hardener_engine::Outcome) {
    let outcome = harden(input, &Context::default(), policy).expect("well-formed pod");
    let mut output = input.clone();
    json_patch::patch(&mut output, &outcome.patch).expect("patch applies to the input");
    (output, outcome)
}

/// Every leaf (and empty container) of `input` with its JSON pointer.
fn leaves(value: &Value, at: String, out: &mut Vec<(String, Value)>) {
    let mut stack = vec![(at, value)];
    while let Some((at, value)) = stack.pop() {
        match value {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    stack.push((
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        v,
                    ));
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    stack.push((format!("{at}/{i}"), v));
                }
            }
            _ => out.push((at, value.clone())),
        }
    }
}

fn all_containers(pod: &Value) -> Vec<&Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .collect()
}

fn adds_sys_admin(c: &Value) -> bool {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "SYS_ADMIN" || x == "CAP_SYS_ADMIN"))
}

/// Inputs the restricted property is about: no explicit value that the
/// engine must keep and that the restricted profile forbids.
fn is_clean(pod: &Value) -> bool {
    let spec = &pod["spec"];
    let sc = &spec["securityContext"];
    let bad_pod = spec["os"]["name"] == "windows"
        || sc["runAsNonRoot"] == false
        || sc["runAsUser"] == 0
        || sc["seccompProfile"]["type"] == "Unconfined"
        || spec["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v.get("hostPath").is_some()));
    let bad_container = all_containers(pod).into_iter().any(|c| {
        let sc = &c["securityContext"];
        sc["privileged"] == true
            || sc["runAsNonRoot"] == false
            || sc["runAsUser"] == 0
            || sc["allowPrivilegeEscalation"] == true
            || sc["seccompProfile"]["type"] == "Unconfined"
            || sc["capabilities"]["add"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x != "NET_BIND_SERVICE"))
    });
    !bad_pod && !bad_container
}

/// The Pod Security Standards "restricted" rules (v1.37), as a list of
/// violations.
fn restricted_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let sc = &spec["securityContext"];
    let mut v = Vec::new();
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        let ok = vol.as_object().is_some_and(|m| {
            m.keys()
                .filter(|k| *k != "name")
                .all(|k| allowed_volumes.contains(&k.as_str()))
        });
        if !ok {
            v.push(format!("volume type: {vol}"));
        }
    }
    if sc["runAsUser"] == 0 {
        v.push("pod runAsUser 0".into());
    }
    let pod_rnr = sc["runAsNonRoot"] == true;
    let pod_seccomp = matches!(
        sc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault" | "Localhost")
    );
    if sc["seccompProfile"]["type"] == "Unconfined" {
        v.push("pod seccomp Unconfined".into());
    }
    for c in all_containers(pod) {
        let csc = &c["securityContext"];
        let name = c["name"].as_str().unwrap_or("?");
        if csc["privileged"] == true {
            v.push(format!("{name}: privileged"));
        }
        if csc["allowPrivilegeEscalation"] != false {
            v.push(format!("{name}: allowPrivilegeEscalation"));
        }
        match csc["runAsNonRoot"].as_bool() {
            Some(false) => v.push(format!("{name}: runAsNonRoot false")),
            None if !pod_rnr => v.push(format!("{name}: runAsNonRoot unset")),
            _ => {}
        }
        if csc["runAsUser"] == 0 {
            v.push(format!("{name}: runAsUser 0"));
        }
        match csc["seccompProfile"]["type"].as_str() {
            Some("RuntimeDefault" | "Localhost") => {}
            None if pod_seccomp => {}
            other => v.push(format!("{name}: seccomp {other:?}")),
        }
        let caps = &csc["capabilities"];
        if !caps["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        {
            v.push(format!("{name}: drop ALL"));
        }
        if caps["add"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x != "NET_BIND_SERVICE"))
        {
            v.push(format!("{name}: added capabilities"));
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) applies, (b) idempotent, (c) never overrides, (d) unknown fields survive.
    #[test]
    fn patch_applies_is_idempotent_and_never_overrides(input in pod(), policy in policy()) {
        let (output, outcome) = apply(&input, &policy);
        prop_assert_eq!(&outcome.disposition, &Disposition::Hardened);

        let (again, second) = apply(&output, &policy);
        prop_assert!(second.patch.0.is_empty(), "second pass: {}", second.patch);
        prop_assert!(second.applied.is_empty());
        prop_assert_eq!(&again, &output);

        let mut input_leaves = Vec::new();
        leaves(&input, String::new(), &mut input_leaves);
        for (pointer, value) in &input_leaves {
            let now = output.pointer(pointer);
            match value {
                // `null` means unset and may be filled in.
                Value::Null => {}
                // An empty object or array may gain members, but stays one.
                Value::Object(_) => prop_assert!(now.is_some_and(Value::is_object), "{pointer}"),
                Value::Array(_) => prop_assert!(now.is_some_and(Value::is_array), "{pointer}"),
                _ => prop_assert_eq!(now, Some(value), "{}", pointer),
            }
        }
        // Drop lists only ever grow by one trailing "ALL".
        for (before, after) in all_containers(&input).into_iter().zip(all_containers(&output)) {
            let drop = |c: &Value| c["securityContext"]["capabilities"]["drop"].as_array().cloned();
            if let (Some(before), Some(after)) = (drop(before), drop(after)) {
                prop_assert!(after.len() == before.len() || (after.len() == before.len() + 1 && after.last() == Some(&json!("ALL"))));
            }
        }
        let count = |v: &Value| {
            let mut all = Vec::new();
            leaves(v, String::new(), &mut all);
            all.iter().filter(|(p, _)| p.contains(UNKNOWN)).count()
        };
        prop_assert_eq!(count(&input), count(&output));
    }

    /// (f) never allowPrivilegeEscalation: false next to privileged or SYS_ADMIN;
    /// Windows pods get nothing Linux-only; volumes and mounts never clash.
    #[test]
    fn output_is_accepted_by_the_api_server(input in pod(), policy in policy()) {
        let (output, outcome) = apply(&input, &policy);
        for (before, after) in all_containers(&input).into_iter().zip(all_containers(&output)) {
            let injected_ape = before["securityContext"]["allowPrivilegeEscalation"].is_null()
                && after["securityContext"]["allowPrivilegeEscalation"] == false;
            if injected_ape {
                prop_assert!(after["securityContext"]["privileged"] != true);
                prop_assert!(!adds_sys_admin(after));
            }
            let mut paths = BTreeSet::new();
            for mount in after["volumeMounts"].as_array().into_iter().flatten() {
                let path = mount["mountPath"].as_str().unwrap_or_default().trim_end_matches('/').to_owned();
                prop_assert!(paths.insert(path), "duplicate mount in {after}");
            }
        }
        let mut names = BTreeSet::new();
        for volume in output["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or_default();
            prop_assert!(names.insert(name.to_owned()), "duplicate volume {name}");
            prop_assert!(name.len() <= 63);
        }
        if input["spec"]["os"]["name"] == "windows" {
            prop_assert!(outcome.applied.iter().all(|s| *s == Setting::RunAsNonRoot), "{:?}", outcome.applied);
            prop_assert_eq!(&output["spec"]["volumes"], &input["spec"]["volumes"]);
        }
        for w in &outcome.warnings {
            prop_assert!(w.to_string().chars().count() < 200);
        }
    }

    /// (e) a pod without conflicting explicit fields comes out restricted.
    #[test]
    fn clean_pods_come_out_restricted(input in pod().prop_filter("conflicting explicit fields", is_clean)) {
        let (output, _) = apply(&input, &Policy::default());
        let violations = restricted_violations(&output);
        prop_assert!(violations.is_empty(), "{violations:?}\n{output:#}");
    }
}

const WORKLOAD_KINDS: [(&str, &str); 6] = [
    ("Deployment", "/spec/template"),
    ("StatefulSet", "/spec/template"),
    ("DaemonSet", "/spec/template"),
    ("ReplicaSet", "/spec/template"),
    ("Job", "/spec/template"),
    ("CronJob", "/spec/jobTemplate/spec/template"),
];

/// The workload of `kind` whose pod template is `pod`.
fn workload(kind: &str, template_at: &str, pod: &Value) -> Value {
    let mut metadata = pod["metadata"].clone();
    if let Some(m) = metadata.as_object_mut() {
        m.remove("namespace");
    }
    let template = json!({"metadata": metadata, "spec": pod["spec"].clone()});
    let mut object = json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "w", "namespace": "apps"}});
    let mut slot = &mut object;
    for key in template_at.trim_start_matches('/').split('/') {
        slot = &mut slot[key];
    }
    *slot = template;
    object
}

fn ops_with_paths(
    outcome: &kube_hardener_engine::Outcome,
    strip: &str,
) -> Vec<(String, String, Value)> {
    outcome
        .patch
        .iter()
        .map(|op| {
            let v = serde_json::to_value(op).unwrap();
            let path = v["path"].as_str().unwrap();
            let path = path
                .strip_prefix(strip)
                .unwrap_or_else(|| panic!("{path} outside {strip}"));
            (
                v["op"].as_str().unwrap().to_owned(),
                path.to_owned(),
                v["value"].clone(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A workload's template is hardened exactly like the same pod, and
    /// nothing outside the template is touched.
    #[test]
    fn workload_templates_are_hardened_like_pods(
        input in pod(),
        policy in policy(),
        kind in prop::sample::select(WORKLOAD_KINDS.to_vec()),
    ) {
        let (kind, at) = kind;
        let object = workload(kind, at, &input);
        let as_pod = harden(&input, &Context::default(), &policy).unwrap();
        let as_workload = harden(&object, &Context::default(), &policy).unwrap();
        prop_assert_eq!(ops_with_paths(&as_workload, at), ops_with_paths(&as_pod, ""));
        prop_assert_eq!(&as_workload.applied, &as_pod.applied);
        let kinds = |o: &kube_hardener_engine::Outcome| o.warnings.iter().map(|w| w.kind).collect::<Vec<_>>();
        prop_assert_eq!(kinds(&as_workload), kinds(&as_pod));
        let (output, _) = apply(&object, &policy);
        prop_assert_eq!(&output["metadata"], &object["metadata"]);
    }

    /// Only the newly added ephemeral container is touched; the result is a
    /// fixed point and keeps every explicit value.
    #[test]
    fn new_ephemeral_containers_are_hardened_alone(
        old in pod(),
        policy in policy(),
        sc in opt(container_sc()),
        mount_tmp in any::<bool>(),
    ) {
        let mut new = old.clone();
        let mut debug = json!({"name": "debug-new", "image": "busybox", "targetContainerName": "c0"});
        if let Some(sc) = sc {
            debug["securityContext"] = sc;
        }
        let volume = old["spec"]["volumes"][0]["name"].clone();
        if mount_tmp && volume.is_string() {
            debug["volumeMounts"] = json!([{"name": volume, "mountPath": "/tmp"}]);
        }
        let list = new["spec"]
            .as_object_mut()
            .unwrap()
            .entry("ephemeralContainers")
            .or_insert_with(|| json!([]));
        let index = list.as_array().map_or(0, Vec::len);
        list.as_array_mut().unwrap().push(debug);

        let outcome = harden_new_ephemeral_containers(&new, &old, &Context::default(), &policy).unwrap();
        let prefix = format!("/spec/ephemeralContainers/{index}");
        for op in outcome.patch.iter() {
            prop_assert!(op.path().as_str().starts_with(&prefix), "{}", op.path());
        }
        let mut output = new.clone();
        json_patch::patch(&mut output, &outcome.patch).unwrap();
        let again = harden_new_ephemeral_containers(&output, &old, &Context::default(), &policy).unwrap();
        prop_assert!(again.patch.0.is_empty(), "{}", again.patch);

        let mut before = Vec::new();
        leaves(&new, String::new(), &mut before);
        for (pointer, value) in &before {
            if !value.is_object() && !value.is_array() && !value.is_null() {
                prop_assert_eq!(output.pointer(pointer), Some(value), "{}", pointer);
            }
        }
        let added = &output["spec"]["ephemeralContainers"][index];
        if added["securityContext"]["allowPrivilegeEscalation"] == false && new["spec"]["ephemeralContainers"][index]["securityContext"]["allowPrivilegeEscalation"].is_null() {
            prop_assert!(added["securityContext"]["privileged"] != true && !adds_sys_admin(added));
        }
        if new["spec"]["os"]["name"] == "windows" {
            prop_assert!(outcome.applied.iter().all(|s| *s == Setting::RunAsNonRoot));
        }
    }
}

#[test]
fn the_restricted_checker_catches_each_rule() {
    let good = json!({"spec": {
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
        "volumes": [{"name": "v", "emptyDir": {}}]}});
    assert_eq!(restricted_violations(&good), Vec::<String>::new());
    let breaks: [(&str, Value); 8] = [
        ("/spec/securityContext/runAsNonRoot", json!(false)),
        ("/spec/securityContext/runAsUser", json!(0)),
        (
            "/spec/securityContext/seccompProfile/type",
            json!("Unconfined"),
        ),
        (
            "/spec/containers/0/securityContext/allowPrivilegeEscalation",
            json!(true),
        ),
        ("/spec/containers/0/securityContext/privileged", json!(true)),
        (
            "/spec/containers/0/securityContext/capabilities/drop",
            json!(["all"]),
        ),
        (
            "/spec/containers/0/securityContext/capabilities/add",
            json!(["NET_ADMIN"]),
        ),
        (
            "/spec/volumes/0",
            json!({"name": "v", "hostPath": {"path": "/"}}),
        ),
    ];
    for (pointer, value) in breaks {
        let mut pod = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        pod.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .map(|m| m.insert(key.into(), value.clone()))
            .or_else(|| {
                pod.pointer_mut(parent).unwrap().as_array_mut().map(|a| {
                    a[0] = value.clone();
                    None
                })
            });
        assert!(!restricted_violations(&pod).is_empty(), "{pointer}");
    }
}
