//! What the node suite needs beyond the API-only harness: the node that
//! `e2e/controlplane/up.sh --node` started, its locally imported images, and
//! waits on what the kubelet reports (pod phase, container states, logs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Api;
use kube::api::LogParams;

use crate::eventually;

/// Set by `e2e/controlplane/up.sh --node` to the name of its node.
pub const NODE_ENV: &str = "KUBE_HARDENER_E2E_NODE";

/// How long a pod may take to start on the local node: the images are local,
/// so this is only the kubelet's sync and the sandbox set-up.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The node the suite runs pods on. There is no fallback: without a node the
/// node suite fails, it is never silently skipped.
pub fn node_name() -> Result<String> {
    match std::env::var(NODE_ENV) {
        Ok(name) if !name.is_empty() => Ok(name),
        _ => bail!(
            "{NODE_ENV} is not set: the node suite needs the local cluster with a node, \
             `e2e/controlplane/up.sh --node -- cargo test -p kube-hardener-e2e --features node --test node`"
        ),
    }
}

/// One of the images `e2e/controlplane/images.sh` builds and up.sh imports:
/// `root` (USER unset), `zero` (USER 0), `uid65532` and `named` (USER app).
pub fn busybox(tag: &str) -> String {
    format!("kh.test/busybox:{tag}")
}

/// The status of `container` (regular, init or ephemeral) in `pod`.
pub fn container_status<'a>(pod: &'a Pod, container: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    [
        &status.container_statuses,
        &status.init_container_statuses,
        &status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|s| s.name == container)
}

/// One line on what the kubelet says about a pod, for failure messages.
pub fn describe(pod: &Pod) -> String {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "no phase".to_owned());
    let mut parts = vec![format!("phase {phase}")];
    let statuses = pod.status.as_ref().into_iter().flat_map(|s| {
        [
            &s.init_container_statuses,
            &s.container_statuses,
            &s.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .flatten()
    });
    for status in statuses {
        let state = status.state.as_ref();
        let text = if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            format!(
                "waiting {} {}",
                waiting.reason.as_deref().unwrap_or(""),
                waiting.message.as_deref().unwrap_or("")
            )
        } else if let Some(terminated) = state.and_then(|s| s.terminated.as_ref()) {
            format!(
                "terminated {} exit {}",
                terminated.reason.as_deref().unwrap_or(""),
                terminated.exit_code
            )
        } else if state.and_then(|s| s.running.as_ref()).is_some() {
            "running".to_owned()
        } else {
            "no state".to_owned()
        };
        parts.push(format!("{}: {text}", status.name));
    }
    parts.join("; ")
}

/// Waits until `check` accepts the pod as the kubelet reports it; returns
/// that pod. The error names what was awaited and the pod's last state.
pub async fn wait_for_pod(
    api: &Api<Pod>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let seen: Arc<Mutex<Option<Pod>>> = Arc::default();
    let check = Arc::new(check);
    eventually(&format!("pod {name} {what}"), timeout, || {
        let (api, found, accepted) = (api.clone(), seen.clone(), check.clone());
        async move {
            match api.get(name).await {
                Ok(pod) if accepted(&pod) => {
                    if let Ok(mut slot) = found.lock() {
                        *slot = Some(pod);
                    }
                    Ok(())
                }
                Ok(pod) => Err(describe(&pod)),
                Err(error) => Err(error.to_string()),
            }
        }
    })
    .await?;
    let pod = seen.lock().ok().and_then(|mut slot| slot.take());
    pod.with_context(|| format!("pod {name} was accepted but not kept"))
}

/// Waits until every container of the pod runs and is ready.
pub async fn wait_running(api: &Api<Pod>, name: &str) -> Result<Pod> {
    wait_for_pod(api, name, "to be Running and ready", START_TIMEOUT, |pod| {
        let status = pod.status.as_ref();
        status.and_then(|s| s.phase.as_deref()) == Some("Running")
            && status
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|all| !all.is_empty() && all.iter().all(|c| c.ready))
    })
    .await
}

