//! `kube-hardener serve`: the admission webhook.

/// Command-line arguments of `kube-hardener serve` (override the configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {}

/// Runs the webhook until SIGTERM/SIGINT.
pub fn run(args: &ServeArgs, config: kube_hardener_config::Config) -> anyhow::Result<()> {
    let _ = (args, config);
    Ok(())
}
