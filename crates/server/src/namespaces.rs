//! Namespace annotations for reviews, from an in-memory reflector over
//! Namespace metadata, with one bounded GET for a namespace not yet seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use prometheus_client::metrics::counter::Counter;

/// Only annotations under this prefix are kept in the cache: nothing else is
/// read, and dropping the rest (last-applied-configuration, managedFields,
/// labels) keeps memory flat with thousands of namespaces.
const KEPT_ANNOTATION_PREFIX: &str = "kube-hardener.io/";

pub(crate) type NamespaceMeta = PartialObjectMeta<Namespace>;

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
    Cached(Arc<NamespaceMeta>),
    Fetched(Box<NamespaceMeta>),
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
            Lookup::Cached(meta) => meta.metadata.annotations.as_ref(),
            Lookup::Fetched(meta) => meta.metadata.annotations.as_ref(),
            Lookup::NotFound | Lookup::RecentlyNotFound | Lookup::Failed(_) => None,
        }
    }
}

/// The namespace annotations a review needs, without an API call in the
/// common case. Cheap to clone: every HTTP worker holds one.
#[derive(Clone)]
pub struct NamespaceSource {
    store: Store<NamespaceMeta>,
    synced: Arc<AtomicBool>,
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
            .field("cached", &self.store.len())
            .field("synced", &self.is_synced())
            .field("fallback", &self.fallback.is_some())
            .field("lookup_timeout", &self.lookup_timeout)
            .finish()
    }
}

impl NamespaceSource {
    /// Starts a metadata reflector over all namespaces on the current runtime.
    /// Watch errors are logged, counted and retried with backoff; the cache
    /// keeps serving what it has meanwhile.
    pub fn watch(client: kube::Client, lookup_timeout: Duration) -> Self {
        let (store, writer) = reflector::store::<NamespaceMeta>();
        let source = NamespaceSource::from_store(store, Some(client.clone()), lookup_timeout);
        let errors = source.watch_errors.clone();
        // An `Api` over `PartialObjectMeta` lists and watches metadata only.
        let stream = watcher(
            Api::<NamespaceMeta>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(trim)
        .reflect(writer);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(error) = event {
                    errors.inc();
                    tracing::warn!(%error, "namespace watch failed; retrying with backoff");
                }
            }
        });
        source
    }

    /// A source over any reflector store, e.g. one fed by a
    /// [`reflector::store::Writer`] directly. `fallback` is the client for
    /// namespaces missing from the store; without one they have no
    /// annotations. Must be called within a Tokio runtime: readiness is
    /// tracked by a task waiting for the store's first complete list.
    pub fn from_store(
        store: Store<NamespaceMeta>,
        fallback: Option<kube::Client>,
        lookup_timeout: Duration,
    ) -> Self {
        let synced = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&synced);
        let waiting = store.clone();
        tokio::spawn(async move {
            if waiting.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Release);
                tracing::info!(namespaces = waiting.len(), "namespace cache synced");
            }
        });
        NamespaceSource {
            store,
            synced,
            fallback: fallback.map(Api::all),
            lookup_timeout,
            watch_errors: Counter::default(),
            not_found: Arc::new(Mutex::new(HashMap::new())),
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
        }
    }

    /// True once the first complete list of namespaces is in the store.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// The API client it was built with, if any.
    pub(crate) fn client(&self) -> Option<kube::Client> {
        self.fallback.clone().map(Api::into_client)
    }

    pub(crate) fn watch_errors(&self) -> Counter {
        self.watch_errors.clone()
    }

    pub(crate) async fn lookup(&self, name: &str) -> Lookup {
        if let Some(meta) = self.store.get(&ObjectRef::new(name)) {
            return Lookup::Cached(meta);
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
            Ok(Ok(Some(mut meta))) => {
                trim(&mut meta);
                Lookup::Fetched(Box::new(meta))
            }
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

/// Keeps only the name and the annotations this webhook reads. The store's
/// keys compare by name alone, so dropping uid and resourceVersion is safe.
fn trim(meta: &mut NamespaceMeta) {
    let metadata = std::mem::take(&mut meta.metadata);
    let annotations = metadata.annotations.and_then(|mut annotations| {
        annotations.retain(|key, _| key.starts_with(KEPT_ANNOTATION_PREFIX));
        (!annotations.is_empty()).then_some(annotations)
    });
    meta.metadata = kube::core::ObjectMeta {
        name: metadata.name,
        annotations,
        ..kube::core::ObjectMeta::default()
    };
    meta.types = None;
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
        let (store, mut writer) = reflector::store::<NamespaceMeta>();
        let source = NamespaceSource::from_store(store, None, Duration::from_millis(50));
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
        let (store, _writer) = reflector::store::<NamespaceMeta>();
        let source = NamespaceSource::from_store(store, None, Duration::from_millis(50));
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
    fn trim_keeps_only_own_annotations() {
        let mut meta = namespace(
            "n",
            &[
                ("kube-hardener.io/skip", "capabilities"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
            ],
        );
        meta.metadata.labels = Some(BTreeMap::from([("a".to_owned(), "b".to_owned())]));
        meta.metadata.uid = Some("0b0c".to_owned());
        meta.metadata.resource_version = Some("42".to_owned());
        trim(&mut meta);
        assert_eq!(meta.metadata.uid, None);
        assert_eq!(meta.metadata.resource_version, None);
        assert_eq!(
            meta.metadata.annotations,
            Some(BTreeMap::from([(
                "kube-hardener.io/skip".to_owned(),
                "capabilities".to_owned()
            )]))
        );
        assert_eq!(meta.metadata.labels, None);
        assert_eq!(meta.metadata.name.as_deref(), Some("n"));

        let mut other = namespace("m", &[("owner", "x")]);
        trim(&mut other);
        assert_eq!(other.metadata.annotations, None);
    }
}
