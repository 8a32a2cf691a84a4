//! Block hashing: being written.
