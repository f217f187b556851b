//! A webhook on loopback with real TLS, certificates from a throw-away CA, a
//! namespace cache fed watch events directly, and a minimal HTTP/1.1
//! client that can also misbehave (partial headers, partial bodies).

// Test fixtures: a failure here is a failed test, so panicking is the point.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::core::metadata::PartialObjectMetaExt as _;
use kube::runtime::watcher::Event;
use kube_hardener_config::Config;
use kube_hardener_server::{
    NamespaceCache, NamespaceMeta, NamespaceSource, ServeError, ShutdownTrigger, Webhook,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A CA and the serving pairs it issues, in a temp dir laid out either as
/// plain files or like a Kubernetes Secret volume (`..data` symlink).
pub struct Certs {
    pub dir: tempfile::TempDir,
    ca: kube_hardener_testkit::Pki,
    pub ca_der: Vec<u8>,
}

impl Certs {
    pub fn new() -> Certs {
        let ca = kube_hardener_testkit::Pki::new().unwrap();
        let ca_der = ca.ca_der().to_vec();
        Certs {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_der,
        }
    }

    /// A serving pair for localhost/127.0.0.1 with the given serial.
    pub fn issue(&self, serial: u64) -> (String, String) {
        self.ca
            .serving_for(
                "kube-hardener",
                &["localhost", "kube-hardener.kube-hardener.svc", "127.0.0.1"],
                serial,
            )
            .unwrap()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Plain files, replaced in place (what `kubectl cp` or an editor does).
    pub fn write_plain(&self, serial: u64) {
        let (cert, key) = self.issue(serial);
        std::fs::write(self.cert_path(), cert).unwrap();
        std::fs::write(self.key_path(), key).unwrap();
    }

    /// The kubelet's Secret volume layout: `tls.crt -> ..data/tls.crt`,
    /// `..data -> ..<timestamp>`; an update writes a new timestamped dir and
    /// renames a fresh symlink over `..data` in one step.
    pub fn write_secret_volume(&self, serial: u64) {
        let (cert, key) = self.issue(serial);
        self.swap_secret_volume(serial, &cert, &key);
    }

    pub fn swap_secret_volume(&self, serial: u64, cert: &str, key: &str) {
        let root = self.dir.path();
        let version = format!("..2026_11_27_{serial}");
        std::fs::create_dir(root.join(&version)).unwrap();
        std::fs::write(root.join(&version).join("tls.crt"), cert).unwrap();
        std::fs::write(root.join(&version).join("tls.key"), key).unwrap();
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        let previous = std::fs::read_link(root.join("..data")).ok();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        for name in ["tls.crt", "tls.key"] {
            if std::fs::symlink_metadata(root.join(name)).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), root.join(name))
                    .unwrap();
            }
        }
        if let Some(previous) = previous {
            std::fs::remove_dir_all(root.join(previous)).unwrap();
        }
    }

    pub fn connector(&self) -> TlsConnector {
        self.connector_with(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    pub fn connector_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// A namespace as the metadata watch delivers it.
pub fn namespace(name: &str, annotations: &[(&str, &str)]) -> NamespaceMeta {
    let mut meta = kube::core::ObjectMeta {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    if !annotations.is_empty() {
        meta.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        );
    }
    meta.into_response_partial()
}

pub fn test_config(certs: &Certs) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".to_owned();
    config.server.health_listen = "127.0.0.1:0".to_owned();
    config.server.tls_cert = certs.cert_path();
    config.server.tls_key = certs.key_path();
    config.server.workers = 1;
    config.server.shutdown_timeout_secs = 10;
    config
}

pub struct TestServer {
    pub webhook: SocketAddr,
    pub health: SocketAddr,
    pub certs: Certs,
    pub writer: NamespaceCache,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// Builder: config tweaks and the namespaces in the store.
pub struct Setup {
    pub certs: Certs,
    pub config: Config,
    pub namespaces: Vec<NamespaceMeta>,
    pub synced: bool,
    pub fallback: Option<kube::Client>,
}

impl Setup {
    pub fn new() -> Setup {
        let certs = Certs::new();
        certs.write_plain(1);
        let config = test_config(&certs);
        Setup {
            certs,
            config,
            namespaces: vec![namespace("team-a", &[])],
            synced: true,
            fallback: None,
        }
    }

    pub async fn start(self) -> TestServer {
        let writer = NamespaceCache::default();
        if self.synced {
            writer.apply_watcher_event(&Event::Init);
            for ns in self.namespaces {
                writer.apply_watcher_event(&Event::InitApply(ns));
            }
            writer.apply_watcher_event(&Event::InitDone);
        }
        let timeout = Duration::from_millis(self.config.server.namespace_lookup_timeout_ms);
        let source = NamespaceSource::from_cache(writer.clone(), self.fallback, timeout);
        let webhook = Webhook::start(self.config, source).await.unwrap();
        let (webhook_addr, health_addr) = (webhook.webhook_addr(), webhook.health_addr());
        let trigger = webhook.shutdown_trigger();
        let task = tokio::spawn(webhook.wait());
        TestServer {
            webhook: webhook_addr,
            health: health_addr,
            certs: self.certs,
            writer,
            trigger,
            task,
        }
    }
}

pub async fn start_default() -> TestServer {
    Setup::new().start().await
}

/// Why the webhook refuses to start with `config` (and no namespaces).
pub async fn start_error(config: Config) -> String {
    let source =
        NamespaceSource::from_cache(NamespaceCache::default(), None, Duration::from_millis(10));
    match Webhook::start(config, source).await {
        Ok(_) => panic!("the webhook started"),
        Err(error) => error.to_string(),
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

impl TestServer {
    pub async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.webhook).await.unwrap();
        self.certs
            .connector()
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap()
    }

    /// Sends one request with `Connection: close` and reads the response.
    pub async fn request(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let mut stream = self.tls().await;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        read_response(&mut stream).await
    }

    pub async fn post_review(&self, review: &serde_json::Value) -> Response {
        self.request("POST", "/mutate", &serde_json::to_vec(review).unwrap())
            .await
    }

    pub async fn get_health(&self, path: &str) -> Response {
        let mut stream = TcpStream::connect(self.health).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        read_response(&mut stream).await
    }

    pub async fn metrics(&self) -> String {
        let response = self.get_health("/metrics").await;
        assert_eq!(response.status, 200);
        response.text()
    }

    /// Serial number (hex) of the certificate a new TLS client is served.
    pub async fn served_serial(&self) -> String {
        let stream = self.tls().await;
        let (_, connection) = stream.get_ref();
        let leaf = &connection.peer_certificates().unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
        cert.raw_serial_as_string()
    }

    pub fn shutdown(&self) {
        self.trigger.shutdown();
    }

    pub async fn stop(self) -> Result<(), ServeError> {
        self.trigger.shutdown();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server did not stop in time")
            .unwrap()
    }
}

pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Response {
    let mut raw = Vec::new();
    // A peer that closes without TLS close_notify still delivered its bytes.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("no complete response within 10 s");
    parse_response(&raw)
}

/// Reads exactly one response (head and `Content-Length` body) from a
/// keep-alive connection; `None` when the server closes first.
pub async fn read_one_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Option<Response> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => raw.push(byte[0]),
            _ => return None,
        }
    }
    let head = parse_response(&raw);
    let length: usize = head
        .header("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Response { body, ..head })
}

/// A `POST /mutate` request for `body`, kept alive.
pub fn keep_alive_request(body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some((_, length)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        body.truncate(length.parse().unwrap());
    }
    Response {
        status,
        headers,
        body,
    }
}

/// Value of the sample named `series` (name and labels) in a metrics text;
/// 0 when the series has not been created yet.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Asserts the value of one series, which must be exported, showing every
/// metric when it differs.
pub fn assert_metric(metrics: &str, series: &str, expected: f64) {
    let exported = metrics.lines().any(|line| {
        line.strip_prefix(series)
            .is_some_and(|rest| rest.starts_with(' '))
    });
    assert!(exported, "{series} is not exported in\n{metrics}");
    assert_eq!(
        metric_value(metrics, series),
        expected,
        "{series} in\n{metrics}"
    );
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    kube_hardener_testkit::eventually("the condition", limit, || {
        let holds = check();
        async move {
            if holds.await {
                Ok(())
            } else {
                Err(String::new())
            }
        }
    })
    .await
    .is_ok()
}
