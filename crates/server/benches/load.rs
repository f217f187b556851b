//! Load generator for `kube-hardener serve`: realistic Pod reviews over
//! keep-alive TLS on loopback, against a separately started release server.
//!
//! Run inside a throw-away control plane (the server needs a namespace watch):
//!
//! ```text
//! cargo build --release -p kube-hardener
//! e2e/controlplane/up.sh -- cargo bench -p kube-hardener-server --bench load
//! ```
//!
//! Environment: `KH_BENCH_BIN` (default `target/release/kube-hardener`),
//! `KH_BENCH_SECONDS` per phase (10), `KH_BENCH_CONNECTIONS` (32),
//! `KH_BENCH_NAMESPACES` created before the memory phase (10000),
//! `KH_BENCH_LOG_LEVEL` of the server (info), `KH_BENCH_HUGE=0` to skip the
//! phase with 4 MiB pods in flight (for a baseline binary that cannot do it),
//! `KH_BENCH_RESOLVE=0` to skip the image-lookup phase (it starts Debian's
//! docker-registry on loopback; when it runs, the memory phase measures a
//! server with lookups on as well). Targets only 127.0.0.1, every phase is bounded
//! in time, and the server is stopped with SIGTERM at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const REVIEW: &str = include_str!("../tests/fixtures/pod-create-review.json");

#[derive(Debug)]
struct Settings {
    bin: PathBuf,
    kubeconfig: PathBuf,
    seconds: u64,
    connections: usize,
    namespaces: usize,
    log_level: String,
    /// Whether to run the phase with huge pods in flight.
    huge: bool,
    /// Whether to run the phase with `images.resolve` on.
    resolve: bool,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(key) {
        Ok(value) => value
            .parse()
            .map_err(|_| anyhow::anyhow!("{key}={value:?} is not valid")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and a
    // load test has nothing to check there.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("load: skipped outside `cargo bench`");
        return Ok(());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let settings = Settings {
        bin: std::env::var_os("KH_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/release/kube-hardener")),
        kubeconfig: std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .context("KUBECONFIG is not set: run under e2e/controlplane/up.sh")?,
        seconds: env_or("KH_BENCH_SECONDS", 10)?,
        connections: env_or("KH_BENCH_CONNECTIONS", 32)?,
        namespaces: env_or("KH_BENCH_NAMESPACES", 10_000)?,
        log_level: env_or("KH_BENCH_LOG_LEVEL", "info".to_owned())?,
        huge: env_or("KH_BENCH_HUGE", 1u8)? != 0,
        resolve: env_or("KH_BENCH_RESOLVE", 1u8)? != 0,
    };
    if !settings.bin.exists() {
        bail!(
            "{} does not exist: cargo build --release -p kube-hardener",
            settings.bin.display()
        );
    }
    // The load generator gets two threads; it shares the machine's cores
    // with the server, which is part of what the figures measure.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(&settings))
}

async fn bench(settings: &Settings) -> anyhow::Result<()> {
    let pki = Pki::new()?;
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model()
    );
    println!(
        "server: {} (release), log level {}",
        settings.bin.display(),
        settings.log_level
    );
    println!(
        "load: {} keep-alive TLS connections, {} s per phase, review body {} bytes\n",
        settings.connections,
        settings.seconds,
        REVIEW.len()
    );
    let phase = Duration::from_secs(settings.seconds);
    // The captured review's namespace must exist, as it does in a cluster;
    // otherwise every review pays the fallback GET for an unknown namespace.
    create_namespaces(&settings.kubeconfig, &["team-a".to_owned()]).await?;

