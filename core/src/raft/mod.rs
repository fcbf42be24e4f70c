//! Raft consensus (Ongaro & Ousterhout 2014; Ongaro's thesis 2014), sans-IO. Knows nothing of
//! users: the directory plugs in as a [`StateMachine`].
//!
//! Features: pre-vote and check-quorum with leader stickiness; pipelined, batched replication with
//! a bounded in-flight window and fast back-tracking; commitment by counting only current-term
//! entries; ReadIndex reads (leader and follower) and optional leases; snapshots with log compaction
//! and chunked, resumable InstallSnapshot; single-server membership changes with learners;
//! leadership transfer; client de-duplication by `(client, seq)`.

mod apply;
/// The safety checker shared by the simulators and the core's proptest: compiled only for tests
/// and the `testing` feature, never into a release binary.
#[cfg(any(test, fuzzing, feature = "testing"))]
pub mod check;
pub mod config;
mod dispatch;
mod election;
pub mod error;
/// Fuzz entry points: compiled only for tests, cargo-fuzz (`--cfg fuzzing`) and the `testing`
/// feature, never into a release binary.
#[cfg(any(test, fuzzing, feature = "testing"))]
pub mod fuzz;
pub mod io;
mod leader;
pub mod log;
mod membership;
pub mod message;
pub mod node;
mod outbox;
pub mod progress;
mod read;
mod replication;
mod snapshot;
pub mod state_machine;
pub mod status;
pub mod storage;
pub mod types;

pub use config::{Config, ReadMode};
pub use error::{
    InvalidChange, MembershipError, ProposeError, ReadError, RecoveredLogError, StartError,
    TransferError,
};
pub use message::{Body, Envelope};
pub use node::RaftNode;
pub use state_machine::{ApplyContext, StateMachine};
pub use status::{Stats, Status};
pub use types::{
    Entry, HardState, Membership, MembershipChange, Payload, ReplicatedSettings, Snapshot,
    SnapshotMeta,
};
