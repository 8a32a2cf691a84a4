//! The daemon's expiry timer: runs the router's bounded expiry steps every
//! [`Router::expiry_interval_ms`], so requests past their TTL release their load and
//! approximate-mode blocks go when traffic stops (routing also sweeps, but only while
//! routes arrive). A step looks at a bounded number of entries; while more are due the
//! task yields to the runtime between steps instead of holding a worker thread. Each tick
//! also frees what the index retired (`Router::reclaim_idle`), so a quiet ingest gives
//! memory back too.

use std::sync::Arc;
use std::time::Duration;

use kvroute_core::route::Router;
use tokio::task::JoinHandle;

/// Spawns the timer; abort the handle to stop it.
pub fn start(router: Arc<Router>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(router.expiry_interval_ms()));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut released = 0;
            loop {
                let step = router.expire_step();
                released += step.requests_released;
                if step.done {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if released > 0 {
                tracing::debug!(released, "requests expired (no finish within request_ttl)");
            }
            router.reclaim_idle();
        }
    })
}
