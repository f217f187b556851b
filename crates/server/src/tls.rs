//! The serving certificate: loaded from PEM files, swapped atomically when the
//! files change, never replaced by a pair that does not load.
//!
//! Kubernetes updates Secret volumes by re-pointing a `..data` symlink, so
//! watching the files' paths for events misses rotations. Instead the content
//! behind the paths (symlinks followed) is read every poll interval and
//! compared with what was last seen; only a changed pair is parsed.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::{Metrics, RELOAD_FAILED, RELOAD_OK, ResultLabels};

/// A certificate/key pair that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} is not valid PEM: {cause}", path.display())]
    Pem {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key", path.display())]
    NoKey { path: PathBuf },
    #[error("the key in {} cannot be used with the certificate in {}: {cause}", key.display(), cert.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
    #[error("the certificate in {} cannot be parsed: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
    #[error("server.client_ca {}: {message}", path.display())]
    ClientCa { path: PathBuf, message: String },
}

/// A pair that loaded: ready to serve, and its expiry for the metric.
#[derive(Debug)]
pub(crate) struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    pub not_after_unix: i64,
}

/// Parses a PEM certificate chain and private key and checks that they belong
/// together, so a mismatched or half-written pair never reaches a handshake.
pub(crate) fn load_pair(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<LoadedPair, TlsError> {
    let chain = rustls_pemfile::certs(&mut BufReader::new(cert_pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| TlsError::Pem {
            path: cert_path.to_owned(),
            cause,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let not_after_unix = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|error| TlsError::Certificate {
            path: cert_path.to_owned(),
            message: error.to_string(),
        })?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = rustls_pemfile::private_key(&mut BufReader::new(key_pem))
        .map_err(|cause| TlsError::Pem {
            path: key_path.to_owned(),
            cause,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.to_owned(),
        })?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|cause| TlsError::Unusable {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            cause,
        })?;
    // `from_der` lets a key whose public half it cannot derive through; demand
    // a positive match instead.
    certified.keys_match().map_err(|cause| TlsError::Unusable {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        cause,
    })?;
    Ok(LoadedPair {
        key: Arc::new(certified),
        not_after_unix,
    })
}

/// Reads and checks a pair without serving it, so start-up can fail on a bad
/// Secret before anything else (such as connecting to the API server) happens.
pub(crate) fn check_files(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|cause| TlsError::Read {
            path: path.to_owned(),
            cause,
        })
    };
    let provider = rustls::crypto::ring::default_provider();
    load_pair(
        cert_path,
        &read(cert_path)?,
        key_path,
        &read(key_path)?,
        &provider,
    )
    .map(|_| ())
}

