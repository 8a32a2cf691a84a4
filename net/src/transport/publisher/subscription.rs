//! One router's subscription to one rank, on the publisher side: read its `Subscribe`,
//! register with the rank's [`RankHub`](super::hub::RankHub), send the starting point (a
//! dump or the resumed deltas), then live deltas in batches, and a `Heartbeat` whenever
//! the stream idles. Ends when the router closes the stream or the connection, when the
//! subscriber is cut (stream reset), or at shutdown (`Goodbye`, then finish).

use std::sync::Arc;
use std::time::Duration;

use kvroute_core::publish::{dump_frames, Delta, SubscribeReply};
use kvroute_core::wire::{self, Frame, GoodbyeCode, Heartbeat, Subscribe};
use kvroute_core::RankKey;
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};

use super::deltas::DeltaEncoder;
use super::fault::FaultDice;
use super::hub::{CutSignal, Subscription};
use super::Shared;
use crate::transport::frame_io::{FrameReader, FrameWriter, ReadFault, WriterFault};
use crate::transport::metrics::bump;

/// The router must send its `Subscribe` within this time of opening the stream.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest frame accepted from a router (a `Subscribe` is 31 bytes).
const ROUTER_MAX_FRAME_LEN: u32 = 4096;
/// Stream error code of a subscriber cut for falling behind.
pub(crate) const CUT_CODE: GoodbyeCode = GoodbyeCode::SEQUENCE_GAP;

/// Serves one rank stream the router opened.
pub(crate) async fn serve(shared: Arc<Shared>, send: quinn::SendStream, recv: quinn::RecvStream) {
    let mut writer = FrameWriter::new(send);
    let mut reader = FrameReader::new(recv, ROUTER_MAX_FRAME_LEN);
    let subscribe = match timeout(SUBSCRIBE_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(Frame::Subscribe(subscribe)))) => subscribe,
        Ok(Ok(Some(other))) => {
            let message = format!("expected Subscribe, got {:?}", other.frame_type());
            writer.goodbye(GoodbyeCode::PROTOCOL_ERROR, &message).await;
            return;
        }
        Ok(Err(ReadFault::Wire(error))) => {
            writer.goodbye(GoodbyeCode::PROTOCOL_ERROR, &error.to_string()).await;
            return;
        }
        Ok(Ok(None)) | Ok(Err(ReadFault::Stream(_))) => return,
        Err(_) => {
            writer.goodbye(GoodbyeCode::PROTOCOL_ERROR, "no Subscribe in time").await;
            return;
        }
    };
    let Subscribe { rank, resume_after } = subscribe;
    let Some(hub) = shared.hubs.get(&rank) else {
        writer.goodbye(GoodbyeCode::UNKNOWN_RANK, &format!("rank {rank} is not published here")).await;
        return;
    };
    let subscription = hub.subscribe(resume_after, shared.config.subscriber_queue);
    bump(&shared.metrics.subscriptions);
    match &subscription.reply {
        SubscribeReply::Dump(_) => bump(&shared.metrics.dumps_sent),
        SubscribeReply::Resume(_) => bump(&shared.metrics.resumes_served),
    }
    let dice = shared.config.fault.map(|fault| FaultDice::new(fault, shared.next_stream_number()));
    let encoder = DeltaEncoder::new(rank, shared.config.max_frame_len, dice);
    let mut stream = RankStream { shared: &shared, rank, writer, encoder };
    match stream.run(subscription).await {
        Ok(()) => {}
        Err(error) => tracing::debug!(%rank, %error, "rank stream ended"),
    }
}

/// The writing half of one subscription.
struct RankStream<'a> {
    shared: &'a Shared,
    rank: RankKey,
    writer: FrameWriter,
    encoder: DeltaEncoder,
}

