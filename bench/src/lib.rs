//! kvroute-bench: replay harness and peers (being written).
