//! Finding `/etc/passwd` in one image layer (a tar, plain or gzip), with a
//! bound on the bytes unpacked. Pure: the layer's bytes in, what it says
//! about `/etc/passwd` out.

use std::io::Read;

/// What one layer says about `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswdInLayer {
    /// The layer carries the file: its text (lossy UTF-8).
    Found(String),
    /// The layer deletes it (an OCI whiteout, or an opaque `/etc`): lower
    /// layers do not count.
    Deleted,
    /// The layer does not touch it.
    Absent,
}

/// Why a layer could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayerError {
    #[error("layer media type `{0}` is not supported (only tar and tar+gzip)")]
    MediaType(String),
    #[error("layer unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("layer is not a readable tar: {0}")]
    Corrupt(String),
}

/// The largest `/etc/passwd` read (real ones are a few KiB).
const MAX_PASSWD_BYTES: u64 = 1 << 20;

/// Whether a layer of this media type is gzip-compressed (`None`: unsupported).
pub fn is_gzip(media_type: &str) -> Option<bool> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(false),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(true),
        _ => None,
    }
}

/// Looks for `/etc/passwd` in a layer, unpacking at most `max_unpacked` bytes.
pub fn find_passwd(
    bytes: &[u8],
    media_type: &str,
    max_unpacked: u64,
) -> Result<PasswdInLayer, LayerError> {
    let gzip = is_gzip(media_type).ok_or_else(|| LayerError::MediaType(media_type.to_owned()))?;
    let raw: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    // One byte more than allowed, so reaching it tells "too large" apart.
    let limited = raw.take(max_unpacked.saturating_add(1));
    let mut counter = Counted {
        inner: limited,
        read: 0,
    };
    let result = scan(&mut counter);
    if counter.read > max_unpacked {
        return Err(LayerError::TooLarge(max_unpacked));
    }
    result
}

fn scan(reader: &mut Counted<impl Read>) -> Result<PasswdInLayer, LayerError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| LayerError::Corrupt(e.to_string()))?;
    let mut verdict = PasswdInLayer::Absent;
    for entry in entries {
        let mut entry = entry.map_err(|e| LayerError::Corrupt(e.to_string()))?;
        let path = entry.path_bytes().into_owned();
        let path = normalize(&path);
        match path.as_slice() {
            b"etc/passwd" => {
                let kind = entry.header().entry_type();
                if !kind.is_file() {
                    // A link or anything else: the kubelet's view of it cannot
                    // be known from this layer alone.
                    return Err(LayerError::Corrupt(
                        "/etc/passwd is not a regular file".to_owned(),
                    ));
                }
                let mut text = Vec::new();
                (&mut entry)
                    .take(MAX_PASSWD_BYTES)
                    .read_to_end(&mut text)
                    .map_err(|e| LayerError::Corrupt(e.to_string()))?;
                verdict = PasswdInLayer::Found(String::from_utf8_lossy(&text).into_owned());
            }
            b"etc/.wh.passwd" | b"etc/.wh..wh..opq" | b".wh.etc"
                if verdict == PasswdInLayer::Absent =>
            {
                verdict = PasswdInLayer::Deleted;
            }
            _ => {}
        }
    }
    Ok(verdict)
}

/// `./etc/passwd`, `/etc/passwd` and `etc/passwd` are one path.
fn normalize(path: &[u8]) -> Vec<u8> {
    let mut path = path;
    loop {
        if let Some(rest) = path.strip_prefix(b"./") {
            path = rest;
        } else if let Some(rest) = path.strip_prefix(b"/") {
            path = rest;
        } else {
            break;
        }
    }
    path.to_vec()
}

struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A tar with these (path, content) files; `None` content: a symlink.
    pub(crate) fn tar_of(files: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            match content {
                Some(data) => {
                    header.set_size(data.len() as u64);
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder.append_data(&mut header, path, *data).unwrap();
                }
                None => {
                    header.set_size(0);
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_cksum();
                    builder
                        .append_link(&mut header, path, "/elsewhere")
                        .unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    #[test]
    fn finds_deletes_or_misses_passwd() {
        let passwd: &[u8] = b"app:x:10001:10001::/:/bin/sh\n";
        type Files<'a> = Vec<(&'a str, Option<&'a [u8]>)>;
        let cases: Vec<(Files<'_>, PasswdInLayer)> = vec![
            (
                vec![("etc/passwd", Some(passwd))],
                PasswdInLayer::Found(String::from_utf8_lossy(passwd).into()),
            ),
            (
                vec![("./etc/passwd", Some(passwd))],
                PasswdInLayer::Found(String::from_utf8_lossy(passwd).into()),
            ),
            (vec![("etc/.wh.passwd", Some(b""))], PasswdInLayer::Deleted),
            (
                vec![("etc/.wh..wh..opq", Some(b""))],
                PasswdInLayer::Deleted,
            ),
            (vec![("etc/group", Some(b"x"))], PasswdInLayer::Absent),
            (
                vec![("etc/passwd.bak", Some(passwd))],
                PasswdInLayer::Absent,
            ),
        ];
        for (files, expected) in cases {
            let tar = tar_of(&files);
            assert_eq!(
                find_passwd(&tar, TAR, 1 << 20),
                Ok(expected.clone()),
                "{files:?}"
            );
            assert_eq!(
                find_passwd(&gzip(&tar), GZ, 1 << 20),
                Ok(expected),
                "{files:?} gzip"
            );
        }
    }

    #[test]
    fn bad_layers_are_errors_not_panics() {
        let big = vec![b'x'; 10_000];
        let tar = tar_of(&[
            ("data", Some(&big)),
            ("etc/passwd", Some(b"a:x:1:1::/:/\n")),
        ]);
        assert_eq!(
            find_passwd(&tar, TAR, 4096),
            Err(LayerError::TooLarge(4096))
        );
        // A gzip bomb is bounded by what it unpacks to, not what it weighs.
        let zeros = vec![0u8; 5 << 20];
        let bomb = gzip(&tar_of(&[
            ("zeros", Some(&zeros)),
            ("etc/passwd", Some(b"a:x:1:1::/:/\n")),
        ]));
        assert!(bomb.len() < 64 << 10);
        assert_eq!(
            find_passwd(&bomb, GZ, 1 << 20),
            Err(LayerError::TooLarge(1 << 20))
        );
        assert!(matches!(
            find_passwd(b"not a tar at all, not at all", GZ, 1 << 20),
            Err(LayerError::Corrupt(_))
        ));
        assert!(matches!(
            find_passwd(&tar, "application/vnd.oci.image.layer.v1.tar+zstd", 1 << 20),
            Err(LayerError::MediaType(_))
        ));
        let link = tar_of(&[("etc/passwd", None)]);
        assert!(
            matches!(find_passwd(&link, TAR, 1 << 20), Err(LayerError::Corrupt(why)) if why.contains("regular"))
        );
    }
}
