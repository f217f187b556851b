//! Looking images up in their registries, with caches, one lookup per image
//! at a time, a time budget per review and bounds on everything read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use kube_hardener_engine::{ImageFacts, ImageUser};
use oci_client::Reference;
use oci_client::manifest::{OciImageManifest, OciManifest};
use tokio::sync::Semaphore;

use crate::bounded::Bounded;
use crate::credentials::{Credentials, Login, read_bounded};
use crate::distribution::Distribution;
use crate::layers::{PasswdInLayer, find_passwd, is_gzip};
use crate::reference;
use crate::user::{ConfigUser, clip, merge_platforms, parse_config_user, resolve_name};

/// The most platforms of one index looked at.
const MAX_PLATFORMS: usize = 8;
/// The most distinct images resolved for one review; the rest are unknown.
pub const MAX_IMAGES_PER_REVIEW: usize = 16;

/// How the resolver behaves; built from the `[images]` configuration.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    pub budget: Duration,
    pub lookup_timeout: Duration,
    pub tag_ttl: Duration,
    pub unknown_ttl: Duration,
    pub cache_entries: usize,
    pub concurrent_lookups: usize,
    pub max_config_bytes: u64,
    pub max_layer_bytes: u64,
    pub max_unpacked_bytes: u64,
    pub max_layers: usize,
    pub credentials: Credentials,
    /// Hosts (or `*.domain`) besides the registry's own that a lookup
    /// follows a redirect to, over https.
    pub redirect_hosts: Vec<String>,
    /// Extra trusted CA certificates (PEM).
    pub extra_roots_pem: Vec<Vec<u8>>,
    /// Registries spoken to over plain HTTP (tests only; never by default).
    pub plain_http: Vec<String>,
}

impl Default for ResolverConfig {
    /// The embedded configuration's `[images]` defaults, without files.
    fn default() -> Self {
        Self::with(
            &kube_hardener_config::ImagesConfig::default(),
            Credentials::default(),
            Vec::new(),
        )
    }
}

/// Where a lookup's answer came from, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Answered from the image cache.
    Cache,
    /// A tag's digest was checked again and the digest's user was cached.
    Digest,
    /// Looked up in the registry.
    Registry,
    /// Not answered within the review's budget (still running).
    Budget,
}

impl Source {
    pub const fn label(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Digest => "digest",
            Source::Registry => "registry",
            Source::Budget => "budget",
        }
    }
}

/// The kind of an answer, for metrics: `uid`, `named`, `root`, `unknown`.
pub fn outcome_label(user: &ImageUser) -> &'static str {
    match user {
        ImageUser::Uid(_) => "uid",
        ImageUser::Named { .. } => "named",
        ImageUser::Root { .. } => "root",
        ImageUser::Unknown { .. } => "unknown",
    }
}

/// Receives what the resolver does (the server turns it into metrics).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// One image of one review was answered.
    fn answered(&self, source: Source, user: &ImageUser);
    /// A registry lookup finished after `seconds`.
    fn looked_up(&self, seconds: f64, user: &ImageUser);
}

/// An observer that records nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn answered(&self, _: Source, _: &ImageUser) {}
    fn looked_up(&self, _: f64, _: &ImageUser) {}
}

/// One cached answer: the image, the platform, and the fingerprint of the
/// pod's login, if the lookup used one (answers for different logins never
/// mix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    image: String,
    arch: Option<String>,
    login: Option<u64>,
}

impl Key {
    fn new(image: &str, arch: Option<&str>, login: Option<&Login>) -> Self {
        Key {
            image: image.to_owned(),
            arch: arch.map(str::to_owned),
            login: login.map(Login::fingerprint),
        }
    }
}

/// A manifest digest and the platform: what a digest's user is kept under.
type DigestKey = (String, Option<String>);
/// What an image runs as, the digest it was, and until when that holds.
type ImageEntry = (ImageUser, Option<String>, Instant);
type Pending = Shared<BoxFuture<'static, ImageUser>>;

