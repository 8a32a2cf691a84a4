//! One rank's subscriptions on one connection: open a bidirectional stream, send
//! `Subscribe { resume_after }` from the rank's session, feed every frame to the slot
//! ([`RankSlot::on_frame`](super::session::RankSlot::on_frame), which hands it to core's
//! `RankSession::on_frame`), and when the stream
//! fails (gap, bad frame, reset by the publisher) close it, count why, and subscribe
//! again: at once after progress, with backoff otherwise. Stops when the rank is claimed
//! by a newer connection, the publisher says goodbye, or the connection ends.

use std::sync::Arc;

use kvroute_core::ingest::FrameError;
use kvroute_core::wire::{Frame, GoodbyeCode, Subscribe};
use kvroute_core::RankKey;

use super::registry::{lock, SlotRef};
use super::session::StreamContext;
use super::ServerContext;
use crate::tls::WorkerGrant;
use crate::transport::error::StreamError;
use crate::transport::frame_io::{FrameReader, FrameWriter, ReadFault};
use crate::transport::metrics::bump;

/// One rank task. See the module docs.
pub(crate) struct RankTask {
    pub(crate) server: Arc<ServerContext>,
    pub(crate) conn: quinn::Connection,
    pub(crate) rank: RankKey,
    pub(crate) slot: SlotRef,
    pub(crate) generation: u64,
    pub(crate) grant: Arc<WorkerGrant>,
}

impl RankTask {
    pub(crate) async fn run(self) {
        let backoff = self.server.config.resubscribe;
        let mut delay = backoff.initial;
        loop {
            let resume_after = {
                let slot = lock(&self.slot);
                if slot.generation != self.generation {
                    return;
                }
                slot.session.resume_after()
            };
            if resume_after.is_some() {
                bump(&self.server.metrics.resumes);
            }
            let (error, progressed) = self.subscribe_once(resume_after).await;
            {
                let mut slot = lock(&self.slot);
                if slot.generation == self.generation {
                    slot.session.abandon_stream();
                }
            }
            let metrics = &self.server.metrics;
            match &error {
                StreamError::Superseded | StreamError::ConnectionLost(_) => return,
                StreamError::Frame(FrameError::Goodbye(code)) if *code == GoodbyeCode::NORMAL => return,
                error if error.is_gap() => bump(&metrics.gaps),
                StreamError::Frame(FrameError::Unauthorized(_)) => bump(&metrics.rejected_unauthorized),
                error if error.is_rejected_frame() => bump(&metrics.rejected_frames),
                _ => {}
            }
            tracing::debug!(rank = %self.rank, %error, "rank stream closed; subscribing again");
            if progressed {
                delay = backoff.initial;
            } else {
                tokio::time::sleep(delay).await;
                delay = backoff.next(delay);
            }
        }
    }

    /// One subscription, until its stream fails; returns why, and whether any frame was
    /// applied.
    async fn subscribe_once(&self, resume_after: Option<u64>) -> (StreamError, bool) {
        let (send, recv) = match self.conn.open_bi().await {
            Ok(streams) => streams,
            Err(error) => return (StreamError::ConnectionLost(error.to_string()), false),
        };
        let mut writer = FrameWriter::new(send);
        let subscribe = Frame::Subscribe(Subscribe { rank: self.rank, resume_after });
        if let Err(error) = writer.send(&subscribe).await {
            return (StreamError::ConnectionLost(error.to_string()), false);
        }
        // Nothing more goes this way.
        let _ = writer.send.finish();
        let config = &self.server.config;
        let mut reader = FrameReader::new(recv, config.max_frame_len);
        let context = StreamContext {
            rank: self.rank,
            generation: self.generation,
            grant: &self.grant,
            sink: &*self.server.sink,
            metrics: &self.server.metrics,
            max_dump_blocks: config.max_dump_blocks,
        };
        let mut progressed = false;
        loop {
            let error = match reader.next().await {
                Ok(Some(frame)) => match lock(&self.slot).on_frame(frame, &context) {
                    Ok(()) => {
                        progressed = true;
                        continue;
                    }
                    Err(error) => error,
                },
                Ok(None) => StreamError::Finished,
                Err(ReadFault::Wire(error)) => StreamError::Wire(error),
                Err(ReadFault::Stream(quinn::ReadError::Reset(code))) => StreamError::Reset(code.into_inner()),
                Err(ReadFault::Stream(error)) => StreamError::ConnectionLost(error.to_string()),
            };
            let code = match &error {
                error if error.is_gap() => GoodbyeCode::SEQUENCE_GAP,
                StreamError::Frame(FrameError::Goodbye(_)) | StreamError::Finished | StreamError::Superseded => {
                    GoodbyeCode::NORMAL
                }
                _ => GoodbyeCode::PROTOCOL_ERROR,
            };
            reader.stop(code);
            return (error, progressed);
        }
    }
}
