//! Pod CREATE latency through the API server with and without kube-hardener
//! registered, measured in one run (see BENCHMARKS.md, "End-to-end").
//!
//!   scripts/bench-e2e.sh [CREATES]       # builds what it needs, starts a control plane
//!
//! Needs KUBECONFIG and KUBE_HARDENER_BIN (a release build). Creates go in
//! turn into a namespace without a webhook, namespaces where kube-hardener is
//! called, and one where a webhook that computes nothing returns kube-hardener's
//! patch (the floor any webhook applying that patch pays), and one bound to
//! the native MutatingAdmissionPolicy generated from the same configuration,
//! so drift (etcd growth, a busy neighbour) affects every arm alike.

mod canned;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use kube_hardener_e2e::native_policy::bound_namespace;
use kube_hardener_e2e::stats::{Summary, count_arg, interleaved, ms, summarize, table};
use kube_hardener_e2e::{
    GROUP_LABEL, LocalWebhook, NamespaceOptions, PlainAndSkipped, RegisterOptions, Registration,
    ServerOptions, Target, TestNamespace, applied_annotation, client, eventually, plain_pod, pod,
    unique_name, wait_until_hardening,
};
use serde_json::Value;

const WARM_UP: usize = 50;

async fn timed_create(api: &Api<Pod>, name: &str, expect_hardened: bool) -> Result<Duration> {
    let manifest = pod(plain_pod(name))?;
    let started = Instant::now();
    let created = api.create(&PostParams::default(), &manifest).await?;
    let elapsed = started.elapsed();
    ensure!(
        applied_annotation(&created).is_some() == expect_hardened,
        "pod {name}: expected hardened = {expect_hardened}"
    );
    Ok(elapsed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let creates = count_arg("CREATES", 1000, 1..=usize::MAX)?;
    std::env::var_os("KUBE_HARDENER_BIN")
        .context("set KUBE_HARDENER_BIN to a release build (scripts/bench-e2e.sh does)")?;

    let client = client().await?;
    let server = LocalWebhook::start(ServerOptions {
        env: vec![("KUBE_HARDENER_SERVER__LOG_LEVEL".into(), "warn".into())],
        ..ServerOptions::default()
    })
    .await?;
    // One registration for two namespaces: in one the webhook patches, in the
    // other (`skip: all`) it is called but returns no patch, which separates
    // the cost of the call from the cost of applying the patch.
    let plain = TestNamespace::create(&client, "bench-plain", Default::default()).await?;
    let PlainAndSkipped {
        plain: hardened,
        skipped,
        registration: _registration,
    } = PlainAndSkipped::create(&client, &server.target(), "bench").await?;
    wait_until_hardening(&hardened).await?;

    let canned = canned::CannedWebhook::start().await?;
    let floor_group = unique_name("bench-floor");
    let floor = TestNamespace::create(
        &client,
        "bench-floor",
        NamespaceOptions::in_group(&floor_group, BTreeMap::new()),
    )
    .await?;
    let _floor_registration = Registration::create_for_label(
        &client,
        &canned.target(),
        (GROUP_LABEL, &floor_group),
        RegisterOptions::default(),
    )
    .await?;
    give_canned_webhook_kube_hardeners_patch(&canned, &floor, &server.target()).await?;

    // The native policy `kube-hardener policy` generates from the same
    // (embedded default) configuration, bound to its own namespace.
    let (native, _policy) =
        bound_namespace(&client, "bench-policy", Default::default(), "", &[]).await?;
    let (native_once, _policy_once) = bound_namespace(
        &client,
        "bench-once",
        Default::default(),
        "",
        &["--reinvocation-policy", "Never"],
    )
    .await?;

    let arms = [
        ("not registered", plain.pods(), false),
        (
            "registered, namespace opted out (no patch)",
            skipped.pods(),
            false,
        ),
        ("registered, pod hardened", hardened.pods(), true),
        (
            "floor: a webhook that only returns kube-hardener's patch",
            floor.pods(),
            true,
        ),
        (
            "native policy (kube-hardener policy), no webhook",
            native.pods(),
            true,
        ),
        (
            "native policy, --reinvocation-policy Never",
            native_once.pods(),
            true,
        ),
    ];

    let mut samples = interleaved(arms.len(), WARM_UP, creates, async |arm, name| {
        let (_, api, hardens) = &arms[arm];
        timed_create(api, &name, *hardens).await
    })
    .await?;

    let summaries: Vec<Summary> = samples.iter_mut().map(|s| summarize(s)).collect();
    println!("pod CREATE latency, {creates} creates each (after {WARM_UP} warm-up), milliseconds");
    println!();
    let labels: Vec<&str> = arms.iter().map(|(label, _, _)| *label).collect();
    print!("{}", table(&labels, &summaries));
    let (without, called, with, floor, native, once) = (
        &summaries[0],
        &summaries[1],
        &summaries[2],
        &summaries[3],
        &summaries[4],
        &summaries[5],
    );
    println!();
    // What the server itself spent per review, to tell its share of the added
    // time from the API server's (encoding the review, applying the patch).
    let metrics = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("http://127.0.0.1:{}/metrics", server.health_port))
        .send()
        .await?
        .text()
        .await?;
    let metric = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    if let (Some(sum), Some(count)) = (
        metric("kube_hardener_review_duration_seconds_sum"),
        metric("kube_hardener_review_duration_seconds_count"),
    ) && count > 0.0
    {
        println!(
            "server-side review time: mean {:.1} µs over {count} reviews",
            sum / count * 1e6
        );
    }
    println!(
        "added median of the call alone (opted out): {} ms",
        ms(called.median.saturating_sub(without.median))
    );
    println!(
        "added median: {} ms; ratio of medians: {:.2}; added p99: {} ms",
        ms(with.median.saturating_sub(without.median)),
        with.median.as_secs_f64() / without.median.as_secs_f64(),
        ms(with.p99.saturating_sub(without.p99)),
    );
    println!(
        "added median of the floor webhook: {} ms; kube-hardener above the floor: {} ms",
        ms(floor.median.saturating_sub(without.median)),
        signed_ms(with.median.as_secs_f64() - floor.median.as_secs_f64()),
    );
    println!(
        "added median of the native policy: {} ms; native policy minus webhook: {} ms",
        ms(native.median.saturating_sub(without.median)),
        signed_ms(native.median.as_secs_f64() - with.median.as_secs_f64()),
    );
    println!(
        "added median of the native policy with reinvocationPolicy Never: {} ms; minus webhook: {} ms",
        ms(once.median.saturating_sub(without.median)),
        signed_ms(once.median.as_secs_f64() - with.median.as_secs_f64()),
    );
    Ok(())
}

