//! The namespace watch under the shipped least-privilege RBAC: a webhook whose
//! ServiceAccount may not read namespaces stays not-ready and keeps running,
//! then recovers on its own once `deploy/base/rbac.yaml`'s ClusterRole is bound,
//! and its cache honours namespace opt-outs with exactly those permissions.
//! Always uses a local server: the test controls the server's credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use kube_hardener_e2e::{
    LocalWebhook, NamespaceOptions, PlainAndSkipped, ServerOptions, TestNamespace,
    applied_annotation, client, eventually, plain_pod, pod, unique_name, wait_until_hardening,
    workspace_root,
};
use serde_json::{Value, json};

const WATCH_ERRORS: &str = "kube_hardener_namespace_watch_errors_total";
const CACHE_SIZE: &str = "kube_hardener_namespace_cache_size";
const FALLBACK_LOOKUPS: &str = "kube_hardener_namespace_fallback_lookups_total";
/// How long a server without permissions must stay up and not ready.
const UNAUTHORIZED_PERIOD: Duration = Duration::from_secs(4);

/// Writes a kubeconfig for `token` against the cluster (server and CA) of the
/// admin kubeconfig in `KUBECONFIG`.
fn token_kubeconfig(dir: &Path, token: &str) -> Result<PathBuf> {
    let admin = kube::config::Kubeconfig::read().context("reading the admin kubeconfig")?;
    let context_name = admin
        .current_context
        .as_deref()
        .context("the admin kubeconfig has no current-context")?;
    let context = admin
        .contexts
        .iter()
        .find(|named| named.name == context_name)
        .and_then(|named| named.context.as_ref())
        .with_context(|| format!("the admin kubeconfig has no context `{context_name}`"))?;
    let cluster = admin
        .clusters
        .iter()
        .find(|named| named.name == context.cluster)
        .and_then(|named| named.cluster.as_ref())
        .with_context(|| format!("the admin kubeconfig has no cluster `{}`", context.cluster))?;
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": serde_json::to_value(cluster)?}],
        "users": [{"name": "kube-hardener", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "kube-hardener"}}],
        "current-context": "e2e",
    });
    let path = dir.join("kubeconfig");
    // JSON is YAML: every kubeconfig reader accepts it.
    std::fs::write(&path, serde_json::to_vec_pretty(&kubeconfig)?)
        .context("writing the ServiceAccount's kubeconfig")?;
    Ok(path)
}

/// Creates ServiceAccount `namespace/name` and returns a fresh token for it.
async fn service_account_token(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    accounts
        .create(&PostParams::default(), &account)
        .await
        .with_context(|| format!("creating ServiceAccount {namespace}/{name}"))?;
    let request = TokenRequest {
        // No audiences: the API server's own, which it accepts as a bearer token.
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?;
    let token = issued
        .status
        .and_then(|status| status.token)
        .filter(|token| !token.is_empty())
        .with_context(|| format!("TokenRequest for {namespace}/{name} returned no token"))?;
    Ok(token)
}

/// The shipped ClusterRole from deploy/base/rbac.yaml, renamed to `name`.
fn shipped_cluster_role(name: &str) -> Result<ClusterRole> {
    let path = workspace_root().join("deploy/base/rbac.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut roles = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .with_context(|| format!("parsing a document of {}", path.display()))?;
        if value["kind"] == "ClusterRole" {
            roles.push(value);
        }
    }
    let [mut role] = <[Value; 1]>::try_from(roles).map_err(|roles| {
        anyhow::anyhow!(
            "{} holds {} ClusterRoles, expected exactly one",
            path.display(),
            roles.len()
        )
    })?;
    role["metadata"] = json!({"name": name});
    serde_json::from_value(role)
        .with_context(|| format!("the ClusterRole in {} does not deserialize", path.display()))
}

/// Deletes the ClusterRole and ClusterRoleBinding named `name` when dropped
/// (best effort: a cluster-scoped leftover would outlive the test namespace).
struct ClusterGrant {
    client: Client,
    name: String,
}

impl Drop for ClusterGrant {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let cleanup = async {
                        let _ = Api::<ClusterRoleBinding>::all(client.clone())
                            .delete(&name, &DeleteParams::default())
                            .await;
                        let _ = Api::<ClusterRole>::all(client)
                            .delete(&name, &DeleteParams::default())
                            .await;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(10), cleanup).await;
                });
            });
        }
    }
}

/// Grants `namespace/account` the shipped ClusterRole, nothing more.
async fn grant_shipped_role(
    client: &Client,
    namespace: &str,
    account: &str,
) -> Result<ClusterGrant> {
    let name = unique_name("kh-e2e-rbac");
    let grant = ClusterGrant {
        client: client.clone(),
        name: name.clone(),
    };
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &shipped_cluster_role(&name)?)
        .await
        .with_context(|| format!("creating ClusterRole {name}"))?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .with_context(|| format!("creating ClusterRoleBinding {name}"))?;
    Ok(grant)
}

