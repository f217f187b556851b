//! `kube-hardener preview` over 10,000 pods in one multi-document YAML (and
//! JSON) stream: read, parse, harden, render. The input is generated here so
//! no large file lives in the repository.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kube_hardener_config::Config;
use kube_hardener_preview::{
    ColorChoice, Format, Options, PreviewArgs, Source, evaluate, parse, preview, preview_policy,
    render_owned,
};

const PODS: usize = 10_000;

/// A realistic pod: an app container with env, probes, resources and a
/// mount, plus a sidecar; no securityContext, so every setting is injected.
fn pods_yaml(count: usize) -> String {
    let mut out = String::with_capacity(count * 1_200);
    for i in 0..count {
        let _ = write!(
            out,
            "---\n\
apiVersion: v1\n\
kind: Pod\n\
metadata:\n\
\x20 name: web-{i}\n\
\x20 namespace: team-{ns}\n\
\x20 labels:\n\
\x20   app.kubernetes.io/name: web\n\
\x20   pod-template-hash: 7c5d8f9b{i:05}\n\
spec:\n\
\x20 containers:\n\
\x20   - name: app\n\
\x20     image: registry.example.com/web:1.{i}\n\
\x20     ports:\n\
\x20       - containerPort: 8080\n\
\x20     env:\n\
\x20       - name: LOG_LEVEL\n\
\x20         value: info\n\
\x20       - name: POD_NAME\n\
\x20         valueFrom:\n\
\x20           fieldRef:\n\
\x20             fieldPath: metadata.name\n\
\x20     resources:\n\
\x20       requests: {{cpu: 100m, memory: 128Mi}}\n\
\x20       limits: {{memory: 256Mi}}\n\
\x20     readinessProbe:\n\
\x20       httpGet: {{path: /healthz, port: 8080}}\n\
\x20     volumeMounts:\n\
\x20       - name: config\n\
\x20         mountPath: /etc/web\n\
\x20   - name: proxy\n\
\x20     image: registry.example.com/proxy:2.0\n\
\x20     args: [\"--upstream=127.0.0.1:8080\"]\n\
\x20 volumes:\n\
\x20   - name: config\n\
\x20     configMap:\n\
\x20       name: web-config\n",
            ns = i % 20
        );
    }
    out
}

fn args(output: Format) -> PreviewArgs {
    PreviewArgs {
        output,
        namespace_annotations: Vec::new(),
        namespace: "default".to_owned(),
        exit_code: false,
        resolve_images: false,
        color: ColorChoice::Never,
        inputs: vec!["-".into()],
    }
}

fn bench(c: &mut Criterion) {
    let config = Config::default();
    let yaml = pods_yaml(PODS);
    let json = {
        let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&yaml)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .collect();
        docs.iter()
            .filter_map(|d| serde_json::to_string(d).ok())
            .collect::<Vec<_>>()
            .join("\n")
    };

    let mut group = c.benchmark_group("preview_10k_pods");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(PODS as u64));
    for (name, input, format) in [
        ("yaml_in_text_out", &yaml, Format::Text),
        ("yaml_in_yaml_out", &yaml, Format::Yaml),
        ("yaml_in_json_out", &yaml, Format::Json),
        ("yaml_in_diff_out", &yaml, Format::Diff),
        ("json_in_patch_out", &json, Format::Patch),
    ] {
        let args = args(format);
        group.bench_function(name, |b| {
            b.iter(|| {
                let result = preview(&args, &config, &mut input.as_bytes(), false, false);
                black_box(result.map(|p| p.chunks.len()).unwrap_or_default())
            });
        });
    }
    group.finish();

    // Where the time goes, phase by phase, on the YAML input.
    let mut group = c.benchmark_group("preview_10k_pods_phases");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(PODS as u64));
    let source = Source {
        name: "pods.yaml".to_owned(),
        text: yaml.clone(),
        json: false,
    };
    group.bench_function("parse_yaml", |b| {
        b.iter(|| black_box(parse(&source).map(|d| d.len()).unwrap_or_default()));
    });
    let json_source = Source {
        name: "pods.json".to_owned(),
        text: json.clone(),
        json: true,
    };
    group.bench_function("parse_json", |b| {
        b.iter(|| black_box(parse(&json_source).map(|d| d.len()).unwrap_or_default()));
    });
    let documents = parse(&source).unwrap_or_default();
    let options = Options {
        default_namespace: "default".to_owned(),
        namespace_annotations: Default::default(),
        images: None,
    };
    let policy = preview_policy(&config);
    group.bench_function("evaluate", |b| {
        b.iter_batched(
            || documents.clone(),
            |documents| {
                black_box(
                    evaluate(documents, &options, &policy)
                        .map(|r| r.len())
                        .unwrap_or_default(),
                )
            },
            BatchSize::LargeInput,
        );
    });
    let reports = evaluate(documents, &options, &policy).unwrap_or_default();
    for (name, format) in [
        ("render_text", Format::Text),
        ("render_yaml", Format::Yaml),
        ("render_json", Format::Json),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || reports.clone(),
                |reports| {
                    black_box(
                        render_owned(reports, format, false)
                            .map(|o| o.len())
                            .unwrap_or_default(),
                    )
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
