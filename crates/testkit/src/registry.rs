//! A real OCI registry on loopback for tests: Debian's `docker-registry`
//! (distribution 2.8) with TLS from a throw-away CA, optionally behind basic
//! auth, and helpers that push the test images into it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, Config, ImageLayer};
use oci_client::manifest::{ImageIndexEntry, OciImageIndex, Platform};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::Pki;

/// The `/etc/passwd` of the test images: root, `app` (UID 10001), and `zero`
/// (another name for UID 0).
pub const PASSWD: &[u8] =
    b"root:x:0:0:root:/root:/bin/sh\napp:x:10001:10001::/app:/bin/sh\nzero:x:0:0::/:/bin/sh\n";

/// A "registry" on loopback that accepts connections and never answers: the
/// worst registry there is. Stops accepting when dropped.
#[derive(Debug)]
pub struct SilentRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    task: tokio::task::JoinHandle<()>,
}

/// A listener on a free loopback port, and its `127.0.0.1:PORT`.
async fn bind_loopback() -> Result<(tokio::net::TcpListener, String), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding a loopback port: {e}"))?;
    let host = listener
        .local_addr()
        .map_err(|e| format!("the loopback listener's address: {e}"))?
        .to_string();
    Ok((listener, host))
}

impl SilentRegistry {
    /// Starts it on the current tokio runtime.
    pub async fn start() -> Result<Self, String> {
        let (listener, host) = bind_loopback().await?;
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        Ok(SilentRegistry { host, task })
    }
}

impl Drop for SilentRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request as a [`ScriptedRegistry`] saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path and query.
    pub target: String,
    /// The `Host` header.
    pub host: String,
    pub authorization: Option<String>,
}

/// What a [`ScriptedRegistry`] sends back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// The body of a [`Reply`].
#[derive(Debug, Clone)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `Content-Length` claims this many bytes; none are sent.
    Claimed(u64),
    /// No `Content-Length`: zeros until the client hangs up, at most this many.
    Endless(u64),
}

impl Reply {
    pub fn new(status: u16, headers: &[(&str, &str)], body: Body) -> Self {
        Reply {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            body,
        }
    }

    pub fn json(status: u16, media_type: &str, body: &[u8]) -> Self {
        Self::new(
            status,
            &[("content-type", media_type)],
            Body::Bytes(body.to_vec()),
        )
    }

    /// A `307` to `location`.
    pub fn redirect(location: &str) -> Self {
        Self::new(307, &[("location", location)], Body::Bytes(Vec::new()))
    }
}

type Route = dyn Fn(&Request) -> Reply + Send + Sync;

/// A plain-HTTP "registry" on loopback that answers each request with what
/// its route says: for what real registries do rarely or hostile ones do on
/// purpose (redirects, endless bodies, token services). One request per
/// connection; every read and write is bounded in size and time.
#[derive(Debug)]
pub struct ScriptedRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Every request seen, in order.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedRegistry {
    /// Starts it on the current tokio runtime.
    pub async fn start(
        route: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let (listener, host) = bind_loopback().await?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let route: std::sync::Arc<Route> = std::sync::Arc::new(route);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (route, log) = (route.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        serve_one(socket, &*route, &log),
                    )
                    .await;
                });
            }
        });
        Ok(ScriptedRegistry { host, seen, task })
    }

    /// The targets requested so far.
    pub fn targets(&self) -> Vec<String> {
        self.seen
            .lock()
            .map(|seen| {
                seen.iter()
                    .map(|r| format!("{} {}", r.method, r.target))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ScriptedRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut socket: tokio::net::TcpStream,
    route: &Route,
    log: &std::sync::Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = socket.read(&mut buffer).await?;
        if read == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (first.next(), first.next());
    let headers: Vec<(&str, &str)> = lines.filter_map(|line| line.split_once(':')).collect();
    let header = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.trim().to_owned())
    };
    let request = Request {
        method: method.unwrap_or_default().to_owned(),
        target: target.unwrap_or_default().to_owned(),
        host: header("host").unwrap_or_default(),
        authorization: header("authorization"),
    };
    let reply = route(&request);
    if let Ok(mut log) = log.lock() {
        log.push(request.clone());
    }
    let mut out = format!(
        "HTTP/1.1 {} Scripted\r\nconnection: close\r\n",
        reply.status
    );
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    match &reply.body {
        Body::Bytes(bytes) => out.push_str(&format!("content-length: {}\r\n", bytes.len())),
        Body::Claimed(length) => out.push_str(&format!("content-length: {length}\r\n")),
        Body::Endless(_) => {}
    }
    out.push_str("\r\n");
    socket.write_all(out.as_bytes()).await?;
    if request.method != "HEAD" {
        match &reply.body {
            Body::Bytes(bytes) => socket.write_all(bytes).await?,
            Body::Claimed(_) => {}
            Body::Endless(limit) => {
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0u64;
                while sent < *limit {
                    socket.write_all(&chunk).await?;
                    sent += chunk.len() as u64;
                }
            }
        }
    }
    socket.shutdown().await
}