/// Resolves what images run as. Cheap to clone; clones share caches.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Distribution,
    config: ResolverConfig,
    /// (image, arch, login) → what it runs as, the digest it was, and until when.
    images: Mutex<Bounded<Key, ImageEntry>>,
    /// (manifest digest, arch) → what it runs as; digests never change.
    digests: Mutex<Bounded<DigestKey, ImageUser>>,
    pending: Mutex<HashMap<Key, Pending>>,
    permits: Semaphore,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("images.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("images.credentials_file: {0}")]
    Credentials(#[from] crate::CredentialsError),
    #[error("images.ca_file: {0}")]
    Client(String),
}

/// The largest CA file read.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

impl ResolverConfig {
    /// From the `[images]` table, reading its credentials and CA files.
    pub fn from_config(images: &kube_hardener_config::ImagesConfig) -> Result<Self, ResolverError> {
        let credentials = match &images.credentials_file {
            Some(path) => Credentials::from_file(path)?,
            None => Credentials::default(),
        };
        let mut extra_roots_pem = Vec::new();
        if let Some(path) = &images.ca_file {
            let error = |reason: String| ResolverError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let pem = read_bounded(path, MAX_CA_FILE_BYTES).map_err(error)?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(error("holds no PEM certificate".to_owned()));
            }
            extra_roots_pem.push(pem);
        }
        Ok(Self::with(images, credentials, extra_roots_pem))
    }

    fn with(
        images: &kube_hardener_config::ImagesConfig,
        credentials: Credentials,
        extra_roots_pem: Vec<Vec<u8>>,
    ) -> Self {
        ResolverConfig {
            budget: Duration::from_millis(images.budget_ms),
            lookup_timeout: Duration::from_millis(images.lookup_timeout_ms),
            tag_ttl: Duration::from_secs(images.tag_ttl_seconds),
            unknown_ttl: Duration::from_secs(images.unknown_ttl_seconds),
            cache_entries: images.cache_entries,
            concurrent_lookups: images.concurrent_lookups,
            max_config_bytes: images.max_config_bytes,
            max_layer_bytes: images.max_layer_bytes,
            max_unpacked_bytes: images.max_unpacked_bytes,
            max_layers: images.max_layers,
            credentials,
            redirect_hosts: images.redirect_hosts.clone(),
            extra_roots_pem,
            plain_http: Vec::new(),
        }
    }
}

impl Resolver {
    pub fn new(config: ResolverConfig, observer: Arc<dyn Observer>) -> Result<Self, ResolverError> {
        // reqwest's rustls needs a process-wide provider; the server uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = Distribution::new(&config).map_err(ResolverError::Client)?;
        let entries = config.cache_entries;
        Ok(Resolver {
            inner: Arc::new(Inner {
                registry,
                images: Mutex::new(Bounded::new(entries)),
                digests: Mutex::new(Bounded::new(entries)),
                pending: Mutex::new(HashMap::new()),
                permits: Semaphore::new(config.concurrent_lookups.max(1)),
                config,
                observer,
            }),
        })
    }

    /// What each of `images` runs as, on the platform `arch` if the pod pins
    /// one, within the review's time budget. Images over
    /// [`MAX_IMAGES_PER_REVIEW`] and lookups past the budget are unknown;
    /// those lookups go on, so the next review finds them cached.
    pub async fn facts(&self, images: &[String], arch: Option<&str>) -> ImageFacts {
        self.facts_with(images, arch, None).await
    }

    /// [`Resolver::facts`], with the logins of the pod's pull secrets: an
    /// image of a registry they name is looked up with that login (and
    /// cached apart from lookups without it).
    pub async fn facts_with(
        &self,
        images: &[String],
        arch: Option<&str>,
        pull_secrets: Option<&Credentials>,
    ) -> ImageFacts {
        let mut facts = ImageFacts::new();
        let mut misses = Vec::new();
        // Cache hits (nearly every review) are answered here, without a
        // future per image.
        for image in images.iter().take(MAX_IMAGES_PER_REVIEW) {
            let login = pull_secrets.and_then(|secrets| {
                let reference = reference::parse(image).ok()?;
                secrets.login_for(reference.resolve_registry())
            });
            let key = Key::new(image, arch, login.as_ref());
            match self.cached_key(&key) {
                Some(user) => {
                    self.inner.observer.answered(Source::Cache, &user);
                    facts.insert(image.clone(), user);
                }
                None => misses.push((image, key, login)),
            }
        }
        if !misses.is_empty() {
            let deadline = tokio::time::Instant::now() + self.inner.config.budget;
            let lookups = misses.into_iter().map(|(image, key, login)| async move {
                let (user, source) = self.user_until(key, login, deadline).await;
                self.inner.observer.answered(source, &user);
                (image.clone(), user)
            });
            facts.extend(futures::future::join_all(lookups).await);
        }
        for image in images.iter().skip(MAX_IMAGES_PER_REVIEW) {
            facts.insert(
                image.clone(),
                ImageUser::Unknown {
                    why: format!("more than {MAX_IMAGES_PER_REVIEW} images in one pod"),
                },
            );
        }
        facts
    }

