//! `kube-hardener certs`: a private CA and a serving certificate for the webhook
//! Service, written as a TLS Secret manifest and a caBundle patch for the
//! MutatingWebhookConfiguration, for clusters without cert-manager
//! (`deploy/overlays/self-signed` consumes the output).
//!
//! Renewal must never leave a window in which the API server distrusts the
//! certificate a replica serves: replicas pick up a new Secret only at the
//! kubelet's next sync, up to a minute or more later. So a second run reuses
//! the CA it finds in `--out-dir` (the caBundle does not change at all), and
//! when a new CA is needed (none found, it expires too soon, or `--new-ca`)
//! the caBundle carries the new and the previous CA together.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// File names inside `--out-dir`; the self-signed overlay refers to them.
pub const SECRET_FILE: &str = "tls-secret.yaml";
pub const CA_BUNDLE_PATCH_FILE: &str = "webhook-ca-bundle.yaml";
pub const CA_FILE: &str = "ca.crt";
/// The CA's private key, kept beside it so that the next run can reuse the CA.
pub const CA_KEY_FILE: &str = "ca.key";

/// Arguments of `kube-hardener certs`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Namespace of the webhook Service and of the generated Secret.
    #[arg(long, default_value = "kube-hardener")]
    pub namespace: String,
    /// Name of the Service the API server calls (the certificate is issued for it).
    #[arg(long, default_value = "kube-hardener")]
    pub service: String,
    /// Name of the generated `kubernetes.io/tls` Secret.
    #[arg(long, default_value = "kube-hardener-tls")]
    pub secret_name: String,
    /// MutatingWebhookConfiguration that receives the caBundle.
    #[arg(long, default_value = "kube-hardener")]
    pub webhook_configuration: String,
    /// Webhook entry of that configuration that receives the caBundle (repeatable).
    #[arg(long = "webhook", default_values_t = [String::from("pods.kube-hardener.io")])]
    pub webhooks: Vec<String>,
    /// Extra subject alternative name, a DNS name or an IP address (repeatable).
    #[arg(long = "san")]
    pub extra_sans: Vec<String>,
    /// Validity of the serving certificate.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Validity of a newly made CA. An existing CA is reused while it outlives
    /// the new serving certificate.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub ca_days: u32,
    /// Make a new CA even if the one in --out-dir could be reused (after a key
    /// leak, say). The caBundle then holds the new and the previous CA, so
    /// replicas still serving the old certificate stay trusted.
    #[arg(long)]
    pub new_ca: bool,
    /// Directory the files are written to (created when missing; existing files are replaced).
    #[arg(long, short = 'o')]
    pub out_dir: PathBuf,
}

/// PEM material produced by [`generate`].
#[derive(Debug)]
pub struct Generated {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca: CaOrigin,
}

impl Generated {
    /// What the API server is to trust: the CA, then the previous CA during a
    /// rollover.
    pub fn bundle_pem(&self) -> String {
        let mut bundle = self.ca_pem.clone();
        if let CaOrigin::New {
            previous: Some(previous),
        } = &self.ca
        {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(previous);
        }
        bundle
    }
}

/// Where the CA of a run came from, as reported to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaOrigin {
    /// Read from --out-dir and reused: the caBundle is unchanged.
    Reused,
    /// Newly made; `previous` is the CA it replaces, kept in the caBundle.
    New { previous: Option<String> },
}

/// A CA read from --out-dir.
struct ExistingCa {
    cert_pem: String,
    /// None when only ca.crt is there (written before ca.key existed).
    key_pem: Option<String>,
    not_after: OffsetDateTime,
    /// The certificate's public key, to check that ca.key belongs to it.
    public_key: Vec<u8>,
}

