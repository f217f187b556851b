//! Behaviour that needs a webhook process of the test's own: a configuration
//! switch, the process going down, certificates rotating under load. These
//! tests always start `kube-hardener serve` on loopback, so they need an API
//! server on the same machine (the local control plane of e2e/controlplane).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube_hardener_e2e::{
    LocalWebhook, RegisterOptions, Registration, ServerOptions, TestNamespace, applied_annotation,
    client, create_plain_pods, plain_pod, pod, to_json, wait_until_hardening,
};
use serde_json::{Value, json};

fn deployment(name: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
    }))?)
}

fn cron_job(name: &str) -> Result<CronJob> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
        "spec": {
            "schedule": "*/5 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "job", "image": "busybox:1.36"}],
            }}}},
        },
    }))?)
}

fn is_hardened_template(spec: &Value) -> bool {
    spec["securityContext"]["runAsNonRoot"] == json!(true)
        && spec["securityContext"]["seccompProfile"]["type"] == json!("RuntimeDefault")
        && spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] == json!(false)
        && spec["containers"][0]["securityContext"]["capabilities"]["drop"] == json!(["ALL"])
}

/// Registers `server` for workloads too, and waits until pods are hardened.
async fn workload_namespace(
    server: &LocalWebhook,
    prefix: &str,
) -> Result<(TestNamespace, Registration)> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, prefix, Default::default()).await?;
    let options = RegisterOptions {
        workloads: true,
        ..RegisterOptions::default()
    };
    let registration = Registration::create(&client, &server.target(), &ns, options).await?;
    wait_until_hardening(&ns).await?;
    Ok((ns, registration))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_templates_are_left_alone_by_default() -> Result<()> {
    let server = LocalWebhook::start(ServerOptions::default()).await?;
    let (ns, _registration) = workload_namespace(&server, "workloads-off").await?;
    let client = client().await?;
    let stored = Api::<Deployment>::namespaced(client, &ns.name)
        .create(&PostParams::default(), &deployment("web")?)
        .await?;
    let stored = to_json(&stored)?;
    let template = &stored["spec"]["template"]["spec"];
    assert!(!is_hardened_template(template), "{template:#}");
    assert_eq!(template["containers"][0].get("securityContext"), None);
    assert_eq!(
        stored["metadata"]["annotations"].get("kube-hardener.io/applied"),
        None
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_switch_hardens_deployment_and_cron_job_templates() -> Result<()> {
    let server = LocalWebhook::start(ServerOptions {
        env: vec![(
            "KUBE_HARDENER_HARDENING__MUTATE_WORKLOADS".into(),
            "true".into(),
        )],
        ..ServerOptions::default()
    })
    .await?;
    let (ns, _registration) = workload_namespace(&server, "workloads-on").await?;
    let client = client().await?;

    let stored = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment("web")?)
        .await?;
    let stored = to_json(&stored)?;
    let template = &stored["spec"]["template"]["spec"];
    assert!(is_hardened_template(template), "{template:#}");
    assert_eq!(
        template["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        json!(true)
    );

    let stored = Api::<CronJob>::namespaced(client, &ns.name)
        .create(&PostParams::default(), &cron_job("nightly")?)
        .await?;
    let stored = to_json(&stored)?;
    let template = &stored["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert!(is_hardened_template(template), "{template:#}");
    Ok(())
}

/// Registers a live server with `failure_policy`, proves it is in effect, then kills it.
async fn dead_webhook(policy: &'static str, prefix: &str) -> Result<(TestNamespace, Registration)> {
    let client = client().await?;
    let mut server = LocalWebhook::start(ServerOptions::default()).await?;
    let ns = TestNamespace::create(&client, prefix, Default::default()).await?;
    let options = RegisterOptions {
        failure_policy: policy,
        timeout_seconds: 2,
        ..Default::default()
    };
    let registration = Registration::create(&client, &server.target(), &ns, options).await?;
    wait_until_hardening(&ns).await?;
    server.stop();
    Ok((ns, registration))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_with_ignore_admits_pods_unhardened() -> Result<()> {
    let (ns, _registration) = dead_webhook("Ignore", "down-ignore").await?;
    let stored = ns
        .pods()
        .create(&PostParams::default(), &pod(plain_pod("unhardened"))?)
        .await?;
    assert_eq!(applied_annotation(&stored), None);
    let stored = to_json(&stored)?;
    assert_eq!(stored["spec"]["containers"][0].get("securityContext"), None);
    assert_eq!(stored["spec"]["securityContext"], json!({}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_with_fail_rejects_pods() -> Result<()> {
    let (ns, _registration) = dead_webhook("Fail", "down-fail").await?;
    let error = ns
        .pods()
        .create(&PostParams::default(), &pod(plain_pod("rejected"))?)
        .await
        .expect_err("failurePolicy Fail must reject while the webhook is down");
    let message = error.to_string();
    assert!(message.contains("failed calling webhook"), "{message}");
    assert!(ns.pods().get_opt("rejected").await?.is_none());
    Ok(())
}

/// DER bytes of the first certificate in a PEM document.
fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    BASE64.decode(body).context("decoding PEM")
}

/// The certificate the server presents on a new TLS connection.
async fn presented_certificate(server: &LocalWebhook, ca_pem: &str) -> Result<Vec<u8>> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()?;
    let response = http
        .post(format!("https://127.0.0.1:{}/mutate", server.port))
        .body("{}")
        .send()
        .await?;
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .context("no TLS information on the response")?;
    info.peer_certificate()
        .map(<[u8]>::to_vec)
        .context("the server presented no certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_loses_no_admission() -> Result<()> {
    let client = client().await?;
    let mut server = LocalWebhook::start(ServerOptions::default()).await?;
    let ca_pem = server.ca_pem().to_owned();
    let ns = Arc::new(TestNamespace::create(&client, "rotation", Default::default()).await?);
    let _registration =
        Registration::create(&client, &server.target(), &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;
    let first = presented_certificate(&server, &ca_pem).await?;

    // Two writers create pods back to back while the certificate is swapped
    // three times; failurePolicy is Fail, so a lost review is a failed create.
    const PODS_PER_WRITER: usize = 40;
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            tokio::spawn(create_plain_pods(
                Arc::clone(&ns),
                format!("w{writer}"),
                PODS_PER_WRITER,
                Duration::ZERO,
                None,
                false,
            ))
        })
        .collect();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        server.rotate()?;
    }

    let mut created = 0;
    for writer in writers {
        for (name, result) in writer.await? {
            match result {
                Ok(hardened) => assert!(hardened, "pod {name} was admitted unhardened"),
                Err(error) => panic!("creating pod {name} during rotation failed: {error:#}"),
            }
            created += 1;
        }
    }
    assert_eq!(created, 2 * PODS_PER_WRITER);

    // The last certificate is the one served now, without a restart.
    let expected = pem_to_der(&server.current_cert_pem()?)?;
    assert_ne!(expected, first);
    let what = "the server to present the last certificate, without a restart";
    kube_hardener_e2e::eventually(what, Duration::from_secs(15), || async {
        match presented_certificate(&server, &ca_pem).await {
            Ok(presented) if presented == expected => Ok(()),
            Ok(_) => Err("an older certificate".to_owned()),
            Err(error) => Err(format!("{error:#}")),
        }
    })
    .await
}

/// The value of `key: <base64>` in a manifest written by `kube-hardener certs`.
fn generated_field(yaml: &str, key: &str) -> Result<String> {
    let encoded = yaml
        .lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{key}: ")))
        .with_context(|| format!("{key} missing from the generated manifest"))?;
    Ok(String::from_utf8(BASE64.decode(encoded)?)?)
}

/// One run of `kube-hardener certs` into `out`: the serving certificate and
/// key of its Secret, and its caBundle.
fn run_certs(out: &Path, extra: &[&str]) -> Result<kube_hardener_e2e::Certificate> {
    let output = kube_hardener_e2e::kube_hardener_command()?
        .args(["certs", "--san", "127.0.0.1", "--out-dir"])
        .arg(out)
        .args(extra)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "kube-hardener certs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = std::fs::read_to_string(out.join("tls-secret.yaml"))?;
    let patch = std::fs::read_to_string(out.join("webhook-ca-bundle.yaml"))?;
    Ok(kube_hardener_e2e::Certificate {
        cert_pem: generated_field(&secret, "tls.crt")?,
        key_pem: generated_field(&secret, "tls.key")?,
        ca_pem: generated_field(&patch, "caBundle")?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_kube_hardener_certs_is_trusted_by_the_api_server() -> Result<()> {
    // The self-signed install path end to end: the Secret and caBundle written by
    // `kube-hardener certs`, served by the webhook and verified by the API server.
    let out = tempfile::tempdir()?;
    let certificate = run_certs(out.path(), &[])?;
    let server = LocalWebhook::start(ServerOptions {
        certificate: Some(certificate),
        ..ServerOptions::default()
    })
    .await?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "certs", Default::default()).await?;
    let _registration =
        Registration::create(&client, &server.target(), &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;
    let stored = ns
        .pods()
        .create(&PostParams::default(), &pod(plain_pod("web"))?)
        .await?;
    assert!(applied_annotation(&stored).is_some());
    Ok(())
}

/// Renewal as an operator does it with the self-signed overlay: `kube-hardener
/// certs` again, then `kubectl apply -k`. The API server sees the new caBundle
/// at once; the replicas see the new Secret only at the kubelet's next sync.
/// Creates flow all the while, with failurePolicy Fail: a review the API server
/// cannot verify is a failed create. Both renewals are covered: reusing the CA
/// (the caBundle does not change) and a new CA (published with the old one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_kube_hardener_certs_loses_no_admission() -> Result<()> {
    let out = tempfile::tempdir()?;
    let first = run_certs(out.path(), &[])?;
    let mut server = LocalWebhook::start(ServerOptions {
        certificate: Some(first.clone()),
        ..ServerOptions::default()
    })
    .await?;
    let client = client().await?;
    let ns = Arc::new(TestNamespace::create(&client, "renewal", Default::default()).await?);
    let registration =
        Registration::create(&client, &server.target(), &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;

    // Bounded in count as well as by the renewal's end.
    const MAX_PODS: usize = 400;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(create_plain_pods(
        Arc::clone(&ns),
        "renew".to_owned(),
        MAX_PODS,
        Duration::from_millis(50),
        Some(Arc::clone(&done)),
        false,
    ));
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let apply_bundle = |bundle: String| {
        let webhooks = webhooks.clone();
        let name = registration.name.clone();
        async move {
            let patch = json!({"webhooks": [{"name": "pods.kube-hardener.io",
                "clientConfig": {"caBundle": BASE64.encode(bundle)}}]});
            webhooks
                .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .context("patching the caBundle")
        }
    };

    let reused = run_certs(out.path(), &[])?;
    assert_eq!(reused.ca_pem, first.ca_pem, "a second run reuses the CA");
    assert_ne!(reused.cert_pem, first.cert_pem);
    apply_bundle(reused.ca_pem.clone()).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.serve_certificate(&reused.cert_pem, &reused.key_pem, &reused.ca_pem)?;

    let rolled = run_certs(out.path(), &["--new-ca"])?;
    assert_eq!(
        rolled.ca_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "a new CA is published together with the previous one"
    );
    assert!(rolled.ca_pem.ends_with(&first.ca_pem));
    apply_bundle(rolled.ca_pem.clone()).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.serve_certificate(&rolled.cert_pem, &rolled.key_pem, &rolled.ca_pem)?;
    // Creates go on after the last swap, while the server reloads.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut created = 0;
    for (name, result) in writer.await? {
        match result {
            Ok(hardened) => assert!(hardened, "pod {name} was admitted unhardened"),
            Err(error) => panic!("creating pod {name} during renewal failed: {error:#}"),
        }
        created += 1;
    }
    // About 4.5 s of creates, 50 ms apart: dozens, through both renewals.
    assert!(created >= 20, "only {created} creates during the renewal");
    drop(registration);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_audit_mode_patches_nothing_unless_a_namespace_enforces() -> Result<()> {
    let server = LocalWebhook::start(ServerOptions {
        env: vec![("KUBE_HARDENER_SERVER__AUDIT".into(), "true".into())],
        ..ServerOptions::default()
    })
    .await?;
    let client = client().await?;
    let group = kube_hardener_e2e::unique_name("audit");
    let grouped = |annotations: std::collections::BTreeMap<String, String>| {
        kube_hardener_e2e::NamespaceOptions {
            labels: [("e2e.kube-hardener.io/group".to_owned(), group.clone())].into(),
            annotations,
        }
    };
    let enforced = TestNamespace::create(
        &client,
        "enforce",
        grouped([("kube-hardener.io/mode".to_owned(), "enforce".to_owned())].into()),
    )
    .await?;
    let audited = TestNamespace::create(&client, "audited", grouped(Default::default())).await?;
    let _registration = Registration::create_for_label(
        &client,
        &server.target(),
        ("e2e.kube-hardener.io/group", &group),
        RegisterOptions::default(),
    )
    .await?;
    // Hardening in the enforcing namespace proves the registration is in effect for both.
    wait_until_hardening(&enforced).await?;

    let (stored, warnings) =
        kube_hardener_e2e::kubectl_create(&audited.name, &plain_pod("audited"), false)?;
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("kube-hardener audit mode: would set ")),
        "{warnings:?}"
    );
    assert_eq!(stored["spec"]["securityContext"], json!({}));
    assert_eq!(stored["spec"]["containers"][0].get("securityContext"), None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_and_configured_namespaces_are_never_touched() -> Result<()> {
    let client = client().await?;
    let group = kube_hardener_e2e::unique_name("excluded");
    let grouped = || kube_hardener_e2e::NamespaceOptions {
        labels: [("e2e.kube-hardener.io/group".to_owned(), group.clone())].into(),
        annotations: Default::default(),
    };
    let control = TestNamespace::create(&client, "control", grouped()).await?;
    let own = TestNamespace::create(&client, "own", grouped()).await?;
    let configured = TestNamespace::create(&client, "configured", grouped()).await?;
    // The webhook's own namespace comes from the downward API in a cluster;
    // the exclusion list from the configuration file.
    let server = LocalWebhook::start(ServerOptions {
        env: vec![(
            "KUBE_HARDENER_SERVER__OWN_NAMESPACE".into(),
            own.name.clone(),
        )],
        config_toml: format!(
            "[hardening]\nexcluded_namespaces = [\"kube-system\", \"{}\"]\n",
            configured.name
        ),
        ..ServerOptions::default()
    })
    .await?;
    let _registration = Registration::create_for_label(
        &client,
        &server.target(),
        ("e2e.kube-hardener.io/group", &group),
        RegisterOptions::default(),
    )
    .await?;
    wait_until_hardening(&control).await?;

    for ns in [&own, &configured] {
        let stored = ns
            .pods()
            .create(&PostParams::default(), &pod(plain_pod("left-alone"))?)
            .await?;
        assert_eq!(applied_annotation(&stored), None, "namespace {}", ns.name);
        let stored = to_json(&stored)?;
        assert_eq!(
            stored["spec"]["securityContext"],
            json!({}),
            "namespace {}",
            ns.name
        );
        assert_eq!(stored["spec"]["containers"][0].get("securityContext"), None);
    }
    Ok(())
}
