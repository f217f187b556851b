//! The Helm chart (deploy/helm/kube-hardener): lint and render for every
//! certificate mode, a values schema that names a misspelt key, no drift from
//! the kustomize base, every mode accepted by the API server, a real install,
//! upgrade (the CA is kept), renewal (same CA) and uninstall (nothing left),
//! and the alerts checked and unit-tested by promtool.
//!
//! helm and promtool are built from their Go modules by e2e/controlplane and
//! put on PATH by up.sh; a missing tool fails these tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube_hardener_e2e::manifests::{
    CERT_MANAGER_CRDS, PROMETHEUS_OPERATOR_CRDS, documents, find, install_crds, remove_crds,
    retry_while, run,
};
use kube_hardener_e2e::{NamespaceOptions, TestNamespace, client, kubectl, workspace_root};
use serde_json::{Value, json};

const RELEASE: &str = "kh";
/// `kh` does not contain the chart name, so objects are `kh-kube-hardener…`.
const FULLNAME: &str = "kh-kube-hardener";
/// The release actually installed, apart from the dry-run one: its
/// cluster-scoped objects must not collide with the dry run's.
const INSTALLED: &str = "khi";
const INSTALLED_FULLNAME: &str = "khi-kube-hardener";

fn chart() -> PathBuf {
    workspace_root().join("deploy/helm/kube-hardener")
}

fn helm() -> Command {
    Command::new("helm")
}

/// A values file in `dir` from JSON (YAML's superset), for `-f`.
fn values_file(dir: &Path, name: &str, values: &Value) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_json::to_vec_pretty(values)?)?;
    Ok(path)
}

/// A self-signed CA certificate (PEM), base64-encoded as a caBundle is.
fn some_ca_bundle() -> Result<String> {
    let pki = kube_hardener_e2e::Pki::new()?;
    Ok(BASE64.encode(pki.ca_pem()))
}

struct Mode {
    name: &'static str,
    values: Value,
}

fn modes() -> Result<Vec<Mode>> {
    Ok(vec![
        Mode {
            name: "self-signed",
            values: json!({}),
        },
        Mode {
            name: "cert-manager",
            values: json!({"certificates": {"mode": "cert-manager"}}),
        },
        Mode {
            name: "existing",
            values: json!({"certificates": {"mode": "existing", "existing": {
                "secretName": "webhook-tls", "caBundle": some_ca_bundle()?}}}),
        },
        Mode {
            name: "monitoring",
            values: json!({"metrics": {
                "serviceMonitor": {"enabled": true},
                "prometheusRule": {"enabled": true},
                "dashboard": {"enabled": true}}}),
        },
        Mode {
            name: "workloads-and-audit",
            values: json!({"hardening": {"mutate_workloads": true, "run_as_user": 1000},
                           "server": {"audit": true}}),
        },
    ])
}

/// `helm template` of release `kh` with a values file; the rendered documents.
fn render(namespace: &str, values: &Path) -> Result<Vec<Value>> {
    render_release(RELEASE, namespace, values)
}

fn render_release(release: &str, namespace: &str, values: &Path) -> Result<Vec<Value>> {
    let output = run(helm()
        .args(["template", release])
        .arg(chart())
        .args(["--namespace", namespace, "-f"])
        .arg(values))?;
    documents(&String::from_utf8(output.stdout)?)
}

/// `helm template` that must fail; its stderr.
/// `helm template` of release `kh` with `--set` values.
fn template_with(sets: &[&str]) -> Command {
    let mut command = helm();
    command.args(["template", RELEASE]).arg(chart());
    for set in sets {
        command.args(["--set", set]);
    }
    command
}

fn render_error(sets: &[&str]) -> Result<String> {
    let output = template_with(sets)
        .output()
        .context("running helm template")?;
    ensure!(!output.status.success(), "helm template {sets:?} succeeded");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

fn decode(data: &Value) -> Result<String> {
    let text = data.as_str().context("not a string")?;
    Ok(String::from_utf8(BASE64.decode(text)?)?)
}

/// The Secret the Deployment mounts as its serving certificate.
fn mounted_secret(docs: &[Value]) -> Result<String> {
    let deployment = find(docs, "Deployment", FULLNAME)?;
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|volume| volume["secret"]["secretName"].as_str())
        .map(str::to_owned)
        .context("the Deployment mounts no Secret")
}

