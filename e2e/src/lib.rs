//! Harness for the end-to-end suite: a `kube-hardener serve` process with real
//! certificates, MutatingWebhookConfigurations scoped to one namespace each, and
//! throw-away namespaces, against whatever cluster `KUBECONFIG` points at.
//!
//! The suite is cluster-agnostic. By default it starts the webhook itself on
//! loopback (the API server must then run on the same machine, as
//! `e2e/controlplane/up.sh` does). With `KUBE_HARDENER_E2E_WEBHOOK=service:NS/NAME`
//! the tests that need no private server register the webhook deployed from
//! `deploy/` (Service `NS/NAME`, caBundle copied from its
//! MutatingWebhookConfiguration) instead; see docs/deploy.md.

pub mod manifests;
pub mod native_policy;
pub mod node;
mod server;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

pub use kube_hardener_testkit::Pki;
pub use server::{
    Certificate, LocalWebhook, ServerOptions, kube_hardener_bin, kube_hardener_command,
    workspace_root,
};

/// Label put on every test namespace; each test's webhook selects only its own.
pub const NAMESPACE_LABEL: &str = "e2e.kube-hardener.io/namespace";
/// Annotation the webhook writes on every object it changed.
pub const APPLIED: &str = "kube-hardener.io/applied";
/// TLS Secret of the webhook deployed from deploy/.
pub const DEPLOYED_TLS_SECRET: &str = "kube-hardener-tls";
/// Path the webhook serves AdmissionReviews on.
pub const MUTATE_PATH: &str = "/mutate";

/// Client for the cluster in `KUBECONFIG`; there is no fallback, a missing or
/// broken kubeconfig fails the test with the reason.
pub async fn client() -> Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!(
            "KUBECONFIG is not set: run the suite through scripts/test.sh or \
             `e2e/controlplane/up.sh -- cargo test -p kube-hardener-e2e`"
        );
    }
    Client::try_default()
        .await
        .context("building a Kubernetes client from KUBECONFIG")
}

/// Where the API server reaches the webhook.
#[derive(Debug, Clone)]
pub enum Target {
    Url {
        url: String,
        ca_pem: String,
    },
    Service {
        namespace: String,
        name: String,
        ca_bundle: String,
    },
}

impl Target {
    /// A webhook listening on this machine's loopback, serving `MUTATE_PATH`.
    pub fn loopback(port: u16, ca_pem: &str) -> Self {
        Target::Url {
            url: format!("https://127.0.0.1:{port}{MUTATE_PATH}"),
            ca_pem: ca_pem.to_owned(),
        }
    }

    fn client_config(&self) -> Value {
        match self {
            Target::Url { url, ca_pem } => json!({
                "url": url,
                "caBundle": BASE64.encode(ca_pem),
            }),
            Target::Service {
                namespace,
                name,
                ca_bundle,
            } => json!({
                "service": {"namespace": namespace, "name": name, "path": MUTATE_PATH, "port": 443},
                "caBundle": ca_bundle,
            }),
        }
    }
}

/// The webhook deployed in the cluster, when `KUBE_HARDENER_E2E_WEBHOOK`
/// names one (`service:NAMESPACE/NAME`); `None` means "start one locally".
pub async fn deployed_webhook(client: &Client) -> Result<Option<Target>> {
    let Ok(spec) = std::env::var("KUBE_HARDENER_E2E_WEBHOOK") else {
        return Ok(None);
    };
    let (namespace, name) = spec
        .strip_prefix("service:")
        .and_then(|rest| rest.split_once('/'))
        .with_context(|| {
            format!("KUBE_HARDENER_E2E_WEBHOOK=`{spec}`: expected service:NAMESPACE/NAME")
        })?;
    // Both overlays store the CA next to the serving certificate: cert-manager's
    // CA issuer and `kube-hardener certs` write `ca.crt` into the TLS Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get(DEPLOYED_TLS_SECRET).await.with_context(|| {
        format!("reading Secret {namespace}/{DEPLOYED_TLS_SECRET} of the deployed webhook")
    })?;
    let ca_bundle = secret
        .data
        .as_ref()
        .and_then(|data| data.get("ca.crt"))
        .map(|bytes| BASE64.encode(&bytes.0))
        .with_context(|| format!("Secret {namespace}/{DEPLOYED_TLS_SECRET} has no ca.crt"))?;
    Ok(Some(Target::Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ca_bundle,
    }))
}

