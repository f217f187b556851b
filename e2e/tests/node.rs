//! Hardened pods on a real node: kubelet + containerd + runc, started by
//! `e2e/controlplane/up.sh --node`. Each test runs in its own namespace behind
//! its own webhook registration, creates pods from the locally imported
//! images, and reads what happened through the API server only (pod status,
//! logs): nothing connects to a pod.
//!
//! Without the node this suite fails (see `node_name`); it is built only with
//! the `node` feature, which `scripts/test.sh` turns on for the node run.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use kube_hardener_e2e::node::{
    START_TIMEOUT, busybox, container_status, describe, node_name, probe_report, probe_script,
    wait_for_log, wait_for_pod, wait_refused, wait_running,
};
use kube_hardener_e2e::{
    LocalWebhook, NamespaceOptions, RegisterOptions, Registration, ServerOptions, TestNamespace,
    applied_annotation, client, eventually, kubectl, kubectl_create, pod, to_json,
    wait_until_hardening,
};
use serde_json::{Value, json};

/// A namespace on the node, hardened by its own local webhook.
struct OnNode {
    client: Client,
    ns: TestNamespace,
    _registration: Registration,
    _webhook: LocalWebhook,
}

impl OnNode {
    async fn new(prefix: &str, labels: &[(&str, &str)]) -> Result<Self> {
        Self::with(prefix, labels, ServerOptions::default()).await
    }

    async fn with(prefix: &str, labels: &[(&str, &str)], options: ServerOptions) -> Result<Self> {
        node_name()?;
        let client = client().await?;
        let webhook = LocalWebhook::start(options).await?;
        let options = NamespaceOptions {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            annotations: BTreeMap::new(),
        };
        let ns = TestNamespace::create(&client, prefix, options).await?;
        let registration =
            Registration::create(&client, &webhook.target(), &ns, RegisterOptions::default())
                .await?;
        wait_until_hardening(&ns).await?;
        Ok(OnNode {
            client,
            ns,
            _registration: registration,
            _webhook: webhook,
        })
    }

    fn pods(&self) -> Api<Pod> {
        self.ns.pods()
    }

    async fn create(&self, manifest: Value) -> Result<Pod> {
        let name = manifest["metadata"]["name"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        self.pods()
            .create(&PostParams::default(), &pod(manifest)?)
            .await
            .with_context(|| format!("creating pod {name} in {}", self.ns.name))
    }
}

/// A pod with one container `main` running `script` from a local image.
fn probe_pod(name: &str, image: &str, script: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
            }],
        },
    })
}

/// What every fully hardened container shows from the inside.
fn assert_hardened_inside(report: &BTreeMap<String, String>, uid: &str) {
    assert_eq!(
        report.get("NoNewPrivs").map(String::as_str),
        Some("1"),
        "{report:?}"
    );
    assert_eq!(
        report.get("Seccomp").map(String::as_str),
        Some("2"),
        "{report:?}"
    );
    assert_eq!(
        report.get("CapEff").map(String::as_str),
        Some("0000000000000000"),
        "{report:?}"
    );
    assert_eq!(
        report.get("uid").map(String::as_str),
        Some(uid),
        "{report:?}"
    );
}

fn assert_root_read_only(report: &BTreeMap<String, String>) {
    let root = report.get("write /").map(String::as_str).unwrap_or("");
    // busybox prints strerror(EROFS).
    assert!(root.contains("Read-only file system"), "{report:?}");
}

