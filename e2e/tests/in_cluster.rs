//! kube-hardener installed in the local cluster with its node, as an operator
//! installs it: the Helm chart with `helm install`, and the kustomize base with
//! `kubectl apply -k`, both running the image assembled from the release
//! binary (`e2e/controlplane/images.sh`, imported by `up.sh --node` when
//! `KUBE_HARDENER_IMAGE_BIN` names the binary).
//!
//! The pods run on the host network: the pod network here is an isolated
//! bridge that nothing connects to, so the API server calls the webhook at the
//! node's own address, found through the Service's endpoints. Two replicas
//! share the node's port (`server.reuse_port`), as every rolling update needs.
//!
//! Pods are created all the while the webhook is upgraded, restarted and its
//! certificate renewed, and each must come out hardened; pods are created with
//! server-side dry run (admitted, never stored, so no image is ever pulled),
//! plus one real pod that must start hardened. Uninstalling must leave nothing.
//!
//! Built only with the `node` feature; without the node or the image these
//! tests fail, they are never skipped.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube_hardener_e2e::manifests::{copy_tree, run};
use kube_hardener_e2e::node::{busybox, node_name, wait_running};
use kube_hardener_e2e::{
    NamespaceOptions, TestNamespace, applied_annotation, client, create_plain_pods, eventually,
    kube_hardener_command, kubectl, pod, wait_until_hardening, workspace_root,
};
use serde_json::{Value, json};

/// Set by up.sh --node when the node has kube-hardener's own image.
const IMAGE_ENV: &str = "KUBE_HARDENER_E2E_IMAGE";
/// Set by up.sh: where pods on the host network reach the API server.
const API_SERVER_ENV: &str = "KUBE_HARDENER_E2E_API_SERVER";
/// Puts a test namespace behind one installed webhook only.
const TARGET_LABEL: &str = "e2e.kube-hardener.io/in-cluster";
/// Writers stop at this many pods even if a stage never ends.
const MAX_PODS: usize = 3000;
/// Between two creates of a writer.
const CREATE_PAUSE: Duration = Duration::from_millis(100);
/// A rollout of two replicas on the local node; a Secret update reaching the
/// pods (the kubelet syncs every 10 s here).
const ROLLOUT_TIMEOUT: &str = "180s";
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The base's ports on the node (deploy/components/host-network).
const BASE_PORTS: [u16; 2] = [8443, 8080];

/// (repository, tag) of the image on the node.
fn image() -> Result<(String, String)> {
    node_name()?;
    let image = std::env::var(IMAGE_ENV).with_context(|| {
        format!(
            "{IMAGE_ENV} is not set: start the node with the image, \
             `KUBE_HARDENER_IMAGE_BIN=target/release/kube-hardener e2e/controlplane/up.sh --node -- ...` \
             (scripts/test.sh does)"
        )
    })?;
    let (repository, tag) = image
        .rsplit_once(':')
        .with_context(|| format!("{IMAGE_ENV}={image} has no tag"))?;
    Ok((repository.to_owned(), tag.to_owned()))
}

/// The API server's loopback address, as the environment pods on the host
/// network need in place of the `kubernetes` Service's ClusterIP (which
/// nothing routes here): KUBERNETES_SERVICE_HOST and _PORT.
fn api_server_env() -> Result<Value> {
    let address = std::env::var(API_SERVER_ENV)
        .with_context(|| format!("{API_SERVER_ENV} is not set (up.sh sets it)"))?;
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{API_SERVER_ENV}={address} is not host:port"))?;
    Ok(json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": host},
        {"name": "KUBERNETES_SERVICE_PORT", "value": port},
    ]))
}

/// A port nothing on this machine listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("0.0.0.0:0")?;
    Ok(listener.local_addr()?.port())
}

fn ensure_free(port: u16) -> Result<()> {
    std::net::TcpListener::bind(("0.0.0.0", port))
        .map(drop)
        .with_context(|| format!("port {port} is taken on this machine; the webhook pods need it"))
}

/// A namespace hardened only by the webhook whose selector names `install`.
async fn target_namespace(client: &kube::Client, install: &str) -> Result<Arc<TestNamespace>> {
    let options = NamespaceOptions {
        labels: BTreeMap::from([(TARGET_LABEL.to_owned(), install.to_owned())]),
        annotations: BTreeMap::new(),
    };
    Ok(Arc::new(
        TestNamespace::create(client, "in-cluster", options).await?,
    ))
}

