//! The router side of the KV event transport, without I/O: per-rank bookkeeping that
//! turns the frames of a rank's stream into index events, applying each event exactly
//! once, in order, across reconnects.
//!
//! - [`RankCursor`] tracks the last applied sequence number of one rank (for one
//!   publisher incarnation) and classifies each `Deltas` batch: [`DeltaVerdict::Apply`]
//!   (with the number of leading duplicates to drop) or [`DeltaVerdict::Gap`]; it also
//!   follows dumps and says what `resume_after` to subscribe with.
//! - [`DumpReplay`] turns dump blocks into `Stored` events (one per chain) and, at the end,
//!   the removal of the dump's placeholder blocks.
//!
//! How the transport drives them, per rank:
//!
//! ```text
//! Hello{incarnation}     cursor.on_hello(incarnation); open the rank's stream and send
//!                        Subscribe{rank, resume_after: cursor.resume_after()}
//! Deltas{first_seq, ..}  match cursor.on_deltas(first_seq, events.len())?
//!                          Apply{skip} => apply events[skip..] to the batch's tier
//!                          Gap{..}     => close the stream, subscribe again
//! DumpBegin{as_of_seq}   cursor.on_dump_begin(as_of_seq)?; apply Cleared to every tier;
//!                        replay = DumpReplay::new()
//! DumpBlocks{tier, ..}   cursor.on_dump_blocks(blocks.len())?;
//!                        apply replay.stored_events(tier, &blocks)
//! DumpEnd{as_of_seq, n}  cursor.on_dump_end(as_of_seq, n)?; apply replay.finish()
//! stream ends / error    cursor.on_stream_closed(); subscribe again
//! ```
//!
//! The index skips any event whose `event_id` is not above the rank's last one, and the
//! wire sequence numbers restart with each publisher incarnation and are not carried by
//! dump events: the router numbers the events it applies to the index itself (one
//! counter per rank, increasing forever), independently of the wire's sequence numbers.

mod cursor;
mod dump_replay;
#[cfg(test)]
mod tests;

pub use cursor::{CursorError, DeltaVerdict, RankCursor};
pub use dump_replay::DumpReplay;
