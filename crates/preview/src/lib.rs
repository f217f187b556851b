//! `kube-hardener preview`: what the webhook would do, offline.
//!
//! Reads manifests (files, directories, standard input), runs the engine on
//! every Pod and workload object with the loaded configuration, and renders
//! the result a piece of input at a time (`stream.rs`), so memory stays flat
//! however large the input. Nothing is printed before the whole input has
//! gone through, so bad input produces an error and no partial output.

mod input;
mod process;
mod render;
mod stream;
mod threads;
mod yaml;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

pub use input::{Document, Location, MAX_INPUT_BYTES, STDIN_NAME, Source, parse, read_inputs};
pub use process::{
    DocumentReport, Namespaces, ObjectReport, Options, collect_namespaces, evaluate, evaluate_with,
};
pub use render::{Format, Output, Part, render, render_owned, render_part, unchanged_reason};

use kube_hardener_config::Config;
use kube_hardener_engine::Policy;

/// Exit code for bad input, an unreadable file or an unusable configuration.
pub const EXIT_ERROR: u8 = 2;
/// Exit code with `--exit-code` when at least one object would change.
pub const EXIT_CHANGES: u8 = 1;

const AFTER_HELP: &str = "\
Objects: Pods and the pod templates of Deployment, StatefulSet, DaemonSet,
ReplicaSet, Job and CronJob are hardened; every other kind passes through
unchanged. Workload templates are always shown hardened, whatever
`hardening.mutate_workloads` says: the pods they create receive these changes
from the webhook either way. Audit mode (`server.audit`, the namespace
annotation kube-hardener.io/mode) does not change the preview: it shows what
enforcing would inject.

Namespaces: a Namespace object in the input supplies the annotations (e.g.
kube-hardener.io/skip) of objects in that namespace; --namespace-annotation
applies to every namespace without a Namespace object in the input. Objects
without metadata.namespace are in --namespace.

Inputs: files, directories (recursive, sorted, *.yaml *.yml *.json, hidden
entries skipped) and `-` for standard input (the default). Multi-document
YAML, one or several concatenated JSON objects and List objects are read.

Output formats (-o):
  text   per object: `Kind namespace/name (file: document N)`, the patch
         operations one per line, applied settings, warnings, or
         `unchanged (reason)`; then a summary line
  patch  per object: a `# Kind namespace/name (file: document N)` line, then
         its RFC 6902 JSON patch as a JSON array, `[]` when unchanged
  yaml   every document, hardened or not, as multi-document YAML in input
         order (List objects stay Lists)
  diff   unified diff of each changed object's YAML; coloured on a terminal
         unless NO_COLOR is set
  json   an array with one entry per object: file, document, item (List
         items), apiVersion, kind, namespace, name, disposition, changed,
         reason, patch, applied, warnings

Exit status: 0 success; 1 with --exit-code when any object would change;
2 bad input (the message names the file and the document; nothing is printed
on standard output) or bad configuration.";

/// Command-line arguments of `kube-hardener preview`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct PreviewArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// Annotation of every namespace that has no Namespace object in the
    /// input, e.g. `kube-hardener.io/skip=capabilities` (repeatable).
    #[arg(long = "namespace-annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub namespace_annotations: Vec<(String, String)>,

    /// Namespace of objects that do not set metadata.namespace.
    #[arg(long, value_name = "NS", default_value = "default", value_parser = parse_namespace)]
    pub namespace: String,

    /// Exit with status 1 when any object would change (for CI gates).
    #[arg(long)]
    pub exit_code: bool,

    /// Look up what each image runs as in its registry (the configuration's
    /// `[images]` table), as the webhook does with `images.resolve`. Off by
    /// default: preview then needs no network.
    #[arg(long)]
    pub resolve_images: bool,

    /// Colour the diff output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Files or directories to read; `-` (the default) is standard input.
    #[arg(value_name = "FILE|DIR|-")]
    pub inputs: Vec<PathBuf>,
}

/// When `-o diff` is coloured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When standard output is a terminal and NO_COLOR is unset or empty.
    #[default]
    Auto,
    Always,
    Never,
}

fn parse_annotation(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got `{raw}`")),
    }
}

