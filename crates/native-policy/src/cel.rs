//! The CEL of the generated policy: one JSONPatch mutation whose operations
//! follow the engine's rules (crates/engine/src/rules), written once per rule
//! here and checked against the webhook by the differential e2e suite.
//!
//! Shape: `variables` hold what is decided once per pod (opt-outs, the
//! platform, pod-level choices, the writable paths); the mutation builds the
//! operation list from them, container by container. Every operation adds
//! only what is unset, so a second run (reinvocation) yields no operation.

use kube_hardener_engine::{
    ANNOTATION_APPLIED, ANNOTATION_SKIP, ANNOTATION_WRITABLE_PATHS, MAX_LABEL, MAX_WRITABLE_PATHS,
    Policy, RUNTIME_MANAGED, SAFE_BELOW_RUNTIME_MANAGED, SYS_ADMIN_SPELLINGS, Setting,
    WINDOWS_ROOT_USER, collect_writable_paths, volume_base_name,
};

/// The pod-level legacy seccomp annotation: an explicit choice at pod level.
const LEGACY_SECCOMP_POD: &str = "seccomp.security.alpha.kubernetes.io/pod";

/// Every field of the pod's securityContext that the program reads.
const POD_FIELDS_READ: [&str; 7] = [
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "fsGroupChangePolicy",
    "seccompProfile",
    "windowsOptions",
];

/// A CEL string literal (single-quoted; `\` and `'` escaped).
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

/// An RFC 6901 pointer token.
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The part a writable path adds to a volume name after `kh-<container>`:
/// `-<segments>`, or nothing when the path has no letters or digits. The
/// engine's own naming function decides, so the two cannot drift.
pub(crate) fn volume_suffix(path: &str) -> String {
    // Any valid container name works as the probe: it is copied as is.
    let probe = "c";
    volume_base_name(probe, path)
        .strip_prefix("kh-c")
        .unwrap_or_default()
        .to_owned()
}

/// The configured writable paths exactly as the engine uses them (the
/// engine's own collection; its warnings are the webhook's to give).
pub(crate) fn configured_paths(policy: &Policy) -> Vec<&str> {
    let mut warnings = Vec::new();
    collect_writable_paths(
        policy.writable_paths.iter().map(String::as_str),
        "hardening.writable_paths",
        &mut warnings,
    )
}

/// A CEL test that the user name `name` (a string expression) is the Windows
/// administrator, compared as the engine does (trimmed, any case).
fn is_windows_root(name: &str) -> String {
    format!(
        "{name}.trim().lowerAscii() == {}",
        quote(&WINDOWS_ROOT_USER.to_lowercase())
    )
}

/// The policy's variables, in order (each may use the ones before it).
#[derive(Debug, Default)]
struct Vars(Vec<(String, String)>);

impl Vars {
    fn push(&mut self, (name, expression): (impl Into<String>, String)) {
        self.0.push((name.into(), expression));
    }
}

/// What the generated policy consists of.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    /// Skips the pod when every field the policy could add is already set.
    pub already_hardened: String,
    pub variables: Vec<(String, String)>,
    pub patch: String,
}

/// Positions in each container's entry of `variables.d`.
const D_RNR: usize = 0;
const D_APE: usize = 1;
const D_CAPS: usize = 2;
const D_RO_WANT: usize = 3;

struct Builder<'a> {
    policy: &'a Policy,
}

