//! Reading inputs (files, directories, standard input) and splitting them into
//! documents. Everything is read and parsed before anything is printed, so a
//! bad document anywhere means no output at all.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::PreviewError;

/// Largest input accepted per file (and for standard input). Rendered
/// manifests of a whole cluster are a few MiB; this only stops a wrong path
/// (a disk image, /dev/zero) from eating the machine.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// Deepest directory nesting followed when reading a directory.
const MAX_DEPTH: usize = 64;

/// Name used for standard input in messages and output.
pub const STDIN_NAME: &str = "<stdin>";

/// One input after reading: its display name and text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
    /// Parse as a JSON stream rather than YAML regardless of content.
    pub json: bool,
}

/// Where an object came from, for messages and machine-readable output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub file: String,
    /// 1-based, counting every document of the file (empty ones included),
    /// so it matches what a person counts between `---` markers.
    pub document: usize,
    /// 1-based index in the `items` of a List document.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// A non-empty document of an input.
#[derive(Debug, Clone)]
pub struct Document {
    pub location: Location,
    pub value: Value,
}

/// Reads every input in order. `-` is standard input; directories are walked
/// recursively (sorted, hidden entries skipped) for `*.yaml`, `*.yml` and
/// `*.json`; a file named explicitly is read whatever its extension.
pub fn read_inputs(inputs: &[PathBuf], stdin: &mut dyn Read) -> Result<Vec<Source>, PreviewError> {
    let mut sources = Vec::new();
    let mut stdin_used = false;
    for input in inputs {
        if input.as_os_str() == "-" {
            // A second `-` would read nothing; reading it once is the only
            // meaningful interpretation.
            if !stdin_used {
                stdin_used = true;
                let text = read_bounded(stdin, STDIN_NAME, 0)?;
                sources.push(Source {
                    name: STDIN_NAME.to_owned(),
                    text,
                    json: false,
                });
            }
            continue;
        }
        let metadata = std::fs::metadata(input).map_err(|source| PreviewError::Read {
            file: input.display().to_string(),
            source,
        })?;
        if metadata.is_dir() {
            let mut files = Vec::new();
            let mut visited = BTreeSet::new();
            collect_dir(input, 0, &mut visited, &mut files)?;
            for file in files {
                sources.push(read_file(&file)?);
            }
        } else {
            sources.push(read_file(input)?);
        }
    }
    Ok(sources)
}