/// Runs the subcommand: generates and writes the four files, then lists them.
pub fn run(args: &CertsArgs) -> Result<()> {
    validate(args)?;
    let existing = read_existing_ca(&args.out_dir)?;
    let generated = generate(args, existing.as_ref(), OffsetDateTime::now_utc())?;
    fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating output directory {}", args.out_dir.display()))?;
    // The serving Secret before the CA: an interrupted run then leaves the
    // previous CA files, which the next run reuses or keeps in the bundle.
    let files = [
        (SECRET_FILE, secret_manifest(args, &generated), true),
        (
            CA_BUNDLE_PATCH_FILE,
            ca_bundle_patch(args, &generated),
            false,
        ),
        (CA_KEY_FILE, generated.ca_key_pem.clone(), true),
        (CA_FILE, generated.ca_pem.clone(), false),
    ];
    for (name, contents, secret) in files {
        let path = args.out_dir.join(name);
        write_atomically(&path, contents.as_bytes(), secret)?;
        println!("wrote {}", path.display());
    }
    let ca_path = args.out_dir.join(CA_FILE);
    match &generated.ca {
        CaOrigin::Reused => println!(
            "reused the CA in {}: the caBundle is unchanged",
            ca_path.display()
        ),
        CaOrigin::New { previous: Some(_) } => println!(
            "made a new CA; the caBundle holds it and the previous one, so replicas \
             serving the old certificate stay trusted until they reload"
        ),
        CaOrigin::New { previous: None } => println!("made a new CA"),
    }
    Ok(())
}

/// The CA of a previous run, if --out-dir holds one. A file that is there but
/// unreadable is an error that names it: silently replacing it would drop a
/// CA the cluster may still trust.
fn read_existing_ca(out_dir: &Path) -> Result<Option<ExistingCa>> {
    let cert_path = out_dir.join(CA_FILE);
    let cert_pem = match fs::read_to_string(&cert_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", cert_path.display()));
        }
    };
    let (not_after, public_key) = parse_ca(&cert_pem).with_context(|| {
        format!(
            "{}: not a PEM CA certificate (remove the file to start with a new CA)",
            cert_path.display()
        )
    })?;
    let key_path = out_dir.join(CA_KEY_FILE);
    let key_pem = match fs::read_to_string(&key_path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", key_path.display()));
        }
    };
    Ok(Some(ExistingCa {
        cert_pem,
        key_pem,
        not_after,
        public_key,
    }))
}

/// The end of validity and the public key of a PEM CA certificate.
fn parse_ca(pem: &str) -> Result<(OffsetDateTime, Vec<u8>)> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let cert = block
        .parse_x509()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if !cert.is_ca() {
        bail!("the certificate is not a CA");
    }
    Ok((
        cert.validity().not_after.to_datetime(),
        cert.public_key().subject_public_key.data.to_vec(),
    ))
}

fn validate(args: &CertsArgs) -> Result<()> {
    check_label("--namespace", &args.namespace)?;
    check_label("--service", &args.service)?;
    check_subdomain("--secret-name", &args.secret_name)?;
    check_subdomain("--webhook-configuration", &args.webhook_configuration)?;
    if args.webhooks.is_empty() {
        bail!("--webhook: at least one webhook name is needed");
    }
    for webhook in &args.webhooks {
        check_subdomain("--webhook", webhook)?;
        // The API server requires fully qualified webhook names.
        if !webhook.contains('.') {
            bail!("--webhook `{webhook}`: must be a fully qualified name such as pods.example.com");
        }
    }
    for san in &args.extra_sans {
        if san.parse::<IpAddr>().is_err() {
            check_subdomain("--san", san)?;
        }
    }
    Ok(())
}

