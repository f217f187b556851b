//! Namespace annotations for reviews, from an in-memory cache fed by a
//! watch of Namespace metadata, with one bounded GET for a namespace not yet
//! seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt as _, watcher};
use prometheus_client::metrics::counter::Counter;

/// Only annotations under this prefix are kept in the cache: nothing else is
/// read, and dropping the rest (last-applied-configuration, managedFields,
/// labels) keeps memory flat with thousands of namespaces.
const KEPT_ANNOTATION_PREFIX: &str = "kube-hardener.io/";

/// A namespace as the metadata watch delivers it.
pub type NamespaceMeta = PartialObjectMeta<Namespace>;

/// The annotations kept for one namespace: `None` when it has none of this
/// webhook's (most namespaces), shared with every review that reads them.
type Kept = Option<Arc<BTreeMap<String, String>>>;

/// Namespace name → the annotations this webhook reads, and nothing else.
/// kube-runtime's reflector store keeps a whole `ObjectMeta` in an `Arc` and
/// an `ObjectRef` key per namespace: even trimmed to the name and these
/// annotations, 10,000 namespaces took 10 MiB, against 5 MiB here
/// (BENCHMARKS.md, "The namespace cache").
/// Cheap to clone: the watch writes to the same cache the reviews read.
#[derive(Clone, Default)]
pub struct NamespaceCache {
    state: Arc<RwLock<CacheState>>,
    synced: Arc<AtomicBool>,
}

#[derive(Default)]
struct CacheState {
    names: HashMap<Box<str>, Kept>,
    /// A relist in progress: it replaces `names` when complete, so a
    /// namespace deleted while the watch was down does not linger.
    relist: Option<HashMap<Box<str>, Kept>>,
}

impl fmt::Debug for NamespaceCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceCache")
            .field("namespaces", &self.len())
            .field("synced", &self.synced.load(Ordering::Acquire))
            .finish()
    }
}

impl NamespaceCache {
    /// Applies one watch event, as kube-runtime's reflector writer does.
    pub fn apply_watcher_event(&self, event: &watcher::Event<NamespaceMeta>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Init => state.relist = Some(HashMap::new()),
            watcher::Event::InitApply(meta) => {
                if let (Some(relist), Some((name, kept))) = (state.relist.as_mut(), entry(meta)) {
                    relist.insert(name, kept);
                }
            }
            watcher::Event::InitDone => {
                if let Some(mut names) = state.relist.take() {
                    names.shrink_to_fit();
                    state.names = names;
                }
                if !self.synced.swap(true, Ordering::AcqRel) {
                    tracing::info!(namespaces = state.names.len(), "namespace cache synced");
                }
            }
            watcher::Event::Apply(meta) => {
                if let Some((name, kept)) = entry(meta) {
                    state.names.insert(name, kept);
                }
            }
            watcher::Event::Delete(meta) => {
                if let Some(name) = meta.metadata.name.as_deref() {
                    state.names.remove(name);
                }
            }
        }
    }

    fn get(&self, name: &str) -> Option<Kept> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.names.get(name).cloned()
    }

    fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .names
            .len()
    }
}

/// The cache entry for a namespace; `None` for an object without a name.
fn entry(meta: &NamespaceMeta) -> Option<(Box<str>, Kept)> {
    let name = meta.metadata.name.as_deref()?;
    Some((name.into(), kept(meta.metadata.annotations.as_ref())))
}

fn kept(annotations: Option<&BTreeMap<String, String>>) -> Kept {
    let kept: BTreeMap<String, String> = annotations?
        .iter()
        .filter(|(key, _)| key.starts_with(KEPT_ANNOTATION_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    (!kept.is_empty()).then(|| Arc::new(kept))
}

/// How long the API server's "no such namespace" is remembered. Reviews for
/// namespaces that do not exist come from callers other than the API server
/// (which checks the namespace first), so a short memory is enough to stop a
/// flood of them from turning into a flood of GETs.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Most names the negative cache holds; past it, expired entries are dropped
/// and, if that is not enough, the whole cache (the cost is a few GETs).
const NEGATIVE_CAPACITY: usize = 4096;
/// Fallback GETs in flight at once; more wait (within the lookup budget).
const MAX_CONCURRENT_LOOKUPS: usize = 8;

/// Where a review's namespace annotations came from.
#[derive(Debug)]
pub(crate) enum Lookup {
    Cached(Kept),
    Fetched(Kept),
    /// The API server says the namespace does not exist.
    NotFound,
    /// The API server said so less than [`NEGATIVE_TTL`] ago.
    RecentlyNotFound,
    /// No answer in time or an error: the review goes on without annotations.
    Failed(String),
}

impl Lookup {
    pub fn annotations(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Lookup::Cached(kept) | Lookup::Fetched(kept) => kept.as_deref(),
            Lookup::NotFound | Lookup::RecentlyNotFound | Lookup::Failed(_) => None,
        }
    }
}

/// The namespace annotations a review needs, without an API call in the
/// common case. Cheap to clone: every HTTP worker holds one.
#[derive(Clone)]
pub struct NamespaceSource {
    cache: NamespaceCache,
    fallback: Option<Api<Namespace>>,
    lookup_timeout: Duration,
    watch_errors: Counter,
    /// Names the API server recently said do not exist, with when it said so.
    not_found: Arc<Mutex<HashMap<String, Instant>>>,
    lookups: Arc<tokio::sync::Semaphore>,
}

impl fmt::Debug for NamespaceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceSource")
            .field("cached", &self.cache.len())
            .field("synced", &self.is_synced())
            .field("fallback", &self.fallback.is_some())
            .field("lookup_timeout", &self.lookup_timeout)
            .finish()
    }
}

