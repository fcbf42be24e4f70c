//! `paloma-core` inside madsim: a deterministic simulated cluster with fault injection.
//!
//! - [`disk`]: `SimDisk`, a redb `StorageBackend` that loses or tears unsynced writes when the
//!   node crashes, fenced per incarnation (no madsim needed: tested by plain `cargo test`);
//! - [`clock`]: per-node clock drift;
//! - [`trace`]: the one-line-per-event trace (`PALOMA_TRACE=1`);
//! - under `--cfg madsim` only: [`cluster`] (nodes at `10.0.0.<id>`, partitions, kill/restart,
//!   duplication, client API) and the simulated parts of a node (`node.rs`): each node runs the
//!   **production** driving loop of `paloma_runtime_tokio::driver`, with its UDP transport and its
//!   group-committing persistence task, on madsim's network and the node's `SimDisk`.
//!
//! Build and run the simulated scenarios with `cargo simtest` (see `README.md`); without the cfg
//! this crate holds only the madsim-free parts above.

pub mod clock;
pub mod disk;
pub mod trace;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
mod node;

#[cfg(madsim)]
pub use cluster::{Cluster, ReplicaCluster, SimCluster, SimConfig};
pub use disk::{CrashMode, CrashReport, SimDisk, SimDiskBackend};
#[cfg(madsim)]
pub use node::{DurableImages, MakeSm, NoObserver, Observer, SimMachine};
pub use paloma_runtime_tokio::{ClientConn, ClientError, ConnError, RaftMachine, ReplicaMachine};
pub use paloma_runtime_tokio::{RedbStorage, StorageError};
pub use trace::Trace;