impl Builder<'_> {
    /// `variables.on[<position>]` for a setting the configuration enables
    /// (positions follow `Setting::ALL`), or `false` for one it turns off.
    fn on(&self, setting: Setting) -> String {
        match self.enabled().iter().position(|s| *s == setting) {
            Some(position) => format!("variables.on[{position}]"),
            None => "false".to_owned(),
        }
    }

    fn enabled(&self) -> Vec<Setting> {
        Setting::ALL
            .into_iter()
            .filter(|s| self.policy.enables(*s))
            .collect()
    }

    fn skip_list(&self, annotations: &str) -> String {
        format!(
            "({annotations}[?{key}].hasValue() ? \
             {annotations}[?{key}].value().split(',').map(s, s.trim().lowerAscii()).filter(s, s != '') : [])",
            key = quote(ANNOTATION_SKIP)
        )
    }

    fn variables(&self) -> Vec<(String, String)> {
        let mut vars = Vars::default();
        let mut skip = self.skip_list("namespaceObject.metadata.?annotations");
        if self.policy.allow_pod_opt_out {
            skip = format!(
                "{skip} + {}",
                self.skip_list("object.metadata.?annotations")
            );
        }
        vars.push(("skip", skip));
        // One list for "every container" tests; the lists have distinct
        // schema types, hence dyn.
        vars.push((
            "all",
            "dyn(object.spec.containers) + dyn(object.spec.?initContainers.orValue([])) + \
             dyn(object.spec.?ephemeralContainers.orValue([]))"
                .to_owned(),
        ));
        // HostProcess containers exist only on Windows nodes.
        vars.push(("windows", "object.spec.?os.?name.orValue('') == 'windows' || \
             object.spec.?securityContext.?windowsOptions.?hostProcess.orValue(false) || \
             variables.all.exists(c, has(c.securityContext) && c.securityContext.?windowsOptions.?hostProcess.orValue(false))"
                .to_owned(),
        ));
        // One list, not a variable per setting: the API server evaluates each
        // variable as a program of its own, at a fixed cost per program.
        let switches = self.enabled().into_iter().map(|setting| {
            let skipped = format!(
                "!({} in variables.skip)",
                quote(&setting.name().to_lowercase())
            );
            // The API server rejects every Linux-only field on Windows pods.
            if setting == Setting::RunAsNonRoot {
                skipped
            } else {
                format!("{skipped} && !variables.windows")
            }
        });
        vars.push(("on", list(switches)));
        let pod = "object.spec.?securityContext";
        let unset_everywhere = |field: &str| {
            format!(
                "!{pod}.?{field}.hasValue() && variables.all.all(c, !c.?securityContext.?{field}.hasValue())"
            )
        };
        // A configured id is injected where the pod and every container leave it unset.
        // Only when configured: a constant `false` variable would still cost a
        // program evaluation wherever it is read.
        for (name, setting, configured) in [
            ("inject_uid", Setting::RunAsUser, self.policy.run_as_user),
            ("inject_gid", Setting::RunAsGroup, self.policy.run_as_group),
        ] {
            if configured.is_some() {
                vars.push((
                    name,
                    format!(
                        "{} && {}",
                        self.on(setting),
                        unset_everywhere(setting.name())
                    ),
                ));
            }
        }
        // The UID the pod runs as when a container sets none; -1 for none.
        let injected = self.policy.run_as_user.map_or("-1".to_owned(), |uid| {
            format!("(variables.inject_uid ? {uid} : -1)")
        });
        vars.push(("pod_uid", format!("{pod}.?runAsUser.orValue({injected})")));
        vars.push((
            "pod_user_name",
            format!("{pod}.?windowsOptions.?runAsUserName.orValue('')"),
        ));
        vars.push((
            "rnr_open",
            format!(
                "{} && !{pod}.?runAsNonRoot.hasValue()",
                self.on(Setting::RunAsNonRoot)
            ),
        ));
        vars.push((
            "rnr_pod",
            format!(
                "variables.rnr_open && variables.all.all(c, !({}))",
                conflict("c")
            ),
        ));
        vars.push(("seccomp", format!(
                "{} && !{pod}.?seccompProfile.hasValue() && !object.metadata.?annotations[?{}].hasValue()",
                self.on(Setting::SeccompProfile),
                quote(LEGACY_SECCOMP_POD)
            ),
        ));
        if self.policy.fs_group.is_some() {
            vars.push((
                "fs_group",
                format!(
                    "{} && !{pod}.?fsGroup.hasValue()",
                    self.on(Setting::FsGroup)
                ),
            ));
        }
        vars.push((
            "fs_group_change_policy",
            format!(
                "{} && ({pod}.?fsGroup.hasValue() || {}) && !{pod}.?fsGroupChangePolicy.hasValue()",
                self.on(Setting::FsGroupChangePolicy),
                configured(self.policy.fs_group, "variables.fs_group")
            ),
        ));
        self.writable_variables(&mut vars);
        self.container_variables(&mut vars);
        let applied: Vec<String> = self
            .applied_terms()
            .into_iter()
            .filter(|(_, cond)| cond != "false")
            .map(|(setting, cond)| format!("({cond} ? [{}] : [])", quote(setting.name())))
            .collect();
        let applied = if applied.is_empty() {
            "[]".to_owned()
        } else {
            applied.join(" + ")
        };
        vars.push(("applied", applied));
        vars.0
    }

    /// The writable paths of this pod, their pointer-free components and
    /// volume-name suffixes, and the names the containers would get.
    fn writable_variables(&self, vars: &mut Vars) {
        let annotation = format!(
            "object.metadata.?annotations[?{}]",
            quote(ANNOTATION_WRITABLE_PATHS)
        );
        // Tested where needed rather than held in a variable of its own: a pod
        // without the annotation reads it once.
        let wp_set = format!("{annotation}.hasValue()");
        // check_writable_path, in CEL: absolute, no `:`, no `//` (trailing
        // slashes allowed), no `.`/`..`, no control characters, not `/`, not
        // under a runtime-managed directory unless under a safe one.
        let canon = |p: &str| format!("('/' + {p}.split('/').filter(s, s != '').join('/'))");
        let below = |dirs: &[&str], p: &str| {
            list(dirs.iter().map(|d| quote(d)))
                + &format!(".exists(r, {p} == r || {p}.startsWith(r + '/'))")
        };
        let valid = format!(
            "p.matches('^(/[^/]+)+/*$') && !p.contains(':') && \
             !p.split('/').exists(s, s == '.' || s == '..') && \
             !p.matches(r'[\\x00-\\x1f\\x7f-\\x{{9f}}]') && \
             !({runtime} && !{safe})",
            runtime = below(&RUNTIME_MANAGED, &canon("p")),
            safe = below(&SAFE_BELOW_RUNTIME_MANAGED, &canon("p")),
        );
        // Read only when the annotation is set (see `paths`).
        vars.push(("wp_valid", format!(
                "{annotation}.value().split(',').map(p, p.trim()).filter(p, {valid}).map(p, {}).distinct()",
                canon("p")
            ),
        ));
        let configured = configured_paths(self.policy);
        vars.push((
            "paths",
            format!(
                "{wp_set} ? (size(variables.wp_valid) > {MAX_WRITABLE_PATHS} ? \
                 variables.wp_valid.slice(0, {MAX_WRITABLE_PATHS}) : variables.wp_valid) : {}",
                list(configured.iter().map(|p| quote(p)))
            ),
        ));
        vars.push((
            "parts",
            "variables.paths.map(p, p.split('/').filter(s, s != ''))".to_owned(),
        ));
        // The engine's name rule for a path: lower-cased, each run of other
        // characters one `-`, none at either end.
        let alnum = |j: &str| format!("p.lowerAscii().charAt({j}).matches('^[a-z0-9]$')");
        vars.push(("raw_suffixes", format!(
                "variables.paths.map(p, lists.range(size(p)).filter(j, {a} || (j > 0 && {b})).map(j, {a} ? p.lowerAscii().charAt(j) : '-').join())",
                a = alnum("j"),
                b = alnum("j - 1"),
            ),
        ));
        vars.push(("suffixes", format!(
                "{wp_set} ? variables.raw_suffixes.map(s, s == '' ? '' : '-' + (s.endsWith('-') ? s.substring(0, size(s) - 1) : s)) : {}",
                list(configured.iter().map(|p| quote(&volume_suffix(p))))
            ),
        ));
        // Names of volumes and mounts already in the pod that a generated
        // name could clash with (all generated names start with `kh-`).
        vars.push((
            "taken",
            "(object.spec.?volumes.orValue([]).map(v, v.name) + \
             variables.all.map(c, c.?volumeMounts.orValue([]).map(m, m.name)).flatten())\
             .filter(n, n.startsWith('kh-'))"
                .to_owned(),
        ));
    }

    /// Per-container decisions, one list each over `variables.all`, so every
    /// test runs once per container: the cost stays linear in the pod.
    fn container_variables(&self, vars: &mut Vars) {
        // [runAsNonRoot, allowPrivilegeEscalation, capabilities, read-only
        // root wanted] per container (indices `D_*`). A container without a
        // securityContext, the common case, takes the short branch.
        let pod_conflict = format!(
            "variables.pod_uid == 0 || {}",
            is_windows_root("variables.pod_user_name")
        );
        let (ape_on, caps_on, ro_on) = (
            self.on(Setting::AllowPrivilegeEscalation),
            self.on(Setting::Capabilities),
            self.on(Setting::ReadOnlyRootFilesystem),
        );
        let bare = format!(
            "[variables.rnr_open && !variables.rnr_pod && !({pod_conflict}), {ape_on}, {caps_on}, {ro_on}]"
        );
        let full = format!(
            "[variables.rnr_open && !variables.rnr_pod && !({conflict}) && !has(c.securityContext.runAsNonRoot), \
             {ape_on} && !has(c.securityContext.allowPrivilegeEscalation) && \
             !c.securityContext.?privileged.orValue(false) && \
             !c.securityContext.?capabilities.?add.orValue([]).exists(a, a.trim().upperAscii() in {sys_admin}), \
             {caps_on} && !('ALL' in c.securityContext.?capabilities.?drop.orValue([])), \
             {ro_on} && !has(c.securityContext.readOnlyRootFilesystem)]",
            conflict = conflict("c"),
            sys_admin = list(SYS_ADMIN_SPELLINGS.iter().map(|cap| quote(cap))),
        );
        vars.push((
            "d",
            format!("variables.all.map(c, !has(c.securityContext) ? {bare} : {full})"),
        ));
        // The writable paths (indices) each container does not mount yet.
        vars.push((
            "needed",
            format!(
                "variables.all.map(c, lists.range(size(variables.paths)).filter(k, !({})))",
                mounted("c", "k")
            ),
        ));
        // Every name the containers would get, sorted, to find two that coincide.
        vars.push(("wanted", format!(
                "lists.range(size(variables.all)).filter(j, variables.d[j][{D_RO_WANT}]).map(j, variables.needed[j].map(k, {})).flatten().sort()",
                volume_name("j", "k")
            ),
        ));
        // Two containers' names can coincide only with two or more paths and a
        // container name holding a `-` (`a` + `-b-c` and `a-b` + `-c`): only
        // then are the names built and compared, which costs the most.
        vars.push(("wanted_unique", "!variables.all.exists(c, c.name.contains('-')) || \
             lists.range(size(variables.wanted)).all(j, j == 0 || variables.wanted[j] != variables.wanted[j - 1])"
                .to_owned(),
        ));
        // Read-only root, when every volume the container needs gets its plain name.
        let name = volume_name("j", "k");
        vars.push(("ro", format!(
                "lists.range(size(variables.all)).map(j, variables.d[j][{D_RO_WANT}] && variables.needed[j].all(k, \
                 size({name}) <= {MAX_LABEL} && !({name} in variables.taken) && \
                 (size(variables.paths) < 2 || variables.wanted_unique || \
                 size(variables.wanted.filter(w, w == {name})) == 1)))"
            ),
        ));
        // The names of the volumes the pod gets, in the webhook's order
        // (containers, then init containers; paths in order), so a pod
        // without volumes gets them in one operation.
        vars.push(("new_volumes", format!(
                "lists.range(size(object.spec.containers) + size(object.spec.?initContainers.orValue([])))\
                 .filter(j, variables.ro[j]).map(j, variables.needed[j].map(k, {name})).flatten()"
            ),
        ));
    }

    /// Each setting and the condition under which some part of the pod got it.
    fn applied_terms(&self) -> Vec<(Setting, String)> {
        let any = |i: usize| format!("variables.d.exists(x, x[{i}])");
        Setting::ALL
            .into_iter()
            .map(|setting| {
                let cond = match setting {
                    Setting::RunAsNonRoot => format!("(variables.rnr_pod || {})", any(D_RNR)),
                    Setting::RunAsUser => {
                        configured(self.policy.run_as_user, "variables.inject_uid")
                    }
                    Setting::RunAsGroup => {
                        configured(self.policy.run_as_group, "variables.inject_gid")
                    }
                    Setting::SeccompProfile => "variables.seccomp".to_owned(),
                    Setting::AllowPrivilegeEscalation => any(D_APE),
                    Setting::Capabilities => any(D_CAPS),
                    Setting::ReadOnlyRootFilesystem => "variables.ro.exists(x, x)".to_owned(),
                    Setting::FsGroup => configured(self.policy.fs_group, "variables.fs_group"),
                    Setting::FsGroupChangePolicy => "variables.fs_group_change_policy".to_owned(),
                };
                (setting, cond)
            })
            .filter(|(setting, _)| self.policy.enables(*setting))
            .collect()
    }

    fn pod_ops(&self) -> String {
        let sc = "/spec/securityContext";
        let mut fields = vec![
            (
                "variables.rnr_pod".to_owned(),
                "runAsNonRoot",
                "true".to_owned(),
            ),
            (
                "variables.seccomp".to_owned(),
                "seccompProfile",
                "{'type': 'RuntimeDefault'}".to_owned(),
            ),
            (
                "variables.fs_group_change_policy".to_owned(),
                "fsGroupChangePolicy",
                "'OnRootMismatch'".to_owned(),
            ),
        ];
        if let Some(uid) = self.policy.run_as_user {
            fields.push((
                "variables.inject_uid".to_owned(),
                "runAsUser",
                uid.to_string(),
            ));
        }
        if let Some(gid) = self.policy.run_as_group {
            fields.push((
                "variables.inject_gid".to_owned(),
                "runAsGroup",
                gid.to_string(),
            ));
        }
        if let Some(gid) = self.policy.fs_group {
            fields.push(("variables.fs_group".to_owned(), "fsGroup", gid.to_string()));
        }
        let any: Vec<&str> = fields.iter().map(|(cond, _, _)| cond.as_str()).collect();
        let mut ops = vec![format!(
            "(!object.spec.?securityContext.hasValue() && ({}) ? [JSONPatch{{op: 'add', path: '{sc}', value: {{}}}}] : [])",
            any.join(" || ")
        )];
        for (cond, key, value) in &fields {
            ops.push(format!(
                "({cond} ? [JSONPatch{{op: 'add', path: '{sc}/{key}', value: {value}}}] : [])"
            ));
        }
        let volume = "Object.spec.volumes{name: n, emptyDir: Object.spec.volumes.emptyDir{}}";
        ops.push(format!(
            "(size(variables.new_volumes) == 0 ? [] : \
             !object.spec.?volumes.hasValue() ? \
             [JSONPatch{{op: 'add', path: '/spec/volumes', value: variables.new_volumes.map(n, {volume})}}] : \
             variables.new_volumes.map(n, JSONPatch{{op: 'add', path: '/spec/volumes/-', value: {volume}}}))"
        ));
        ops.join(" + ")
    }

    /// The operations for container `c` at index `i` of `list`, whose
    /// decisions sit at `offset + i` of the per-container lists.
    fn container_ops(&self, list: &str, offset: &str) -> String {
        let at = format!("'/spec/{list}/' + string(i)");
        let sc = format!("{at} + '/securityContext'");
        let d = |i: usize| format!("variables.d[{offset}i][{i}]");
        let (rnr, ape, caps) = (d(D_RNR), d(D_APE), d(D_CAPS));
        let (ro, needed) = (
            format!("variables.ro[{offset}i]"),
            format!("variables.needed[{offset}i]"),
        );
        let name = volume_name("c", "k");
        let mount = format!("{{'name': {name}, 'mountPath': variables.paths[k]}}");
        // A container without a securityContext gets it whole, in one operation.
        let ty = format!("Object.spec.{list}.securityContext");
        let whole = format!(
            "{ty}{{?runAsNonRoot: {rnr} ? optional.of(true) : optional.none(), \
             ?allowPrivilegeEscalation: {ape} ? optional.of(false) : optional.none(), \
             ?capabilities: {caps} ? optional.of({ty}.capabilities{{drop: ['ALL']}}) : optional.none(), \
             ?readOnlyRootFilesystem: {ro} ? optional.of(true) : optional.none()}}"
        );
        let fields = [
            format!("({rnr} ? [JSONPatch{{op: 'add', path: {sc} + '/runAsNonRoot', value: true}}] : [])"),
            format!(
                "({ape} ? [JSONPatch{{op: 'add', path: {sc} + '/allowPrivilegeEscalation', value: false}}] : [])"
            ),
            format!(
                "({caps} ? (c.securityContext.?capabilities.?drop.hasValue() ? \
                 [JSONPatch{{op: 'add', path: {sc} + '/capabilities/drop/-', value: 'ALL'}}] : \
                 (has(c.securityContext.capabilities) ? \
                 [JSONPatch{{op: 'add', path: {sc} + '/capabilities/drop', value: ['ALL']}}] : \
                 [JSONPatch{{op: 'add', path: {sc} + '/capabilities', value: {{'drop': ['ALL']}}}}])) : [])"
            ),
            format!("({ro} ? [JSONPatch{{op: 'add', path: {sc} + '/readOnlyRootFilesystem', value: true}}] : [])"),
        ]
        .join(" + ");
        [
            format!(
                "(!has(c.securityContext) ? \
                 ({rnr} || {ape} || {caps} || {ro} ? [JSONPatch{{op: 'add', path: {sc}, value: {whole}}}] : []) : \
                 ({fields}))"
            ),
            // The volumes themselves: `new_volumes`, in the pod's operations.
            format!(
                "({ro} && size({needed}) > 0 ? \
                 (has(c.volumeMounts) ? \
                 {needed}.map(k, JSONPatch{{op: 'add', path: {at} + '/volumeMounts/-', value: {mount}}}) : \
                 [JSONPatch{{op: 'add', path: {at} + '/volumeMounts', value: {needed}.map(k, {mount})}}]) : [])"
            ),
        ]
        .join(" + ")
    }

    /// The provenance annotation: added, or replaced by the union with what an
    /// earlier run recorded (names it does not know are kept, at the end).
    fn annotation_ops(&self) -> String {
        let key = quote(ANNOTATION_APPLIED);
        let path = format!(
            "/metadata/annotations/{}",
            pointer_token(ANNOTATION_APPLIED)
        );
        let all_lower = list(
            Setting::ALL
                .into_iter()
                .map(|s| quote(&s.name().to_lowercase())),
        );
        let old = format!(
            "object.metadata.annotations[{key}].split(',').map(s, s.trim()).filter(s, s != '')"
        );
        let old_lower = format!("{old}.map(s, s.lowerAscii())");
        let canonical = list(Setting::ALL.into_iter().map(|s| quote(s.name())));
        format!(
            "(size(variables.applied) == 0 ? [] : \
             !object.metadata.?annotations.hasValue() ? \
             [JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{key}: variables.applied.join(',')}}}}] : \
             !object.metadata.annotations[?{key}].hasValue() ? \
             [JSONPatch{{op: 'add', path: '{path}', value: variables.applied.join(',')}}] : \
             !variables.applied.exists(n, !(n.lowerAscii() in {old_lower})) ? [] : \
             [JSONPatch{{op: 'replace', path: '{path}', value: \
             ({canonical}.filter(n, n in variables.applied || n.lowerAscii() in {old_lower}) + \
             {old}.filter(s, !(s.lowerAscii() in {all_lower}))).join(',')}}])"
        )
    }

    /// A cheap sufficient test that no operation would be generated: every
    /// field the enabled settings fill in is set already. The API server
    /// reruns an `IfNeeded` policy right after its own change; this makes that
    /// second evaluation cost a few field tests instead of the whole program.
    /// A container added in between (a sidecar injector) fails the test, and
    /// the pod is evaluated in full.
    fn already_hardened(&self) -> String {
        let pod = "object.spec.?securityContext";
        let mut terms = Vec::new();
        let mut pod_field = |setting: Setting, field: &str| {
            if self.policy.enables(setting) {
                terms.push(format!("{pod}.?{field}.hasValue()"));
            }
        };
        pod_field(Setting::RunAsNonRoot, "runAsNonRoot");
        pod_field(Setting::SeccompProfile, "seccompProfile");
        pod_field(Setting::RunAsUser, "runAsUser");
        pod_field(Setting::RunAsGroup, "runAsGroup");
        pod_field(Setting::FsGroup, "fsGroup");
        if self.policy.enables(Setting::FsGroupChangePolicy) {
            terms.push(format!(
                "(!{pod}.?fsGroup.hasValue() || {pod}.?fsGroupChangePolicy.hasValue())"
            ));
        }
        let mut container = vec!["has(c.securityContext)".to_owned()];
        if self.policy.enables(Setting::AllowPrivilegeEscalation) {
            container.push("has(c.securityContext.allowPrivilegeEscalation)".to_owned());
        }
        if self.policy.enables(Setting::Capabilities) {
            container.push("'ALL' in c.securityContext.?capabilities.?drop.orValue([])".to_owned());
        }
        if self.policy.enables(Setting::ReadOnlyRootFilesystem) {
            container.push("has(c.securityContext.readOnlyRootFilesystem)".to_owned());
        }
        let container = container.join(" && ");
        terms.push(format!("object.spec.containers.all(c, {container})"));
        terms.push(format!(
            "object.spec.?initContainers.orValue([]).all(c, {container})"
        ));
        format!("!({})", terms.join(" && "))
    }

    /// The plain pod's shortcut: no securityContext anywhere, only regular
    /// containers, nothing at the writable paths, no `kh-` names, none of the
    /// annotations the policy reads, and no opt-out on the namespace. That is
    /// the pod this tool exists for, and for it every decision of the general
    /// program is known from the configuration alone, so its operations are
    /// written out directly and no variable is evaluated. `None` when the
    /// configuration makes even that pod depend on the general program (a
    /// configured UID 0).
    ///
    /// Returns (the test, the operations).
    fn plain_pod(&self) -> Option<(String, String)> {
        if self.policy.run_as_user == Some(0) {
            return None;
        }
        let paths = configured_paths(self.policy);
        let suffixes: Vec<String> = paths.iter().map(|p| volume_suffix(p)).collect();
        let longest = suffixes.iter().map(String::len).max().unwrap_or(0);
        let annotation =
            |key: &str| format!("!object.metadata.?annotations[?{}].hasValue()", quote(key));
        let mut pod_annotations = vec![
            annotation(ANNOTATION_APPLIED),
            annotation(ANNOTATION_WRITABLE_PATHS),
            annotation(LEGACY_SECCOMP_POD),
        ];
        if self.policy.allow_pod_opt_out {
            pod_annotations.push(annotation(ANNOTATION_SKIP));
        }
        let unclean = |x: &str, field: &str| {
            format!(
                "{x}.{field} in {paths} || {x}.{field}.endsWith('/') || {x}.{field}.contains('//') || {x}.{field}.contains('/.')",
                paths = list(paths.iter().map(|p| quote(p)))
            )
        };
        let mut container = vec![
            "!has(c.securityContext)".to_owned(),
            format!("size(c.name) <= {}", MAX_LABEL - "kh-".len() - longest),
            format!(
                "!c.?volumeMounts.orValue([]).exists(m, m.name.startsWith('kh-') || {})",
                unclean("m", "mountPath")
            ),
            format!(
                "!c.?volumeDevices.orValue([]).exists(d, {})",
                unclean("d", "devicePath")
            ),
        ];
        // Two containers' volume names can coincide only with two or more
        // paths and a `-` in a container name (see `wanted_unique`).
        if paths.len() > 1 {
            container.push("!c.name.contains('-')".to_owned());
        }
        let test = [
            format!(
                "!namespaceObject.metadata.?annotations[?{}].hasValue()",
                quote(ANNOTATION_SKIP)
            ),
            // The API server defaults an empty pod securityContext: test the
            // fields the program reads.
            POD_FIELDS_READ
                .iter()
                .map(|field| format!("!object.spec.?securityContext.?{field}.hasValue()"))
                .collect::<Vec<_>>()
                .join(" && "),
            "!has(object.spec.initContainers) && !has(object.spec.ephemeralContainers) && \
             !has(object.spec.os)"
                .to_owned(),
            pod_annotations.join(" && "),
            "!object.spec.?volumes.orValue([]).exists(v, v.name.startsWith('kh-'))".to_owned(),
            format!("object.spec.containers.all(c, {})", container.join(" && ")),
        ]
        .join(" && ");

        let on = |setting: Setting| self.policy.enables(setting);
        let mut ops = Vec::new();
        // The pod's securityContext, whole (the general program adds `{}` and
        // then each field: the same object).
        let pod_ty = "Object.spec.securityContext";
        let mut pod = Vec::new();
        if on(Setting::RunAsNonRoot) {
            pod.push("runAsNonRoot: true".to_owned());
        }
        if on(Setting::SeccompProfile) {
            pod.push(format!(
                "seccompProfile: {pod_ty}.seccompProfile{{type: 'RuntimeDefault'}}"
            ));
        }
        for (setting, key, value) in [
            (Setting::RunAsUser, "runAsUser", self.policy.run_as_user),
            (Setting::RunAsGroup, "runAsGroup", self.policy.run_as_group),
            (Setting::FsGroup, "fsGroup", self.policy.fs_group),
        ] {
            if let (true, Some(value)) = (on(setting), value) {
                pod.push(format!("{key}: {value}"));
            }
        }
        let fs_group = on(Setting::FsGroup) && self.policy.fs_group.is_some();
        if fs_group && on(Setting::FsGroupChangePolicy) {
            pod.push("fsGroupChangePolicy: 'OnRootMismatch'".to_owned());
        }
        if !pod.is_empty() {
            let fields: Vec<String> = pod
                .iter()
                .filter_map(|field| field.split_once(": "))
                .map(|(key, value)| {
                    format!("JSONPatch{{op: 'add', path: '/spec/securityContext/{key}', value: {value}}}")
                })
                .collect();
            ops.push(format!(
                "(has(object.spec.securityContext) ? {} : \
                 [JSONPatch{{op: 'add', path: '/spec/securityContext', value: {pod_ty}{{{}}}}}])",
                list(fields),
                pod.join(", ")
            ));
        }
        let read_only = on(Setting::ReadOnlyRootFilesystem);
        let names = |c: &str| -> Vec<String> {
            suffixes
                .iter()
                .map(|suffix| format!("('kh-' + {c}.name + {})", quote(suffix)))
                .collect()
        };
        if read_only && !paths.is_empty() {
            let volume = |name: &str| {
                format!(
                    "Object.spec.volumes{{name: {name}, emptyDir: Object.spec.volumes.emptyDir{{}}}}"
                )
            };
            let volumes = list(names("c").iter().map(|n| volume(n)));
            ops.push(format!(
                "(!has(object.spec.volumes) ? \
                 [JSONPatch{{op: 'add', path: '/spec/volumes', value: object.spec.containers.map(c, {volumes}).flatten()}}] : \
                 object.spec.containers.map(c, {volumes}).flatten().map(v, JSONPatch{{op: 'add', path: '/spec/volumes/-', value: v}}))"
            ));
        }
        let ty = "Object.spec.containers.securityContext";
        let mut fields = Vec::new();
        if on(Setting::AllowPrivilegeEscalation) {
            fields.push("allowPrivilegeEscalation: false".to_owned());
        }
        if on(Setting::Capabilities) {
            fields.push(format!("capabilities: {ty}.capabilities{{drop: ['ALL']}}"));
        }
        if read_only {
            fields.push("readOnlyRootFilesystem: true".to_owned());
        }
        let at = "'/spec/containers/' + string(i)";
        let mut per_container = Vec::new();
        if !fields.is_empty() {
            per_container.push(format!(
                "[JSONPatch{{op: 'add', path: {at} + '/securityContext', value: {ty}{{{}}}}}]",
                fields.join(", ")
            ));
        }
        if read_only && !paths.is_empty() {
            let mounts: Vec<String> = names("c")
                .iter()
                .zip(&paths)
                .map(|(name, path)| format!("{{'name': {name}, 'mountPath': {}}}", quote(path)))
                .collect();
            per_container.push(format!(
                "(has(c.volumeMounts) ? \
                 {}.map(m, JSONPatch{{op: 'add', path: {at} + '/volumeMounts/-', value: m}}) : \
                 [JSONPatch{{op: 'add', path: {at} + '/volumeMounts', value: {}}}])",
                list(mounts.iter().cloned()),
                list(mounts.iter().cloned())
            ));
        }
        if !per_container.is_empty() {
            ops.push(format!(
                "object.spec.containers.transformList(i, c, {}).flatten()",
                per_container.join(" + ")
            ));
        }
        // What the general program's `applied` holds for this pod, in the
        // same order.
        let applied: Vec<&str> = Setting::ALL
            .into_iter()
            .filter(|setting| match setting {
                Setting::RunAsUser | Setting::RunAsGroup => on(*setting),
                Setting::FsGroup => fs_group,
                Setting::FsGroupChangePolicy => fs_group && on(*setting),
                _ => on(*setting),
            })
            .map(Setting::name)
            .collect();
        if !applied.is_empty() {
            let key = quote(ANNOTATION_APPLIED);
            let value = quote(&applied.join(","));
            ops.push(format!(
                "(!has(object.metadata.annotations) ? \
                 [JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{key}: {value}}}}}] : \
                 [JSONPatch{{op: 'add', path: '/metadata/annotations/{}', value: {value}}}])",
                pointer_token(ANNOTATION_APPLIED)
            ));
        }
        let ops = if ops.is_empty() {
            "[]".to_owned()
        } else {
            ops.join(" + ")
        };
        Some((test, ops))
    }

    fn patch(&self) -> String {
        let mut parts = vec![self.pod_ops()];
        // `variables.all` lists containers first, then init containers.
        for (list, source, offset) in [
            ("containers", "object.spec.containers", ""),
            (
                "initContainers",
                "object.spec.?initContainers.orValue([])",
                "size(object.spec.containers) + ",
            ),
        ] {
            parts.push(format!(
                "{source}.transformList(i, c, {}).flatten()",
                self.container_ops(list, offset)
            ));
        }
        parts.push(self.annotation_ops());
        // `all` anywhere in the skip list skips everything. Tested here, not in
        // matchConditions: those are evaluated without namespaceObject.
        let general = format!(
            "'all' in variables.skip ? [] : (\n{}\n)",
            parts.join(" +\n")
        );
        match self.plain_pod() {
            // Tested in place, not as a variable: a variable costs a program
            // evaluation of its own.
            Some((test, ops)) => format!("{test} ?\n{ops} :\n{general}"),
            None => general,
        }
    }
}

