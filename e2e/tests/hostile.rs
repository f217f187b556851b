//! What a hostile or careless caller can send, proven against the real API
//! server: legacy seccomp annotations (once a cause of rejected pods), mutual
//! TLS between the API server and the webhook, and fake reviews for
//! namespaces that do not exist.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube_hardener_e2e::{
    LocalWebhook, RegisterOptions, Registration, ServerOptions, TestNamespace, any_webhook,
    applied_annotation, client, eventually, plain_pod, pod, to_json, unique_name,
    wait_until_hardening,
};
use serde_json::{Value, json};

/// The environment variable `e2e/controlplane/up.sh` sets to the CA of the
/// client certificate its API server presents to webhooks.
const CLIENT_CA_ENV: &str = "KUBE_HARDENER_E2E_WEBHOOK_CLIENT_CA";
/// The common name of that certificate.
const API_SERVER_CLIENT_NAME: &str = "kube-apiserver-webhook-client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_seccomp_annotations_are_kept_and_the_pod_is_admitted() -> Result<()> {
    let client = client().await?;
    let (target, _server) = any_webhook(&client).await?;
    let ns = TestNamespace::create(&client, "legacy-seccomp", Default::default()).await?;
    let _registration =
        Registration::create(&client, &target, &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;
    let cases = [
        "unconfined",
        "runtime/default",
        "localhost/profiles/audit.json",
    ];
    for (index, value) in cases.into_iter().enumerate() {
        let name = format!("legacy-{index}");
        let mut manifest = plain_pod(&name);
        manifest["metadata"]["annotations"] =
            json!({"seccomp.security.alpha.kubernetes.io/pod": value});
        // Before the fix the API server refused this pod: "seccomp type in
        // annotation and field must match".
        let stored = ns
            .pods()
            .create(&PostParams::default(), &pod(manifest)?)
            .await
            .with_context(|| format!("creating a pod annotated {value}"))?;
        let applied = applied_annotation(&stored).unwrap_or_default().to_owned();
        let stored = to_json(&stored)?;
        // The annotation stays the pod's only seccomp choice: no field was
        // added next to it.
        assert_eq!(
            stored["spec"]["securityContext"]["seccompProfile"],
            Value::Null,
            "{value}: {stored:#}"
        );
        assert_eq!(
            stored["metadata"]["annotations"]["seccomp.security.alpha.kubernetes.io/pod"],
            json!(value)
        );
        assert!(!applied.contains("seccompProfile"), "{value}: {applied}");
        assert!(applied.contains("capabilities"), "{value}: {applied}");
    }
    Ok(())
}

/// A TLS client for the webhook's port: trusting its CA, with or without a
/// client certificate.
fn https_client(server: &LocalWebhook, identity: Option<(&str, &str)>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(server.ca_pem().as_bytes())?);
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}\n{key}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes())?);
    }
    Ok(builder.build()?)
}

fn review(uid: &str, namespace: &str) -> Value {
    kube_hardener_testkit::pod_create_review(uid, namespace, plain_pod("fake"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_the_api_server_and_refuses_other_callers() -> Result<()> {
    let client_ca = std::env::var(CLIENT_CA_ENV).with_context(|| {
        format!("{CLIENT_CA_ENV} is not set: run the suite through e2e/controlplane/up.sh")
    })?;
    let server = LocalWebhook::start(ServerOptions {
        env: vec![
            ("KUBE_HARDENER_SERVER__CLIENT_CA".into(), client_ca),
            (
                "KUBE_HARDENER_SERVER__CLIENT_NAMES".into(),
                format!("[{API_SERVER_CLIENT_NAME}]"),
            ),
        ],
        ..ServerOptions::default()
    })
    .await?;

    // The API server presents its client certificate and is admitted.
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mtls", Default::default()).await?;
    let _registration =
        Registration::create(&client, &server.target(), &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;
    let stored: Pod = ns
        .pods()
        .create(&PostParams::default(), &pod(plain_pod("through-mtls"))?)
        .await?;
    assert!(applied_annotation(&stored).is_some(), "hardened via mTLS");

    // Anyone else is refused during the handshake: no certificate at all,
    // or a certificate from another CA (the webhook's own serving CA here).
    let url = format!("https://localhost:{}/mutate", server.port);
    let body = review(&unique_name("no-cert"), &ns.name);
    let anonymous = https_client(&server, None)?
        .post(&url)
        .json(&body)
        .send()
        .await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let other_ca = kube_hardener_e2e::Pki::new()?;
    let (cert, key) = other_ca.client(API_SERVER_CLIENT_NAME)?;
    let impostor = https_client(&server, Some((&cert, &key)))?
        .post(&url)
        .json(&body)
        .send()
        .await;
    assert!(
        impostor.is_err(),
        "a certificate of an unknown CA with the right name: {impostor:?}"
    );
    let text = server.metrics().await?;
    assert!(
        LocalWebhook::metric(
            &text,
            "kube_hardener_rejected_requests_total{reason=\"tls\"}"
        ) >= 2.0,
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_reviews_for_missing_namespaces_do_not_turn_into_a_flood_of_gets() -> Result<()> {
    let server = LocalWebhook::start(ServerOptions::default()).await?;
    let http = https_client(&server, None)?;
    let url = format!("https://localhost:{}/mutate", server.port);
    let ghost = unique_name("ghost");
    for i in 0..50 {
        let response = http
            .post(&url)
            .json(&review(&format!("fake-{i}"), &ghost))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("fake review {i}: {}", response.status());
        }
        let answer: Value = response.json().await?;
        assert_eq!(answer["response"]["allowed"], json!(true));
    }
    let text = server.metrics().await?;
    assert_eq!(
        LocalWebhook::metric(
            &text,
            "kube_hardener_namespace_fallback_lookups_total{result=\"not_found\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        LocalWebhook::metric(
            &text,
            "kube_hardener_namespace_fallback_lookups_total{result=\"recently_not_found\"}"
        ),
        49.0,
        "{text}"
    );
    // A namespace that is created afterwards is seen (the watch adds it).
    let client = client().await?;
    let ns = TestNamespace::create(&client, "appears", Default::default()).await?;
    eventually(
        "the webhook answers for a new namespace",
        Duration::from_secs(20),
        || {
            let http = http.clone();
            let url = url.clone();
            let name = ns.name.clone();
            async move {
                let sent = http
                    .post(&url)
                    .json(&review(&unique_name("real"), &name))
                    .send()
                    .await
                    .map_err(|error| error.to_string())?;
                let answer: Value = sent.json().await.map_err(|error| error.to_string())?;
                if answer["response"]["patchType"] == json!("JSONPatch") {
                    Ok(())
                } else {
                    Err(answer.to_string())
                }
            }
        },
    )
    .await?;
    Ok(())
}