impl RankStream<'_> {
    async fn run(&mut self, subscription: Subscription) -> Result<(), WriterFault> {
        let Subscription { reply, last_seq, mut queue, cut } = subscription;
        let sent = self.send_start(reply, &cut).await?;
        if !sent {
            return Ok(());
        }
        let mut sent_up_to = last_seq;
        let mut batch: Vec<Arc<Delta>> = Vec::new();
        let heartbeat_interval = self.shared.config.heartbeat_interval;
        loop {
            if cut.is_raised() {
                self.writer.reset(CUT_CODE);
                return Ok(());
            }
            let first = match timeout(heartbeat_interval, queue.recv()).await {
                Err(_idle) => {
                    let heartbeat = Frame::Heartbeat(Heartbeat { rank: self.rank, last_seq: sent_up_to });
                    self.writer.push(&heartbeat).map_err(WriterFault::Encode)?;
                    bump(&self.shared.metrics.heartbeats_sent);
                    if !self.flush_unless_cut(&cut).await? {
                        return Ok(());
                    }
                    continue;
                }
                Ok(None) if cut.is_raised() => {
                    self.writer.reset(CUT_CODE);
                    return Ok(());
                }
                Ok(None) => {
                    self.writer.goodbye(GoodbyeCode::NORMAL, "publisher shutting down").await;
                    return Ok(());
                }
                Ok(Some(delta)) => delta,
            };
            self.gather(first, &mut queue, &mut batch).await;
            for delta in batch.drain(..) {
                sent_up_to = delta.seq;
                let delta = Arc::try_unwrap(delta).unwrap_or_else(|shared| (*shared).clone());
                self.encoder.push(delta, &mut self.writer, &self.shared.metrics).map_err(WriterFault::Encode)?;
            }
            self.encoder.finish(&mut self.writer, &self.shared.metrics).map_err(WriterFault::Encode)?;
            if !self.flush_unless_cut(&cut).await? {
                return Ok(());
            }
        }
    }

    /// Sends the dump or the resumed deltas. `false` when the subscriber was cut meanwhile.
    async fn send_start(&mut self, reply: SubscribeReply, cut: &CutSignal) -> Result<bool, WriterFault> {
        let max_bytes = self.shared.config.batch.max_bytes;
        match reply {
            SubscribeReply::Resume(deltas) => {
                for delta in deltas {
                    self.encoder.push(delta, &mut self.writer, &self.shared.metrics).map_err(WriterFault::Encode)?;
                    if self.writer.buffered() >= max_bytes {
                        self.encoder.finish(&mut self.writer, &self.shared.metrics).map_err(WriterFault::Encode)?;
                        if !self.flush_unless_cut(cut).await? {
                            return Ok(false);
                        }
                    }
                }
                self.encoder.finish(&mut self.writer, &self.shared.metrics).map_err(WriterFault::Encode)?;
            }
            SubscribeReply::Dump(dump) => {
                for frame in dump_frames(self.rank, &dump, self.shared.config.max_frame_len) {
                    self.writer.push(&frame).map_err(WriterFault::Encode)?;
                    if self.writer.buffered() >= max_bytes && !self.flush_unless_cut(cut).await? {
                        return Ok(false);
                    }
                }
            }
        }
        self.flush_unless_cut(cut).await
    }

    /// Writes out the buffer unless the subscriber is cut first (then the stream is reset
    /// and `false` returned), so a writer stuck on a router that stopped reading is freed.
    async fn flush_unless_cut(&mut self, cut: &CutSignal) -> Result<bool, WriterFault> {
        tokio::select! {
            biased;
            () = cut.raised() => {
                self.writer.reset(CUT_CODE);
                Ok(false)
            }
            written = self.writer.flush() => written.map(|()| true).map_err(WriterFault::Write),
        }
    }

    /// Collects `first` and what follows it into `batch`, within the batch bounds.
    async fn gather(&self, first: Arc<Delta>, queue: &mut mpsc::Receiver<Arc<Delta>>, batch: &mut Vec<Arc<Delta>>) {
        let limits = self.shared.config.batch;
        let deadline = Instant::now() + limits.max_delay;
        let mut bytes = wire::event_encoded_len(&first.data);
        batch.push(first);
        loop {
            while batch.len() < limits.max_events && bytes < limits.max_bytes {
                match queue.try_recv() {
                    Ok(delta) => {
                        bytes = bytes.saturating_add(wire::event_encoded_len(&delta.data));
                        batch.push(delta);
                    }
                    Err(_) => break,
                }
            }
            if batch.len() >= limits.max_events || bytes >= limits.max_bytes || limits.max_delay.is_zero() {
                return;
            }
            match timeout_at(deadline, queue.recv()).await {
                Ok(Some(delta)) => {
                    bytes = bytes.saturating_add(wire::event_encoded_len(&delta.data));
                    batch.push(delta);
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}
