//! Mooncake trace reader: being written.
