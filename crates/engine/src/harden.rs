//! The two entry points: what is looked at, what is skipped, and the
//! provenance annotation.

use serde_json::Value;

use crate::layout::Layout;
use crate::opt_out::{Skip, parse_skip};
use crate::patch::Token;
use crate::rules::{self, Edits, LegacySeccomp, RuleInput};
use crate::setting::SettingSet;
use crate::shape::{self, Object};
use crate::view::{ListKind, PodView};
use crate::{
    ANNOTATION_APPLIED, ANNOTATION_SKIP, ANNOTATION_WRITABLE_PATHS, Context, Disposition,
    EngineError, ImageQuery, Outcome, Policy, Setting, Warning, WarningKind, writable,
};

/// Everything decided before the rules run.
struct Prepared<'v> {
    layout: Layout,
    spec: &'v Object,
    metadata: Option<&'v Object>,
    skipped: SettingSet,
    writable_annotation: Option<&'v str>,
    legacy_seccomp: LegacySeccomp<'v>,
    warnings: Vec<Warning>,
}

enum Start<'v> {
    Run(Prepared<'v>),
    Done(Outcome),
}

fn done(disposition: Disposition, warnings: Vec<Warning>) -> Result<Start<'static>, EngineError> {
    Ok(Start::Done(Outcome {
        disposition,
        warnings,
        ..Outcome::default()
    }))
}

fn annotation_field(metadata_field: &str, key: &str) -> String {
    format!("{metadata_field}.annotations[{key}]")
}

/// Checks the kind, the namespace and the opt-outs.
fn prepare<'v>(
    root: &'v Object,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Start<'v>, EngineError> {
    let kind = shape::string(root, "", "kind")?.unwrap_or_default();
    let Some(layout) = Layout::for_kind(kind) else {
        return done(Disposition::UnsupportedKind(kind.to_owned()), Vec::new());
    };
    let object_meta = shape::object(root, "", "metadata")?;
    let own_namespace = match object_meta {
        Some(meta) => shape::string(meta, "metadata", "namespace")?,
        None => None,
    };
    let namespace = ctx.namespace.or(own_namespace);
    if let Some(ns) = namespace.filter(|ns| policy.excludes(ns)) {
        return done(Disposition::ExcludedNamespace(ns.to_owned()), Vec::new());
    }

    let mut warnings = Vec::new();
    let mut skipped = SettingSet::default();
    let ns_skip = ctx
        .namespace_annotations
        .and_then(|annotations| annotations.get(ANNOTATION_SKIP));
    if let Some(value) = ns_skip {
        let field = annotation_field("namespace.metadata", ANNOTATION_SKIP);
        match parse_skip(value, &field, &mut warnings) {
            Skip::All => return done(Disposition::SkippedAll, Vec::new()),
            Skip::Some(set) => skipped = set,
        }
    }

    let (spec, metadata) = layout.locate(root)?;
    let annotations = match metadata {
        Some(meta) => shape::object(meta, layout.metadata_field, "annotations")?,
        None => None,
    };
    let annotation = |key: &str| -> Result<Option<&'v str>, EngineError> {
        match annotations.and_then(|map| shape::present(map, key)) {
            None => Ok(None),
            Some(Value::String(value)) => Ok(Some(value)),
            Some(_) => Err(EngineError::WrongType {
                path: annotation_field(layout.metadata_field, key),
                expected: "a string",
            }),
        }
    };
    if let Some(value) = annotation(ANNOTATION_SKIP)? {
        let field = annotation_field(layout.metadata_field, ANNOTATION_SKIP);
        if policy.allow_pod_opt_out {
            match parse_skip(value, &field, &mut warnings) {
                Skip::All => return done(Disposition::SkippedAll, warnings),
                Skip::Some(set) => skipped = skipped.union(set),
            }
        } else {
            warnings.push(Warning {
                kind: WarningKind::Annotation,
                field,
                message: "ignored: pod-level opt-out is not allowed; ask for a namespace opt-out"
                    .to_owned(),
            });
        }
    }
    let writable_annotation = annotation(ANNOTATION_WRITABLE_PATHS)?;
    // Validated here so that a malformed value fails before any rule runs.
    annotation(ANNOTATION_APPLIED)?;
    let legacy_seccomp = match annotations {
        Some(map) => LegacySeccomp::read(map, layout.metadata_field)?,
        None => LegacySeccomp::default(),
    };
    Ok(Start::Run(Prepared {
        layout,
        spec,
        metadata,
        skipped,
        writable_annotation,
        legacy_seccomp,
        warnings,
    }))
}