fn is_manifest(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["yaml", "yml", "json"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

fn is_json_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

fn collect_dir(
    dir: &Path,
    depth: usize,
    visited: &mut BTreeSet<PathBuf>,
    files: &mut Vec<PathBuf>,
) -> Result<(), PreviewError> {
    let dir_error = |source| PreviewError::Read {
        file: dir.display().to_string(),
        source,
    };
    if depth > MAX_DEPTH {
        return Err(PreviewError::TooDeep {
            dir: dir.display().to_string(),
            max: MAX_DEPTH,
        });
    }
    // Symlinked directories are followed, but each real directory once, so a
    // link cycle cannot make the walk endless.
    let real = std::fs::canonicalize(dir).map_err(dir_error)?;
    if !visited.insert(real) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(dir_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(dir_error)?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        let metadata = std::fs::metadata(&path).map_err(|source| PreviewError::Read {
            file: path.display().to_string(),
            source,
        })?;
        if metadata.is_dir() {
            collect_dir(&path, depth + 1, visited, files)?;
        } else if metadata.is_file() && is_manifest(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Source, PreviewError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| PreviewError::Read {
        file: name.clone(),
        source,
    })?;
    // Sized from the file's length: a buffer grown by doubling would leave
    // up to twice the input resident for the whole run.
    let size = file
        .metadata()
        .map_or(0, |m| m.len())
        .min(MAX_INPUT_BYTES + 1);
    let text = read_bounded(&mut std::io::BufReader::new(file), &name, size)?;
    Ok(Source {
        json: is_json_path(path),
        name,
        text,
    })
}

fn read_bounded(reader: &mut dyn Read, name: &str, size: u64) -> Result<String, PreviewError> {
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1));
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PreviewError::Read {
            file: name.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(PreviewError::TooLarge {
            file: name.to_owned(),
            max: MAX_INPUT_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| PreviewError::NotUtf8 {
        file: name.to_owned(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    // Editors on Windows like to start files with a byte-order mark.
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// Splits a source into its non-empty documents: a JSON stream (one or
/// several concatenated values) when the source is `.json` or starts with
/// `{`, multi-document YAML otherwise.
pub fn parse(source: &Source) -> Result<Vec<Document>, PreviewError> {
    if is_json(source) {
        parse_json(source)
    } else {
        parse_yaml(source)
    }
}

pub(crate) fn location(source: &Source, document: usize) -> Location {
    Location {
        file: source.name.clone(),
        document,
        item: None,
    }
}

fn parse_json(source: &Source) -> Result<Vec<Document>, PreviewError> {
    json_documents(source).collect()
}

/// The documents of a JSON stream (one or several concatenated values), one
/// at a time.
pub(crate) fn json_documents(
    source: &Source,
) -> impl Iterator<Item = Result<Document, PreviewError>> + '_ {
    let stream = serde_json::Deserializer::from_str(&source.text).into_iter::<Value>();
    stream.enumerate().map(|(index, value)| {
        let location = location(source, index + 1);
        match value {
            Ok(value) => Ok(Document { location, value }),
            Err(e) => Err(PreviewError::Parse {
                location,
                format: "JSON",
                message: e.to_string(),
            }),
        }
    })
}

fn parse_yaml(source: &Source) -> Result<Vec<Document>, PreviewError> {
    if let Some(documents) = parse_yaml_parallel(source) {
        return Ok(documents);
    }
    parse_yaml_text(&source.text, &source.name).map(|(documents, _)| documents)
}

/// Parses `text` as a YAML stream; returns its non-empty documents and the
/// number of documents counted (empty ones included).
pub(crate) fn parse_yaml_text(
    text: &str,
    name: &str,
) -> Result<(Vec<Document>, usize), PreviewError> {
    let mut documents = Vec::new();
    let count = each_yaml_document(text, name, &mut |document| documents.push(document))?;
    Ok((documents, count))
}

/// Calls `each` with every non-empty document of the YAML stream `text`,
/// one at a time, and returns the number of documents (empty ones included).
pub(crate) fn each_yaml_document(
    text: &str,
    name: &str,
    each: &mut dyn FnMut(Document),
) -> Result<usize, PreviewError> {
    // Merge keys (`<<: *base`) need the YAML value model; everything else
    // goes straight to JSON values, which is much faster on big inputs.
    let has_merge_keys = text.contains("<<");
    let mut count = 0;
    for (index, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        count = index + 1;
        let location = Location {
            file: name.to_owned(),
            document: index + 1,
            item: None,
        };
        let parse_error = |e: serde_norway::Error| PreviewError::Parse {
            location: location.clone(),
            format: "YAML",
            message: e.to_string(),
        };
        let value = if has_merge_keys {
            let mut yaml = serde_norway::Value::deserialize(de).map_err(parse_error)?;
            yaml.apply_merge().map_err(parse_error)?;
            yaml_to_json(yaml).map_err(|message| PreviewError::Parse {
                location: location.clone(),
                format: "YAML",
                message,
            })?
        } else {
            Value::deserialize(de).map_err(parse_error)?
        };
        if !value.is_null() {
            each(Document { location, value });
        }
    }
    Ok(count)
}

/// The error a serial parse of the whole source reports first (its document
/// number and line are those of the whole file), without keeping documents.
pub(crate) fn first_error(source: &Source) -> Option<PreviewError> {
    if is_json(source) {
        return json_documents(source).find_map(Result::err);
    }
    each_yaml_document(&source.text, &source.name, &mut drop).err()
}

/// Whether `source` is read as a JSON stream.
pub(crate) fn is_json(source: &Source) -> bool {
    source.json || source.text.trim_start().starts_with('{')
}

/// Target size of the pieces a YAML source is cut into: each is parsed,
/// hardened and rendered on its own, so memory follows the piece size, not
/// the input size.
pub(crate) const PIECE_BYTES: usize = 256 * 1024;

/// `text` cut at `---` lines into pieces of about `piece_bytes` (`0`: at
/// every marker, one document per piece). The pieces parse to exactly the
/// documents of the whole (see [`parse_yaml_parallel`]); where that might
/// not hold (directives, a first piece of only comments), the whole text is
/// one piece.
pub(crate) fn yaml_pieces(text: &str, piece_bytes: usize) -> Vec<&str> {
    if text.starts_with('%') || text.contains("\n%") {
        return vec![text];
    }
    let mut bounds = vec![0];
    let mut search_from = 0;
    while let Some(found) = text[search_from..].find("\n---") {
        let at = search_from + found + 1;
        search_from = at;
        let rest = &text.as_bytes()[at..];
        let marker = matches!(rest.get(3), None | Some(b'\n' | b'\r' | b' ' | b'\t'));
        let last = bounds.last().copied().unwrap_or(0);
        if marker && at - last >= piece_bytes.max(1) {
            bounds.push(at);
        }
    }
    bounds.push(text.len());
    if bounds.len() > 2 && !has_content(&text[..bounds[1]]) {
        // Merge a comment-only first piece into the next one.
        bounds.remove(1);
    }
    bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

fn has_content(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#')
    })
}

/// Below this size one thread parses faster than several start.
const PARALLEL_MIN_BYTES: usize = 1024 * 1024;

/// Parses a large stream on several threads, split at `---` lines.
///
/// A line starting with `---` at column 0 always starts a new document (YAML
/// forbids it inside any scalar), and anchors do not cross documents, so the
/// pieces ([`yaml_pieces`], which also handles directives and a first piece
/// of only comments) parse to exactly the documents of the whole. `None` for
/// a text that stays one piece or when a piece fails: the caller then parses
/// serially, which also gives error messages their line numbers in the whole
/// file.
fn parse_yaml_parallel(source: &Source) -> Option<Vec<Document>> {
    let text = source.text.as_str();
    let threads = crate::threads::threads();
    if threads < 2 || text.len() < PARALLEL_MIN_BYTES {
        return None;
    }
    // Directives make `yaml_pieces` keep the text whole: then one thread.
    let pieces = yaml_pieces(text, text.len() / threads);
    if pieces.len() < 2 {
        return None;
    }
    let results =
        crate::threads::parallel(&pieces, |piece| parse_yaml_text(piece, &source.name).ok());
    let mut documents = Vec::new();
    let mut offset = 0;
    for result in results {
        let (mut piece_documents, count) = result?;
        for document in &mut piece_documents {
            document.location.document += offset;
        }
        documents.append(&mut piece_documents);
        offset += count;
    }
    Some(documents)
}

fn yaml_to_json(yaml: serde_norway::Value) -> Result<Value, String> {
    use serde_norway::Value as Y;
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(&n).map_err(|e| e.to_string())?,
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut map = serde_json::Map::with_capacity(mapping.len());
            for (key, value) in mapping {
                let key = match key {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    other => {
                        return Err(format!(
                            "mapping keys must be scalars, found {}",
                            yaml_kind(&other)
                        ));
                    }
                };
                map.insert(key, yaml_to_json(value)?);
            }
            Value::Object(map)
        }
        Y::Tagged(tagged) => yaml_to_json(tagged.value)?,
    })
}

fn yaml_kind(value: &serde_norway::Value) -> &'static str {
    match value {
        serde_norway::Value::Sequence(_) => "a sequence",
        serde_norway::Value::Mapping(_) => "a mapping",
        serde_norway::Value::Null => "null",
        _ => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<Vec<Document>, PreviewError> {
        parse(&Source {
            name: "in.yaml".to_owned(),
            text: text.to_owned(),
            json: false,
        })
    }

    fn docs(text: &str) -> Vec<(usize, Value)> {
        yaml(text)
            .expect("parses")
            .into_iter()
            .map(|d| (d.location.document, d.value))
            .collect()
    }

    #[test]
    fn multi_document_yaml_counts_empty_documents() {
        let got =
            docs("---\n# only a comment\n---\nkind: A\n---\n\n---\nkind: B\n...\n---\nkind: C\n");
        let kinds: Vec<(usize, &str)> = got
            .iter()
            .map(|(n, v)| (*n, v["kind"].as_str().unwrap_or("?")))
            .collect();
        assert_eq!(kinds, vec![(2, "A"), (4, "B"), (5, "C")]);
    }

    #[test]
    fn empty_input_has_no_documents() {
        assert!(docs("").is_empty());
        assert!(docs("# nothing here\n").is_empty());
        assert!(docs("---\n---\n").is_empty());
    }

    #[test]
    fn anchors_and_merge_keys_are_resolved() {
        let got = docs(
            "kind: Pod\nmetadata:\n  labels: &l {app: web}\n  annotations:\n    <<: *l\n    extra: \"1\"\nspec:\n  x: *l\n",
        );
        assert_eq!(got[0].1["spec"]["x"], serde_json::json!({"app": "web"}));
        assert_eq!(
            got[0].1["metadata"]["annotations"],
            serde_json::json!({"app": "web", "extra": "1"})
        );
    }

    #[test]
    fn long_and_block_strings_survive() {
        let long = "x".repeat(10_000);
        let got = docs(&format!(
            "kind: ConfigMap\ndata:\n  long: {long}\n  script: |\n    #!/bin/sh\n    echo hi\n"
        ));
        assert_eq!(
            got[0].1["data"]["long"].as_str().map(str::len),
            Some(10_000)
        );
        assert_eq!(got[0].1["data"]["script"], "#!/bin/sh\necho hi\n");
    }

    #[test]
    fn yaml_error_names_document_line_and_column() {
        let Err(error) = yaml("kind: A\n---\nkind: B\nmetadata:\n  name: [unclosed\n") else {
            panic!("expected an error");
        };
        let message = error.to_string();
        assert!(
            message.starts_with("in.yaml: document 2: invalid YAML: "),
            "{message}"
        );
        assert!(message.contains("line 6 column 1"), "{message}");
    }

    /// The threaded parse gives exactly the serial parse's documents and
    /// numbers, also with empty documents, `...` markers, block scalars,
    /// anchors and a leading comment.
    #[test]
    fn parallel_parse_equals_serial_parse() {
        let mut text = String::from("# generated\n");
        for i in 0..4000 {
            match i % 5 {
                0 => text.push_str("---\n# only a comment\n"),
                1 => text.push_str(&format!(
                    "--- \nkind: ConfigMap\nmetadata: {{name: c{i}}}\ndata:\n  script: |\n    echo {i}\n    --not-a-marker\n...\n"
                )),
                2 => text.push_str(&format!(
                    "---\nkind: Pod\nmetadata:\n  name: p{i}\n  labels: &l {{app: x}}\nspec:\n  x: *l\n  containers: [{{name: a, image: b}}]\n"
                )),
                _ => text.push_str(&format!("---\nkind: Service\nmetadata: {{name: s{i}}}\n")),
            }
        }
        let text = text.repeat(5);
        assert!(text.len() > PARALLEL_MIN_BYTES, "{}", text.len());
        let source = Source {
            name: "big.yaml".to_owned(),
            text,
            json: false,
        };
        let serial = parse_yaml_text(&source.text, &source.name)
            .expect("serial")
            .0;
        let parallel = parse_yaml_parallel(&source);
        if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            let parallel = parallel.expect("parallel path taken");
            assert_eq!(parallel.len(), serial.len());
            for (p, s) in parallel.iter().zip(&serial) {
                assert_eq!(p.location, s.location);
                assert_eq!(p.value, s.value);
            }
        }
    }

    #[test]
    fn parallel_parse_falls_back_for_errors_and_directives() {
        let good = "---\nkind: Service\nmetadata: {name: s}\n".repeat(40_000);
        let broken = format!("{good}---\nkind: [unclosed\n{good}");
        let source = Source {
            name: "big.yaml".to_owned(),
            text: broken,
            json: false,
        };
        assert!(parse_yaml_parallel(&source).is_none());
        let Err(error) = parse(&source) else {
            panic!("expected an error")
        };
        // numbered and located in the whole file, as a serial parse does
        assert!(
            error
                .to_string()
                .starts_with("big.yaml: document 40001: invalid YAML: "),
            "{error}"
        );
        assert!(error.to_string().contains("line 120003"), "{error}");

        let directive = Source {
            name: "d.yaml".to_owned(),
            text: format!("%YAML 1.2\n{good}"),
            json: false,
        };
        assert!(parse_yaml_parallel(&directive).is_none());
    }

    #[test]
    fn pieces_are_cut_only_at_markers() {
        let text = "a: 1\n---\nb: 2\n--- x\nc: 3\n----\nd: 4\n---\n";
        let pieces = yaml_pieces(text, 1);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.len() > 2, "{pieces:?}");
        for piece in &pieces[1..] {
            assert!(
                piece.starts_with("---") && !piece.starts_with("----"),
                "cut before {piece:?}"
            );
        }
    }

    #[test]
    fn json_stream_of_several_objects() {
        let source = Source {
            name: "in.json".to_owned(),
            text: "{\"kind\":\"A\"}\n{\"kind\":\"B\"} {\"kind\":\"C\"}".to_owned(),
            json: true,
        };
        let got = parse(&source).expect("parses");
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].location.document, 3);
        assert_eq!(got[2].value["kind"], "C");
    }

    #[test]
    fn json_is_sniffed_on_stdin() {
        let source = Source {
            name: STDIN_NAME.to_owned(),
            text: "  {\"kind\":\"A\"}{\"kind\":\"B\"}".to_owned(),
            json: false,
        };
        assert_eq!(parse(&source).expect("parses").len(), 2);
    }

    #[test]
    fn json_error_names_document_line_and_column() {
        let source = Source {
            name: "in.json".to_owned(),
            text: "{\"kind\":\"A\"}\n{\"kind\": }".to_owned(),
            json: true,
        };
        let Err(error) = parse(&source) else {
            panic!("expected an error");
        };
        assert_eq!(
            error.to_string(),
            "in.json: document 2: invalid JSON: expected value at line 2 column 10"
        );
    }

    #[test]
    fn bounded_read_rejects_oversized_and_non_utf8_input() {
        let Err(error) = read_bounded(&mut &b"ok\xff"[..], "bin.yaml", 0) else {
            panic!("expected an error");
        };
        assert_eq!(
            error.to_string(),
            "bin.yaml: not UTF-8 text (invalid byte at offset 2)"
        );
        let text = read_bounded(&mut "\u{feff}kind: A".as_bytes(), "bom.yaml", 0).expect("reads");
        assert_eq!(text, "kind: A");
    }

    #[test]
    fn directories_are_walked_sorted_recursively_skipping_hidden_and_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for (path, body) in [
            ("b.yaml", "kind: B"),
            ("a.yml", "kind: A"),
            ("sub/c.json", "{\"kind\":\"C\"}"),
            ("sub/notes.txt", "not a manifest"),
            (".github/workflows/ci.yml", "on: push"),
            ("Z.YAML", "kind: Z"),
        ] {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(full, body).expect("write");
        }
        let sources = read_inputs(&[root.to_path_buf()], &mut std::io::empty()).expect("reads");
        let names: Vec<String> = sources
            .iter()
            .map(|s| {
                Path::new(&s.name)
                    .strip_prefix(root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(names, vec!["Z.YAML", "a.yml", "b.yaml", "sub/c.json"]);
        assert!(sources[3].json);
    }

    #[cfg(unix)]
    #[test]
    fn symlink_cycles_are_followed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("d")).expect("mkdir");
        std::fs::write(root.join("d/p.yaml"), "kind: P").expect("write");
        std::os::unix::fs::symlink(root, root.join("d/loop")).expect("symlink");
        let sources = read_inputs(&[root.to_path_buf()], &mut std::io::empty()).expect("reads");
        assert_eq!(sources.len(), 1);
    }

    #[test]
    fn missing_input_names_the_path() {
        let Err(error) = read_inputs(
            &[PathBuf::from("/nonexistent/x.yaml")],
            &mut std::io::empty(),
        ) else {
            panic!("expected an error");
        };
        assert!(
            error
                .to_string()
                .starts_with("/nonexistent/x.yaml: cannot read: "),
            "{error}"
        );
    }

    #[test]
    fn stdin_is_read_once() {
        let inputs = [PathBuf::from("-"), PathBuf::from("-")];
        let sources = read_inputs(&inputs, &mut "kind: A".as_bytes()).expect("reads");
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].name, STDIN_NAME);
    }
}
