//! What a review leaves behind: one log line, the metrics, and the text that
//! request-controlled strings are reduced to before they are logged or echoed.
//!
//! Mutating admission runs before the API server validates names, so a pod's
//! `name`, `generateName` or namespace can hold newlines and terminal escape
//! sequences; any caller of the webhook can put anything in a review. Such
//! strings never reach a log line or an error response raw: control
//! characters are escaped and length is capped ([`printable`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use crate::admission::{Mode, Review};
use crate::decision::{Decision, ReviewOutcome};
use crate::metrics::{
    KindLabels, LOOKUP_FAILED, LOOKUP_NOT_FOUND, LOOKUP_OK, LOOKUP_RECENTLY_NOT_FOUND,
    ReasonLabels, ResultLabels, ReviewLabels, SettingLabels,
};
use crate::namespaces::Lookup;
use crate::state::State;

/// Longest request-controlled value written to a log field (names, uids).
pub(crate) const MAX_LOGGED_CHARS: usize = 256;
/// Longest error text echoed to a client or logged.
pub(crate) const MAX_ECHOED_CHARS: usize = 512;

/// `text` with control characters escaped (`\n`, `\u{1b}`, …) and cut to
/// `max` characters (an ellipsis marks the cut). Borrowed when nothing had
/// to change, which is the common case.
pub(crate) fn printable(text: &str, max: usize) -> Cow<'_, str> {
    let clean = !text.chars().any(needs_escape);
    let short = text.chars().nth(max).is_none();
    if clean && short {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max * 2));
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters, and the two Unicode line separators some viewers
/// break lines at.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

impl State {
    pub(crate) fn count_lookup(&self, review: &Review, lookup: &Lookup) {
        let result = match lookup {
            Lookup::Cached(_) => return,
            Lookup::Fetched(_) => LOOKUP_OK,
            Lookup::NotFound => LOOKUP_NOT_FOUND,
            Lookup::RecentlyNotFound => LOOKUP_RECENTLY_NOT_FOUND,
            Lookup::Failed(error) => {
                tracing::warn!(
                    uid = %printable(&review.uid, MAX_LOGGED_CHARS),
                    namespace = %printable(&review.namespace, MAX_LOGGED_CHARS),
                    error = %printable(error, MAX_ECHOED_CHARS),
                    "namespace lookup failed; reviewing without namespace annotations"
                );
                LOOKUP_FAILED
            }
        };
        self.metrics
            .namespace_lookups
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a request refused before it became a review, and logs it.
    pub(crate) fn count_rejection(&self, reason: &'static str, status: u16, error: &str) {
        self.metrics
            .rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
        tracing::info!(status, error = %printable(error, MAX_ECHOED_CHARS), "rejected request");
    }

    pub(crate) fn record(&self, review: &Review, decision: &Decision, elapsed: Duration) {
        let metrics = &self.metrics;
        metrics
            .reviews
            .get_or_create(&ReviewLabels {
                outcome: decision.outcome.label(),
                operation: review.operation_label(),
            })
            .inc();
        metrics.latency.observe(elapsed.as_secs_f64());
        if let Some(mode) = decision.mode {
            for setting in &decision.applied {
                metrics
                    .settings
                    .get_or_create(&SettingLabels {
                        setting: setting.name(),
                        mode: mode.label(),
                    })
                    .inc();
            }
        }
        for kind in &decision.warning_kinds {
            metrics
                .warnings
                .get_or_create(&KindLabels { kind: kind.label() })
                .inc();
        }
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let uid = printable(&review.uid, MAX_LOGGED_CHARS);
        let namespace = printable(&review.namespace, MAX_LOGGED_CHARS);
        let display_name = review.display_name();
        let name = printable(&display_name, MAX_LOGGED_CHARS);
        let operation = printable(&review.operation, MAX_LOGGED_CHARS);
        let detail = printable(
            decision.detail.as_deref().unwrap_or_default(),
            MAX_ECHOED_CHARS,
        );
        if decision.outcome == ReviewOutcome::Error {
            tracing::error!(
                uid = %uid,
                namespace = %namespace,
                name = %name,
                operation = %operation,
                dry_run = review.dry_run,
                error = %detail,
                latency_us,
                "review failed; admitted unchanged"
            );
        } else {
            tracing::info!(
                uid = %uid,
                namespace = %namespace,
                name = %name,
                kind = %printable(&review.kind.kind, MAX_LOGGED_CHARS),
                operation = %operation,
                dry_run = review.dry_run,
                outcome = decision.outcome.label(),
                mode = decision.mode.map(Mode::label).unwrap_or("-"),
                applied = %decision.applied_names,
                warnings = decision.answer.warnings.len(),
                detail = %detail,
                latency_us,
                "review"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_and_caps_length() {
        let cases: [(&str, usize, &str); 7] = [
            ("web-7d9f", 256, "web-7d9f"),
            ("a\nb", 256, "a\\nb"),
            (
                "x\n2026-12-01T00:00:00Z  INFO review outcome=patched",
                256,
                "x\\n2026-12-01T00:00:00Z  INFO review outcome=patched",
            ),
            ("\u{1b}[31mred\u{1b}[0m", 256, "\\u{1b}[31mred\\u{1b}[0m"),
            ("tab\there\r", 256, "tab\\there\\r"),
            ("\u{9b}csi", 256, "\\u{9b}csi"),
            ("ééééé", 3, "ééé…"),
        ];
        for (input, max, expected) in cases {
            assert_eq!(printable(input, max), expected, "{input:?}");
        }
        assert!(matches!(printable("plain", 10), Cow::Borrowed(_)));
        let long = "a".repeat(1 << 20);
        assert_eq!(printable(&long, MAX_ECHOED_CHARS).chars().count(), 513);
        // Escaping never lets a line break through, whatever the input.
        for c in [
            '\n', '\r', '\u{85}', '\u{b}', '\u{c}', '\u{2028}', '\u{2029}',
        ] {
            let input = format!("a{c}b");
            let out = printable(&input, 10);
            assert!(!out.contains(c), "{c:?}");
        }
    }
}