fn writable_paths<'a>(
    prepared: &Prepared<'a>,
    policy: &'a Policy,
    warnings: &mut Vec<Warning>,
) -> Vec<&'a str> {
    match prepared.writable_annotation {
        Some(value) => writable::collect(
            value.split(','),
            &annotation_field(prepared.layout.metadata_field, ANNOTATION_WRITABLE_PATHS),
            warnings,
        ),
        None => writable::collect(
            policy.writable_paths.iter().map(String::as_str),
            "hardening.writable_paths",
            warnings,
        ),
    }
}

/// Builds the rules for the prepared pod spec of `object` and runs `apply`
/// with them; the warnings gathered while preparing come first.
fn run_rules<'v>(
    object: &'v Value,
    prepared: &mut Prepared<'v>,
    policy: &Policy,
    images: Option<&crate::ImageFacts>,
    apply: impl FnOnce(&RuleInput<'_, 'v>, &mut Edits<'v>),
) -> Result<Edits<'v>, EngineError> {
    let pod = PodView::parse(prepared.spec, prepared.layout.spec_field)?;
    let mut warnings = std::mem::take(&mut prepared.warnings);
    let writable_paths = writable_paths(prepared, policy, &mut warnings);
    let rules = RuleInput {
        policy,
        skipped: prepared.skipped,
        pod: &pod,
        spec: prepared.layout.spec_tokens(),
        writable_paths: &writable_paths,
        legacy_seccomp: std::mem::take(&mut prepared.legacy_seccomp),
        images,
    };
    let mut edits = Edits::new(object);
    edits.warnings = warnings;
    apply(&rules, &mut edits);
    Ok(edits)
}

/// An object checked and its pod spec parsed once, for the two questions a
/// caller with image lookups asks: which images decide `runAsNonRoot`
/// ([`Parsed::image_query`]), then the hardening with what they run as
/// ([`Parsed::harden`]). Asking both of one `Parsed` walks the pod once.
#[derive(Debug)]
pub struct Parsed<'v> {
    state: ParsedState<'v>,
}

#[derive(Debug)]
enum ParsedState<'v> {
    /// Decided before any rule (another kind, excluded, opted out).
    Done(Outcome),
    Ready(Box<Ready<'v>>),
}

struct Ready<'v> {
    object: &'v Value,
    policy: &'v Policy,
    prepared: Prepared<'v>,
    pod: PodView<'v>,
    writable_paths: Vec<&'v str>,
}

impl std::fmt::Debug for Ready<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}

impl<'v> Ready<'v> {
    fn rules<'a>(
        &'a self,
        legacy_seccomp: LegacySeccomp<'v>,
        images: Option<&'a crate::ImageFacts>,
    ) -> RuleInput<'a, 'v> {
        RuleInput {
            policy: self.policy,
            skipped: self.prepared.skipped,
            pod: &self.pod,
            spec: self.prepared.layout.spec_tokens(),
            writable_paths: &self.writable_paths,
            legacy_seccomp,
            images,
        }
    }
}

pub(crate) fn parse<'v>(
    object: &'v Value,
    ctx: &Context<'_>,
    policy: &'v Policy,
) -> Result<Parsed<'v>, EngineError> {
    let root = object.as_object().ok_or(EngineError::NotAnObject)?;
    let mut prepared = match prepare(root, ctx, policy)? {
        Start::Done(outcome) => {
            return Ok(Parsed {
                state: ParsedState::Done(outcome),
            });
        }
        Start::Run(prepared) => prepared,
    };
    let pod = PodView::parse(prepared.spec, prepared.layout.spec_field)?;
    let mut warnings = std::mem::take(&mut prepared.warnings);
    let writable_paths = writable_paths(&prepared, policy, &mut warnings);
    prepared.warnings = warnings;
    Ok(Parsed {
        state: ParsedState::Ready(Box::new(Ready {
            object,
            policy,
            prepared,
            pod,
            writable_paths,
        })),
    })
}

impl<'v> Parsed<'v> {
    /// The images whose user decides `runAsNonRoot`, and the architecture
    /// the pod pins: what to resolve before [`Parsed::harden`].
    pub fn image_query(&self) -> Result<ImageQuery, EngineError> {
        let ready = match &self.state {
            ParsedState::Done(_) => return Ok(ImageQuery::default()),
            ParsedState::Ready(ready) => ready,
        };
        let spec_field = ready.prepared.layout.spec_field;
        let arch = match shape::object(ready.prepared.spec, spec_field, "nodeSelector")? {
            Some(selector) => selector
                .get("kubernetes.io/arch")
                .and_then(Value::as_str)
                .map(str::to_owned),
            None => None,
        };
        // The same rule input as the hardening, so the query asks for exactly
        // the images whose facts the rule reads.
        let rules = ready.rules(ready.prepared.legacy_seccomp.clone(), None);
        let images = rules::images_to_resolve(&rules)
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(ImageQuery { images, arch })
    }

