//! Pod create-to-Running latency on the local node, with and without
//! kube-hardener, in one run (BENCHMARKS.md, "Pods on a real node").
//!
//!   scripts/bench-node.sh [PODS]     # builds what it needs, starts the cluster with a node
//!
//! Needs KUBECONFIG, KUBE_HARDENER_BIN (a release build) and the node of
//! `e2e/controlplane/up.sh --node`. Pods alternate between a namespace without
//! the webhook and one where it hardens them (so drift affects both arms
//! alike); each pod is timed from the create call until the API server reports
//! it Running, then deleted, so at most one pod of the benchmark runs at a time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube_hardener_e2e::node::{busybox, node_name};
use kube_hardener_e2e::stats::{count_arg, interleaved, summarize, table};
use kube_hardener_e2e::{
    LocalWebhook, RegisterOptions, Registration, ServerOptions, TestNamespace, applied_annotation,
    client, pod, wait_until_hardening,
};
use serde_json::json;

const WARM_UP: usize = 5;
/// A pod that has not started by then fails the run.
const START_TIMEOUT: Duration = Duration::from_secs(60);

async fn timed_start(api: &Api<Pod>, name: &str, expect_hardened: bool) -> Result<Duration> {
    let manifest = pod(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": busybox("uid65532"),
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }],
        },
    }))?;
    let started = Instant::now();
    let created = api.create(&PostParams::default(), &manifest).await?;
    ensure!(
        applied_annotation(&created).is_some() == expect_hardened,
        "pod {name}: expected hardened = {expect_hardened}"
    );
    tokio::time::timeout(
        START_TIMEOUT,
        await_condition(api.clone(), name, conditions::is_pod_running()),
    )
    .await
    .with_context(|| format!("pod {name} not Running within {START_TIMEOUT:?}"))?
    .with_context(|| format!("watching pod {name}"))?;
    let elapsed = started.elapsed();
    api.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .with_context(|| format!("deleting pod {name}"))?;
    Ok(elapsed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let pods = count_arg("PODS", 100, 1..=1000)?;
    std::env::var_os("KUBE_HARDENER_BIN")
        .context("set KUBE_HARDENER_BIN to a release build (scripts/bench-node.sh does)")?;
    let node = node_name()?;

    let client = client().await?;
    let server = LocalWebhook::start(ServerOptions {
        env: vec![("KUBE_HARDENER_SERVER__LOG_LEVEL".into(), "warn".into())],
        ..ServerOptions::default()
    })
    .await?;
    let plain = TestNamespace::create(&client, "bench-start-plain", Default::default()).await?;
    let hardened =
        TestNamespace::create(&client, "bench-start-hardened", Default::default()).await?;
    let _registration = Registration::create(
        &client,
        &server.target(),
        &hardened,
        RegisterOptions::default(),
    )
    .await?;
    wait_until_hardening(&hardened).await?;

    let arms = [
        ("not registered", plain.pods(), false),
        ("registered, pod hardened", hardened.pods(), true),
    ];
    let mut samples = interleaved(arms.len(), WARM_UP, pods, async |arm, name| {
        let (_, api, hardens) = &arms[arm];
        timed_start(api, &name, *hardens).await
    })
    .await?;

    let summaries: Vec<_> = samples.iter_mut().map(|s| summarize(s)).collect();
    println!(
        "pod create-to-Running latency on node {node}, {pods} pods per arm (after {WARM_UP} warm-up), milliseconds"
    );
    println!();
    let labels: Vec<&str> = arms.iter().map(|(label, _, _)| *label).collect();
    print!("{}", table(&labels, &summaries));
    let (without, with) = (summaries[0], summaries[1]);
    println!();
    println!(
        "ratio hardened / not registered: median {:.3}, mean {:.3}",
        with.median.as_secs_f64() / without.median.as_secs_f64().max(f64::EPSILON),
        with.mean.as_secs_f64() / without.mean.as_secs_f64().max(f64::EPSILON)
    );
    Ok(())
}
