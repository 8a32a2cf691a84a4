//! The `kvroute` Python package's native module, `kvroute._native`: kvroute's router
//! in-process for Python frontends (SGLang's and vLLM's API servers, Dynamo's Python
//! components, Ray Serve routers), where an HTTP hop per request would cost more than
//! the decision.
//!
//! # Shape
//! One class does the work, [`router::PyRouter`] (`kvroute.Router`), over
//! `kvroute_core::route::Router`; the package adds no routing logic of its own, only
//! conversions:
//!
//! - [`token_ids`]: a prompt from a list, an `array('I')` or a NumPy array (read in
//!   place through the buffer protocol when `uint32`);
//! - [`decision`]: `Decision` / `PdDecision`, views over the core's answers, with the
//!   SGLang request fields as dicts;
//! - [`request_keys`]: the caller's string request ids to the router's ids;
//! - [`event_objects`]: the engines' event objects as their msgpack payload, decoded by
//!   core's `engine_events` like the bytes a ZeroMQ socket delivers;
//! - [`background`]: per router, a tokio runtime with the expiry timer, the engines'
//!   ZeroMQ subscriptions (`kvroute_net::engine_ingest`) and QUIC listeners
//!   (`kvroute_net::transport`): no Python and no GIL on the event path;
//! - [`error`]: the `kvroute.KvrouteError` exception.
//!
//! # Threads and the GIL
//! Every call that hashes, looks up or maps events releases the GIL for that work; the
//! router is `Sync` (lock-free lookups, atomic load counters), so any number of Python
//! threads share one `Router`. A decision takes microseconds, so there is no asyncio
//! variant: call it from a coroutine directly.
//!
//! # Build
//! `pip install ./py` (maturin builds this crate as an abi3 extension for CPython
//! 3.11+); `maturin develop -m py/Cargo.toml` in a virtualenv for a debug build.

mod background;
mod decision;
mod error;
mod event_objects;
mod request_keys;
mod router;
mod token_ids;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_native")]
fn kvroute_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<router::PyRouter>()?;
    m.add_class::<decision::Decision>()?;
    m.add_class::<decision::PdDecision>()?;
    m.add("KvrouteError", m.py().get_type::<error::KvrouteError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
