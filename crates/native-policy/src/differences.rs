//! What the generated policy does not do as the webhook does: one table, the
//! source of docs/native-policy.md's table (checked by a test), of the notes
//! `kube-hardener policy` prints, and of the names the differential e2e suite
//! expects.

use kube_hardener_config::Config;

/// One documented difference between the webhook and the generated policy.
#[derive(Debug, Clone, Copy)]
pub struct Difference {
    /// Stable name, used by the e2e suite and in notes.
    pub name: &'static str,
    /// What the webhook does.
    pub webhook: &'static str,
    /// What the policy does instead, and why.
    pub policy: &'static str,
    /// Whether this configuration uses the feature (a note is printed then);
    /// `None`: it concerns some pods whatever the configuration.
    pub configured: Option<fn(&Config) -> bool>,
}

pub const WARNINGS: &str = "admission-warnings";
pub const AUDIT: &str = "audit-mode";
pub const IMAGES: &str = "image-aware";
pub const WORKLOADS: &str = "workload-templates";
pub const VOLUME_NAMES: &str = "hashed-volume-names";
pub const EPHEMERAL: &str = "ephemeral-containers";
pub const COST: &str = "cel-cost-budget";

pub const DIFFERENCES: [Difference; 7] = [
    Difference {
        name: WARNINGS,
        webhook: "returns admission warnings for explicit insecure values, settings it left out and bad annotations",
        policy: "none: a MutatingAdmissionPolicy cannot return warnings",
        configured: None,
    },
    Difference {
        name: AUDIT,
        webhook: "`server.audit = true` computes and warns but never patches",
        policy: "not generated: a mutating policy cannot only warn, so `kube-hardener policy` refuses an audit configuration",
        configured: Some(|config| config.server.audit),
    },
    Difference {
        name: IMAGES,
        webhook: "`images.resolve = true` looks up each image's user and decides runAsNonRoot from it",
        policy: "decides as with `images.resolve = false`: CEL cannot reach a registry",
        configured: Some(|config| config.images.resolve),
    },
    Difference {
        name: WORKLOADS,
        webhook: "`hardening.mutate_workloads = true` also hardens Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob templates",
        policy: "Pods only; the pods those workloads create are hardened",
        configured: Some(|config| config.hardening.mutate_workloads),
    },
    Difference {
        name: VOLUME_NAMES,
        webhook: "names a writable path's volume `kh-<container>-<path>`, or a hashed name when that is longer than 63 characters or already used in the pod",
        policy: "CEL has no hash function: such a container keeps a writable root filesystem (no readOnlyRootFilesystem, no volume)",
        configured: None,
    },
    Difference {
        name: EPHEMERAL,
        webhook: "hardens ephemeral containers added later (`kubectl debug`) through pods/ephemeralcontainers",
        policy: "Pod CREATE only: debug containers are added unhardened",
        configured: None,
    },
    Difference {
        name: COST,
        webhook: "handles pods of any size in linear time",
        policy: "the cost grows linearly too, but past the API server's CEL budget (with the default configuration, a pod of 2,250 to 2,500 containers) a pod is admitted unhardened under failurePolicy Ignore, refused under Fail",
        configured: None,
    },
];

/// The table as Markdown, exactly as docs/native-policy.md carries it.
pub fn markdown_table() -> String {
    let mut out = String::from("| name | the webhook | the generated policy |\n|---|---|---|\n");
    for difference in DIFFERENCES {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            difference.name, difference.webhook, difference.policy
        ));
    }
    out
}

/// The differences this configuration runs into: the notes printed to stderr.
pub fn configured(config: &Config) -> Vec<&'static Difference> {
    DIFFERENCES
        .iter()
        .filter(|difference| difference.configured.is_some_and(|uses| uses(config)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn names_are_unique_and_the_docs_carry_the_table() {
        let mut names: Vec<_> = DIFFERENCES.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DIFFERENCES.len());
        let docs = include_str!("../../../docs/native-policy.md");
        assert!(
            docs.contains(&markdown_table()),
            "docs/native-policy.md must carry the table printed by \
             `kube-hardener policy --differences`:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn notes_follow_the_configuration() {
        let mut config = Config::default();
        assert!(configured(&config).is_empty());
        config.server.audit = true;
        config.images.resolve = true;
        config.hardening.mutate_workloads = true;
        let names: Vec<_> = configured(&config).iter().map(|d| d.name).collect();
        assert_eq!(names, [AUDIT, IMAGES, WORKLOADS]);
    }
}
