//! Risky explicit values that are never changed, only reported: the operator
//! gets an admission warning, Pod Security Admission does the enforcing.

use crate::WarningKind;
use crate::rules::Edits;
use crate::shape::clip;
use crate::view::{ContainerView, PodView, SecurityContext};

/// SELinux types the Pod Security baseline profile allows.
const SAFE_SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Sysctls the Pod Security baseline profile allows (namespaced and isolated
/// from the node).
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Added capabilities the restricted profile allows.
const ALLOWED_ADDED_CAPABILITIES: [&str; 1] = ["NET_BIND_SERVICE"];

/// `at` renders the owner's field path; only called when there is a warning.
fn common(security_context: &SecurityContext<'_>, at: &dyn Fn() -> String, edits: &mut Edits<'_>) {
    if let Some(kind) = security_context
        .se_linux_type
        .filter(|t| !SAFE_SELINUX_TYPES.contains(t))
    {
        edits.warn(
            WarningKind::SeLinuxType,
            format!("{}.securityContext.seLinuxOptions.type", at()),
            format!(
                "SELinux type `{}` is not confined like a container",
                clip(kind, 40)
            ),
        );
    }
    if security_context.seccomp == Some(Some("Unconfined")) {
        edits.warn(
            WarningKind::SeccompUnconfined,
            format!("{}.securityContext.seccompProfile.type", at()),
            "is Unconfined; no system call filtering",
        );
    }
}

pub(crate) fn pod(pod: &PodView<'_>, edits: &mut Edits<'_>) {
    let at = pod.field;
    for (shared, key, what) in [
        (pod.host_network, "hostNetwork", "network"),
        (pod.host_pid, "hostPID", "process"),
        (pod.host_ipc, "hostIPC", "IPC"),
    ] {
        if shared {
            edits.warn(
                WarningKind::HostNamespace,
                format!("{at}.{key}"),
                format!("is true; the pod shares the node's {what} namespace"),
            );
        }
    }
    for volume in pod.volumes.iter().filter(|v| v.host_path) {
        edits.warn(
            WarningKind::HostPath,
            format!(
                "{at}.volumes{{{}}}.hostPath",
                clip(volume.name.unwrap_or_default(), 63)
            ),
            "mounts a directory of the node",
        );
    }
    for sysctl in pod
        .security_context
        .sysctls
        .iter()
        .filter(|s| !SAFE_SYSCTLS.contains(s))
    {
        edits.warn(
            WarningKind::UnsafeSysctl,
            format!("{at}.securityContext.sysctls"),
            format!(
                "`{}` is not in the Pod Security baseline safe set",
                clip(sysctl, 60)
            ),
        );
    }
    common(&pod.security_context, &|| at.to_owned(), edits);
}

pub(crate) fn container(container: &ContainerView<'_>, edits: &mut Edits<'_>) {
    let field = || container.field();
    let security_context = &container.security_context;
    if security_context.privileged == Some(true) {
        edits.warn(
            WarningKind::Privileged,
            format!("{}.securityContext.privileged", field()),
            "is true; the container has full access to the node",
        );
    }
    if security_context.proc_mount == Some("Unmasked") {
        edits.warn(
            WarningKind::ProcMountUnmasked,
            format!("{}.securityContext.procMount", field()),
            "is Unmasked; /proc is not masked",
        );
    }
    let risky: Vec<&str> = security_context
        .add
        .iter()
        .copied()
        .filter(|cap| !ALLOWED_ADDED_CAPABILITIES.contains(cap))
        .collect();
    if !risky.is_empty() {
        edits.warn(
            WarningKind::AddedCapabilities,
            format!("{}.securityContext.capabilities.add", field()),
            format!("adds {}", clip(&risky.join(", "), 80)),
        );
    }
    common(security_context, &field, edits);
}

#[cfg(test)]
mod tests {
    use crate::rules::test_support::*;
    use crate::setting::SettingSet;
    use crate::{Policy, Setting, WarningKind};
    use serde_json::{Value, json};

    fn warnings(spec: Value) -> Vec<(WarningKind, String, String)> {
        let mut policy = Policy::default();
        policy.settings.set(Setting::RunAsNonRoot, false);
        policy
            .settings
            .set(Setting::AllowPrivilegeEscalation, false);
        policy.settings.set(Setting::ReadOnlyRootFilesystem, false);
        run_with(spec, &policy, SettingSet::default(), None).warnings
    }

    #[test]
    fn reports_each_risky_value_with_its_field() {
        use WarningKind::*;
        let c = |security_context: Value| json!({"containers": [{"name": "app", "securityContext": security_context}]});
        let cases = [
            (
                c(json!({"privileged": true})),
                Privileged,
                "spec.containers{app}.securityContext.privileged",
            ),
            (
                c(json!({"procMount": "Unmasked"})),
                ProcMountUnmasked,
                "spec.containers{app}.securityContext.procMount",
            ),
            (
                c(json!({"seLinuxOptions": {"type": "spc_t"}})),
                SeLinuxType,
                "spec.containers{app}.securityContext.seLinuxOptions.type",
            ),
            (
                json!({"securityContext": {"seLinuxOptions": {"type": "unconfined_t"}}}),
                SeLinuxType,
                "spec.securityContext.seLinuxOptions.type",
            ),
            (
                c(json!({"capabilities": {"add": ["NET_ADMIN", "NET_BIND_SERVICE"]}})),
                AddedCapabilities,
                "spec.containers{app}.securityContext.capabilities.add",
            ),
            (
                c(json!({"seccompProfile": {"type": "Unconfined"}})),
                SeccompUnconfined,
                "spec.containers{app}.securityContext.seccompProfile.type",
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}),
                UnsafeSysctl,
                "spec.securityContext.sysctls",
            ),
            (
                json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                HostPath,
                "spec.volumes{root}.hostPath",
            ),
            (
                json!({"hostNetwork": true}),
                HostNamespace,
                "spec.hostNetwork",
            ),
            (json!({"hostPID": true}), HostNamespace, "spec.hostPID"),
            (json!({"hostIPC": true}), HostNamespace, "spec.hostIPC"),
        ];
        for (spec, kind, field) in cases {
            let got = warnings(spec.clone());
            assert_eq!(got.len(), 1, "{spec}: {got:?}");
            assert_eq!((got[0].0, got[0].1.as_str()), (kind, field), "{spec}");
            assert!(got[0].1.len() + 2 + got[0].2.len() < 200);
        }
    }

    #[test]
    fn safe_values_are_quiet() {
        let spec = json!({
            "hostNetwork": false, "hostPID": false, "hostIPC": false,
            "securityContext": {
                "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"},
                            {"name": "kernel.shm_rmid_forced", "value": "1"}],
                "seLinuxOptions": {"type": "container_t", "level": "s0:c1"},
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "volumes": [{"name": "e", "emptyDir": {}}, {"name": "p", "persistentVolumeClaim": {"claimName": "x"}}],
            "containers": [{"name": "app", "securityContext": {
                "privileged": false, "procMount": "Default",
                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                "seLinuxOptions": {"type": "container_init_t"},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "x"}}}]
        });
        assert_eq!(warnings(spec), vec![]);
    }

    #[test]
    fn messages_stay_short_for_huge_user_values() {
        let long = "x".repeat(10_000);
        let spec = json!({
            "securityContext": {"sysctls": [{"name": long}], "seLinuxOptions": {"type": long}},
            "volumes": [{"name": long, "hostPath": {"path": "/"}}],
            "containers": [{"name": long, "securityContext": {"capabilities": {"add": [long, long]},
                "seLinuxOptions": {"type": long}, "privileged": true}}]
        });
        let got = warnings(spec);
        assert_eq!(got.len(), 6);
        for (_, field, message) in got {
            assert!(
                field.chars().count() + 2 + message.chars().count() < 200,
                "{field}: {message}"
            );
        }
    }
}
