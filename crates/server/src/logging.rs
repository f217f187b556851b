//! tracing set-up: JSON in a cluster (or when asked), text on a terminal.

use kube_hardener_config::{LogFormat, ServerConfig};
use tracing_subscriber::EnvFilter;

/// `RUST_LOG` wins over `log_level`, so an operator can raise verbosity of
/// one module without editing the configuration.
pub(crate) fn init(server: &ServerConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .map_err(|error| anyhow::anyhow!("invalid RUST_LOG {directives:?}: {error}"))?,
        _ => EnvFilter::try_new(&server.log_level).map_err(|error| {
            anyhow::anyhow!("invalid server.log_level {:?}: {error}", server.log_level)
        })?,
    };
    let json = use_json(
        server.log_format,
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    installed.map_err(|error| anyhow::anyhow!("cannot install the log subscriber: {error}"))
}

fn use_json(format: LogFormat, in_cluster: bool) -> bool {
    match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => in_cluster,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_means_json_in_cluster_only() {
        assert!(use_json(LogFormat::Auto, true));
        assert!(!use_json(LogFormat::Auto, false));
        assert!(use_json(LogFormat::Json, false));
        assert!(!use_json(LogFormat::Text, true));
    }
}