/// Runs a command on a blocking thread, so the pod writer keeps its pace.
async fn run_blocking(mut command: std::process::Command) -> Result<std::process::Output> {
    tokio::task::spawn_blocking(move || run(&mut command)).await?
}

fn kubectl_in(namespace: &str, args: &[&str]) -> std::process::Command {
    let mut command = kubectl();
    command.args(args).args(["--namespace", namespace]);
    command
}

async fn rollout_status(namespace: &str, deployment: &str) -> Result<()> {
    run_blocking(kubectl_in(
        namespace,
        &[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "--timeout",
            ROLLOUT_TIMEOUT,
        ],
    ))
    .await
    .map(drop)
}

/// The webhook's pods: (name, uid, restart count) of each.
async fn webhook_pods(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<(String, String, i32)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let restarts = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |statuses| statuses.iter().map(|s| s.restart_count).sum());
            (
                pod.metadata.name.clone().unwrap_or_default(),
                pod.metadata.uid.clone().unwrap_or_default(),
                restarts,
            )
        })
        .collect())
}

/// Runs `command` (an upgrade or a restart of `deployment`), waits for the
/// rollout, and checks that it replaced every webhook pod.
async fn replaces_the_pods(
    client: &kube::Client,
    namespace: &str,
    deployment: &str,
    what: &str,
    command: std::process::Command,
) -> Result<()> {
    let before = webhook_pods(client, namespace).await?;
    run_blocking(command).await?;
    rollout_status(namespace, deployment).await?;
    let after = webhook_pods(client, namespace).await?;
    ensure!(
        after.iter().all(|pod| !before.contains(pod)),
        "{what} did not replace the pods: {before:?} -> {after:?}"
    );
    Ok(())
}

/// How often a pod's log says it started serving a renewed certificate.
async fn reloads(namespace: &str, pod: &str) -> Result<usize> {
    let output = run_blocking(kubectl_in(namespace, &["logs", pod])).await?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("serving a new certificate"))
        .count())
}

/// Waits until every webhook pod has loaded a renewed certificate from its
/// Secret volume, without a restart.
async fn wait_for_reload(client: &kube::Client, namespace: &str) -> Result<()> {
    let before = webhook_pods(client, namespace).await?;
    ensure!(
        before.len() == 2,
        "expected two webhook pods, found {before:?}"
    );
    for (pod, _, _) in &before {
        ensure!(
            reloads(namespace, pod).await? == 0,
            "{pod} reloaded before the renewal"
        );
    }
    let what = "every webhook pod to serve the renewed certificate";
    eventually(what, RELOAD_TIMEOUT, || async {
        for (pod, _, _) in &before {
            match reloads(namespace, pod).await {
                Ok(0) => return Err(format!("{pod} still serves the old certificate")),
                Ok(_) => {}
                Err(error) => return Err(format!("{error:#}")),
            }
        }
        Ok(())
    })
    .await?;
    let after = webhook_pods(client, namespace).await?;
    ensure!(
        after == before,
        "the pods changed or restarted: {before:?} -> {after:?}"
    );
    Ok(())
}

/// Pods created by a writer during `stages`, each of which must come out hardened.
struct Writer {
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(String, Result<bool>)>>,
}

impl Writer {
    fn start(ns: &Arc<TestNamespace>, prefix: &str) -> Writer {
        let done = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(create_plain_pods(
            Arc::clone(ns),
            prefix.to_owned(),
            MAX_PODS,
            CREATE_PAUSE,
            Some(Arc::clone(&done)),
            true,
        ));
        Writer { done, task }
    }

    /// Every create hardened; returns how many there were.
    async fn finish(self, at_least: usize) -> Result<usize> {
        self.done.store(true, Ordering::Relaxed);
        let results = self.task.await?;
        for (name, result) in &results {
            match result {
                Ok(true) => {}
                Ok(false) => bail!("pod {name} was admitted unhardened"),
                Err(error) => bail!("creating pod {name} failed: {error:#}"),
            }
        }
        ensure!(
            results.len() >= at_least,
            "only {} creates during the stages, expected at least {at_least}",
            results.len()
        );
        Ok(results.len())
    }
}

