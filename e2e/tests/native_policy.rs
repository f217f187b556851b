//! The generated MutatingAdmissionPolicy against the webhook, on the real API
//! server: one corpus of pods (the engine's golden fixtures, the examples and
//! property-generated pods) goes through the webhook in one namespace and
//! through the policy generated from the same configuration in another, with
//! server-side dry-run. The stored pods must be equal, except for the
//! documented differences (docs/native-policy.md), which this suite expects
//! by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use kube::Client;
use kube_hardener_e2e::native_policy::{NativePolicy, bound_namespace, dry_run_create};
use kube_hardener_e2e::{
    GROUP_LABEL, LocalWebhook, NamespaceOptions, RegisterOptions, Registration, ServerOptions,
    TestNamespace, client, plain_pod, unique_name, wait_until_hardening, workspace_root,
};
use kube_hardener_engine::volume_base_name;
use kube_hardener_native_policy::differences;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

/// One pod of the corpus: where it comes from, the configuration (the
/// `[hardening]` table, as TOML) and the annotations of its namespace.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    hardening: String,
    namespace_annotations: BTreeMap<String, String>,
    pod: Value,
}

/// `[hardening]` overrides from a fixture's policy.yaml, as TOML.
fn hardening_toml(policy: &Value) -> String {
    let mut top = String::from("[hardening]\n");
    let mut settings = String::new();
    if let Some(map) = policy.as_object() {
        for (key, value) in map {
            match value {
                Value::Object(table) if key == "settings" => {
                    settings.push_str("[hardening.settings]\n");
                    for (flag, on) in table {
                        settings.push_str(&format!("{flag} = {on}\n"));
                    }
                }
                // JSON scalars and string lists are valid TOML as written.
                other => top.push_str(&format!("{key} = {other}\n")),
            }
        }
    }
    top + &settings
}

fn read_yaml(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// A pod to create in a test namespace: no namespace of its own, a name.
fn as_test_pod(mut pod: Value, name: &str) -> Value {
    if let Some(meta) = pod["metadata"].as_object_mut() {
        meta.remove("namespace");
    }
    pod["metadata"]["name"] = json!(name);
    pod
}

/// A workload's pod template as the Pod its controller would create.
fn template_pod(object: &Value) -> Option<Value> {
    let template = match object["kind"].as_str()? {
        "Pod" => return Some(object.clone()),
        "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            &object["spec"]["template"]
        }
        _ => return None,
    };
    let mut metadata = template
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    metadata["name"] = json!("from-template");
    Some(json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}))
}

/// The engine's golden fixtures that are Pods (ephemeral-container updates
/// and the excluded-namespace case have tests of their own below).
fn fixture_cases() -> Result<Vec<Case>> {
    let root = workspace_root().join("crates/engine/fixtures");
    let mut cases = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)?.collect::<Result<_, _>>()?;
    dirs.sort_by_key(std::fs::DirEntry::file_name);
    for dir in dirs {
        let name = dir.file_name().to_string_lossy().into_owned();
        let path = dir.path();
        if name == "ephemeral-update" || name == "excluded-namespace" {
            continue;
        }
        let Some(input) = read_yaml(&path.join("input.yaml"))? else {
            continue;
        };
        if input["kind"] != "Pod" {
            continue;
        }
        let hardening = read_yaml(&path.join("policy.yaml"))?
            .map(|policy| hardening_toml(&policy))
            .unwrap_or_default();
        let namespace_annotations = read_yaml(&path.join("namespace.yaml"))?
            .and_then(|ns| serde_json::from_value(ns["metadata"]["annotations"].clone()).ok())
            .unwrap_or_default();
        cases.push(Case {
            pod: as_test_pod(input, &name),
            name: format!("fixture {name}"),
            hardening,
            namespace_annotations,
        });
    }
    Ok(cases)
}