fn parse_namespace(raw: &str) -> Result<String, String> {
    kube_hardener_config::check_dns_label(raw)
        .map(|()| raw.to_owned())
        .map_err(|message| format!("`{raw}` {message}"))
}

/// Bad input: nothing is printed on standard output when one of these occurs.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: larger than {max} bytes")]
    TooLarge { file: String, max: u64 },
    #[error("{file}: not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { file: String, offset: usize },
    #[error("{dir}: directories nested deeper than {max} levels")]
    TooDeep { dir: String, max: usize },
    #[error(
        "no input: standard input is a terminal; give files or directories, or pipe manifests in"
    )]
    NoInput,
    #[error("{location}: invalid {format}: {message}")]
    Parse {
        location: Location,
        format: &'static str,
        message: String,
    },
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
    #[error("{location}: {source}")]
    Engine {
        location: Location,
        #[source]
        source: kube_hardener_engine::EngineError,
    },
    #[error("{location}: internal error: the computed patch does not apply: {message}")]
    PatchDoesNotApply { location: Location, message: String },
    #[error("image lookups: {0}")]
    Images(String),
    #[error("{what}: cannot render: {message}")]
    Render { what: String, message: String },
}

/// The result of a preview: the output to print and whether anything would change.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The output in pieces, to be written in order (see [`Preview::output`]).
    pub chunks: Vec<String>,
    pub changed: bool,
}

impl Preview {
    /// The whole output as one string.
    pub fn output(&self) -> String {
        self.chunks.concat()
    }
}

/// The policy the preview runs with: the configured one, with the webhook's
/// own namespace excluded (as the server does) and workload templates on.
pub fn preview_policy(config: &Config) -> Policy {
    config.effective_policy(kube_hardener_config::EntryPoint::Preview)
}

/// What `images` run as, looked up with the same resolver as the webhook's,
/// each within `images.budget_ms` (a longer lookup counts as unknown).
fn resolve_images(
    images: &[(String, Option<String>)],
    config: &Config,
) -> Result<kube_hardener_engine::ImageFacts, PreviewError> {
    let resolver_config = kube_hardener_images::ResolverConfig::from_config(&config.images)
        .map_err(|e| PreviewError::Images(e.to_string()))?;
    let resolver = kube_hardener_images::Resolver::new(
        resolver_config,
        std::sync::Arc::new(kube_hardener_images::NoObserver),
    )
    .map_err(|e| PreviewError::Images(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PreviewError::Images(format!("cannot start the lookup runtime: {e}")))?;
    let mut facts = kube_hardener_engine::ImageFacts::new();
    runtime.block_on(async {
        // One batch per pinned architecture; unpinned images ask every platform.
        let mut by_arch: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
        for (image, arch) in images {
            by_arch.entry(arch.clone()).or_default().push(image.clone());
        }
        for (arch, images) in by_arch {
            for chunk in images.chunks(kube_hardener_images::MAX_IMAGES_PER_REVIEW) {
                facts.extend(resolver.facts(chunk, arch.as_deref()).await);
            }
        }
    });
    Ok(facts)
}

/// Runs the whole preview without touching the process's standard streams.
pub fn preview(
    args: &PreviewArgs,
    config: &Config,
    stdin: &mut dyn Read,
    stdin_is_terminal: bool,
    color: bool,
) -> Result<Preview, PreviewError> {
    let default_input = [PathBuf::from("-")];
    let inputs: &[PathBuf] = if args.inputs.is_empty() {
        if stdin_is_terminal {
            return Err(PreviewError::NoInput);
        }
        &default_input
    } else {
        &args.inputs
    };
    let sources = read_inputs(inputs, stdin)?;
    let mut options = Options {
        default_namespace: args.namespace.clone(),
        namespace_annotations: args
            .namespace_annotations
            .iter()
            .cloned()
            .collect::<BTreeMap<_, _>>(),
        images: None,
    };
    let policy = preview_policy(config);
    let namespaces = stream::namespaces(&sources)?;
    if args.resolve_images {
        let wanted = stream::images(&sources, &namespaces, &options, &policy)?;
        options.images = Some(resolve_images(&wanted, config)?);
    }
    let job = stream::Job {
        namespaces: &namespaces,
        options: &options,
        policy: &policy,
        format: args.output,
        color,
    };
    let mut output = Output::new(args.output);
    for source in &sources {
        stream::render_source(source, job, &mut output)?;
    }
    let changed = output.changed();
    Ok(Preview {
        chunks: output.finish_chunks(),
        changed,
    })
}

fn use_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
        }
    }
}

