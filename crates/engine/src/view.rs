//! A shape-checked, borrowed view of the parts of a pod spec the rules read.
//!
//! Everything is validated here, once, before any rule runs: a malformed
//! object fails as a whole with a typed error instead of half a patch.

use std::borrow::Cow;

use crate::patch::Token;
use crate::shape::{self, Object};
use crate::{EngineError, writable};

/// The three container lists of a pod spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    Containers,
    InitContainers,
    EphemeralContainers,
}

impl ListKind {
    pub(crate) const ALL: [ListKind; 3] = [
        ListKind::Containers,
        ListKind::InitContainers,
        ListKind::EphemeralContainers,
    ];

    pub(crate) const fn key(self) -> &'static str {
        match self {
            ListKind::Containers => "containers",
            ListKind::InitContainers => "initContainers",
            ListKind::EphemeralContainers => "ephemeralContainers",
        }
    }
}

/// The security-relevant fields of a pod- or container-level `securityContext`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecurityContext<'v> {
    pub run_as_non_root: Option<bool>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    /// `Some` when `seccompProfile` is set; the inner value is its `type`.
    pub seccomp: Option<Option<&'v str>>,
    pub se_linux_type: Option<&'v str>,
    /// `windowsOptions.runAsUserName`.
    pub run_as_user_name: Option<&'v str>,
    /// `windowsOptions.hostProcess`.
    pub host_process: Option<bool>,
    // Container level only.
    pub privileged: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    pub proc_mount: Option<&'v str>,
    pub drop: Option<Vec<&'v str>>,
    pub add: Vec<&'v str>,
    // Pod level only.
    pub fs_group: Option<i64>,
    pub fs_group_change_policy: Option<&'v str>,
    pub sysctls: Vec<&'v str>,
}

impl<'v> SecurityContext<'v> {
    fn parse(owner: &'v Object, base: &str, pod_level: bool) -> Result<Self, EngineError> {
        let Some(security_context) = shape::object(owner, base, "securityContext")? else {
            return Ok(SecurityContext::default());
        };
        let at = shape::join(base, "securityContext");
        let mut out = SecurityContext {
            run_as_non_root: shape::boolean(security_context, &at, "runAsNonRoot")?,
            run_as_user: shape::integer(security_context, &at, "runAsUser")?,
            run_as_group: shape::integer(security_context, &at, "runAsGroup")?,
            ..SecurityContext::default()
        };
        if let Some(seccomp) = shape::object(security_context, &at, "seccompProfile")? {
            out.seccomp = Some(shape::string(
                seccomp,
                &shape::join(&at, "seccompProfile"),
                "type",
            )?);
        }
        if let Some(selinux) = shape::object(security_context, &at, "seLinuxOptions")? {
            out.se_linux_type =
                shape::string(selinux, &shape::join(&at, "seLinuxOptions"), "type")?;
        }
        if let Some(windows) = shape::object(security_context, &at, "windowsOptions")? {
            let windows_at = shape::join(&at, "windowsOptions");
            out.run_as_user_name = shape::string(windows, &windows_at, "runAsUserName")?;
            out.host_process = shape::boolean(windows, &windows_at, "hostProcess")?;
        }
        if pod_level {
            out.fs_group = shape::integer(security_context, &at, "fsGroup")?;
            out.fs_group_change_policy =
                shape::string(security_context, &at, "fsGroupChangePolicy")?;
            let sysctls_at = shape::join(&at, "sysctls");
            for (i, sysctl) in shape::objects(security_context, &at, "sysctls")?
                .into_iter()
                .enumerate()
            {
                let name = shape::string(sysctl, &format!("{sysctls_at}[{i}]"), "name")?;
                out.sysctls.push(name.unwrap_or_default());
            }
        } else {
            out.privileged = shape::boolean(security_context, &at, "privileged")?;
            out.allow_privilege_escalation =
                shape::boolean(security_context, &at, "allowPrivilegeEscalation")?;
            out.read_only_root_filesystem =
                shape::boolean(security_context, &at, "readOnlyRootFilesystem")?;
            out.proc_mount = shape::string(security_context, &at, "procMount")?;
            if let Some(caps) = shape::object(security_context, &at, "capabilities")? {
                let caps_at = shape::join(&at, "capabilities");
                out.drop = shape::strings(caps, &caps_at, "drop")?;
                out.add = shape::strings(caps, &caps_at, "add")?.unwrap_or_default();
            }
        }
        Ok(out)
    }
}