/// Proof 1 and 2: a plain pod from a `USER 65532` image, hardened, runs; from
/// inside it has no capabilities, no privilege escalation, the runtime's
/// seccomp profile, a read-only `/` and a writable `/tmp`. The same pod is
/// admitted and runs under Pod Security Admission's `restricted` level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardened_pod_runs_and_is_confined_from_the_inside() -> Result<()> {
    let plain = OnNode::new("node-plain", &[]).await?;
    let restricted = OnNode::new(
        "node-restricted",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await?;
    for on in [&plain, &restricted] {
        let script = probe_script(&["/tmp"], true);
        let created = on
            .create(probe_pod("probe", &busybox("uid65532"), &script))
            .await?;
        assert!(
            applied_annotation(&created).is_some(),
            "not hardened: {}",
            on.ns.name
        );
        let running = wait_running(&on.pods(), "probe").await?;
        assert_eq!(
            running.spec.as_ref().and_then(|s| s.node_name.clone()),
            Some(node_name()?)
        );
        let report = probe_report(&wait_for_log(&on.pods(), "probe", "main").await?);
        assert_hardened_inside(&report, "65532");
        assert_root_read_only(&report);
        assert_eq!(
            report.get("write /tmp").map(String::as_str),
            Some("ok"),
            "{report:?}"
        );
    }
    // Without the webhook the same pod is refused by `restricted`: the
    // hardening is what made it admissible.
    let unhardened = TestNamespace::create(
        &plain.client,
        "node-restricted-bare",
        NamespaceOptions::restricted(&["enforce"]),
    )
    .await?;
    let refused = unhardened
        .pods()
        .create(
            &PostParams::default(),
            &pod(probe_pod("probe", &busybox("uid65532"), "true"))?,
        )
        .await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert!(
                status.message.contains("violates PodSecurity"),
                "{status:?}"
            )
        }
        other => bail!("an unhardened pod was admitted under restricted: {other:?}"),
    }
    Ok(())
}

/// Proof 3: a Deployment (workload switch off) gets hardened pods from its
/// ReplicaSets; scaling and a rollout work, and the webhook causes no drift:
/// exactly one ReplicaSet per template, and the Deployment settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_scale_and_roll_out_without_drift() -> Result<()> {
    let on = OnNode::new("node-deploy", &[]).await?;
    let deployments: Api<Deployment> = Api::namespaced(on.client.clone(), &on.ns.name);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(on.client.clone(), &on.ns.name);
    let manifest = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "main",
                        "image": busybox("uid65532"),
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", probe_script(&["/tmp"], true)],
                    }],
                },
            },
        },
    });
    let template_before = manifest["spec"]["template"].clone();
    deployments
        .create(&PostParams::default(), &serde_json::from_value(manifest)?)
        .await?;
    settled(&deployments, "app", 1, 1).await?;
    let patch = PatchParams::default();
    deployments
        .patch(
            "app",
            &patch,
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await?;
    settled(&deployments, "app", 3, 2).await?;
    deployments
        .patch(
            "app",
            &patch,
            &Patch::Merge(
                json!({"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}}),
            ),
        )
        .await?;
    settled(&deployments, "app", 3, 3).await?;

    let pods = on
        .pods()
        .list(&ListParams::default().labels("app=app"))
        .await?;
    let running: Vec<&Pod> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(
        running.len(),
        3,
        "{:?}",
        pods.items.iter().map(describe).collect::<Vec<_>>()
    );
    for pod in &running {
        assert!(
            applied_annotation(pod).is_some(),
            "pod not hardened: {:?}",
            pod.metadata.name
        );
        let json = to_json(*pod)?;
        assert_eq!(json["spec"]["securityContext"]["runAsNonRoot"], json!(true));
        assert_eq!(
            json["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
            json!(true)
        );
    }
    // With the workload switch off the template is stored as written.
    let stored = to_json(&deployments.get("app").await?)?;
    let mut expected = template_before;
    expected["metadata"]["annotations"] = json!({"rollout": "2"});
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0].get("securityContext"),
        None,
        "{stored:#}"
    );
    assert_eq!(stored["spec"]["template"]["metadata"], expected["metadata"]);

    // No ReplicaSet storm: one per template, and nothing new appears later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sets = replica_sets.list(&ListParams::default()).await?;
    assert_eq!(sets.items.len(), 2, "ReplicaSets: {:?}", names(&sets.items));
    let after = deployments.get("app").await?;
    assert_eq!(after.metadata.generation, Some(3));
    assert_eq!(
        after.status.as_ref().and_then(|s| s.observed_generation),
        Some(3)
    );

    deployments
        .delete("app", &DeleteParams::foreground())
        .await?;
    let pods_api = on.pods();
    eventually("the Deployment's pods to be gone", START_TIMEOUT, || {
        let pods_api = pods_api.clone();
        async move {
            match pods_api
                .list(&ListParams::default().labels("app=app"))
                .await
            {
                Ok(list) if list.items.is_empty() => Ok(()),
                Ok(list) => Err(format!("{} pods left", list.items.len())),
                Err(error) => Err(error.to_string()),
            }
        }
    })
    .await?;
    Ok(())
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|i| i.meta().name.clone().unwrap_or_default())
        .collect()
}