/// A real pod from a local image: admitted through the in-cluster webhook and
/// started by the kubelet with what it added.
async fn a_hardened_pod_runs(ns: &TestNamespace) -> Result<()> {
    let manifest = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runs"},
        "spec": {"containers": [{
            "name": "main",
            "image": busybox("uid65532"),
            "imagePullPolicy": "Never",
            "command": ["sleep", "3600"],
        }]},
    });
    let created = ns
        .pods()
        .create(&PostParams::default(), &pod(manifest)?)
        .await?;
    ensure!(
        applied_annotation(&created).is_some(),
        "pod admitted unhardened"
    );
    let running = wait_running(&ns.pods(), "runs").await?;
    let context = running
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref());
    ensure!(
        context.and_then(|c| c.run_as_non_root) == Some(true),
        "the running pod lacks runAsNonRoot"
    );
    Ok(())
}

/// Until `name` (a `kubectl get` kind/name or a label query) finds nothing.
async fn wait_gone(namespace: Option<&str>, args: &[&str]) -> Result<()> {
    let what = format!("{args:?} to be gone");
    eventually(&what, Duration::from_secs(120), || async {
        let mut command = kubectl();
        command
            .args(["get", "-o", "name", "--ignore-not-found"])
            .args(args);
        if let Some(namespace) = namespace {
            command.args(["--namespace", namespace]);
        }
        match run_blocking(command).await {
            Ok(output) if output.stdout.is_empty() => Ok(()),
            Ok(output) => Err(String::from_utf8_lossy(&output.stdout).into_owned()),
            Err(error) => Err(format!("{error:#}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_hardens_through_upgrade_restart_and_renewal_and_uninstalls_cleanly() -> Result<()>
{
    let (repository, tag) = image()?;
    let client = client().await?;
    // No Pod Security label: host networking needs the privileged level.
    let release_ns =
        TestNamespace::create(&client, "chart-node", NamespaceOptions::default()).await?;
    let ns = release_ns.name.clone();
    let target = target_namespace(&client, &ns).await?;
    let (webhook_port, health_port) = (free_port()?, free_port()?);
    let release = "khn";
    let deployment = "khn-kube-hardener";
    let work = tempfile::tempdir()?;
    let values = json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "hostNetwork": true,
        "server": {
            "listen": format!("0.0.0.0:{webhook_port}"),
            "health_listen": format!("0.0.0.0:{health_port}"),
            "reuse_port": true,
        },
        "extraEnv": api_server_env()?,
        "webhook": {"namespaceSelector": {"matchLabels": {TARGET_LABEL: ns}}},
    });
    let values_path = work.path().join("values.yaml");
    std::fs::write(&values_path, serde_json::to_vec_pretty(&values)?)?;
    let helm = |verb: &str, extra: &[&str]| {
        let mut command = std::process::Command::new("helm");
        command.arg(verb).arg(release);
        if verb != "uninstall" {
            command
                .arg(workspace_root().join("deploy/helm/kube-hardener"))
                .arg("-f")
                .arg(&values_path);
        }
        command
            .args(["--namespace", &ns, "--wait", "--timeout", ROLLOUT_TIMEOUT])
            .args(extra);
        command
    };

    let result = async {
        run_blocking(helm("install", &[])).await?;
        wait_until_hardening(&target).await?;
        let writer = Writer::start(&target, "helm");

        // An upgrade that changes the pod template rolls both replicas.
        replaces_the_pods(
            &client,
            &ns,
            deployment,
            "helm upgrade",
            helm("upgrade", &["--set", "podAnnotations.e2e-rollout=upgrade"]),
        )
        .await?;
        replaces_the_pods(
            &client,
            &ns,
            deployment,
            "rollout restart",
            kubectl_in(
                &ns,
                &["rollout", "restart", &format!("deployment/{deployment}")],
            ),
        )
        .await?;

        // Renewal: past renew-after, an upgrade issues a new certificate from
        // the same CA; the pods reload it from the Secret volume.
        run_blocking(kubectl_in(
            &ns,
            &[
                "annotate",
                "--overwrite",
                "secret",
                &format!("{deployment}-tls"),
                "kube-hardener.io/renew-after=1",
            ],
        ))
        .await?;
        run_blocking(helm(
            "upgrade",
            &["--set", "podAnnotations.e2e-rollout=upgrade"],
        ))
        .await?;
        wait_for_reload(&client, &ns).await?;
        // Creates go on a little after the last reload.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let created = writer.finish(50).await?;
        eprintln!("{created} pods created through upgrade, restart and renewal, all hardened");

        a_hardened_pod_runs(&target).await?;

        run_blocking(helm("uninstall", &[])).await?;
        let instance = format!("app.kubernetes.io/instance={release}");
        wait_gone(
            None,
            &[
                "mutatingwebhookconfiguration,clusterrole,clusterrolebinding",
                "-l",
                &instance,
            ],
        )
        .await?;
        wait_gone(
            Some(&ns),
            &[
                "all,secret,configmap,serviceaccount,networkpolicy,poddisruptionbudget",
                "-l",
                &instance,
            ],
        )
        .await?;
        // The node's ports are free again: no webhook process is left.
        ensure_free(webhook_port)?;
        ensure_free(health_port)?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = std::process::Command::new("helm")
            .args(["uninstall", release, "--namespace", &ns])
            .output();
    }
    result
}

/// The kustomization of an overlay of the self-signed overlay, in the copy of
/// deploy/ at `deploy`: the host-network component, the node's image, and a
/// webhook that selects only namespaces labelled for this test.
fn base_overlay(
    deploy: &Path,
    repository: &str,
    tag: &str,
    install: &str,
) -> Result<std::path::PathBuf> {
    let overlay = deploy.join("overlays/e2e-in-cluster");
    std::fs::create_dir_all(&overlay)?;
    let mut env_patch = String::new();
    for variable in api_server_env()?.as_array().context("env list")? {
        env_patch.push_str(&format!(
            "      - op: add\n        path: /spec/template/spec/containers/0/env/-\n        value: {variable}\n"
        ));
    }
    let selector = json!({"matchLabels": {TARGET_LABEL: install}});
    let kustomization = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../self-signed
components:
  - ../../components/host-network
images:
  - name: ghcr.io/kube-hardener/kube-hardener
    newName: {repository}
    newTag: {tag}
patches:
  - target:
      kind: Deployment
      name: kube-hardener
    patch: |
      - op: replace
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: Never
{env_patch}  - target:
      kind: MutatingWebhookConfiguration
      name: kube-hardener
    patch: |
      - op: replace
        path: /webhooks/0/namespaceSelector
        value: {selector}
"#
    );
    std::fs::write(overlay.join("kustomization.yaml"), kustomization)?;
    Ok(overlay)
}

fn certs(generated: &Path) -> Result<()> {
    run(kube_hardener_command()?
        .arg("certs")
        .arg("--out-dir")
        .arg(generated))
    .map(drop)
}

fn apply_k(overlay: &Path) -> std::process::Command {
    let mut command = kubectl();
    command
        .args([
            "apply",
            "--server-side",
            "--field-manager=kube-hardener-e2e",
            "-k",
        ])
        .arg(overlay);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kustomize_base_hardens_through_restart_and_renewal_and_deletes_cleanly() -> Result<()>
{
    let (repository, tag) = image()?;
    for port in BASE_PORTS {
        ensure_free(port)?;
    }
    let client = client().await?;
    let install = "kustomize-base";
    let ns = "kube-hardener";
    let target = target_namespace(&client, install).await?;
    let work = tempfile::tempdir()?;
    let deploy = work.path().join("deploy");
    copy_tree(&workspace_root().join("deploy"), &deploy)?;
    let generated = deploy.join("overlays/self-signed/generated");
    certs(&generated)?;
    let overlay = base_overlay(&deploy, &repository, &tag, install)?;

    let result = async {
        run_blocking(apply_k(&overlay)).await?;
        rollout_status(ns, "kube-hardener").await?;
        wait_until_hardening(&target).await?;
        let writer = Writer::start(&target, "base");

        replaces_the_pods(
            &client,
            ns,
            "kube-hardener",
            "rollout restart",
            kubectl_in(ns, &["rollout", "restart", "deployment/kube-hardener"]),
        )
        .await?;

        // Renewal as docs/deploy.md says: certs again (same CA), apply again.
        certs(&generated)?;
        run_blocking(apply_k(&overlay)).await?;
        wait_for_reload(&client, ns).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let created = writer.finish(30).await?;
        eprintln!("{created} pods created through restart and renewal, all hardened");

        a_hardened_pod_runs(&target).await?;

        let mut delete = kubectl();
        delete
            .args(["delete", "--wait=true", "--timeout=120s", "-k"])
            .arg(&overlay);
        run_blocking(delete).await?;
        wait_gone(
            None,
            &[
                "mutatingwebhookconfiguration/kube-hardener",
                "clusterrole/kube-hardener",
            ],
        )
        .await?;
        wait_gone(None, &["namespace/kube-hardener"]).await?;
        for port in BASE_PORTS {
            ensure_free(port)?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = kubectl()
            .args(["delete", "--wait=false", "--ignore-not-found", "-k"])
            .arg(&overlay)
            .output();
    }
    result
}