    for workers in [1, 2] {
        let server = Server::start(settings, &pki, workers).await?;
        let idle = server.rss_kib()?;
        // Warm-up: connections, TLS sessions, allocator arenas.
        saturate(&server, &pki, settings.connections, Duration::from_secs(2)).await?;
        let Measured {
            mut sat,
            mut half,
            half_rate,
            rss_load,
            cpu_per_review_us,
            in_server,
            server_p99,
        } = measure(&server, &pki, settings.connections, phase).await?;
        let hwm = server.hwm_kib()?;
        let exit = server.stop().await?;
        println!(
            "workers={workers}: server CPU {cpu_per_review_us:.1} µs per review (= {:.0} reviews/s per fully used core), \
             {in_server:.1} µs mean in the handler; at half load the handler's p99 is ≤ {server_p99}",
            1e6 / cpu_per_review_us
        );
        println!(
            "workers={workers}: saturation {:.0} reviews/s (p50 {:.2} ms, p99 {:.2} ms, {} errors) | \
             at {:.0}/s: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms from send; p99 {:.3} ms from schedule ({} sent, {} errors) | \
             RSS idle {:.1} MiB, under load {:.1} MiB (peak {:.1} MiB) | SIGTERM exit: {exit}",
            sat.rate(),
            sat.percentile(0.50),
            sat.percentile(0.99),
            sat.errors,
            half_rate,
            half.percentile(0.50),
            half.percentile(0.99),
            half.percentile(1.0),
            half.due_percentile(0.99),
            half.latencies.len(),
            half.errors,
            kib_to_mib(idle),
            kib_to_mib(rss_load),
            kib_to_mib(hwm),
        );
    }

    let lookups = if settings.resolve {
        Some(Lookups::start().await?)
    } else {
        None
    };
    if let Some(lookups) = &lookups {
        resolve_phase(lookups, settings, &pki, phase).await?;
    }

    if settings.huge {
        let server = Server::start(settings, &pki, 2).await?;
        huge_phase(&server, &pki, phase).await?;
        let exit = server.stop().await?;
        println!("huge-pod phase | SIGTERM exit: {exit}");
    }

    if settings.namespaces > 0 {
        let names: Vec<String> = (0..settings.namespaces)
            .map(|i| format!("bench-ns-{i}"))
            .collect();
        let created = create_namespaces(&settings.kubeconfig, &names).await?;
        // With lookups on as well when they are benchmarked: the first
        // seconds of load then include the cold lookups of both images.
        let mut arms = vec![("lookups off", Vec::new(), REVIEW)];
        if let Some(lookups) = &lookups {
            arms.push(("lookups on", lookups.env.clone(), lookups.review.as_str()));
        }
        for (label, env, review) in arms {
            let server = Server::start_with(settings, &pki, 1, &env, review).await?;
            let cached = server.metric("kube_hardener_namespace_cache_size").await?;
            let idle = server.rss_kib()?;
            let sampler = RssSampler::start(server.pid());
            let sat = saturate(&server, &pki, settings.connections, phase).await?;
            let rss_load = sampler.stop().await;
            let exit = server.stop().await?;
            println!(
                "{created} namespaces created, {cached} cached, {label}: RSS idle {:.1} MiB, under load {:.1} MiB \
                 ({:.0} reviews/s, 1 worker) | SIGTERM exit: {exit}",
                kib_to_mib(idle),
                kib_to_mib(rss_load),
                sat.rate()
            );
        }
    }
    Ok(())
}

/// One measurement of a warmed-up server: a closed loop at saturation (with
/// its RSS and the server's CPU per review), then an open loop at half that
/// rate (with the handler's own p99 from the server's histogram).
struct Measured {
    sat: Run,
    half: Run,
    half_rate: f64,
    rss_load: u64,
    cpu_per_review_us: f64,
    in_server: f64,
    server_p99: String,
}

async fn measure(
    server: &Server,
    pki: &Pki,
    connections: usize,
    phase: Duration,
) -> anyhow::Result<Measured> {
    let cpu_before = cpu_seconds(server.pid())?;
    let sampler = RssSampler::start(server.pid());
    let sat = saturate(server, pki, connections, phase).await?;
    let rss_load = sampler.stop().await;
    let cpu = cpu_seconds(server.pid())? - cpu_before;
    let cpu_per_review_us = cpu * 1e6 / sat.latencies.len().max(1) as f64;
    let in_server = server.mean_review_us().await?;
    let half_rate = sat.rate() / 2.0;
    let buckets_before = server.histogram().await?;
    let half = paced(server, pki, connections, half_rate, phase).await?;
    let server_p99 = quantile_upper_bound(&buckets_before, &server.histogram().await?, 0.99);
    Ok(Measured {
        sat,
        half,
        half_rate,
        rss_load,
        cpu_per_review_us,
        in_server,
        server_p99,
    })
}