fn webhook(docs: &[Value]) -> Result<&Value> {
    Ok(&find(docs, "MutatingWebhookConfiguration", FULLNAME)?["webhooks"][0])
}

/// `openssl verify` of `cert` against `ca`, and the certificate's DNS names.
fn verify_and_names(dir: &Path, ca: &str, cert: &str) -> Result<Vec<String>> {
    let (ca_path, cert_path) = (dir.join("ca.pem"), dir.join("cert.pem"));
    std::fs::write(&ca_path, ca)?;
    std::fs::write(&cert_path, cert)?;
    run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca_path)
        .arg(&cert_path))?;
    let output = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&cert_path))?;
    Ok(String::from_utf8(output.stdout)?
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter_map(|part| part.strip_prefix("DNS:"))
        .map(str::to_owned)
        .collect())
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|doc| {
            format!(
                "{}/{}",
                doc["kind"].as_str().unwrap_or_default(),
                doc["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn every_certificate_mode_lints_and_renders_what_it_promises() -> Result<()> {
    let work = tempfile::tempdir()?;
    let namespace = "hardening";
    let service_host = format!("{FULLNAME}.{namespace}.svc");
    for mode in modes()? {
        let values = values_file(work.path(), mode.name, &mode.values)?;
        let lint = run(helm()
            .args(["lint", "--strict", "--namespace", namespace, "-f"])
            .arg(&values)
            .arg(chart()))
        .with_context(|| format!("mode {}", mode.name))?;
        ensure!(
            String::from_utf8_lossy(&lint.stdout).contains("0 chart(s) failed"),
            "{}",
            String::from_utf8_lossy(&lint.stdout)
        );
        let docs = render(namespace, &values).with_context(|| format!("mode {}", mode.name))?;
        let objects = kinds(&docs);
        for always in [
            "ServiceAccount/kh-kube-hardener",
            "ClusterRole/kh-kube-hardener",
            "ClusterRoleBinding/kh-kube-hardener",
            "ConfigMap/kh-kube-hardener-config",
            "Service/kh-kube-hardener",
            "Service/kh-kube-hardener-metrics",
            "Deployment/kh-kube-hardener",
            "PodDisruptionBudget/kh-kube-hardener",
            "NetworkPolicy/kh-kube-hardener",
            "MutatingWebhookConfiguration/kh-kube-hardener",
        ] {
            ensure!(
                objects.contains(always),
                "{}: no {always} in {objects:?}",
                mode.name
            );
        }
        for doc in &docs {
            if doc["kind"] != "MutatingWebhookConfiguration"
                && !doc["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Cluster")
            {
                ensure!(
                    doc["metadata"]["namespace"] == namespace,
                    "{}: {} is not in the release namespace",
                    mode.name,
                    doc["metadata"]["name"]
                );
            }
        }
        let hook = webhook(&docs)?;
        assert_eq!(hook["failurePolicy"], "Ignore", "{}", mode.name);
        assert_eq!(hook["timeoutSeconds"], 2, "{}", mode.name);
        // The release namespace is never mutated (the webhook could not start
        // its own pods while it is down).
        let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
        assert_eq!(excluded["operator"], "NotIn");
        assert!(
            excluded["values"]
                .as_array()
                .is_some_and(|values| values.contains(&json!(namespace))),
            "{excluded}"
        );
        let secrets: Vec<&Value> = docs.iter().filter(|doc| doc["kind"] == "Secret").collect();
        match mode.name {
            "cert-manager" => {
                ensure!(secrets.is_empty(), "cert-manager mode renders Secrets");
                let injected = find(&docs, "MutatingWebhookConfiguration", FULLNAME)?["metadata"]
                    ["annotations"]["cert-manager.io/inject-ca-from"]
                    .as_str()
                    .context("no inject-ca-from")?
                    .to_owned();
                assert_eq!(injected, format!("{namespace}/{FULLNAME}-serving"));
                assert!(hook["clientConfig"].get("caBundle").is_none());
                let certificate = find(&docs, "Certificate", &format!("{FULLNAME}-serving"))?;
                assert_eq!(certificate["spec"]["secretName"], mounted_secret(&docs)?);
                let names = certificate["spec"]["dnsNames"]
                    .as_array()
                    .context("no dnsNames")?;
                assert!(names.contains(&json!(service_host)), "{names:?}");
                for doc in docs.iter().filter(|doc| doc["kind"] == "Certificate") {
                    find(
                        &docs,
                        "Issuer",
                        doc["spec"]["issuerRef"]["name"].as_str().unwrap_or(""),
                    )?;
                }
            }
            "existing" => {
                ensure!(secrets.is_empty(), "existing mode renders Secrets");
                assert_eq!(mounted_secret(&docs)?, "webhook-tls");
                assert_eq!(
                    hook["clientConfig"]["caBundle"],
                    mode.values["certificates"]["existing"]["caBundle"]
                );
            }
            _ => {
                // Self-signed: a CA Secret, and a serving Secret it signed for
                // the Service's names; the caBundle is that CA.
                ensure!(secrets.len() == 2, "{} Secrets", secrets.len());
                let ca =
                    decode(&find(&docs, "Secret", &format!("{FULLNAME}-ca"))?["data"]["tls.crt"])?;
                let tls = find(&docs, "Secret", &format!("{FULLNAME}-tls"))?;
                assert_eq!(mounted_secret(&docs)?, format!("{FULLNAME}-tls"));
                assert_eq!(decode(&tls["data"]["ca.crt"])?, ca);
                assert_eq!(decode(&hook["clientConfig"]["caBundle"])?, ca);
                let names = verify_and_names(work.path(), &ca, &decode(&tls["data"]["tls.crt"])?)?;
                assert!(names.contains(&service_host), "{names:?}");
                let renew_after: i64 =
                    tls["metadata"]["annotations"]["kube-hardener.io/renew-after"]
                        .as_str()
                        .context("no renew-after")?
                        .parse()?;
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                // 365 days, renewed 30 days before the end.
                assert!(
                    (renew_after - now - 335 * 86_400).abs() < 3_600,
                    "renew-after {renew_after}, now {now}"
                );
            }
        }
        match mode.name {
            "monitoring" => {
                let monitor = find(&docs, "ServiceMonitor", FULLNAME)?;
                let metrics = find(&docs, "Service", &format!("{FULLNAME}-metrics"))?;
                for (key, value) in monitor["spec"]["selector"]["matchLabels"]
                    .as_object()
                    .context("no matchLabels")?
                {
                    assert_eq!(&metrics["metadata"]["labels"][key], value, "label {key}");
                }
                // The webhook Service must not match: it would be scraped twice.
                let service = find(&docs, "Service", FULLNAME)?;
                assert_ne!(
                    service["metadata"]["labels"]["app.kubernetes.io/component"],
                    monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
                );
                let port = &monitor["spec"]["endpoints"][0]["port"];
                assert!(
                    metrics["spec"]["ports"]
                        .as_array()
                        .is_some_and(|ports| ports.iter().any(|p| &p["name"] == port)),
                    "{port} is not a port of the metrics Service"
                );
                find(&docs, "PrometheusRule", FULLNAME)?;
                let dashboard = find(&docs, "ConfigMap", &format!("{FULLNAME}-dashboard"))?;
                let shipped = std::fs::read_to_string(chart().join("files/dashboard.json"))?;
                assert_eq!(
                    dashboard["data"]["kube-hardener.json"]
                        .as_str()
                        .map(str::trim),
                    Some(shipped.trim())
                );
            }
            "workloads-and-audit" => {
                let resources: Vec<&str> = hook["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|rule| rule["resources"].as_array().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                for resource in ["pods", "deployments", "cronjobs"] {
                    assert!(resources.contains(&resource), "{resources:?}");
                }
                let config = config_of(&docs)?;
                assert!(config.server.audit);
                assert!(config.hardening.mutate_workloads);
                assert_eq!(config.hardening.run_as_user, Some(1000));
            }
            _ => {
                for absent in ["ServiceMonitor", "PrometheusRule"] {
                    ensure!(
                        !docs.iter().any(|doc| doc["kind"] == absent),
                        "{absent} rendered"
                    );
                }
                let resources = hook["rules"].as_array().map_or(0, Vec::len);
                assert_eq!(resources, 2, "pods and pods/ephemeralcontainers only");
            }
        }
    }
    Ok(())
}

/// The configuration the chart's ConfigMap gives the binary, loaded by the
/// binary's own loader (defaults under the file, as `serve` does).
fn config_of(docs: &[Value]) -> Result<kube_hardener_config::Config> {
    let config_map = docs
        .iter()
        .find(|doc| {
            doc["kind"] == "ConfigMap"
                && doc["metadata"]["name"]
                    .as_str()
                    .is_some_and(|name| name.ends_with("-config"))
        })
        .context("no configuration ConfigMap")?;
    let (file, text) = config_map["data"]
        .as_object()
        .and_then(|data| data.iter().next())
        .context("empty configuration ConfigMap")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(file);
    std::fs::write(&path, text.as_str().context("not text")?)?;
    Ok(kube_hardener_config::Config::load(Some(&path))?)
}

#[test]
fn missing_existing_secret_values_fail_with_their_names() -> Result<()> {
    let stderr = render_error(&["certificates.mode=existing"])?;
    assert!(
        stderr.contains("certificates.existing.secretName"),
        "{stderr}"
    );
    let stderr = render_error(&[
        "certificates.mode=existing",
        "certificates.existing.secretName=webhook-tls",
    ])?;
    assert!(
        stderr.contains("certificates.existing.caBundle"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn image_lookups_must_fit_in_the_webhook_timeout() -> Result<()> {
    // The defaults (2 s budget, 2 s timeout) leave the API server no time.
    let stderr = render_error(&["images.resolve=true"])?;
    assert!(
        stderr.contains("images.budget_ms (2000)")
            && stderr.contains("webhook.timeoutSeconds (2 s)"),
        "{stderr}"
    );
    let stderr = render_error(&["images.resolve=true", "images.budget_ms=1500"])?;
    assert!(stderr.contains("images.budget_ms (1500)"), "{stderr}");
    for fitting in [
        &["images.resolve=true", "webhook.timeoutSeconds=5"][..],
        &["images.resolve=true", "images.budget_ms=1000"][..],
    ] {
        run(&mut template_with(fitting))?;
    }
    Ok(())
}

#[test]
fn only_the_image_switches_let_kube_hardener_list_pods_or_get_secrets() -> Result<()> {
    let rules = |sets: &[&str]| -> Result<Value> {
        let rendered = run(&mut template_with(sets))?;
        let docs = documents(&String::from_utf8(rendered.stdout)?)?;
        Ok(find(&docs, "ClusterRole", FULLNAME)?["rules"].clone())
    };
    let namespaces =
        json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]});
    let pods = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]});
    let resolve = ["images.resolve=true", "webhook.timeoutSeconds=5"];
    assert_eq!(rules(&[])?, json!([namespaces]));
    assert_eq!(rules(&resolve)?, json!([namespaces]));
    // Without lookups the warm-up has nothing to do, and gets no permission.
    assert_eq!(rules(&["images.warm_up_pods=500"])?, json!([namespaces]));
    assert_eq!(
        rules(&[resolve[0], resolve[1], "images.warm_up_pods=500"])?,
        json!([namespaces, pods])
    );
    let secrets = json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]});
    assert_eq!(
        rules(&["images.pod_pull_secrets=true"])?,
        json!([namespaces])
    );
    assert_eq!(
        rules(&[resolve[0], resolve[1], "images.pod_pull_secrets=true"])?,
        json!([namespaces, secrets])
    );
    Ok(())
}

