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
        opt(windows_options()),
    )
        .prop_map(
            |(
                rnr,
                user,
                ape,
                privileged,
                rorf,
                caps,
                seccomp,
                proc_mount,
                extra,
                group,
                windows,
            )| {
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
                insert(&mut m, "windowsOptions", windows);
                insert(&mut m, UNKNOWN, extra);
                Value::Object(m)
            },
        )
}

/// `windowsOptions`: the user name the Windows kubelet treats as root (in
/// several spellings) or an ordinary one, and rarely a HostProcess container.
fn windows_options() -> impl Strategy<Value = Value> {
    (
        opt(prop_oneof![
            Just("ContainerAdministrator"),
            Just("containeradministrator"),
            Just("ContainerUser"),
        ]),
        opt(prop::bool::weighted(0.1)),
    )
        .prop_map(|(user, host_process)| {
            let mut m = Map::new();
            insert(&mut m, "runAsUserName", user.map(Value::from));
            insert(&mut m, "hostProcess", host_process.map(Value::Bool));
            Value::Object(m)
        })
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
        opt(windows_options()),
    )
        .prop_map(
            |(rnr, user, group, seccomp, fs_group, change, extra, windows)| {
                let mut m = Map::new();
                insert(&mut m, "runAsNonRoot", rnr.map(Value::Bool));
                insert(&mut m, "runAsUser", user.map(Value::from));
                insert(&mut m, "runAsGroup", group.map(Value::from));
                insert(&mut m, "seccompProfile", seccomp);
                insert(&mut m, "fsGroup", fs_group.map(Value::from));
                insert(&mut m, "fsGroupChangePolicy", change.map(Value::from));
                insert(&mut m, "windowsOptions", windows);
                insert(&mut m, UNKNOWN, extra);
                Value::Object(m)
            },
        )
}

/// (securityContext, mounted path indexes, has a name, sidecar, unknown
/// field, `/tmp/` spelled with a trailing slash, a block device at `/tmp`)
type ContainerParts = (
    Option<Value>,
    Vec<usize>,
    bool,
    bool,
    Option<Value>,
    bool,
    bool,
);

