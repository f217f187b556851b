//! Shared by the suites that check shipped manifests (deploy/ and the Helm
//! chart): kubectl runs, server-side dry-run applies, YAML documents and the
//! third-party CRDs those manifests use.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::kubectl;

/// Copies the directory tree `from` to `to` (a copy of deploy/ to generate
/// certificate files or write an overlay into, leaving the checkout as it is).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

pub fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// Server-side dry-run apply; returns stdout after checking that the API
/// server raised no warning (Pod Security warns about workload templates).
/// Conflicts are forced: where kube-hardener is deployed, another field
/// manager owns the objects, and a dry run changes nothing anyway.
pub fn dry_run_apply(args: &[&str], source: &Path) -> Result<String> {
    let output = run(kubectl()
        .args([
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=kube-hardener-e2e",
        ])
        .args(args)
        .arg(source))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !stderr.contains("Warning"),
        "the API server warned about {}:\n{stderr}",
        source.display()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .with_context(|| format!("{kind} {name} is not in the rendered manifests"))
}

/// A real server-side apply of one manifest file, as the suites' field manager.
pub fn apply(path: &Path) -> Result<Output> {
    run(kubectl()
        .args([
            "apply",
            "--server-side",
            "--field-manager=kube-hardener-e2e",
            "-f",
        ])
        .arg(path))
}

/// A CRD the suites need, as a file of a pinned upstream release whose
/// directory e2e/controlplane/up.sh names in an environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Crd {
    pub name: &'static str,
    pub file: &'static str,
    pub dir_env: &'static str,
}

/// cert-manager's Issuer and Certificate (the cert-manager overlay and chart mode).
pub const CERT_MANAGER_CRDS: [Crd; 2] = [
    Crd {
        name: "issuers.cert-manager.io",
        file: "cert-manager.io_issuers.yaml",
        dir_env: "KUBE_HARDENER_CERT_MANAGER_CRDS",
    },
    Crd {
        name: "certificates.cert-manager.io",
        file: "cert-manager.io_certificates.yaml",
        dir_env: "KUBE_HARDENER_CERT_MANAGER_CRDS",
    },
];

/// prometheus-operator's ServiceMonitor and PrometheusRule (the chart's monitoring).
pub const PROMETHEUS_OPERATOR_CRDS: [Crd; 2] = [
    Crd {
        name: "servicemonitors.monitoring.coreos.com",
        file: "monitoring.coreos.com_servicemonitors.yaml",
        dir_env: "KUBE_HARDENER_PROMETHEUS_OPERATOR_CRDS",
    },
    Crd {
        name: "prometheusrules.monitoring.coreos.com",
        file: "monitoring.coreos.com_prometheusrules.yaml",
        dir_env: "KUBE_HARDENER_PROMETHEUS_OPERATOR_CRDS",
    },
];

/// Installs the CRDs the cluster lacks (where cert-manager or the Prometheus
/// operator runs, they exist) and waits until each is Established. Returns
/// the ones installed, for [`remove_crds`].
pub fn install_crds(crds: &[Crd]) -> Result<Vec<&'static str>> {
    let mut installed = Vec::new();
    for crd in crds {
        let probe = kubectl()
            .args(["get", "customresourcedefinition", crd.name, "-o", "name"])
            .output()
            .context("running kubectl get customresourcedefinition")?;
        if probe.status.success() {
            continue;
        }
        let stderr = String::from_utf8_lossy(&probe.stderr);
        ensure!(
            stderr.contains("NotFound"),
            "looking up CRD {} failed: {stderr}",
            crd.name
        );
        let dir = std::env::var_os(crd.dir_env).with_context(|| {
            format!(
                "the cluster has no CRD {} and {} is unset \
                 (e2e/controlplane/up.sh sets it; elsewhere install the CRD)",
                crd.name, crd.dir_env
            )
        })?;
        let path = Path::new(&dir).join(crd.file);
        ensure!(path.is_file(), "{} does not exist", path.display());
        apply(&path)?;
        installed.push(crd.name);
        // Right after creation the CRD may have no status.conditions yet, and
        // `kubectl wait` then fails at once ("accessor error") instead of
        // waiting: ask again, a bounded number of times.
        retry_while("accessor error", Duration::from_millis(250), || {
            run(kubectl().args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("customresourcedefinition/{}", crd.name),
            ]))
        })?;
    }
    Ok(installed)
}

/// Runs `attempt` until it succeeds, again (at most 20 times in all, `pause`
/// apart) while it fails with an error containing `transient`.
pub fn retry_while<T>(
    transient: &str,
    pause: Duration,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Err(error) if tries < 20 && format!("{error:#}").contains(transient) => {
                std::thread::sleep(pause);
            }
            result => return result,
        }
    }
}

/// Deletes the CRDs and waits until they are gone: a CRD still terminating
/// looks installed to the next suite's [`install_crds`], whose kinds then
/// vanish under it.
pub fn remove_crds(crds: &[&str]) -> Result<()> {
    for crd in crds {
        run(kubectl().args([
            "delete",
            "customresourcedefinition",
            crd,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ]))?;
    }
    Ok(())
}
