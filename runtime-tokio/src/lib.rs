//! The production driver of `paloma-core`: real clock, TCP/UDP, redb, the OS random source.
//!
//! So far it holds the durable [`storage::RedbStorage`] (shared with `paloma-runtime-sim`, which
//! runs it on a simulated disk); the network driver lands with the runtime issue and follows the
//! driving contract documented in `paloma_core`'s crate docs. This crate has no tokio dependency
//! yet.

pub mod storage;

pub use storage::{RedbStorage, StorageError};