fn signed_ms(seconds: f64) -> String {
    format!("{:+.3}", seconds * 1000.0)
}

/// Sends a dry-run create to the floor namespace, takes the review the canned
/// webhook received, asks kube-hardener for its answer to exactly that review
/// and has the canned webhook return that patch from then on.
async fn give_canned_webhook_kube_hardeners_patch(
    canned: &canned::CannedWebhook,
    floor: &TestNamespace,
    kube_hardener: &Target,
) -> Result<()> {
    let probe = pod(plain_pod("floor-probe"))?;
    let api = floor.pods();
    eventually(
        "the API server calls the canned webhook",
        Duration::from_secs(30),
        || async {
            let params = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            api.create(&params, &probe)
                .await
                .map_err(|error| error.to_string())?;
            match canned.first_review() {
                Some(_) => Ok(()),
                None => Err("the create was not sent to the canned webhook".to_owned()),
            }
        },
    )
    .await?;
    let review = canned
        .first_review()
        .context("the canned webhook recorded no review")?;
    let Target::Url { url, ca_pem } = kube_hardener else {
        bail!("kube-hardener must run locally for this benchmark");
    };
    let answer: Value = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .build()?
        .post(url)
        .header("content-type", "application/json")
        .body(review)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let patch = answer["response"]["patch"]
        .as_str()
        .context("kube-hardener returned no patch for the floor's review")?;
    canned.set_patch(patch.to_owned());
    Ok(())
}
