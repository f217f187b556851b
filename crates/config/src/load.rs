//! Layering and error reporting.
//!
//! Every problem is reported with the dotted key it concerns and the layer
//! that supplied it (the file path, the exact environment variable, or the
//! embedded default), because an operator fixing a crash-looping pod needs to
//! know *where* to look, not only *what* is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use crate::{Config, DEFAULT_TOML};

/// Prefix of the environment layer.
pub const ENV_PREFIX: &str = "KUBE_HARDENER_";
/// Names the configuration file; read by the CLI, never a configuration key.
pub const ENV_CONFIG_FILE: &str = "KUBE_HARDENER_CONFIG";
/// Separates nested tables in environment variable names.
const ENV_SEPARATOR: &str = "__";

/// Largest configuration file accepted; a config is a few KiB, anything
/// bigger is a wrong path (a log, an image) rather than a configuration.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The embedded `config/default.toml`.
    Default,
    /// The file given with `--config` / `KUBE_HARDENER_CONFIG`.
    File(PathBuf),
    /// One `KUBE_HARDENER_*` environment variable (its exact name).
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the embedded default configuration"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`hardening.fs_group`, `hardening.writable_paths[1]`);
    /// empty when the problem is not about one key (a TOML syntax error).
    pub key: String,
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(
                f,
                "key `{}` (from {}): {}",
                self.key, self.origin, self.message
            )
        }
    }
}

/// The configuration could not be loaded; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {} is larger than {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("invalid configuration:{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems, for callers that want to assert on them.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Read { .. } | ConfigError::TooLarge { .. } => &[],
        }
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [single] => write!(f, " {single}"),
            many => many.iter().try_for_each(|p| write!(f, "\n  - {p}")),
        }
    }
}

/// The three layers kept apart, so that a problem found in the merged result
/// can be traced back to the layer that supplied the offending key.
struct Layers {
    default: Figment,
    file: Option<(PathBuf, Figment)>,
    env: Figment,
}

impl Layers {
    fn new(file: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match file {
            Some(path) => {
                check_readable(path)?;
                Some((path.to_owned(), Figment::from(Toml::file_exact(path))))
            }
            None => None,
        };
        Ok(Layers {
            default: Figment::from(Toml::string(DEFAULT_TOML)),
            file,
            env: Figment::from(env_provider()),
        })
    }

    fn merged(&self) -> Figment {
        let mut merged = self.default.clone();
        if let Some((_, file)) = &self.file {
            merged = merged.merge(file.clone());
        }
        merged.merge(self.env.clone())
    }

    /// The last layer that sets `key` (or a parent table of it).
    fn origin_of(&self, key: &str) -> Origin {
        // A list element comes from whichever layer set the whole list.
        let mut candidate = key.split('[').next().unwrap_or(key).to_owned();
        loop {
            if self.env.contains(&candidate) {
                return Origin::Env(env_var_name(&candidate));
            }
            if let Some((path, file)) = &self.file
                && file.contains(&candidate)
            {
                return Origin::File(path.clone());
            }
            if self.default.contains(&candidate) {
                return Origin::Default;
            }
            match candidate.rsplit_once('.') {
                Some((parent, _)) => candidate = parent.to_owned(),
                // Nothing sets it: a value left at its built-in default.
                None => return Origin::Default,
            }
        }
    }
}

/// The environment layer: `KUBE_HARDENER_A__B=v` sets key `a.b`.
///
/// Every key lives in a table, so only variables with a `__` are configuration.
/// The others are left alone: Kubernetes injects service links such as
/// `KUBE_HARDENER_SERVICE_HOST` and `KUBE_HARDENER_PORT_443_TCP` into every pod of
/// a namespace that has a Service named `kube-hardener`, and tools keep their own
/// `KUBE_HARDENER_*` variables; treating those as unknown keys would stop start-up.
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains(ENV_SEPARATOR))
        .split(ENV_SEPARATOR)
}

fn env_var_name(key: &str) -> String {
    // Drop a `[index]` suffix: a list is set by one variable.
    let key = key.split('[').next().unwrap_or(key);
    format!(
        "{ENV_PREFIX}{}",
        key.split('.')
            .collect::<Vec<_>>()
            .join(ENV_SEPARATOR)
            .to_ascii_uppercase()
    )
}

fn check_readable(path: &Path) -> Result<(), ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if metadata.is_dir() {
        return Err(read_error(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    // figment reports an unreadable file without the OS error; read it once
    // here so permission problems say so.
    std::fs::File::open(path).map_err(read_error)?;
    Ok(())
}

impl Config {
    /// Loads the configuration: embedded default, then `file` if given, then
    /// the `KUBE_HARDENER_*` environment (except `KUBE_HARDENER_CONFIG`, which
    /// only names the file and is resolved by the caller, e.g. the CLI).
    /// Values are validated beyond their types; every problem found is reported.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let layers = Layers::new(file)?;
        let merged = layers.merged();
        let config: Config = merged.extract().map_err(|error| {
            ConfigError::Invalid(
                error
                    .into_iter()
                    .map(|e| problem_from_figment(&layers, e))
                    .collect(),
            )
        })?;
        let problems: Vec<Problem> = config
            .validate()
            .into_iter()
            .map(|(key, message)| Problem {
                origin: layers.origin_of(&key),
                key,
                message,
            })
            .collect();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Parses the embedded default alone (no file, no environment).
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .map_err(|error| {
                ConfigError::Invalid(
                    error
                        .into_iter()
                        .map(|e| Problem {
                            key: e.path.join("."),
                            origin: Origin::Default,
                            message: e.kind.to_string(),
                        })
                        .collect(),
                )
            })
    }
}

fn problem_from_figment(layers: &Layers, error: figment::Error) -> Problem {
    use figment::error::Kind;

    let mut key = error.path.join(".");
    let message = match &error.kind {
        Kind::UnknownField(field, expected) => {
            // figment usually puts the unknown field in the path already.
            if error.path.last() != Some(field) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            if expected.is_empty() {
                "unknown key".to_owned()
            } else {
                format!("unknown key; expected one of: {}", expected.join(", "))
            }
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::MissingField(field) => {
            if error.path.last().map(String::as_str) != Some(field.as_ref()) {
                key = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
            }
            "missing".to_owned()
        }
        other => other.to_string(),
    };
    let origin = if key.is_empty() {
        // A syntax error: no key, but the metadata knows the file.
        match error.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            Some(figment::Source::File(path)) => Origin::File(path.clone()),
            _ => layers
                .file
                .as_ref()
                .map_or(Origin::Default, |(path, _)| Origin::File(path.clone())),
        }
    } else {
        layers.origin_of(&key)
    };
    Problem {
        key,
        origin,
        message,
    }
}
