//! The webhook over real TLS on loopback: reviews in, patches out, and the
//! operational behaviour around them (errors, audit mode, certificates,
//! readiness, metrics, shutdown).

// Helpers outside `#[test]` functions panic on purpose: that fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use kube::runtime::watcher::Event;
use kube_hardener_config::Config;
use kube_hardener_engine::{Context, Policy};
use serde_json::{Value, json};
use support::{Setup, eventually, namespace, start_default};
use tokio::io::AsyncWriteExt as _;

const FIXTURE: &str = include_str!("fixtures/pod-create-review.json");

fn captured_review() -> Value {
    serde_json::from_str(FIXTURE).unwrap()
}

fn with_uid(mut review: Value, uid: &str) -> Value {
    review["request"]["uid"] = json!(uid);
    review
}

fn in_namespace(mut review: Value, ns: &str) -> Value {
    review["request"]["namespace"] = json!(ns);
    review["request"]["object"]["metadata"]["namespace"] = json!(ns);
    review
}

/// What `preview` computes for the same object: the engine, called directly.
fn engine_patch(
    object: &Value,
    ns: &str,
    annotations: Option<&BTreeMap<String, String>>,
    policy: &Policy,
) -> Value {
    let ctx = Context {
        namespace: Some(ns),
        namespace_annotations: annotations,
        images: None,
    };
    let outcome = kube_hardener_engine::harden(object, &ctx, policy).unwrap();
    serde_json::to_value(&outcome.patch).unwrap()
}

fn response(body: &Value) -> &Value {
    &body["response"]
}