/// One entry of `containers`, `initContainers` or `ephemeralContainers`.
#[derive(Debug, Clone)]
pub(crate) struct ContainerView<'v> {
    pub list: ListKind,
    pub index: usize,
    pub name: Option<&'v str>,
    /// The container's `image`, as spelled in the spec.
    pub image: Option<&'v str>,
    spec_field: &'static str,
    pub security_context: SecurityContext<'v>,
    pub mount_paths: Vec<&'v str>,
    pub mount_names: Vec<&'v str>,
    /// `volumeDevices[*].devicePath`: the API server rejects a mount at the
    /// same path.
    pub device_paths: Vec<&'v str>,
}

impl ContainerView<'_> {
    /// Field path for messages: `spec.containers{app}` (Kubernetes' style for
    /// a container by name), or `spec.containers[0]` when it has no name.
    /// Built on demand: most containers never get a warning.
    pub(crate) fn field(&self) -> String {
        match self.name {
            Some(name) => format!(
                "{}.{}{{{}}}",
                self.spec_field,
                self.list.key(),
                shape::clip(name, 63)
            ),
            None => format!("{}.{}[{}]", self.spec_field, self.list.key(), self.index),
        }
    }

    /// Pointer tokens of the container itself.
    pub(crate) fn tokens(&self, spec: &[Token]) -> Vec<Token> {
        let mut tokens = spec.to_vec();
        tokens.push(Token::Key(self.list.key()));
        tokens.push(Token::Index(self.index));
        tokens
    }

    /// Pointer tokens of the container's `securityContext`.
    pub(crate) fn security_context_tokens(&self, spec: &[Token]) -> Vec<Token> {
        let mut tokens = self.tokens(spec);
        tokens.push(Token::Key("securityContext"));
        tokens
    }

    /// A name unique among the pod's containers even when `name` is missing
    /// (used to derive volume names).
    pub(crate) fn key(&self) -> Cow<'_, str> {
        match self.name {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!("{}-{}", self.list.key(), self.index)),
        }
    }

    /// Whether the container mounts something (a volume or a block device)
    /// at `path`. Paths are compared by component, as the kubelet resolves
    /// them: `/tmp/`, `/tmp//` and `/tmp/.` are all `/tmp`.
    pub(crate) fn mounts(&self, path: &str) -> bool {
        self.mount_paths
            .iter()
            .chain(&self.device_paths)
            .any(|p| writable::same_path(p, path))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct VolumeView<'v> {
    pub name: Option<&'v str>,
    pub host_path: bool,
}

/// The pod spec as the rules see it.
#[derive(Debug, Clone)]
pub(crate) struct PodView<'v> {
    /// `spec`, `spec.template.spec`, … for messages.
    pub field: &'static str,
    pub security_context: SecurityContext<'v>,
    pub windows: bool,
    pub containers: Vec<ContainerView<'v>>,
    pub volumes: Vec<VolumeView<'v>>,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
}

impl<'v> PodView<'v> {
    pub(crate) fn parse(spec: &'v Object, field: &'static str) -> Result<Self, EngineError> {
        let os_windows = match shape::object(spec, field, "os")? {
            Some(os) => shape::string(os, &shape::join(field, "os"), "name")? == Some("windows"),
            None => false,
        };
        let security_context = SecurityContext::parse(spec, field, true)?;
        let mut containers = Vec::new();
        for list in ListKind::ALL {
            let items = shape::objects(spec, field, list.key())?;
            for (index, container) in items.into_iter().enumerate() {
                let at = format!("{field}.{}[{index}]", list.key());
                containers.push(parse_container(container, list, index, field, &at)?);
            }
        }
        let mut volumes = Vec::new();
        for (i, volume) in shape::objects(spec, field, "volumes")?
            .into_iter()
            .enumerate()
        {
            let at = format!("{field}.volumes[{i}]");
            volumes.push(VolumeView {
                name: shape::string(volume, &at, "name")?,
                host_path: shape::present(volume, "hostPath").is_some(),
            });
        }
        // HostProcess containers exist only on Windows nodes, so such a pod is
        // a Windows pod even when it does not declare `os.name`.
        let host_process = security_context.host_process == Some(true)
            || containers
                .iter()
                .any(|c| c.security_context.host_process == Some(true));
        Ok(PodView {
            field,
            security_context,
            windows: os_windows || host_process,
            containers,
            volumes,
            host_network: shape::boolean(spec, field, "hostNetwork")?.unwrap_or(false),
            host_pid: shape::boolean(spec, field, "hostPID")?.unwrap_or(false),
            host_ipc: shape::boolean(spec, field, "hostIPC")?.unwrap_or(false),
        })
    }
}

