//! Image references (`[registry[:port]/]repository[:tag][@digest]`), read
//! by hand in one pass.
//!
//! oci-client's own parser matches a regular expression whose tag part is a
//! Unicode `\w` repeated up to 128 times. Compiled on the first lookup, it
//! kept about 6 MiB for the life of the process and took about 17 MiB while
//! it compiled, which the allocator then kept: most of the memory a server
//! with `images.resolve` on held over one with it off (BENCHMARKS.md, "Where
//! the memory with lookups on went"). This parser gives the same answers as
//! that one (a property test compares them), except that a tag is ASCII
//! word characters, as in the distribution project's grammar, where `\w` is
//! ASCII.

use oci_client::{ParseError, Reference};

/// The longest repository name (after `library/` is added for Docker Hub).
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// The longest tag.
const TAG_LENGTH_MAX: usize = 128;
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";

/// Parses `text` the way a container runtime names an image: no registry
/// means Docker Hub, a one-part Docker Hub name gets `library/`, and neither
/// tag nor digest means `latest`.
pub(crate) fn parse(text: &str) -> Result<Reference, ParseError> {
    if text.is_empty() {
        return Err(ParseError::NameEmpty);
    }
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    if digest.is_some_and(|digest| !is_digest(digest)) {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    // A tag follows the last ':' of the last path segment; a ':' before the
    // last '/' belongs to the registry's port.
    let last_segment = rest.rfind('/').map_or(0, |slash| slash + 1);
    let (name, tag) = match rest[last_segment..].rfind(':') {
        Some(colon) => {
            let colon = last_segment + colon;
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        None => (rest, None),
    };
    if !is_name(name) || tag.is_some_and(|tag| !is_tag(tag)) {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    let (registry, repository) = split_registry(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ParseError::NameTooLong);
    }
    if let Some(digest) = digest {
        check_digest_length(digest)?;
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// `(registry/)?component(/component)*`. The registry, if any, is the part
/// before the first '/'.
fn is_name(name: &str) -> bool {
    if name.split('/').all(is_path_component) {
        return true;
    }
    name.split_once('/').is_some_and(|(registry, path)| {
        is_registry(registry) && path.split('/').all(is_path_component)
    })
}

/// `[a-z0-9]+` runs joined by one '.', one '_', "__" or any number of '-'.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &bytes[start..i];
        let allowed =
            matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|b| *b == b'-');
        if !allowed {
            return false;
        }
    }
    true
}

/// Host labels (`[a-zA-Z0-9]`, with '-' inside) joined by '.', then an
/// optional numeric port.
fn is_registry(registry: &str) -> bool {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let port_ok =
        port.is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    port_ok && host.split('.').all(is_host_label)
}

fn is_host_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// A word character, then up to 127 word characters, '.' or '-'.
fn is_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    bytes.first().is_some_and(word)
        && bytes.len() <= TAG_LENGTH_MAX
        && bytes.iter().all(|b| word(b) || *b == b'.' || *b == b'-')
}

/// `algorithm:hex`: the algorithm is letter-led alphanumeric parts joined by
/// one of `-_+.`, the hex part at least 32 digits.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let part_ok = |part: &str| {
        let bytes = part.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphabetic)
            && bytes.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(part_ok)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_digest_length(digest: &str) -> Result<(), ParseError> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or(ParseError::DigestInvalidFormat)?;
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ParseError::DigestUnsupported),
    };
    if hex.len() == expected {
        Ok(())
    } else {
        Err(ParseError::DigestInvalidLength)
    }
}

