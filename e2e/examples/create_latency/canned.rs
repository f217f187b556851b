//! The floor for the benchmark: a webhook that computes nothing. It answers
//! every AdmissionReview with one fixed patch, found by a byte search for the
//! request's uid, so what it adds to a create is the API server's cost of
//! calling any mutating webhook and applying that patch.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use kube_hardener_e2e::{Pki, Target};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const MAX_REQUEST: usize = 1 << 20;

#[derive(Default)]
struct Shared {
    /// The first review received, kept so the caller can ask kube-hardener
    /// for its answer to exactly that request.
    first_review: Option<Vec<u8>>,
    /// Base64 of the patch to return; until set, reviews are allowed unchanged.
    patch: Option<String>,
}

pub struct CannedWebhook {
    port: u16,
    ca_pem: String,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CannedWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CannedWebhook {
    pub async fn start() -> Result<Self> {
        let pki = Pki::new()?;
        let (cert_pem, key_pem) = pki.serving("canned webhook")?;
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the canned webhook's certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .context("parsing the canned webhook's key")?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = serve(tls, state).await;
                    }
                });
            }
        });
        Ok(CannedWebhook {
            port,
            ca_pem: pki.ca_pem().to_owned(),
            shared,
            task,
        })
    }

    pub fn target(&self) -> Target {
        Target::loopback(self.port, &self.ca_pem)
    }

    pub fn first_review(&self) -> Option<Vec<u8>> {
        self.lock().first_review.clone()
    }

    /// `patch` as it travels in an AdmissionReview response: base64.
    pub fn set_patch(&self, patch: String) {
        self.lock().patch = Some(patch);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// HTTP/1.1 keep-alive loop: one request with a Content-Length body at a time.
async fn serve<S>(mut stream: S, shared: Arc<Mutex<Shared>>) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buffer = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let (head_end, body_len) = loop {
            if let Some(head_end) = find(&buffer, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse::<usize>().ok())
                    .context("request without Content-Length")?;
                break (head_end + 4, length);
            }
            anyhow::ensure!(buffer.len() < MAX_REQUEST, "request head too large");
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        anyhow::ensure!(body_len < MAX_REQUEST, "request body too large");
        while buffer.len() < head_end + body_len {
            let read = stream.read(&mut chunk).await?;
            anyhow::ensure!(read > 0, "connection closed mid-request");
            buffer.extend_from_slice(&chunk[..read]);
        }
        let body = &buffer[head_end..head_end + body_len];
        let uid = uid(body).context("review without a uid")?;
        let patch = {
            let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
            if shared.first_review.is_none() {
                shared.first_review = Some(body.to_vec());
            }
            shared.patch.clone()
        };
        let response = match patch {
            Some(patch) => format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":"{uid}","allowed":true,"patchType":"JSONPatch","patch":"{patch}"}}}}"#
            ),
            None => format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":"{uid}","allowed":true}}}}"#
            ),
        };
        let message = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{response}",
            response.len()
        );
        stream.write_all(message.as_bytes()).await?;
        stream.flush().await?;
        buffer.drain(..head_end + body_len);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The request's uid: the first `"uid":"…"` of an AdmissionReview is the
/// request's own (the API server encodes `request.uid` first).
fn uid(body: &[u8]) -> Option<String> {
    let start = find(body, br#""uid":""#)? + 7;
    let len = body[start..].iter().position(|&b| b == b'"')?;
    String::from_utf8(body[start..start + len].to_vec()).ok()
}
