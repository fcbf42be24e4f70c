//! The production driver of `paloma-core`: real clock, sockets, redb.
//!
//! - [`driver`]: the one driving loop (ARCHITECTURE.md, "The driving contract") of any sans-IO
//!   [`driver::Machine`]: a bare [`paloma_core::raft::RaftNode`] ([`driver::RaftMachine`]) or the
//!   composed [`paloma_core::replica::Replica`] ([`driver::ReplicaMachine`]); generic over a
//!   [`driver::Transport`], a [`driver::Clock`], a [`persist::Persister`] and [`driver::Hooks`];
//!   the simulated scenarios run this same loop under madsim with simulated parts behind the
//!   traits (`paloma-runtime-sim`);
//! - [`persist`]: persistence on its own task with group commit, so input keeps flowing while an
//!   fsync is pending;
//! - [`storage`]: [`storage::RedbStorage`], the durable store of a replica;
//! - [`net`]: [`net::UdpTransport`] and [`net::MonotonicClock`]; the encrypted TCP links of the
//!   runtime issue replace the transport, not the loop.
//!
//! `tokio` here is `madsim-tokio`: tokio itself without `--cfg madsim`, madsim's simulation with it.

pub mod driver;
pub mod net;
pub mod persist;
pub mod storage;

pub use driver::{
    ClientConn, ClientError, Clock, ConnError, Hooks, Machine, NodeHandle, Parts, RaftMachine,
    RaftView, ReplicaHandle, ReplicaMachine, Transport,
};
pub use persist::{Persister, RedbPersister};
pub use storage::{RedbStorage, StorageError};
