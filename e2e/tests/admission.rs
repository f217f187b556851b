//! What the API server stores once kube-hardener is registered: defaults,
//! Pod Security Admission, opt-outs, explicit values, dry-run, ephemeral
//! containers and the namespace watch. These tests work against a local
//! webhook process or the one deployed from deploy/ (`KUBE_HARDENER_E2E_WEBHOOK`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube_hardener_e2e::{
    NamespaceOptions, PlainAndSkipped, RegisterOptions, Registration, TestNamespace, any_webhook,
    applied_annotation, client, eventually, plain_pod, pod, to_json, wait_until_hardening,
};
use serde_json::{Value, json};

/// A namespace with the webhook registered for it and in effect.
async fn hardened_namespace(
    prefix: &str,
    options: NamespaceOptions,
) -> Result<(
    TestNamespace,
    Registration,
    Option<kube_hardener_e2e::LocalWebhook>,
)> {
    let client = client().await?;
    let (target, server) = any_webhook(&client).await?;
    let namespace = TestNamespace::create(&client, prefix, options).await?;
    let registration =
        Registration::create(&client, &target, &namespace, RegisterOptions::default()).await?;
    wait_until_hardening(&namespace).await?;
    Ok((namespace, registration, server))
}

fn container<'a>(pod: &'a Value, list: &str, index: usize) -> &'a Value {
    &pod["spec"][list][index]
}

