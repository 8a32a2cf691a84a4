//! Logging: a `tracing-subscriber` formatter on stderr, text or JSON lines, filtered by an
//! env-filter directive (`log_filter`, else `$RUST_LOG`, else `info`); colours only on a
//! terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use super::config::{ConfigError, LogSettings};
use super::options::LogFormat;

/// Installs the global subscriber. A bad `$RUST_LOG` is a configuration error; a
/// subscriber already installed (a test, an embedding program) is left in place.
pub fn init_logging(settings: &LogSettings) -> Result<(), ConfigError> {
    let (field, directive) = match (&settings.filter, std::env::var("RUST_LOG")) {
        (Some(filter), _) => ("log_filter", filter.clone()),
        (None, Ok(env)) if !env.trim().is_empty() => ("RUST_LOG", env),
        (None, _) => ("log_filter", "info".to_owned()),
    };
    let filter = EnvFilter::try_new(&directive)
        .map_err(|error| ConfigError::Invalid { field: field.to_owned(), reason: format!("{directive:?}: {error}") })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // An error here means a global subscriber exists already; keep it.
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}