#[test]
fn host_network_needs_reuse_port_and_declares_no_host_ports() -> Result<()> {
    let stderr = render_error(&["hostNetwork=true"])?;
    assert!(
        stderr.contains("hostNetwork: true needs server.reuse_port: true"),
        "{stderr}"
    );
    let rendered = run(&mut template_with(&[
        "hostNetwork=true",
        "server.reuse_port=true",
        "server.listen=0.0.0.0:9443",
        "server.health_listen=0.0.0.0:9080",
    ]))?;
    let docs = documents(&String::from_utf8(rendered.stdout)?)?;
    let spec = &find(&docs, "Deployment", FULLNAME)?["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    let container = &spec["containers"][0];
    // A declared port would become a host port, and the scheduler would keep
    // a rolling update's new pod off its old pod's node.
    assert!(container.get("ports").is_none(), "{container}");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], 9080, "{probe}");
    }
    assert_eq!(
        find(&docs, "Service", FULLNAME)?["spec"]["ports"][0]["targetPort"],
        9443
    );
    assert_eq!(
        find(&docs, "Service", &format!("{FULLNAME}-metrics"))?["spec"]["ports"][0]["targetPort"],
        9080
    );
    let config = config_of(&docs)?;
    assert!(config.server.reuse_port);

    // Off by default: named ports, as in the kustomize base.
    let rendered = run(&mut template_with(&[]))?;
    let docs = documents(&String::from_utf8(rendered.stdout)?)?;
    let spec = &find(&docs, "Deployment", FULLNAME)?["spec"]["template"]["spec"];
    assert!(spec.get("hostNetwork").is_none());
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["port"],
        "health"
    );
    assert!(!config_of(&docs)?.server.reuse_port);
    Ok(())
}

