//! A real `kube-hardener serve` process on loopback ports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::{Pki, Target};

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `kube-hardener` binary under test: `KUBE_HARDENER_BIN` when set (scripts
/// and the benchmark use a release build), otherwise the workspace's debug build,
/// built once per test process so the suite never runs a stale binary.
pub fn kube_hardener_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(|error| anyhow!(error))
}

fn locate_or_build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("KUBE_HARDENER_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("KUBE_HARDENER_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "kube-hardener",
            "--bin",
            "kube-hardener",
        ])
        .current_dir(&root)
        .output()
        .context("running cargo build -p kube-hardener")?;
    if !output.status.success() {
        bail!(
            "cargo build -p kube-hardener failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("kube-hardener");
    if !bin.is_file() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// A command running the binary under test. Every `KUBE_HARDENER_*` variable
/// is configuration to kube-hardener (an unknown key stops it), so the suite's
/// own variables (`KUBE_HARDENER_BIN`, `KUBE_HARDENER_E2E_WEBHOOK`, ...) are
/// removed from its environment.
pub fn kube_hardener_command() -> Result<Command> {
    let mut command = Command::new(kube_hardener_bin()?);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KUBE_HARDENER_") {
            command.env_remove(key);
        }
    }
    Ok(command)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// How the server under test is configured.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// A configuration file layered over the embedded default (empty: none).
    pub config_toml: String,
    /// Extra environment, e.g. `KUBE_HARDENER_HARDENING__MUTATE_WORKLOADS=true`.
    pub env: Vec<(String, String)>,
    /// Serve this certificate instead of one from the harness's own CA.
    pub certificate: Option<Certificate>,
    /// Watch namespaces with this kubeconfig instead of `KUBECONFIG`'s.
    pub kubeconfig: Option<PathBuf>,
}

/// PEM serving certificate, its key and the CA that signed it.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// A running `kube-hardener serve`, killed when dropped.
#[derive(Debug)]
pub struct LocalWebhook {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pki: Pki,
    ca_pem: String,
    generation: u32,
    pub port: u16,
    pub health_port: u16,
}

impl LocalWebhook {
    /// The value of one series (`name{labels}` exactly as exported) in a
    /// `/metrics` text; 0 when absent.
    pub fn metric(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The text of its `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.health_port);
        Ok(reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(url)
            .send()
            .await?
            .text()
            .await?)
    }

    /// Starts the server and waits until `/readyz` answers 200 (namespace watch synced).
    pub async fn start(options: ServerOptions) -> Result<Self> {
        let mut server = Self::spawn(options)?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// Starts the server without waiting for readiness, for tests of the
    /// time before the namespace cache has synced.
    pub fn spawn(options: ServerOptions) -> Result<Self> {
        let bin = kube_hardener_bin()?;
        let kubeconfig = match &options.kubeconfig {
            Some(path) => path.clone(),
            None => std::env::var_os("KUBECONFIG")
                .map(PathBuf::from)
                .context("KUBECONFIG is not set; the webhook needs it for its namespace watch")?,
        };
        let dir = tempfile::tempdir().context("creating the server's temporary directory")?;
        let pki = Pki::new()?;
        let mut server = LocalWebhook {
            child: None,
            dir,
            ca_pem: pki.ca_pem().to_owned(),
            pki,
            generation: 0,
            port: free_port()?,
            health_port: free_port()?,
        };
        match &options.certificate {
            Some(certificate) => {
                server.ca_pem = certificate.ca_pem.clone();
                server.install(&certificate.cert_pem, &certificate.key_pem)?;
            }
            None => server.rotate()?,
        }

        let mut command = kube_hardener_command()?;
        command.arg("serve");
        if !options.config_toml.is_empty() {
            let config = server.dir.path().join("config.toml");
            std::fs::write(&config, &options.config_toml).context("writing config.toml")?;
            command.arg("--config").arg(config);
        }
        let tls = server.dir.path().join("tls");
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", server.port))
            .arg("--health-listen")
            .arg(format!("127.0.0.1:{}", server.health_port))
            .arg("--tls-cert")
            .arg(tls.join("tls.crt"))
            .arg("--tls-key")
            .arg(tls.join("tls.key"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("KUBE_HARDENER_SERVER__LOG_FORMAT", "text")
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let log = std::fs::File::create(server.log_path()).context("creating server.log")?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log);
        server.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {} serve", bin.display()))?,
        );
        Ok(server)
    }

    /// The exit status if the server has stopped (or was stopped), else `None`.
    pub fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("polling kube-hardener serve"),
            None => bail!("kube-hardener serve was stopped"),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://127.0.0.1:{}/readyz", self.health_port);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "kube-hardener serve exited with {status} during start-up:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{url} not ready within 60 s; server log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How the API server reaches this server.
    pub fn target(&self) -> Target {
        Target::loopback(self.port, &self.ca_pem)
    }

    /// Issues a new serving certificate from the same CA and swaps it in the
    /// way the kubelet updates a Secret volume: files in a fresh directory,
    /// then one atomic rename of the `..data` symlink the file names point through.
    pub fn rotate(&mut self) -> Result<()> {
        let (cert, key) = self
            .pki
            .serving(&format!("kube-hardener e2e #{}", self.generation + 1))?;
        self.ca_pem = self.pki.ca_pem().to_owned();
        self.install(&cert, &key)
    }

    /// Swaps in a certificate made elsewhere (by `kube-hardener certs`, say)
    /// the way the kubelet updates a mounted Secret; `ca_pem` signed it.
    pub fn serve_certificate(&mut self, cert: &str, key: &str, ca_pem: &str) -> Result<()> {
        self.ca_pem = ca_pem.to_owned();
        self.install(cert, key)
    }

    fn install(&mut self, cert: &str, key: &str) -> Result<()> {
        self.generation += 1;
        let tls = self.dir.path().join("tls");
        let version = format!("..gen{}", self.generation);
        let version_dir = tls.join(&version);
        std::fs::create_dir_all(&version_dir).context("creating the certificate directory")?;
        std::fs::write(version_dir.join("tls.crt"), cert)?;
        std::fs::write(version_dir.join("tls.key"), key)?;
        let staging = tls.join("..data_tmp");
        let _ = std::fs::remove_file(&staging);
        std::os::unix::fs::symlink(&version, &staging)?;
        std::fs::rename(&staging, tls.join("..data")).context("swapping the ..data symlink")?;
        for file in ["tls.crt", "tls.key"] {
            let link = tls.join(file);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(file), &link)?;
            }
        }
        if self.generation > 1 {
            let previous = tls.join(format!("..gen{}", self.generation - 1));
            std::fs::remove_dir_all(previous).context("removing the previous certificate")?;
        }
        Ok(())
    }

    /// The CA that signs every certificate this server is given.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The PEM certificate currently on disk.
    pub fn current_cert_pem(&self) -> Result<String> {
        std::fs::read_to_string(self.dir.path().join("tls").join("tls.crt"))
            .context("reading the current certificate")
    }

    /// Kills the server (the "webhook down" case); idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalWebhook {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- kube-hardener serve log ----\n{}", self.log());
        }
    }
}