    /// Starts looking `image` up in the background unless a fresh answer is
    /// cached or a lookup of it is running: for warming the cache before any
    /// review asks. Returns whether a lookup was started.
    pub fn prefetch(&self, image: &str, arch: Option<&str>) -> bool {
        let key = Key::new(image, arch, None);
        if self.cached_key(&key).is_some() {
            return false;
        }
        let running = self
            .inner
            .pending
            .lock()
            .map_or(true, |pending| pending.contains_key(&key));
        if !running {
            // The lookup runs as its own task; nobody needs to wait for it.
            drop(self.pending(key, None));
        }
        !running
    }

    /// The cached answer, if fresh.
    pub fn cached(&self, image: &str, arch: Option<&str>) -> Option<ImageUser> {
        self.cached_key(&Key::new(image, arch, None))
    }

    fn cached_key(&self, key: &Key) -> Option<ImageUser> {
        let images = self.inner.images.lock().ok()?;
        let (user, _, until) = images.get(key)?;
        (Instant::now() < *until).then(|| user.clone())
    }

    async fn user_until(
        &self,
        key: Key,
        login: Option<Login>,
        deadline: tokio::time::Instant,
    ) -> (ImageUser, Source) {
        let pending = self.pending(key, login);
        match tokio::time::timeout_at(deadline, pending).await {
            Ok(user) => (user, Source::Registry),
            Err(_) => (
                ImageUser::Unknown {
                    why: format!(
                        "no answer within the {} ms budget; still looking",
                        self.inner.config.budget.as_millis()
                    ),
                },
                Source::Budget,
            ),
        }
    }

    /// The one lookup of `key` in flight, started if there is none. It runs
    /// as its own task, so it finishes (and fills the caches) even when every
    /// review waiting for it has given up.
    fn pending(&self, key: Key, login: Option<Login>) -> Pending {
        let Ok(mut pending) = self.inner.pending.lock() else {
            return futures::future::ready(ImageUser::Unknown {
                why: "internal lock poisoned".to_owned(),
            })
            .boxed()
            .shared();
        };
        if let Some(running) = pending.get(&key) {
            return running.clone();
        }
        let this = self.clone();
        let task_key = key.clone();
        let handle = tokio::spawn(async move {
            let user = this.lookup_bounded(&task_key, login.as_ref()).await;
            if let Ok(mut pending) = this.inner.pending.lock() {
                pending.remove(&task_key);
            }
            user
        });
        let shared = async move {
            handle.await.unwrap_or_else(|_| ImageUser::Unknown {
                why: "the lookup task failed".to_owned(),
            })
        }
        .boxed()
        .shared();
        pending.insert(key, shared.clone());
        shared
    }