/// Waits until the Deployment has observed `generation` and runs `replicas`
/// updated, ready pods and no others.
async fn settled(api: &Api<Deployment>, name: &str, replicas: i32, generation: i64) -> Result<()> {
    eventually(
        &format!("Deployment {name} to run {replicas} ready pods of generation {generation}"),
        START_TIMEOUT,
        || {
            let api = api.clone();
            async move {
                let deployment = api.get(name).await.map_err(|e| e.to_string())?;
                let status = deployment.status.clone().unwrap_or_default();
                let done = status.observed_generation == Some(generation)
                    && status.updated_replicas == Some(replicas)
                    && status.ready_replicas == Some(replicas)
                    && status.replicas == Some(replicas);
                if done {
                    Ok(())
                } else {
                    Err(format!("{status:?}"))
                }
            }
        },
    )
    .await
}

/// Proof 4, today's limit: `runAsNonRoot` injected for an image that runs as
/// root, or as a user name, is refused by the kubelet itself. Image-aware
/// hardening turns these into running pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_refuses_root_and_named_users_under_run_as_non_root() -> Result<()> {
    let on = OnNode::new("node-refused", &[]).await?;
    let cases = [
        (
            "unset",
            "root",
            "container has runAsNonRoot and image will run as root",
        ),
        (
            "zero",
            "zero",
            "container has runAsNonRoot and image will run as root",
        ),
        (
            "named",
            "named",
            "container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root",
        ),
    ];
    for (name, tag, _) in &cases {
        let created = on.create(probe_pod(name, &busybox(tag), "true")).await?;
        assert_eq!(
            to_json(&created)?["spec"]["securityContext"]["runAsNonRoot"],
            json!(true),
            "{name}"
        );
    }
    for (name, _, message) in &cases {
        let seen = wait_refused(&on.pods(), name, "main", "CreateContainerConfigError").await?;
        assert!(seen.starts_with(message), "{name}: {seen}");
    }
    Ok(())
}

/// Proof 5: `kubectl debug` adds an ephemeral container; the webhook hardens
/// it (the pod's own containers stay as they were) and it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_debug_adds_a_hardened_running_ephemeral_container() -> Result<()> {
    let on = OnNode::new("node-debug", &[]).await?;
    on.create(probe_pod(
        "target",
        &busybox("uid65532"),
        &probe_script(&[], true),
    ))
    .await?;
    let before = to_json(&wait_running(&on.pods(), "target").await?)?;
    let output = kubectl()
        .args([
            "debug",
            "--namespace",
            &on.ns.name,
            "target",
            "--container=debugger",
            "--profile=legacy",
            "--image-pull-policy=Never",
            &format!("--image={}", busybox("uid65532")),
            "--",
            "sh",
            "-c",
            &probe_script(&[], true),
        ])
        .output()
        .context("running kubectl debug")?;
    if !output.status.success() {
        bail!(
            "kubectl debug failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let debugged = wait_for_pod(
        &on.pods(),
        "target",
        "to run container debugger",
        START_TIMEOUT,
        |pod| {
            container_status(pod, "debugger")
                .and_then(|s| s.state.as_ref())
                .is_some_and(|s| s.running.is_some())
        },
    )
    .await?;
    let debugged = to_json(&debugged)?;
    let ephemeral = &debugged["spec"]["ephemeralContainers"][0];
    assert_eq!(ephemeral["name"], json!("debugger"));
    assert_eq!(
        ephemeral["securityContext"]["allowPrivilegeEscalation"],
        json!(false),
        "{ephemeral:#}"
    );
    assert_eq!(
        ephemeral["securityContext"]["capabilities"]["drop"],
        json!(["ALL"]),
        "{ephemeral:#}"
    );
    assert_eq!(debugged["spec"]["containers"], before["spec"]["containers"]);
    let report = probe_report(&wait_for_log(&on.pods(), "target", "debugger").await?);
    assert_hardened_inside(&report, "65532");
    Ok(())
}

