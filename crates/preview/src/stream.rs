//! The preview pipeline, a piece of input at a time, so memory stays flat
//! whatever the size of the input.
//!
//! 1. **Namespaces first.** A Namespace object anywhere in the input supplies
//!    the annotations of every object in that namespace, even earlier ones.
//!    So a first pass collects them, parsing only the documents whose text
//!    can hold one: the word `Namespace`, or an escape sequence that could
//!    spell it (`\`). Every other document is skipped unparsed.
//! 2. **Then the documents, in input order.** A YAML source is cut at `---`
//!    lines into pieces; a window of pieces is parsed on several threads,
//!    hardened and rendered, and only the rendered text is kept. A JSON
//!    stream is read a batch of documents at a time.
//!
//! Bad input anywhere still means no output at all: the rendered text is
//! kept in memory until the whole input has gone through, and the first
//! error (in input order) is returned instead. A parse error found in a
//! piece is reported as a serial parse of the whole source reports it, so
//! its document number and line are those of the file.

use kube_hardener_engine::Policy;

use crate::PreviewError;
use crate::input::{self, Document, PIECE_BYTES, Source};
use crate::process::{Namespaces, Options, collect_namespaces, evaluate_with, image_queries};
use crate::render::{Format, Output, Part, render_part};
use crate::threads::threads;

/// Documents of a JSON stream hardened and rendered at once.
const JSON_BATCH: usize = 512;

/// What every piece needs, shared by the threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Job<'a> {
    pub namespaces: &'a Namespaces,
    pub options: &'a Options,
    pub policy: &'a Policy,
    pub format: Format,
    pub color: bool,
}

/// Pass 1: the annotations of every Namespace object in the input.
pub(crate) fn namespaces(sources: &[Source]) -> Result<Namespaces, PreviewError> {
    let mut namespaces = Namespaces::new();
    for source in sources {
        if !may_hold_namespace(&source.text) {
            continue;
        }
        if input::is_json(source) {
            json_namespaces(source, &mut namespaces)?;
        } else if yaml_namespaces(source, &mut namespaces).is_err() {
            // The quick pass numbers documents per piece; for the error,
            // go through the whole source the exact way.
            exact_yaml_namespaces(source, &mut namespaces)?;
        }
    }
    Ok(namespaces)
}

/// Whether `text` can contain a Namespace object: its kind must be spelt
/// out, or written with escapes.
fn may_hold_namespace(text: &str) -> bool {
    text.contains("Namespace") || text.contains('\\')
}

/// Parses only the documents that may hold a Namespace, one at a time.
fn yaml_namespaces(source: &Source, namespaces: &mut Namespaces) -> Result<(), PreviewError> {
    for document in input::yaml_pieces(&source.text, 0) {
        if may_hold_namespace(document) {
            let (documents, _) = input::parse_yaml_text(document, &source.name)?;
            collect_namespaces(&documents, namespaces)?;
        }
    }
    Ok(())
}

/// Every document of the source in one serial parse, each dropped after use:
/// slower, but its errors carry the file's own document numbers and lines.
fn exact_yaml_namespaces(source: &Source, namespaces: &mut Namespaces) -> Result<(), PreviewError> {
    let mut failed = None;
    input::each_yaml_document(&source.text, &source.name, &mut |document| {
        if failed.is_none()
            && let Err(error) = collect_namespaces(std::slice::from_ref(&document), namespaces)
        {
            failed = Some(error);
        }
    })?;
    failed.map_or(Ok(()), Err)
}

fn json_namespaces(source: &Source, namespaces: &mut Namespaces) -> Result<(), PreviewError> {
    each_json_batch(source, &mut |documents| {
        collect_namespaces(&documents, namespaces)
    })
}

/// The pre-pass of `--resolve-images`: every image whose user decides
/// `runAsNonRoot`, as the engine asks for it with the same namespace context as
/// pass 2, with the architecture its pods pin when all of them pin the same
/// one (else `None`: every platform, the cautious answer).
pub(crate) fn images(
    sources: &[Source],
    namespaces: &Namespaces,
    options: &Options,
    policy: &Policy,
) -> Result<Vec<(String, Option<String>)>, PreviewError> {
    let mut pins: std::collections::BTreeMap<String, Option<String>> =
        std::collections::BTreeMap::new();
    let mut collect = |document: &Document| -> Result<(), PreviewError> {
        for query in image_queries(document, namespaces, options, policy)? {
            for image in query.images {
                let pin = pins.entry(image).or_insert_with(|| query.arch.clone());
                if *pin != query.arch {
                    *pin = None;
                }
            }
        }
        Ok(())
    };
    for source in sources {
        if input::is_json(source) {
            each_json_batch(source, &mut |documents| {
                documents.iter().try_for_each(&mut collect)
            })?;
        } else {
            let mut failed = None;
            input::each_yaml_document(&source.text, &source.name, &mut |document| {
                if failed.is_none() {
                    failed = collect(&document).err();
                }
            })?;
            if let Some(error) = failed {
                return Err(error);
            }
        }
    }
    Ok(pins.into_iter().collect())
}