/// The paths of a container's volume mounts backed by an emptyDir volume.
fn empty_dir_mounts(pod: &Value, list: &str, index: usize) -> Vec<String> {
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is_empty_dir = |name: &str| {
        volumes
            .iter()
            .any(|volume| volume["name"] == name && volume.get("emptyDir").is_some())
    };
    let mut paths: Vec<String> = container(pod, list, index)["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|mount| mount["name"].as_str().is_some_and(is_empty_dir))
        .filter_map(|mount| mount["mountPath"].as_str().map(str::to_owned))
        .collect();
    paths.sort();
    paths
}

fn applied_set(pod: &Pod) -> Vec<String> {
    let mut names: Vec<String> = applied_annotation(pod)
        .unwrap_or_default()
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// Runs `kube-hardener preview -o json` over `manifest` and applies the patch it prints.
fn preview(manifest: &Value, namespace: &str) -> Result<(Value, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pod.json");
    std::fs::write(&file, serde_json::to_vec_pretty(manifest)?)?;
    let output = kube_hardener_e2e::kube_hardener_command()?
        .args(["preview", "-o", "json", "--namespace", namespace])
        .arg(&file)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "preview failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: Value = serde_json::from_slice(&output.stdout)?;
    let entry = &entries[0];
    let patch: json_patch::Patch = serde_json::from_value(entry["patch"].clone())?;
    let mut object = manifest.clone();
    json_patch::patch(&mut object, &patch)?;
    let mut applied: Vec<String> = serde_json::from_value(entry["applied"].clone())?;
    applied.sort();
    Ok((object, applied))
}

/// The security-relevant parts of a pod: what the webhook may touch.
fn security_view(pod: &Value) -> Value {
    let containers = |list: &str| -> Value {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({
                    "name": c["name"],
                    "securityContext": c["securityContext"],
                    "volumeMounts": c["volumeMounts"],
                })
            })
            .collect()
    };
    json!({
        "podSecurityContext": pod["spec"]["securityContext"],
        "volumes": pod["spec"]["volumes"],
        "containers": containers("containers"),
        "initContainers": containers("initContainers"),
        "applied": pod["metadata"]["annotations"]["kube-hardener.io/applied"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pod_gets_every_default_and_matches_preview() -> Result<()> {
    let (ns, _registration, _server) = hardened_namespace("defaults", Default::default()).await?;
    // No service-account token volume: the API server adds it before the webhook
    // runs, and preview (offline) cannot know about it.
    let manifest = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app"},
        "spec": {
            "automountServiceAccountToken": false,
            "initContainers": [{"name": "setup", "image": "busybox:1.36", "command": ["true"]}],
            "containers": [
                {"name": "web", "image": "nginx:1.27"},
                {"name": "cache", "image": "redis:7", "volumeMounts": [{"name": "data", "mountPath": "/tmp"}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    });
    let stored = ns
        .pods()
        .create(&PostParams::default(), &pod(manifest.clone())?)
        .await?;
    let stored_json = to_json(&stored)?;

    assert_eq!(
        stored_json["spec"]["securityContext"],
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    for (list, index) in [("initContainers", 0), ("containers", 0), ("containers", 1)] {
        let context = &container(&stored_json, list, index)["securityContext"];
        assert_eq!(
            context["allowPrivilegeEscalation"],
            json!(false),
            "{list}[{index}]"
        );
        assert_eq!(
            context["capabilities"],
            json!({"drop": ["ALL"]}),
            "{list}[{index}]"
        );
        assert_eq!(
            context["readOnlyRootFilesystem"],
            json!(true),
            "{list}[{index}]"
        );
        assert_eq!(
            empty_dir_mounts(&stored_json, list, index),
            ["/tmp"],
            "{list}[{index}]"
        );
    }
    // The container that already mounted /tmp keeps its own volume there.
    assert_eq!(
        container(&stored_json, "containers", 1)["volumeMounts"],
        json!([{"name": "data", "mountPath": "/tmp"}])
    );
    assert_eq!(
        applied_set(&stored),
        [
            "allowPrivilegeEscalation",
            "capabilities",
            "readOnlyRootFilesystem",
            "runAsNonRoot",
            "seccompProfile"
        ]
    );

    let (previewed, preview_applied) = preview(&manifest, &ns.name)?;
    assert_eq!(security_view(&stored_json), security_view(&previewed));
    assert_eq!(preview_applied, applied_set(&stored));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_admission_restricted_rejects_plain_pod_until_webhook_is_registered()
-> Result<()> {
    let client = client().await?;
    let labels = BTreeMap::from([
        (
            "pod-security.kubernetes.io/enforce".to_owned(),
            "restricted".to_owned(),
        ),
        (
            "pod-security.kubernetes.io/enforce-version".to_owned(),
            "latest".to_owned(),
        ),
    ]);
    let ns = TestNamespace::create(
        &client,
        "psa",
        NamespaceOptions {
            labels,
            ..Default::default()
        },
    )
    .await?;
    let nginx = pod(plain_pod("nginx"))?;

    let error = ns
        .pods()
        .create(&PostParams::default(), &nginx)
        .await
        .expect_err("restricted must reject a plain pod without the webhook");
    let message = error.to_string();
    assert!(
        message.contains("violates PodSecurity \"restricted:latest\""),
        "{message}"
    );
    for violation in [
        "allowPrivilegeEscalation != false",
        "unrestricted capabilities",
        "runAsNonRoot != true",
        "seccompProfile",
    ] {
        assert!(
            message.contains(violation),
            "{violation} missing in: {message}"
        );
    }

    let (target, _server) = any_webhook(&client).await?;
    let _registration =
        Registration::create(&client, &target, &ns, RegisterOptions::default()).await?;
    wait_until_hardening(&ns).await?;
    let stored = ns.pods().create(&PostParams::default(), &nginx).await?;
    assert!(applied_annotation(&stored).is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_skip_all_leaves_pods_untouched() -> Result<()> {
    let client = client().await?;
    let (target, _server) = any_webhook(&client).await?;
    // One registration for two namespaces: hardening in the control namespace
    // proves the webhook is in effect for the opted-out one too.
    let PlainAndSkipped {
        plain: control,
        skipped,
        registration: _registration,
    } = PlainAndSkipped::create(&client, &target, "skip-all").await?;
    wait_until_hardening(&control).await?;

    let stored = skipped
        .pods()
        .create(&PostParams::default(), &pod(plain_pod("untouched"))?)
        .await?;
    let stored_json = to_json(&stored)?;
    assert_eq!(applied_annotation(&stored), None);
    assert_eq!(stored_json["spec"]["securityContext"], json!({}));
    assert_eq!(
        container(&stored_json, "containers", 0).get("securityContext"),
        None
    );
    assert_eq!(
        stored_json["spec"]["volumes"].as_array().map(Vec::len),
        Some(1),
        "only the token volume"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_partial_skip_turns_off_only_the_listed_settings() -> Result<()> {
    let annotations = BTreeMap::from([(
        "kube-hardener.io/skip".to_owned(),
        "readOnlyRootFilesystem,capabilities".to_owned(),
    )]);
    let (ns, _registration, _server) = hardened_namespace(
        "skip-some",
        NamespaceOptions {
            annotations,
            ..Default::default()
        },
    )
    .await?;
    let stored = ns
        .pods()
        .create(&PostParams::default(), &pod(plain_pod("partly"))?)
        .await?;
    let stored_json = to_json(&stored)?;
    let context = &container(&stored_json, "containers", 0)["securityContext"];
    assert_eq!(context["allowPrivilegeEscalation"], json!(false));
    assert_eq!(context.get("capabilities"), None);
    assert_eq!(context.get("readOnlyRootFilesystem"), None);
    assert!(empty_dir_mounts(&stored_json, "containers", 0).is_empty());
    assert_eq!(
        stored_json["spec"]["securityContext"]["runAsNonRoot"],
        json!(true)
    );
    assert_eq!(
        applied_set(&stored),
        ["allowPrivilegeEscalation", "runAsNonRoot", "seccompProfile"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_paths_annotation_replaces_the_configured_paths() -> Result<()> {
    let (ns, _registration, _server) = hardened_namespace("writable", Default::default()).await?;
    let mut manifest = plain_pod("nginx");
    manifest["metadata"]["annotations"] =
        json!({"kube-hardener.io/writable-paths": "/var/cache/nginx,/run"});
    let stored = ns
        .pods()
        .create(&PostParams::default(), &pod(manifest)?)
        .await?;
    let stored_json = to_json(&stored)?;
    assert_eq!(
        container(&stored_json, "containers", 0)["securityContext"]["readOnlyRootFilesystem"],
        json!(true)
    );
    assert_eq!(
        empty_dir_mounts(&stored_json, "containers", 0),
        ["/run", "/var/cache/nginx"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_values_are_kept() -> Result<()> {
    let (ns, _registration, _server) = hardened_namespace("explicit", Default::default()).await?;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "explicit"},
        "spec": {
            "securityContext": {"seccompProfile": {"type": "Unconfined"}, "runAsNonRoot": false},
            "containers": [{
                "name": "app", "image": "nginx:1.27",
                "securityContext": {
                    "allowPrivilegeEscalation": true,
                    "readOnlyRootFilesystem": false,
                    "capabilities": {"drop": ["all"], "add": ["NET_ADMIN"]},
                },
            }],
        },
    });
    let stored = ns
        .pods()
        .create(&PostParams::default(), &pod(manifest)?)
        .await?;
    let stored_json = to_json(&stored)?;
    assert_eq!(
        stored_json["spec"]["securityContext"],
        json!({"seccompProfile": {"type": "Unconfined"}, "runAsNonRoot": false})
    );
    let context = &container(&stored_json, "containers", 0)["securityContext"];
    assert_eq!(context["allowPrivilegeEscalation"], json!(true));
    assert_eq!(context["readOnlyRootFilesystem"], json!(false));
    // Lower-case "all" does not satisfy Pod Security; the exact "ALL" is appended, `add` kept.
    assert_eq!(
        context["capabilities"],
        json!({"drop": ["all", "ALL"], "add": ["NET_ADMIN"]})
    );
    assert_eq!(context.get("runAsNonRoot"), None);
    assert!(empty_dir_mounts(&stored_json, "containers", 0).is_empty());
    assert_eq!(applied_set(&stored), ["capabilities"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risky_pods_stay_valid_for_the_api_server() -> Result<()> {
    let (ns, _registration, _server) = hardened_namespace("risky", Default::default()).await?;
    let api = ns.pods();
    let with_context = |name: &str, context: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "securityContext": context}]},
        })
    };

    // privileged: allowPrivilegeEscalation=false would be rejected by validation.
    let privileged = to_json(
        &api.create(
            &PostParams::default(),
            &pod(with_context("privileged", json!({"privileged": true})))?,
        )
        .await?,
    )?;
    let context = &container(&privileged, "containers", 0)["securityContext"];
    assert_eq!(context["privileged"], json!(true));
    assert_eq!(context.get("allowPrivilegeEscalation"), None);

    // SYS_ADMIN: same rule.
    let sys_admin = to_json(
        &api.create(
            &PostParams::default(),
            &pod(with_context(
                "sys-admin",
                json!({"capabilities": {"add": ["SYS_ADMIN"]}}),
            ))?,
        )
        .await?,
    )?;
    let context = &container(&sys_admin, "containers", 0)["securityContext"];
    assert_eq!(context.get("allowPrivilegeEscalation"), None);
    assert_eq!(
        context["capabilities"],
        json!({"add": ["SYS_ADMIN"], "drop": ["ALL"]})
    );

    // runAsUser 0: runAsNonRoot would make the kubelet refuse to start it.
    let root = to_json(
        &api.create(
            &PostParams::default(),
            &pod(with_context("root", json!({"runAsUser": 0})))?,
        )
        .await?,
    )?;
    assert_eq!(
        container(&root, "containers", 0)["securityContext"].get("runAsNonRoot"),
        None
    );
    assert_ne!(root["spec"]["securityContext"]["runAsNonRoot"], json!(true));

    // Windows: only runAsNonRoot is allowed by validation.
    let windows = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "windows"},
        "spec": {"os": {"name": "windows"}, "containers": [{"name": "app", "image": "mcr.microsoft.com/windows/nanoserver:ltsc2022"}]},
    });
    let windows = api.create(&PostParams::default(), &pod(windows)?).await?;
    let windows_json = to_json(&windows)?;
    assert_eq!(
        windows_json["spec"]["securityContext"],
        json!({"runAsNonRoot": true})
    );
    assert_eq!(
        container(&windows_json, "containers", 0).get("securityContext"),
        None
    );
    assert_eq!(applied_set(&windows), ["runAsNonRoot"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_dry_run_returns_the_hardened_pod_and_stores_nothing() -> Result<()> {
    let (ns, _registration, _server) = hardened_namespace("dry-run", Default::default()).await?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let returned = ns.pods().create(&dry_run, &pod(plain_pod("dry"))?).await?;
    let returned_json = to_json(&returned)?;
    assert_eq!(
        container(&returned_json, "containers", 0)["securityContext"]["allowPrivilegeEscalation"],
        json!(false)
    );
    assert_eq!(
        returned_json["spec"]["securityContext"]["runAsNonRoot"],
        json!(true)
    );
    assert!(applied_annotation(&returned).is_some());
    assert!(
        ns.pods().get_opt("dry").await?.is_none(),
        "dry-run must not store the pod"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_container_added_through_the_subresource_is_hardened() -> Result<()> {
    let (ns, _registration, _server) = hardened_namespace("ephemeral", Default::default()).await?;
    let api = ns.pods();
    let created = api
        .create(&PostParams::default(), &pod(plain_pod("debug-me"))?)
        .await?;
    let mut with_debugger = to_json(&created)?;
    with_debugger["spec"]["ephemeralContainers"] = json!([{
        "name": "debugger", "image": "busybox:1.36", "command": ["sh"],
        "stdin": true, "tty": true, "targetContainerName": "web",
    }]);
    api.replace_ephemeral_containers("debug-me", &PostParams::default(), &pod(with_debugger)?)
        .await?;
    let stored = to_json(&api.get("debug-me").await?)?;
    let context = &container(&stored, "ephemeralContainers", 0)["securityContext"];
    assert_eq!(
        context["allowPrivilegeEscalation"],
        json!(false),
        "{stored:#}"
    );
    assert_eq!(context["capabilities"], json!({"drop": ["ALL"]}));
    // The pod-level fields were set at creation and are immutable; they stay as they were.
    assert_eq!(
        stored["spec"]["securityContext"],
        to_json(&created)?["spec"]["securityContext"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_annotation_added_after_start_up_takes_effect_without_restart() -> Result<()> {
    let (ns, _registration, _server) = hardened_namespace("watch", Default::default()).await?;
    let api = ns.pods();
    let first = api
        .create(&PostParams::default(), &pod(plain_pod("before"))?)
        .await?;
    assert!(applied_annotation(&first).is_some());

    ns.annotate("kube-hardener.io/skip", "all").await?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        "the opt-out to reach the webhook",
        Duration::from_secs(20),
        || async {
            match api
                .create(
                    &dry_run,
                    &pod(plain_pod("after")).map_err(|e| e.to_string())?,
                )
                .await
            {
                Ok(probe) if applied_annotation(&probe).is_none() => Ok(()),
                Ok(_) => Err("still hardened".to_owned()),
                Err(error) => Err(error.to_string()),
            }
        },
    )
    .await?;
    let after = to_json(
        &api.create(&PostParams::default(), &pod(plain_pod("after"))?)
            .await?,
    )?;
    assert_eq!(after["spec"]["securityContext"], json!({}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_namespace_admits_pods_unchanged_and_warns() -> Result<()> {
    let client = client().await?;
    let (target, _server) = any_webhook(&client).await?;
    let annotations = BTreeMap::from([("kube-hardener.io/mode".to_owned(), "audit".to_owned())]);
    let ns = TestNamespace::create(
        &client,
        "audit",
        NamespaceOptions {
            annotations,
            ..Default::default()
        },
    )
    .await?;
    let _registration =
        Registration::create(&client, &target, &ns, RegisterOptions::default()).await?;
    // The warning itself shows that the webhook is in effect.
    let expected = "kube-hardener audit mode: would set runAsNonRoot,seccompProfile,allowPrivilegeEscalation,capabilities,readOnlyRootFilesystem";
    eventually("the audit warning", Duration::from_secs(30), || async {
        let (_, warnings) = kube_hardener_e2e::kubectl_create(&ns.name, &plain_pod("probe"), true)
            .map_err(|e| format!("{e:#}"))?;
        if warnings.iter().any(|w| w == expected) {
            Ok(())
        } else {
            Err(format!("warnings {warnings:?}"))
        }
    })
    .await?;
    let (stored, warnings) =
        kube_hardener_e2e::kubectl_create(&ns.name, &plain_pod("audited"), false)?;
    assert!(warnings.iter().any(|w| w == expected), "{warnings:?}");
    assert_eq!(stored["metadata"].get("annotations"), None, "{stored:#}");
    assert_eq!(stored["spec"]["securityContext"], json!({}));
    assert_eq!(stored["spec"]["containers"][0].get("securityContext"), None);
    Ok(())
}
