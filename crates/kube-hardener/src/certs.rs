//! `kube-hardener certs`: a private CA and a serving certificate for the webhook
//! Service, written as a TLS Secret manifest and a caBundle patch for the
//! MutatingWebhookConfiguration, for clusters without cert-manager
//! (`deploy/overlays/self-signed` consumes the output).

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
    /// Validity of the CA and of the serving certificate.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Directory the files are written to (created when missing; existing files are replaced).
    #[arg(long, short = 'o')]
    pub out_dir: PathBuf,
}

/// PEM material produced by [`generate`].
#[derive(Debug)]
pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Runs the subcommand: generates and writes the three files, then lists them.
pub fn run(args: &CertsArgs) -> Result<()> {
    validate(args)?;
    let generated = generate(args)?;
    fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating output directory {}", args.out_dir.display()))?;
    let files = [
        (CA_FILE, generated.ca_pem.clone(), false),
        (SECRET_FILE, secret_manifest(args, &generated), true),
        (
            CA_BUNDLE_PATCH_FILE,
            ca_bundle_patch(args, &generated),
            false,
        ),
    ];
    for (name, contents, secret) in files {
        let path = args.out_dir.join(name);
        write_atomically(&path, contents.as_bytes(), secret)?;
        println!("wrote {}", path.display());
    }
    Ok(())
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

/// Generates a CA (ECDSA P-256) and a serving certificate signed by it.
pub fn generate(args: &CertsArgs) -> Result<Generated> {
    let now = OffsetDateTime::now_utc();
    // Back-dated a little so that nodes with a slightly slow clock accept it.
    let not_before = now - Duration::minutes(5);
    let not_after = now + Duration::days(i64::from(args.days));

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("kube-hardener CA for {}.{}", args.service, args.namespace),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("self-signing the CA certificate")?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca_params, ca_key);

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
        // The chain the server presents: its own certificate; the CA travels in caBundle.
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
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
    let bundle = BASE64.encode(&generated.ca_pem);
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
        assert_eq!(names, [CA_FILE, SECRET_FILE, CA_BUNDLE_PATCH_FILE]);
    }

    #[cfg(unix)]
    #[test]
    fn secret_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        run(&args(dir.path())).unwrap();
        let mode = fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o} lets others read the key");
    }

    #[test]
    fn every_run_makes_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
        run(&args).unwrap();
        let first = fs::read_to_string(dir.path().join(CA_FILE)).unwrap();
        run(&args).unwrap();
        let second = fs::read_to_string(dir.path().join(CA_FILE)).unwrap();
        assert_ne!(first, second);
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
            cert_pem: String::new(),
            key_pem: String::new(),
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