/// Verifies client certificates against the CA bundle at `path`.
fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let problem = |message: String| TlsError::ClientCa {
        path: path.to_owned(),
        message,
    };
    let pem = std::fs::read(path).map_err(|error| problem(format!("cannot read it: {error}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(pem.as_slice())) {
        let cert = cert.map_err(|error| problem(format!("not valid PEM: {error}")))?;
        roots
            .add(cert)
            .map_err(|error| problem(format!("not a usable CA certificate: {error}")))?;
    }
    if roots.is_empty() {
        return Err(problem("holds no PEM certificate".to_owned()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(provider),
    )
    .build()
    .map_err(|error| problem(error.to_string()))
}

/// The names a verified client certificate carries: its subject common
/// names and DNS subject alternative names.
pub(crate) fn client_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

/// Serves whatever pair is current; swapped by [`CertReloader`].
#[derive(Debug)]
pub(crate) struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    fn new(key: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: RwLock::new(key),
        }
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means another thread panicked while holding
        // it; the Arc inside is always whole, so keep using it.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// Watches the certificate and key files and feeds changes to the resolver.
#[derive(Debug)]
pub(crate) struct CertReloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    /// Content of the last pair looked at, loaded or not: a broken pair is
    /// reported once, not at every poll.
    last_seen: (Vec<u8>, Vec<u8>),
}

impl CertReloader {
    /// Loads the initial pair; a server must not start with a pair it
    /// cannot serve.
    pub fn start(
        cert_path: &Path,
        key_path: &Path,
        client_ca: Option<&Path>,
        metrics: Arc<Metrics>,
    ) -> Result<(CertReloader, rustls::ServerConfig), TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_pem = std::fs::read(cert_path).map_err(|cause| TlsError::Read {
            path: cert_path.to_owned(),
            cause,
        })?;
        let key_pem = std::fs::read(key_path).map_err(|cause| TlsError::Read {
            path: key_path.to_owned(),
            cause,
        })?;
        let pair = load_pair(cert_path, &cert_pem, key_path, &key_pem, &provider)?;
        metrics.cert_expiry.set(pair.not_after_unix as f64);
        let resolver = Arc::new(CertResolver::new(pair.key));
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, &provider)?),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        // HTTP/1.1 only: HTTP/2 towards the API server measured slower
        // (BENCHMARKS.md), and one protocol keeps the deadlines simple.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let reloader = CertReloader {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            resolver,
            metrics,
            last_seen: (cert_pem, key_pem),
        };
        Ok((reloader, config))
    }

    /// Reads both files and swaps in the pair when it changed and loads.
    /// Returns whether a new pair is now being served.
    pub async fn poll(&mut self) -> bool {
        let (cert_pem, key_pem) = match (
            tokio::fs::read(&self.cert_path).await,
            tokio::fs::read(&self.key_path).await,
        ) {
            (Ok(cert), Ok(key)) => (cert, key),
            // Mid-rotation a file can be briefly missing; the next poll sees
            // the finished state. Nothing is counted for a read that never
            // produced content.
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, "certificate files not readable; keeping the current pair");
                return false;
            }
        };
        if (cert_pem.as_slice(), key_pem.as_slice())
            == (self.last_seen.0.as_slice(), self.last_seen.1.as_slice())
        {
            return false;
        }
        let result = load_pair(
            &self.cert_path,
            &cert_pem,
            &self.key_path,
            &key_pem,
            &self.provider,
        );
        self.last_seen = (cert_pem, key_pem);
        match result {
            Ok(pair) => {
                self.resolver.set(pair.key);
                self.metrics.cert_expiry.set(pair.not_after_unix as f64);
                self.metrics
                    .cert_reloads
                    .get_or_create(&ResultLabels { result: RELOAD_OK })
                    .inc();
                tracing::info!(
                    cert = %self.cert_path.display(),
                    not_after = pair.not_after_unix,
                    "serving a new certificate"
                );
                true
            }
            Err(error) => {
                self.metrics
                    .cert_reloads
                    .get_or_create(&ResultLabels {
                        result: RELOAD_FAILED,
                    })
                    .inc();
                tracing::error!(%error, "new certificate pair rejected; still serving the previous one");
                false
            }
        }
    }

    pub async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.poll().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn load(cert: &str, key: &str) -> Result<LoadedPair, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        load_pair(
            Path::new("tls.crt"),
            cert.as_bytes(),
            Path::new("tls.key"),
            key.as_bytes(),
            &provider,
        )
    }

    #[test]
    fn accepts_a_matching_pair_and_reads_its_expiry() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["svc".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 3, 4);
        let cert = params.self_signed(&key).unwrap();
        let loaded = load(&cert.pem(), &key.serialize_pem()).unwrap();
        // 2031-03-04T00:00:00Z
        assert_eq!(loaded.not_after_unix, 1_930_348_800);
    }

    #[test]
    fn rejects_broken_pairs_naming_the_file() {
        let (cert_a, key_a) = pair("a");
        let (_, key_b) = pair("b");
        let half_cert = &cert_a[..cert_a.len() / 2];
        let cases: Vec<(&str, &str, &str)> = vec![
            (&cert_a, &key_b, "cannot be used with the certificate"),
            ("", &key_a, "tls.crt holds no PEM certificate"),
            (&cert_a, "", "tls.key holds no PEM private key"),
            (half_cert, &key_a, "tls.crt"),
            (&key_a, &key_a, "tls.crt holds no PEM certificate"),
            (&cert_a, &cert_a, "tls.key holds no PEM private key"),
        ];
        for (cert, key, expected) in cases {
            let error = load(cert, key)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[tokio::test]
    async fn reloader_swaps_good_pairs_and_keeps_the_old_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        let (cert_a, key_a) = pair("a");
        std::fs::write(&cert_path, &cert_a).unwrap();
        std::fs::write(&key_path, &key_a).unwrap();
        let metrics = Arc::new(Metrics::new(Counter::default()));
        let (mut reloader, _config) =
            CertReloader::start(&cert_path, &key_path, None, Arc::clone(&metrics)).unwrap();
        let served = |reloader: &CertReloader| {
            reloader.resolver.current.read().unwrap().cert[0]
                .as_ref()
                .to_vec()
        };
        let first = served(&reloader);
        assert!(!reloader.poll().await, "unchanged files reload nothing");

        // Only the certificate written so far: mismatched, rejected once.
        let (cert_b, key_b) = pair("b");
        std::fs::write(&cert_path, &cert_b).unwrap();
        assert!(!reloader.poll().await);
        assert!(!reloader.poll().await);
        assert_eq!(served(&reloader), first);
        let failed = metrics
            .cert_reloads
            .get_or_create(&ResultLabels {
                result: RELOAD_FAILED,
            })
            .get();
        assert_eq!(failed, 1);

        std::fs::write(&key_path, &key_b).unwrap();
        assert!(reloader.poll().await);
        assert_ne!(served(&reloader), first);
        let ok = metrics
            .cert_reloads
            .get_or_create(&ResultLabels { result: RELOAD_OK })
            .get();
        assert_eq!(ok, 1);
    }

    #[test]
    fn start_fails_on_missing_files() {
        let metrics = Arc::new(Metrics::new(Counter::default()));
        let error = CertReloader::start(
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
            None,
            metrics,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            error.starts_with("cannot read /nonexistent/tls.crt"),
            "{error}"
        );
    }
}
