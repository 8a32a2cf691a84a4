//! Each simulated rank's KV-event stream: an [`EnginePublisher`] (the engines' PUB socket
//! and replay ROUTER, numbered batches) owned by one task that takes encoded batches off a
//! bounded queue and publishes them in queue order.
//!
//! The queue is filled only under the simulator's model lock, right after the admission
//! whose events it carries, so a rank's batches leave in admission order. A request is
//! admitted only while its rank's queue has room ([`RankEvents::has_room`]); a rank whose
//! publisher falls [`QUEUE_BATCHES`] behind refuses requests (503) rather than drop a
//! batch, which would leave the routers crediting blocks the rank no longer holds.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{EngineSimConfig, EngineSimError};
use crate::engine_zmq::{EngineEndpoint, EnginePublisher, EnginePublisherOptions};

/// Batches a rank's queue holds before its requests are refused.
pub const QUEUE_BATCHES: usize = 8192;

/// One rank's event stream, as the simulator's state holds it.
pub struct RankEvents {
    sender: mpsc::Sender<Bytes>,
    /// Where a router's subscriber connects.
    pub subscriber_endpoint: EngineEndpoint,
    /// Where a router's replay client connects, if the rank has a replay socket.
    pub replay_endpoint: Option<EngineEndpoint>,
    task: JoinHandle<()>,
}

impl RankEvents {
    /// Whether one more batch fits (checked under the model lock, before admitting).
    pub fn has_room(&self) -> bool {
        self.sender.capacity() > 0
    }

    /// Queues one encoded batch. Called under the model lock after [`Self::has_room`]
    /// said yes, so it cannot find the queue full; a closed queue (shutting down) drops it.
    pub fn queue(&self, payload: Bytes) {
        let _ = self.sender.try_send(payload);
    }

    /// Closes the queue, lets the task publish what is queued and close the sockets.
    pub async fn shutdown(self) {
        drop(self.sender);
        let _ = self.task.await;
    }
}

/// Binds every rank's sockets and starts its publishing task; an empty list when the
/// configuration publishes no events.
pub async fn start_rank_publishers(config: &EngineSimConfig) -> Result<Vec<RankEvents>, EngineSimError> {
    let Some(pub_port) = config.kv_events_port else {
        return Ok(Vec::new());
    };
    let dp_size = config.model.dp_size;
    let mut ranks = Vec::with_capacity(dp_size as usize);
    for rank in 0..dp_size {
        let pub_endpoint = rank_endpoint(&config.kv_events_host, pub_port, rank, dp_size)?;
        let replay_endpoint =
            config.replay_port.map(|port| rank_endpoint(&config.kv_events_host, port, rank, dp_size)).transpose()?;
        let publisher =
            EnginePublisher::bind(&pub_endpoint, replay_endpoint.as_deref(), EnginePublisherOptions::default())
                .await
                .map_err(|error| EngineSimError::Publisher { rank, reason: error.to_string() })?;
        let (sender, receiver) = mpsc::channel(QUEUE_BATCHES);
        let subscriber_endpoint = publisher.subscriber_endpoint();
        let replay_endpoint = publisher.replay_endpoint();
        let task = tokio::spawn(publish_queued(publisher, receiver, Bytes::from(config.topic.clone().into_bytes())));
        ranks.push(RankEvents { sender, subscriber_endpoint, replay_endpoint, task });
    }
    Ok(ranks)
}

/// `tcp://host:(port + rank)`; port 0 stays 0 (each rank binds a free port).
fn rank_endpoint(host: &str, port: u16, rank: u32, dp_size: u32) -> Result<String, EngineSimError> {
    if port == 0 {
        return Ok(format!("tcp://{host}:0"));
    }
    let rank_port = u32::from(port) + rank;
    u16::try_from(rank_port)
        .map(|rank_port| format!("tcp://{host}:{rank_port}"))
        .map_err(|_| EngineSimError::PortRange { port, dp_size })
}

async fn publish_queued(publisher: EnginePublisher, mut queue: mpsc::Receiver<Bytes>, topic: Bytes) {
    while let Some(payload) = queue.recv().await {
        publisher.publish(topic.clone(), payload).await;
    }
    publisher.shutdown().await;
}