impl NamespaceSource {
    /// Starts a metadata watch over all namespaces on the current runtime.
    /// Watch errors are logged, counted and retried with backoff; the cache
    /// keeps serving what it has meanwhile.
    pub fn watch(client: kube::Client, lookup_timeout: Duration) -> Self {
        let cache = NamespaceCache::default();
        let source =
            NamespaceSource::from_cache(cache.clone(), Some(client.clone()), lookup_timeout);
        let errors = source.watch_errors.clone();
        // An `Api` over `PartialObjectMeta` lists and watches metadata only.
        let stream = watcher(
            Api::<NamespaceMeta>::all(client),
            watcher::Config::default(),
        )
        .default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => cache.apply_watcher_event(&event),
                    Err(error) => {
                        errors.inc();
                        tracing::warn!(%error, "namespace watch failed; retrying with backoff");
                    }
                }
            }
        });
        source
    }

    /// A source over `cache`, e.g. one fed watch events directly.
    /// `fallback` is the client for namespaces missing from the cache;
    /// without one they have no annotations.
    pub fn from_cache(
        cache: NamespaceCache,
        fallback: Option<kube::Client>,
        lookup_timeout: Duration,
    ) -> Self {
        NamespaceSource {
            cache,
            fallback: fallback.map(Api::all),
            lookup_timeout,
            watch_errors: Counter::default(),
            not_found: Arc::new(Mutex::new(HashMap::new())),
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
        }
    }

    /// True once the first complete list of namespaces is in the cache.
    pub fn is_synced(&self) -> bool {
        self.cache.synced.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The API client it was built with, if any.
    pub(crate) fn client(&self) -> Option<kube::Client> {
        self.fallback.clone().map(Api::into_client)
    }

    pub(crate) fn watch_errors(&self) -> Counter {
        self.watch_errors.clone()
    }

    pub(crate) async fn lookup(&self, name: &str) -> Lookup {
        if let Some(kept) = self.cache.get(name) {
            return Lookup::Cached(kept);
        }
        let Some(api) = &self.fallback else {
            return Lookup::Failed("namespace not cached and no API client".to_owned());
        };
        if self.recently_not_found(name, Instant::now()) {
            return Lookup::RecentlyNotFound;
        }
        // Waiting for a free slot counts against the same budget as the GET.
        let fetch = async {
            let _permit = self.lookups.acquire().await;
            api.get_metadata_opt(name).await
        };
        match tokio::time::timeout(self.lookup_timeout, fetch).await {
            Ok(Ok(Some(meta))) => Lookup::Fetched(kept(meta.metadata.annotations.as_ref())),
            Ok(Ok(None)) => {
                self.remember_not_found(name, Instant::now());
                Lookup::NotFound
            }
            Ok(Err(error)) => Lookup::Failed(error.to_string()),
            Err(_) => Lookup::Failed(format!(
                "no answer within {} ms",
                self.lookup_timeout.as_millis()
            )),
        }
    }

    fn recently_not_found(&self, name: &str, now: Instant) -> bool {
        let misses = self
            .not_found
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        misses
            .get(name)
            .is_some_and(|when| now.duration_since(*when) < NEGATIVE_TTL)
    }

    fn remember_not_found(&self, name: &str, now: Instant) {
        let mut misses = self
            .not_found
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if misses.len() >= NEGATIVE_CAPACITY {
            misses.retain(|_, when| now.duration_since(*when) < NEGATIVE_TTL);
            if misses.len() >= NEGATIVE_CAPACITY {
                misses.clear();
            }
        }
        misses.insert(name.to_owned(), now);
    }

    /// Names in the negative cache (for tests and the debug view).
    #[cfg(test)]
    fn not_found_len(&self) -> usize {
        self.not_found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::watcher::Event;

    fn namespace(name: &str, annotations: &[(&str, &str)]) -> NamespaceMeta {
        let mut meta = kube::core::ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        };
        if !annotations.is_empty() {
            meta.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
        }
        kube::core::metadata::PartialObjectMetaExt::into_response_partial(meta)
    }

    #[tokio::test]
    async fn serves_cached_annotations_after_sync() {
        let writer = NamespaceCache::default();
        let source = NamespaceSource::from_cache(writer.clone(), None, Duration::from_millis(50));
        assert!(!source.is_synced());
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(namespace(
            "team-a",
            &[("kube-hardener.io/skip", "all")],
        )));
        writer.apply_watcher_event(&Event::InitDone);
        tokio::time::timeout(Duration::from_secs(2), async {
            while !source.is_synced() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(source.len(), 1);
        let lookup = source.lookup("team-a").await;
        assert!(matches!(lookup, Lookup::Cached(_)));
        assert_eq!(
            lookup.annotations().unwrap()["kube-hardener.io/skip"],
            "all"
        );
        assert!(matches!(source.lookup("team-b").await, Lookup::Failed(_)));
    }

    #[tokio::test]
    async fn the_negative_cache_expires_and_stays_bounded() {
        let source =
            NamespaceSource::from_cache(NamespaceCache::default(), None, Duration::from_millis(50));
        let start = Instant::now();
        source.remember_not_found("ghost", start);
        assert!(source.recently_not_found("ghost", start + Duration::from_secs(9)));
        assert!(!source.recently_not_found("ghost", start + NEGATIVE_TTL));
        assert!(!source.recently_not_found("other", start));
        for i in 0..NEGATIVE_CAPACITY * 3 {
            source.remember_not_found(&format!("fake-{i}"), start);
            assert!(source.not_found_len() <= NEGATIVE_CAPACITY);
        }
        // Expired entries make room first.
        let later = start + NEGATIVE_TTL;
        source.remember_not_found("fresh", later);
        assert!(source.recently_not_found("fresh", later));
        assert!(source.not_found_len() <= NEGATIVE_CAPACITY);
    }

    #[test]
    fn only_this_webhooks_annotations_are_kept() {
        let meta = namespace(
            "n",
            &[
                ("kube-hardener.io/skip", "capabilities"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
            ],
        );
        let (name, kept) = entry(&meta).unwrap();
        assert_eq!(&*name, "n");
        assert_eq!(
            kept.as_deref(),
            Some(&BTreeMap::from([(
                "kube-hardener.io/skip".to_owned(),
                "capabilities".to_owned()
            )]))
        );
        assert_eq!(entry(&namespace("m", &[("owner", "x")])).unwrap().1, None);
    }

    #[test]
    fn a_relist_replaces_the_cache_and_events_update_it() {
        let cache = NamespaceCache::default();
        cache.apply_watcher_event(&Event::Init);
        cache.apply_watcher_event(&Event::InitApply(namespace("gone", &[])));
        cache.apply_watcher_event(&Event::InitApply(namespace("kept", &[])));
        // Not visible until the list is complete.
        assert_eq!(cache.len(), 0);
        assert!(!cache.synced.load(Ordering::Acquire));
        cache.apply_watcher_event(&Event::InitDone);
        assert_eq!(cache.len(), 2);
        assert!(cache.synced.load(Ordering::Acquire));

        // The watch restarts; "gone" was deleted meanwhile. Until the relist
        // completes the old entries keep serving.
        cache.apply_watcher_event(&Event::Init);
        cache.apply_watcher_event(&Event::InitApply(namespace(
            "kept",
            &[("kube-hardener.io/mode", "audit")],
        )));
        assert!(cache.get("gone").is_some());
        cache.apply_watcher_event(&Event::InitDone);
        assert!(cache.get("gone").is_none());
        assert_eq!(
            cache.get("kept").flatten().unwrap()["kube-hardener.io/mode"],
            "audit"
        );

        cache.apply_watcher_event(&Event::Apply(namespace("new", &[])));
        assert_eq!(cache.get("new"), Some(None));
        cache.apply_watcher_event(&Event::Delete(namespace("kept", &[])));
        assert!(cache.get("kept").is_none());
        assert_eq!(cache.len(), 1);
    }
}
