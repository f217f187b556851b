//! Prometheus metrics, served on the health listener at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;

use crate::decision::ReviewOutcome;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The API server's own webhook histogram starts at 5 ms; ours resolves the
/// sub-millisecond range where this webhook actually lives.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReviewLabels {
    pub outcome: &'static str,
    pub operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SettingLabels {
    pub setting: &'static str,
    pub mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

/// The `result` label of `tls_cert_reloads_total`.
pub(crate) const RELOAD_OK: &str = "ok";
pub(crate) const RELOAD_FAILED: &str = "failed";
/// The `result` label of `namespace_fallback_lookups_total`.
pub(crate) const LOOKUP_OK: &str = "ok";
pub(crate) const LOOKUP_NOT_FOUND: &str = "not_found";
pub(crate) const LOOKUP_RECENTLY_NOT_FOUND: &str = "recently_not_found";
pub(crate) const LOOKUP_FAILED: &str = "failed";
const LOOKUP_RESULTS: [&str; 4] = [
    LOOKUP_OK,
    LOOKUP_NOT_FOUND,
    LOOKUP_RECENTLY_NOT_FOUND,
    LOOKUP_FAILED,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ImageLabels {
    pub source: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Registry lookups take from milliseconds (loopback) to the lookup timeout.
const LOOKUP_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// Image answers and lookups, shared with the resolver (an `Observer`).
#[derive(Debug, Clone)]
pub(crate) struct ImageMetrics {
    pub answers: Family<ImageLabels, Counter>,
    pub lookups: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
}

fn lookup_histogram() -> Histogram {
    Histogram::new(LOOKUP_BUCKETS)
}

impl kube_hardener_images::Observer for ImageMetrics {
    fn answered(
        &self,
        source: kube_hardener_images::Source,
        user: &kube_hardener_engine::ImageUser,
    ) {
        self.answers
            .get_or_create(&ImageLabels {
                source: source.label(),
                outcome: kube_hardener_images::outcome_label(user),
            })
            .inc();
    }

    fn looked_up(&self, seconds: f64, user: &kube_hardener_engine::ImageUser) {
        self.lookups
            .get_or_create(&OutcomeLabels {
                outcome: kube_hardener_images::outcome_label(user),
            })
            .observe(seconds);
    }
}

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub settings: Family<SettingLabels, Counter>,
    pub warnings: Family<KindLabels, Counter>,
    pub latency: Histogram,
    pub rejected: Family<ReasonLabels, Counter>,
    pub cert_reloads: Family<ResultLabels, Counter>,
    pub cert_expiry: Gauge<f64, AtomicU64>,
    pub namespace_cache_size: Gauge,
    pub namespace_synced: Gauge,
    pub namespace_lookups: Family<ResultLabels, Counter>,
    pub images: ImageMetrics,
}

impl Metrics {
    /// `watch_errors` is owned by the namespace source, which counts the
    /// failures of its watch stream on its own task.
    pub fn new(watch_errors: Counter) -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("kube_hardener");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "Admission reviews answered, by outcome and operation",
            reviews.clone(),
        );
        // Every series an alert may watch exists from the start at zero, so
        // `increase(...)` sees the first error instead of a series appearing.
        for outcome in ReviewOutcome::ALL {
            for operation in ["CREATE", "UPDATE"] {
                drop(reviews.get_or_create(&ReviewLabels {
                    outcome: outcome.label(),
                    operation,
                }));
            }
        }
        let settings = Family::<SettingLabels, Counter>::default();
        registry.register(
            "settings_applied",
            "Settings injected (enforce) or that would have been injected (audit), by name",
            settings.clone(),
        );
        let warnings = Family::<KindLabels, Counter>::default();
        registry.register(
            "warnings",
            "Admission warnings returned, by kind",
            warnings.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "review_duration_seconds",
            "Time from a complete request body to the response, per review",
            latency.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Requests to /mutate answered with a 4xx, by reason",
            rejected.clone(),
        );
        let cert_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_cert_reloads",
            "Certificate reloads after the files changed, by result",
            cert_reloads.clone(),
        );
        for result in [RELOAD_OK, RELOAD_FAILED] {
            drop(cert_reloads.get_or_create(&ResultLabels { result }));
        }
        let cert_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "tls_cert_expiry_timestamp_seconds",
            "notAfter of the certificate being served, as a Unix timestamp",
            cert_expiry.clone(),
        );
        let namespace_cache_size = Gauge::default();
        registry.register(
            "namespace_cache_size",
            "Namespaces held by the namespace cache",
            namespace_cache_size.clone(),
        );
        let namespace_synced = Gauge::default();
        registry.register(
            "namespace_cache_synced",
            "1 once the namespace cache has completed its first list",
            namespace_synced.clone(),
        );
        let namespace_lookups = Family::<ResultLabels, Counter>::default();
        registry.register(
            "namespace_fallback_lookups",
            "GETs of namespaces missing from the cache, by result",
            namespace_lookups.clone(),
        );
        for result in LOOKUP_RESULTS {
            drop(namespace_lookups.get_or_create(&ResultLabels { result }));
        }
        let images = ImageMetrics {
            answers: Family::default(),
            lookups: Family::new_with_constructor(lookup_histogram as fn() -> Histogram),
        };
        registry.register(
            "image_answers",
            "Images of reviews answered, by where the answer came from (cache, digest, registry, budget) and what the image runs as (uid, named, root, unknown)",
            images.answers.clone(),
        );
        registry.register(
            "image_lookup_seconds",
            "Registry lookups of what an image runs as, by result",
            images.lookups.clone(),
        );
        registry.register(
            "namespace_watch_errors",
            "Errors of the namespace watch (retried with backoff)",
            watch_errors,
        );
        // The conventional unprefixed names, so stock dashboards and alerts work.
        root.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry: root,
            reviews,
            settings,
            warnings,
            latency,
            rejected,
            cert_reloads,
            cert_expiry,
            namespace_cache_size,
            namespace_synced,
            namespace_lookups,
            images,
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes` and
/// `process_open_fds`, read from /proc at each scrape (Linux, where the webhook
/// runs; elsewhere they are left out).
#[derive(Debug)]
struct ProcessCollector;

/// /proc reports CPU times in USER_HZ, which Linux fixes at 100 per second for
/// user space on every architecture.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, PartialEq)]
struct ProcessSample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    open_fds: Option<i64>,
}

impl ProcessSample {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| i64::try_from(entries.count()).unwrap_or(i64::MAX));
        ProcessSample {
            cpu_seconds: stat.as_deref().and_then(cpu_seconds),
            resident_bytes: status.as_deref().and_then(resident_bytes),
            open_fds,
        }
    }
}

/// utime + stime of /proc/self/stat: fields 14 and 15, counted after the
/// command name, which is in parentheses and may itself hold spaces.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user.saturating_add(system) as f64 / USER_HZ)
}

/// `VmRSS:  12345 kB` of /proc/self/status.
fn resident_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let sample = ProcessSample::read();
        if let Some(seconds) = sample.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                sample.resident_bytes,
            ),
            ("process_open_fds", "Open file descriptors", sample.open_fds),
        ] {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let metrics = Metrics::new(Counter::default());
        metrics
            .reviews
            .get_or_create(&ReviewLabels {
                outcome: "patched",
                operation: "CREATE",
            })
            .inc();
        metrics.latency.observe(0.000_07);
        metrics.cert_expiry.set(1_900_000_000.0);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"kube_hardener_reviews_total{outcome="patched",operation="CREATE"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kube_hardener_review_duration_seconds_bucket{le="0.0001"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kube_hardener_review_duration_seconds_bucket{le="0.00005"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("kube_hardener_tls_cert_expiry_timestamp_seconds 1900000000.0"),
            "{text}"
        );
        assert!(
            text.contains("kube_hardener_namespace_watch_errors_total 0"),
            "{text}"
        );
        // Alerts on `increase(...)` need the series before the first event.
        for series in [
            r#"kube_hardener_reviews_total{outcome="error",operation="CREATE"} 0"#,
            r#"kube_hardener_tls_cert_reloads_total{result="failed"} 0"#,
            r#"kube_hardener_tls_cert_reloads_total{result="ok"} 0"#,
            r#"kube_hardener_namespace_fallback_lookups_total{result="failed"} 0"#,
            r#"kube_hardener_namespace_fallback_lookups_total{result="not_found"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        for series in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(
                text.lines().any(|line| line.starts_with(series)),
                "{series} missing from\n{text}"
            );
        }
    }

    #[test]
    fn process_figures_parse_from_proc_text() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat =
            "4242 (kube (hard) ener) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 125 0 0 20 0 9 0";
        assert_eq!(cpu_seconds(stat), Some(3.75));
        assert_eq!(cpu_seconds("garbage"), None);
        assert_eq!(cpu_seconds("1 (x) S 1"), None);
        let status = "Name:\tkube-hardener\nVmPeak:\t 9000 kB\nVmRSS:\t   12600 kB\n";
        assert_eq!(resident_bytes(status), Some(12_600 * 1024));
        assert_eq!(resident_bytes("VmRSS: lots"), None);
    }
}