/// The pods of examples/ (workload templates as pods), with their
/// namespace's annotations when the file carries the Namespace.
fn example_cases() -> Result<Vec<Case>> {
    let root = workspace_root().join("examples");
    let mut cases = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&root)?.collect::<Result<_, _>>()?;
    files.sort_by_key(std::fs::DirEntry::file_name);
    for file in files {
        let text = std::fs::read_to_string(file.path())?;
        let documents: Vec<Value> = text
            .split("\n---")
            .filter(|doc| !doc.trim().is_empty())
            .map(serde_norway::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", file.path().display()))?;
        let annotations: BTreeMap<String, String> = documents
            .iter()
            .find(|doc| doc["kind"] == "Namespace")
            .and_then(|ns| serde_json::from_value(ns["metadata"]["annotations"].clone()).ok())
            .unwrap_or_default();
        for (i, document) in documents.iter().enumerate() {
            if let Some(pod) = template_pod(document) {
                let file_name = file.file_name().to_string_lossy().into_owned();
                cases.push(Case {
                    name: format!("example {file_name} #{i}"),
                    hardening: String::new(),
                    namespace_annotations: annotations.clone(),
                    pod: as_test_pod(pod, &format!("example-{i}")),
                });
            }
        }
    }
    Ok(cases)
}

/// Linux container security contexts, each valid for the API server.
fn container_variant() -> impl Strategy<Value = (Value, bool)> {
    // (securityContext or null, whether the container mounts an emptyDir at /tmp)
    proptest::prop_oneof![
        proptest::strategy::Just(json!(null)),
        proptest::strategy::Just(json!({"runAsNonRoot": false})),
        proptest::strategy::Just(json!({"runAsUser": 0})),
        proptest::strategy::Just(json!({"runAsUser": 1000})),
        proptest::strategy::Just(json!({"privileged": true})),
        proptest::strategy::Just(json!({"capabilities": {"add": ["SYS_ADMIN"]}})),
        proptest::strategy::Just(json!({"capabilities": {"drop": ["NET_RAW"]}})),
        proptest::strategy::Just(
            json!({"capabilities": {"drop": ["all"], "add": ["NET_BIND_SERVICE"]}})
        ),
        proptest::strategy::Just(json!({"allowPrivilegeEscalation": true})),
        proptest::strategy::Just(json!({"readOnlyRootFilesystem": false})),
        proptest::strategy::Just(
            json!({"runAsNonRoot": true, "seccompProfile": {"type": "Unconfined"}})
        ),
    ]
    .prop_flat_map(|context| {
        (
            proptest::strategy::Just(context),
            proptest::bool::weighted(0.2),
        )
    })
}

fn pod_variant() -> impl Strategy<Value = Value> {
    proptest::prop_oneof![
        proptest::strategy::Just(json!(null)),
        proptest::strategy::Just(json!({"runAsUser": 1000})),
        proptest::strategy::Just(json!({"runAsUser": 0})),
        proptest::strategy::Just(json!({"runAsNonRoot": true})),
        proptest::strategy::Just(json!({"runAsNonRoot": false})),
        proptest::strategy::Just(json!({"seccompProfile": {"type": "Unconfined"}})),
        proptest::strategy::Just(json!({"fsGroup": 3000})),
    ]
}

