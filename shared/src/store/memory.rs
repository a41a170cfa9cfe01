//! In-memory adapter.