/// Docker's rule: the first part is a registry only if it has a '.' or a
/// ':', or is `localhost`.
fn split_registry(name: &str) -> (String, String) {
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    if registry == DOCKER_HUB_LEGACY {
        registry = DOCKER_HUB.to_owned();
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    (registry, repository)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// Text, then the registry, repository, tag and digest read from it.
    type Case<'a> = (String, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

    #[test]
    fn reads_every_form_of_reference() {
        let digest = format!("sha256:{HEX64}");
        let cases: Vec<Case> = vec![
            (
                "busybox".into(),
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "nginx:1.27".into(),
                "docker.io",
                "library/nginx",
                Some("1.27"),
                None,
            ),
            (
                "index.docker.io/team/app:v1".into(),
                "docker.io",
                "team/app",
                Some("v1"),
                None,
            ),
            (
                "test.com:5000".into(),
                "docker.io",
                "library/test.com",
                Some("5000"),
                None,
            ),
            (
                "localhost/app".into(),
                "localhost",
                "app",
                Some("latest"),
                None,
            ),
            (
                "127.0.0.1:5000/kh/web:1".into(),
                "127.0.0.1:5000",
                "kh/web",
                Some("1"),
                None,
            ),
            (
                "Reg.Example:443/a/b__c/d-e:Tag_1.x".into(),
                "Reg.Example:443",
                "a/b__c/d-e",
                Some("Tag_1.x"),
                None,
            ),
            (
                format!("ghcr.io/org/app@{digest}"),
                "ghcr.io",
                "org/app",
                None,
                Some(&digest),
            ),
            (
                format!("ghcr.io/org/app:v2@{digest}"),
                "ghcr.io",
                "org/app",
                Some("v2"),
                Some(&digest),
            ),
        ];
        for (text, registry, repository, tag, digest) in &cases {
            let reference = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(reference.registry(), *registry, "{text}");
            assert_eq!(reference.repository(), *repository, "{text}");
            assert_eq!(reference.tag(), *tag, "{text}");
            assert_eq!(reference.digest(), *digest, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        let long = format!("team/{}", "a".repeat(251));
        let cases = [
            ("", ParseError::NameEmpty),
            (":tag", ParseError::ReferenceInvalidFormat),
            ("team/Upper", ParseError::ReferenceInvalidFormat),
            ("app:", ParseError::ReferenceInvalidFormat),
            ("app:-tag", ParseError::ReferenceInvalidFormat),
            ("a..b", ParseError::ReferenceInvalidFormat),
            ("a___b", ParseError::ReferenceInvalidFormat),
            ("app@sha256:abc", ParseError::ReferenceInvalidFormat),
            ("reg.io:/app", ParseError::ReferenceInvalidFormat),
            ("app:é", ParseError::ReferenceInvalidFormat),
            (long.as_str(), ParseError::NameTooLong),
            (
                "app@sha256:ffffffffffffffffffffffffffffffffff",
                ParseError::DigestInvalidLength,
            ),
            (
                "app@md5:ffffffffffffffffffffffffffffffff",
                ParseError::DigestUnsupported,
            ),
        ];
        for (text, error) in cases {
            assert_eq!(parse(text).err(), Some(error), "{text:?}");
        }
        assert!(parse(&format!("app:{}", "t".repeat(128))).is_ok());
        assert!(parse(&format!("app:{}", "t".repeat(129))).is_err());
    }

    /// The same answer as oci-client's parser, field for field and error for
    /// error, on strings made of the characters the grammar cares about.
    fn same_as_oci_client(text: &str) {
        let ours = parse(text);
        let theirs: Result<Reference, ParseError> = text.parse();
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    (a.registry(), a.repository(), a.tag(), a.digest()),
                    (b.registry(), b.repository(), b.tag(), b.digest()),
                    "{text:?}"
                );
            }
            _ => assert_eq!(ours.err(), theirs.err(), "{text:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn agrees_with_oci_client_on_arbitrary_strings(text in "[a-cA-B0-9._:/@-]{0,24}") {
            same_as_oci_client(&text);
        }

        #[test]
        fn agrees_with_oci_client_on_reference_shaped_strings(
            registry in prop::option::of("[a-zA-Z0-9][a-zA-Z0-9.-]{0,10}(:[0-9]{1,5})?"),
            path in "[a-z0-9][a-z0-9._-]{0,8}(/[a-z0-9][a-z0-9._-]{0,8}){0,3}",
            tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,130}"),
            digest in prop::option::of(prop_oneof![
                "sha(256|384|512|1):[0-9a-f]{30,130}",
                "[a-z][a-z0-9]{0,4}([+._-][a-z][a-z0-9]{0,3})?:[0-9a-fA-F]{32,66}",
            ]),
        ) {
            let mut text = registry.map(|r| format!("{r}/")).unwrap_or_default();
            text.push_str(&path);
            if let Some(tag) = tag {
                text.push(':');
                text.push_str(&tag);
            }
            if let Some(digest) = digest {
                text.push('@');
                text.push_str(&digest);
            }
            same_as_oci_client(&text);
        }
    }

    #[test]
    fn cost_is_linear_in_the_length() {
        // A long hostile string is refused in one pass (no backtracking).
        let text = format!("{}!", "a-".repeat(200_000));
        assert_eq!(parse(&text).err(), Some(ParseError::ReferenceInvalidFormat));
    }
}