/// Waits until `container` is refused with `reason` (e.g.
/// `CreateContainerConfigError`); returns the kubelet's message.
pub async fn wait_refused(
    api: &Api<Pod>,
    name: &str,
    container: &str,
    reason: &str,
) -> Result<String> {
    let pod = wait_for_pod(
        api,
        name,
        &format!("container {container} to wait with {reason}"),
        START_TIMEOUT,
        |pod| waiting(pod, container).is_some_and(|(r, _)| r == reason),
    )
    .await?;
    Ok(waiting(&pod, container)
        .map(|(_, message)| message.to_owned())
        .unwrap_or_default())
}

fn waiting<'a>(pod: &'a Pod, container: &str) -> Option<(&'a str, &'a str)> {
    let waiting = container_status(pod, container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    Some((
        waiting.reason.as_deref().unwrap_or(""),
        waiting.message.as_deref().unwrap_or(""),
    ))
}

/// The marker every probe script prints last, so a log read before the
/// script finished is never mistaken for the whole output.
pub const END: &str = "END";

/// The log of `container`, once it holds the [`END`] line.
pub async fn wait_for_log(api: &Api<Pod>, name: &str, container: &str) -> Result<String> {
    let log: Arc<Mutex<String>> = Arc::default();
    let params = LogParams {
        container: Some(container.to_owned()),
        ..LogParams::default()
    };
    eventually(
        &format!("the log of {name}/{container} to end with {END}"),
        START_TIMEOUT,
        || {
            let (api, params, out) = (api.clone(), params.clone(), log.clone());
            async move {
                match api.logs(name, &params).await {
                    Ok(text) if text.lines().any(|l| l == END) => {
                        if let Ok(mut slot) = out.lock() {
                            *slot = text;
                        }
                        Ok(())
                    }
                    Ok(text) => Err(format!("log so far: {text:?}")),
                    Err(error) => Err(error.to_string()),
                }
            }
        },
    )
    .await?;
    let text = log.lock().map(|slot| slot.clone()).unwrap_or_default();
    Ok(text)
}

/// A shell script that reports what the container may do, one `key=value`
/// (or `Key:\tvalue` from /proc) per line, then [`END`], then sleeps if
/// `stay` so the pod stays Running. `writable` are paths to try writing.
pub fn probe_script(writable: &[&str], stay: bool) -> String {
    let mut script = String::from(
        "grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status\n\
         echo \"uid=$(id -u)\"\n\
         if err=$(touch /probe 2>&1); then echo 'write /=ok'; else echo \"write /=$err\"; fi\n",
    );
    for path in writable {
        script.push_str(&format!(
            "if echo ok >'{path}/probe' 2>/dev/null; then echo 'write {path}=ok'; \
             else echo 'write {path}=failed'; fi\n"
        ));
    }
    script.push_str(&format!("echo {END}\n"));
    if stay {
        script.push_str("exec sleep 3600\n");
    }
    script
}

/// The `key=value` and `Key:\tvalue` lines of a probe's log.
pub fn probe_report(log: &str) -> BTreeMap<String, String> {
    log.lines()
        .filter_map(|line| {
            line.split_once('=')
                .or_else(|| line.split_once(':'))
                .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_parse_proc_and_script_lines() {
        let log = "NoNewPrivs:\t1\nSeccomp:\t2\nCapEff:\t0000000000000000\nuid=65532\n\
                   write /=touch: /probe: Read-only file system\nwrite /tmp=ok\nEND\n";
        let report = probe_report(log);
        assert_eq!(report["NoNewPrivs"], "1");
        assert_eq!(report["Seccomp"], "2");
        assert_eq!(report["CapEff"], "0000000000000000");
        assert_eq!(report["uid"], "65532");
        assert_eq!(report["write /"], "touch: /probe: Read-only file system");
        assert_eq!(report["write /tmp"], "ok");
    }

    #[test]
    fn probe_script_tries_every_path_and_ends_with_the_marker() {
        let script = probe_script(&["/tmp", "/var/cache/app"], false);
        assert!(script.contains("'/tmp/probe'"), "{script}");
        assert!(script.contains("'/var/cache/app/probe'"), "{script}");
        assert!(
            script.trim_end().ends_with(&format!("echo {END}")),
            "{script}"
        );
        assert!(
            probe_script(&[], true)
                .trim_end()
                .ends_with("exec sleep 3600")
        );
    }
}
