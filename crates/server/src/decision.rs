//! The review decision: what the engine is asked, with which namespace
//! context and mode, and how its outcome becomes an answer.
//!
//! [`State::prepare`] (async: classify, exclusions, the namespace lookup)
//! comes first. A small review is then decided on the HTTP worker by
//! [`State::decide`], which parses the object once for the image query and
//! the hardening; a large one runs its image query and [`Prepared::compute`]
//! (synchronous and CPU-bound) on blocking threads.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;

use kube_hardener_engine::{
    Context, Disposition, ImageFacts, ImageQuery, Outcome, Policy, Setting, WarningKind,
};

use crate::admission::{self, Answer, Mode, Review, Target};
use crate::namespaces::Lookup;
use crate::state::State;

/// At most this many warnings go back to the API server, which keeps only
/// the first few kilobytes anyway; the rest are summed up in one more line.
pub(crate) const MAX_WARNINGS: usize = 20;

/// How a review ended: the one word used by logs, the reviews metric and the
/// audit annotations alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReviewOutcome {
    /// A patch was returned.
    Patched,
    /// Looked at; nothing to change.
    Unchanged,
    /// Audit mode: a patch was computed, reported and not returned.
    Audited,
    /// The namespace (or pod, where allowed) opted out of everything.
    Skipped,
    /// An excluded namespace.
    Excluded,
    /// Not something the webhook mutates (kind, operation, subresource).
    Ignored,
    /// The webhook's own trouble; admitted unchanged.
    Error,
}

impl ReviewOutcome {
    pub(crate) const ALL: [ReviewOutcome; 7] = [
        ReviewOutcome::Patched,
        ReviewOutcome::Unchanged,
        ReviewOutcome::Audited,
        ReviewOutcome::Skipped,
        ReviewOutcome::Excluded,
        ReviewOutcome::Ignored,
        ReviewOutcome::Error,
    ];

    pub(crate) const fn label(self) -> &'static str {
        match self {
            ReviewOutcome::Patched => "patched",
            ReviewOutcome::Unchanged => "unchanged",
            ReviewOutcome::Audited => "audited",
            ReviewOutcome::Skipped => "skipped",
            ReviewOutcome::Excluded => "excluded",
            ReviewOutcome::Ignored => "ignored",
            ReviewOutcome::Error => "error",
        }
    }

    /// The outcome of an engine run that changed nothing.
    fn of_disposition(disposition: &Disposition) -> ReviewOutcome {
        match disposition {
            Disposition::Hardened => ReviewOutcome::Unchanged,
            Disposition::ExcludedNamespace(_) => ReviewOutcome::Excluded,
            Disposition::SkippedAll => ReviewOutcome::Skipped,
            Disposition::UnsupportedKind(_) => ReviewOutcome::Ignored,
        }
    }
}

/// What was decided for one review, for the response, metrics and logs.
#[derive(Debug)]
pub(crate) struct Decision {
    pub answer: Answer,
    pub outcome: ReviewOutcome,
    pub mode: Option<Mode>,
    pub applied: Vec<Setting>,
    /// `applied` as the comma-separated names used in logs and annotations.
    pub applied_names: String,
    pub warning_kinds: Vec<WarningKind>,
    pub detail: Option<String>,
}

impl Decision {
    fn unchanged(outcome: ReviewOutcome, detail: impl Into<String>) -> Self {
        Decision {
            answer: Answer::default(),
            outcome,
            mode: None,
            applied: Vec::new(),
            applied_names: String::new(),
            warning_kinds: Vec::new(),
            detail: Some(detail.into()),
        }
    }

    fn skipped(outcome: ReviewOutcome, reason: &str) -> Self {
        let mut decision = Decision::unchanged(outcome, reason);
        decision
            .answer
            .audit_annotations
            .insert("skipped", reason.to_owned());
        decision
    }

    /// The webhook's own trouble never blocks a pod: admit it unchanged and
    /// tell the user why nothing was filled in.
    pub(crate) fn error(detail: String) -> Self {
        let mut decision = Decision::unchanged(ReviewOutcome::Error, detail);
        decision.answer.warnings.push(
            "kube-hardener could not process this object; it was admitted without security defaults"
                .to_owned(),
        );
        decision
    }
}

/// A review ready for the engine: classified, not excluded, its namespace
/// looked up.
#[derive(Debug)]
pub(crate) struct Prepared {
    target: Target,
    lookup: Option<Lookup>,
}

impl State {
    /// Classifies the review and looks its namespace up; `Err` is a final
    /// decision that needs no engine run.
    pub(crate) async fn prepare(&self, review: &Review) -> Result<Prepared, Decision> {
        let target = admission::classify(review, self.policy.mutate_workloads);
        if let Target::Ignore(reason) = target {
            return Err(Decision::unchanged(ReviewOutcome::Ignored, reason));
        }
        if self.policy.excludes(&review.namespace) {
            return Err(Decision::skipped(
                ReviewOutcome::Excluded,
                "excluded namespace",
            ));
        }
        let lookup = if review.namespace.is_empty() {
            None
        } else {
            Some(self.namespaces.lookup(&review.namespace).await)
        };
        if let Some(lookup) = &lookup {
            self.count_lookup(review, lookup);
        }
        Ok(Prepared { target, lookup })
    }

