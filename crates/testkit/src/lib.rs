//! Test support shared by `crates/server/tests` and `e2e`: one throw-away CA
//! that issues serving and client certificates, and one polling helper for
//! state that something else picks up asynchronously, and a real OCI registry
//! (`registry`) with helpers that push test images. Dev-only: nothing that
//! ships depends on it.

pub mod registry;

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

/// A CA for one test (or one server under test).
pub struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// Valid from a minute ago (clock skew between processes) for a day.
fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(1);
}

impl Pki {
    pub fn new() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-hardener test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let ca = params.self_signed(&key)?;
        Ok(Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// A serving certificate for 127.0.0.1 and localhost: `(cert_pem, key_pem)`.
    pub fn serving(&self, common_name: &str) -> Result<(String, String), rcgen::Error> {
        self.issue(
            common_name,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            None,
        )
    }

    /// A serving certificate for `names` (IP addresses or DNS names) with a
    /// chosen serial, to tell rotated certificates apart.
    pub fn serving_for(
        &self,
        common_name: &str,
        names: &[&str],
        serial: u64,
    ) -> Result<(String, String), rcgen::Error> {
        self.issue(
            common_name,
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            Some(serial),
        )
    }

    /// A client certificate (`clientAuth`) named `common_name`.
    pub fn client(&self, common_name: &str) -> Result<(String, String), rcgen::Error> {
        self.issue(
            common_name,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ClientAuth,
            None,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        serial: Option<u64>,
    ) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        // rcgen reads a name that parses as an IP address as an IP SAN.
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.serial_number = serial.map(SerialNumber::from);
        validity(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// An `admission.k8s.io/v1` AdmissionReview of a Pod CREATE, as the API
/// server sends it, for `object` in `namespace`.
pub fn pod_create_review(
    uid: &str,
    namespace: &str,
    object: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": object,
        }
    })
}

/// Polls `check` every 100 ms until it returns `Ok`, or fails after `limit`
/// with `what` and the last observation (`check`'s `Err`).
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(()) => return Ok(()),
            Err(observation) => observation,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("waited {limit:?} for {what}; last seen: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
