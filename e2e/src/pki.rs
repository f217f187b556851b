//! Certificates for the webhook under test: one CA per server, serving
//! certificates for 127.0.0.1 that can be re-issued to exercise rotation.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// A CA that issues serving certificates.
pub struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(1);
}

impl Pki {
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate().context("generating the test CA key")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-hardener e2e CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let ca_pem = params
            .self_signed(&key)
            .context("self-signing the test CA")?
            .pem();
        Ok(Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A fresh key and certificate for 127.0.0.1 / localhost: `(cert_pem, key_pem)`.
    pub fn serving(&self, common_name: &str) -> Result<(String, String)> {
        self.issue(common_name, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A fresh client certificate (`clientAuth`) named `common_name`.
    pub fn client(&self, common_name: &str) -> Result<(String, String)> {
        self.issue(common_name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, common_name: &str, usage: ExtendedKeyUsagePurpose) -> Result<(String, String)> {
        let key = KeyPair::generate().context("generating a key")?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .context("certificate names")?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        validity(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing a certificate for {common_name}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