/// A loopback registry holding the captured review's two images (both
/// `USER 65532`), the review naming them there, and the environment that
/// turns lookups on against it.
struct Lookups {
    review: String,
    env: Vec<(&'static str, String)>,
    _registry: kube_hardener_testkit::registry::Registry,
    _dir: tempfile::TempDir,
}

impl Lookups {
    async fn start() -> anyhow::Result<Lookups> {
        use kube_hardener_testkit::registry::{Registry, TestImage};
        let registry = Registry::anonymous().map_err(anyhow::Error::msg)?;
        let mut review = REVIEW.to_owned();
        for (from, to) in [
            ("registry.example/team-a/web:1.27.3", "kh/web:1"),
            ("registry.example/platform/shipper:3.1.0", "kh/shipper:1"),
        ] {
            if !review.contains(from) {
                bail!("the captured review no longer names {from}");
            }
            registry
                .push(to, &TestImage::new(Some("65532"), &[]))
                .await
                .map_err(anyhow::Error::msg)?;
            review = review.replace(from, &format!("{}/{to}", registry.host));
        }
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("registry-ca.crt");
        std::fs::write(&ca, &registry.ca_pem)?;
        let env = vec![
            ("KUBE_HARDENER_IMAGES__RESOLVE", "true".to_owned()),
            ("KUBE_HARDENER_IMAGES__CA_FILE", ca.display().to_string()),
        ];
        Ok(Lookups {
            review,
            env,
            _registry: registry,
            _dir: dir,
        })
    }
}

/// What `images.resolve` costs a review once the cache holds the images: the
/// same review (its two images moved to a loopback registry, both `USER
/// 65532`) against a server with lookups off and one with lookups on, in
/// turn, twice, so drift of the machine shows up as a difference between the
/// two rounds rather than as a cost.
async fn resolve_phase(
    lookups: &Lookups,
    settings: &Settings,
    pki: &Pki,
    phase: Duration,
) -> anyhow::Result<()> {
    let (review, on) = (&lookups.review, &lookups.env);
    for round in 1..=2 {
        for (label, env) in [
            ("resolve off", Vec::new()),
            ("resolve on, cache warm", on.clone()),
        ] {
            let server = Server::start_with(settings, pki, 2, &env, review).await?;
            // Warm-up: connections, TLS sessions, and with lookups on the
            // first (cold) lookup of each image.
            saturate(&server, pki, settings.connections, Duration::from_secs(2)).await?;
            let Measured {
                mut sat,
                mut half,
                half_rate,
                rss_load,
                cpu_per_review_us,
                in_server,
                server_p99,
            } = measure(&server, pki, settings.connections, phase).await?;
            let answers: Vec<String> = http_get(server.health, "/metrics")
                .await?
                .lines()
                .filter(|line| line.starts_with("kube_hardener_image_answers_total{"))
                .filter(|line| !line.ends_with(" 0"))
                .map(|line| {
                    line.trim_start_matches("kube_hardener_image_answers_total")
                        .to_owned()
                })
                .collect();
            let exit = server.stop().await?;
            println!(
                "{label} (round {round}, workers=2): server CPU {cpu_per_review_us:.1} µs per review, \
                 {in_server:.1} µs mean in the handler | saturation {:.0} reviews/s (p50 {:.2} ms, \
                 p99 {:.2} ms, {} errors) | at {half_rate:.0}/s: p50 {:.3} ms, p99 {:.3} ms from send, \
                 handler p99 ≤ {server_p99} ({} errors) | RSS under load {:.1} MiB | image answers {answers:?} | \
                 SIGTERM exit: {exit}",
                sat.rate(),
                sat.percentile(0.50),
                sat.percentile(0.99),
                sat.errors,
                half.percentile(0.50),
                half.percentile(0.99),
                half.errors,
                kib_to_mib(rss_load),
            );
        }
    }
    Ok(())
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// A CA and a serving certificate for 127.0.0.1 in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    connector: TlsConnector,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("tls.crt"), cert.pem())?;
        std::fs::write(dir.path().join("tls.key"), key.serialize_pem())?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Pki {
            dir,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }
}

struct Server {
    child: Child,
    addr: SocketAddr,
    health: SocketAddr,
    /// The review every connection sends, as one HTTP request.
    request: Arc<Vec<u8>>,
    _log_dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    async fn start(settings: &Settings, pki: &Pki, workers: usize) -> anyhow::Result<Server> {
        Self::start_with(settings, pki, workers, &[], REVIEW).await
    }