/// Generated Linux pods: 1-3 containers, 0-2 init containers (some of them
/// sidecars), explicit values at both levels, existing /tmp mounts, a long
/// container name now and then; and Windows pods.
fn property_cases(count: usize) -> Result<Vec<Case>> {
    let linux = (
        pod_variant(),
        proptest::collection::vec(container_variant(), 1..=3),
        proptest::collection::vec((container_variant(), proptest::bool::ANY), 0..=2),
        proptest::bool::weighted(0.15),
    );
    let mut runner = TestRunner::deterministic();
    let mut cases = Vec::new();
    for n in 0..count {
        let tree = linux
            .new_tree(&mut runner)
            .map_err(|error| anyhow::anyhow!("generating a pod: {error}"))?;
        let (pod_context, containers, inits, long_name) = tree.current();
        let mut volumes = Vec::new();
        let mut build = |i: usize, prefix: &str, (context, mounts_tmp): (Value, bool)| {
            // 58 letters: `kh-<name>-tmp` is longer than a volume name may be.
            let name = if long_name && i == 0 && prefix == "c" {
                "x".repeat(58)
            } else {
                format!("{prefix}{i}")
            };
            let mut container = json!({"name": name, "image": "nginx:1.27"});
            if !context.is_null() {
                container["securityContext"] = context;
            }
            if mounts_tmp {
                let volume = format!("scratch-{prefix}{i}");
                container["volumeMounts"] = json!([{"name": volume, "mountPath": "/tmp/"}]);
                volumes.push(json!({"name": volume, "emptyDir": {}}));
            }
            container
        };
        let containers: Vec<Value> = containers
            .into_iter()
            .enumerate()
            .map(|(i, variant)| build(i, "c", variant))
            .collect();
        let inits: Vec<Value> = inits
            .into_iter()
            .enumerate()
            .map(|(i, (variant, sidecar))| {
                let mut init = build(i, "i", variant);
                if sidecar {
                    init["restartPolicy"] = json!("Always");
                }
                init
            })
            .collect();
        let mut spec = json!({"containers": containers});
        if !inits.is_empty() {
            spec["initContainers"] = json!(inits);
        }
        if !volumes.is_empty() {
            spec["volumes"] = json!(volumes);
        }
        if !pod_context.is_null() {
            spec["securityContext"] = pod_context;
        }
        cases.push(Case {
            name: format!("generated pod {n}: {spec}"),
            hardening: String::new(),
            namespace_annotations: BTreeMap::new(),
            pod: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("gen-{n}")}, "spec": spec}),
        });
    }
    // Windows pods may carry only Windows fields.
    for (n, context) in [
        json!(null),
        json!({"runAsNonRoot": false}),
        json!({"windowsOptions": {"runAsUserName": "ContainerAdministrator"}}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut container =
            json!({"name": "win", "image": "mcr.microsoft.com/windows/nanoserver:ltsc2022"});
        if !context.is_null() {
            container["securityContext"] = context;
        }
        cases.push(Case {
            name: format!("generated windows pod {n}"),
            hardening: String::new(),
            namespace_annotations: BTreeMap::new(),
            pod: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("win-{n}")},
                        "spec": {"os": {"name": "windows"}, "containers": [container]}}),
        });
    }
    Ok(cases)
}

/// The webhook and the policy for one configuration, each bound to its own
/// group of namespaces.
struct Arms {
    client: Client,
    webhook_group: String,
    policy_group: String,
    _server: LocalWebhook,
    _registration: Registration,
    _policy: NativePolicy,
}

/// Namespaces with the same annotations, one per arm.
struct Pair {
    webhook: TestNamespace,
    policy: TestNamespace,
}

impl Arms {
    async fn start(client: &Client, config_toml: &str) -> Result<Self> {
        let server = LocalWebhook::start(ServerOptions {
            config_toml: config_toml.to_owned(),
            ..ServerOptions::default()
        })
        .await?;
        let webhook_group = unique_name("w");
        let policy_group = unique_name("p");
        let registration = Registration::create_for_label(
            client,
            &server.target(),
            (GROUP_LABEL, &webhook_group),
            RegisterOptions::default(),
        )
        .await?;
        let policy = NativePolicy::apply(client, config_toml, (GROUP_LABEL, &policy_group)).await?;
        Ok(Arms {
            client: client.clone(),
            webhook_group,
            policy_group,
            _server: server,
            _registration: registration,
            _policy: policy,
        })
    }

    async fn pair(&self, annotations: &BTreeMap<String, String>) -> Result<Pair> {
        let mut made = Vec::new();
        for group in [&self.webhook_group, &self.policy_group] {
            made.push(
                TestNamespace::create(
                    &self.client,
                    "map",
                    NamespaceOptions::in_group(group, annotations.clone()),
                )
                .await?,
            );
        }
        let policy = made.pop().context("policy namespace")?;
        let webhook = made.pop().context("webhook namespace")?;
        Ok(Pair { webhook, policy })
    }

