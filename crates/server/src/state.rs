//! What every review shares: the policy, the namespace source, the metrics
//! and the limits. One instance per server, behind `web::Data`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube_hardener_engine::Policy;

use crate::metrics::Metrics;
use crate::namespaces::NamespaceSource;

#[derive(Debug)]
pub(crate) struct State {
    /// The effective policy: the configured one with the webhook's own
    /// namespace excluded (`Config::webhook_policy`).
    pub policy: Policy,
    pub audit: bool,
    pub max_body_bytes: usize,
    pub client_timeout: Duration,
    pub namespaces: NamespaceSource,
    pub metrics: Arc<Metrics>,
    pub shutting_down: Arc<AtomicBool>,
    /// Large reviews are computed off the HTTP threads, this many at once,
    /// so that one huge pod cannot hold up the small ones queued behind it.
    pub heavy_reviews: tokio::sync::Semaphore,
    /// Looks up what images run as (`images.resolve`); `None` when off.
    pub images: Option<kube_hardener_images::Resolver>,
    /// Reads pods' pull secrets (`images.pod_pull_secrets`); `None` when off.
    pub pull_secrets: Option<crate::pull_secrets::PullSecrets>,
}