/// Runs the preview on the process's standard streams and returns the exit code.
pub fn run(args: &PreviewArgs, config: &Config) -> ExitCode {
    let stdin = std::io::stdin();
    let stdin_is_terminal = stdin.is_terminal();
    let result = preview(
        args,
        config,
        &mut stdin.lock(),
        stdin_is_terminal,
        use_color(args.color),
    );
    let preview = match result {
        Ok(preview) => preview,
        Err(error) => {
            eprintln!("kube-hardener preview: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let written = preview
        .chunks
        .iter()
        .try_for_each(|chunk| stdout.write_all(chunk.as_bytes()))
        .and_then(|()| stdout.flush());
    if let Err(error) = written {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("kube-hardener preview: cannot write output: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    }
    if args.exit_code && preview.changed {
        ExitCode::from(EXIT_CHANGES)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: PreviewArgs,
    }

    fn args(argv: &[&str]) -> Result<PreviewArgs, String> {
        let mut full = vec!["preview"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full)
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_flag() {
        let parsed = args(&[
            "-o",
            "json",
            "--namespace-annotation",
            "kube-hardener.io/skip=a=b",
            "--namespace",
            "shop",
            "--exit-code",
            "x.yaml",
            "-",
        ])
        .expect("parses");
        assert_eq!(parsed.output, Format::Json);
        assert_eq!(
            parsed.namespace_annotations,
            vec![("kube-hardener.io/skip".to_owned(), "a=b".to_owned())]
        );
        assert_eq!(parsed.namespace, "shop");
        assert!(parsed.exit_code);
        assert_eq!(
            parsed.inputs,
            vec![PathBuf::from("x.yaml"), PathBuf::from("-")]
        );
    }

    #[test]
    fn rejects_bad_flags_with_a_reason() {
        let error = args(&["--namespace-annotation", "novalue"]).expect_err("rejected");
        assert!(
            error.contains("expected KEY=VALUE, got `novalue`"),
            "{error}"
        );
        let error = args(&["--namespace", "Bad_NS"]).expect_err("rejected");
        assert!(
            error.contains("`Bad_NS` is not a namespace name"),
            "{error}"
        );
        let error = args(&["-o", "xml"]).expect_err("rejected");
        assert!(error.contains("xml"), "{error}");
    }

    #[test]
    fn no_input_from_a_terminal_is_an_error_not_a_hang() {
        let parsed = args(&[]).expect("parses");
        let result = preview(
            &parsed,
            &Config::default(),
            &mut std::io::empty(),
            true,
            false,
        );
        assert!(matches!(result, Err(PreviewError::NoInput)));
    }

    #[test]
    fn policy_always_covers_workloads_and_excludes_own_namespace() {
        let mut config = Config::default();
        config.server.own_namespace = Some("kube-hardener".to_owned());
        let policy = preview_policy(&config);
        assert!(policy.mutate_workloads);
        assert!(
            policy
                .excluded_namespaces
                .contains(&"kube-hardener".to_owned())
        );
        assert!(
            policy
                .excluded_namespaces
                .contains(&"kube-system".to_owned())
        );
    }

    #[test]
    fn errors_stop_before_any_output_and_the_first_in_input_order_is_reported() {
        let parsed = args(&["-"]).expect("parses");
        let good = "kind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: c}]}\n";
        let cases = [
            (
                format!(
                    "{good}---\nkind: Pod\nmetadata: {{name: a}}\n---\nmetadata: {{name: b}}\n"
                ),
                "<stdin>: document 2: field `spec` must be an object",
            ),
            (
                format!(
                    "{good}---\nmetadata: {{name: b}}\n---\nkind: Pod\nmetadata: {{name: a}}\n"
                ),
                "<stdin>: document 2: missing `kind`",
            ),
        ];
        for (input, expected) in cases {
            let result = preview(
                &parsed,
                &Config::default(),
                &mut input.as_bytes(),
                false,
                false,
            );
            match result {
                Err(error) => assert_eq!(error.to_string(), expected),
                Ok(preview) => panic!("expected an error, got {:?}", preview.output()),
            }
        }
    }
}
