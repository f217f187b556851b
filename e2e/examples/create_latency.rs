//! Pod CREATE latency through the API server with and without kube-hardener
//! registered, measured in one run (see BENCHMARKS.md, "End-to-end").
//!
//!   scripts/bench-e2e.sh [CREATES]       # builds what it needs, starts a control plane
//!
//! Needs KUBECONFIG and KUBE_HARDENER_BIN (a release build). Creates go
//! alternately into a namespace without the webhook and one with it, so drift
//! (etcd growth, a busy neighbour) affects both sides alike.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use kube_hardener_e2e::{
    LocalWebhook, RegisterOptions, Registration, ServerOptions, TestNamespace, applied_annotation,
    client, plain_pod, pod, wait_until_hardening,
};

const WARM_UP: usize = 50;

#[derive(Debug)]
struct Summary {
    median: Duration,
    p90: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index]
    };
    let total: Duration = samples.iter().sum();
    Summary {
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        mean: total / u32::try_from(samples.len()).unwrap_or(u32::MAX),
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64() * 1000.0)
}

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
    let creates: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .with_context(|| format!("CREATES `{arg}` is not a number"))?,
        None => 1000,
    };
    ensure!(creates >= 1, "CREATES must be at least 1");
    std::env::var_os("KUBE_HARDENER_BIN")
        .context("set KUBE_HARDENER_BIN to a release build (scripts/bench-e2e.sh does)")?;

    let client = client().await?;
    let server = LocalWebhook::start(ServerOptions {
        env: vec![("KUBE_HARDENER_SERVER__LOG_LEVEL".into(), "warn".into())],
        ..ServerOptions::default()
    })
    .await?;
    let plain = TestNamespace::create(&client, "bench-plain", Default::default()).await?;
    let hardened = TestNamespace::create(&client, "bench-webhook", Default::default()).await?;
    let _registration = Registration::create(
        &client,
        &server.target(),
        &hardened,
        RegisterOptions::default(),
    )
    .await?;
    wait_until_hardening(&hardened).await?;
    let (plain_api, hardened_api) = (plain.pods(), hardened.pods());

    for i in 0..WARM_UP {
        timed_create(&plain_api, &format!("warm-{i}"), false).await?;
        timed_create(&hardened_api, &format!("warm-{i}"), true).await?;
    }
    let mut without = Vec::with_capacity(creates);
    let mut with = Vec::with_capacity(creates);
    for i in 0..creates {
        // Alternate which side goes first, so neither always follows the other.
        let name = format!("pod-{i}");
        if i % 2 == 0 {
            without.push(timed_create(&plain_api, &name, false).await?);
            with.push(timed_create(&hardened_api, &name, true).await?);
        } else {
            with.push(timed_create(&hardened_api, &name, true).await?);
            without.push(timed_create(&plain_api, &name, false).await?);
        }
    }

    let without = summarize(&mut without);
    let with = summarize(&mut with);
    println!("pod CREATE latency, {creates} creates each (after {WARM_UP} warm-up), milliseconds");
    println!();
    println!("| webhook | median | p90 | p99 | mean |");
    println!("|---|---|---|---|---|");
    for (label, s) in [("not registered", &without), ("registered", &with)] {
        println!(
            "| {label} | {} | {} | {} | {} |",
            ms(s.median),
            ms(s.p90),
            ms(s.p99),
            ms(s.mean)
        );
    }
    println!();
    println!(
        "added median: {} ms; ratio of medians: {:.2}; added p99: {} ms",
        ms(with.median.saturating_sub(without.median)),
        with.median.as_secs_f64() / without.median.as_secs_f64(),
        ms(with.p99.saturating_sub(without.p99)),
    );
    Ok(())
}
