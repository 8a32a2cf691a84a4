//! Free loopback ports for engines that bind one port per DP rank (base + rank).
//!
//! Ports are handed out below Linux's ephemeral range (32768 and up), where the kernel
//! never picks a client socket's local port: asking the kernel for a free port (binding
//! port 0) would return an ephemeral one, which any test's outgoing connection could
//! take before the engine binds it. Within this process each call gets a range of its
//! own (a shared cursor), and every port is checked free when handed out.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The range ports are handed out from.
const FIRST: u32 = 20_000;
const END: u32 = 32_000;

/// The next port to try; starts at a per-process offset so that test binaries run one
/// after another do not reuse the same ports (lingering sockets).
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port `p` such that `p..p + count` were all free on 127.0.0.1 just now and no other
/// call in this process got any of them.
pub fn free_base_port(count: u16) -> u16 {
    let count = u32::from(count.max(1));
    let span = END - FIRST;
    if NEXT.load(Ordering::Relaxed) == 0 {
        let offset = (std::process::id().wrapping_mul(7919) % span).max(1);
        // Relaxed by design: a racing first call just keeps the other's offset.
        let _ = NEXT.compare_exchange(0, offset, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        // Relaxed by design: the counter only has to give each caller distinct values.
        let start = NEXT.fetch_add(count, Ordering::Relaxed) % span;
        if start + count > span {
            continue;
        }
        let first = FIRST + start;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", (first + i) as u16)).is_ok()) {
            return first as u16;
        }
    }
}