fn parse_container<'v>(
    container: &'v Object,
    list: ListKind,
    index: usize,
    spec_field: &'static str,
    at: &str,
) -> Result<ContainerView<'v>, EngineError> {
    let name = shape::string(container, at, "name")?;
    let image = shape::string(container, at, "image")?;
    let mut mount_paths = Vec::new();
    let mut mount_names = Vec::new();
    for (i, mount) in shape::objects(container, at, "volumeMounts")?
        .into_iter()
        .enumerate()
    {
        let mount_at = format!("{at}.volumeMounts[{i}]");
        if let Some(path) = shape::string(mount, &mount_at, "mountPath")? {
            mount_paths.push(path);
        }
        if let Some(name) = shape::string(mount, &mount_at, "name")? {
            mount_names.push(name);
        }
    }
    let mut device_paths = Vec::new();
    for (i, device) in shape::objects(container, at, "volumeDevices")?
        .into_iter()
        .enumerate()
    {
        let device_at = format!("{at}.volumeDevices[{i}]");
        if let Some(path) = shape::string(device, &device_at, "devicePath")? {
            device_paths.push(path);
        }
    }
    Ok(ContainerView {
        list,
        index,
        name,
        image,
        spec_field,
        security_context: SecurityContext::parse(container, at, false)?,
        mount_paths,
        mount_names,
        device_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(spec: Value) -> Result<PodView<'static>, EngineError> {
        let leaked: &'static Value = Box::leak(Box::new(spec));
        PodView::parse(leaked.as_object().unwrap(), "spec")
    }

    #[test]
    fn reads_every_list_in_order_with_names_and_fields() {
        let pod = parse(json!({
            "containers": [{"name": "app"}, {}],
            "initContainers": [{"name": "init", "restartPolicy": "Always"}],
            "ephemeralContainers": [{"name": "debug"}]
        }))
        .unwrap();
        let seen: Vec<_> = pod
            .containers
            .iter()
            .map(|c| (c.list, c.index, c.field(), c.key().into_owned()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    ListKind::Containers,
                    0,
                    "spec.containers{app}".to_owned(),
                    "app".to_owned()
                ),
                (
                    ListKind::Containers,
                    1,
                    "spec.containers[1]".to_owned(),
                    "containers-1".to_owned()
                ),
                (
                    ListKind::InitContainers,
                    0,
                    "spec.initContainers{init}".to_owned(),
                    "init".to_owned()
                ),
                (
                    ListKind::EphemeralContainers,
                    0,
                    "spec.ephemeralContainers{debug}".to_owned(),
                    "debug".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn reads_security_contexts_at_both_levels() {
        let pod = parse(json!({
            "os": {"name": "windows"},
            "hostPID": true,
            "securityContext": {"runAsNonRoot": false, "runAsUser": 0, "fsGroup": 2000,
                "fsGroupChangePolicy": "Always", "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
                "seccompProfile": {"type": "Unconfined"}},
            "containers": [{"name": "a", "securityContext": {"privileged": true,
                "capabilities": {"add": ["SYS_ADMIN"], "drop": ["all"]}, "procMount": "Unmasked",
                "seLinuxOptions": {"type": "spc_t"}, "readOnlyRootFilesystem": false},
                "volumeMounts": [{"name": "t", "mountPath": "/tmp/"}]}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}]
        }))
        .unwrap();
        assert!(pod.windows && pod.host_pid && !pod.host_network && !pod.host_ipc);
        assert_eq!(pod.security_context.run_as_non_root, Some(false));
        assert_eq!(pod.security_context.run_as_user, Some(0));
        assert_eq!(pod.security_context.fs_group, Some(2000));
        assert_eq!(pod.security_context.fs_group_change_policy, Some("Always"));
        assert_eq!(pod.security_context.sysctls, vec!["kernel.msgmax"]);
        assert_eq!(pod.security_context.seccomp, Some(Some("Unconfined")));
        let c = &pod.containers[0];
        assert_eq!(c.security_context.privileged, Some(true));
        assert_eq!(c.security_context.add, vec!["SYS_ADMIN"]);
        assert_eq!(c.security_context.drop, Some(vec!["all"]));
        assert_eq!(c.security_context.proc_mount, Some("Unmasked"));
        assert_eq!(c.security_context.se_linux_type, Some("spc_t"));
        assert_eq!(c.security_context.read_only_root_filesystem, Some(false));
        assert!(c.mounts("/tmp") && c.mounts("/tmp//") && c.mounts("//tmp/./") && !c.mounts("/tm"));
        assert!(!c.mounts("/tmp/x") && !c.mounts("tmp"));
        assert_eq!(c.mount_names, vec!["t"]);
        assert_eq!(pod.volumes.len(), 2);
        assert!(pod.volumes[0].host_path && !pod.volumes[1].host_path);
    }

    #[test]
    fn malformed_shapes_are_typed_errors_naming_the_field() {
        let cases = [
            (json!({"containers": {}}), "spec.containers", "an array"),
            (
                json!({"containers": ["x"]}),
                "spec.containers[0]",
                "an object",
            ),
            (
                json!({"containers": [{"name": 1}]}),
                "spec.containers[0].name",
                "a string",
            ),
            (
                json!({"containers": [{"securityContext": "x"}]}),
                "spec.containers[0].securityContext",
                "an object",
            ),
            (
                json!({"initContainers": [{"securityContext": {"privileged": "yes"}}]}),
                "spec.initContainers[0].securityContext.privileged",
                "a boolean",
            ),
            (
                json!({"containers": [{"securityContext": {"capabilities": {"drop": "ALL"}}}]}),
                "spec.containers[0].securityContext.capabilities.drop",
                "an array",
            ),
            (
                json!({"containers": [{"securityContext": {"capabilities": {"add": [1]}}}]}),
                "spec.containers[0].securityContext.capabilities.add[0]",
                "a string",
            ),
            (
                json!({"containers": [{"volumeMounts": [{"mountPath": 5}]}]}),
                "spec.containers[0].volumeMounts[0].mountPath",
                "a string",
            ),
            (
                json!({"securityContext": {"runAsUser": "0"}}),
                "spec.securityContext.runAsUser",
                "an integer",
            ),
            (
                json!({"securityContext": {"seccompProfile": "RuntimeDefault"}}),
                "spec.securityContext.seccompProfile",
                "an object",
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": 1}]}}),
                "spec.securityContext.sysctls[0].name",
                "a string",
            ),
            (
                json!({"securityContext": {"windowsOptions": {"hostProcess": "true"}}}),
                "spec.securityContext.windowsOptions.hostProcess",
                "a boolean",
            ),
            (
                json!({"containers": [{"securityContext": {"windowsOptions": {"runAsUserName": 0}}}]}),
                "spec.containers[0].securityContext.windowsOptions.runAsUserName",
                "a string",
            ),
            (
                json!({"containers": [{"volumeDevices": [{"devicePath": ["/dev/x"]}]}]}),
                "spec.containers[0].volumeDevices[0].devicePath",
                "a string",
            ),
            (json!({"os": {"name": 1}}), "spec.os.name", "a string"),
            (
                json!({"volumes": [{"name": []}]}),
                "spec.volumes[0].name",
                "a string",
            ),
            (
                json!({"hostNetwork": "true"}),
                "spec.hostNetwork",
                "a boolean",
            ),
        ];
        for (spec, path, expected) in cases {
            let err = parse(spec.clone()).unwrap_err();
            assert_eq!(
                err,
                EngineError::WrongType {
                    path: path.to_owned(),
                    expected
                },
                "{spec}"
            );
        }
    }

    #[test]
    fn unknown_fields_with_odd_types_are_not_read() {
        let pod = parse(json!({
            "securityContext": {"privileged": "not a pod field", "futureField": [1]},
            "containers": [{"securityContext": {"fsGroup": "not a container field"}, "x-extra": 1}]
        }));
        assert!(pod.is_ok());
    }
}
