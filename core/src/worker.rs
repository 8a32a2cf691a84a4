//! A worker's registration: its DP ranks, its role in prefill/decode disaggregation and
//! where its bootstrap server listens. Vocabulary shared by the router, its snapshots
//! and the ingest paths; the router's checks of a registration live in `route`.

use crate::ids::{DpRank, WorkerId};

/// What a worker does in prefill/decode disaggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Prefill only: chosen by cache overlap and prefill load in disaggregated routing.
    Prefill,
    /// Decode only: chosen by decode load in disaggregated routing.
    Decode,
    /// Aggregated serving: prefill and decode in one place ([`Router::best_worker`]).
    ///
    /// [`Router::best_worker`]: crate::route::Router::best_worker
    Both,
}

/// Where the decode side fetches a prefill worker's KV (SGLang's bootstrap server).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootstrapEndpoint {
    pub host: String,
    /// `None` is sent as null, as SGLang allows.
    pub port: Option<u16>,
}

/// Longest host name DNS allows (and so the longest `bootstrap_host`).
pub const MAX_HOST_LEN: usize = 253;

impl BootstrapEndpoint {
    /// Checks that `host` is an IPv4 or IPv6 address (bare, or an IPv6 in brackets) or a
    /// host name: at most [`MAX_HOST_LEN`] bytes of dot-separated labels of 1 to 63 ASCII
    /// letters, digits, `-` or `_`, none starting or ending with `-`. The host is echoed to
    /// clients, which put it in URLs: control characters, spaces, `/`, `@` and the like
    /// never pass.
    pub fn check_host(&self) -> Result<(), &'static str> {
        let host = self.host.as_str();
        if host.is_empty() {
            return Err("empty");
        }
        if host.len() > MAX_HOST_LEN {
            return Err("longer than 253 bytes");
        }
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if bare.parse::<std::net::IpAddr>().is_ok() {
            return Ok(());
        }
        if bare.len() != host.len() {
            return Err("brackets around something that is not an IPv6 address");
        }
        for label in host.trim_end_matches('.').split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err("a label is empty or longer than 63 bytes");
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err("only letters, digits, '-', '_' and '.' may appear in a host name");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err("a label starts or ends with '-'");
            }
        }
        Ok(())
    }
}

/// A worker's registration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerSpec {
    pub worker: WorkerId,
    /// First DP rank this worker owns (a multi-node DP server splits its ranks).
    #[serde(default)]
    pub dp_start: u32,
    /// Ranks this worker owns: `dp_start..dp_start + dp_size`.
    pub dp_size: u32,
    /// The DP size of the whole server, which SGLang's `room % dp_size` uses; defaults to
    /// `dp_start + dp_size`.
    #[serde(default)]
    pub dp_world_size: Option<u32>,
    /// Tokens per KV block; must equal the router's.
    pub block_size: u32,
    pub role: Role,
    /// Required for prefill workers.
    #[serde(default)]
    pub bootstrap: Option<BootstrapEndpoint>,
}

impl WorkerSpec {
    /// An aggregated worker owning ranks `0..dp_size`.
    pub fn new(worker: WorkerId, dp_size: u32, block_size: u32) -> WorkerSpec {
        WorkerSpec { worker, dp_start: 0, dp_size, dp_world_size: None, block_size, role: Role::Both, bootstrap: None }
    }

    /// A prefill worker with its bootstrap endpoint.
    pub fn prefill(worker: WorkerId, dp_size: u32, block_size: u32, host: &str, port: Option<u16>) -> WorkerSpec {
        WorkerSpec {
            role: Role::Prefill,
            bootstrap: Some(BootstrapEndpoint { host: host.to_owned(), port }),
            ..WorkerSpec::new(worker, dp_size, block_size)
        }
    }

    /// A decode worker.
    pub fn decode(worker: WorkerId, dp_size: u32, block_size: u32) -> WorkerSpec {
        WorkerSpec { role: Role::Decode, ..WorkerSpec::new(worker, dp_size, block_size) }
    }

    /// The server's DP size (for rooms).
    pub fn dp_world(&self) -> u32 {
        self.dp_world_size.unwrap_or(self.dp_start.saturating_add(self.dp_size))
    }

    /// Whether `rank` is one of this worker's.
    pub fn owns(&self, rank: DpRank) -> bool {
        rank.0 >= self.dp_start && u64::from(rank.0) < u64::from(self.dp_start) + u64::from(self.dp_size)
    }
}