    /// A server with extra `KUBE_HARDENER_*` configuration, loaded with `review`.
    async fn start_with(
        settings: &Settings,
        pki: &Pki,
        workers: usize,
        env: &[(&str, String)],
        review: &str,
    ) -> anyhow::Result<Server> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log_dir = tempfile::tempdir()?;
        let log = std::fs::File::create(log_dir.path().join("server.log"))?;
        let child = Command::new(&settings.bin)
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--health-listen")
            .arg(health.to_string())
            .arg("--tls-cert")
            .arg(pki.dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(pki.dir.path().join("tls.key"))
            .arg("--kubeconfig")
            .arg(&settings.kubeconfig)
            .env("KUBE_HARDENER_SERVER__WORKERS", workers.to_string())
            .env("KUBE_HARDENER_SERVER__LOG_LEVEL", &settings.log_level)
            .env("KUBE_HARDENER_SERVER__LOG_FORMAT", "json")
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", settings.bin.display()))?;
        let mut server = Server {
            child,
            addr,
            health,
            request: Arc::new(request_bytes(review)),
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("server exited during start-up: {status}");
            }
            if let Ok(response) = http_get(server.health, "/readyz").await
                && response.starts_with("HTTP/1.1 200")
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("server not ready within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let start-up allocations settle before the idle reading.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    fn hwm_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Cumulative bucket counts of the review-duration histogram, by bound.
    async fn histogram(&self) -> anyhow::Result<Vec<(String, f64)>> {
        let text = http_get(self.health, "/metrics").await?;
        Ok(text
            .lines()
            .filter_map(|line| {
                line.strip_prefix("kube_hardener_review_duration_seconds_bucket{le=\"")
            })
            .filter_map(|rest| {
                let (bound, count) = rest.split_once("\"} ")?;
                Some((bound.to_owned(), count.trim().parse().ok()?))
            })
            .collect())
    }

    /// Mean of the server's own review-duration histogram, in µs.
    async fn mean_review_us(&self) -> anyhow::Result<f64> {
        let sum: f64 = self
            .metric("kube_hardener_review_duration_seconds_sum")
            .await?
            .parse()?;
        let count: f64 = self
            .metric("kube_hardener_review_duration_seconds_count")
            .await?
            .parse()?;
        Ok(sum / count.max(1.0) * 1e6)
    }

    async fn metric(&self, name: &str) -> anyhow::Result<String> {
        let text = http_get(self.health, "/metrics").await?;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")).map(str::to_owned))
            .with_context(|| format!("metric {name} not exposed"))
    }

    /// SIGTERM, then the exit status (the server drains and exits 0).
    async fn stop(mut self) -> anyhow::Result<String> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.to_string());
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                return Ok("killed after 30 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} missing in /proc/{pid}/status"))
}

/// The smallest bucket bound holding quantile `q` of the reviews counted
/// between two histogram snapshots.
fn quantile_upper_bound(before: &[(String, f64)], after: &[(String, f64)], q: f64) -> String {
    let deltas: Vec<(&str, f64)> = after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound.as_str(), count - earlier)
        })
        .collect();
    let total = deltas.last().map_or(0.0, |(_, count)| *count);
    deltas
        .iter()
        .find(|(_, count)| *count >= total * q)
        .map_or_else(|| "?".to_owned(), |(bound, _)| format!("{bound} s"))
}

/// User + system CPU time the process has used, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks (100 per second).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("odd /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / 100.0)
}

/// Samples VmRSS every 200 ms and keeps the largest reading.
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut max = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(kib) = proc_status_kib(pid, "VmRSS:") {
                    max = max.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            max
        });
        RssSampler { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out)).await??;
    Ok(out)
}

/// One keep-alive HTTP/1.1 connection over TLS.
struct Connection {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
    request: Arc<Vec<u8>>,
}

