//! The part of the OCI distribution API that learning an image's user needs:
//! the token flow, manifests and blobs. Written here rather than left to
//! oci-client, whose client reads every body whole, follows any redirect and
//! takes no HTTP client from its caller (docs/decisions.md): here every body
//! is bounded, a redirect to another host is followed only over https to a
//! host in `images.redirect_hosts`, and every manifest and blob is checked
//! against its digest.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciManifest};
use registry_http::header::{ACCEPT, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use registry_http::{Method, RequestBuilder, Response, StatusCode, Url, redirect};
use sha2::Digest as _;

use crate::bounded::Bounded;
use crate::credentials::{Credentials, Login};
use crate::resolver::ResolverConfig;
use crate::user::clip;

/// The manifest kinds asked for: OCI and Docker, images and indexes.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// The most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// The largest token answer read.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// Registries, repositories and their tokens remembered.
const AUTH_ENTRIES: usize = 1024;
/// A token without `expires_in` is reused this long (the token spec's default).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// A token is never reused longer than this, whatever it claims.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(300);

/// How requests to one repository authenticate.
#[derive(Clone)]
enum Auth {
    Bearer(String),
    Basic,
}

type AuthKey = (String, String, Option<u64>);

/// A registry client for reading only. Each call takes the login of the
/// pod's pull secret, if any; without one the configured credentials apply.
pub(crate) struct Distribution {
    http: registry_http::Client,
    plain_http: Vec<String>,
    credentials: Credentials,
    /// (registry, repository, login) → how to authenticate, until when: a
    /// token got with a pod's login serves only lookups with that login.
    auth: Mutex<Bounded<AuthKey, (Auth, Instant)>>,
}

impl std::fmt::Debug for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens stay out of every log line.
        f.debug_struct("Distribution")
            .field("plain_http", &self.plain_http)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Distribution {
    pub(crate) fn new(config: &ResolverConfig) -> Result<Self, String> {
        let mut roots = Vec::new();
        for pem in &config.extra_roots_pem {
            roots.push(
                registry_http::Certificate::from_pem(pem)
                    .map_err(|e| format!("not a PEM certificate: {}", clip(&e.to_string())))?,
            );
        }
        let hosts = config.redirect_hosts.clone();
        let http = registry_http::Client::builder()
            .tls_certs_merge(roots)
            .connect_timeout(config.lookup_timeout.min(Duration::from_secs(10)))
            .read_timeout(config.lookup_timeout)
            .redirect(redirect::Policy::custom(move |attempt| {
                let follow = attempt.previous().len() <= MAX_REDIRECTS
                    && attempt
                        .previous()
                        .first()
                        .is_some_and(|first| may_follow(first, attempt.url(), &hosts));
                if follow {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .user_agent(concat!("kube-hardener/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the registry client: {}", clip(&e.to_string())))?;
        Ok(Distribution {
            http,
            plain_http: config.plain_http.clone(),
            credentials: config.credentials.clone(),
            auth: Mutex::new(Bounded::new(AUTH_ENTRIES)),
        })
    }

    /// The digest a tag points at, from a HEAD request (no body read).
    pub(crate) async fn tag_digest(
        &self,
        reference: &Reference,
        login: Option<&Login>,
    ) -> Result<String, String> {
        let tag = reference.tag().unwrap_or("latest");
        let url = self.url(reference, &format!("manifests/{tag}"));
        let response = self
            .send(reference, login, Method::HEAD, &url, "manifest")
            .await?;
        content_digest(&response).ok_or_else(|| "manifest: no digest in the answer".to_owned())
    }

    /// The manifest or index `reference` names, read up to `max` bytes, and
    /// its digest (checked against a pinned one and against the registry's).
    pub(crate) async fn manifest(
        &self,
        reference: &Reference,
        login: Option<&Login>,
        max: u64,
    ) -> Result<(OciManifest, String), String> {
        let at = match reference.digest() {
            Some(digest) => checked_digest(digest, "manifest")?,
            None => reference.tag().unwrap_or("latest"),
        };
        let url = self.url(reference, &format!("manifests/{at}"));
        let response = self
            .send(reference, login, Method::GET, &url, "manifest")
            .await?;
        let claimed = content_digest(&response);
        let body = read_body(response, max, "manifest").await?;
        let digest = match reference.digest() {
            Some(pinned) => {
                verify(&body, pinned, "manifest")?;
                pinned.to_owned()
            }
            None => {
                let actual = sha256_digest(&body);
                if claimed
                    .is_some_and(|claimed| claimed.starts_with("sha256:") && claimed != actual)
                {
                    return Err("the image's manifest does not match its digest".to_owned());
                }
                actual
            }
        };
        #[derive(serde::Deserialize)]
        struct Versioned {
            #[serde(rename = "schemaVersion")]
            schema_version: Option<u64>,
        }
        let versioned: Versioned = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "the manifest is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if versioned.schema_version != Some(2) {
            return Err("the manifest is not schema version 2".to_owned());
        }
        let manifest = serde_json::from_slice(&body)
            .map_err(|_| "the manifest is neither an image manifest nor an index".to_owned())?;
        Ok((manifest, digest))
    }

    /// A blob, refused when it claims or turns out to be larger than `max`
    /// bytes (the descriptor's claim is checked before any request).
    pub(crate) async fn blob(
        &self,
        reference: &Reference,
        login: Option<&Login>,
        descriptor: &OciDescriptor,
        max: u64,
        what: &str,
    ) -> Result<Vec<u8>, String> {
        if u64::try_from(descriptor.size).map_or(true, |size| size > max) {
            return Err(too_large(what, max));
        }
        let digest = checked_digest(&descriptor.digest, what)?;
        let url = self.url(reference, &format!("blobs/{digest}"));
        let response = self.send(reference, login, Method::GET, &url, what).await?;
        let body = read_body(response, max, what).await?;
        verify(&body, digest, what)?;
        Ok(body)
    }

    fn url(&self, reference: &Reference, tail: &str) -> String {
        let registry = reference.resolve_registry();
        let scheme = if self.is_plain(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}/v2/{}/{tail}", reference.repository())
    }

    fn is_plain(&self, registry: &str) -> bool {
        self.plain_http.iter().any(|plain| plain == registry)
    }

    /// One request, authenticated as the registry asks: a cached token is
    /// tried first; a 401 gets one new token (or basic auth) and one retry.
    async fn send(
        &self,
        reference: &Reference,
        login: Option<&Login>,
        method: Method,
        url: &str,
        what: &str,
    ) -> Result<Response, String> {
        let key = (
            reference.resolve_registry().to_owned(),
            reference.repository().to_owned(),
            login.map(Login::fingerprint),
        );
        let cached = self.cached_auth(&key);
        let response = self
            .request(
                method.clone(),
                url,
                cached.as_ref(),
                self.login(&key.0, login),
            )
            .send()
            .await
            .map_err(|e| request_error(what, &e))?;
        let response = if response.status() == StatusCode::UNAUTHORIZED {
            match self.authenticate(reference, login, &key, &response).await? {
                Some(auth) => self
                    .request(method, url, Some(&auth), self.login(&key.0, login))
                    .send()
                    .await
                    .map_err(|e| request_error(what, &e))?,
                None => response,
            }
        } else {
            response
        };
        check_status(response, what)
    }

    /// The user and password for `registry`: the pod's login, else the
    /// configured credentials.
    fn login<'a>(&'a self, registry: &str, login: Option<&'a Login>) -> Option<(&'a str, &'a str)> {
        match login {
            Some(login) => Some((login.user.as_str(), login.password.as_str())),
            None => self.credentials.for_registry(registry),
        }
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        auth: Option<&Auth>,
        login: Option<(&str, &str)>,
    ) -> RequestBuilder {
        let request = self
            .http
            .request(method, url)
            .header(ACCEPT, MANIFEST_TYPES);
        match (auth, login) {
            (Some(Auth::Bearer(token)), _) => {
                request.header(AUTHORIZATION, format!("Bearer {token}"))
            }
            (Some(Auth::Basic), Some((user, password))) => request.basic_auth(user, Some(password)),
            _ => request,
        }
    }

    fn cached_auth(&self, key: &AuthKey) -> Option<Auth> {
        let cache = self.auth.lock().ok()?;
        let (auth, until) = cache.get(key)?;
        (Instant::now() < *until).then(|| auth.clone())
    }

    fn remember(&self, key: &AuthKey, auth: Auth, ttl: Duration) {
        if let Ok(mut cache) = self.auth.lock() {
            cache.insert(key.clone(), (auth, Instant::now() + ttl));
        }
    }

    /// What a 401's challenge asks for, if it can be given.
    async fn authenticate(
        &self,
        reference: &Reference,
        login: Option<&Login>,
        key: &AuthKey,
        response: &Response,
    ) -> Result<Option<Auth>, String> {
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_challenge)
        else {
            return Ok(None);
        };
        match challenge {
            Challenge::Basic => {
                if self.login(&key.0, login).is_none() {
                    return Ok(None);
                }
                self.remember(key, Auth::Basic, MAX_TOKEN_TTL);
                Ok(Some(Auth::Basic))
            }
            Challenge::Bearer { realm, service } => {
                let (token, ttl) = self
                    .token(reference, login, &realm, service.as_deref())
                    .await?;
                let auth = Auth::Bearer(token);
                self.remember(key, auth.clone(), ttl);
                Ok(Some(auth))
            }
        }
    }

    /// A pull token from the registry's token service (its realm), with the
    /// registry's credentials when there are some.
    async fn token(
        &self,
        reference: &Reference,
        login: Option<&Login>,
        realm: &str,
        service: Option<&str>,
    ) -> Result<(String, Duration), String> {
        let registry = reference.resolve_registry();
        let mut url = Url::parse(realm)
            .map_err(|_| "token: the registry's token realm is not a URL".to_owned())?;
        match url.scheme() {
            "https" => {}
            "http" if self.is_plain(registry) => {}
            _ => return Err("token: the registry's token realm is not https".to_owned()),
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair(
                "scope",
                &format!("repository:{}:pull", reference.repository()),
            );
        }
        let mut request = self.http.get(url);
        if let Some((user, password)) = self.login(registry, login) {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| request_error("token", &e))?;
        let response = check_status(response, "token")?;
        let body = read_body(response, MAX_TOKEN_BYTES, "token answer").await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| "token: the answer is not a token (JSON)".to_owned())?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|token| !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| "token: the answer holds no usable token".to_owned())?;
        let ttl = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_TTL, Duration::from_secs)
            .min(MAX_TOKEN_TTL);
        Ok((token, ttl))
    }
}

