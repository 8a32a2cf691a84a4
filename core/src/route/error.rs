//! Why a routing call was refused. Every bad input is one of these, never a panic.

use crate::ids::{DpRank, WorkerId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// The prompt has no tokens (or no block hashes).
    EmptyPrompt,
    /// No registered worker has this id.
    UnknownWorker(WorkerId),
    /// A worker with this id is already registered.
    WorkerExists(WorkerId),
    /// A worker registered with `dp_size` 0, or a room asked for with a DP size of 0.
    ZeroDpSize(WorkerId),
    /// A rank outside the worker's `dp_start..dp_start + dp_size`.
    RankOutOfRange { worker: WorkerId, dp_rank: DpRank, start: u32, size: u32 },
    /// The worker's ranks do not fit in its declared DP world size.
    DpWorldTooSmall { worker: WorkerId, world: u32, needed: u32 },
    /// The worker's KV block size differs from the router's (the index is keyed by
    /// hashes of blocks of one size).
    BlockSizeMismatch { worker: WorkerId, router: u32, worker_block_size: u32 },
    /// A prefill worker registered without a bootstrap endpoint.
    MissingBootstrap(WorkerId),
    /// A bootstrap host that is neither an IP address nor a host name (`reason` says why).
    BadBootstrapHost { worker: WorkerId, reason: &'static str },
    /// No rank passes the role and option filters.
    NoCandidates,
    /// Same-rank disaggregation, but no prefill rank index exists on the decode side.
    NoSharedRanks,
    /// The index holds at most `kvroute_core::index::MAX_RANKS` ranks.
    TooManyRanks,
    /// A configuration value is out of range (the message says which).
    InvalidConfig(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::EmptyPrompt => write!(f, "empty prompt: nothing to route"),
            RouteError::UnknownWorker(w) => write!(f, "unknown worker {}", w.0),
            RouteError::WorkerExists(w) => write!(f, "worker {} is already registered", w.0),
            RouteError::ZeroDpSize(w) => write!(f, "worker {}: dp_size must be at least 1", w.0),
            RouteError::RankOutOfRange { worker, dp_rank, start, size } => write!(
                f,
                "dp rank {} is outside worker {}'s ranks {}..{}",
                dp_rank.0,
                worker.0,
                start,
                u64::from(*start) + u64::from(*size)
            ),
            RouteError::DpWorldTooSmall { worker, world, needed } => {
                write!(f, "worker {}: dp world size {world} is smaller than its last rank + 1 ({needed})", worker.0)
            }
            RouteError::BlockSizeMismatch { worker, router, worker_block_size } => {
                write!(f, "worker {} uses KV block size {worker_block_size}, the router {router}", worker.0)
            }
            RouteError::MissingBootstrap(w) => {
                write!(f, "prefill worker {} has no bootstrap endpoint (host and port)", w.0)
            }
            RouteError::BadBootstrapHost { worker, reason } => {
                write!(f, "worker {}: bootstrap_host is not an IP address or host name: {reason}", worker.0)
            }
            RouteError::NoCandidates => write!(f, "no registered rank matches the request's role and options"),
            RouteError::NoSharedRanks => write!(
                f,
                "same-rank disaggregation: no prefill dp rank exists on any decode worker (check the DP sizes)"
            ),
            RouteError::TooManyRanks => {
                write!(
                    f,
                    "too many ranks: an index holds at most {} (all workers' DP ranks together)",
                    crate::index::MAX_RANKS
                )
            }
            RouteError::InvalidConfig(msg) => write!(f, "invalid configuration: {msg}"),
        }
    }
}

impl std::error::Error for RouteError {}

impl From<crate::index::IndexError> for RouteError {
    fn from(e: crate::index::IndexError) -> Self {
        match e {
            crate::index::IndexError::TooManyRanks => RouteError::TooManyRanks,
        }
    }
}