    /// The hardening, with what the images run as (`None`: image awareness
    /// off, `runAsNonRoot` decided as without it).
    pub fn harden(self, images: Option<&crate::ImageFacts>) -> Outcome {
        let mut ready = match self.state {
            ParsedState::Done(outcome) => return outcome,
            ParsedState::Ready(ready) => ready,
        };
        let legacy_seccomp = std::mem::take(&mut ready.prepared.legacy_seccomp);
        let warnings = std::mem::take(&mut ready.prepared.warnings);
        let mut edits = Edits::new(ready.object);
        edits.warnings = warnings;
        rules::harden_pod(&ready.rules(legacy_seccomp, images), &mut edits);
        if !edits.applied.is_empty() {
            annotate_applied(&ready.prepared, &mut edits);
        }
        finish(edits)
    }
}

pub(crate) fn harden(
    object: &Value,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Outcome, EngineError> {
    Ok(parse(object, ctx, policy)?.harden(ctx.images))
}

pub(crate) fn image_query(
    object: &Value,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<ImageQuery, EngineError> {
    parse(object, ctx, policy)?.image_query()
}

fn finish(edits: Edits<'_>) -> Outcome {
    let applied = edits.applied.to_vec();
    Outcome {
        disposition: Disposition::Hardened,
        patch: edits.patch.finish(),
        applied,
        warnings: edits.warnings,
    }
}

/// Writes `kube-hardener.io/applied` on the pod (template) metadata: the union
/// of what an earlier pass recorded and what this pass injected, in canonical
/// order, so the annotation never forgets why a field is there.
fn annotate_applied(prepared: &Prepared<'_>, edits: &mut Edits<'_>) {
    let metadata: Vec<Token> = prepared.layout.metadata_tokens();
    let existing = prepared
        .metadata
        .and_then(|meta| shape::present(meta, "annotations"))
        .and_then(|annotations| annotations.get(ANNOTATION_APPLIED))
        .and_then(Value::as_str);
    let Some(old) = existing else {
        let mut annotations = metadata;
        annotations.push(Token::Key("annotations"));
        let value = render_applied(edits.applied, &[]);
        edits
            .patch
            .set(&annotations, ANNOTATION_APPLIED, Value::from(value));
        return;
    };
    let mut previous = SettingSet::default();
    let mut unknown: Vec<&str> = Vec::new();
    for name in old.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.parse::<Setting>() {
            Ok(setting) => previous.insert(setting),
            Err(_) => unknown.push(name),
        }
    }
    let union = previous.union(edits.applied);
    if union == previous {
        return;
    }
    let mut path = metadata;
    path.push(Token::Key("annotations"));
    path.push(Token::Key(ANNOTATION_APPLIED));
    edits
        .patch
        .replace(path, Value::from(render_applied(union, &unknown)));
}

fn render_applied(settings: SettingSet, extra: &[&str]) -> String {
    let mut names: Vec<&str> = settings.to_vec().into_iter().map(Setting::name).collect();
    names.extend_from_slice(extra);
    names.join(",")
}

pub(crate) fn harden_new_ephemeral_containers(
    new_pod: &Value,
    old_pod: &Value,
    ctx: &Context<'_>,
    policy: &Policy,
) -> Result<Outcome, EngineError> {
    let root = new_pod.as_object().ok_or(EngineError::NotAnObject)?;
    let kind = shape::string(root, "", "kind")?.unwrap_or_default();
    if kind != "Pod" {
        return Ok(Outcome {
            disposition: Disposition::UnsupportedKind(kind.to_owned()),
            ..Outcome::default()
        });
    }
    let mut prepared = match prepare(root, ctx, policy)? {
        Start::Done(outcome) => return Ok(outcome),
        Start::Run(prepared) => prepared,
    };
    let old_names = old_ephemeral_names(old_pod)?;
    let edits = run_rules(
        new_pod,
        &mut prepared,
        policy,
        ctx.images,
        |rules, edits| {
            rules::harden_new_ephemeral(rules, edits, |c| {
                c.list == ListKind::EphemeralContainers
                    && match c.name {
                        Some(name) => !old_names.names.contains(&name),
                        None => c.index >= old_names.count,
                    }
            });
        },
    )?;
    Ok(finish(edits))
}

struct OldEphemeral<'v> {
    names: Vec<&'v str>,
    count: usize,
}