/// Whether a redirect from `from` to `to` is followed: never to a scheme
/// weaker than the first request's; to the same host and port always; to
/// another host only over https, to a host in `hosts`.
pub(crate) fn may_follow(from: &Url, to: &Url, hosts: &[String]) -> bool {
    let scheme_ok = match to.scheme() {
        "https" => true,
        "http" => from.scheme() == "http",
        _ => false,
    };
    if !scheme_ok {
        return false;
    }
    let same = from.host_str() == to.host_str()
        && from.port_or_known_default() == to.port_or_known_default();
    same || (to.scheme() == "https" && to.host_str().is_some_and(|host| host_allowed(host, hosts)))
}

/// `host` is one of `patterns`, each a host name or `*.` and a domain.
pub(crate) fn host_allowed(host: &str, patterns: &[String]) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host.eq_ignore_ascii_case(pattern),
        })
}

#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A `WWW-Authenticate` challenge: `Basic …`, or `Bearer` with its
/// `realm` and `service` parameters (quoted or not).
fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    for (name, value) in parameters(rest) {
        if name.eq_ignore_ascii_case("realm") {
            realm = Some(value);
        } else if name.eq_ignore_ascii_case("service") {
            service = Some(value);
        }
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
    })
}

/// `name=value` and `name="quoted, \"value\""` pairs, comma separated.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') {
            return pairs;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        }
        pairs.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