    /// Waits until both arms harden pods in a namespace of each group.
    async fn wait(&self) -> Result<()> {
        let probe = self.pair(&BTreeMap::new()).await?;
        wait_until_hardening(&probe.webhook).await?;
        wait_until_hardening(&probe.policy).await
    }
}

const TOKEN_VOLUME: &str = "kube-api-access-";

/// What is compared: labels, annotations and the spec, without the service
/// account token volume (its name is random per create).
fn comparable(stored: &Value) -> Value {
    let mut spec = stored["spec"].clone();
    if let Some(volumes) = spec["volumes"].as_array_mut() {
        volumes.retain(|v| {
            !v["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with(TOKEN_VOLUME)
        });
    }
    for list in ["containers", "initContainers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            if let Some(mounts) = container["volumeMounts"].as_array_mut() {
                mounts.retain(|m| {
                    !m["name"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(TOKEN_VOLUME)
                });
                if mounts.is_empty() {
                    container.as_object_mut().map(|c| c.remove("volumeMounts"));
                }
            }
        }
    }
    if spec["volumes"].as_array().is_some_and(Vec::is_empty) {
        spec.as_object_mut().map(|s| s.remove("volumes"));
    }
    json!({
        "labels": stored["metadata"]["labels"],
        "annotations": stored["metadata"]["annotations"],
        "spec": spec,
    })
}

/// The webhook's stored pod as the policy should store it: containers whose
/// writable-path volume got a hashed name (`hashed-volume-names`) keep a
/// writable root filesystem. Returns the differences applied, by name.
fn expected_from_policy(webhook: &Value, input: &Value) -> (Value, Vec<&'static str>) {
    let mut expected = comparable(webhook);
    let mut applied = Vec::new();
    let mut dropped_volumes = BTreeSet::new();
    for list in ["containers", "initContainers"] {
        let Some(containers) = expected["spec"][list].as_array_mut() else {
            continue;
        };
        for (index, container) in containers.iter_mut().enumerate() {
            let original = &input["spec"][list][index];
            let had = |name: &str| {
                original["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["name"] == name)
            };
            let name = container["name"].as_str().unwrap_or_default().to_owned();
            let injected: Vec<(String, String)> = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    Some((
                        m["name"].as_str()?.to_owned(),
                        m["mountPath"].as_str()?.to_owned(),
                    ))
                })
                .filter(|(volume, _)| !had(volume) && volume.starts_with("kh-"))
                .collect();
            let hashed = injected
                .iter()
                .any(|(volume, path)| *volume != volume_base_name(&name, path));
            if !hashed {
                continue;
            }
            applied.push(differences::VOLUME_NAMES);
            for (volume, _) in &injected {
                dropped_volumes.insert(volume.clone());
            }
            if let Some(mounts) = container["volumeMounts"].as_array_mut() {
                mounts.retain(|m| !injected.iter().any(|(v, _)| m["name"] == v.as_str()));
                if mounts.is_empty() {
                    container.as_object_mut().map(|c| c.remove("volumeMounts"));
                }
            }
            if original["securityContext"]["readOnlyRootFilesystem"].is_null()
                && let Some(context) = container["securityContext"].as_object_mut()
            {
                context.remove("readOnlyRootFilesystem");
                if context.is_empty() && original["securityContext"].is_null() {
                    container
                        .as_object_mut()
                        .map(|c| c.remove("securityContext"));
                }
            }
        }
    }
    if applied.is_empty() {
        return (expected, applied);
    }
    if let Some(volumes) = expected["spec"]["volumes"].as_array_mut() {
        volumes.retain(|v| !dropped_volumes.contains(v["name"].as_str().unwrap_or_default()));
    }
    // The annotation keeps readOnlyRootFilesystem only if some container still got it.
    let still_read_only = ["containers", "initContainers"].iter().any(|list| {
        expected["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .any(|(i, c)| {
                c["securityContext"]["readOnlyRootFilesystem"] == true
                    && input["spec"][list][i]["securityContext"]["readOnlyRootFilesystem"].is_null()
            })
    });
    if !still_read_only
        && let Some(value) = expected["annotations"][kube_hardener_e2e::APPLIED].as_str()
    {
        let kept: Vec<&str> = value
            .split(',')
            .filter(|name| *name != "readOnlyRootFilesystem")
            .collect();
        expected["annotations"][kube_hardener_e2e::APPLIED] = json!(kept.join(","));
    }
    (expected, applied)
}

