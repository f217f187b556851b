//! The shipped manifests under deploy/ are valid for the pinned Kubernetes
//! version: every object is accepted by the API server in a server-side
//! dry-run apply (schema, validation and admission, Pod Security included).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::DeleteParams;
use kube_hardener_e2e::manifests::{
    CERT_MANAGER_CRDS, apply, copy_tree, documents, dry_run_apply, find, install_crds, remove_crds,
    retry_while, run,
};
use kube_hardener_e2e::{client, kubectl, workspace_root};
use serde_json::Value;

const NAMESPACE: &str = "kube-hardener";

fn assert_applied(stdout: &str, objects: &[&str]) {
    for object in objects {
        assert!(
            stdout.contains(&format!("{object} serverside-applied (server dry run)")),
            "{object} missing from:\n{stdout}"
        );
    }
}

const BASE_OBJECTS: [&str; 11] = [
    "namespace/kube-hardener",
    "serviceaccount/kube-hardener",
    "clusterrole.rbac.authorization.k8s.io/kube-hardener",
    "clusterrolebinding.rbac.authorization.k8s.io/kube-hardener",
    "configmap/kube-hardener-config",
    "service/kube-hardener",
    "service/kube-hardener-metrics",
    "deployment.apps/kube-hardener",
    "poddisruptionbudget.policy/kube-hardener",
    "networkpolicy.networking.k8s.io/kube-hardener",
    "mutatingwebhookconfiguration.admissionregistration.k8s.io/kube-hardener",
];

