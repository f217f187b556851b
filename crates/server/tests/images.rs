//! Image-aware hardening through the webhook: the server looks each image up
//! in a real registry on loopback and decides `runAsNonRoot` from it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use kube_hardener_config::{RootImages, UnknownImages};
use kube_hardener_testkit::pod_create_review;
use kube_hardener_testkit::registry::{PASSWD, Registry, SilentRegistry, TestImage};
use serde_json::{Value, json};
use support::{Setup, metric_value};

async fn registry_with_images() -> Registry {
    let registry = Registry::anonymous().unwrap();
    let passwd: &[(&str, &[u8])] = &[("etc/passwd", PASSWD)];
    for (tag, user) in [
        ("root", None),
        ("uid", Some("65532")),
        ("named", Some("app")),
        ("zero", Some("0:0")),
    ] {
        registry
            .push(&format!("kh/app:{tag}"), &TestImage::new(user, passwd))
            .await
            .unwrap();
    }
    registry
}

fn setup(registry: &Registry, root: RootImages, unknown: UnknownImages) -> Setup {
    let mut setup = Setup::new();
    let ca = setup.certs.cert_path().with_file_name("registry-ca.crt");
    std::fs::write(&ca, &registry.ca_pem).unwrap();
    setup.config.images.resolve = true;
    setup.config.images.ca_file = Some(ca);
    setup.config.images.root = root;
    setup.config.images.unknown = unknown;
    setup.config.images.budget_ms = 3000;
    setup
}

fn pod(images: &[String]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
           "spec": {"containers": containers}})
}

/// The pod after the webhook's patch, and its warnings.
fn patched(response: &Value, object: &Value) -> (Value, Vec<String>) {
    let answer = &response["response"];
    let mut out = object.clone();
    if let Some(patch) = answer["patch"].as_str() {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut out, &patch).unwrap();
    }
    let warnings = answer["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (out, warnings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_image_gets_the_decision_its_user_calls_for() {
    let registry = registry_with_images().await;
    let server = setup(&registry, RootImages::Skip, UnknownImages::Inject)
        .start()
        .await;
    let images: Vec<String> = ["uid", "named", "root", "zero", "absent"]
        .iter()
        .map(|tag| registry.image(&format!("kh/app:{tag}")))
        .collect();
    let object = pod(&images);
    let response = server
        .post_review(&pod_create_review("u1", "team-a", object.clone()))
        .await
        .json();
    let (out, warnings) = patched(&response, &object);
    let spec = &out["spec"];
    // Root images keep the pod from a pod-level value: per container instead.
    assert_eq!(spec["securityContext"].get("runAsNonRoot"), None, "{out:#}");
    let context = |i: usize| spec["containers"][i]["securityContext"].clone();
    assert_eq!(context(0)["runAsNonRoot"], json!(true));
    assert_eq!(context(0).get("runAsUser"), None);
    assert_eq!(context(1)["runAsNonRoot"], json!(true));
    assert_eq!(context(1)["runAsUser"], json!(10001));
    for root in [2, 3] {
        assert_eq!(context(root).get("runAsNonRoot"), None, "{out:#}");
        assert_eq!(
            context(root)["capabilities"]["drop"],
            json!(["ALL"]),
            "still hardened otherwise"
        );
    }
    // images.unknown = inject: the missing image is treated as before.
    assert_eq!(context(4)["runAsNonRoot"], json!(true));
    let joined = warnings.join("\n");
    assert!(
        joined.contains("kh/app:root runs as root (USER unset); images.root = skip"),
        "{joined}"
    );
    assert!(
        joined.contains("kh/app:zero runs as root (USER 0:0)"),
        "{joined}"
    );
    assert!(joined.contains("runs as user app, UID 10001"), "{joined}");
    assert!(
        joined.contains("kh/app:absent runs as is unknown"),
        "{joined}"
    );
    let applied = out["metadata"]["annotations"]["kube-hardener.io/applied"]
        .as_str()
        .unwrap();
    assert!(applied.contains("runAsUser"), "{applied}");

    // Again: every image from the cache, nothing new looked up.
    let metrics = server.metrics().await;
    let lookups = metric_value(
        &metrics,
        "kube_hardener_image_lookup_seconds_count{outcome=\"named\"}",
    );
    assert_eq!(lookups, 1.0, "{metrics}");
    let started = Instant::now();
    let second = server
        .post_review(&pod_create_review("u2", "team-a", object.clone()))
        .await
        .json();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(patched(&second, &object).0, out);
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "kube_hardener_image_answers_total{source=\"cache\",outcome=\"named\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "kube_hardener_image_lookup_seconds_count{outcome=\"named\"}"
        ),
        1.0
    );
}