/// GET on the server's health port: (status code, body).
async fn health(
    http: &reqwest::Client,
    server: &LocalWebhook,
    path: &str,
) -> Result<(u16, String)> {
    let url = format!("http://127.0.0.1:{}{path}", server.health_port);
    let response = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The sum of a metric's samples over all label sets (0 when none was recorded).
fn sample_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            let (metric, value) = line.rsplit_once(' ')?;
            let family = metric.split_once('{').map_or(metric, |(family, _)| family);
            (family == name)
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_watch_recovers_once_the_shipped_role_is_bound() -> Result<()> {
    let client = client().await?;
    let home = TestNamespace::create(&client, "watch-sa", NamespaceOptions::default()).await?;
    let account = "kube-hardener";
    let token = service_account_token(&client, &home.name, account).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = token_kubeconfig(dir.path(), &token)?;

    let mut server = LocalWebhook::spawn(ServerOptions {
        kubeconfig: Some(kubeconfig),
        ..ServerOptions::default()
    })?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;

    // No permissions: every list is forbidden, so the cache never syncs.
    let unauthorized_until = tokio::time::Instant::now() + UNAUTHORIZED_PERIOD;
    let mut answered = 0;
    while tokio::time::Instant::now() < unauthorized_until {
        if let Some(status) = server.exit_status()? {
            bail!(
                "kube-hardener serve exited with {status} without permissions:\n{}",
                server.log()
            );
        }
        // The health listener may still be binding right after the spawn.
        if let Ok((status, body)) = health(&http, &server, "/readyz").await {
            ensure!(
                status == 503,
                "/readyz answered {status} ({body:?}) while the watch is forbidden"
            );
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        answered >= 5,
        "/readyz answered only {answered} times in {UNAUTHORIZED_PERIOD:?}:\n{}",
        server.log()
    );
    let (_, metrics) = health(&http, &server, "/metrics").await?;
    let errors_before = sample(&metrics, WATCH_ERRORS)
        .with_context(|| format!("/metrics has no {WATCH_ERRORS}:\n{metrics}"))?;
    ensure!(
        errors_before > 0.0,
        "a forbidden watch counted no errors:\n{metrics}"
    );

    let _grant = grant_shipped_role(&client, &home.name, account).await?;
    // The watch retries with backoff on its own: no restart.
    eventually(
        "/readyz to turn ready after the role is bound",
        Duration::from_secs(90),
        || async {
            match health(&http, &server, "/readyz").await {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => Err(format!("{status} {body}")),
                Err(error) => Err(format!("{error:#}")),
            }
        },
    )
    .await?;
    ensure!(
        server.exit_status()?.is_none(),
        "the server restarted or exited instead of recovering"
    );
    let (_, metrics) = health(&http, &server, "/metrics").await?;
    let errors_after = sample(&metrics, WATCH_ERRORS)
        .with_context(|| format!("/metrics has no {WATCH_ERRORS}:\n{metrics}"))?;
    ensure!(
        errors_after >= errors_before,
        "{WATCH_ERRORS} went down from {errors_before} to {errors_after}"
    );
    ensure!(
        sample(&metrics, "kube_hardener_namespace_cache_synced") == Some(1.0),
        "ready but the cache is not reported synced:\n{metrics}"
    );

    let cached_before = sample(&metrics, CACHE_SIZE)
        .with_context(|| format!("/metrics has no {CACHE_SIZE}:\n{metrics}"))?;

    // Namespaces created after recovery must arrive through the watch the
    // shipped role allows: a fallback GET answers one review but never fills the cache.
    let PlainAndSkipped {
        plain,
        skipped,
        registration: _registration,
    } = PlainAndSkipped::create(&client, &server.target(), "watch").await?;
    eventually(
        "the watch to add the two new namespaces to the cache",
        Duration::from_secs(30),
        || async {
            let (_, metrics) = health(&http, &server, "/metrics")
                .await
                .map_err(|error| format!("{error:#}"))?;
            match sample(&metrics, CACHE_SIZE) {
                Some(size) if size >= cached_before + 2.0 => Ok(()),
                other => Err(format!(
                    "{CACHE_SIZE} {other:?}, was {cached_before} before"
                )),
            }
        },
    )
    .await?;
    wait_until_hardening(&plain).await?;

    let hardened = plain
        .pods()
        .create(&PostParams::default(), &pod(plain_pod("web"))?)
        .await?;
    ensure!(
        applied_annotation(&hardened).is_some_and(|applied| !applied.is_empty()),
        "pod in a plain namespace was not hardened: {:?}",
        hardened.metadata.annotations
    );
    let container = hardened
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .context("hardened pod has no container")?;
    ensure!(
        container
            .security_context
            .as_ref()
            .and_then(|context| context.allow_privilege_escalation)
            == Some(false),
        "pod in a plain namespace kept privilege escalation: {:?}",
        container.security_context
    );

    let untouched = skipped
        .pods()
        .create(&PostParams::default(), &pod(plain_pod("web"))?)
        .await?;
    ensure!(
        applied_annotation(&untouched).is_none(),
        "pod in a `skip: all` namespace was hardened: {:?}",
        untouched.metadata.annotations
    );
    let container = untouched
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .context("skipped pod has no container")?;
    ensure!(
        container.security_context.is_none(),
        "pod in a `skip: all` namespace got a securityContext: {:?}",
        container.security_context
    );
    ensure!(
        untouched
            .spec
            .as_ref()
            .and_then(|spec| spec.security_context.as_ref())
            .is_none_or(
                |context| context.run_as_non_root.is_none() && context.seccomp_profile.is_none()
            ),
        "pod in a `skip: all` namespace got a pod securityContext"
    );
    let (_, metrics) = health(&http, &server, "/metrics").await?;
    ensure!(
        sample_sum(&metrics, FALLBACK_LOOKUPS) == 0.0,
        "reviews needed fallback GETs instead of the cache:\n{metrics}"
    );
    ensure!(
        server.exit_status()?.is_none(),
        "kube-hardener serve exited during the test:\n{}",
        server.log()
    );
    Ok(())
}
