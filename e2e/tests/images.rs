//! Image-aware hardening through the real API server: the webhook looks each
//! image up in a real registry on loopback, and the stored pod shows the
//! decision for every kind of image user.

use anyhow::{Context, Result};
use kube::api::PostParams;
use kube_hardener_e2e::{
    LocalWebhook, RegisterOptions, Registration, ServerOptions, TestNamespace, client,
    kubectl_create, pod, to_json, wait_until_hardening,
};
use kube_hardener_testkit::registry::{PASSWD, Registry, TestImage};
use serde_json::{Value, json};

/// A local webhook with image lookups on, trusting `registry`'s CA, with
/// `extra` lines added to its `[images]` table. Keep the directory while it runs.
async fn webhook_for(
    registry: &Registry,
    extra: &str,
) -> Result<(LocalWebhook, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("registry-ca.crt");
    std::fs::write(&ca, &registry.ca_pem)?;
    let server = LocalWebhook::start(ServerOptions {
        config_toml: format!(
            "[images]\nresolve = true\nca_file = \"{}\"\nbudget_ms = 3000\n{extra}",
            ca.display()
        ),
        ..ServerOptions::default()
    })
    .await?;
    Ok((server, dir))
}

/// The pod-level `runAsNonRoot` and the first container's `runAsUser` of a
/// stored pod: where a named-user image's decision shows.
fn non_root_and_first_user(stored: &Value) -> (Value, Value) {
    (
        stored["spec"]["securityContext"]["runAsNonRoot"].clone(),
        stored["spec"]["containers"][0]["securityContext"]["runAsUser"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_pod_shows_each_images_decision() -> Result<()> {
    let registry = Registry::anonymous().map_err(anyhow::Error::msg)?;
    let files: &[(&str, &[u8])] = &[("etc/passwd", PASSWD)];
    for (tag, user) in [
        ("root", None),
        ("zero", Some("0")),
        ("uid", Some("65532")),
        ("named", Some("app")),
    ] {
        registry
            .push(&format!("kh/app:{tag}"), &TestImage::new(user, files))
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let (server, _dir) = webhook_for(&registry, "").await?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "images", Default::default()).await?;
    let _registration =
        Registration::create(&client, &server.target(), &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;

    let containers: Vec<Value> = ["uid", "named", "root", "zero"]
        .iter()
        .map(|tag| json!({"name": tag, "image": registry.image(&format!("kh/app:{tag}"))}))
        .collect();
    let manifest = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mixed"},
                          "spec": {"containers": containers}});
    let (stored, warnings) = kubectl_create(&ns.name, &manifest, false)?;
    let context = |i: usize| stored["spec"]["containers"][i]["securityContext"].clone();
    // The root images keep runAsNonRoot off the pod level.
    assert_eq!(
        stored["spec"]["securityContext"].get("runAsNonRoot"),
        None,
        "{stored:#}"
    );
    assert_eq!(context(0)["runAsNonRoot"], json!(true), "{stored:#}");
    assert_eq!(context(0).get("runAsUser"), None);
    assert_eq!(
        (
            context(1)["runAsNonRoot"].clone(),
            context(1)["runAsUser"].clone()
        ),
        (json!(true), json!(10001))
    );
    for root in [2, 3] {
        assert_eq!(context(root).get("runAsNonRoot"), None, "{stored:#}");
        assert_eq!(context(root)["allowPrivilegeEscalation"], json!(false));
    }
    let applied = stored["metadata"]["annotations"]["kube-hardener.io/applied"]
        .as_str()
        .context("no applied annotation")?;
    assert!(applied.contains("runAsUser"), "{applied}");
    let joined = warnings.join("\n");
    assert!(
        joined.contains("kh/app:root runs as root (USER unset); images.root = skip"),
        "{joined}"
    );
    assert!(
        joined.contains("kh/app:zero runs as root (USER 0)"),
        "{joined}"
    );
    assert!(joined.contains("runs as user app, UID 10001"), "{joined}");

    // A pod of only numeric-user images keeps the pod-level value.
    let numeric = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "numeric"},
        "spec": {"containers": [{"name": "a", "image": registry.image("kh/app:uid")}]}});
    let stored = to_json(
        &ns.pods()
            .create(&PostParams::default(), &pod(numeric)?)
            .await?,
    )?;
    assert_eq!(
        stored["spec"]["securityContext"]["runAsNonRoot"],
        json!(true)
    );
    Ok(())
}

