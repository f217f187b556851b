use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod certs;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Secure securityContext defaults for every pod, never overriding explicit choices.
#[derive(Debug, Parser)]
#[command(name = "kube-hardener", version)]
struct Cli {
    /// Configuration file layered over the embedded default [env: KUBE_HARDENER_CONFIG].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mutating admission webhook.
    Serve(kube_hardener_server::ServeArgs),
    /// Show offline what the webhook would change in manifest files.
    Preview(kube_hardener_preview::PreviewArgs),
    /// Generate a CA, a serving certificate Secret and the caBundle for the webhook.
    Certs(certs::CertsArgs),
    /// Print the configuration as a native MutatingAdmissionPolicy and binding (no webhook).
    Policy(kube_hardener_native_policy::PolicyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every subcommand starts from a validated configuration, so a typo in a
    // key fails the same way in CI (preview) as at deployment (serve).
    // Read here rather than by clap so that an empty KUBE_HARDENER_CONFIG (a
    // blank Helm value) means "no file" instead of a usage error.
    let file = cli.config.or_else(|| {
        std::env::var_os(kube_hardener_config::ENV_CONFIG_FILE)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    });
    let config = match kube_hardener_config::Config::load(file.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("kube-hardener: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => match kube_hardener_server::run(&args, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("kube-hardener serve: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Preview(args) => kube_hardener_preview::run(&args, &config),
        Command::Policy(args) => kube_hardener_native_policy::run(&args, &config),
        Command::Certs(args) => match certs::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("kube-hardener certs: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}
