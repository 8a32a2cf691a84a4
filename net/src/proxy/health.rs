//! Whether an upstream worker takes requests: a small state machine per worker, driven by
//! the outcomes of the proxy's requests and of health probes, on a clock the caller hands
//! in (`now`), so it is tested without waiting.
//!
//! - Up: every failure (refused connection, timeout, 5xx before the first byte) adds one
//!   to a run of consecutive failures, every success resets it. At
//!   `failures_before_down` the worker goes down.
//! - Down: the proxy's decisions exclude the worker's ranks. A probe (`GET /health`) is
//!   due `backoff` after going down; each failed probe doubles the backoff up to
//!   `max_backoff`; the first successful probe (or request) brings the worker back up
//!   with its failure run and backoff reset.

use std::time::{Duration, Instant};

/// When a worker is taken out and how often it is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that take a worker out of decisions.
    pub failures_before_down: u32,
    /// Wait before the first probe of a worker that went down.
    pub first_backoff: Duration,
    /// Longest wait between probes.
    pub max_backoff: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            failures_before_down: 3,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// One worker's health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerHealth {
    consecutive_failures: u32,
    /// `Some` while down: when the next probe is due, and the wait after it fails.
    down: Option<(Instant, Duration)>,
}

impl WorkerHealth {
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// A request or probe succeeded. Returns whether the worker came back up.
    pub fn record_success(&mut self) -> bool {
        let was_down = self.down.take().is_some();
        self.consecutive_failures = 0;
        was_down
    }

    /// A request failed at `now`. Returns whether the worker went down with it.
    pub fn record_failure(&mut self, now: Instant, policy: &HealthPolicy) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.down.is_none() && self.consecutive_failures >= policy.failures_before_down.max(1) {
            self.down = Some((now + policy.first_backoff, policy.first_backoff));
            return true;
        }
        false
    }

    /// Whether a probe is due at `now` (only while down).
    pub fn probe_due(&self, now: Instant) -> bool {
        self.down.is_some_and(|(due, _)| now >= due)
    }

    /// A probe failed at `now`: the next one waits twice as long, up to the maximum.
    pub fn probe_failed(&mut self, now: Instant, policy: &HealthPolicy) {
        if let Some((_, backoff)) = self.down {
            let next = (backoff * 2).min(policy.max_backoff.max(policy.first_backoff));
            self.down = Some((now + next, next));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_goes_down_after_a_run_of_failures_and_backs_off_until_a_probe_answers() {
        let policy = HealthPolicy {
            failures_before_down: 3,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        let t0 = Instant::now();
        let mut health = WorkerHealth::default();
        assert!(!health.record_failure(t0, &policy));
        health.record_success();
        assert!(!health.record_failure(t0, &policy));
        assert!(!health.record_failure(t0, &policy));
        assert!(!health.is_down(), "a success in between reset the run");
        assert!(health.record_failure(t0, &policy));
        assert!(health.is_down());
        assert!(!health.record_failure(t0, &policy), "already down");
        assert!(!health.probe_due(t0 + Duration::from_millis(999)));
        assert!(health.probe_due(t0 + Duration::from_secs(1)));
        // Failed probes: 2 s, 4 s, then the 5 s cap.
        let mut now = t0 + Duration::from_secs(1);
        for wait in [2, 4, 5, 5] {
            health.probe_failed(now, &policy);
            assert!(!health.probe_due(now + Duration::from_secs(wait) - Duration::from_millis(1)));
            now += Duration::from_secs(wait);
            assert!(health.probe_due(now));
        }
        assert!(health.record_success());
        assert_eq!((health.is_down(), health.consecutive_failures()), (false, 0));
        assert!(!health.probe_due(now + Duration::from_secs(60)), "no probes while up");
    }
}
