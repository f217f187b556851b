//! Engine time per object next to the floor every admission request pays
//! anyway: parsing the pod JSON and serializing it again.

use std::hint::black_box;

// The allocator of the `kube-hardener` binary, so the figures are the
// product's (BENCHMARKS.md also gives the system allocator's, measured by
// building without these two lines).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube_hardener_engine::{Context, Policy, harden};
use serde_json::{Value, json};

fn container(name: &str, env_vars: usize, mounts: &[&str]) -> Value {
    let env: Vec<Value> = (0..env_vars)
        .map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}-{name}")}))
        .collect();
    let volume_mounts: Vec<Value> = mounts
        .iter()
        .map(|m| json!({"name": m, "mountPath": format!("/mnt/{m}")}))
        .collect();
    json!({
        "name": name,
        "image": format!("registry.example/{name}:1.2.3"),
        "args": ["--port=8080", "--log-level=info"],
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
        "volumeMounts": volume_mounts
    })
}

fn pod(containers: Vec<Value>, init: Vec<Value>, volumes: usize) -> Value {
    let volumes: Vec<Value> = (0..volumes)
        .map(|i| json!({"name": format!("config-{i}"), "configMap": {"name": format!("config-{i}")}}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "bench-7d9f8c6b5-x2x4z",
            "namespace": "shop",
            "labels": {"app": "bench", "pod-template-hash": "7d9f8c6b5"},
            "annotations": {"example.com/team": "payments"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench-7d9f8c6b5",
                "uid": "2b7a4f4e-1c1d-4a65-9a8e-3f1f5c3f1a11", "controller": true}]
        },
        "spec": {
            "serviceAccountName": "bench",
            "containers": containers,
            "initContainers": init,
            "volumes": volumes
        }
    })
}

fn cases() -> Vec<(&'static str, Value)> {
    let small = pod(vec![container("app", 2, &[])], vec![], 0);
    let typical = pod(
        vec![
            container("app", 10, &["config-0"]),
            container("proxy", 5, &["config-1"]),
            container("metrics", 3, &[]),
        ],
        vec![container("migrate", 4, &["config-0"])],
        2,
    );
    let mounts: Vec<String> = (0..20).map(|i| format!("config-{i}")).collect();
    let large = pod(
        (0..20)
            .map(|i| {
                let own = [mounts[i].as_str(), mounts[(i + 1) % 20].as_str()];
                container(&format!("worker-{i}"), 40, &own)
            })
            .collect(),
        vec![],
        20,
    );
    vec![("small", small), ("typical", typical), ("large", large)]
}

fn bench(c: &mut Criterion) {
    let policy = Policy::default();
    let ctx = Context::default();
    for (name, object) in cases() {
        let bytes = serde_json::to_vec(&object).unwrap_or_default();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.bench_function("parse+serialize", |b| {
            b.iter(|| {
                let value: Value = serde_json::from_slice(black_box(&bytes)).unwrap_or_default();
                serde_json::to_vec(&value).unwrap_or_default()
            })
        });
        group.bench_function("engine", |b| {
            b.iter(|| harden(black_box(&object), &ctx, &policy).map(|o| o.patch.0.len()))
        });
        // What a caller with image lookups on runs first, to learn which
        // images to resolve: its cost comes on top of the engine's.
        group.bench_function("image_query", |b| {
            b.iter(|| {
                kube_hardener_engine::image_query(black_box(&object), &ctx, &policy)
                    .map(|q| q.images.len())
            })
        });
        // The server's path with lookups on and every image a numeric UID
        // (so the result is the engine's own): one parse for both the query
        // and the hardening.
        let facts: kube_hardener_engine::ImageFacts =
            kube_hardener_engine::image_query(&object, &ctx, &policy)
                .map(|q| q.images)
                .unwrap_or_default()
                .into_iter()
                .map(|image| (image, kube_hardener_engine::ImageUser::Uid(1000)))
                .collect();
        group.bench_function("parse+image_query+harden", |b| {
            b.iter(|| {
                let parsed = kube_hardener_engine::parse(black_box(&object), &ctx, &policy)?;
                let images = parsed.image_query()?.images.len();
                Ok::<_, kube_hardener_engine::EngineError>(
                    parsed.harden(Some(&facts)).patch.0.len() + images,
                )
            })
        });
        group.finish();
    }
}

/// Cost per container as the container count grows: the review of a pod
/// with 50,000 containers must cost 50,000 times that of one with one, not
/// its square. Throughput is per container, so criterion prints the rate.
fn scale(c: &mut Criterion) {
    let ctx = Context::default();
    let without_read_only = {
        let mut policy = Policy::default();
        policy
            .settings
            .set(kube_hardener_engine::Setting::ReadOnlyRootFilesystem, false);
        policy
    };
    for (label, policy) in [
        ("every default", Policy::default()),
        ("readOnlyRootFilesystem off", without_read_only),
    ] {
        let mut group = c.benchmark_group(format!("scale/{label}"));
        for count in [10usize, 1_000, 50_000] {
            let object = pod(
                (0..count)
                    .map(|i| json!({"name": format!("c{i}"), "image": "registry.example/app:1"}))
                    .collect(),
                vec![],
                0,
            );
            group.throughput(Throughput::Elements(count as u64));
            if count >= 50_000 {
                group.sample_size(10);
            }
            group.bench_function(format!("{count} containers"), |b| {
                b.iter(|| harden(black_box(&object), &ctx, &policy).map(|o| o.patch.0.len()))
            });
            // The floor at the same size, once: what any JSON handling of
            // this pod costs per container, memory hierarchy included.
            if label == "every default" {
                let bytes = serde_json::to_vec(&object).unwrap_or_default();
                group.bench_function(format!("{count} containers, parse+serialize"), |b| {
                    b.iter(|| {
                        let value: Value =
                            serde_json::from_slice(black_box(&bytes)).unwrap_or_default();
                        serde_json::to_vec(&value).unwrap_or_default()
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench, scale);
criterion_main!(benches);
