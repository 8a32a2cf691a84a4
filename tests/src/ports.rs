//! Free loopback ports for engines that bind one port per DP rank (base + rank).

use std::net::TcpListener;

/// A port `p` such that `p..p + count` were all free on 127.0.0.1 just now (another process
/// may still take one before the caller binds: tests bind at once).
pub fn free_base_port(count: u16) -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if first < u16::MAX - count && (1..count).all(|i| TcpListener::bind(("127.0.0.1", first + i)).is_ok()) {
            return first;
        }
    }
}