/// `variable` when the configuration sets `value`, else the constant `false`.
fn configured<T>(value: Option<T>, variable: &str) -> String {
    match value {
        Some(_) => variable.to_owned(),
        None => "false".to_owned(),
    }
}

/// Whether `c` must not get runAsNonRoot: it sets false, runs as UID 0, or
/// runs as the Windows administrator.
fn conflict(c: &str) -> String {
    format!(
        "!{c}.?securityContext.?runAsNonRoot.orValue(true) || \
         {c}.?securityContext.?runAsUser.orValue(variables.pod_uid) == 0 || {}",
        is_windows_root(&format!(
            "{c}.?securityContext.?windowsOptions.?runAsUserName.orValue(variables.pod_user_name)"
        ))
    )
}

/// Whether container `c` already mounts something at writable path `k`,
/// comparing by component as the kubelet does (`/tmp/`, `/tmp/.` are `/tmp`);
/// a mount path already in canonical form is compared as a string only.
fn mounted(c: &str, k: &str) -> String {
    let same = |field: &str| {
        format!(
            "x.{field} == variables.paths[{k}] || \
             ((x.{field}.endsWith('/') || x.{field}.contains('//') || x.{field}.contains('/.')) && \
             x.{field}.startsWith('/') && \
             x.{field}.split('/').filter(s, s != '' && s != '.') == variables.parts[{k}])"
        )
    };
    format!(
        "{c}.?volumeMounts.orValue([]).exists(x, {}) || {c}.?volumeDevices.orValue([]).exists(x, {})",
        same("mountPath"),
        same("devicePath")
    )
}