/// Proof 6: every path of the `writable-paths` annotation is writable; paths
/// the runtime owns (`/proc`, `/sys`) are refused with a warning and never
/// reach the kubelet, while `/dev/shm` is allowed. The pod runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_paths_are_writable_and_runtime_paths_are_refused() -> Result<()> {
    let on = OnNode::new("node-writable", &[]).await?;
    let writable = ["/tmp", "/var/cache/app", "/data/spool", "/dev/shm"];
    let mut manifest = probe_pod(
        "writer",
        &busybox("uid65532"),
        &probe_script(&writable, true),
    );
    manifest["metadata"]["annotations"] = json!({
        // The annotation replaces the configured list (`/tmp`), so it names /tmp too.
        "kube-hardener.io/writable-paths": "/tmp,/var/cache/app,/data/spool,/proc,/sys/fs/cgroup,/dev/shm",
    });
    let (stored, warnings) = kubectl_create(&on.ns.name, &manifest, false)?;
    for refused in ["/proc", "/sys/fs/cgroup"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("`{refused}`")) && w.contains("/proc, /sys or /dev")),
            "no warning for {refused}: {warnings:?}"
        );
    }
    let mounts: Vec<&str> = stored["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for path in writable {
        assert!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
    }
    assert!(
        !mounts
            .iter()
            .any(|m| m.starts_with("/proc") || m.starts_with("/sys")),
        "{mounts:?}"
    );
    wait_running(&on.pods(), "writer").await?;
    let report = probe_report(&wait_for_log(&on.pods(), "writer", "main").await?);
    for path in writable {
        assert_eq!(
            report.get(&format!("write {path}")).map(String::as_str),
            Some("ok"),
            "{path}: {report:?}"
        );
    }
    assert_root_read_only(&report);
    Ok(())
}

/// Proof 7: explicit insecure choices are kept, and such pods still start:
/// privileged, SYS_ADMIN with allowPrivilegeEscalation unset, runAsUser 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_insecure_choices_are_kept_and_start() -> Result<()> {
    let on = OnNode::new("node-insecure", &[]).await?;
    let script = probe_script(&["/tmp"], true);
    let cases = [
        ("privileged", json!({"privileged": true, "runAsUser": 0})),
        (
            "sys-admin",
            json!({"capabilities": {"add": ["SYS_ADMIN"]}, "runAsUser": 0}),
        ),
        ("root-user", json!({"runAsUser": 0})),
    ];
    for (name, context) in &cases {
        let mut manifest = probe_pod(name, &busybox("root"), &script);
        manifest["spec"]["containers"][0]["securityContext"] = context.clone();
        let stored = to_json(&on.create(manifest).await?)?;
        let kept = &stored["spec"]["containers"][0]["securityContext"];
        for (key, value) in context.as_object().into_iter().flatten() {
            if key == "capabilities" {
                assert_eq!(
                    kept["capabilities"]["add"], value["add"],
                    "{name}: {kept:#}"
                );
            } else {
                assert_eq!(&kept[key], value, "{name}: {key} changed: {kept:#}");
            }
        }
        assert_ne!(
            stored["spec"]["securityContext"]["runAsNonRoot"],
            json!(true),
            "{name}"
        );
    }
    let mut reports = BTreeMap::new();
    for (name, _) in &cases {
        wait_running(&on.pods(), name).await?;
        reports.insert(
            *name,
            probe_report(&wait_for_log(&on.pods(), name, "main").await?),
        );
    }
    for report in reports.values() {
        assert_eq!(
            report.get("uid").map(String::as_str),
            Some("0"),
            "{report:?}"
        );
    }
    let privileged = &reports["privileged"];
    assert_ne!(
        privileged.get("CapEff").map(String::as_str),
        Some("0000000000000000"),
        "{privileged:?}"
    );
    assert_eq!(
        privileged.get("NoNewPrivs").map(String::as_str),
        Some("0"),
        "{privileged:?}"
    );
    // drop ALL, add SYS_ADMIN (bit 21): that capability alone; escalation
    // left as the runtime's default.
    let sys_admin = &reports["sys-admin"];
    assert_eq!(
        sys_admin.get("CapEff").map(String::as_str),
        Some("0000000000200000"),
        "{sys_admin:?}"
    );
    assert_eq!(
        sys_admin.get("NoNewPrivs").map(String::as_str),
        Some("0"),
        "{sys_admin:?}"
    );
    let root_user = &reports["root-user"];
    assert_eq!(
        root_user.get("CapEff").map(String::as_str),
        Some("0000000000000000"),
        "{root_user:?}"
    );
    assert_eq!(
        root_user.get("NoNewPrivs").map(String::as_str),
        Some("1"),
        "{root_user:?}"
    );
    assert_eq!(
        root_user.get("Seccomp").map(String::as_str),
        Some("2"),
        "{root_user:?}"
    );
    Ok(())
}