/// Pass 2 for one source: its documents hardened and rendered into `output`.
pub(crate) fn render_source(
    source: &Source,
    job: Job<'_>,
    output: &mut Output,
) -> Result<(), PreviewError> {
    let rendered = if input::is_json(source) {
        each_json_batch(source, &mut |documents| {
            output.append(part(documents, job)?);
            Ok(())
        })
    } else {
        render_yaml(source, job, output)
    };
    rendered.map_err(|error| match error {
        PreviewError::Parse { .. } => input::first_error(source).unwrap_or(error),
        other => other,
    })
}

fn part(documents: Vec<Document>, job: Job<'_>) -> Result<Part, PreviewError> {
    let reports = evaluate_with(documents, job.namespaces, job.options, job.policy)?;
    render_part(reports, job.format, job.color)
}

fn renumber(documents: &mut [Document], offset: usize) {
    for document in documents {
        document.location.document += offset;
    }
}

/// A window of pieces at a time over a pool of worker threads, each piece on
/// one worker from parse to rendered text: the worker parses it and reports
/// its document count, gets back the number of documents before it, then
/// hardens and renders it. The parts are appended in input order. A piece's
/// values are made and freed on one thread that lives for the whole source,
/// so the allocator reuses that memory at once instead of holding it for
/// threads that are gone. At most one window of parsed documents exists at a
/// time.
fn render_yaml(source: &Source, job: Job<'_>, output: &mut Output) -> Result<(), PreviewError> {
    let pieces = input::yaml_pieces(&source.text, PIECE_BYTES);
    let size = threads().min(pieces.len()).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<Worker<'_>> = (0..size)
            .map(|_| Worker::spawn(scope, &source.name, job))
            .collect();
        let mut offset = 0;
        for window in pieces.chunks(size) {
            let busy = &workers[..window.len()];
            for (worker, piece) in busy.iter().zip(window) {
                worker.send_piece(piece);
            }
            for worker in busy {
                // A closed channel means the worker panicked; leaving the
                // scope carries that panic on.
                let Some(count) = worker.count() else {
                    return Ok(());
                };
                worker.send_offset(offset);
                offset += count;
            }
            for worker in busy {
                let Some(part) = worker.part() else {
                    return Ok(());
                };
                output.append(part?);
            }
        }
        Ok(())
    })
}

/// One thread of [`render_yaml`]'s pool and its three channels.
struct Worker<'a> {
    pieces: std::sync::mpsc::Sender<&'a str>,
    offsets: std::sync::mpsc::Sender<usize>,
    counts: std::sync::mpsc::Receiver<usize>,
    parts: std::sync::mpsc::Receiver<Result<Part, PreviewError>>,
}

impl<'a> Worker<'a> {
    fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        name: &'a str,
        job: Job<'a>,
    ) -> Self
    where
        'a: 'scope,
    {
        use std::sync::mpsc::channel;
        let (pieces, piece_rx) = channel::<&'a str>();
        let (offsets, offset_rx) = channel::<usize>();
        let (count_tx, counts) = channel();
        let (part_tx, parts) = channel();
        scope.spawn(move || {
            // Ends when the pool is dropped (its senders close).
            for piece in piece_rx {
                let parsed = input::parse_yaml_text(piece, name);
                // A piece that fails still reports a count: its error comes
                // first in order, so what follows it is discarded.
                let count = parsed.as_ref().map_or(0, |(_, count)| *count);
                let Ok(()) = count_tx.send(count) else { return };
                let Ok(offset) = offset_rx.recv() else { return };
                let part = parsed.and_then(|(mut documents, _)| {
                    renumber(&mut documents, offset);
                    part(documents, job)
                });
                let Ok(()) = part_tx.send(part) else { return };
            }
        });
        Worker {
            pieces,
            offsets,
            counts,
            parts,
        }
    }

    // Sends fail only when the worker has ended (a panic); the next receive
    // then says so.
    fn send_piece(&self, piece: &'a str) {
        let _ = self.pieces.send(piece);
    }

    fn send_offset(&self, offset: usize) {
        let _ = self.offsets.send(offset);
    }

    fn count(&self) -> Option<usize> {
        self.counts.recv().ok()
    }

    fn part(&self) -> Option<Result<Part, PreviewError>> {
        self.parts.recv().ok()
    }
}

