//! [`DeltaEncoder`]: cuts a run of deltas into `Deltas` frames (consecutive sequence
//! numbers of one tier, at most `max_frame_len` bytes each) into a [`FrameWriter`]'s
//! buffer, applying the fault-injection dice on the way when configured.

use kvroute_core::publish::Delta;
use kvroute_core::wire::{self, Deltas, EncodeError, Frame};
use kvroute_core::RankKey;

use super::fault::{FaultAction, FaultDice};
use super::metrics::PublisherMetrics;
use crate::transport::frame_io::FrameWriter;
use crate::transport::metrics::{add, bump};

/// Builds `Deltas` frames for one rank. See the module docs.
pub(crate) struct DeltaEncoder {
    rank: RankKey,
    max_frame_len: usize,
    dice: Option<FaultDice>,
    /// The frame being filled and its encoded length.
    current: Option<(Deltas, usize)>,
}

impl DeltaEncoder {
    pub(crate) fn new(rank: RankKey, max_frame_len: u32, dice: Option<FaultDice>) -> Self {
        DeltaEncoder { rank, max_frame_len: max_frame_len as usize, dice, current: None }
    }

    /// Adds a delta (subject to the dice).
    pub(crate) fn push(
        &mut self,
        delta: Delta,
        writer: &mut FrameWriter,
        metrics: &PublisherMetrics,
    ) -> Result<(), EncodeError> {
        match self.dice.as_mut().map_or(FaultAction::Keep, FaultDice::roll) {
            FaultAction::Keep => self.append(delta, writer, metrics),
            FaultAction::Drop => {
                bump(&metrics.fault_dropped);
                Ok(())
            }
            FaultAction::Duplicate => {
                bump(&metrics.fault_duplicated);
                self.append(delta.clone(), writer, metrics)?;
                self.append(delta, writer, metrics)
            }
        }
    }

    fn append(
        &mut self,
        delta: Delta,
        writer: &mut FrameWriter,
        metrics: &PublisherMetrics,
    ) -> Result<(), EncodeError> {
        let event_len = wire::event_encoded_len(&delta.data);
        if let Some((batch, len)) = &mut self.current {
            let follows =
                batch.tier == delta.tier && batch.last_seq().and_then(|s| s.checked_add(1)) == Some(delta.seq);
            if follows && len.saturating_add(event_len) <= self.max_frame_len {
                batch.events.push(delta.data);
                *len += event_len;
                return Ok(());
            }
        }
        self.finish(writer, metrics)?;
        let batch = Deltas { rank: self.rank, tier: delta.tier, first_seq: delta.seq, events: vec![delta.data] };
        self.current = Some((batch, wire::DELTAS_OVERHEAD.saturating_add(event_len)));
        Ok(())
    }

    /// Encodes the frame being filled, if any.
    pub(crate) fn finish(&mut self, writer: &mut FrameWriter, metrics: &PublisherMetrics) -> Result<(), EncodeError> {
        if let Some((batch, _)) = self.current.take() {
            let events = batch.events.len() as u64;
            writer.push(&Frame::Deltas(batch))?;
            add(&metrics.events_sent, events);
            bump(&metrics.deltas_frames_sent);
        }
        Ok(())
    }
}