/// The webhook for a test that works against either backend: the deployed one
/// when configured, otherwise a local server with the default configuration.
pub async fn any_webhook(client: &Client) -> Result<(Target, Option<LocalWebhook>)> {
    if let Some(target) = deployed_webhook(client).await? {
        return Ok((target, None));
    }
    let server = LocalWebhook::start(ServerOptions::default()).await?;
    Ok((server.target(), Some(server)))
}

/// A namespace for one test, deleted when dropped. Without a
/// controller-manager it then stays Terminating, which is harmless: names are unique.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

/// Options for [`TestNamespace::create`].
#[derive(Debug, Default, Clone)]
pub struct NamespaceOptions {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Label that puts several test namespaces behind one webhook registration
/// (`Registration::create_for_label(.., (GROUP_LABEL, group), ..)`).
pub const GROUP_LABEL: &str = "e2e.kube-hardener.io/group";

impl NamespaceOptions {
    /// A namespace where Pod Security applies the `restricted` level in each
    /// of `modes` (`enforce`, `warn`, `audit`).
    pub fn restricted(modes: &[&str]) -> Self {
        NamespaceOptions {
            labels: modes
                .iter()
                .map(|mode| {
                    (
                        format!("pod-security.kubernetes.io/{mode}"),
                        "restricted".to_owned(),
                    )
                })
                .collect(),
            annotations: BTreeMap::new(),
        }
    }

    /// A namespace in `group` (see [`GROUP_LABEL`]) with these annotations.
    pub fn in_group(group: &str, annotations: BTreeMap<String, String>) -> Self {
        NamespaceOptions {
            labels: BTreeMap::from([(GROUP_LABEL.to_owned(), group.to_owned())]),
            annotations,
        }
    }
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A DNS-label-safe name unique across concurrent tests and runs.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}-{:x}{:x}{seq}",
        std::process::id() % 0xfff,
        nanos % 0xfffff
    )
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str, options: NamespaceOptions) -> Result<Self> {
        let name = unique_name(&format!("kh-e2e-{prefix}"));
        let mut labels = options.labels;
        labels.insert(NAMESPACE_LABEL.to_owned(), name.clone());
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": options.annotations},
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let created = TestNamespace {
            name: name.clone(),
            client: client.clone(),
        };
        // No controller-manager creates it on the local control plane, and
        // ServiceAccount admission rejects pods whose account is missing. On a
        // real cluster the controller may win the race: "already exists" is fine.
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
        match Api::<ServiceAccount>::namespaced(client.clone(), &name)
            .create(&PostParams::default(), &account)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("creating ServiceAccount {name}/default"));
            }
        }
        Ok(created)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Annotates the namespace (merge patch: other annotations stay).
    pub async fn annotate(&self, key: &str, value: &str) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(
                &self.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("annotating namespace {}", self.name))?;
        Ok(())
    }
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        delete_in_drop(async move {
            let _ = Api::<Namespace>::all(client)
                .delete(&name, &DeleteParams::background())
                .await;
        });
    }
}

/// Runs cleanup from `Drop`, bounded so a dead API server cannot hang a test.
/// Needs the multi-threaded runtime, which every test of the suite uses.
fn delete_in_drop(cleanup: impl std::future::Future<Output = ()>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
            });
        });
    }
}

/// Options for [`Registration::create`].
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    pub failure_policy: &'static str,
    /// Also send Deployments & co. (the workload switch decides what happens).
    pub workloads: bool,
    pub timeout_seconds: i32,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        // Fail in tests: a webhook that silently does nothing must not pass.
        RegisterOptions {
            failure_policy: "Fail",
            workloads: false,
            timeout_seconds: 5,
        }
    }
}

/// Two namespaces behind one webhook registration: `plain`, and `skipped`
/// (annotated `kube-hardener.io/skip: all`). Hardening in `plain` proves the
/// webhook is in effect for `skipped` too.
pub struct PlainAndSkipped {
    pub plain: TestNamespace,
    pub skipped: TestNamespace,
    pub registration: Registration,
}

impl std::fmt::Debug for PlainAndSkipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainAndSkipped")
            .field("plain", &self.plain.name)
            .field("skipped", &self.skipped.name)
            .field("registration", &self.registration.name)
            .finish()
    }
}

