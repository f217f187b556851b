//! The resolver against a real registry on loopback (Debian's
//! docker-registry, distribution 2.8) with TLS, anonymous and with basic
//! auth, holding images the tests push themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube_hardener_engine::ImageUser;
use kube_hardener_images::{Credentials, Observer, Resolver, ResolverConfig, Source};
use kube_hardener_testkit::registry::{
    Body, PASSWD, Registry, Reply, ScriptedRegistry, SilentRegistry, TestImage, layer,
    sha256_digest,
};
use serde_json::json;

#[derive(Debug, Default)]
struct Counting {
    lookups: AtomicUsize,
    cache_hits: AtomicUsize,
}

impl Observer for Counting {
    fn answered(&self, source: Source, _: &ImageUser) {
        if source == Source::Cache {
            self.cache_hits.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn looked_up(&self, _: f64, _: &ImageUser) {
        self.lookups.fetch_add(1, Ordering::SeqCst);
    }
}

fn resolver_for(
    registry: &Registry,
    credentials: Credentials,
    observer: Arc<Counting>,
) -> Resolver {
    Resolver::new(
        ResolverConfig {
            budget: Duration::from_secs(5),
            lookup_timeout: Duration::from_secs(10),
            extra_roots_pem: vec![registry.ca_pem.as_bytes().to_vec()],
            credentials,
            max_layer_bytes: 1 << 20,
            ..ResolverConfig::default()
        },
        observer,
    )
    .unwrap()
}

async fn one(resolver: &Resolver, image: &str, arch: Option<&str>) -> ImageUser {
    let facts = resolver.facts(&[image.to_owned()], arch).await;
    facts[image].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_user_is_read_from_the_registry() {
    let registry = Registry::anonymous().unwrap();
    let passwd_layer: &[(&str, &[u8])] = &[("etc/passwd", PASSWD)];
    type Check = Box<dyn Fn(&ImageUser) -> bool>;
    let cases: Vec<(&str, TestImage, Check)> = vec![
        (
            "unset:1",
            TestImage::new(None, passwd_layer),
            Box::new(|u| matches!(u, ImageUser::Root { why } if why == "USER unset")),
        ),
        (
            "zero:1",
            TestImage::new(Some("0:0"), passwd_layer),
            Box::new(|u| matches!(u, ImageUser::Root { why } if why == "USER 0:0")),
        ),
        (
            "uid:1",
            TestImage::new(Some("65532"), &[]),
            Box::new(|u| *u == ImageUser::Uid(65532)),
        ),
        (
            "named:1",
            TestImage::new(Some("app"), passwd_layer),
            Box::new(|u| {
                *u == ImageUser::Named {
                    name: "app".into(),
                    uid: 10001,
                }
            }),
        ),
        (
            "named-zero:1",
            TestImage::new(Some("zero"), passwd_layer),
            Box::new(|u| matches!(u, ImageUser::Root { why } if why.contains("UID 0"))),
        ),
        (
            "named-missing:1",
            TestImage::new(Some("ghost"), passwd_layer),
            Box::new(|u| matches!(u, ImageUser::Root { why } if why.contains("not in"))),
        ),
        (
            "no-passwd:1",
            TestImage::new(Some("app"), &[("bin/sh", b"x")]),
            Box::new(|u| matches!(u, ImageUser::Root { why } if why.contains("no /etc/passwd"))),
        ),
    ];
    let mut digests = Vec::new();
    for (tag, image, _) in &cases {
        digests.push(registry.push(&format!("kh/{tag}"), image).await.unwrap());
    }
    // The top layer wins: a later layer that replaces /etc/passwd decides.
    let mut layered = TestImage::new(Some("app"), passwd_layer);
    layered
        .layers
        .push(layer(&[("etc/passwd", b"app:x:20002:20002::/:/bin/sh\n")]));
    registry.push("kh/layered:1", &layered).await.unwrap();
    let mut deleted = TestImage::new(Some("app"), passwd_layer);
    deleted.layers.push(layer(&[("etc/.wh.passwd", b"")]));
    registry.push("kh/deleted:1", &deleted).await.unwrap();

    let observer = Arc::new(Counting::default());
    let resolver = resolver_for(&registry, Credentials::default(), observer.clone());
    for ((tag, _, check), digest) in cases.iter().zip(&digests) {
        let by_tag = one(&resolver, &registry.image(&format!("kh/{tag}")), None).await;
        assert!(check(&by_tag), "{tag}: {by_tag:?}");
        // A digest-pinned reference needs no tag and gives the same answer.
        let name = tag.split(':').next().unwrap();
        let by_digest = one(
            &resolver,
            &registry.image(&format!("kh/{name}@{digest}")),
            None,
        )
        .await;
        assert_eq!(by_digest, by_tag, "{tag} by digest");
    }
    assert_eq!(
        one(&resolver, &registry.image("kh/layered:1"), None).await,
        ImageUser::Named {
            name: "app".into(),
            uid: 20002
        }
    );
    assert!(matches!(
        one(&resolver, &registry.image("kh/deleted:1"), None).await,
        ImageUser::Root { why } if why.contains("no /etc/passwd")
    ));
    // Cached now: asking again reads nothing from the registry.
    let lookups = observer.lookups.load(Ordering::SeqCst);
    let again = one(&resolver, &registry.image("kh/named:1"), None).await;
    assert_eq!(
        again,
        ImageUser::Named {
            name: "app".into(),
            uid: 10001
        }
    );
    assert_eq!(observer.lookups.load(Ordering::SeqCst), lookups);
    assert!(observer.cache_hits.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_decided_by_its_linux_platforms() {
    let registry = Registry::anonymous().unwrap();
    let mut amd64 = TestImage::new(Some("1000"), &[]);
    amd64.architecture = "amd64".into();
    let mut arm64 = TestImage::new(None, &[]);
    arm64.architecture = "arm64".into();
    let amd64_digest = registry.push("kh/multi:amd64", &amd64).await.unwrap();
    let arm64_digest = registry.push("kh/multi:arm64", &arm64).await.unwrap();
    registry
        .push_index(
            "kh/multi:1",
            &[("amd64", &amd64_digest), ("arm64", &arm64_digest)],
        )
        .await
        .unwrap();
    let resolver = resolver_for(&registry, Credentials::default(), Arc::default());
    let image = registry.image("kh/multi:1");
    // Unpinned: the platforms disagree, the cautious answer is root.
    assert!(matches!(
        one(&resolver, &image, None).await,
        ImageUser::Root { why } if why.contains("linux/arm64") && why.contains("disagree")
    ));
    assert_eq!(
        one(&resolver, &image, Some("amd64")).await,
        ImageUser::Uid(1000)
    );
    assert!(matches!(
        one(&resolver, &image, Some("arm64")).await,
        ImageUser::Root { .. }
    ));
    assert!(matches!(
        one(&resolver, &image, Some("s390x")).await,
        ImageUser::Unknown { why } if why.contains("no linux platform for s390x")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_and_refusals_give_unknown_never_a_hang() {
    let registry = Registry::with_basic_auth("robot", "s3cret").unwrap();
    let credentials = Credentials::from_json(
        json!({"auths": {registry.host.clone(): {"username": "robot", "password": "s3cret"}}})
            .to_string()
            .as_bytes(),
        "test",
    )
    .unwrap();
    registry
        .push("kh/private:1", &TestImage::new(Some("65532"), &[]))
        .await
        .unwrap();
    // A layer that claims 2 GB: refused before any download.
    let small = layer(&[("etc/passwd", PASSWD)]);
    let layer_digest = registry.push_blob("kh/huge", small.clone()).await.unwrap();
    let config = TestImage::new(Some("app"), &[]).config_json().into_bytes();
    let config_digest = registry.push_blob("kh/huge", config.clone()).await.unwrap();
    registry
        .push_raw_manifest(
            "kh/huge:1",
            &json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer_digest, "size": 2_000_000_000u64}],
            }),
        )
        .await
        .unwrap();
    assert_eq!(layer_digest, sha256_digest(&small));

    let with = resolver_for(&registry, credentials, Arc::default());
    let without = resolver_for(&registry, Credentials::default(), Arc::default());
    assert_eq!(
        one(&with, &registry.image("kh/private:1"), None).await,
        ImageUser::Uid(65532)
    );
    assert!(matches!(
        one(&without, &registry.image("kh/private:1"), None).await,
        ImageUser::Unknown { .. }
    ));
    assert!(matches!(
        one(&with, &registry.image("kh/huge:1"), None).await,
        ImageUser::Unknown { why } if why.contains("larger than")
    ));
    assert!(matches!(
        one(&with, &registry.image("kh/absent:1"), None).await,
        ImageUser::Unknown { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_registry_costs_one_budget_and_one_lookup() {
    let silent = SilentRegistry::start().await.unwrap();
    let host = silent.host.clone();
    let observer = Arc::new(Counting::default());
    let budget = Duration::from_millis(250);
    let resolver = Resolver::new(
        ResolverConfig {
            budget,
            lookup_timeout: Duration::from_secs(2),
            ..ResolverConfig::default()
        },
        observer.clone(),
    )
    .unwrap();
    let image = format!("{host}/kh/slow:1");
    let started = Instant::now();
    // Ten concurrent reviews of the same image share one lookup.
    let reviews = (0..10).map(|_| resolver.facts(std::slice::from_ref(&image), None));
    let answers = futures::future::join_all(reviews).await;
    let elapsed = started.elapsed();
    assert!(elapsed < budget + Duration::from_millis(100), "{elapsed:?}");
    for facts in answers {
        assert!(
            matches!(&facts[&image], ImageUser::Unknown { why } if why.contains("budget")),
            "{facts:?}"
        );
    }
    // The lookup goes on in the background and ends at its own timeout.
    kube_hardener_testkit::eventually(
        "the background lookup to give up",
        Duration::from_secs(5),
        || async {
            match observer.lookups.load(Ordering::SeqCst) {
                1 => Ok(()),
                n => Err(format!("{n} lookups finished")),
            }
        },
    )
    .await
    .unwrap();
    // Its failure is remembered for unknown_ttl: the next review is instant.
    let started = Instant::now();
    let facts = resolver.facts(std::slice::from_ref(&image), None).await;
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(&facts[&image], ImageUser::Unknown { .. }));
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest_json(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(digest, size)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

/// Registries that redirect, stream endless manifests, lie about digests or
/// run a token service: every answer is a clear unknown or the right user,
/// and nothing is read past its bound or requested off the registry unless
/// `images.redirect_hosts` lists the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_bodies_digests_and_tokens_are_bounded_and_checked() {
    let registry = Registry::anonymous().unwrap();
    // The blobs of a `USER app` image with /etc/passwd, in the real registry.
    let passwd_layer = layer(&[("etc/passwd", PASSWD)]);
    let layer_digest = registry
        .push_blob("kh/app", passwd_layer.clone())
        .await
        .unwrap();
    let named_config = TestImage::new(Some("app"), &[]).config_json().into_bytes();
    let named_digest = registry
        .push_blob("kh/app", named_config.clone())
        .await
        .unwrap();
    let named = manifest_json(
        (&named_digest, named_config.len()),
        &[(&layer_digest, passwd_layer.len())],
    );
    registry
        .push_raw_manifest("kh/app:1", &serde_json::from_slice(&named).unwrap())
        .await
        .unwrap();
    let uid_config = TestImage::new(Some("65532"), &[])
        .config_json()
        .into_bytes();
    let uid_digest = sha256_digest(&uid_config);
    let uid_manifest = manifest_json((&uid_digest, uid_config.len()), &[]);
    let real = registry.host.clone();

    let front = ScriptedRegistry::start({
        let (named, uid_manifest, uid_config, uid_digest) = (
            named.clone(),
            uid_manifest.clone(),
            uid_config.clone(),
            uid_digest.clone(),
        );
        let real = real.clone();
        move |request| {
            let target = request.target.as_str();
            let bearer = request.authorization.as_deref() == Some("Bearer good-token");
            let challenge = |realm: &str| {
                Reply::new(
                    401,
                    &[(
                        "www-authenticate",
                        &format!(r#"Bearer realm="{realm}",service="scripted""#),
                    )],
                    Body::Bytes(Vec::new()),
                )
            };
            if let Some(blob) = target.strip_prefix("/v2/kh/redirected/blobs/") {
                return Reply::redirect(&format!("https://{real}/v2/kh/app/blobs/{blob}"));
            }
            if target.starts_with("/v2/kh/token/") || target.starts_with("/v2/kh/token-open/") {
                // The token flow for real: a challenge, then the token's answer.
                return if !bearer {
                    challenge(&format!("http://{}/token", request.host))
                } else if target.contains("/manifests/") {
                    Reply::json(200, OCI_MANIFEST, &uid_manifest)
                } else {
                    Reply::json(200, "application/octet-stream", &uid_config)
                };
            }
            match target {
                "/v2/kh/redirected/manifests/1" => Reply::json(200, OCI_MANIFEST, &named),
                "/v2/kh/moved/manifests/1" => {
                    Reply::redirect(&format!("https://{real}/v2/kh/app/manifests/1"))
                }
                "/v2/kh/huge/manifests/1" => Reply::new(200, &[], Body::Claimed(1 << 40)),
                "/v2/kh/endless/manifests/1" => Reply::new(200, &[], Body::Endless(256 << 20)),
                "/v2/kh/lying/manifests/1" => Reply::new(
                    200,
                    &[
                        ("docker-content-digest", &uid_digest),
                        ("content-type", OCI_MANIFEST),
                    ],
                    Body::Bytes(named.clone()),
                ),
                "/v2/kh/escaping/manifests/1" => Reply::json(
                    200,
                    OCI_MANIFEST,
                    &manifest_json(("sha256:../../../v2/_catalog", 2), &[]),
                ),
                "/v2/kh/bad-realm/manifests/1" => challenge("ftp://127.0.0.1/token"),
                _ if target.starts_with("/token?") => {
                    // Basic robot:s3cret.
                    if request.authorization.as_deref() == Some("Basic cm9ib3Q6czNjcmV0")
                        || target.contains("kh%2Ftoken-open")
                    {
                        Reply::json(
                            200,
                            "application/json",
                            br#"{"token": "good-token", "expires_in": 300}"#,
                        )
                    } else {
                        Reply::new(401, &[], Body::Bytes(Vec::new()))
                    }
                }
                _ => Reply::new(404, &[], Body::Bytes(Vec::new())),
            }
        }
    })
    .await
    .unwrap();
    let host = front.host.clone();
    let credentials = Credentials::from_json(
        json!({"auths": {host.clone(): {"username": "robot", "password": "s3cret"}}})
            .to_string()
            .as_bytes(),
        "test",
    )
    .unwrap();
    let resolver = |redirect_hosts: &[&str], credentials: Credentials| {
        Resolver::new(
            ResolverConfig {
                budget: Duration::from_secs(5),
                lookup_timeout: Duration::from_secs(10),
                extra_roots_pem: vec![registry.ca_pem.as_bytes().to_vec()],
                plain_http: vec![host.clone()],
                redirect_hosts: redirect_hosts.iter().map(|h| (*h).to_owned()).collect(),
                credentials,
                ..ResolverConfig::default()
            },
            Arc::new(Counting::default()),
        )
        .unwrap()
    };
    let strict = resolver(&[], credentials.clone());
    let listed = resolver(&["127.0.0.1"], credentials.clone());
    let anonymous = resolver(&[], Credentials::default());
    let image = |name: &str| format!("{host}/kh/{name}");
    let unknown = |user: ImageUser, expected: &str| match user {
        ImageUser::Unknown { why } => assert!(why.contains(expected), "{why} (wanted {expected})"),
        other => panic!("{other:?} (wanted unknown: {expected})"),
    };
    let started = Instant::now();

    // A blob redirected to another host: followed only to a listed host.
    let refused = format!("redirected to `{real}`, which is not followed");
    unknown(one(&strict, &image("redirected:1"), None).await, &refused);
    assert_eq!(
        one(&listed, &image("redirected:1"), None).await,
        ImageUser::Named {
            name: "app".into(),
            uid: 10001
        }
    );
    // So is a manifest.
    unknown(one(&strict, &image("moved:1"), None).await, &refused);
    assert_eq!(
        one(&listed, &image("moved:1"), None).await,
        ImageUser::Named {
            name: "app".into(),
            uid: 10001
        }
    );
    // Bodies past images.max_config_bytes, claimed or streamed.
    let too_large = "the image's manifest is larger than 4194304 bytes";
    unknown(one(&strict, &image("huge:1"), None).await, too_large);
    unknown(one(&strict, &image("endless:1"), None).await, too_large);
    // A manifest whose body is not what the registry says it is.
    unknown(
        one(&strict, &image("lying:1"), None).await,
        "manifest does not match its digest",
    );
    // A digest that would walk the URL elsewhere never becomes a request.
    unknown(
        one(&strict, &image("escaping:1"), None).await,
        "is not a sha256 or sha512 digest",
    );
    unknown(
        one(&strict, &image("bad-realm:1"), None).await,
        "token realm is not https",
    );
    // The token flow: credentials get a token, which later lookups reuse.
    assert_eq!(
        one(&strict, &image("token:1"), None).await,
        ImageUser::Uid(65532)
    );
    assert_eq!(
        one(&strict, &image("token:2"), None).await,
        ImageUser::Uid(65532)
    );
    unknown(
        one(&anonymous, &image("token:1"), None).await,
        "token: access refused (401/403)",
    );
    // Anonymous pull tokens work out of the box.
    assert_eq!(
        one(&anonymous, &image("token-open:1"), None).await,
        ImageUser::Uid(65532)
    );
    // A pod's pull secret: its login gets its own token, which a lookup
    // without the login never reuses.
    let facts = anonymous
        .facts_with(
            std::slice::from_ref(&image("token:1")),
            None,
            Some(&credentials),
        )
        .await;
    assert_eq!(facts[&image("token:1")], ImageUser::Uid(65532));
    unknown(
        one(&anonymous, &image("token:3"), None).await,
        "token: access refused (401/403)",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let seen = front.targets();
    assert!(
        !seen
            .iter()
            .any(|t| t.contains("..") || t.contains("_catalog")),
        "{seen:?}"
    );
    let tokens: Vec<_> = front
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.target.starts_with("/token?"))
        .map(|r| (r.target.clone(), r.authorization.is_some()))
        .collect();
    let token = |repository: &str, with_credentials: bool| {
        (
            format!("/token?service=scripted&scope=repository%3Akh%2F{repository}%3Apull"),
            with_credentials,
        )
    };
    assert_eq!(
        tokens,
        vec![
            token("token", true),
            // Refused: asked again by the manifest's GET after the tag's HEAD.
            token("token", false),
            token("token", false),
            token("token-open", false),
            // The pod's login, then again without it (HEAD and GET).
            token("token", true),
            token("token", false),
            token("token", false),
        ],
        "one token per resolver and repository while it lasts, with the credentials only when configured"
    );
}

/// A pod's pull secret opens a private registry for that pod's lookups only:
/// a refusal cached without it does not hide the image from the pod that has
/// it, and its answer is never given to a pod without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secret_logins_are_used_and_cached_apart() {
    let registry = Registry::with_basic_auth("robot", "s3cret").unwrap();
    registry
        .push("kh/private:1", &TestImage::new(Some("65532"), &[]))
        .await
        .unwrap();
    let observer = Arc::new(Counting::default());
    let resolver = resolver_for(&registry, Credentials::default(), observer.clone());
    let image = registry.image("kh/private:1");
    let secrets = |password: &str| {
        Credentials::from_json(
            json!({"auths": {registry.host.clone(): {"username": "robot", "password": password}}})
                .to_string()
                .as_bytes(),
            "pull secret",
        )
        .unwrap()
    };
    let with = |secrets: Credentials| {
        let (resolver, image) = (&resolver, &image);
        async move {
            resolver
                .facts_with(std::slice::from_ref(image), None, Some(&secrets))
                .await[image]
                .clone()
        }
    };
    let refused = |user: ImageUser| {
        assert!(
            matches!(&user, ImageUser::Unknown { why } if why.contains("access refused")),
            "{user:?}"
        );
    };
    refused(one(&resolver, &image, None).await);
    assert_eq!(with(secrets("s3cret")).await, ImageUser::Uid(65532));
    refused(one(&resolver, &image, None).await);
    refused(with(secrets("wrong")).await);
    // Secrets for another registry change nothing.
    let elsewhere = Credentials::from_json(
        br#"{"auths": {"other.example": {"username": "robot", "password": "s3cret"}}}"#,
        "pull secret",
    )
    .unwrap();
    refused(with(elsewhere).await);
    // Each login's answer is cached: the second time costs no lookup.
    let lookups = observer.lookups.load(Ordering::SeqCst);
    assert_eq!(with(secrets("s3cret")).await, ImageUser::Uid(65532));
    assert_eq!(observer.lookups.load(Ordering::SeqCst), lookups);
}
