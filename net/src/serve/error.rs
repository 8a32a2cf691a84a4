//! [`ServeError`]: why `kvroute serve` could not start or stopped abnormally. Each variant
//! says which step failed; the binary prints it and exits with code 2.

use std::fmt;
use std::net::SocketAddr;

use kvroute_core::route::RouteError;

use super::config::ConfigError;

/// A boxed error from a component the daemon starts (ingest, snapshots).
pub type ComponentError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum ServeError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// `--print-config` could not render the configuration.
    PrintConfig(toml::ser::Error),
    /// The router could not be built, or a configured worker registered.
    Router(RouteError),
    /// The HTTP listener could not be bound.
    Bind { addr: SocketAddr, error: std::io::Error },
    /// The async runtime could not start, or the HTTP server failed.
    Io { action: &'static str, error: std::io::Error },
    /// The QUIC ingest failed to start.
    Ingest(ComponentError),
    /// Restoring or writing an index snapshot failed.
    Snapshot(ComponentError),
    /// A configured engine subscription could not start.
    EngineIngest(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Config(error) => write!(f, "{error}"),
            ServeError::PrintConfig(error) => write!(f, "cannot print the configuration as TOML: {error}"),
            ServeError::Router(error) => write!(f, "router: {error}"),
            ServeError::Bind { addr, error } => write!(f, "cannot listen on {addr} (http_listen): {error}"),
            ServeError::Io { action, error } => write!(f, "{action}: {error}"),
            ServeError::Ingest(error) => write!(f, "QUIC ingest: {error}"),
            ServeError::Snapshot(error) => write!(f, "snapshot: {error}"),
            ServeError::EngineIngest(error) => write!(f, "engine KV events: {error}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Config(error) => Some(error),
            ServeError::PrintConfig(error) => Some(error),
            ServeError::Router(error) => Some(error),
            ServeError::Bind { error, .. } | ServeError::Io { error, .. } => Some(error),
            ServeError::Ingest(error) | ServeError::Snapshot(error) => Some(error.as_ref()),
            ServeError::EngineIngest(_) => None,
        }
    }
}

impl From<ConfigError> for ServeError {
    fn from(error: ConfigError) -> ServeError {
        ServeError::Config(error)
    }
}

impl From<RouteError> for ServeError {
    fn from(error: RouteError) -> ServeError {
        ServeError::Router(error)
    }
}