    /// Decides a small review where it arrived. A pod (template) is parsed
    /// once: the engine's image query and its hardening read the same parse,
    /// and the images are resolved in between.
    pub(crate) async fn decide(&self, review: &Review, prepared: Prepared) -> Decision {
        let Some(object) = &review.object else {
            return Decision::error("the request has no `object`".to_owned());
        };
        if prepared.target == Target::EphemeralContainers {
            let query = self.image_query(review, &prepared);
            let images = self.resolve(review, query).await;
            return prepared.compute(review, images.as_ref(), &self.policy, self.audit);
        }
        let ctx = prepared.context(review, None);
        let parsed = match guarded(|| kube_hardener_engine::parse(object, &ctx, &self.policy)) {
            Ok(parsed) => parsed,
            Err(detail) => return prepared.conclude(Err(detail), self.audit),
        };
        // A query that fails (a malformed `nodeSelector`) leaves image
        // awareness out of this review, as for a resolver that is off.
        let query = self
            .images
            .as_ref()
            .and_then(|_| guarded(|| parsed.image_query()).ok());
        let images = self.resolve(review, query).await;
        let computed = guarded(|| Ok(parsed.harden(images.as_ref())));
        prepared.conclude(computed, self.audit)
    }

    /// The engine's image query for a review on its own parse (none when
    /// image lookups are off or the object is malformed): for the reviews
    /// that do not go through [`State::decide`].
    pub(crate) fn image_query(&self, review: &Review, prepared: &Prepared) -> Option<ImageQuery> {
        self.images.as_ref()?;
        let ctx = prepared.context(review, None);
        kube_hardener_engine::image_query(review.object.as_ref()?, &ctx, &self.policy).ok()
    }

    /// Resolves the images of `query` (none: image lookups are off or the
    /// engine asked nothing) within the configured budget.
    pub(crate) async fn resolve(
        &self,
        review: &Review,
        query: Option<ImageQuery>,
    ) -> Option<ImageFacts> {
        let resolver = self.images.as_ref()?;
        let query = query?;
        if query.images.is_empty() {
            return Some(ImageFacts::new());
        }
        let pull_secrets = match (&self.pull_secrets, &review.object) {
            (Some(secrets), Some(object)) => secrets.for_pod(&review.namespace, object).await,
            _ => None,
        };
        Some(
            resolver
                .facts_with(&query.images, query.arch.as_deref(), pull_secrets.as_ref())
                .await,
        )
    }
}

impl Prepared {
    fn context<'a>(&'a self, review: &'a Review, images: Option<&'a ImageFacts>) -> Context<'a> {
        Context {
            namespace: (!review.namespace.is_empty()).then_some(review.namespace.as_str()),
            namespace_annotations: self.lookup.as_ref().and_then(Lookup::annotations),
            images,
        }
    }

    /// Runs the engine and turns its outcome into the answer. Synchronous and
    /// CPU-bound: large reviews run it on a blocking thread.
    pub(crate) fn compute(
        self,
        review: &Review,
        images: Option<&ImageFacts>,
        policy: &Policy,
        audit: bool,
    ) -> Decision {
        let Some(object) = &review.object else {
            return Decision::error("the request has no `object`".to_owned());
        };
        let ctx = self.context(review, images);
        let computed = match self.target {
            Target::EphemeralContainers => {
                let Some(old) = &review.old_object else {
                    return Decision::error(
                        "an ephemeralcontainers update without `oldObject`".to_owned(),
                    );
                };
                guarded(|| {
                    kube_hardener_engine::harden_new_ephemeral_containers(object, old, &ctx, policy)
                })
            }
            Target::Pod | Target::Workload | Target::Ignore(_) => {
                guarded(|| kube_hardener_engine::harden(object, &ctx, policy))
            }
        };
        self.conclude(computed, audit)
    }

    /// The answer for an engine run, in the namespace's mode.
    fn conclude(&self, computed: Result<Outcome, String>, audit: bool) -> Decision {
        let annotations = self.lookup.as_ref().and_then(Lookup::annotations);
        let (mode, mode_warning) = admission::effective_mode(audit, annotations);
        match computed {
            Ok(outcome) => answer(outcome, mode, mode_warning),
            Err(detail) => Decision::error(detail),
        }
    }
}

/// The warnings sent back: the first [`MAX_WARNINGS`], then a count of the rest.
fn capped_warnings(outcome: &Outcome, mode_warning: Option<String>) -> Vec<String> {
    let total = outcome.warnings.len() + usize::from(mode_warning.is_some());
    let room = MAX_WARNINGS - usize::from(mode_warning.is_some());
    let mut warnings: Vec<String> = outcome
        .warnings
        .iter()
        .take(room)
        .map(ToString::to_string)
        .collect();
    // The mode warning is about the whole namespace: it is never cut.
    warnings.extend(mode_warning);
    if total > warnings.len() {
        warnings.push(format!(
            "kube-hardener: {} more warnings not shown",
            total - warnings.len()
        ));
    }
    warnings
}

