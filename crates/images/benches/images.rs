//! What image awareness costs a review (BENCHMARKS.md, "Image lookups"):
//! a cache hit, a cold lookup against a real registry on loopback, and a
//! registry that never answers (the review waits the budget, no more).
//!
//!   cargo bench -p kube-hardener-images --bench images
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use kube_hardener_engine::{Context, ImageFacts, Policy, harden};
use kube_hardener_images::{NoObserver, Resolver, ResolverConfig};
use kube_hardener_testkit::registry::{PASSWD, Registry, SilentRegistry, TestImage};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn resolver(registry: Option<&Registry>, budget: Duration) -> Resolver {
    Resolver::new(
        ResolverConfig {
            budget,
            lookup_timeout: Duration::from_secs(10),
            extra_roots_pem: registry
                .map(|r| vec![r.ca_pem.as_bytes().to_vec()])
                .unwrap_or_default(),
            ..ResolverConfig::default()
        },
        Arc::new(NoObserver),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let registry = Registry::anonymous().unwrap();
    let files: &[(&str, &[u8])] = &[("etc/passwd", PASSWD), ("bin/app", &[0u8; 4096])];
    rt.block_on(async {
        registry
            .push("kh/app:named", &TestImage::new(Some("app"), files))
            .await
            .unwrap();
        registry
            .push("kh/app:uid", &TestImage::new(Some("65532"), files))
            .await
            .unwrap();
    });
    let named = registry.image("kh/app:named");
    let uid = registry.image("kh/app:uid");

    // The hot path: every image of the review answered from the cache.
    let warm = resolver(Some(&registry), Duration::from_secs(5));
    let one = vec![named.clone()];
    let two = vec![named.clone(), uid.clone()];
    rt.block_on(warm.facts(&two, None));
    let mut group = c.benchmark_group("image_facts");
    group.bench_function("cache_hit_1_image", |b| {
        b.iter(|| rt.block_on(warm.facts(&one, None)))
    });
    group.bench_function("cache_hit_2_images", |b| {
        b.iter(|| rt.block_on(warm.facts(&two, None)))
    });
    group.bench_function("baseline_empty_block_on", |b| {
        b.iter(|| rt.block_on(async {}))
    });
    group.finish();

    // What the engine does with the facts, next to the same pod without them.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"},
        "spec": {"containers": [{"name": "a", "image": named}, {"name": "b", "image": uid}]}});
    let facts: ImageFacts = rt.block_on(warm.facts(&two, None));
    let policy = Policy::default();
    let mut group = c.benchmark_group("engine_two_containers");
    group.bench_function("without_facts", |b| {
        b.iter(|| {
            harden(
                &pod,
                &Context {
                    namespace: Some("a"),
                    namespace_annotations: None,
                    images: None,
                },
                &policy,
            )
        })
    });
    group.bench_function("with_facts", |b| {
        b.iter(|| {
            harden(
                &pod,
                &Context {
                    namespace: Some("a"),
                    namespace_annotations: None,
                    images: Some(&facts),
                },
                &policy,
            )
        })
    });
    group.finish();

    // Cold: a fresh resolver each time (manifest, config and the passwd layer).
    let mut group = c.benchmark_group("image_lookup_cold");
    group.sample_size(20);
    group.bench_function("named_user_loopback_registry", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let cold = resolver(Some(&registry), Duration::from_secs(5));
                let started = Instant::now();
                let facts = rt.block_on(cold.facts(&one, None));
                total += started.elapsed();
                assert!(matches!(
                    facts[&named],
                    kube_hardener_engine::ImageUser::Named { .. }
                ));
            }
            total
        })
    });
    group.finish();

    // A registry that accepts connections and never answers: each review
    // waits the budget (100 ms here), and the cache then answers at once.
    let silent = rt.block_on(SilentRegistry::start()).unwrap();
    let host = silent.host.clone();
    let mut group = c.benchmark_group("image_lookup_silent_registry");
    group.sample_size(10);
    let mut n = 0u64;
    group.bench_function("budget_100ms", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                n += 1;
                let resolver = resolver(None, Duration::from_millis(100));
                let image = vec![format!("{host}/kh/slow:{n}")];
                let started = Instant::now();
                rt.block_on(resolver.facts(&image, None));
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
