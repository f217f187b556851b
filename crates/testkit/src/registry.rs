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

impl SilentRegistry {
    /// Starts it on the current tokio runtime.
    pub async fn start() -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding a loopback port: {e}"))?;
        let host = listener
            .local_addr()
            .map_err(|e| format!("the silent registry's address: {e}"))?
            .to_string();
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
