//! Paloma's protocol core: sans-IO state machines for Raft, the directory, presence, end-to-end
//! sessions and mailboxes. Nothing here does IO, reads a clock, spawns a thread or draws OS
//! randomness: time, randomness, network input and disk completions are inputs; messages to send,
//! writes to make durable and events for the application are outputs (`ARCHITECTURE.md` at the
//! repository root: the code map of `core/` and "Determinism").
//!
//! # The driving contract
//!
//! A runtime owns one [`raft::RaftNode`] and loops:
//!
//! 1. feed an input with `handle(now, input)`: a message from a peer
//!    ([`raft::io::Input::Message`], or raw bytes through `handle_frame`), a completed write
//!    ([`raft::io::Input::Persisted`]), or an expired deadline ([`raft::io::Input::Timeout`]);
//!    application calls (`propose`, `read`, `change_membership`, `transfer_leadership`) take
//!    `now` too;
//! 2. drain [`raft::RaftNode::poll_output`] until it returns `None`, after **every** input:
//!    - [`raft::io::Output::Persist`]: apply the batch to durable storage in order, fsync, then
//!      feed `Input::Persisted(seq)`. Batches must be made durable in `seq` order.
//!    - [`raft::io::Output::Send`]: send best effort; loss, duplication and reordering are
//!      tolerated.
//!    - [`raft::io::Output::Event`]: tell the application (applied proposals, ready reads, role
//!      changes);
//! 3. sleep until [`raft::RaftNode::poll_timeout`]'s deadline (it also names the timer's reason), or
//!    until the next input arrives.
//!
//! Persistence ordering is enforced by the core: a message that depends on state not yet durable
//! (a granted vote, an acknowledged append, a new term) is held back until the runtime reports the
//! batch holding that state as persisted, and a leader counts its own log toward a quorum only once
//! it is durable. A runtime that loses unpersisted writes in a crash therefore cannot make the node
//! break a promise it made.
//!
//! The seed passed to `RaftNode::new` is the only randomness; the same inputs at the same instants
//! give the same outputs.
//!
//! ```
//! use paloma_core::raft::io::{Input, Output};
//! use paloma_core::raft::{ApplyContext, Config, RaftNode, StateMachine};
//! use paloma_core::raft::state_machine::SnapshotDecodeError;
//! use paloma_core::raft::storage::{MemStorage, Recovered, Storage};
//! use paloma_core::{ClientId, Instant, NodeId};
//!
//! /// A state machine that counts the bytes it was given.
//! #[derive(Default)]
//! struct Bytes(u64);
//! impl StateMachine for Bytes {
//!     fn apply(&mut self, _: &ApplyContext, cmd: &[u8]) -> Vec<u8> {
//!         self.0 += cmd.len() as u64;
//!         self.0.to_le_bytes().to_vec()
//!     }
//!     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
//!     fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError> {
//!         let raw: [u8; 8] = data
//!             .try_into()
//!             .map_err(|_| SnapshotDecodeError::Length { len: data.len(), expected: 8 })?;
//!         self.0 = u64::from_le_bytes(raw);
//!         Ok(())
//!     }
//! }
//!
//! // A one-node cluster: it elects itself, then commits a proposal.
//! let mut storage = MemStorage::new(Recovered::bootstrap([NodeId(1)]));
//! let cfg = Config { id: NodeId(1), ..Config::default() };
//! let mut node = RaftNode::new(cfg, storage.recover().unwrap(), Bytes::default(), 42, Instant::ZERO).unwrap();
//! let mut now = Instant::ZERO;
//! let mut applied = None;
//! for _ in 0..100 {
//!     // Drain every output after every input.
//!     while let Some(out) = node.poll_output() {
//!         match out {
//!             Output::Persist(batch) => {
//!                 storage.persist(&batch).unwrap(); // write + fsync
//!                 node.handle(now, Input::Persisted(batch.seq));
//!             }
//!             Output::Send(_msg) => {} // no peers in a one-node cluster
//!             Output::Event(ev) => {
//!                 if let paloma_core::raft::io::Event::Applied { response, .. } = ev { applied = Some(response); }
//!             }
//!         }
//!     }
//!     if applied.is_some() { break; }
//!     if node.status().role == paloma_core::raft::io::Role::Leader {
//!         let _ = node.propose(now, 1_700_000_000_000, ClientId(7), 1, b"hello".to_vec());
//!         continue;
//!     }
//!     // Sleep until the next deadline, then report it.
//!     let (deadline, _why) = node.poll_timeout().expect("a follower always has an election timer");
//!     now = deadline;
//!     node.handle(now, Input::Timeout);
//! }
//! assert_eq!(applied, Some(5u64.to_le_bytes().to_vec()));
//! ```

pub mod client;
pub mod directory;
pub mod ids;
pub mod raft;
pub mod replica;
pub mod rng;
pub mod session;
pub mod time;

pub use ids::{
    ClientId, ConnId, LogId, LogIndex, MailboxSeq, MessageId, NodeId, PersistSeq, ReadId,
    RequestId, Term, UserId,
};
pub use time::Instant;
