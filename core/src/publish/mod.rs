//! The publisher side of the KV event transport, without I/O: what a worker-side
//! publisher keeps per rank so that any router can subscribe, and resume after a
//! reconnect without missing or repeating an event.
//!
//! - [`RankPublisher`] numbers the rank's events `1, 2, 3, ...` ([`publish`] /
//!   [`publish_in`]), keeps the latest in a [`DeltaRing`] and the rank's current blocks
//!   per tier in a [`RankState`], and answers a `Subscribe { resume_after }` with
//!   [`SubscribeReply::Resume`] (the deltas after it, when the ring still holds them all)
//!   or [`SubscribeReply::Dump`] (the whole block set as of a sequence number; live deltas
//!   continue after it).
//! - [`RankState`] mirrors the router index's rules exactly, so a dump replayed on an
//!   empty rank gives the router the state the deltas would have given it (see its docs
//!   for removed blocks whose descendants are still held).
//! - [`delta_frames`] and [`dump_frames`] cut the output into frames no longer than the
//!   peer's maximum frame length.
//!
//! Sequence numbers belong to one publisher incarnation (announced in `Hello`): a restarted
//! publisher starts again from 1 under a new incarnation, and routers ask it for dumps.
//!
//! [`publish`]: RankPublisher::publish
//! [`publish_in`]: RankPublisher::publish_in

mod frames;
mod publisher;
mod rank_state;
mod ring;
#[cfg(test)]
pub(crate) mod tests;

pub use frames::{delta_frames, dump_frames, DeltaTooLarge};
pub use publisher::{PublisherConfig, RankDump, RankPublisher, SubscribeReply, TierDump};
pub use rank_state::RankState;
pub use ring::{Delta, DeltaRing};