    async fn lookup_bounded(&self, key: &Key, login: Option<&Login>) -> ImageUser {
        let started = Instant::now();
        let (image, arch) = (key.image.as_str(), key.arch.as_deref());
        let result = match self.inner.permits.acquire().await {
            Ok(_permit) => tokio::time::timeout(
                self.inner.config.lookup_timeout,
                self.lookup(image, arch, login),
            )
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the registry did not answer within {} ms",
                    self.inner.config.lookup_timeout.as_millis()
                ))
            }),
            Err(_) => Err("the resolver is shutting down".to_owned()),
        };
        let (user, digest) = match result {
            Ok((user, digest)) => (user, digest),
            Err(why) => (ImageUser::Unknown { why }, None),
        };
        self.inner
            .observer
            .looked_up(started.elapsed().as_secs_f64(), &user);
        let ttl = match (&user, &digest) {
            (ImageUser::Unknown { .. }, _) => self.inner.config.unknown_ttl,
            (_, Some(_)) if is_pinned(image) => Duration::from_secs(365 * 24 * 3600),
            _ => self.inner.config.tag_ttl,
        };
        if let Ok(mut images) = self.inner.images.lock() {
            images.insert(
                key.clone(),
                (user.clone(), digest.clone(), Instant::now() + ttl),
            );
        }
        if let (Some(digest), false) = (digest, matches!(user, ImageUser::Unknown { .. }))
            && let Ok(mut digests) = self.inner.digests.lock()
        {
            digests.insert((digest, key.arch.clone()), user.clone());
        }
        user
    }

    /// The whole lookup: returns what the image runs as and the digest of
    /// its top manifest, or why nothing could be learned.
    async fn lookup(
        &self,
        image: &str,
        arch: Option<&str>,
        login: Option<&Login>,
    ) -> Result<(ImageUser, Option<String>), String> {
        let reference = reference::parse(image)
            .map_err(|e| format!("not an image reference: {}", clip(&e.to_string())))?;
        let registry = &self.inner.registry;
        let max_manifest = self.inner.config.max_config_bytes;
        // A tag whose digest's user is known needs only the digest.
        let known_digest = match reference.digest() {
            Some(digest) => Some(digest.to_owned()),
            None => registry.tag_digest(&reference, login).await.ok(),
        };
        if let Some(digest) = &known_digest
            && let Some(user) = self.digest_user(digest, arch)
        {
            return Ok((user, known_digest));
        }
        let (manifest, digest) = registry.manifest(&reference, login, max_manifest).await?;
        let user = match manifest {
            OciManifest::Image(manifest) => {
                self.lookup_manifest(&reference, login, &manifest).await?
            }
            OciManifest::ImageIndex(index) => {
                let mut platforms = Vec::new();
                for entry in index.manifests.iter() {
                    let Some(platform) = &entry.platform else {
                        continue;
                    };
                    if platform.os.to_string() != "linux" {
                        continue;
                    }
                    let architecture = platform.architecture.to_string();
                    if arch.is_some_and(|pinned| pinned != architecture) {
                        continue;
                    }
                    if platforms.len() == MAX_PLATFORMS {
                        return Err(format!(
                            "the image index lists more than {MAX_PLATFORMS} linux platforms"
                        ));
                    }
                    platforms.push((architecture, entry.digest.clone()));
                }
                if platforms.is_empty() {
                    let which = arch.map(|a| format!(" for {a}")).unwrap_or_default();
                    return Err(format!("the image index has no linux platform{which}"));
                }
                let mut users = Vec::new();
                for (architecture, digest) in platforms {
                    let platform_ref = Reference::with_digest(
                        reference.registry().to_owned(),
                        reference.repository().to_owned(),
                        digest,
                    );
                    let user = match registry.manifest(&platform_ref, login, max_manifest).await {
                        Ok((OciManifest::Image(manifest), _)) => {
                            match self.lookup_manifest(&platform_ref, login, &manifest).await {
                                Ok(user) => user,
                                Err(why) => ImageUser::Unknown { why },
                            }
                        }
                        Ok((OciManifest::ImageIndex(_), _)) => ImageUser::Unknown {
                            why: "an image index inside an image index".to_owned(),
                        },
                        Err(why) => ImageUser::Unknown {
                            why: format!("platform {why}"),
                        },
                    };
                    users.push((format!("linux/{architecture}"), user));
                }
                merge_platforms(users)
            }
        };
        Ok((user, Some(digest)))
    }

    fn digest_user(&self, digest: &str, arch: Option<&str>) -> Option<ImageUser> {
        let digests = self.inner.digests.lock().ok()?;
        digests
            .get(&(digest.to_owned(), arch.map(str::to_owned)))
            .cloned()
    }

    async fn lookup_manifest(
        &self,
        reference: &Reference,
        login: Option<&Login>,
        manifest: &OciImageManifest,
    ) -> Result<ImageUser, String> {
        let config = self
            .inner
            .registry
            .blob(
                reference,
                login,
                &manifest.config,
                self.inner.config.max_config_bytes,
                "config",
            )
            .await?;
        let user = image_config_user(&config)?;
        match parse_config_user(&user) {
            ConfigUser::Uid(uid) => Ok(ImageUser::Uid(uid)),
            ConfigUser::Root(why) => Ok(ImageUser::Root { why }),
            ConfigUser::Invalid(why) => Err(why),
            ConfigUser::Name(name) => {
                let passwd = self.passwd(reference, login, manifest).await?;
                Ok(resolve_name(&name, passwd.as_deref()))
            }
        }
    }

    /// The image's `/etc/passwd`: the topmost layer that has or deletes it wins.
    async fn passwd(
        &self,
        reference: &Reference,
        login: Option<&Login>,
        manifest: &OciImageManifest,
    ) -> Result<Option<String>, String> {
        let limits = &self.inner.config;
        if manifest.layers.len() > limits.max_layers {
            // Only the top layers are searched; a miss there is not proof.
            tracing::debug!(
                layers = manifest.layers.len(),
                "searching only the top layers"
            );
        }
        for (searched, layer) in manifest.layers.iter().rev().enumerate() {
            if searched == limits.max_layers {
                return Err(format!(
                    "/etc/passwd not in the top {} layers",
                    limits.max_layers
                ));
            }
            if is_gzip(&layer.media_type).is_none() {
                return Err(format!(
                    "layer media type `{}` is not supported",
                    clip(&layer.media_type)
                ));
            }
            let bytes = self
                .inner
                .registry
                .blob(reference, login, layer, limits.max_layer_bytes, "layer")
                .await?;
            match find_passwd(&bytes, &layer.media_type, limits.max_unpacked_bytes) {
                Ok(PasswdInLayer::Found(text)) => return Ok(Some(text)),
                Ok(PasswdInLayer::Deleted) => return Ok(None),
                Ok(PasswdInLayer::Absent) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(None)
    }
}

fn is_pinned(image: &str) -> bool {
    image.contains("@sha256:") || image.contains("@sha512:")
}

/// `config.User` of an image config blob (empty when absent).
fn image_config_user(blob: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct ImageConfig {
        config: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(rename = "User")]
        user: Option<String>,
    }
    let parsed: ImageConfig = serde_json::from_slice(blob).map_err(|e| {
        format!(
            "the image config is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    Ok(parsed.config.and_then(|c| c.user).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_users_from_blobs() {
        assert_eq!(
            image_config_user(br#"{"config": {"User": "app"}}"#),
            Ok("app".to_owned())
        );
        assert_eq!(image_config_user(br#"{"config": {}}"#), Ok(String::new()));
        assert_eq!(
            image_config_user(br#"{"architecture": "amd64"}"#),
            Ok(String::new())
        );
        assert!(
            image_config_user(b"\x00garbage")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(image_config_user(br#"{"config": {"User": 5}}"#).is_err());
    }

    #[tokio::test]
    async fn bad_references_and_unreachable_registries_are_unknown_within_budget() {
        let resolver = Resolver::new(
            ResolverConfig {
                budget: Duration::from_millis(300),
                lookup_timeout: Duration::from_millis(2000),
                ..ResolverConfig::default()
            },
            Arc::new(NoObserver),
        )
        .unwrap();
        // Port 9 on loopback: nothing listens, the connection is refused.
        let images = vec!["UPPER/Case:x".to_owned(), "127.0.0.1:9/app:1".to_owned()];
        let started = Instant::now();
        let facts = resolver.facts(&images, None).await;
        assert!(
            started.elapsed() < Duration::from_millis(300 + 100),
            "{:?}",
            started.elapsed()
        );
        for image in &images {
            assert!(
                matches!(&facts[image], ImageUser::Unknown { .. }),
                "{image}: {:?}",
                facts[image]
            );
        }
        assert!(
            matches!(&facts["UPPER/Case:x"], ImageUser::Unknown { why } if why.contains("not an image reference"))
        );
    }
}
