//! The router side of every ingest path, without I/O: per-rank bookkeeping that turns a
//! rank's numbered batches into index events, applying each event exactly once, in
//! order, across reconnects. Both sources use it: the QUIC transport (`kvroute-net`'s
//! `transport::ingest`) and the engines' own ZeroMQ streams ([`crate::engine_events`]).
//!
//! - [`RankCursor`] tracks the last applied sequence number of one rank (for one
//!   publisher incarnation) and classifies each batch: [`DeltaVerdict::Apply`] (with the
//!   number of leading duplicates to drop) or [`DeltaVerdict::Gap`]; it also follows dumps
//!   and says what `resume_after` to subscribe with. The engines' streams number batches,
//!   not events: their tracker feeds it batches of one.
//! - [`DumpCollector`] gathers a dump's blocks per tier (bounded) until `DumpEnd`.
//! - [`IngestSink`] is where events and dumps go (the `Router` implements it);
//!   [`allocate_event_ids`] numbers the events every path hands it.
//! - [`RankSession`] is the QUIC protocol of one rank over the three: the transport reads
//!   frames off the rank's stream and calls [`RankSession::on_frame`], which does what
//!   the table below says and returns a [`FrameError`] when the stream must close.
//!
//! What `RankSession` does, per rank:
//!
//! ```text
//! Hello{incarnation}     cursor.on_hello(incarnation); open the rank's stream and send
//!                        Subscribe{rank, resume_after: cursor.resume_after()}
//! Deltas{first_seq, ..}  match cursor.on_deltas(first_seq, events.len())?
//!                          Apply{skip} => apply events[skip..] to the batch's tier
//!                          Gap{..}     => close the stream, subscribe again
//! DumpBegin{as_of_seq}   cursor.on_dump_begin(as_of_seq)?; collector = DumpCollector::new(max)
//! DumpBlocks{tier, ..}   cursor.on_dump_blocks(blocks.len())?; collector.add(tier, &blocks)?
//! DumpEnd{as_of_seq, n}  cursor.on_dump_end(as_of_seq, n)?;
//!                        per tier: sink.replace_rank(tier, rank, &collector.finish()[tier])
//! stream ends / error    cursor.on_stream_closed(); the transport subscribes again
//! ```
//!
//! The index skips any event whose `event_id` is not above the rank's last one, and the
//! wire sequence numbers restart with each publisher incarnation and are not carried by
//! dump events: the router numbers the events it applies to the index itself, from one
//! process-wide counter ([`allocate_event_ids`]), independently of the wire's numbers.

mod cursor;
mod dump_collector;
mod event_ids;
mod rank_session;
mod sink;
#[cfg(test)]
mod tests;

pub use cursor::{CursorError, DeltaVerdict, RankCursor};
pub use dump_collector::{DumpCollector, DumpTooLarge};
pub use event_ids::allocate_event_ids;
pub use rank_session::{FrameContext, FrameEffect, FrameError, RankSession};
pub use sink::IngestSink;