/// `images.warm_up_pods`: a webhook that starts while pods of an image exist
/// looks that image up before any review asks, so the next pod of it is
/// answered from the cache (here with the UID from its /etc/passwd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_pods_warm_the_image_cache_at_start() -> Result<()> {
    let registry = Registry::anonymous().map_err(anyhow::Error::msg)?;
    registry
        .push(
            "kh/warm:named",
            &TestImage::new(Some("app"), &[("etc/passwd", PASSWD)]),
        )
        .await
        .map_err(anyhow::Error::msg)?;
    let image = registry.image("kh/warm:named");
    let client = client().await?;
    let ns = TestNamespace::create(&client, "warm-up", Default::default()).await?;
    // Created before the webhook exists (and never scheduled: no node).
    let existing = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "existing"},
        "spec": {"securityContext": {"runAsNonRoot": true},
                 "containers": [{"name": "app", "image": image}]}});
    ns.pods()
        .create(&PostParams::default(), &pod(existing)?)
        .await?;

    let (server, _dir) = webhook_for(&registry, "warm_up_pods = 100000\n").await?;
    let looked_up = "kube_hardener_image_lookup_seconds_count{outcome=\"named\"}";
    kube_hardener_e2e::eventually(
        "the warm-up to look the existing pod's image up",
        std::time::Duration::from_secs(30),
        || async {
            let text = server.metrics().await.map_err(|e| e.to_string())?;
            match LocalWebhook::metric(&text, looked_up) {
                n if n >= 1.0 => Ok(()),
                _ => Err(format!(
                    "no named lookup yet; server log:\n{}",
                    server.log()
                )),
            }
        },
    )
    .await?;
    let _registration =
        Registration::create(&client, &server.target(), &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;

    let from_cache = "kube_hardener_image_answers_total{source=\"cache\",outcome=\"named\"}";
    let before = server.metrics().await?;
    let next = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "next"},
        "spec": {"containers": [{"name": "app", "image": image}]}});
    let stored = to_json(
        &ns.pods()
            .create(&PostParams::default(), &pod(next)?)
            .await?,
    )?;
    let after = server.metrics().await?;
    assert_eq!(
        non_root_and_first_user(&stored),
        (json!(true), json!(10001)),
        "{stored:#}"
    );
    assert_eq!(
        (
            LocalWebhook::metric(&before, from_cache),
            LocalWebhook::metric(&after, from_cache)
        ),
        (0.0, 1.0),
        "the next pod's image was answered from the cache"
    );
    assert_eq!(
        LocalWebhook::metric(&after, looked_up),
        LocalWebhook::metric(&before, looked_up),
        "and not looked up again"
    );
    Ok(())
}

/// `images.pod_pull_secrets`: an image in a registry that wants a login is
/// looked up with the login of the pod's own pull secret, and only for the
/// pods that name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_pull_secret_opens_its_private_registry() -> Result<()> {
    let registry = Registry::with_basic_auth("robot", "s3cret").map_err(anyhow::Error::msg)?;
    registry
        .push(
            "kh/private:named",
            &TestImage::new(Some("app"), &[("etc/passwd", PASSWD)]),
        )
        .await
        .map_err(anyhow::Error::msg)?;
    let image = registry.image("kh/private:named");
    let (server, _dir) = webhook_for(&registry, "pod_pull_secrets = true\n").await?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "pull-secrets", Default::default()).await?;
    let config =
        json!({"auths": {registry.host.clone(): {"username": "robot", "password": "s3cret"}}});
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "registry-login"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config.to_string()},
    }))?;
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await?;
    let _registration =
        Registration::create(&client, &server.target(), &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;

    let with_secret = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "with-secret"},
        "spec": {"imagePullSecrets": [{"name": "missing"}, {"name": "registry-login"}],
                 "containers": [{"name": "app", "image": image}]}});
    let (stored, warnings) = kubectl_create(&ns.name, &with_secret, false)?;
    assert_eq!(
        non_root_and_first_user(&stored),
        (json!(true), json!(10001)),
        "{stored:#}"
    );
    assert!(
        warnings.join("\n").contains("runs as user app, UID 10001"),
        "{warnings:?}"
    );

    let without = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "without"},
        "spec": {"containers": [{"name": "app", "image": image}]}});
    let (stored, warnings) = kubectl_create(&ns.name, &without, false)?;
    assert_eq!(
        stored["spec"]["containers"][0]["securityContext"].get("runAsUser"),
        None,
        "{stored:#}"
    );
    let joined = warnings.join("\n");
    assert!(joined.contains("access refused (401/403)"), "{joined}");
    assert!(!joined.contains("s3cret") && !server.log().contains("s3cret"));
    Ok(())
}
