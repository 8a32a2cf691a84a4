//! The KV hand-off between a simulated prefill server and a simulated decode server, as
//! SGLang's bootstrap server arranges it, with the room rule checked on every request.
//!
//! Prefill side: a request that names no DP rank is served on `bootstrap_room % dp_size`
//! (SGLang's prefill following the room; by load with `--no-follow-bootstrap-room`), and [`BootstrapRooms`] maps a request's
//! `bootstrap_room` to the rank that
//! prefilled it and the time its KV is complete (the prefill's end). `GET
//! /sim/bootstrap/{room}` ([`lookup`]) waits until the room is known (a decode request is
//! sent at the same time as its prefill, so it may ask first) and its KV complete, then
//! answers `{room, rank, dp_size}`; 404 if the room does not appear within
//! [`LOOKUP_WAIT`].
//!
//! Decode side ([`fetch`]): asks the prefill server the request names, then checks where
//! the KV is against where SGLang's decode would look for it: `disagg_prefill_dp_rank`
//! when the request gives it, else `room % dp_size` when the prefill server follows the
//! room (the default; the room rule is then also checked when the rank is named), else
//! (`--no-follow-bootstrap-room`) the rank the bootstrap server reports. A mismatch, a
//! missing field or an unreachable prefill server is an error for that request.
//!
//! Rooms are kept [`ROOM_TTL`] after they were recorded; older ones are pruned when the
//! table passes [`MAX_ROOMS`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::config::DisaggregationMode;
use super::serving::SimState;
use crate::http_client::HttpClient;
use crate::openai_error::OpenAiError;

/// Longest a lookup waits for its room to appear.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(10);
/// How long a room is kept.
pub const ROOM_TTL: Duration = Duration::from_secs(120);
/// Rooms held before old ones are pruned.
pub const MAX_ROOMS: usize = 100_000;

/// The disaggregation fields of a request (SGLang's names).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct DisaggFields {
    pub bootstrap_host: Option<String>,
    pub bootstrap_port: Option<u16>,
    pub bootstrap_room: Option<u64>,
    pub disagg_prefill_dp_rank: Option<u32>,
}

impl DisaggFields {
    /// A room must fit SGLang's `0..=i64::MAX`.
    pub fn check(&self) -> Result<(), OpenAiError> {
        if self.bootstrap_room.is_some_and(|room| room > i64::MAX as u64) {
            return Err(OpenAiError::bad_request("bootstrap_room must be from 0 to 2^63 - 1"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Room {
    rank: u32,
    /// When its KV is complete, on the simulator's clock.
    ready_at: Duration,
    recorded_at: Duration,
}

/// The prefill side's rooms.
#[derive(Default)]
pub struct BootstrapRooms {
    rooms: Mutex<HashMap<u64, Room>>,
}

impl BootstrapRooms {
    /// Records `room` as prefilled on `rank`, complete at `ready_at` (`now` is the clock).
    pub fn record(&self, room: u64, rank: u32, ready_at: Duration, now: Duration) {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if rooms.len() >= MAX_ROOMS {
            rooms.retain(|_, entry| now.saturating_sub(entry.recorded_at) < ROOM_TTL);
        }
        rooms.insert(room, Room { rank, ready_at, recorded_at: now });
    }

    fn get(&self, room: u64) -> Option<Room> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner).get(&room).copied()
    }
}

/// `GET /sim/bootstrap/{room}` on a prefill server (see the module doc).
pub async fn lookup(State(state): State<Arc<SimState>>, Path(room): Path<u64>) -> Result<Json<Value>, OpenAiError> {
    if state.config.disaggregation != DisaggregationMode::Prefill {
        return Err(OpenAiError::bad_request("this server is not a prefill server (--disaggregation-mode prefill)"));
    }
    let deadline = tokio::time::Instant::now() + LOOKUP_WAIT;
    let found = loop {
        if let Some(found) = state.rooms.get(room) {
            break found;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(OpenAiError::not_found(format!("no request with bootstrap_room {room} was prefilled here")));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep_until(state.due_instant(found.ready_at)).await;
    Ok(Json(json!({"room": room, "rank": found.rank, "dp_size": state.config.model.dp_size,
        "follows_room": state.config.follow_bootstrap_room})))
}

/// On a decode server: fetches the KV of the request's room from the prefill server it
/// names and checks it sits where the room rule says. Returns the prefill rank.
pub async fn fetch(client: &HttpClient, fields: &DisaggFields) -> Result<u32, OpenAiError> {
    let (Some(host), Some(port), Some(room)) = (&fields.bootstrap_host, fields.bootstrap_port, fields.bootstrap_room)
    else {
        return Err(OpenAiError::bad_request(
            "a decode server needs bootstrap_host, bootstrap_port and bootstrap_room (the simulator's prefill servers \
             serve the bootstrap on their HTTP port)",
        ));
    };
    let failed = |reason: String| {
        OpenAiError::with_status(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("KV transfer for room {room} failed: {reason}"),
        )
    };
    let url = format!("http://{host}:{port}/sim/bootstrap/{room}");
    let (status, body) =
        client.get(&url, LOOKUP_WAIT + Duration::from_secs(60)).await.map_err(|e| failed(format!("{url}: {e}")))?;
    if !status.is_success() {
        return Err(failed(format!("{url} answered {status}: {}", String::from_utf8_lossy(&body))));
    }
    let answer: Value = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
    let (Some(rank), Some(dp_size)) = (answer["rank"].as_u64(), answer["dp_size"].as_u64().filter(|&n| n > 0)) else {
        return Err(failed(format!("{url} answered without rank and dp_size: {answer}")));
    };
    // Where SGLang's decode looks: the named rank, else the room's when the prefill server
    // follows the room, else wherever the bootstrap server says (here: where it is).
    let follows_room = answer["follows_room"].as_bool().unwrap_or(true);
    let expected = match fields.disagg_prefill_dp_rank {
        Some(named) => u64::from(named),
        None if follows_room => room % dp_size,
        None => rank,
    };
    if expected != rank {
        return Err(failed(format!(
            "the decode side looks for the KV on prefill rank {expected} (disagg_prefill_dp_rank {:?}, room % {dp_size} = {}) but \
             it is on rank {rank}",
            fields.disagg_prefill_dp_rank,
            room % dp_size
        )));
    }
    if follows_room && room % dp_size != rank {
        return Err(failed(format!("room {room} % {dp_size} = {} is not the prefill rank {rank}", room % dp_size)));
    }
    Ok(rank as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_kept_and_pruned_past_the_cap() {
        let rooms = BootstrapRooms::default();
        rooms.record(7, 3, Duration::from_millis(5), Duration::ZERO);
        assert_eq!(rooms.get(7).map(|room| room.rank), Some(3));
        assert!(rooms.get(8).is_none());
        for room in 0..MAX_ROOMS as u64 {
            rooms.record(1000 + room, 0, Duration::ZERO, Duration::ZERO);
        }
        // The table is full of old rooms: the next record prunes them.
        rooms.record(1, 1, Duration::ZERO, ROOM_TTL + Duration::from_secs(1));
        assert!(rooms.get(7).is_none());
        assert_eq!(rooms.get(1).map(|room| room.rank), Some(1));
        assert!(DisaggFields { bootstrap_room: Some(u64::MAX), ..DisaggFields::default() }.check().is_err());
    }
}
