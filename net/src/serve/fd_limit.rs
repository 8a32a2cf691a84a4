//! The process's open-files limit against the HTTP connection cap. Each HTTP connection
//! holds a file descriptor (QUIC publishers share the one UDP socket), so a cap above the
//! limit turns a flood of idle connections into failed `accept`s, for `/healthz` too,
//! instead of the counted refusals the cap is for. At start the soft `RLIMIT_NOFILE` is
//! raised towards what the cap needs (up to the hard limit); when the limit is still
//! lower, the cap is lowered to fit under it, with a warning that says which setting to
//! change.

/// Descriptors kept apart from HTTP connections: the listeners, the QUIC socket, log and
/// snapshot files, the engines' ZeroMQ sockets, the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The HTTP connection cap that fits the open-files limit: `max_connections`, or less
/// when the limit (raised as far as allowed) cannot hold it plus `reserved`.
pub fn fit_http_connections(max_connections: usize, reserved: u64) -> usize {
    let wanted = (max_connections as u64).saturating_add(reserved);
    let limit = match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-files limit; keeping max_http_connections");
            return max_connections;
        }
    };
    if limit >= wanted {
        return max_connections;
    }
    let fitted = usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX).max(1);
    tracing::warn!(
        open_files_limit = limit,
        max_http_connections = max_connections,
        lowered_to = fitted,
        "the open-files limit (ulimit -n, LimitNOFILE=) is below max_http_connections plus {reserved} \
         descriptors of the daemon's own: HTTP connections capped lower, so that a flood is refused and \
         counted rather than failing accept"
    );
    fitted
}