fn container() -> impl Strategy<Value = ContainerParts> {
    (
        // `null` is how some clients spell "unset".
        opt(prop_oneof![4 => container_sc(), 1 => Just(Value::Null)]),
        prop::sample::subsequence(vec![0usize, 2, 3], 0..=2),
        prop::bool::weighted(0.9),
        any::<bool>(),
        opt(unknown()),
        any::<bool>(),
        prop::bool::weighted(0.1),
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
                    .map(|(i, (sc, paths, named, sidecar, extra, slash, device))| {
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
                        if device && !paths.contains(&0) && list != "ephemeralContainers" {
                            let vol = format!("blk-{name}");
                            volumes.push(json!({"name": vol, "persistentVolumeClaim": {"claimName": "raw"}}));
                            c.insert("volumeDevices".into(), json!([{"name": vol, "devicePath": "/tmp"}]));
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
            let flags = kube_hardener_engine::TABLE
                .iter()
                .filter(|row| matches!(row.switch, kube_hardener_engine::Switch::Flag(_)));
            for (row, on) in flags.zip(switches) {
                policy.settings.set(row.setting, on);
            }
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
    let windows_root = |sc: &Value| {
        sc["windowsOptions"]["hostProcess"] == true
            || sc["windowsOptions"]["runAsUserName"]
                .as_str()
                .is_some_and(|u| u.eq_ignore_ascii_case("ContainerAdministrator"))
    };
    let bad_pod = spec["os"]["name"] == "windows"
        || windows_root(sc)
        || sc["runAsNonRoot"] == false
        || sc["runAsUser"] == 0
        || sc["seccompProfile"]["type"] == "Unconfined"
        || spec["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v.get("hostPath").is_some()));
    let bad_container = all_containers(pod).into_iter().any(|c| {
        let sc = &c["securityContext"];
        sc["privileged"] == true
            || windows_root(sc)
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

/// Whether a new leaf at `pointer` is one the engine may write: a field of a
/// setting in a pod or container securityContext, a writable emptyDir volume
/// or its mount, or the provenance annotation. Never `privileged`,
/// `procMount`, `seLinuxOptions`, `sysctls` or `capabilities.add`.
fn written_by_a_setting(pointer: &str) -> bool {
    const POD_SC: [&str; 6] = [
        "runAsNonRoot",
        "runAsUser",
        "runAsGroup",
        "seccompProfile/type",
        "fsGroup",
        "fsGroupChangePolicy",
    ];
    const CONTAINER_SC: [&str; 5] = [
        "runAsNonRoot",
        "seccompProfile/type",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "capabilities/drop/",
    ];
    if pointer == "/metadata/annotations/kube-hardener.io~1applied" {
        return true;
    }
    if let Some(rest) = pointer.strip_prefix("/spec/securityContext/") {
        return POD_SC.contains(&rest);
    }
    if let Some(rest) = pointer.strip_prefix("/spec/volumes/") {
        let field = rest.split_once('/').map_or("", |(_, f)| f);
        return field == "name" || field == "emptyDir";
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(rest) = pointer.strip_prefix(&format!("/spec/{list}/")) else {
            continue;
        };
        let field = rest.split_once('/').map_or("", |(_, f)| f);
        if let Some(sc) = field.strip_prefix("securityContext/") {
            return CONTAINER_SC.iter().any(|allowed| {
                sc == *allowed || (allowed.ends_with('/') && sc.starts_with(allowed))
            });
        }
        if let Some(mount) = field.strip_prefix("volumeMounts/") {
            let key = mount.split_once('/').map_or("", |(_, k)| k);
            return key == "name" || key == "mountPath";
        }
    }
    false
}

#[test]
fn the_write_allowlist_refuses_fields_that_are_never_injected() {
    for pointer in [
        "/spec/securityContext/runAsNonRoot",
        "/spec/securityContext/seccompProfile/type",
        "/spec/containers/0/securityContext/capabilities/drop/1",
        "/spec/initContainers/2/volumeMounts/0/mountPath",
        "/spec/volumes/3/emptyDir",
        "/metadata/annotations/kube-hardener.io~1applied",
    ] {
        assert!(written_by_a_setting(pointer), "{pointer}");
    }
    for pointer in [
        "/spec/containers/0/securityContext/privileged",
        "/spec/containers/0/securityContext/procMount",
        "/spec/containers/0/securityContext/seLinuxOptions/type",
        "/spec/securityContext/sysctls/0/name",
        "/spec/containers/0/securityContext/capabilities/add/0",
        "/spec/securityContext/seLinuxOptions",
        "/spec/volumes/0/hostPath/path",
        "/spec/containers/0/volumeMounts/0/subPath",
        "/metadata/annotations/other",
        "/spec/hostNetwork",
    ] {
        assert!(!written_by_a_setting(pointer), "{pointer}");
    }
}

/// Security-context fields the API server forbids when `spec.os.name` is
/// `windows` (pod level, then container level), as documented on each field
/// of the v1.37 API ("cannot be set when spec.os.name is windows").
const WINDOWS_FORBIDDEN_POD: [&str; 11] = [
    "appArmorProfile",
    "fsGroup",
    "fsGroupChangePolicy",
    "runAsGroup",
    "runAsUser",
    "seLinuxChangePolicy",
    "seLinuxOptions",
    "seccompProfile",
    "supplementalGroups",
    "supplementalGroupsPolicy",
    "sysctls",
];
const WINDOWS_FORBIDDEN_CONTAINER: [&str; 10] = [
    "allowPrivilegeEscalation",
    "appArmorProfile",
    "capabilities",
    "privileged",
    "procMount",
    "readOnlyRootFilesystem",
    "runAsGroup",
    "runAsUser",
    "seLinuxOptions",
    "seccompProfile",
];

/// The rules of kube-apiserver's pod validation (pkg/apis/core/validation)
/// and of the kubelet's start-up checks that a mutation of security
/// contexts, volumes and mounts could break, as a list of violations.
fn api_violations(pod: &Value) -> BTreeSet<String> {
    let spec = &pod["spec"];
    let pod_sc = &spec["securityContext"];
    let mut v = BTreeSet::new();
    let windows = spec["os"]["name"] == "windows";
    if windows {
        for field in WINDOWS_FORBIDDEN_POD {
            if pod_sc.get(field).is_some_and(|f| !f.is_null()) {
                v.insert(format!("windows pod: securityContext.{field}"));
            }
        }
    }
    match pod_sc["fsGroupChangePolicy"].as_str() {
        None | Some("OnRootMismatch" | "Always") => {}
        Some(other) => {
            v.insert(format!("fsGroupChangePolicy {other}"));
        }
    }
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        if pod_sc[key]
            .as_i64()
            .is_some_and(|id| !(0..=i64::from(i32::MAX)).contains(&id))
        {
            v.insert(format!("pod {key} out of range"));
        }
    }
    let mut volumes = BTreeSet::new();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let name = volume["name"].as_str().unwrap_or_default();
        if !kube_hardener_engine::is_dns_label(name) {
            v.insert(format!("volume name {name:?} is not a DNS-1123 label"));
        }
        if !volumes.insert(name.to_owned()) {
            v.insert(format!("volume name {name:?} is not unique"));
        }
    }
    for c in all_containers(pod) {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if windows {
            for field in WINDOWS_FORBIDDEN_CONTAINER {
                if sc.get(field).is_some_and(|f| !f.is_null()) {
                    v.insert(format!("{name}: windows pod: securityContext.{field}"));
                }
            }
        }
        if sc["allowPrivilegeEscalation"] == false {
            if sc["privileged"] == true {
                v.insert(format!(
                    "{name}: allowPrivilegeEscalation false with privileged"
                ));
            }
            let adds_cap_sys_admin = sc["capabilities"]["add"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "CAP_SYS_ADMIN"));
            if adds_cap_sys_admin {
                v.insert(format!(
                    "{name}: allowPrivilegeEscalation false with CAP_SYS_ADMIN"
                ));
            }
        }
        let devices: Vec<&str> = c["volumeDevices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["devicePath"].as_str())
            .collect();
        let mut paths = BTreeSet::new();
        for mount in c["volumeMounts"].as_array().into_iter().flatten() {
            let volume = mount["name"].as_str().unwrap_or_default();
            let path = mount["mountPath"].as_str().unwrap_or_default();
            if !volumes.contains(volume) {
                v.insert(format!("{name}: mount of unknown volume {volume:?}"));
            }
            if path.is_empty() || !paths.insert(path) {
                v.insert(format!("{name}: mountPath {path:?} empty or not unique"));
            }
            if devices.contains(&path) {
                v.insert(format!("{name}: mountPath {path:?} is a devicePath"));
            }
        }
        // The kubelet refuses to start a container whose effective
        // runAsNonRoot is true and whose effective user is root.
        let effective = |key: &str| {
            Some(&sc[key])
                .filter(|x| !x.is_null())
                .unwrap_or(&pod_sc[key])
                .clone()
        };
        let user_name = Some(&sc["windowsOptions"]["runAsUserName"])
            .filter(|x| !x.is_null())
            .unwrap_or(&pod_sc["windowsOptions"]["runAsUserName"]);
        if effective("runAsNonRoot") == true {
            if effective("runAsUser") == 0 {
                v.insert(format!("{name}: kubelet: runAsNonRoot with runAsUser 0"));
            }
            if user_name
                .as_str()
                .is_some_and(|u| u.trim().eq_ignore_ascii_case("ContainerAdministrator"))
            {
                v.insert(format!(
                    "{name}: kubelet: runAsNonRoot as ContainerAdministrator"
                ));
            }
        }
    }
    v
}

/// Violations in `output` that `input` did not already have: the engine's doing.
fn new_api_violations(input: &Value, output: &Value) -> Vec<String> {
    let before = api_violations(input);
    api_violations(output)
        .into_iter()
        .filter(|x| !before.contains(x))
        .collect()
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
        // Nothing but the settings' own fields, the writable volumes and
        // mounts, and the provenance annotation is ever written.
        let mut output_leaves = Vec::new();
        leaves(&output, String::new(), &mut output_leaves);
        let before: BTreeSet<&str> = input_leaves.iter().map(|(p, _)| p.as_str()).collect();
        for (pointer, _) in &output_leaves {
            if before.contains(pointer.as_str()) {
                continue;
            }
            prop_assert!(written_by_a_setting(pointer), "unexpected write at {pointer}");
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
        let introduced = new_api_violations(&input, &output);
        prop_assert!(introduced.is_empty(), "{introduced:?}\n{output:#}");
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
        let introduced = new_api_violations(&new, &output);
        prop_assert!(introduced.is_empty(), "{introduced:?}");
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

#[test]
fn the_api_checker_catches_each_rule() {
    let good = json!({"spec": {
        "securityContext": {"runAsNonRoot": true, "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch"},
        "containers": [{"name": "a",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"add": ["SYS_ADMIN"]}},
            "volumeMounts": [{"name": "v", "mountPath": "/tmp"}],
            "volumeDevices": [{"name": "b", "devicePath": "/dev/xvda"}]}],
        "volumes": [{"name": "v", "emptyDir": {}}, {"name": "b", "persistentVolumeClaim": {"claimName": "c"}}]}});
    assert_eq!(api_violations(&good), BTreeSet::new());
    let windows = |sc_at: &str, field: &str| {
        let mut pod = good.clone();
        pod["spec"]["containers"][0]["securityContext"] = json!({});
        pod["spec"]["securityContext"] = json!({});
        pod["spec"]["os"] = json!({"name": "windows"});
        pod.pointer_mut(sc_at).unwrap()[field] = json!({});
        pod
    };
    for field in WINDOWS_FORBIDDEN_POD {
        let pod = windows("/spec/securityContext", field);
        assert_eq!(api_violations(&pod).len(), 1, "{field}");
    }
    for field in WINDOWS_FORBIDDEN_CONTAINER {
        let pod = windows("/spec/containers/0/securityContext", field);
        assert_eq!(api_violations(&pod).len(), 1, "{field}");
    }
    let breaks: [(&str, Value); 10] = [
        (
            "/spec/securityContext/fsGroupChangePolicy",
            json!("Sometimes"),
        ),
        ("/spec/securityContext/runAsUser", json!(-1)),
        ("/spec/containers/0/securityContext/privileged", json!(true)),
        (
            "/spec/containers/0/securityContext/capabilities/add",
            json!(["CAP_SYS_ADMIN"]),
        ),
        ("/spec/volumes/0/name", json!("Kh_tmp")),
        ("/spec/volumes/1/name", json!("v")),
        ("/spec/containers/0/volumeMounts/0/name", json!("missing")),
        (
            "/spec/containers/0/volumeDevices/0/devicePath",
            json!("/tmp"),
        ),
        ("/spec/containers/0/securityContext/runAsUser", json!(0)),
        (
            "/spec/securityContext/windowsOptions",
            json!({"runAsUserName": "containeradministrator"}),
        ),
    ];
    for (pointer, value) in breaks {
        let mut pod = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        pod.pointer_mut(parent).unwrap()[key] = value;
        assert!(!api_violations(&pod).is_empty(), "{pointer}");
    }
    let mut twice = good.clone();
    twice["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "v", "mountPath": "/tmp"}, {"name": "v", "mountPath": "/tmp"}]);
    assert!(!api_violations(&twice).is_empty());
}