/// The whole cert-manager overlay goes through the API server, cert-manager's
/// Issuers and Certificates included (validated against its CRD schemas);
/// then the references between its objects and the base are checked, which
/// no schema can.
fn check_cert_manager_overlay(deploy: &Path) -> Result<()> {
    let overlay = deploy.join("overlays/cert-manager");
    // A CRD that has just become Established can take a moment to show up in
    // discovery, which kubectl needs to map the kinds.
    let stdout = retry_while("no matches for kind", Duration::from_millis(500), || {
        dry_run_apply(&["-k"], &overlay)
    })?;
    assert_applied(&stdout, &BASE_OBJECTS);
    assert_applied(
        &stdout,
        &[
            "issuer.cert-manager.io/kube-hardener-selfsigned",
            "issuer.cert-manager.io/kube-hardener-ca",
            "certificate.cert-manager.io/kube-hardener-ca",
            "certificate.cert-manager.io/kube-hardener-serving",
        ],
    );

    let rendered = run(kubectl().arg("kustomize").arg(&overlay))?;
    let docs = documents(&String::from_utf8(rendered.stdout)?)?;
    let (cert_manager, core): (Vec<Value>, Vec<Value>) = docs.into_iter().partition(|doc| {
        doc["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("cert-manager.io/"))
    });

    let webhook = find(&core, "MutatingWebhookConfiguration", "kube-hardener")?;
    let injected_from = webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .context("the webhook configuration lacks cert-manager.io/inject-ca-from")?;
    let (cert_namespace, cert_name) = injected_from
        .split_once('/')
        .context("inject-ca-from must be NAMESPACE/NAME")?;
    let certificate = find(&cert_manager, "Certificate", cert_name)?;
    assert_eq!(certificate["metadata"]["namespace"], cert_namespace);

    // The Deployment mounts the Secret the Certificate writes.
    let deployment = find(&core, "Deployment", "kube-hardener")?;
    let mounted_secret = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|volume| volume["secret"]["secretName"].as_str())
        .context("the Deployment mounts no Secret")?;
    assert_eq!(certificate["spec"]["secretName"], mounted_secret);

    // The certificate names the Service the API server calls.
    let service = &webhook["webhooks"][0]["clientConfig"]["service"];
    let host = format!(
        "{}.{}.svc",
        service["name"].as_str().unwrap_or_default(),
        service["namespace"].as_str().unwrap_or_default()
    );
    let dns_names: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        dns_names.contains(&host.as_str()),
        "{host} not in {dns_names:?}"
    );

    // Every issuerRef resolves to an Issuer of the overlay, in the same namespace.
    for doc in cert_manager
        .iter()
        .filter(|doc| doc["kind"] == "Certificate")
    {
        let issuer = doc["spec"]["issuerRef"]["name"]
            .as_str()
            .context("Certificate without issuerRef.name")?;
        assert_eq!(doc["spec"]["issuerRef"]["kind"], "Issuer");
        let found = find(&cert_manager, "Issuer", issuer)?;
        assert_eq!(found["metadata"]["namespace"], doc["metadata"]["namespace"]);
    }
    // The CA Issuer reads the Secret of the CA Certificate.
    for issuer in cert_manager.iter().filter(|doc| doc["kind"] == "Issuer") {
        if let Some(secret) = issuer["spec"]["ca"]["secretName"].as_str() {
            let ca = cert_manager
                .iter()
                .find(|doc| doc["kind"] == "Certificate" && doc["spec"]["secretName"] == secret)
                .with_context(|| format!("no Certificate writes the CA Secret {secret}"))?;
            assert_eq!(ca["spec"]["isCA"], true);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manifest_under_deploy_is_accepted_by_the_api_server() -> Result<()> {
    let client = client().await?;
    let deploy = workspace_root().join("deploy");
    let work = tempfile::tempdir()?;

    // Namespaced objects cannot be dry-run into a namespace that a dry run
    // only pretends to create, so create it for real unless it exists (it does
    // where kube-hardener is deployed) and remove it again afterwards.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let created_namespace = if namespaces.get_opt(NAMESPACE).await?.is_none() {
        apply(&deploy.join("base/namespace.yaml"))?;
        true
    } else {
        false
    };

    let result =
        async {
            let stdout = dry_run_apply(&["-k"], &deploy.join("base"))?;
            assert_applied(&stdout, &BASE_OBJECTS);

            // self-signed: generate the certificate files into a copy of deploy/.
            let copy = work.path().join("deploy");
            copy_tree(&deploy, &copy)?;
            let generated = copy.join("overlays/self-signed/generated");
            let _ = std::fs::remove_dir_all(&generated);
            run(kube_hardener_e2e::kube_hardener_command()?
                .args(["certs", "--out-dir"])
                .arg(&generated))?;
            let stdout = dry_run_apply(&["-k"], &copy.join("overlays/self-signed"))?;
            assert_applied(&stdout, &BASE_OBJECTS);
            assert_applied(&stdout, &["secret/kube-hardener-tls"]);

            let rendered = run(kubectl()
                .arg("kustomize")
                .arg(copy.join("overlays/self-signed")))?;
            let docs = documents(&String::from_utf8(rendered.stdout)?)?;
            let webhook = find(&docs, "MutatingWebhookConfiguration", "kube-hardener")?;
            let ca = std::fs::read_to_string(generated.join("ca.crt"))?;
            let bundle = webhook["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .context("the self-signed overlay left caBundle empty")?;
            use base64::Engine;
            assert_eq!(
                base64::engine::general_purpose::STANDARD.decode(bundle)?,
                ca.as_bytes()
            );
            // The patch only added caBundle: the rest of the webhook is the base's.
            assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Ignore");
            assert_eq!(
                webhook["webhooks"][0]["clientConfig"]["service"]["path"],
                "/mutate"
            );

            // local-image: the self-signed overlay with a locally built image that
            // is never pulled; the override must reach the Deployment.
            let stdout = dry_run_apply(&["-k"], &copy.join("overlays/local-image"))?;
            assert_applied(&stdout, &BASE_OBJECTS);
            let rendered = run(kubectl()
                .arg("kustomize")
                .arg(copy.join("overlays/local-image")))?;
            let docs = documents(&String::from_utf8(rendered.stdout)?)?;
            let container = &find(&docs, "Deployment", "kube-hardener")?["spec"]["template"]["spec"]
                ["containers"][0];
            assert_eq!(container["image"], "kube-hardener:dev");
            assert_eq!(container["imagePullPolicy"], "Never");

            // The two image components over the base: list pods, get secrets,
            // and nothing else changes.
            let warm = copy.join("overlays/warm-up-check");
            std::fs::create_dir_all(&warm)?;
            std::fs::write(
                warm.join("kustomization.yaml"),
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources: [../../base]\ncomponents:\n\
                 - ../../components/image-warm-up\n- ../../components/pod-pull-secrets\n",
            )?;
            let stdout = dry_run_apply(&["-k"], &warm)?;
            assert_applied(&stdout, &BASE_OBJECTS);
            let rendered = run(kubectl().arg("kustomize").arg(&warm))?;
            let docs = documents(&String::from_utf8(rendered.stdout)?)?;
            assert_eq!(
                find(&docs, "ClusterRole", "kube-hardener")?["rules"],
                serde_json::json!([
                    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
                ])
            );

            let crds = install_crds(&CERT_MANAGER_CRDS)?;
            let checked = check_cert_manager_overlay(&deploy);
            remove_crds(&crds)?;
            checked
        }
        .await;

    if created_namespace {
        namespaces
            .delete(NAMESPACE, &DeleteParams::default())
            .await?;
    }
    result
}

#[test]
fn every_yaml_file_under_deploy_is_part_of_a_kustomization() -> Result<()> {
    // A manifest that no kustomization lists would never be validated above.
    let deploy = workspace_root().join("deploy");
    let mut unlisted = Vec::new();
    for dir in [
        "base",
        "overlays/cert-manager",
        "overlays/self-signed",
        "overlays/local-image",
        "components/image-warm-up",
        "components/pod-pull-secrets",
        "components/host-network",
    ] {
        let dir = deploy.join(dir);
        let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml"))?;
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml")
                && name != "kustomization.yaml"
                && !kustomization.contains(&name)
            {
                unlisted.push(dir.join(&name));
            }
        }
    }
    if !unlisted.is_empty() {
        bail!("not referenced by any kustomization.yaml: {unlisted:?}");
    }
    Ok(())
}