impl Connection {
    async fn open(
        addr: SocketAddr,
        pki: &Pki,
        request: Arc<Vec<u8>>,
    ) -> anyhow::Result<Connection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = pki.connector.connect("localhost".try_into()?, tcp).await?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            request,
        })
    }

    /// Sends the review and reads the full response; true when it is a 200
    /// carrying a patch.
    async fn review(&mut self) -> anyhow::Result<bool> {
        self.stream.write_all(&self.request).await?;
        self.buf.clear();
        let mut chunk = [0_u8; 16 * 1024];
        loop {
            if let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..head_end])?;
                let status_ok = head.starts_with("HTTP/1.1 200");
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (key, value) = line.split_once(':')?;
                        key.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())
                            .flatten()
                    })
                    .context("response without Content-Length")?;
                let total = head_end + 4 + length;
                while self.buf.len() < total {
                    let read = self.stream.read(&mut chunk).await?;
                    if read == 0 {
                        bail!("connection closed mid-response");
                    }
                    self.buf.extend_from_slice(&chunk[..read]);
                }
                let ok = status_ok
                    && self.buf[head_end..total]
                        .windows(9)
                        .any(|w| w == b"\"patch\":\"");
                return Ok(ok);
            }
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("connection closed before the response head");
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Containers in each huge review: about 4 MiB of body, just under the
/// default `max_body_bytes`.
const HUGE_CONTAINERS: usize = 110_000;
/// Rate of the normal reviews measured next to the huge ones.
const NORMAL_RATE: f64 = 200.0;

/// Normal reviews at a steady rate, first alone and then while two
/// connections keep sending 4 MiB pods; the two p99s come from one run.
async fn huge_phase(server: &Server, pki: &Pki, phase: Duration) -> anyhow::Result<()> {
    let mut alone = paced(server, pki, 4, NORMAL_RATE, phase).await?;
    let huge = Arc::new(huge_request_bytes()?);
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..2 {
        let mut conn = Connection::open(server.addr, pki, Arc::clone(&huge)).await?;
        let stop = Arc::clone(&stop);
        senders.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match conn.review().await {
                    Ok(true) => done.push(sent.elapsed()),
                    _ => break,
                }
            }
            done
        }));
    }
    // Let both huge reviews get under way before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut next_to_huge = paced(server, pki, 4, NORMAL_RATE, phase).await?;
    stop.store(true, Ordering::Relaxed);
    let mut huge_times = Vec::new();
    for sender in senders {
        huge_times.extend(tokio::time::timeout(Duration::from_secs(60), sender).await??);
    }
    huge_times.sort_unstable();
    let huge_median = huge_times
        .get(huge_times.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!(
        "normal reviews at {NORMAL_RATE:.0}/s: alone p50 {:.3} ms, p99 {:.3} ms ({} errors) |          while 2 × {} B reviews ({HUGE_CONTAINERS} containers) are in flight: p50 {:.3} ms, p99 {:.3} ms,          max {:.3} ms ({} errors); {} huge reviews answered, median {huge_median:.0} ms each",
        alone.percentile(0.50),
        alone.percentile(0.99),
        alone.errors,
        huge.len(),
        next_to_huge.percentile(0.50),
        next_to_huge.percentile(0.99),
        next_to_huge.percentile(1.0),
        next_to_huge.errors,
        huge_times.len(),
    );
    Ok(())
}

fn huge_request_bytes() -> anyhow::Result<Vec<u8>> {
    let mut review: serde_json::Value = serde_json::from_str(REVIEW)?;
    let containers: Vec<serde_json::Value> = (0..HUGE_CONTAINERS)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "app:1"}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = serde_json::Value::from(containers);
    let body = serde_json::to_vec(&review)?;
    let mut request = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    Ok(request)
}

fn request_bytes(review: &str) -> Vec<u8> {
    let mut request = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        review.len()
    )
    .into_bytes();
    request.extend_from_slice(review.as_bytes());
    request
}

#[derive(Debug, Default)]
struct Run {
    elapsed: Duration,
    /// Microseconds per completed review.
    latencies: Vec<u64>,
    /// Paced runs only: microseconds from the moment a review was due, which
    /// adds the load generator's timer lateness (Tokio timers tick in ms).
    from_due: Vec<u64>,
    errors: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency in milliseconds at quantile `q` (0..=1).
    fn percentile(&mut self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)] as f64 / 1000.0
    }

    fn due_percentile(&mut self, q: f64) -> f64 {
        if self.from_due.is_empty() {
            return f64::NAN;
        }
        self.from_due.sort_unstable();
        let index = ((self.from_due.len() - 1) as f64 * q).round() as usize;
        self.from_due[index.min(self.from_due.len() - 1)] as f64 / 1000.0
    }

    fn merge(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.from_due.extend(other.from_due);
        self.errors += other.errors;
    }
}