/// Where `up.sh --node` pushed the node's test images, and the CA it trusts.
fn registry() -> Result<(String, String)> {
    let host = std::env::var("KUBE_HARDENER_E2E_REGISTRY").context(
        "KUBE_HARDENER_E2E_REGISTRY is not set: run under e2e/controlplane/up.sh --node",
    )?;
    let ca = std::env::var("KUBE_HARDENER_E2E_REGISTRY_CA").context(
        "KUBE_HARDENER_E2E_REGISTRY_CA is not set: run under e2e/controlplane/up.sh --node",
    )?;
    Ok((host, ca))
}

/// A webhook that looks images up in the node's registry.
fn image_aware(root: &str) -> Result<ServerOptions> {
    let (_, ca) = registry()?;
    Ok(ServerOptions {
        config_toml: format!(
            "[images]\nresolve = true\nroot = \"{root}\"\nca_file = \"{ca}\"\nbudget_ms = 5000\n"
        ),
        ..ServerOptions::default()
    })
}

/// The limit proof 4 documents, lifted: with image lookups on, the root and
/// named-user images the kubelet refused start. Root images run as root
/// (`images.root = "skip"`, otherwise hardened) or as the configured UID
/// (`"run-as-user"`); the named user runs as its UID from `/etc/passwd`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_aware_hardening_starts_root_and_named_images() -> Result<()> {
    let (host, _) = registry()?;
    let image = |tag: &str| format!("{host}/kh/busybox:{tag}");
    let skip = OnNode::with("node-images-skip", &[], image_aware("skip")?).await?;
    let run_as = OnNode::with("node-images-run-as", &[], image_aware("run-as-user")?).await?;
    let script = probe_script(&["/tmp"], true);
    // (namespace, pod, image, uid inside, runAsUser stored, runAsNonRoot stored)
    let cases = [
        (&skip, "root", image("root"), "0", Value::Null, Value::Null),
        (&skip, "zero", image("zero"), "0", Value::Null, Value::Null),
        (
            &skip,
            "named",
            image("named"),
            "10001",
            json!(10001),
            json!(true),
        ),
        (
            &skip,
            "numeric",
            image("uid65532"),
            "65532",
            Value::Null,
            json!(true),
        ),
        (
            &run_as,
            "root",
            image("root"),
            "65532",
            json!(65532),
            json!(true),
        ),
    ];
    for (on, name, image, _, uid, non_root) in &cases {
        let stored = to_json(&on.create(probe_pod(name, image, &script)).await?)?;
        let pod_level = &stored["spec"]["securityContext"]["runAsNonRoot"];
        let container = &stored["spec"]["containers"][0]["securityContext"];
        let effective = if pod_level.is_null() {
            &container["runAsNonRoot"]
        } else {
            pod_level
        };
        assert_eq!(effective, non_root, "{name} in {}: {stored:#}", on.ns.name);
        assert_eq!(
            &container["runAsUser"], uid,
            "{name} in {}: {stored:#}",
            on.ns.name
        );
        // Everything else is hardened as usual.
        assert_eq!(container["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert_eq!(container["readOnlyRootFilesystem"], json!(true), "{name}");
    }
    for (on, name, _, uid, _, _) in &cases {
        wait_running(&on.pods(), name).await?;
        let report = probe_report(&wait_for_log(&on.pods(), name, "main").await?);
        assert_eq!(
            report.get("uid").map(String::as_str),
            Some(*uid),
            "{name}: {report:?}"
        );
        assert_eq!(
            report.get("CapEff").map(String::as_str),
            Some("0000000000000000"),
            "{name}: {report:?}"
        );
        assert_eq!(
            report.get("NoNewPrivs").map(String::as_str),
            Some("1"),
            "{name}: {report:?}"
        );
        assert_root_read_only(&report);
    }
    Ok(())
}