/// Whether a create failed because the API server found the object invalid.
fn invalid(error: &anyhow::Error) -> bool {
    matches!(error.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if status.code == 422)
}

/// Runs every case of one configuration through both arms.
async fn differential(
    client: &Client,
    hardening: &str,
    cases: &[Case],
) -> Result<Vec<&'static str>> {
    let arms = Arms::start(client, hardening).await?;
    arms.wait().await?;
    let mut pairs: BTreeMap<BTreeMap<String, String>, Pair> = BTreeMap::new();
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    let mut refused = Vec::new();
    for case in cases {
        if !pairs.contains_key(&case.namespace_annotations) {
            let pair = arms.pair(&case.namespace_annotations).await?;
            pairs.insert(case.namespace_annotations.clone(), pair);
        }
        let pair = &pairs[&case.namespace_annotations];
        let through_webhook = dry_run_create(client, &pair.webhook.name, &case.pod).await;
        // Every generated output must pass the API server's validation.
        let through_policy = dry_run_create(client, &pair.policy.name, &case.pod).await;
        let (through_webhook, through_policy) = match (through_webhook, through_policy) {
            (Ok(webhook), Ok(policy)) => (webhook, policy),
            // A fixture the API server refuses as written (an invalid
            // annotation key, say) must be refused the same way by both.
            (Err(webhook), Err(policy)) if invalid(&webhook) && invalid(&policy) => {
                refused.push(case.name.as_str());
                continue;
            }
            (webhook, policy) => bail!(
                "{}: through the webhook: {:?}; through the policy: {:?}",
                case.name,
                webhook.map(|_| "stored").map_err(|e| format!("{e:#}")),
                policy.map(|_| "stored").map_err(|e| format!("{e:#}"))
            ),
        };
        let (expected, applied) = expected_from_policy(&through_webhook, &case.pod);
        seen.extend(applied);
        if comparable(&through_policy) != expected {
            failures.push(format!(
                "{}\n  webhook (expected): {}\n  policy:             {}",
                case.name,
                expected,
                comparable(&through_policy)
            ));
            continue;
        }
        // Idempotence: the policy's output through the policy again is unchanged.
        let mut again = through_policy.clone();
        for key in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "namespace",
        ] {
            again["metadata"].as_object_mut().map(|m| m.remove(key));
        }
        again.as_object_mut().map(|o| o.remove("status"));
        let rerun = dry_run_create(client, &pair.policy.name, &again)
            .await
            .with_context(|| format!("{}: the policy's output through the policy", case.name))?;
        if comparable(&rerun) != comparable(&through_policy) {
            failures.push(format!(
                "{}: a second run changed the pod\n  first:  {}\n  second: {}",
                case.name,
                comparable(&through_policy),
                comparable(&rerun)
            ));
        }
        // A later mutator (a sidecar injector) adds a container to the
        // hardened pod: both harden just that one, alike.
        let mut injected = again;
        let sidecar = json!({"name": "injected", "image": "proxy:1", "restartPolicy": "Always"});
        match injected["spec"]["initContainers"].as_array_mut() {
            Some(list) => list.push(sidecar),
            None => injected["spec"]["initContainers"] = json!([sidecar]),
        }
        let webhook = dry_run_create(client, &pair.webhook.name, &injected).await;
        let policy = dry_run_create(client, &pair.policy.name, &injected).await;
        match (webhook, policy) {
            (Ok(webhook), Ok(policy)) => {
                let (expected, applied) = expected_from_policy(&webhook, &injected);
                seen.extend(applied);
                if comparable(&policy) != expected {
                    failures.push(format!(
                        "{} with an injected sidecar\n  webhook (expected): {}\n  policy:             {}",
                        case.name,
                        expected,
                        comparable(&policy)
                    ));
                }
            }
            (webhook, policy) => failures.push(format!(
                "{} with an injected sidecar: webhook {:?}, policy {:?}",
                case.name,
                webhook.map(|_| "stored").map_err(|e| format!("{e:#}")),
                policy.map(|_| "stored").map_err(|e| format!("{e:#}"))
            )),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} pods differ between the webhook and the policy:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
    // Only fixtures written for the engine alone may be invalid as a whole.
    assert!(
        refused.iter().all(|name| name.starts_with("fixture ")) && refused.len() <= 3,
        "refused by validation in both arms: {refused:?}"
    );
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_stores_what_the_webhook_stores() -> Result<()> {
    let client = client().await?;
    let mut cases = fixture_cases()?;
    assert!(cases.len() >= 25, "fixtures missing: {}", cases.len());
    cases.extend(example_cases()?);
    cases.extend(property_cases(60)?);
    let mut by_config: BTreeMap<String, Vec<Case>> = BTreeMap::new();
    for case in cases {
        by_config
            .entry(case.hardening.clone())
            .or_default()
            .push(case);
    }
    // The generated pods again under configured ids and two writable paths.
    let ids = "[hardening]\nrun_as_user = 10001\nrun_as_group = 10001\nfs_group = 2000\n\
               writable_paths = [\"/tmp\", \"/var/cache/app\"]\n";
    by_config.insert(ids.to_owned(), property_cases(30)?);
    let mut seen = BTreeSet::new();
    for (hardening, cases) in &by_config {
        seen.extend(differential(&client, hardening, cases).await?);
    }
    // The expectation for the documented difference was exercised, so the
    // comparison above could have failed on it.
    assert!(
        seen.contains(differences::VOLUME_NAMES),
        "no pod of the corpus needed a hashed volume name: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_outs_and_exclusions_match_the_webhook() -> Result<()> {
    let client = client().await?;
    // The excluded namespaces must exist before the configuration names them.
    let group = |arm: &str| unique_name(arm);
    let (webhook_group, policy_group) = (group("w"), group("p"));
    let mut excluded = Vec::new();
    for g in [&webhook_group, &policy_group] {
        excluded.push(
            TestNamespace::create(
                &client,
                "map-excl",
                NamespaceOptions::in_group(g, BTreeMap::new()),
            )
            .await?,
        );
    }
    let names: Vec<String> = excluded.iter().map(|ns| format!("{:?}", ns.name)).collect();
    let config = format!(
        "[hardening]\nexcluded_namespaces = [\"kube-system\", {}]\n",
        names.join(", ")
    );
    let server = LocalWebhook::start(ServerOptions {
        config_toml: config.clone(),
        ..ServerOptions::default()
    })
    .await?;
    let _registration = Registration::create_for_label(
        &client,
        &server.target(),
        (GROUP_LABEL, &webhook_group),
        RegisterOptions::default(),
    )
    .await?;
    let _policy = NativePolicy::apply(&client, &config, (GROUP_LABEL, &policy_group)).await?;
    let annotated = |value: &str| {
        BTreeMap::from([(
            kube_hardener_engine::ANNOTATION_SKIP.to_owned(),
            value.to_owned(),
        )])
    };
    let mut scenarios = Vec::new();
    for (what, annotations) in [
        ("plain", BTreeMap::new()),
        ("skip all", annotated("all")),
        (
            "skip a list",
            annotated("readOnlyRootFilesystem, Capabilities, bogus"),
        ),
    ] {
        let mut pair = Vec::new();
        for g in [&webhook_group, &policy_group] {
            pair.push(
                TestNamespace::create(
                    &client,
                    "map-opt",
                    NamespaceOptions::in_group(g, annotations.clone()),
                )
                .await?,
            );
        }
        scenarios.push((what, pair));
    }
    // Both arms are in effect (the plain pair hardens) before anything is compared.
    wait_until_hardening(&scenarios[0].1[0]).await?;
    wait_until_hardening(&scenarios[0].1[1]).await?;
    let pod = plain_pod("opt");
    let mut stored = BTreeMap::new();
    for (what, pair) in scenarios
        .iter()
        .map(|(w, p)| (*w, p.iter().collect::<Vec<_>>()))
        .chain([("excluded", excluded.iter().collect())])
    {
        let webhook = comparable(&dry_run_create(&client, &pair[0].name, &pod).await?);
        let policy = comparable(&dry_run_create(&client, &pair[1].name, &pod).await?);
        assert_eq!(policy, webhook, "{what}: the policy and the webhook differ");
        stored.insert(what, policy);
    }
    let applied = |what: &str| stored[what]["annotations"][kube_hardener_e2e::APPLIED].clone();
    assert_eq!(
        applied("plain"),
        json!(
            "runAsNonRoot,seccompProfile,allowPrivilegeEscalation,capabilities,readOnlyRootFilesystem"
        )
    );
    assert_eq!(
        applied("skip a list"),
        json!("runAsNonRoot,seccompProfile,allowPrivilegeEscalation")
    );
    for untouched in ["skip all", "excluded"] {
        assert_eq!(applied(untouched), Value::Null, "{untouched}");
        assert!(
            stored[untouched]["spec"]["containers"][0]["securityContext"].is_null(),
            "{untouched}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_pod_passes_the_restricted_profile_through_the_policy() -> Result<()> {
    let client = client().await?;
    let restricted = NamespaceOptions::restricted(&["enforce"]);
    let (bound, _policy) =
        bound_namespace(&client, "map-restricted", restricted.clone(), "", &[]).await?;
    let unbound = TestNamespace::create(&client, "map-restricted-unbound", restricted).await?;
    let pod = plain_pod("restricted");
    let stored = dry_run_create(&client, &bound.name, &pod).await?;
    assert_eq!(stored["spec"]["securityContext"]["runAsNonRoot"], true);
    // Without the policy, Pod Security Admission refuses the same pod.
    let refused = dry_run_create(&client, &unbound.name, &pod).await;
    let message = format!(
        "{:#}",
        refused
            .err()
            .context("the unbound namespace admitted the plain pod")?
    );
    assert!(message.contains("restricted"), "{message}");
    Ok(())
}

/// A pod of `containers` plain containers.
fn wide_pod(name: &str, containers: usize) -> Value {
    let list: Vec<Value> = (0..containers)
        .map(|i| json!({"name": format!("c{i}"), "image": "nginx:1.27"}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": list}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pods_are_hardened_up_to_the_cel_budget() -> Result<()> {
    let client = client().await?;
    // The suite's policies use failurePolicy Fail, so running out of budget shows.
    let (namespace, _policy) =
        bound_namespace(&client, "map-wide", NamespaceOptions::default(), "", &[]).await?;
    // The cost grows linearly: a thousand containers are all hardened.
    let stored = dry_run_create(&client, &namespace.name, &wide_pod("wide", 1000)).await?;
    let hardened = stored["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["securityContext"]["readOnlyRootFilesystem"] == true)
        .count();
    assert_eq!(hardened, 1000);
    // Past the API server's budget the policy cannot be evaluated
    // (`cel-cost-budget`): refused under Fail, admitted unhardened under Ignore.
    assert!(
        differences::DIFFERENCES
            .iter()
            .any(|d| d.name == differences::COST)
    );
    let refused = dry_run_create(&client, &namespace.name, &wide_pod("wider", 4000)).await;
    let message = format!(
        "{:#}",
        refused
            .err()
            .context("a 4,000-container pod was evaluated")?
    );
    assert!(message.contains("cost"), "{message}");
    Ok(())
}
