//! One publisher's link to one router: connect (with backoff), send `Hello` on a
//! unidirectional control stream, serve every rank stream the router opens, and connect
//! again when the connection ends. A link follows the publisher's [`LinkState`]: offline
//! (test hook) drops the connection and waits; shutdown says `Goodbye` and closes.

use std::sync::Arc;
use std::time::Duration;

use kvroute_core::wire::{Frame, GoodbyeCode, Hello, VERSION};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{subscription, Shared};
use crate::transport::config::Backoff;
use crate::transport::frame_io::FrameWriter;
use crate::transport::metrics::bump;
use crate::transport::publisher::config::RouterTarget;

/// How long a shutting-down link waits for its streams' goodbyes and the router's close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What every link of a publisher should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    Online,
    /// Test hook: stay disconnected.
    Offline,
    Shutdown,
}

/// Why a connection ended.
enum Ended {
    Lost,
    Offline,
    Shutdown,
}

/// Runs the link to `target` until shutdown.
pub(crate) async fn run(
    shared: Arc<Shared>,
    target: RouterTarget,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    mut state: watch::Receiver<LinkState>,
) {
    let backoff: Backoff = shared.config.reconnect;
    let mut delay = backoff.initial;
    loop {
        // Wait while offline.
        let current = match state.wait_for(|s| *s != LinkState::Offline).await {
            Ok(current) => *current,
            Err(_) => LinkState::Shutdown,
        };
        if current == LinkState::Shutdown {
            return;
        }
        // Racing the state: a shutdown (or the offline test hook) must not wait for a
        // handshake with a router that does not answer, which lasts until the idle timeout.
        let attempt = tokio::select! {
            attempt = connect(&endpoint, &client, &target) => attempt,
            _ = state.wait_for(|s| *s != LinkState::Online) => continue,
        };
        match attempt {
            Ok(conn) => {
                bump(&shared.metrics.connects);
                tracing::debug!(router = %target.addr, "connected");
                delay = backoff.initial;
                match serve(&shared, &conn, &mut state).await {
                    Ended::Shutdown => return,
                    Ended::Offline => continue,
                    Ended::Lost => tracing::debug!(router = %target.addr, "connection lost"),
                }
            }
            Err(error) => {
                bump(&shared.metrics.connect_failures);
                tracing::debug!(router = %target.addr, %error, "connect failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            changed = state.changed() => if changed.is_err() { return },
        }
        delay = backoff.next(delay);
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    target: &RouterTarget,
) -> Result<quinn::Connection, String> {
    let connecting =
        endpoint.connect_with(client.clone(), target.addr, &target.server_name).map_err(|e| e.to_string())?;
    connecting.await.map_err(|e| e.to_string())
}

/// Serves one connection until it ends.
async fn serve(shared: &Arc<Shared>, conn: &quinn::Connection, state: &mut watch::Receiver<LinkState>) -> Ended {
    let mut control = match conn.open_uni().await {
        Ok(send) => FrameWriter::new(send),
        Err(_) => return Ended::Lost,
    };
    let hello = Frame::Hello(Hello {
        max_version: VERSION,
        incarnation: shared.incarnation,
        publisher_name: shared.config.name.clone(),
        ranks: shared.config.ranks.clone(),
    });
    if let Err(error) = control.send(&hello).await {
        tracing::debug!(%error, "cannot send Hello");
        return Ended::Lost;
    }
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(subscription::serve(shared.clone(), send, recv));
                }
                Err(_) => return Ended::Lost,
            },
            changed = state.changed() => {
                let next = if changed.is_ok() { *state.borrow_and_update() } else { LinkState::Shutdown };
                match next {
                    LinkState::Online => {}
                    LinkState::Offline => {
                        conn.close(GoodbyeCode::NORMAL.0.into(), b"offline");
                        return Ended::Offline;
                    }
                    LinkState::Shutdown => {
                        // The hubs closed their queues: each stream says goodbye and finishes.
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
                            while streams.join_next().await.is_some() {}
                        })
                        .await;
                        control.goodbye(GoodbyeCode::NORMAL, "publisher shutting down").await;
                        // The router closes the connection when it reads the goodbye.
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.closed()).await;
                        conn.close(GoodbyeCode::NORMAL.0.into(), b"shutdown");
                        return Ended::Shutdown;
                    }
                }
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}
