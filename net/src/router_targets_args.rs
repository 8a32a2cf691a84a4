//! The flags every command that publishes to routers shares (`kvroute publish`,
//! `kvroute bridge`): where the routers are, the name their certificate was issued for,
//! and this publisher's mutual-TLS files or loopback-only insecure mode.

use std::net::SocketAddr;
use std::path::PathBuf;

use kvroute_net::tls::TlsFiles;
use kvroute_net::transport::{RouterTarget, TlsMode};

#[derive(clap::Args, Debug)]
pub struct RouterTargetsArgs {
    /// Router ingest address to publish to (repeatable: every router gets every event).
    #[arg(long = "router", value_name = "ADDR", required = true)]
    pub routers: Vec<SocketAddr>,
    /// Name the routers' certificate was issued for (`kvroute certs --router-name`).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// The CA every router and publisher trusts (`ca.pem` from `kvroute certs`).
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// This publisher's certificate; it must allow every worker it publishes for.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This publisher's private key.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// No TLS certificates; the routers must be on loopback addresses and run with
    /// --insecure-loopback too.
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    pub insecure_loopback: bool,
}

impl RouterTargetsArgs {
    /// The TLS mode the flags name, or what is missing.
    pub fn tls(&self) -> Result<TlsMode, String> {
        match (&self.ca, &self.cert, &self.key, self.insecure_loopback) {
            (Some(ca), Some(cert), Some(key), false) => {
                Ok(TlsMode::Mutual(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() }))
            }
            (None, None, None, true) => Ok(TlsMode::InsecureLoopback),
            _ => Err("give --ca, --cert and --key (from `kvroute certs`), or --insecure-loopback".to_owned()),
        }
    }

    /// The routers as publisher targets.
    pub fn targets(&self) -> Vec<RouterTarget> {
        self.routers.iter().map(|&addr| RouterTarget::new(addr, self.server_name.clone())).collect()
    }
}