/// RFC 1123 label, as Kubernetes requires for namespace and Service names.
fn check_label(flag: &str, value: &str) -> Result<()> {
    if !kube_hardener_engine::is_dns_label(value) {
        bail!(
            "{flag} `{value}`: must be a DNS label (at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit)"
        );
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, 253 characters at most.
fn check_subdomain(flag: &str, value: &str) -> Result<()> {
    if value.len() > 253 {
        bail!("{flag} `{value}`: longer than 253 characters");
    }
    for label in value.split('.') {
        check_label(flag, label).with_context(|| {
            format!("{flag} `{value}`: must be a DNS subdomain (dot-separated DNS labels)")
        })?;
    }
    Ok(())
}

/// The names the API server may dial: it uses `<service>.<namespace>.svc`, the
/// shorter forms serve in-cluster clients and the fully qualified form serves
/// resolvers that append the cluster domain.
fn service_sans(args: &CertsArgs) -> Vec<String> {
    let base = format!("{}.{}", args.service, args.namespace);
    let mut sans = vec![
        args.service.clone(),
        base.clone(),
        format!("{base}.svc"),
        format!("{base}.svc.cluster.local"),
    ];
    sans.extend(args.extra_sans.iter().cloned());
    sans
}

/// The CA to sign with: the existing one while it outlives the new serving
/// certificate (and --new-ca is not given), else a new one.
fn choose_ca(
    args: &CertsArgs,
    existing: Option<&ExistingCa>,
    now: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(Issuer<'static, KeyPair>, String, String, CaOrigin)> {
    if let Some(ca) = existing
        && let (Some(key_pem), false) = (&ca.key_pem, args.new_ca)
        && ca.not_after >= not_after
    {
        let key_path = args.out_dir.join(CA_KEY_FILE);
        let key = KeyPair::from_pem(key_pem)
            .with_context(|| format!("{}: not a PEM private key", key_path.display()))?;
        if key.public_key_raw() != ca.public_key.as_slice() {
            bail!(
                "{} does not belong to {} (remove both to start with a new CA)",
                key_path.display(),
                args.out_dir.join(CA_FILE).display()
            );
        }
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key).with_context(|| {
            format!(
                "{}: cannot sign with this CA",
                args.out_dir.join(CA_FILE).display()
            )
        })?;
        return Ok((
            issuer,
            ca.cert_pem.clone(),
            key_pem.clone(),
            CaOrigin::Reused,
        ));
    }
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("kube-hardener CA for {}.{}", args.service, args.namespace),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - Duration::minutes(5);
    // Never shorter than the serving certificate it signs.
    ca_params.not_after = (now + Duration::days(i64::from(args.ca_days))).max(not_after);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("self-signing the CA certificate")?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    // The CA being replaced stays trusted while it is valid: replicas serve
    // certificates it signed until they reload the new Secret.
    let previous = existing
        .filter(|ca| ca.not_after > now)
        .map(|ca| ca.cert_pem.clone());
    Ok((
        Issuer::new(ca_params, ca_key),
        ca_pem,
        ca_key_pem,
        CaOrigin::New { previous },
    ))
}

/// Generates a serving certificate (ECDSA P-256) for the Service, signed by
/// the reused or a new CA (see [`choose_ca`]).
fn generate(
    args: &CertsArgs,
    existing: Option<&ExistingCa>,
    now: OffsetDateTime,
) -> Result<Generated> {
    // Back-dated a little so that nodes with a slightly slow clock accept it.
    let not_before = now - Duration::minutes(5);
    let not_after = now + Duration::days(i64::from(args.days));
    let (issuer, ca_pem, ca_key_pem, origin) = choose_ca(args, existing, now, not_after)?;

    let key = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::new(service_sans(args))
        .context("building the serving certificate's subject alternative names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", args.service, args.namespace),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the serving certificate")?;

    Ok(Generated {
        ca_pem,
        ca_key_pem,
        // The chain the server presents: its own certificate; the CA travels in caBundle.
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca: origin,
    })
}

fn secret_manifest(args: &CertsArgs, generated: &Generated) -> String {
    format!(
        "# Generated by `kube-hardener certs`; holds a private key: do not commit it.\n\
         apiVersion: v1\n\
         kind: Secret\n\
         type: kubernetes.io/tls\n\
         metadata:\n  \
           name: {name}\n  \
           namespace: {namespace}\n  \
           labels:\n    \
             app.kubernetes.io/name: kube-hardener\n\
         data:\n  \
           tls.crt: {cert}\n  \
           tls.key: {key}\n  \
           ca.crt: {ca}\n",
        name = args.secret_name,
        namespace = args.namespace,
        cert = BASE64.encode(&generated.cert_pem),
        key = BASE64.encode(&generated.key_pem),
        ca = BASE64.encode(&generated.ca_pem),
    )
}

/// A strategic-merge patch: `webhooks` merges by `name`, so only `caBundle` of
/// the listed entries changes when kustomize applies it to the base.
fn ca_bundle_patch(args: &CertsArgs, generated: &Generated) -> String {
    let bundle = BASE64.encode(generated.bundle_pem());
    let mut out = format!(
        "# Generated by `kube-hardener certs`: the CA that signed {service}.{namespace}.svc.\n\
         apiVersion: admissionregistration.k8s.io/v1\n\
         kind: MutatingWebhookConfiguration\n\
         metadata:\n  \
           name: {configuration}\n\
         webhooks:\n",
        service = args.service,
        namespace = args.namespace,
        configuration = args.webhook_configuration,
    );
    for webhook in &args.webhooks {
        out.push_str(&format!(
            "  - name: {webhook}\n    clientConfig:\n      caBundle: {bundle}\n"
        ));
    }
    out
}

/// Writes via a temporary file and a rename, so a reader (or a failed run)
/// never sees a half-written key or a certificate without its key.
fn write_atomically(path: &Path, contents: &[u8], secret: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let result = options
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(error) = result {
        let _ = fs::remove_file(&tmp);
        return Err(error).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Subject alternative names of `params`, for tests and diagnostics.
#[cfg(test)]
fn san_strings(params: &CertificateParams) -> Vec<String> {
    params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            rcgen::SanType::DnsName(name) => name.as_str().to_owned(),
            rcgen::SanType::IpAddress(ip) => ip.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out_dir: &Path) -> CertsArgs {
        CertsArgs {
            namespace: "hardening".to_owned(),
            service: "webhook".to_owned(),
            secret_name: "webhook-tls".to_owned(),
            webhook_configuration: "kube-hardener".to_owned(),
            webhooks: vec!["pods.kube-hardener.io".to_owned()],
            extra_sans: vec!["127.0.0.1".to_owned()],
            days: 30,
            ca_days: 3650,
            new_ca: false,
            out_dir: out_dir.to_path_buf(),
        }
    }

    fn decode_field(yaml: &str, key: &str) -> String {
        let value = yaml
            .lines()
            .find_map(|line| line.trim().strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("{key} missing from:\n{yaml}"));
        String::from_utf8(BASE64.decode(value).expect("base64")).expect("utf-8")
    }

    #[test]
    fn writes_secret_bundle_and_ca_that_agree() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/out");
        let args = args(&out);
        run(&args).unwrap();

        let ca = fs::read_to_string(out.join(CA_FILE)).unwrap();
        let secret = fs::read_to_string(out.join(SECRET_FILE)).unwrap();
        let patch = fs::read_to_string(out.join(CA_BUNDLE_PATCH_FILE)).unwrap();

        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(secret.contains("type: kubernetes.io/tls\n"));
        assert!(secret.contains("  name: webhook-tls\n  namespace: hardening\n"));
        assert_eq!(decode_field(&secret, "ca.crt"), ca);
        assert_eq!(decode_field(&patch, "caBundle"), ca);
        let cert = decode_field(&secret, "tls.crt");
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(cert, ca, "the serving certificate must not be the CA");
        assert!(decode_field(&secret, "tls.key").contains("PRIVATE KEY-----"));
        assert!(
            patch
                .contains("kind: MutatingWebhookConfiguration\nmetadata:\n  name: kube-hardener\n")
        );
        assert!(patch.contains("  - name: pods.kube-hardener.io\n    clientConfig:\n"));
        // No temporary file is left behind.
        let mut names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected = [CA_FILE, CA_KEY_FILE, SECRET_FILE, CA_BUNDLE_PATCH_FILE];
        expected.sort();
        assert_eq!(names, expected);
    }

    #[cfg(unix)]
    #[test]
    fn files_with_private_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        run(&args(dir.path())).unwrap();
        for file in [SECRET_FILE, CA_KEY_FILE] {
            let mode = fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{file}: mode {mode:o} lets others read the key"
            );
        }
    }

    fn ca_of(dir: &Path) -> String {
        fs::read_to_string(dir.join(CA_FILE)).unwrap()
    }

    /// The caBundle of the patch, split into its certificates.
    fn bundle_of(dir: &Path) -> Vec<String> {
        let patch = fs::read_to_string(dir.join(CA_BUNDLE_PATCH_FILE)).unwrap();
        decode_field(&patch, "caBundle")
            .split_inclusive("-----END CERTIFICATE-----\n")
            .map(str::to_owned)
            .collect()
    }

    /// Whether the serving certificate of the Secret was signed by `ca_pem`.
    fn signed_by(dir: &Path, ca_pem: &str) -> bool {
        let secret = fs::read_to_string(dir.join(SECRET_FILE)).unwrap();
        let cert_pem = decode_field(&secret, "tls.crt");
        let (_, cert) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).unwrap();
        let (cert, ca) = (cert.parse_x509().unwrap(), ca.parse_x509().unwrap());
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    #[test]
    fn a_second_run_reuses_the_ca_so_the_bundle_does_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
        run(&args).unwrap();
        let (ca, bundle) = (ca_of(dir.path()), bundle_of(dir.path()));
        let first_secret = fs::read_to_string(dir.path().join(SECRET_FILE)).unwrap();
        run(&args).unwrap();
        assert_eq!(ca_of(dir.path()), ca);
        assert_eq!(bundle_of(dir.path()), bundle);
        assert_eq!(bundle, std::slice::from_ref(&ca));
        // A new serving certificate and key, from the same CA.
        let second_secret = fs::read_to_string(dir.path().join(SECRET_FILE)).unwrap();
        assert_ne!(
            decode_field(&first_secret, "tls.key"),
            decode_field(&second_secret, "tls.key")
        );
        assert!(signed_by(dir.path(), &ca));
    }

    #[test]
    fn a_new_ca_is_published_with_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = args(dir.path());
        run(&args).unwrap();
        let old = ca_of(dir.path());
        args.new_ca = true;
        run(&args).unwrap();
        let new = ca_of(dir.path());
        assert_ne!(new, old);
        assert!(signed_by(dir.path(), &new));
        // Replicas still serving the old certificate stay trusted.
        assert_eq!(bundle_of(dir.path()), [new.clone(), old]);
        // The next run reuses the new CA and drops the old one.
        args.new_ca = false;
        run(&args).unwrap();
        assert_eq!(bundle_of(dir.path()), [new]);
    }

    #[test]
    fn a_ca_that_would_expire_before_the_certificate_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = args(dir.path());
        // The CA lives 40 days; a 30-day certificate fits, a 60-day one does not.
        args.ca_days = 40;
        run(&args).unwrap();
        let old = ca_of(dir.path());
        run(&args).unwrap();
        assert_eq!(ca_of(dir.path()), old);
        args.days = 60;
        run(&args).unwrap();
        let new = ca_of(dir.path());
        assert_ne!(new, old);
        assert_eq!(bundle_of(dir.path()), [new.clone(), old]);
        // A new CA never ends before the certificate it signs.
        let (_, pem) = x509_parser::pem::parse_x509_pem(new.as_bytes()).unwrap();
        let not_after = pem.parse_x509().unwrap().validity().not_after.timestamp();
        let wanted = (OffsetDateTime::now_utc() + Duration::days(60)).unix_timestamp();
        assert!(not_after >= wanted - 60, "{not_after} < {wanted}");
    }

    #[test]
    fn output_of_a_version_without_ca_key_rolls_over_to_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
        run(&args).unwrap();
        let old = ca_of(dir.path());
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        run(&args).unwrap();
        let new = ca_of(dir.path());
        assert_ne!(new, old);
        assert_eq!(bundle_of(dir.path()), [new, old]);
    }

    #[test]
    fn unusable_ca_files_are_named_and_nothing_is_written() {
        type Damage = fn(&Path);
        let cases: [(&str, &str, Damage); 3] = [
            (CA_FILE, "not a PEM CA certificate", |dir| {
                fs::write(dir.join(CA_FILE), "garbage").unwrap();
            }),
            (CA_KEY_FILE, "not a PEM private key", |dir| {
                fs::write(dir.join(CA_KEY_FILE), "garbage").unwrap();
            }),
            (CA_KEY_FILE, "does not belong to", |dir| {
                let other = KeyPair::generate().unwrap().serialize_pem();
                fs::write(dir.join(CA_KEY_FILE), other).unwrap();
            }),
        ];
        for (file, message, damage) in cases {
            let dir = tempfile::tempdir().unwrap();
            let args = args(dir.path());
            run(&args).unwrap();
            damage(dir.path());
            let before: Vec<_> = [SECRET_FILE, CA_BUNDLE_PATCH_FILE, CA_FILE, CA_KEY_FILE]
                .iter()
                .map(|name| fs::read(dir.path().join(name)).unwrap())
                .collect();
            let error = format!("{:#}", run(&args).unwrap_err());
            assert!(error.contains(file) && error.contains(message), "{error}");
            let after: Vec<_> = [SECRET_FILE, CA_BUNDLE_PATCH_FILE, CA_FILE, CA_KEY_FILE]
                .iter()
                .map(|name| fs::read(dir.path().join(name)).unwrap())
                .collect();
            assert_eq!(before, after, "{file}: files changed");
        }
    }

    #[test]
    fn serving_certificate_names_the_service() {
        let args = args(Path::new("unused"));
        let params = CertificateParams::new(service_sans(&args)).unwrap();
        assert_eq!(
            san_strings(&params),
            [
                "webhook",
                "webhook.hardening",
                "webhook.hardening.svc",
                "webhook.hardening.svc.cluster.local",
                "127.0.0.1",
            ]
        );
    }

    #[test]
    fn lists_every_webhook_in_the_patch() {
        let mut args = args(Path::new("unused"));
        args.webhooks = vec![
            "pods.example.com".to_owned(),
            "workloads.example.com".to_owned(),
        ];
        let generated = Generated {
            ca_pem: "CA".to_owned(),
            ca_key_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
            ca: CaOrigin::Reused,
        };
        let patch = ca_bundle_patch(&args, &generated);
        let bundle = BASE64.encode("CA");
        assert!(patch.contains(&format!(
            "  - name: pods.example.com\n    clientConfig:\n      caBundle: {bundle}\n  - name: workloads.example.com\n"
        )));
    }

    #[test]
    fn rejects_bad_names_before_writing_anything() {
        type Mutation = fn(&mut CertsArgs);
        let cases: [(&str, Mutation); 7] = [
            ("--namespace", |a| a.namespace = "Hardening".to_owned()),
            ("--namespace", |a| a.namespace = String::new()),
            ("--service", |a| a.service = "web_hook".to_owned()),
            ("--service", |a| a.service = "a.b".to_owned()),
            ("--secret-name", |a| a.secret_name = "-tls".to_owned()),
            ("--webhook", |a| a.webhooks = vec!["pods".to_owned()]),
            ("--san", |a| a.extra_sans = vec!["bad name".to_owned()]),
        ];
        for (flag, mutate) in cases {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            let mut args = args(&out);
            mutate(&mut args);
            let error = format!("{:#}", run(&args).unwrap_err());
            assert!(error.contains(flag), "{error} should name {flag}");
            assert!(!out.exists(), "nothing may be written for {flag}");
        }
    }

    #[test]
    fn accepts_long_valid_names() {
        let mut args = args(Path::new("unused"));
        args.namespace = "a".repeat(63);
        args.secret_name = format!("{}.{}", "b".repeat(63), "c".repeat(63));
        validate(&args).unwrap();
        args.namespace = "a".repeat(64);
        assert!(validate(&args).is_err());
    }
}
