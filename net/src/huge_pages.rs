//! Transparent huge pages off for latency-critical processes (`kvroute serve`,
//! `kvroute publish`, the transport bench).
//!
//! Why: mimalloc backs its arenas with transparent huge pages where the kernel allows
//! them, and the first touch of a 2 MiB huge page zeroes all of it inside the page fault:
//! a few hundred microseconds during which the faulting thread (an index writer applying
//! an event, a publisher encoding one) stands still. While an index grows, these faults
//! come every few megabytes; the transport bench showed them as event-to-visible stalls
//! of several milliseconds. With 4 KiB pages the same zeroing comes in small pieces.
//! (Redis and MongoDB give the same advice for the same reason.) Lookups lose a little
//! TLB reach; the index benches (`replay`, `decision`) keep the kernel's default.
//!
//! `prctl(PR_SET_THP_DISABLE)` applies to this process and what it forks, whatever the
//! system-wide setting, and to memory mapped before the call too (checked at each fault).

/// Turns transparent huge pages off for this process. `Ok(false)` where the platform has
/// no such switch (not Linux); an error only if the kernel refused.
pub fn disable_transparent_huge_pages() -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes one integer flag and no pointers; the unused
        // arguments must be zero.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(false)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn the_process_reports_huge_pages_off_afterwards() {
        assert!(super::disable_transparent_huge_pages().unwrap());
        // SAFETY: PR_GET_THP_DISABLE takes no pointers; unused arguments are zero.
        let state = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(state, 1);
    }
}