impl Run {
    /// Records one answer; false when the connection is unusable.
    fn record(
        &mut self,
        result: anyhow::Result<bool>,
        sent: Instant,
        due: Option<tokio::time::Instant>,
    ) -> bool {
        match result {
            Ok(true) => {
                self.latencies.push(sent.elapsed().as_micros() as u64);
                if let Some(due) = due {
                    self.from_due.push(due.elapsed().as_micros() as u64);
                }
                true
            }
            Ok(false) => {
                self.errors += 1;
                true
            }
            Err(_) => {
                self.errors += 1;
                false
            }
        }
    }
}

/// Opens `connections` keep-alive connections, runs `each` on every one of
/// them concurrently until `duration` has passed, and merges the results.
async fn drive<F, Fut>(
    server: &Server,
    pki: &Pki,
    connections: usize,
    duration: Duration,
    each: F,
) -> anyhow::Result<Run>
where
    F: Fn(usize, Connection, Instant) -> Fut,
    Fut: std::future::Future<Output = Run>,
{
    let request = Arc::clone(&server.request);
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Connection::open(server.addr, pki, Arc::clone(&request)).await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let runs = futures::stream::iter(
        conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| each(i, conn, deadline)),
    )
    .buffer_unordered(connections)
    .collect::<Vec<_>>();
    let runs = tokio::time::timeout(duration + Duration::from_secs(30), runs).await?;
    let mut total = Run {
        elapsed: started.elapsed(),
        ..Run::default()
    };
    for run in runs {
        total.merge(run);
    }
    Ok(total)
}

/// Closed loop: every connection sends its next review as soon as the
/// previous answer arrived.
async fn saturate(
    server: &Server,
    pki: &Pki,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Run> {
    drive(
        server,
        pki,
        connections,
        duration,
        |_, mut conn, deadline| async move {
            let mut run = Run::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                if !run.record(conn.review().await, sent, None) {
                    break;
                }
            }
            run
        },
    )
    .await
}

/// Open loop at a fixed total rate: a review is due at a fixed schedule
/// whatever happened to the previous one, so a stall is not hidden by
/// sending less (coordinated omission).
async fn paced(
    server: &Server,
    pki: &Pki,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Run> {
    let per_connection = rate / connections as f64;
    if per_connection <= 0.0 || !per_connection.is_finite() {
        bail!("no rate to pace at");
    }
    let period = Duration::from_secs_f64(1.0 / per_connection);
    drive(
        server,
        pki,
        connections,
        duration,
        |i, mut conn, deadline| async move {
            let mut run = Run::default();
            // Spread the connections' schedules over one period.
            let offset = period.mul_f64(i as f64 / connections as f64);
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let due = ticker.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                if !run.record(conn.review().await, sent, Some(due)) {
                    break;
                }
            }
            run
        },
    )
    .await
}

/// Creates the namespaces (existing ones are kept), every tenth with a
/// kube-hardener opt-out annotation and all with labels, as clusters have.
async fn create_namespaces(kubeconfig: &Path, names: &[String]) -> anyhow::Result<usize> {
    let count = names.len();
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let api: Api<Namespace> = Api::all(client);
    let started = Instant::now();
    let results = futures::stream::iter(names.iter().enumerate().map(|(i, name)| {
        let api = api.clone();
        async move {
            let mut namespace = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"team": format!("t{}", i % 50)}},
            });
            if i % 10 == 0 {
                namespace["metadata"]["annotations"] =
                    serde_json::json!({"kube-hardener.io/skip": "readOnlyRootFilesystem"});
            }
            let namespace: Namespace = serde_json::from_value(namespace)?;
            match api.create(&PostParams::default(), &namespace).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(error) => Err(anyhow::Error::from(error)),
            }
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<anyhow::Result<()>>>();
    let results = tokio::time::timeout(Duration::from_secs(600), results).await?;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
        bail!("{failed} of {count} namespaces not created, e.g.: {error:#}");
    }
    if count > 1 {
        println!(
            "created {count} namespaces in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(count)
}