impl PlainAndSkipped {
    /// Creates both namespaces (named from `prefix`) and registers `target`
    /// for their group; does not wait for the registration to take effect.
    pub async fn create(client: &Client, target: &Target, prefix: &str) -> Result<Self> {
        let group = unique_name(prefix);
        let plain = TestNamespace::create(
            client,
            &format!("{prefix}-plain"),
            NamespaceOptions::in_group(&group, BTreeMap::new()),
        )
        .await?;
        let skipped = TestNamespace::create(
            client,
            &format!("{prefix}-skip"),
            NamespaceOptions::in_group(
                &group,
                BTreeMap::from([("kube-hardener.io/skip".to_owned(), "all".to_owned())]),
            ),
        )
        .await?;
        let registration = Registration::create_for_label(
            client,
            target,
            (GROUP_LABEL, &group),
            RegisterOptions::default(),
        )
        .await?;
        Ok(PlainAndSkipped {
            plain,
            skipped,
            registration,
        })
    }
}

/// A MutatingWebhookConfiguration limited to one test namespace, deleted when dropped.
pub struct Registration {
    pub name: String,
    client: Client,
}

impl Registration {
    /// Registers the webhook for exactly `namespace`.
    pub async fn create(
        client: &Client,
        target: &Target,
        namespace: &TestNamespace,
        options: RegisterOptions,
    ) -> Result<Self> {
        Self::create_for_label(client, target, (NAMESPACE_LABEL, &namespace.name), options).await
    }

    /// Registers the webhook for the namespaces carrying the label `key=value`.
    pub async fn create_for_label(
        client: &Client,
        target: &Target,
        (key, value): (&str, &str),
        options: RegisterOptions,
    ) -> Result<Self> {
        let name = unique_name("kh-e2e");
        let mut rules = vec![
            json!({"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                   "resources": ["pods"], "scope": "Namespaced"}),
            json!({"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                   "resources": ["pods/ephemeralcontainers"], "scope": "Namespaced"}),
        ];
        if options.workloads {
            rules.push(json!({"apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
                "scope": "Namespaced"}));
            rules.push(json!({"apiGroups": ["batch"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["jobs", "cronjobs"],
                "scope": "Namespaced"}));
        }
        let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": "pods.kube-hardener.io",
                "clientConfig": target.client_config(),
                "rules": rules,
                "failurePolicy": options.failure_policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": options.timeout_seconds,
                "reinvocationPolicy": "IfNeeded",
                "namespaceSelector": {"matchLabels": {key: value}},
            }],
        }))?;
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &configuration)
            .await
            .with_context(|| format!("creating MutatingWebhookConfiguration {name}"))?;
        Ok(Registration {
            name,
            client: client.clone(),
        })
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        delete_in_drop(async move {
            let _ = Api::<MutatingWebhookConfiguration>::all(client)
                .delete(&name, &DeleteParams::default())
                .await;
        });
    }
}

/// A pod object from JSON (test manifests are written as `json!`).
pub fn pod(manifest: Value) -> Result<Pod> {
    serde_json::from_value(manifest).context("test pod manifest does not deserialize")
}

/// A minimal pod: one nginx container, nothing security-related set.
pub fn plain_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
    })
}

pub fn applied_annotation(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(APPLIED))
        .map(String::as_str)
}

/// Creates plain pods `PREFIX-0`, `PREFIX-1`, … one after another, `pause`
/// apart, until `max` or until `done` is set: each name with whether the stored
/// pod was hardened, or the error its create met. With `dry_run` the API server
/// admits each pod and stores none (on a cluster with a node, a stored pod
/// would be scheduled and its image pulled).
pub async fn create_plain_pods(
    ns: std::sync::Arc<TestNamespace>,
    prefix: String,
    max: usize,
    pause: Duration,
    done: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    dry_run: bool,
) -> Vec<(String, Result<bool>)> {
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    let mut results = Vec::new();
    for i in 0..max {
        if done
            .as_ref()
            .is_some_and(|done| done.load(std::sync::atomic::Ordering::Relaxed))
        {
            break;
        }
        let name = format!("{prefix}-{i}");
        let created = async {
            ns.pods()
                .create(&params, &pod(plain_pod(&name))?)
                .await
                .map_err(anyhow::Error::from)
        }
        .await;
        results.push((name, created.map(|p| applied_annotation(&p).is_some())));
        tokio::time::sleep(pause).await;
    }
    results
}