/// The body, read chunk by chunk and cut at `max` bytes.
async fn read_body(mut response: Response, max: u64, what: &str) -> Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|length| length > max) {
        return Err(too_large(what, max));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| request_error(&format!("reading the image's {what}"), &e))?
    {
        if bytes.len() as u64 + chunk.len() as u64 > max {
            return Err(too_large(what, max));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn too_large(what: &str, max: u64) -> String {
    format!("the image's {what} is larger than {max} bytes")
}

/// The response if it succeeded; else a short reason, never its URL.
fn check_status(response: Response, what: &str) -> Result<Response, String> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let kind = match status.as_u16() {
        401 | 403 => "access refused (401/403)".to_owned(),
        404 => "not found (404)".to_owned(),
        429 => "rate limited (429)".to_owned(),
        300..=399 => {
            let host = response
                .headers()
                .get(LOCATION)
                .and_then(|location| location.to_str().ok())
                .and_then(|location| response.url().join(location).ok())
                .map(|to| {
                    let host = to.host_str().unwrap_or("").to_owned();
                    match to.port() {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    }
                })
                .unwrap_or_default();
            format!(
                "redirected to `{}`, which is not followed (not the registry's host, \
                 and not in images.redirect_hosts)",
                clip(&host)
            )
        }
        code => format!("registry answered HTTP {code}"),
    };
    Err(format!("{what}: {kind}"))
}

fn request_error(what: &str, error: &registry_http::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_redirect() {
        "too many redirects"
    } else {
        "request failed"
    };
    format!("{what}: {kind}")
}

/// The registry's `Docker-Content-Digest`, when it is a well-formed digest.
fn content_digest(response: &Response) -> Option<String> {
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|value| value.to_str().ok())
        .filter(|digest| checked_digest(digest, "").is_ok())
        .map(str::to_owned)
}