#[test]
fn a_misspelt_or_mistyped_value_fails_naming_it() -> Result<()> {
    for (set, named) in [
        ("hardening.run_as_usr=1000", "run_as_usr"),
        ("server.log_levle=debug", "log_levle"),
        ("images.resolv=true", "resolv"),
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("webhook.timeoutSeconds=31", "timeoutSeconds"),
        ("certificates.mode=vault", "mode"),
        ("replicas=two", "replicas"),
        ("hardening.run_as_user=-1", "run_as_user"),
        ("hardening.settings.seccomp=false", "seccomp"),
        ("mutateWorkloads=true", "mutateWorkloads"),
    ] {
        let stderr = render_error(&[set])?;
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(named),
            "--set {set}: {stderr}"
        );
    }
    Ok(())
}

/// Labels and annotations only the chart has: Helm's bookkeeping and the
/// restart-on-config-change checksum.
fn strip_chart_only(doc: &mut Value) {
    for path in [&["metadata"][..], &["spec", "template", "metadata"][..]] {
        let mut node = &mut *doc;
        for key in path {
            node = &mut node[*key];
        }
        if let Some(labels) = node.get_mut("labels").and_then(Value::as_object_mut) {
            for label in [
                "helm.sh/chart",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/version",
            ] {
                labels.remove(label);
            }
        }
        if let Some(annotations) = node.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("checksum/config");
            if annotations.is_empty() {
                node.as_object_mut().map(|m| m.remove("annotations"));
            }
        }
    }
    // The caBundle is the operator's in both (the chart's value, the overlay's patch).
    if let Some(hooks) = doc["webhooks"].as_array_mut() {
        for hook in hooks {
            if let Some(client) = hook["clientConfig"].as_object_mut() {
                client.remove("caBundle");
            }
        }
    }
}