fn answer(outcome: Outcome, mode: Mode, mode_warning: Option<String>) -> Decision {
    let mut warning_kinds: Vec<WarningKind> = outcome.warnings.iter().map(|w| w.kind).collect();
    if mode_warning.is_some() {
        warning_kinds.push(WarningKind::Annotation);
    }
    let mut answer = Answer {
        patch: None,
        warnings: capped_warnings(&outcome, mode_warning),
        audit_annotations: BTreeMap::new(),
    };
    let detail = match &outcome.disposition {
        Disposition::Hardened => None,
        Disposition::ExcludedNamespace(ns) => Some(format!("excluded namespace {ns}")),
        Disposition::SkippedAll => Some("opted out of all settings".to_owned()),
        Disposition::UnsupportedKind(kind) => Some(format!("unsupported kind {kind}")),
    };
    match outcome.disposition {
        Disposition::ExcludedNamespace(_) => {
            answer
                .audit_annotations
                .insert("skipped", "excluded namespace".to_owned());
        }
        Disposition::SkippedAll => {
            answer
                .audit_annotations
                .insert("skipped", "opted out of all settings".to_owned());
        }
        Disposition::Hardened | Disposition::UnsupportedKind(_) => {}
    }
    let applied_names = outcome.applied_names();
    let review_outcome = if outcome.is_empty() {
        ReviewOutcome::of_disposition(&outcome.disposition)
    } else {
        match mode {
            Mode::Enforce => match serde_json::to_vec(&outcome.patch) {
                Ok(patch) => {
                    answer.patch = Some(patch);
                    answer
                        .audit_annotations
                        .insert("applied", applied_names.clone());
                    ReviewOutcome::Patched
                }
                Err(error) => {
                    return Decision::error(format!("cannot serialize the patch: {error}"));
                }
            },
            Mode::Audit => {
                answer.warnings.push(format!(
                    "kube-hardener audit mode: would set {}",
                    if applied_names.is_empty() {
                        "security defaults"
                    } else {
                        &applied_names
                    }
                ));
                answer
                    .audit_annotations
                    .insert("would-apply", applied_names.clone());
                ReviewOutcome::Audited
            }
        }
    };
    answer
        .audit_annotations
        .insert("mode", mode.label().to_owned());
    Decision {
        answer,
        outcome: review_outcome,
        mode: Some(mode),
        applied: outcome.applied,
        applied_names,
        warning_kinds,
        detail,
    }
}

/// Runs the engine, turning both its errors and a panic into an error
/// outcome: a bug in one rule must not turn into a failed pod creation.
fn guarded<T, F>(compute: F) -> Result<T, String>
where
    F: FnOnce() -> Result<T, kube_hardener_engine::EngineError>,
{
    match std::panic::catch_unwind(AssertUnwindSafe(compute)) {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(error)) => Err(format!("the object cannot be hardened: {error}")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(format!("internal error in the engine: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_hardener_engine::Warning;

    #[test]
    fn engine_panics_become_error_outcomes() {
        let result: Result<Outcome, String> = guarded(|| panic!("boom"));
        assert_eq!(result.unwrap_err(), "internal error in the engine: boom");
        let result: Result<Outcome, String> =
            guarded(|| Err(kube_hardener_engine::EngineError::NotAnObject));
        assert_eq!(
            result.unwrap_err(),
            "the object cannot be hardened: the object is not a JSON object"
        );
    }

    #[test]
    fn outcome_labels_are_distinct_and_stable() {
        let labels: Vec<&str> = ReviewOutcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(
            labels,
            [
                "patched",
                "unchanged",
                "audited",
                "skipped",
                "excluded",
                "ignored",
                "error"
            ]
        );
    }

    #[test]
    fn warnings_are_capped_with_a_count_of_the_rest() {
        let warning = |i: usize| Warning {
            kind: WarningKind::Privileged,
            field: format!("spec.containers[{i}].securityContext.privileged"),
            message: "is true".to_owned(),
        };
        // (engine warnings, mode warning, lines sent, last line)
        let cases = [
            (0, false, 0, None),
            (MAX_WARNINGS, false, MAX_WARNINGS, None),
            (
                MAX_WARNINGS + 1,
                false,
                MAX_WARNINGS + 1,
                Some("kube-hardener: 1 more warnings not shown"),
            ),
            (
                50_000,
                true,
                MAX_WARNINGS + 1,
                Some("kube-hardener: 49981 more warnings not shown"),
            ),
        ];
        for (count, mode, lines, last) in cases {
            let outcome = Outcome {
                warnings: (0..count).map(warning).collect(),
                ..Outcome::default()
            };
            let mode_warning = mode.then(|| "mode".to_owned());
            let sent = capped_warnings(&outcome, mode_warning);
            assert_eq!(sent.len(), lines, "{count}");
            if let Some(last) = last {
                assert_eq!(sent.last().map(String::as_str), Some(last), "{count}");
            }
            if mode {
                assert_eq!(sent[MAX_WARNINGS - 1], "mode", "the mode warning is kept");
            }
        }
    }
}