/// `digest` when it is `sha256:` or `sha512:` and lower-case hex of the right
/// length: nothing else goes into a URL.
fn checked_digest<'a>(digest: &'a str, what: &str) -> Result<&'a str, String> {
    let hex_length = match digest.split_once(':') {
        Some(("sha256", hex)) => (hex.len() == 64).then_some(hex),
        Some(("sha512", hex)) => (hex.len() == 128).then_some(hex),
        _ => None,
    };
    match hex_length {
        Some(hex) if hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(digest),
        _ => Err(format!(
            "the image's {what} digest `{}` is not a sha256 or sha512 digest",
            clip(digest)
        )),
    }
}

fn verify(body: &[u8], digest: &str, what: &str) -> Result<(), String> {
    let actual = if digest.starts_with("sha512:") {
        format!("sha512:{}", hex(&sha2::Sha512::digest(body)))
    } else {
        sha256_digest(body)
    };
    if actual == digest {
        Ok(())
    } else {
        Err(format!("the image's {what} does not match its digest"))
    }
}

fn sha256_digest(body: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(body)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn redirects_stay_on_the_registry_or_go_to_listed_hosts_over_https() {
        let hosts = vec!["storage.example".to_owned(), "*.cdn.example".to_owned()];
        let blob = url("https://reg.example/v2/app/blobs/sha256:ab");
        let manifest = url("https://reg.example/v2/app/manifests/1");
        let cases = [
            (
                &manifest,
                "https://reg.example/v2/app/manifests/sha256:ab",
                true,
            ),
            (&manifest, "https://reg.example:443/elsewhere", true),
            (&manifest, "https://reg.example:8443/v2/", false),
            (&manifest, "https://storage.example/x", true),
            (&manifest, "https://other.example/v2/app/manifests/1", false),
            (&manifest, "http://reg.example/v2/app/manifests/1", false),
            (&blob, "https://storage.example/x?sig=1", true),
            (&blob, "https://a.cdn.example/x", true),
            (&blob, "https://a.b.cdn.example/x", true),
            (&blob, "https://cdn.example/x", false),
            (&blob, "https://evilcdn.example/x", false),
            (&blob, "https://storage.example.evil/x", false),
            (&blob, "http://storage.example/x", false),
            (&blob, "https://169.254.169.254/latest/meta-data", false),
            (&blob, "file:///etc/passwd", false),
            (
                &url("http://127.0.0.1:5000/v2/app/blobs/sha256:ab"),
                "https://127.0.0.1:5001/x",
                false,
            ),
            (
                &url("http://127.0.0.1:5000/v2/app/blobs/sha256:ab"),
                "http://127.0.0.1:5000/y",
                true,
            ),
        ];
        for (from, to, follows) in cases {
            assert_eq!(may_follow(from, &url(to), &hosts), follows, "{from} → {to}");
        }
        assert!(may_follow(
            &url("http://127.0.0.1:5000/v2/app/blobs/sha256:ab"),
            &url("https://127.0.0.1:5001/x"),
            &["127.0.0.1".to_owned()]
        ));
    }

    #[test]
    fn challenges_are_parsed_quoted_or_not() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".to_owned(),
                service: Some("registry.example".to_owned()),
            })
        );
        assert_eq!(
            parse_challenge("bearer service=reg, realm=https://auth.example/t"),
            Some(Challenge::Bearer {
                realm: "https://auth.example/t".to_owned(),
                service: Some("reg".to_owned()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://a.example/\"x\"""#),
            Some(Challenge::Bearer {
                realm: r#"https://a.example/"x""#.to_owned(),
                service: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        for unusable in [
            "",
            "Bearer",
            "Bearer service=x",
            "Negotiate abc",
            "Bearer realm",
        ] {
            assert_eq!(parse_challenge(unusable), None, "{unusable}");
        }
        // An unterminated quote ends the value; no loop, no panic.
        assert!(matches!(
            parse_challenge(r#"Bearer realm="https://a.example"#),
            Some(Challenge::Bearer { .. })
        ));
    }

    #[test]
    fn only_well_formed_digests_go_into_urls_and_bodies_must_match_them() {
        let body = b"{}";
        let good = sha256_digest(body);
        assert!(checked_digest(&good, "config").is_ok());
        let sha512 = format!("sha512:{}", hex(&sha2::Sha512::digest(body)));
        assert!(checked_digest(&sha512, "config").is_ok());
        assert!(verify(body, &sha512, "config").is_ok());
        for bad in [
            "sha256:../../../v2/_catalog",
            "sha256:ABCDEF",
            &good.to_uppercase(),
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256",
            &format!("{good}?x=1"),
        ] {
            let error = checked_digest(bad, "config").unwrap_err();
            assert!(error.contains("not a sha256 or sha512 digest"), "{error}");
        }
        assert!(verify(body, &good, "config").is_ok());
        assert_eq!(
            verify(b"{ }", &good, "config").unwrap_err(),
            "the image's config does not match its digest"
        );
    }
}