fn old_ephemeral_names(old_pod: &Value) -> Result<OldEphemeral<'_>, EngineError> {
    let root = old_pod.as_object().ok_or(EngineError::NotAnObject)?;
    let Some(spec) = shape::object(root, "oldObject", "spec")? else {
        return Ok(OldEphemeral {
            names: Vec::new(),
            count: 0,
        });
    };
    let containers = shape::objects(spec, "oldObject.spec", "ephemeralContainers")?;
    let mut names = Vec::with_capacity(containers.len());
    for (i, container) in containers.iter().enumerate() {
        let at = format!("oldObject.spec.ephemeralContainers[{i}]");
        if let Some(name) = shape::string(container, &at, "name")? {
            names.push(name);
        }
    }
    Ok(OldEphemeral {
        names,
        count: containers.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::rules::test_support::set;

    fn query(object: &Value) -> Result<ImageQuery, EngineError> {
        image_query(object, &Context::default(), &Policy::default())
    }

    #[test]
    fn queries_list_only_images_whose_user_decides() {
        let pod = serde_json::json!({"kind": "Pod", "spec": {
        "nodeSelector": {"kubernetes.io/arch": "arm64"},
        "initContainers": [{"name": "i", "image": "init:1"}],
        "containers": [
            {"name": "a", "image": "app:1"},
            {"name": "b", "image": "app:1"},
            {"name": "c", "image": "pinned:1", "securityContext": {"runAsUser": 1000}},
            {"name": "d", "image": "chosen:1", "securityContext": {"runAsNonRoot": false}},
            {"name": "e"},
        ]}});
        assert_eq!(
            query(&pod),
            Ok(ImageQuery {
                images: vec!["app:1".into(), "init:1".into()],
                arch: Some("arm64".into())
            })
        );
        let pod_uid = serde_json::json!({"kind": "Pod", "spec": {"securityContext": {"runAsUser": 5},
            "containers": [{"name": "a", "image": "app:1"}]}});
        assert_eq!(query(&pod_uid), Ok(ImageQuery::default()));
        let windows = serde_json::json!({"kind": "Pod", "spec": {"os": {"name": "windows"},
            "containers": [{"name": "a", "image": "app:1"}]}});
        assert_eq!(query(&windows), Ok(ImageQuery::default()));
        let deployment = serde_json::json!({"kind": "Deployment", "spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "app:2"}]}}}});
        assert_eq!(
            query(&deployment).map(|q| q.images),
            Ok(vec!["app:2".to_owned()])
        );
        assert_eq!(
            query(&serde_json::json!({"kind": "Service"})),
            Ok(ImageQuery::default())
        );
        assert!(query(&serde_json::json!({"kind": "Pod", "spec": {"containers": 3}})).is_err());
    }

    #[test]
    fn applied_value_is_canonical_order_then_unknown_names() {
        use Setting::*;
        let cases: [(SettingSet, &[&str], &str); 3] = [
            (set(&[FsGroup, RunAsNonRoot]), &[], "runAsNonRoot,fsGroup"),
            (
                set(&[Capabilities]),
                &["legacy", "other"],
                "capabilities,legacy,other",
            ),
            (set(&[]), &["x"], "x"),
        ];
        for (settings, extra, expected) in cases {
            assert_eq!(render_applied(settings, extra), expected);
        }
    }

    #[test]
    fn applied_annotation_updates_only_when_the_set_grows() {
        // (existing value, injected now, expected op and value)
        type Case<'a> = (Option<&'a str>, &'a [Setting], Option<(&'a str, &'a str)>);
        let cases: [Case<'_>; 5] = [
            (
                None,
                &[Setting::Capabilities],
                Some(("add", "capabilities")),
            ),
            (Some("capabilities"), &[Setting::Capabilities], None),
            (
                Some(" Capabilities ,runAsNonRoot"),
                &[Setting::RunAsNonRoot],
                None,
            ),
            (
                Some("fsGroup"),
                &[Setting::RunAsNonRoot],
                Some(("replace", "runAsNonRoot,fsGroup")),
            ),
            (
                Some("old-tool-name"),
                &[Setting::SeccompProfile],
                Some(("replace", "seccompProfile,old-tool-name")),
            ),
        ];
        for (existing, injected, expected) in cases {
            let mut pod = json!({"kind": "Pod", "metadata": {"annotations": {}}, "spec": {}});
            if let Some(value) = existing {
                pod["metadata"]["annotations"][ANNOTATION_APPLIED] = json!(value);
            }
            let root = pod.as_object().unwrap();
            let Start::Run(prepared) =
                prepare(root, &Context::default(), &Policy::default()).unwrap()
            else {
                panic!("pod not prepared");
            };
            let mut edits = Edits::new(&pod);
            for setting in injected {
                edits.applied.insert(*setting);
            }
            annotate_applied(&prepared, &mut edits);
            let ops = serde_json::to_value(edits.patch.finish()).unwrap();
            match expected {
                None => assert_eq!(ops, json!([]), "{existing:?}"),
                Some((op, value)) => {
                    assert_eq!(ops[0]["op"], json!(op), "{existing:?}");
                    assert_eq!(
                        ops[0]["path"],
                        json!("/metadata/annotations/kube-hardener.io~1applied")
                    );
                    assert_eq!(ops[0]["value"], json!(value), "{existing:?}");
                }
            }
        }
    }
}