/// The volume name of writable path `k` for container `c`: an element, or
/// an index into `variables.all`.
fn volume_name(c: &str, k: &str) -> String {
    let container = if c == "j" {
        "variables.all[j]".to_owned()
    } else {
        c.to_owned()
    };
    format!("('kh-' + {container}.name + variables.suffixes[{k}])")
}

/// The CEL program for `policy`.
pub(crate) fn program(policy: &Policy) -> Program {
    let builder = Builder { policy };
    Program {
        already_hardened: builder.already_hardened(),
        variables: builder.variables(),
        patch: builder.patch(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn volume_suffixes_follow_the_engine() {
        for (path, suffix) in [
            ("/tmp", "-tmp"),
            ("/var/cache/nginx", "-var-cache-nginx"),
            ("/opt/App_Data", "-opt-app-data"),
            ("/a.", "-a"),
            ("/_", ""),
        ] {
            assert_eq!(volume_suffix(path), suffix, "{path}");
            let name = format!("kh-app{suffix}");
            assert_eq!(volume_base_name("app", path), name, "{path}");
        }
    }

    #[test]
    fn configured_paths_are_checked_trimmed_and_deduplicated() {
        let policy = Policy {
            writable_paths: vec![
                "/tmp/".into(),
                "/tmp".into(),
                " /var/run ".into(),
                "relative".into(),
                "/proc/x".into(),
            ],
            ..Policy::default()
        };
        assert_eq!(configured_paths(&policy), ["/tmp", "/var/run"]);
    }

    #[test]
    fn strings_are_quoted_for_cel() {
        assert_eq!(quote("a'b\\c"), r"'a\'b\\c'");
        assert_eq!(
            pointer_token("kube-hardener.io/applied"),
            "kube-hardener.io~1applied"
        );
    }

    #[test]
    fn the_plain_pod_shortcut_follows_the_configuration() {
        let shortcut = |policy: &Policy| Builder { policy }.plain_pod();
        let (test, ops) = shortcut(&Policy::default()).unwrap();
        // Every annotation and pod field the general program reads sends the
        // pod there.
        for read in [
            ANNOTATION_APPLIED,
            ANNOTATION_WRITABLE_PATHS,
            LEGACY_SECCOMP_POD,
            "securityContext.?windowsOptions",
            "securityContext.?seccompProfile",
            "initContainers",
            "has(c.securityContext)",
        ] {
            assert!(test.contains(read), "{read}");
        }
        assert!(!test.contains(&format!(
            "object.metadata.?annotations[?{}]",
            quote(ANNOTATION_SKIP)
        )));
        assert!(ops.contains(
            "'runAsNonRoot,seccompProfile,allowPrivilegeEscalation,capabilities,readOnlyRootFilesystem'"
        ));
        // `kh-` + name + `-tmp` within 63 characters.
        assert!(test.contains("size(c.name) <= 56"));

        let configured = Policy {
            run_as_user: Some(1000),
            fs_group: Some(2000),
            allow_pod_opt_out: true,
            settings: kube_hardener_engine::SettingSwitches::only(Setting::RunAsNonRoot),
            ..Policy::default()
        };
        let (test, ops) = shortcut(&configured).unwrap();
        assert!(test.contains(&format!(
            "object.metadata.?annotations[?{}]",
            quote(ANNOTATION_SKIP)
        )));
        assert!(ops.contains("'runAsNonRoot,runAsUser,fsGroup'"), "{ops}");
        assert!(ops.contains("runAsUser: 1000") && ops.contains("fsGroup: 2000"));
        assert!(!ops.contains("seccompProfile") && !ops.contains("volumes"));

        // A configured UID 0 conflicts with runAsNonRoot: the general program decides.
        let root = Policy {
            run_as_user: Some(0),
            ..Policy::default()
        };
        assert!(shortcut(&root).is_none());
        assert!(!program(&root).patch.contains("size(c.name) <="));
    }

    #[test]
    fn switched_off_settings_leave_no_trace() {
        let policy = Policy {
            settings: kube_hardener_engine::SettingSwitches::only(Setting::Capabilities),
            ..Policy::default()
        };
        let program = program(&policy);
        let var = |name: &str| {
            program
                .variables
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, e)| e.clone())
        };
        // One switch, the enabled setting's; the unset ids get no variable.
        assert_eq!(
            var("on").unwrap(),
            "[!('capabilities' in variables.skip) && !variables.windows]"
        );
        assert_eq!(var("inject_uid"), None);
        assert_eq!(var("fs_group"), None);
        let applied = &program
            .variables
            .iter()
            .find(|(n, _)| *n == "applied")
            .unwrap()
            .1;
        assert!(applied.contains("'capabilities'"));
        assert!(!applied.contains("'readOnlyRootFilesystem'"));
    }
}
