//! Engine-cache simulator: being written.