fn decoded_patch(body: &Value) -> Option<Value> {
    let response = response(body);
    let patch = response.get("patch")?.as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn apply(object: &Value, patch: &Value) -> Value {
    let mut object = object.clone();
    let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
    json_patch::patch(&mut object, &patch).unwrap();
    object
}

fn warnings(body: &Value) -> Vec<String> {
    response(body)["warnings"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|w| w.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn captured_pod_review_gets_the_engines_patch() {
    let server = start_default().await;
    let review = captured_review();
    let reply = server.post_review(&review).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let body = reply.json();
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(
        response(&body)["uid"],
        "3f6c2a1e-8d4b-4c1f-9e2a-7b5d0c9e1a42"
    );
    assert_eq!(response(&body)["allowed"], true);

    let object = &review["request"]["object"];
    let expected = engine_patch(object, "team-a", None, &Policy::default());
    let patch = decoded_patch(&body).expect("a pod with no security context is patched");
    assert_eq!(patch, expected);

    // The patched pod is hardened and keeps everything the API server sent.
    let hardened = apply(object, &patch);
    assert_eq!(hardened["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        hardened["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    for container in hardened["spec"]["containers"].as_array().unwrap() {
        let sc = &container["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{container}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{container}");
        assert!(
            sc["capabilities"]["drop"]
                .as_array()
                .unwrap()
                .contains(&json!("ALL"))
        );
    }
    assert_eq!(
        hardened["spec"]["containers"][0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN"])
    );
    assert_eq!(
        hardened["metadata"]["managedFields"],
        object["metadata"]["managedFields"]
    );
    assert_eq!(
        hardened["spec"]["tolerations"],
        object["spec"]["tolerations"]
    );

    let applied = response(&body)["auditAnnotations"]["applied"]
        .as_str()
        .unwrap();
    assert!(applied.contains("runAsNonRoot"), "{applied}");
    assert_eq!(
        hardened["metadata"]["annotations"]["kube-hardener.io/applied"].as_str(),
        Some(applied)
    );
    assert_eq!(response(&body)["auditAnnotations"]["mode"], "enforce");
    // NET_ADMIN is added explicitly: left alone, and the user is told.
    assert!(
        warnings(&body).iter().any(|w| w.contains("NET_ADMIN")),
        "{:?}",
        warnings(&body)
    );

    // Idempotent: the hardened pod comes back unchanged.
    let mut again = review.clone();
    again["request"]["object"] = hardened;
    let body = server.post_review(&with_uid(again, "second")).await.json();
    assert_eq!(decoded_patch(&body), None);
    assert_eq!(response(&body)["uid"], "second");
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn dry_run_is_answered_exactly_like_a_real_request() {
    let server = start_default().await;
    let real = server.post_review(&captured_review()).await.json();
    let mut dry = captured_review();
    dry["request"]["dryRun"] = json!(true);
    let dry = server.post_review(&dry).await.json();
    assert_eq!(dry, real);
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn malformed_requests_get_a_clear_4xx() {
    let server = start_default().await;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", "/mutate", b"{not json".to_vec(), 400, "not a valid AdmissionReview JSON document"),
        ("POST", "/mutate", Vec::new(), 400, "not a valid AdmissionReview JSON document"),
        (
            "POST",
            "/mutate",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(),
            400,
            "`apiVersion` must be \"admission.k8s.io/v1\"",
        ),
        (
            "POST",
            "/mutate",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod","request":{"uid":"x"}}"#.to_vec(),
            400,
            "`kind` must be \"AdmissionReview\"",
        ),
        (
            "POST",
            "/mutate",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            400,
            "has no `request`",
        ),
        (
            "POST",
            "/mutate",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#.to_vec(),
            400,
            "`request.uid` is missing",
        ),
        ("GET", "/mutate", Vec::new(), 405, ""),
        ("PUT", "/mutate", b"{}".to_vec(), 405, ""),
        ("POST", "/validate", b"{}".to_vec(), 404, ""),
        ("GET", "/", Vec::new(), 404, ""),
    ];
    for (method, path, body, status, message) in cases {
        let reply = server.request(method, path, &body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        assert!(
            reply.text().contains(message),
            "{method} {path}: {:?} lacks {message:?}",
            reply.text()
        );
    }
    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_rejected_requests_total{reason="malformed"}"#,
        6.0,
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn oversized_bodies_get_413_whether_announced_or_streamed() {
    let mut setup = Setup::new();
    setup.config.server.max_body_bytes = 64 * 1024;
    let server = setup.start().await;

    let mut review = captured_review();
    review["request"]["object"]["metadata"]["annotations"]["padding"] =
        json!("x".repeat(80 * 1024));
    let reply = server.post_review(&review).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(
        reply.text().contains("exceeds the limit of 65536 bytes"),
        "{}",
        reply.text()
    );

    // Chunked: no Content-Length to refuse up front, cut off while streaming.
    let body = serde_json::to_vec(&review).unwrap();
    let mut stream = server.tls().await;
    stream
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for chunk in body.chunks(16 * 1024) {
        let _ = stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = stream.write_all(chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let reply = support::read_response(&mut stream).await;
    assert_eq!(reply.status, 413, "{}", reply.text());

    // A body just under the limit is still served.
    let reply = server.post_review(&captured_review()).await;
    assert_eq!(reply.status, 200);
    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_rejected_requests_total{reason="too_large"}"#,
        2.0,
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn slow_clients_time_out() {
    let mut setup = Setup::new();
    // actix computes the head deadline from a clock it refreshes every 500 ms,
    // so timeouts well under a second are not precise enough to test.
    setup.config.server.client_timeout_ms = 1_000;
    let server = setup.start().await;

    // Headers never finished.
    let mut stream = server.tls().await;
    stream
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let reply = support::read_response(&mut stream).await;
    assert_eq!(reply.status, 408);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Headers complete, body stalls half-way.
    let body = serde_json::to_vec(&captured_review()).unwrap();
    let mut stream = server.tls().await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    let started = std::time::Instant::now();
    let reply = support::read_response(&mut stream).await;
    assert_eq!(reply.status, 408, "{}", reply.text());
    assert!(
        reply.text().contains("not received within 1000 ms"),
        "{}",
        reply.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A TLS handshake that never starts is dropped too.
    let mut idle = tokio::net::TcpStream::connect(server.webhook)
        .await
        .unwrap();
    let mut buf = [0_u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "connection without handshake still open: {read:?}"
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn serves_tls_1_2_and_1_3() {
    let server = start_default().await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let tcp = tokio::net::TcpStream::connect(server.webhook)
            .await
            .unwrap();
        let stream = server
            .certs
            .connector_with(&[version])
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn certificate_rotation_by_plain_file_replace() {
    let server = start_default().await;
    assert_eq!(server.served_serial().await, "01");
    server.certs.write_plain(2);
    let rotated = eventually(Duration::from_secs(5), || async {
        server.served_serial().await == "02"
    })
    .await;
    assert!(rotated, "new certificate not served");
    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_tls_cert_reloads_total{result="ok"}"#,
        1.0,
    );
    // Reviews keep working over the new certificate.
    assert_eq!(server.post_review(&captured_review()).await.status, 200);
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn certificate_rotation_by_secret_volume_symlink_swap() {
    let certs = support::Certs::new();
    certs.write_secret_volume(10);
    let config = support::test_config(&certs);
    let setup = Setup {
        certs,
        config,
        ..Setup::new()
    };
    let server = setup.start().await;
    assert_eq!(server.served_serial().await, "0a");
    server.certs.write_secret_volume(11);
    let rotated = eventually(Duration::from_secs(5), || async {
        server.served_serial().await == "0b"
    })
    .await;
    assert!(rotated, "symlink swap not noticed");
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn invalid_new_pairs_are_ignored_and_the_old_one_keeps_serving() {
    let server = start_default().await;
    assert_eq!(server.served_serial().await, "01");
    let (_, other_key) = server.certs.issue(3);
    let (cert, _) = server.certs.issue(4);
    // Certificate and key that do not belong together. A poll may land
    // between the two writes, so count "at least one more failure".
    std::fs::write(server.certs.cert_path(), &cert).unwrap();
    std::fs::write(server.certs.key_path(), &other_key).unwrap();
    let failed_reloads = || async {
        support::metric_value(
            &server.metrics().await,
            r#"kube_hardener_tls_cert_reloads_total{result="failed"}"#,
        )
    };
    let counted = eventually(Duration::from_secs(5), || async {
        failed_reloads().await >= 1.0
    })
    .await;
    assert!(counted, "{}", server.metrics().await);
    assert_eq!(server.served_serial().await, "01");

    // Half-written certificate file.
    let before = failed_reloads().await;
    std::fs::write(server.certs.cert_path(), &cert[..cert.len() / 2]).unwrap();
    let counted = eventually(Duration::from_secs(5), || async {
        failed_reloads().await > before
    })
    .await;
    assert!(counted);
    assert_eq!(server.served_serial().await, "01");
    assert_eq!(server.post_review(&captured_review()).await.status, 200);
    // The series exists from start-up; no reload succeeded.
    support::assert_metric(
        &server.metrics().await,
        r#"kube_hardener_tls_cert_reloads_total{result="ok"}"#,
        0.0,
    );

    // Fixed: the next good pair is picked up.
    server.certs.write_plain(5);
    let rotated = eventually(Duration::from_secs(5), || async {
        server.served_serial().await == "05"
    })
    .await;
    assert!(rotated);
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn start_up_with_an_invalid_pair_fails_clearly() {
    let certs = support::Certs::new();
    let (cert, _) = certs.issue(1);
    let (_, key) = certs.issue(2);
    std::fs::write(certs.cert_path(), cert).unwrap();
    std::fs::write(certs.key_path(), key).unwrap();
    let config = support::test_config(&certs);
    let error = support::start_error(config).await;
    assert!(
        error.contains("tls.key cannot be used with the certificate in"),
        "{error}"
    );
    assert!(error.contains("tls.crt"), "{error}");
}

#[actix_web::test]
async fn expiry_metric_follows_the_served_certificate() {
    let server = start_default().await;
    let metrics = server.metrics().await;
    let line = metrics
        .lines()
        .find(|line| line.starts_with("kube_hardener_tls_cert_expiry_timestamp_seconds "))
        .unwrap();
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    // Exactly the notAfter of the certificate on disk (the test CA's leaves
    // are valid for a day, so this is also well in the future).
    let pem = std::fs::read(server.certs.cert_path()).unwrap();
    let (_, der) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let not_after = der.parse_x509().unwrap().validity().not_after.timestamp();
    assert_eq!(value, not_after as f64, "{line}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(value > now + 3_600.0, "{line}");
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn global_audit_mode_reports_without_patching() {
    let mut setup = Setup::new();
    setup.config.server.audit = true;
    let server = setup.start().await;
    let body = server.post_review(&captured_review()).await.json();
    assert_eq!(response(&body)["allowed"], true);
    assert_eq!(decoded_patch(&body), None);
    assert!(response(&body).get("patchType").is_none());
    let would = response(&body)["auditAnnotations"]["would-apply"]
        .as_str()
        .unwrap();
    assert!(would.contains("runAsNonRoot"), "{would}");
    assert_eq!(response(&body)["auditAnnotations"]["mode"], "audit");
    let warnings = warnings(&body);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("kube-hardener audit mode: would set ")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("NET_ADMIN")),
        "{warnings:?}"
    );
    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_reviews_total{outcome="audited",operation="CREATE"}"#,
        1.0,
    );
    assert!(
        metrics.contains(
            r#"kube_hardener_settings_applied_total{setting="runAsNonRoot",mode="audit"} 1"#
        ),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn namespace_mode_annotation_selects_audit_or_enforce() {
    let mut setup = Setup::new();
    setup.config.server.audit = true;
    setup.namespaces = vec![
        namespace("shadow", &[("kube-hardener.io/mode", "audit")]),
        namespace("strict", &[("kube-hardener.io/mode", "enforce")]),
        namespace("typo", &[("kube-hardener.io/mode", "enforcing")]),
    ];
    let server = setup.start().await;

    let body = server
        .post_review(&in_namespace(captured_review(), "strict"))
        .await
        .json();
    let expected = engine_patch(
        &in_namespace(captured_review(), "strict")["request"]["object"],
        "strict",
        None,
        &Policy::default(),
    );
    assert_eq!(decoded_patch(&body), Some(expected));
    assert_eq!(response(&body)["auditAnnotations"]["mode"], "enforce");

    let body = server
        .post_review(&in_namespace(captured_review(), "shadow"))
        .await
        .json();
    assert_eq!(decoded_patch(&body), None);
    assert_eq!(response(&body)["auditAnnotations"]["mode"], "audit");

    let body = server
        .post_review(&in_namespace(captured_review(), "typo"))
        .await
        .json();
    assert_eq!(
        decoded_patch(&body),
        None,
        "an unknown value keeps the global audit mode"
    );
    assert!(
        warnings(&body)
            .iter()
            .any(|w| w.contains("\"enforcing\" is neither")),
        "{:?}",
        warnings(&body)
    );
    server.stop().await.unwrap();

    // Without the global switch, a namespace can still shadow-run.
    let mut setup = Setup::new();
    setup.namespaces = vec![namespace("shadow", &[("kube-hardener.io/mode", "audit")])];
    let server = setup.start().await;
    let body = server
        .post_review(&in_namespace(captured_review(), "shadow"))
        .await
        .json();
    assert_eq!(decoded_patch(&body), None);
    assert!(response(&body)["auditAnnotations"]["would-apply"].is_string());
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn namespace_opt_out_comes_from_the_cache() {
    let mut setup = Setup::new();
    setup.namespaces = vec![
        namespace("legacy", &[("kube-hardener.io/skip", "all")]),
        namespace(
            "writable",
            &[("kube-hardener.io/skip", "readOnlyRootFilesystem")],
        ),
    ];
    let server = setup.start().await;

    let body = server
        .post_review(&in_namespace(captured_review(), "legacy"))
        .await
        .json();
    assert_eq!(decoded_patch(&body), None);
    assert_eq!(
        response(&body)["auditAnnotations"]["skipped"],
        "opted out of all settings"
    );

    let review = in_namespace(captured_review(), "writable");
    let annotations = BTreeMap::from([(
        "kube-hardener.io/skip".to_owned(),
        "readOnlyRootFilesystem".to_owned(),
    )]);
    let expected = engine_patch(
        &review["request"]["object"],
        "writable",
        Some(&annotations),
        &Policy::default(),
    );
    let body = server.post_review(&review).await.json();
    let patch = decoded_patch(&body).unwrap();
    assert_eq!(patch, expected);
    let hardened = apply(&review["request"]["object"], &patch);
    assert!(
        hardened["spec"]["containers"][0]["securityContext"]
            .get("readOnlyRootFilesystem")
            .is_none()
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn excluded_and_own_namespaces_are_never_touched() {
    let mut setup = Setup::new();
    setup.config.server.own_namespace = Some("kube-hardener".to_owned());
    let server = setup.start().await;
    for ns in [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "kube-hardener",
    ] {
        let body = server
            .post_review(&in_namespace(captured_review(), ns))
            .await
            .json();
        assert_eq!(response(&body)["allowed"], true, "{ns}");
        assert_eq!(decoded_patch(&body), None, "{ns}");
        assert_eq!(
            response(&body)["auditAnnotations"]["skipped"],
            "excluded namespace",
            "{ns}"
        );
    }
    let body = server.post_review(&captured_review()).await.json();
    assert!(decoded_patch(&body).is_some());
    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_reviews_total{outcome="excluded",operation="CREATE"}"#,
        4.0,
    );
    server.stop().await.unwrap();
}

fn ephemeral_review() -> Value {
    let mut review = captured_review();
    let mut old = review["request"]["object"].clone();
    old["metadata"]["name"] = json!("web-6d8f7c9b5d-x2x9q");
    old["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("generateName");
    old["status"] = json!({"phase": "Running"});
    let mut new = old.clone();
    new["spec"]["ephemeralContainers"] = json!([{
        "name": "debugger-7k2lp",
        "image": "busybox:1.37",
        "stdin": true,
        "tty": true,
        "targetContainerName": "web",
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent"
    }]);
    let request = &mut review["request"];
    request["uid"] = json!("eph-1");
    request["name"] = json!("web-6d8f7c9b5d-x2x9q");
    request["operation"] = json!("UPDATE");
    request["subResource"] = json!("ephemeralcontainers");
    request["requestSubResource"] = json!("ephemeralcontainers");
    request["options"] = json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"});
    request["object"] = new;
    request["oldObject"] = old;
    review
}

#[actix_web::test]
async fn ephemeral_container_update_hardens_only_the_new_container() {
    let server = start_default().await;
    let review = ephemeral_review();
    let body = server.post_review(&review).await.json();
    assert_eq!(response(&body)["uid"], "eph-1");
    let ctx = Context {
        namespace: Some("team-a"),
        namespace_annotations: None,
        images: None,
    };
    let outcome = kube_hardener_engine::harden_new_ephemeral_containers(
        &review["request"]["object"],
        &review["request"]["oldObject"],
        &ctx,
        &Policy::default(),
    )
    .unwrap();
    let patch = decoded_patch(&body).expect("the debug container is hardened");
    assert_eq!(patch, serde_json::to_value(&outcome.patch).unwrap());
    for op in patch.as_array().unwrap() {
        let path = op["path"].as_str().unwrap();
        assert!(
            path.starts_with("/spec/ephemeralContainers/0")
                || path.starts_with("/metadata/annotations"),
            "patch touches an immutable field: {op}"
        );
    }

    // A plain pod UPDATE is never mutated (pod specs are immutable).
    let mut update = review.clone();
    update["request"]["subResource"] = Value::Null;
    let body = server.post_review(&update).await.json();
    assert_eq!(decoded_patch(&body), None);

    // Without oldObject the new containers cannot be told apart: admitted unchanged.
    let mut broken = review;
    broken["request"]["oldObject"] = Value::Null;
    let body = server.post_review(&broken).await.json();
    assert_eq!(response(&body)["allowed"], true);
    assert_eq!(decoded_patch(&body), None);
    server.stop().await.unwrap();
}

fn deployment_review() -> Value {
    let pod = &captured_review()["request"]["object"];
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a", "generation": 1},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": pod["spec"]["containers"].clone(), "restartPolicy": "Always"}
            },
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
        }
    });
    let mut review = captured_review();
    let request = &mut review["request"];
    request["uid"] = json!("deploy-1");
    request["name"] = json!("web");
    request["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    request["resource"] = json!({"group": "apps", "version": "v1", "resource": "deployments"});
    request["object"] = deployment;
    review
}

#[actix_web::test]
async fn workloads_are_mutated_only_when_switched_on() {
    let server = start_default().await;
    let body = server.post_review(&deployment_review()).await.json();
    assert_eq!(response(&body)["allowed"], true);
    assert_eq!(decoded_patch(&body), None);
    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_reviews_total{outcome="ignored",operation="CREATE"}"#,
        1.0,
    );
    server.stop().await.unwrap();

    let mut setup = Setup::new();
    setup.config.hardening.mutate_workloads = true;
    let policy = setup.config.hardening.clone();
    let server = setup.start().await;
    let review = deployment_review();
    let body = server.post_review(&review).await.json();
    let patch = decoded_patch(&body).expect("template hardened");
    assert_eq!(
        patch,
        engine_patch(&review["request"]["object"], "team-a", None, &policy)
    );
    let hardened = apply(&review["request"]["object"], &patch);
    assert_eq!(
        hardened["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn other_resources_pass_unchanged() {
    let server = start_default().await;
    let mut review = captured_review();
    review["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    review["request"]["resource"] = json!({"group": "", "version": "v1", "resource": "configmaps"});
    review["request"]["object"] =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let body = server.post_review(&review).await.json();
    assert_eq!(
        response(&body),
        &json!({"uid": "3f6c2a1e-8d4b-4c1f-9e2a-7b5d0c9e1a42", "allowed": true})
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn internal_trouble_admits_unchanged_and_is_counted() {
    let server = start_default().await;
    let mut review = captured_review();
    review["request"]["object"] = json!("not an object");
    let body = server.post_review(&review).await.json();
    assert_eq!(response(&body)["allowed"], true);
    assert_eq!(decoded_patch(&body), None);
    assert!(
        warnings(&body)
            .iter()
            .any(|w| w.contains("admitted without security defaults"))
    );

    let mut review = captured_review();
    review["request"]["object"]["spec"]["containers"] = json!("web");
    let body = server.post_review(&review).await.json();
    assert_eq!(response(&body)["allowed"], true);
    assert_eq!(decoded_patch(&body), None);

    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_reviews_total{outcome="error",operation="CREATE"}"#,
        2.0,
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn unknown_namespace_falls_back_to_a_bounded_lookup() {
    let mut setup = Setup::new();
    // A real client pointed at a closed port: the GET fails fast.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = kube::Config::new(format!("http://{closed}").parse().unwrap());
    setup.fallback = Some(kube::Client::try_from(config).unwrap());
    setup.config.server.namespace_lookup_timeout_ms = 300;
    let server = setup.start().await;

    let started = std::time::Instant::now();
    let body = server
        .post_review(&in_namespace(captured_review(), "brand-new"))
        .await
        .json();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response(&body)["allowed"], true);
    // Without annotations the defaults apply.
    assert!(decoded_patch(&body).is_some());
    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_namespace_fallback_lookups_total{result="failed"}"#,
        1.0,
    );

    // Cached namespaces need no lookup.
    server.post_review(&captured_review()).await;
    let metrics = server.metrics().await;
    support::assert_metric(
        &metrics,
        r#"kube_hardener_namespace_fallback_lookups_total{result="ok"}"#,
        0.0,
    );
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn health_readiness_and_metrics() {
    let mut setup = Setup::new();
    setup.synced = false;
    let server = setup.start().await;

    let health = server.get_health("/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let ready = server.get_health("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("namespace cache not synced"));
    assert!(
        server
            .metrics()
            .await
            .contains("kube_hardener_namespace_cache_synced 0")
    );

    server.writer.apply_watcher_event(&Event::Init);
    server
        .writer
        .apply_watcher_event(&Event::InitApply(namespace("team-a", &[])));
    server
        .writer
        .apply_watcher_event(&Event::InitApply(namespace("team-b", &[])));
    server.writer.apply_watcher_event(&Event::InitDone);
    let ready = eventually(Duration::from_secs(3), || async {
        server.get_health("/readyz").await.status == 200
    })
    .await;
    assert!(ready);

    server.post_review(&captured_review()).await;
    server.post_review(&with_uid(ephemeral_review(), "e")).await;
    server.request("POST", "/mutate", b"nope").await;
    let reply = server.get_health("/metrics").await;
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let metrics = reply.text();
    for expected in [
        r#"kube_hardener_reviews_total{outcome="patched",operation="CREATE"} 1"#,
        r#"kube_hardener_reviews_total{outcome="patched",operation="UPDATE"} 1"#,
        r#"kube_hardener_settings_applied_total{setting="runAsNonRoot",mode="enforce"} "#,
        r#"kube_hardener_settings_applied_total{setting="capabilities",mode="enforce"} 2"#,
        r#"kube_hardener_warnings_total{kind="added_capabilities"} 1"#,
        r#"kube_hardener_rejected_requests_total{reason="malformed"} 1"#,
        "kube_hardener_review_duration_seconds_count 2",
        r#"kube_hardener_review_duration_seconds_bucket{le="0.0001"}"#,
        "kube_hardener_namespace_cache_size 2",
        "kube_hardener_namespace_cache_synced 1",
        "kube_hardener_namespace_watch_errors_total 0",
        "kube_hardener_tls_cert_expiry_timestamp_seconds ",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }
    assert_eq!(server.get_health("/nope").await.status, 404);
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn shutdown_drains_an_in_flight_review() {
    let server = start_default().await;
    let review = captured_review();
    let body = serde_json::to_vec(&review).unwrap();
    let mut stream = server.tls().await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..100]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = server.get_health("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("shutting down"));
    // No new connections are served.
    let refused = match tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(server.webhook),
    )
    .await
    {
        Ok(Ok(tcp)) => {
            let handshake = server
                .certs
                .connector()
                .connect("localhost".try_into().unwrap(), tcp);
            !matches!(
                tokio::time::timeout(Duration::from_secs(1), handshake).await,
                Ok(Ok(_))
            )
        }
        _ => true,
    };
    assert!(refused, "a new connection was accepted during shutdown");

    stream.write_all(&body[100..]).await.unwrap();
    let reply = support::read_response(&mut stream).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(response(&reply.json())["uid"], review["request"]["uid"]);
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn bind_errors_name_the_key() {
    let certs = support::Certs::new();
    certs.write_plain(1);
    let mut config: Config = support::test_config(&certs);
    config.server.health_listen = "256.0.0.1:80".to_owned();
    let error = support::start_error(config).await;
    assert!(
        error.starts_with("cannot listen on 256.0.0.1:80 (server.health_listen)"),
        "{error}"
    );
}

#[actix_web::test]
async fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let server = start_default().await;
    // One answered request, then the connection stays open and idle, as the
    // API server's connection pool keeps it.
    let body = serde_json::to_vec(&captured_review()).unwrap();
    let mut idle = server.tls().await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    idle.write_all(head.as_bytes()).await.unwrap();
    idle.write_all(&body).await.unwrap();
    let mut first = Vec::new();
    let mut chunk = [0_u8; 8192];
    while !first.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::io::AsyncReadExt::read(&mut idle, &mut chunk)
            .await
            .unwrap();
        assert!(read > 0, "connection closed before the response");
        first.extend_from_slice(&chunk[..read]);
    }
    assert!(first.starts_with(b"HTTP/1.1 200"));

    let started = std::time::Instant::now();
    server.stop().await.unwrap();
    // The idle connection is given the 2 s drain, far below both the 120 s
    // keep-alive and the 10 s shutdown timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The API server does not send a review again when the connection it took
/// from its pool turns out closed: closing idle connections at the start of
/// a shutdown loses the reviews that race with it. During the drain an idle
/// connection stays open, its next review is answered, and that response
/// closes it.
#[actix_web::test]
async fn during_shutdown_a_keep_alive_connection_is_retired_by_its_next_response() {
    let server = start_default().await;
    let body = serde_json::to_vec(&captured_review()).unwrap();
    let mut pooled = server.tls().await;
    pooled
        .write_all(&support::keep_alive_request(&body))
        .await
        .unwrap();
    let first = support::read_one_response(&mut pooled).await.unwrap();
    assert_eq!(first.status, 200);
    assert_ne!(first.header("connection"), Some("close"));

    server.shutdown();
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.get_health("/readyz").await.status == 503
        })
        .await,
        "the server never started shutting down"
    );
    pooled
        .write_all(&support::keep_alive_request(&body))
        .await
        .unwrap();
    let second = support::read_response(&mut pooled).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("connection"), Some("close"));
    assert!(decoded_patch(&second.json()).is_some());
    server.stop().await.unwrap();
}

#[actix_web::test]
async fn concurrent_reviews_each_get_their_own_answer() {
    let mut setup = Setup::new();
    setup.config.server.workers = 2;
    let server = setup.start().await;
    let replies = futures::future::join_all((0..24).map(|i| {
        let server = &server;
        async move {
            let ns = if i % 3 == 0 { "kube-system" } else { "team-a" };
            let review = in_namespace(with_uid(captured_review(), &format!("uid-{i}")), ns);
            (i, ns, server.post_review(&review).await.json())
        }
    }))
    .await;
    for (i, ns, body) in replies {
        assert_eq!(response(&body)["uid"], format!("uid-{i}"));
        assert_eq!(
            decoded_patch(&body).is_some(),
            ns == "team-a",
            "uid-{i} in {ns}"
        );
    }
    server.stop().await.unwrap();
}

/// Host-network pods: during a rolling update the old and the new replica
/// listen on the same node port. With `server.reuse_port` the second process
/// binds it too; when the first one stops, every new connection reaches the
/// one that stays.
#[actix_web::test]
async fn reuse_port_lets_the_next_replica_share_the_port_and_take_over() {
    let mut first = Setup::new();
    let mut second = Setup::new();
    // Both serve the second one's certificate, so one client trusts both.
    for (from, to) in [
        (second.certs.cert_path(), first.certs.cert_path()),
        (second.certs.key_path(), first.certs.key_path()),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    first.config.server.reuse_port = true;
    let first = first.start().await;

    // Without the option the port is taken.
    let mut plain = support::test_config(&second.certs);
    plain.server.listen = first.webhook.to_string();
    let error = support::start_error(plain).await;
    assert!(
        error.starts_with(&format!(
            "cannot listen on {} (server.listen)",
            first.webhook
        )),
        "{error}"
    );

    second.config.server.reuse_port = true;
    second.config.server.listen = first.webhook.to_string();
    second.config.server.health_listen = first.health.to_string();
    let second = second.start().await;
    assert_eq!(second.webhook, first.webhook);
    for i in 0..8 {
        let reply = second
            .post_review(&with_uid(captured_review(), &format!("both-{i}")))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    first.stop().await.unwrap();
    for i in 0..20 {
        let uid = format!("after-{i}");
        let reply = second.post_review(&with_uid(captured_review(), &uid)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(response(&reply.json())["uid"], uid.as_str());
        assert_eq!(second.get_health("/healthz").await.status, 200);
    }
    second.stop().await.unwrap();
}
