//! The caller's request ids. A Python frontend names its requests with its own string ids
//! (Dynamo's `request_id`, an OpenAI request id); the router names them with a
//! [`RequestId`]. This book maps the first to the second from a charging decision to its
//! `finish`, so `prefill_done("req-1")` and `finish("req-1")` work as the seed's handlers
//! call them. Without a caller id, a decision reports the router's own id (an `int`).
//!
//! Entries leave at `finish`, or, for a request never finished, when the router's request
//! TTL has passed (the router released its load then; [`RequestKeys::forget_expired`]
//! runs with every expiry tick), so the book is bounded by the requests in flight.

use std::collections::HashMap;
use std::sync::Mutex;

use kvroute_core::route::RequestId;

/// Caller id -> the router's id and when it was charged (router clock, ms).
#[derive(Default)]
pub(crate) struct RequestKeys {
    keys: Mutex<HashMap<String, (RequestId, u64)>>,
}

impl RequestKeys {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, (RequestId, u64)>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` names a request in flight.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.keys().contains_key(key)
    }

    /// Records `key` -> `id`; false (nothing changed) if `key` is already in flight.
    pub(crate) fn try_insert(&self, key: String, id: RequestId, now_ms: u64) -> bool {
        match self.keys().entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((id, now_ms));
                true
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<RequestId> {
        self.keys().get(key).map(|&(id, _)| id)
    }

    pub(crate) fn remove(&self, key: &str) -> Option<RequestId> {
        self.keys().remove(key).map(|(id, _)| id)
    }

    /// Drops the ids charged more than `ttl_ms` ago (the router has released them).
    pub(crate) fn forget_expired(&self, now_ms: u64, ttl_ms: u64) {
        self.keys().retain(|_, &mut (_, at)| now_ms.saturating_sub(at) <= ttl_ms);
    }
}