/// Reviews from 64 KiB on take the other path (the image query and the
/// engine on blocking threads): the same decisions must come out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_review_gets_the_same_image_decisions() {
    let registry = registry_with_images().await;
    let server = setup(&registry, RootImages::Skip, UnknownImages::Inject)
        .start()
        .await;
    let images: Vec<String> = ["uid", "root"]
        .iter()
        .map(|tag| registry.image(&format!("kh/app:{tag}")))
        .collect();
    let mut object = pod(&images);
    object["metadata"]["annotations"] = json!({"example.com/padding": "x".repeat(100 * 1024)});
    let review = pod_create_review("big", "team-a", object.clone());
    assert!(serde_json::to_vec(&review).unwrap().len() > 64 * 1024);
    let response = server.post_review(&review).await.json();
    let (out, warnings) = patched(&response, &object);
    let context = |i: usize| out["spec"]["containers"][i]["securityContext"].clone();
    assert_eq!(context(0)["runAsNonRoot"], json!(true), "{out:#}");
    assert_eq!(context(1).get("runAsNonRoot"), None, "{out:#}");
    assert!(
        warnings.join("\n").contains("kh/app:root runs as root"),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_and_skip_unknown_change_only_their_cases() {
    let registry = registry_with_images().await;
    let mut setup = setup(&registry, RootImages::RunAsUser, UnknownImages::Skip);
    setup.config.images.run_as_user = 4242;
    let server = setup.start().await;
    let images: Vec<String> = ["root", "absent"]
        .iter()
        .map(|t| registry.image(&format!("kh/app:{t}")))
        .collect();
    let object = pod(&images);
    let response = server
        .post_review(&pod_create_review("u1", "team-a", object.clone()))
        .await
        .json();
    let (out, warnings) = patched(&response, &object);
    let context = |i: usize| out["spec"]["containers"][i]["securityContext"].clone();
    assert_eq!(context(0)["runAsUser"], json!(4242), "{out:#}");
    assert_eq!(context(0)["runAsNonRoot"], json!(true));
    assert_eq!(context(1).get("runAsNonRoot"), None);
    assert!(
        warnings.iter().any(|w| w.contains("images.unknown = skip")),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_costs_at_most_the_budget() {
    // A registry address nothing listens on, and one that never answers.
    let silent = SilentRegistry::start().await.unwrap();
    let silent_host = silent.host.clone();
    let mut setup = Setup::new();
    setup.config.images.resolve = true;
    setup.config.images.budget_ms = 300;
    setup.config.images.lookup_timeout_ms = 2000;
    let server = setup.start().await;
    for (round, image) in [
        format!("{silent_host}/kh/app:1"),
        "127.0.0.1:9/kh/app:1".to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let object = pod(std::slice::from_ref(&image));
        let started = Instant::now();
        let response = server
            .post_review(&pod_create_review(
                &format!("u{round}"),
                "team-a",
                object.clone(),
            ))
            .await
            .json();
        let elapsed = started.elapsed();
        // The budget, plus what a review costs anyway.
        assert!(
            elapsed < Duration::from_millis(300 + 100),
            "{image}: {elapsed:?}"
        );
        let (out, warnings) = patched(&response, &object);
        assert_eq!(
            out["spec"]["securityContext"]["runAsNonRoot"],
            json!(true),
            "{image}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("is unknown")),
            "{image}: {warnings:?}"
        );
    }
}
