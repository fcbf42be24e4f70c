//! What the runtime persists for Raft, and the storage trait it implements.
//!
//! The core never writes: it emits [`PersistBatch`]es (the driving contract in the crate docs and
//! in ARCHITECTURE.md). The runtime applies a batch's operations **in order**, makes them durable
//! (one fsync per batch: this is where appends and hard-state updates are batched), and only then
//! reports `Input::Persisted(seq)`. Batches must be applied in `seq` order. After a crash,
//! [`Storage::recover`] returns what was durable.

use crate::ids::NodeId;
use crate::ids::{LogId, LogIndex, PersistSeq};
use crate::raft::types::{Entry, HardState, Membership, ReplicatedSettings, Snapshot};

/// One write operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOp {
    /// Replace the hard state.
    HardState(HardState),
    /// Replace the snapshot. If the log does not hold the snapshot's last entry, the whole log goes
    /// and the snapshot's last entry becomes the base (Raft Figure 13 steps 6-7).
    Snapshot(Snapshot),
    /// Delete every entry with index `>= from` (a conflict with the leader's log, Raft §5.3).
    Truncate {
        /// First index deleted.
        from: LogIndex,
    },
    /// Append consecutive entries after the current last entry.
    Append(Vec<Entry>),
    /// Drop entries up to and including `upto.index`; `upto` becomes the log's base.
    Compact {
        /// The new base of the log.
        upto: LogId,
    },
}

/// A group of operations made durable together and acknowledged with one `Persisted(seq)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistBatch {
    /// Acknowledge with `Input::Persisted(seq)` once durable.
    pub seq: PersistSeq,
    /// The operations, applied in order.
    pub ops: Vec<PersistOp>,
}

/// What a node recovers after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last durable hard state.
    pub hard_state: HardState,
    /// The last durable snapshot; `None` for a node that never had one (a joining node).
    pub snapshot: Option<Snapshot>,
    /// The entry just before `entries` (its term is needed for AppendEntries' consistency check).
    pub base: LogId,
    /// The durable log after `base`.
    pub entries: Vec<Entry>,
}

impl Recovered {
    /// The initial state of a member of a brand-new cluster whose first voters are `voters`.
    #[must_use]
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> Recovered {
        Recovered::bootstrap_with(voters, ReplicatedSettings::default())
    }

    /// As [`Recovered::bootstrap`], with the replicated settings the whole cluster applies with
    /// (every first member must be given the same; see `ReplicatedSettings` for why they are
    /// replicated rather than per-node `Config`).
    #[must_use]
    pub fn bootstrap_with(
        voters: impl IntoIterator<Item = NodeId>,
        settings: ReplicatedSettings,
    ) -> Recovered {
        let membership = Membership {
            settings,
            ..Membership::with_voters(voters)
        };
        Recovered {
            snapshot: Some(Snapshot::bootstrap(membership, Vec::new())),
            ..Recovered::default()
        }
    }
}

/// Durable storage for one replica's Raft state.
pub trait Storage {
    /// The storage's error type; an error means the node must stop (it may not acknowledge).
    type Error: std::error::Error;
    /// Applies `batch` in order and makes it durable before returning.
    fn persist(&mut self, batch: &PersistBatch) -> Result<(), Self::Error>;
    /// Reads back everything durable.
    fn recover(&self) -> Result<Recovered, Self::Error>;
}

/// Storage in memory: what the fast simulator keeps as "durable" across simulated crashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStorage {
    state: Recovered,
}

impl MemStorage {
    /// Storage holding `state`.
    #[must_use]
    pub fn new(state: Recovered) -> MemStorage {
        MemStorage { state }
    }

    /// Applies one operation (a torn batch applies a prefix of its operations).
    pub fn apply_op(&mut self, op: &PersistOp) {
        apply_op(&mut self.state, op);
    }

    /// The durable state.
    #[must_use]
    pub fn state(&self) -> &Recovered {
        &self.state
    }
}

/// Applies one operation to a recovered image; shared by every storage implementation so the
/// semantics of each operation are written once.
pub fn apply_op(state: &mut Recovered, op: &PersistOp) {
    match op {
        PersistOp::HardState(hs) => state.hard_state = *hs,
        PersistOp::Snapshot(snap) => {
            // The entries stay if the log holds the snapshot's last entry (a later `Compact` trims
            // them); otherwise the snapshot replaces the whole log (Raft Figure 13 step 6-7).
            let last = snap.meta.last;
            let holds_last = last == state.base || state.entries.iter().any(|e| e.id == last);
            if !holds_last {
                state.entries.clear();
                state.base = last;
            }
            state.snapshot = Some(snap.clone());
        }
        PersistOp::Truncate { from } => state.entries.retain(|e| e.index() < *from),
        PersistOp::Append(entries) => {
            if let (Some(first), Some(last)) = (entries.first(), state.entries.last()) {
                assert_eq!(
                    first.index(),
                    last.index().next(),
                    "append must be contiguous"
                );
            }
            state.entries.extend(entries.iter().cloned());
        }
        PersistOp::Compact { upto } => {
            if upto.index > state.base.index {
                state.entries.retain(|e| e.index() > upto.index);
                state.base = *upto;
            }
            assert!(
                state
                    .entries
                    .first()
                    .is_none_or(|e| e.index() == state.base.index.next()),
                "compaction left a gap after the base"
            );
        }
    }
}

impl Storage for MemStorage {
    type Error = std::convert::Infallible;

    fn persist(&mut self, batch: &PersistBatch) -> Result<(), Self::Error> {
        for op in &batch.ops {
            self.apply_op(op);
        }
        Ok(())
    }

    fn recover(&self) -> Result<Recovered, Self::Error> {
        Ok(self.state.clone())
    }
}