/// Calls `each` with consecutive batches of a JSON stream's documents.
fn each_json_batch(
    source: &Source,
    each: &mut dyn FnMut(Vec<Document>) -> Result<(), PreviewError>,
) -> Result<(), PreviewError> {
    let mut batch = Vec::with_capacity(JSON_BATCH);
    for document in input::json_documents(source) {
        batch.push(document?);
        if batch.len() == JSON_BATCH {
            each(std::mem::replace(
                &mut batch,
                Vec::with_capacity(JSON_BATCH),
            ))?;
        }
    }
    if !batch.is_empty() {
        each(batch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::parse;
    use crate::process::evaluate;
    use crate::render::render_owned;

    fn source(text: String, json: bool) -> Source {
        Source {
            name: "big.yaml".to_owned(),
            text,
            json,
        }
    }

    /// Several pieces' worth of pods across namespaces, with the Namespace
    /// that opts `late` out coming last, after the pods it governs.
    fn big_yaml() -> String {
        let mut text = String::from("# generated\n");
        for i in 0..4_000 {
            let namespace = ["shop", "late", "web"][i % 3];
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i}\n  namespace: {namespace}\nspec:\n  containers:\n    - name: app\n      image: app:{i}\n"
            ));
            if i % 500 == 0 {
                text.push_str("---\n# an empty document\n");
            }
        }
        text.push_str("---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: late\n  annotations:\n    kube-hardener.io/skip: all\n");
        text
    }

    fn streamed(sources: &[Source], format: Format) -> Result<String, PreviewError> {
        let namespaces = namespaces(sources)?;
        let options = Options {
            default_namespace: "default".to_owned(),
            ..Options::default()
        };
        let policy = Policy::default();
        let job = Job {
            namespaces: &namespaces,
            options: &options,
            policy: &policy,
            format,
            color: false,
        };
        let mut output = Output::new(format);
        for source in sources {
            render_source(source, job, &mut output)?;
        }
        Ok(output.finish())
    }

    fn whole(sources: &[Source], format: Format) -> String {
        let mut documents = Vec::new();
        for source in sources {
            documents.extend(parse(source).unwrap());
        }
        let options = Options {
            default_namespace: "default".to_owned(),
            ..Options::default()
        };
        let reports = evaluate(documents, &options, &Policy::default()).unwrap();
        render_owned(reports, format, false).unwrap()
    }

    #[test]
    fn streaming_renders_exactly_what_the_whole_input_renders() {
        let text = big_yaml();
        assert!(
            input::yaml_pieces(&text, PIECE_BYTES).len() > 2,
            "several pieces"
        );
        let json_stream: String = (0..1_200)
            .map(|i| {
                format!(
                    "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"j{i}\",\"namespace\":\"late\"}},\"spec\":{{\"containers\":[{{\"name\":\"c\"}}]}}}}\n"
                )
            })
            .collect();
        let sources = [source(text, false), source(json_stream, true)];
        for format in [
            Format::Text,
            Format::Patch,
            Format::Yaml,
            Format::Diff,
            Format::Json,
        ] {
            assert_eq!(
                streamed(&sources, format).unwrap(),
                whole(&sources, format),
                "{format:?}"
            );
        }
        let text = streamed(&sources, Format::Text).unwrap();
        assert!(text.contains("Pod late/pod-1 (big.yaml: document 3)\n  unchanged (opted out with kube-hardener.io/skip: all)"), "the late Namespace applies to earlier pods");
        assert!(
            text.ends_with("5201 objects: 2667 would change, 2534 unchanged\n"),
            "{}",
            &text[text.len() - 80..]
        );
    }

    #[test]
    fn a_parse_error_in_a_later_piece_names_the_documents_and_line_of_the_file() {
        let mut text = big_yaml();
        text.push_str("---\nkind: Pod\nmetadata: [unclosed\n");
        let sources = [source(text.clone(), false)];
        let error = streamed(&sources, Format::Yaml).unwrap_err().to_string();
        let serial = input::first_error(&sources[0]).unwrap().to_string();
        assert_eq!(error, serial);
        let documents = text.matches("\n---").count();
        assert!(
            error.starts_with(&format!("big.yaml: document {documents}: invalid YAML")),
            "{error}"
        );
        assert!(
            error.contains(&format!("line {}", text.lines().count() + 1)),
            "{error}"
        );
    }

    #[test]
    fn the_namespace_prefilter_never_misses_an_escaped_kind() {
        // `Namespace` spelt with a YAML escape still opts the pod out.
        let text = "kind: Pod\nmetadata: {name: p, namespace: esc}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: \"Name\\x73pace\"\nmetadata:\n  name: esc\n  annotations: {kube-hardener.io/skip: all}\n".to_owned();
        let sources = [source(text, false)];
        let out = streamed(&sources, Format::Text).unwrap();
        assert!(
            out.contains("unchanged (opted out with kube-hardener.io/skip: all)"),
            "{out}"
        );
        assert!(!may_hold_namespace("kind: Pod\nmetadata: {name: ns}\n"));
    }
}