/// Waits until the API server calls the webhook for `namespace`: the
/// configuration is picked up by the API server asynchronously after creation.
/// Probes with server-side dry-run creates, which store nothing.
pub async fn wait_until_hardening(namespace: &TestNamespace) -> Result<()> {
    let api = namespace.pods();
    // A pod-level runAsUser: no container's user depends on its image, so a
    // webhook with image lookups on never asks a registry about the probe.
    let mut probe = plain_pod("readiness-probe");
    probe["spec"]["securityContext"] = json!({"runAsUser": 1000});
    let probe = pod(probe)?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let what = format!("the webhook to take effect in namespace {}", namespace.name);
    eventually(&what, Duration::from_secs(30), || async {
        match api.create(&dry_run, &probe).await {
            Ok(created) if applied_annotation(&created).is_some() => Ok(()),
            Ok(_) => Err("pod admitted without the webhook's annotation".to_owned()),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
}

/// Polls `check` until it returns `Ok`, for state the API server or the
/// webhook picks up asynchronously (configurations, watches, files). Fails
/// after `timeout` with `what` and the last observation (`check`'s `Err`).
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), String>>,
{
    kube_hardener_testkit::eventually(what, timeout, check)
        .await
        .map_err(|message| anyhow::anyhow!(message))
}

/// `kubectl` from `KUBECTL`, else from PATH (e2e/controlplane/up.sh puts the
/// pinned build first). Used where the client's behaviour is part of the
/// test: admission warnings, kustomize, server-side apply.
pub fn kubectl() -> std::process::Command {
    std::process::Command::new(std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into()))
}

/// Creates `manifest` in `namespace` with kubectl and returns (stored object,
/// the admission warnings kubectl printed). `dry_run` stores nothing.
pub fn kubectl_create(
    namespace: &str,
    manifest: &Value,
    dry_run: bool,
) -> Result<(Value, Vec<String>)> {
    use std::io::Write;
    let mut command = kubectl();
    command.args(["create", "--namespace", namespace, "-o", "json", "-f", "-"]);
    if dry_run {
        command.arg("--dry-run=server");
    }
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running kubectl create")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(&serde_json::to_vec(manifest)?)?;
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("kubectl create failed: {stderr}");
    }
    let warnings = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("Warning: "))
        .map(str::to_owned)
        .collect();
    Ok((serde_json::from_slice(&output.stdout)?, warnings))
}

/// JSON view of a typed object, for comparisons with the engine's JSON output.
pub fn to_json<T: serde::Serialize>(object: &T) -> Result<Value> {
    serde_json::to_value(object).context("serializing to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_distinct_dns_labels() {
        let names: Vec<String> = (0..200).map(|_| unique_name("kh-e2e-watch")).collect();
        for name in &names {
            assert!(name.len() <= 63, "{name} is longer than a DNS label");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
            assert!(!name.ends_with('-'), "{name}");
        }
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
    }

    #[test]
    fn url_target_carries_the_ca_as_base64() {
        let target = Target::Url {
            url: "https://127.0.0.1:8443/mutate".to_owned(),
            ca_pem: "PEM".to_owned(),
        };
        assert_eq!(
            target.client_config(),
            json!({"url": "https://127.0.0.1:8443/mutate", "caBundle": "UEVN"})
        );
    }

    #[test]
    fn service_target_points_at_the_mutate_path() {
        let target = Target::Service {
            namespace: "kube-hardener".to_owned(),
            name: "kube-hardener".to_owned(),
            ca_bundle: "Q0E=".to_owned(),
        };
        assert_eq!(
            target.client_config(),
            json!({
                "service": {"namespace": "kube-hardener", "name": "kube-hardener", "path": "/mutate", "port": 443},
                "caBundle": "Q0E=",
            })
        );
    }

    #[tokio::test]
    async fn eventually_reports_what_it_waited_for_and_the_last_observation() {
        let error = eventually("the sky to fall", Duration::from_millis(300), || async {
            Err("blue sky".to_owned())
        })
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "waited 300ms for the sky to fall; last seen: blue sky"
        );
        let mut calls = 0;
        eventually("the third call", Duration::from_secs(5), || {
            calls += 1;
            let done = calls >= 3;
            async move {
                if done {
                    Ok(())
                } else {
                    Err("early".to_owned())
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(calls, 3);
    }
}