/// The registry binary: `KUBE_HARDENER_REGISTRY_BIN`, else Debian's.
fn registry_bin() -> PathBuf {
    std::env::var_os("KUBE_HARDENER_REGISTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docker-registry"))
}

/// A running registry, stopped when dropped.
pub struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, the host part of image references.
    pub host: String,
    /// The CA that signed its serving certificate.
    pub ca_pem: String,
    /// User and password when started with [`Registry::with_basic_auth`].
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .finish()
    }
}

impl Registry {
    /// An anonymous registry.
    pub fn anonymous() -> Result<Self, String> {
        Self::start(None)
    }

    /// A registry that wants `user`/`password` (htpasswd, bcrypt).
    pub fn with_basic_auth(user: &str, password: &str) -> Result<Self, String> {
        Self::start(Some((user.to_owned(), password.to_owned())))
    }

    fn start(credentials: Option<(String, String)>) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let pki = Pki::new().map_err(|e| format!("test CA: {e}"))?;
        let (cert, key) = pki
            .serving("registry")
            .map_err(|e| format!("certificate: {e}"))?;
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok::<_, String>(path)
        };
        let cert_path = write("tls.crt", &cert)?;
        let key_path = write("tls.key", &key)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free loopback port: {e}"))?
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {}\n    key: {}\n",
            dir.path().join("data").display(),
            cert_path.display(),
            key_path.display(),
        );
        if let Some((user, password)) = &credentials {
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .map_err(|e| format!("running htpasswd (Debian: apache2-utils): {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            let htpasswd = write("htpasswd", &String::from_utf8_lossy(&output.stdout))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kube-hardener-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = write("config.yml", &config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(|e| format!("registry log: {e}"))?;
        let child = Command::new(registry_bin())
            .arg("serve")
            .arg(&config_path)
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "starting {} (Debian: docker-registry): {e}",
                    registry_bin().display()
                )
            })?;
        let registry = Registry {
            child,
            host: format!("127.0.0.1:{port}"),
            ca_pem: pki.ca_pem().to_owned(),
            credentials,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "the registry on {} did not listen within 20 s",
                    registry.host
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// An oci-client that trusts this registry's CA.
    pub fn client(&self) -> Client {
        // oci-client's rustls needs a process-wide provider (as in the resolver).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(ClientConfig {
            extra_root_certificates: vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: self.ca_pem.as_bytes().to_vec(),
            }],
            ..ClientConfig::default()
        })
    }

    fn auth(&self) -> RegistryAuth {
        match &self.credentials {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// `host/repository:tag`.
    pub fn image(&self, repository_tag: &str) -> String {
        format!("{}/{repository_tag}", self.host)
    }

    /// Pushes a one-platform image; returns its manifest digest.
    pub async fn push(&self, repository_tag: &str, image: &TestImage) -> Result<String, String> {
        let reference: Reference = self
            .image(repository_tag)
            .parse()
            .map_err(|e| format!("{repository_tag}: {e}"))?;
        let layers: Vec<ImageLayer> = image
            .layers
            .iter()
            .map(|layer| ImageLayer::oci_v1(layer.clone(), None))
            .collect();
        let config = Config::oci_v1(image.config_json().into_bytes(), None);
        let response = self
            .client()
            .push(&reference, &layers, config, &self.auth(), None)
            .await
            .map_err(|e| format!("pushing {repository_tag}: {e}"))?;
        digest_of(&response.manifest_url)
    }

    /// Pushes an image index over images already pushed (by digest).
    pub async fn push_index(
        &self,
        repository_tag: &str,
        platforms: &[(&str, &str)],
    ) -> Result<String, String> {
        let reference: Reference = self
            .image(repository_tag)
            .parse()
            .map_err(|e| format!("{repository_tag}: {e}"))?;
        let manifests = platforms
            .iter()
            .map(|(architecture, digest)| {
                let platform: Platform = serde_json::from_value(serde_json::json!({
                    "architecture": architecture, "os": "linux"}))
                .map_err(|e| e.to_string())?;
                Ok(ImageIndexEntry {
                    media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
                    digest: (*digest).to_owned(),
                    size: 0,
                    platform: Some(platform),
                    annotations: None,
                    artifact_type: None,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let client = self.client();
        // Sizes must be right: read each manifest back.
        let mut sized = Vec::new();
        for mut entry in manifests {
            let by_digest = Reference::with_digest(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                entry.digest.clone(),
            );
            let (raw, _) = client
                .pull_manifest_raw(
                    &by_digest,
                    &self.auth(),
                    &["application/vnd.oci.image.manifest.v1+json"],
                )
                .await
                .map_err(|e| format!("reading back {}: {e}", entry.digest))?;
            entry.size = raw.len() as i64;
            sized.push(entry);
        }
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".to_owned()),
            manifests: sized,
            artifact_type: None,
            annotations: None,
        };
        let url = client
            .push_manifest_list(&reference, &self.auth(), index)
            .await
            .map_err(|e| format!("pushing index {repository_tag}: {e}"))?;
        digest_of(&url)
    }

    /// Pushes a raw manifest (to claim sizes a real one would not).
    pub async fn push_raw_manifest(
        &self,
        repository_tag: &str,
        manifest: &serde_json::Value,
    ) -> Result<(), String> {
        let reference: Reference = self
            .image(repository_tag)
            .parse()
            .map_err(|e| format!("{repository_tag}: {e}"))?;
        let client = self.client();
        client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth())
            .await;
        let content_type =
            http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json");
        client
            .push_manifest_raw(
                &reference,
                serde_json::to_vec(manifest).map_err(|e| e.to_string())?,
                content_type,
            )
            .await
            .map_err(|e| format!("pushing manifest {repository_tag}: {e}"))?;
        Ok(())
    }

    /// Pushes one blob; returns its digest.
    pub async fn push_blob(&self, repository: &str, data: Vec<u8>) -> Result<String, String> {
        let reference: Reference = self
            .image(&format!("{repository}:blob"))
            .parse()
            .map_err(|e| format!("{repository}: {e}"))?;
        let digest = sha256_digest(&data);
        let client = self.client();
        client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth())
            .await;
        client
            .push_blob(&reference, data, &digest)
            .await
            .map_err(|e| format!("pushing a blob to {repository}: {e}"))?;
        Ok(digest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn digest_of(manifest_url: &str) -> Result<String, String> {
    manifest_url
        .rsplit('/')
        .next()
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no digest in {manifest_url}"))
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An image to push: its config's USER and its layers (plain tars).
#[derive(Debug, Clone)]
pub struct TestImage {
    pub user: Option<String>,
    pub architecture: String,
    pub layers: Vec<Vec<u8>>,
}

impl TestImage {
    /// One layer with these files.
    pub fn new(user: Option<&str>, files: &[(&str, &[u8])]) -> Self {
        TestImage {
            user: user.map(str::to_owned),
            architecture: "amd64".to_owned(),
            layers: vec![layer(files)],
        }
    }

    pub fn config_json(&self) -> String {
        let mut config = serde_json::json!({"Env": ["PATH=/bin"]});
        if let Some(user) = &self.user {
            config["User"] = serde_json::Value::String(user.clone());
        }
        serde_json::json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": self.layers.iter().map(|l| sha256_digest(l)).collect::<Vec<_>>()},
        })
        .to_string()
    }
}

/// A plain tar layer with these files.
pub fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        // Writing into a Vec cannot fail but for a bad path, which tests choose.
        let _ = builder.append_data(&mut header, path, *data);
    }
    builder.into_inner().unwrap_or_default()
}
