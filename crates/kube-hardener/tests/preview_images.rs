//! `kube-hardener preview --resolve-images` against a real registry on
//! loopback: the same decisions as the webhook's, and none without the flag.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube_hardener_testkit::registry::{PASSWD, Registry, TestImage};
use serde_json::{Value, json};

/// The hardened pod (`-o yaml`) and stderr.
fn preview(args: &[&str], dir: &std::path::Path) -> Value {
    let mut cmd = assert_cmd::cargo_bin_cmd!("kube-hardener");
    cmd.arg("preview").args(args).arg(dir.join("pod.yaml"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KUBE_HARDENER_") {
            cmd.env_remove(key);
        }
    }
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_norway::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_resolves_images_only_when_asked() {
    let registry = Registry::anonymous().unwrap();
    let files: &[(&str, &[u8])] = &[("etc/passwd", PASSWD)];
    registry
        .push("kh/app:root", &TestImage::new(None, files))
        .await
        .unwrap();
    registry
        .push("kh/app:named", &TestImage::new(Some("app"), files))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &registry.ca_pem).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[images]\nca_file = \"{}\"\n",
            dir.path().join("ca.crt").display()
        ),
    )
    .unwrap();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: apps}}\nspec:\n  containers:\n  - {{name: root, image: {}}}\n  - {{name: named, image: {}}}\n",
        registry.image("kh/app:root"),
        registry.image("kh/app:named"),
    );
    std::fs::write(dir.path().join("pod.yaml"), pod).unwrap();
    let config = dir.path().join("config.toml");
    let config = config.to_str().unwrap();

    let resolved = preview(
        &["--resolve-images", "--config", config, "-o", "yaml"],
        dir.path(),
    );
    let spec = &resolved["spec"];
    assert_eq!(
        spec["securityContext"].get("runAsNonRoot"),
        None,
        "{resolved:#}"
    );
    assert_eq!(
        spec["containers"][0]["securityContext"].get("runAsNonRoot"),
        None
    );
    assert_eq!(
        spec["containers"][1]["securityContext"]["runAsNonRoot"],
        json!(true)
    );
    assert_eq!(
        spec["containers"][1]["securityContext"]["runAsUser"],
        json!(10001)
    );
    assert!(
        resolved["metadata"]["annotations"]["kube-hardener.io/applied"]
            .as_str()
            .unwrap()
            .contains("runAsUser")
    );
    // Without the flag preview stays offline and decides as before.
    let offline = preview(&["--config", config, "-o", "yaml"], dir.path());
    assert_eq!(
        offline["spec"]["securityContext"]["runAsNonRoot"],
        json!(true),
        "{offline:#}"
    );
    assert_eq!(
        offline["spec"]["containers"][1]["securityContext"].get("runAsUser"),
        None
    );
}