/// Differences between two JSON values, as JSON-pointer-ish paths.
fn differences(path: &str, chart: &Value, base: &Value, out: &mut Vec<String>) {
    match (chart, base) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                differences(
                    &format!("{path}/{key}"),
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}/{index}"), x, y, out);
            }
        }
        _ if chart != base => out.push(format!("{path}: chart {chart} ≠ base {base}")),
        _ => {}
    }
}

/// The chart, rendered with the base's names and certificate arrangement
/// (release `kube-hardener` in namespace `kube-hardener`, the serving
/// certificate in the existing Secret `kube-hardener-tls`), holds the same
/// objects as `kubectl kustomize deploy/base`, field by field. The base's
/// Namespace is the only object the chart does not render (Helm's
/// `--create-namespace` does that), and configuration files are compared by
/// what the binary loads from them.
#[test]
fn the_chart_and_the_kustomize_base_do_not_drift() -> Result<()> {
    let work = tempfile::tempdir()?;
    let values = values_file(
        work.path(),
        "like-base",
        &json!({"certificates": {"mode": "existing", "existing": {
            "secretName": "kube-hardener-tls", "caBundle": some_ca_bundle()?}}}),
    )?;
    let mut chart_docs = render_release("kube-hardener", "kube-hardener", &values)?;
    let output = run(kubectl()
        .arg("kustomize")
        .arg(workspace_root().join("deploy/base")))?;
    let mut base_docs = documents(&String::from_utf8(output.stdout)?)?;
    base_docs.retain(|doc| doc["kind"] != "Namespace");

    let chart_config = config_of(&chart_docs)?;
    let base_config = config_of(&base_docs)?;
    let mut problems = Vec::new();
    if format!("{chart_config:?}") != format!("{base_config:?}") {
        problems.push(format!(
            "configuration: chart {chart_config:#?}\n≠ base {base_config:#?}"
        ));
    }

    let key = |doc: &Value| {
        format!(
            "{}/{}",
            doc["kind"].as_str().unwrap_or_default(),
            doc["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let mut base: BTreeMap<String, Value> = BTreeMap::new();
    for doc in base_docs.drain(..) {
        base.insert(key(&doc), doc);
    }
    for doc in &mut chart_docs {
        strip_chart_only(doc);
        let name = key(doc);
        let Some(mut expected) = base.remove(&name) else {
            problems.push(format!("{name} is in the chart, not in the base"));
            continue;
        };
        strip_chart_only(&mut expected);
        if doc["kind"] == "ConfigMap" {
            // Compared above, by effect; the file names must agree.
            let names = |doc: &Value| -> Vec<String> {
                doc["data"]
                    .as_object()
                    .map(|data| data.keys().cloned().collect())
                    .unwrap_or_default()
            };
            if names(doc) != names(&expected) {
                problems.push(format!(
                    "{name}: files {:?} ≠ {:?}",
                    names(doc),
                    names(&expected)
                ));
            }
            continue;
        }
        differences(&name, doc, &expected, &mut problems);
    }
    problems.extend(
        base.keys()
            .map(|name| format!("{name} is in the base, not in the chart")),
    );
    if !problems.is_empty() {
        bail!("the chart and deploy/base differ:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// Every mode's rendered output passes a server-side dry-run apply into a
/// namespace that enforces the `restricted` Pod Security level, without a
/// warning, cert-manager's and prometheus-operator's kinds included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_is_accepted_by_the_api_server() -> Result<()> {
    let client = client().await?;
    let namespace = TestNamespace::create(&client, "chart", restricted_everywhere()).await?;
    let work = tempfile::tempdir()?;
    let mut crds = install_crds(&CERT_MANAGER_CRDS)?;
    let result = install_crds(&PROMETHEUS_OPERATOR_CRDS).and_then(|more| {
        crds.extend(more);
        for mode in modes()? {
            let values = values_file(work.path(), mode.name, &mode.values)?;
            let docs = render(&namespace.name, &values)?;
            let manifest = work.path().join(format!("{}-rendered.json", mode.name));
            std::fs::write(
                &manifest,
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": docs}))?,
            )?;
            // A CRD that has just become Established can take a moment to
            // show up in discovery, which kubectl needs to map the kinds.
            let output = retry_while(
                "no matches for kind",
                std::time::Duration::from_millis(500),
                || {
                    run(kubectl()
                        .args([
                            "apply",
                            "--server-side",
                            "--dry-run=server",
                            "--field-manager=kube-hardener-e2e",
                            "-f",
                        ])
                        .arg(&manifest))
                },
            )
            .with_context(|| format!("mode {}", mode.name))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            ensure!(
                !stderr.contains("Warning"),
                "mode {}: the API server warned:\n{stderr}",
                mode.name
            );
            let applied = stdout
                .matches("serverside-applied (server dry run)")
                .count();
            ensure!(
                applied == docs.len(),
                "mode {}: {applied} of {} objects applied:\n{stdout}",
                mode.name,
                docs.len()
            );
        }
        Ok(())
    });
    remove_crds(&crds)?;
    result
}

/// Pod Security `restricted` in all three modes: `warn` and `audit` also
/// judge workload templates, which `enforce` never sees.
fn restricted_everywhere() -> NamespaceOptions {
    NamespaceOptions::restricted(&["enforce", "warn", "audit"])
}

fn kubectl_json(args: &[&str]) -> Result<Value> {
    let output = run(kubectl().args(args).args(["-o", "json"]))?;
    Ok(serde_json::from_slice(&output.stdout)?)
}

struct Certificates {
    ca: String,
    ca_key: String,
    serving: String,
    renew_after: String,
    bundle: String,
}

fn installed_certificates(namespace: &str) -> Result<Certificates> {
    let ca = kubectl_json(&[
        "get",
        "secret",
        "-n",
        namespace,
        &format!("{INSTALLED_FULLNAME}-ca"),
    ])?;
    let tls = kubectl_json(&[
        "get",
        "secret",
        "-n",
        namespace,
        &format!("{INSTALLED_FULLNAME}-tls"),
    ])?;
    let hook = kubectl_json(&["get", "mutatingwebhookconfiguration", INSTALLED_FULLNAME])?;
    Ok(Certificates {
        ca: decode(&ca["data"]["tls.crt"])?,
        ca_key: decode(&ca["data"]["tls.key"])?,
        serving: decode(&tls["data"]["tls.crt"])?,
        renew_after: tls["metadata"]["annotations"]["kube-hardener.io/renew-after"]
            .as_str()
            .context("no renew-after")?
            .to_owned(),
        bundle: decode(&hook["webhooks"][0]["clientConfig"]["caBundle"])?,
    })
}

/// A real `helm install`, two upgrades and an uninstall on the API server.
/// The webhook's namespace selector matches only a label no namespace has,
/// so the installed configuration (whose Service has no running pods here)
/// never affects the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_keeps_the_ca_across_upgrades_renews_with_it_and_uninstalls_cleanly() -> Result<()>
{
    let client = client().await?;
    let namespace = TestNamespace::create(&client, "helm", restricted_everywhere()).await?;
    let ns = namespace.name.as_str();
    let work = tempfile::tempdir()?;
    let values = values_file(
        work.path(),
        "isolated",
        &json!({"webhook": {"namespaceSelector": {"matchLabels": {
            "e2e.kube-hardener.io/chart-release": ns}}}}),
    )?;
    let helm_in = |verb: &str| -> Result<()> {
        let mut command = helm();
        command.arg(verb);
        if verb != "uninstall" {
            command.arg(INSTALLED).arg(chart()).arg("-f").arg(&values);
        } else {
            command.args([INSTALLED, "--wait", "--timeout", "60s"]);
        }
        let output = run(command.args(["--namespace", ns]))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!stderr.contains("Warning"), "helm {verb} warned:\n{stderr}");
        Ok(())
    };

    let result = (|| -> Result<()> {
        helm_in("install")?;
        let first = installed_certificates(ns)?;
        assert_eq!(first.bundle, first.ca);
        let names = verify_and_names(work.path(), &first.ca, &first.serving)?;
        assert!(
            names.contains(&format!("{INSTALLED_FULLNAME}.{ns}.svc")),
            "{names:?}"
        );

        // An upgrade keeps the CA and the serving certificate: nothing for
        // the replicas to reload, no caBundle change.
        helm_in("upgrade")?;
        let second = installed_certificates(ns)?;
        assert_eq!(second.ca, first.ca);
        assert_eq!(second.ca_key, first.ca_key);
        assert_eq!(second.serving, first.serving);
        assert_eq!(second.renew_after, first.renew_after);
        assert_eq!(second.bundle, first.ca);

        // Past renew-after, the next upgrade issues a new serving certificate
        // from the same CA: the caBundle stays, so the old and the new
        // certificate are both trusted while the replicas reload.
        run(kubectl().args([
            "annotate",
            "--overwrite",
            "secret",
            "-n",
            ns,
            &format!("{INSTALLED_FULLNAME}-tls"),
            "kube-hardener.io/renew-after=1",
        ]))?;
        helm_in("upgrade")?;
        let third = installed_certificates(ns)?;
        assert_eq!(third.ca, first.ca);
        assert_eq!(third.bundle, first.ca);
        assert_ne!(third.serving, first.serving);
        verify_and_names(work.path(), &first.ca, &third.serving)?;
        let renew_after: i64 = third.renew_after.parse()?;
        assert!(renew_after > time::OffsetDateTime::now_utc().unix_timestamp());

        // Uninstall: no webhook configuration pointing at nothing, and none
        // of the release's objects left behind.
        helm_in("uninstall")?;
        let left = run(kubectl().args([
            "get",
            "mutatingwebhookconfiguration,clusterrole,clusterrolebinding",
            "-l",
            &format!("app.kubernetes.io/instance={INSTALLED}"),
            "-o",
            "name",
        ]))?;
        let left_cluster = String::from_utf8_lossy(&left.stdout).into_owned();
        let left = run(kubectl().args([
            "get",
            "all,secret,configmap,serviceaccount,networkpolicy,poddisruptionbudget",
            "-n",
            ns,
            "-l",
            &format!("app.kubernetes.io/instance={INSTALLED}"),
            "-o",
            "name",
        ]))?;
        let left_namespaced = String::from_utf8_lossy(&left.stdout).into_owned();
        ensure!(
            left_cluster.trim().is_empty() && left_namespaced.trim().is_empty(),
            "left after helm uninstall:\n{left_cluster}{left_namespaced}"
        );
        Ok(())
    })();
    if result.is_err() {
        let _ = helm()
            .args(["uninstall", INSTALLED, "--namespace", ns])
            .output();
    }
    result
}

/// The PrometheusRule's groups, as a Prometheus rules file.
fn rules_file(dir: &Path) -> Result<PathBuf> {
    let values = values_file(
        dir,
        "monitoring",
        &json!({"metrics": {"prometheusRule": {"enabled": true}}}),
    )?;
    let docs = render_release("kube-hardener", "kube-hardener", &values)?;
    let rule = find(&docs, "PrometheusRule", "kube-hardener")?;
    let path = dir.join("rules.yaml");
    std::fs::write(&path, serde_json::to_vec_pretty(&rule["spec"])?)?;
    Ok(path)
}

#[test]
fn the_alerts_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let work = tempfile::tempdir()?;
    let rules = rules_file(work.path())?;
    let output = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(stdout.contains("SUCCESS: 7 rules found"), "{stdout}");

    // rule_files in the unit tests are relative to the test file.
    let tests = work.path().join("alerts-test.yaml");
    std::fs::copy(
        workspace_root().join("e2e/tests/fixtures/alerts-test.yaml"),
        &tests,
    )?;
    let output = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .context("running promtool test rules")?;
    ensure!(
        output.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Every alert has a unit test that expects it to fire.
    let fixture = std::fs::read_to_string(&tests)?;
    let rules_text = std::fs::read_to_string(&rules)?;
    let spec: Value = serde_json::from_str(&rules_text)?;
    for rule in spec["groups"][0]["rules"].as_array().into_iter().flatten() {
        let alert = rule["alert"].as_str().context("a rule without alert")?;
        ensure!(
            fixture.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "no unit test expects {alert} to fire"
        );
    }
    Ok(())
}
