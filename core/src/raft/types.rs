//! Log entries, membership, hard state and snapshots: the data Raft replicates and persists.

use crate::ids::{ClientId, LogId, LogIndex, NodeId, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One replicated log entry. `unix_ms` is the leader's wall clock when it appended the entry, so
/// every replica that applies it sees the same time (TigerBeetle style; ARCHITECTURE.md, "Determinism").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position and term.
    pub id: LogId,
    /// The leader's wall clock at append, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// What the entry carries.
    pub payload: Payload,
}

impl Entry {
    /// The entry's index.
    #[must_use]
    pub fn index(&self) -> LogIndex {
        self.id.index
    }

    /// The entry's term.
    #[must_use]
    pub fn term(&self) -> Term {
        self.id.term
    }

    /// An estimate of the entry's encoded size, used for batch and backpressure limits.
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        32 + match &self.payload {
            Payload::Noop => 0,
            Payload::Command { data, .. } => data.len(),
            Payload::Membership(m) => 8 * (m.voters.len() + m.learners.len()),
        }
    }
}

/// The payload of a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Appended by every new leader so that it commits an entry of its own term (Raft §5.4.2, §8).
    Noop,
    /// An application command, de-duplicated by `(client, seq)` at apply time (thesis §6.3).
    Command {
        /// The proposing client session.
        client: ClientId,
        /// The client's request sequence number; a retry reuses it.
        seq: u64,
        /// The opaque command for the state machine.
        data: Vec<u8>,
    },
    /// A complete new membership. It takes effect when appended, not when committed (thesis §4.1).
    Membership(Membership),
}

/// The cluster configuration: who votes and who only replicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Members that vote and count toward quorums.
    pub voters: BTreeSet<NodeId>,
    /// Members that receive the log but neither vote nor count (thesis §4.2.1).
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A membership of voters only.
    #[must_use]
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Whether `id` votes.
    #[must_use]
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    #[must_use]
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// The number of votes that make a majority of the voters.
    #[must_use]
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Every member, voters then learners, in id order within each group.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// A single-server membership change (thesis §4.1): one at a time, each a full new config entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a non-voting member that catches up before it is promoted.
    AddLearner(NodeId),
    /// Turn a caught-up learner into a voter.
    Promote(NodeId),
    /// Remove a voter or learner; removing the leader itself is allowed (it steps down on commit).
    Remove(NodeId),
}

/// State that must be durable before the node acts on it (Raft Figure 2 "persistent state").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`.
    pub vote: Option<NodeId>,
    /// The highest index known committed; persisted lazily so a restart can apply without a leader.
    pub commit: LogIndex,
}

/// What a snapshot stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last entry the snapshot includes.
    pub last: LogId,
    /// The membership in effect at `last` (openraft 447dc11c: recover it from the snapshot).
    pub membership: Membership,
    /// BLAKE3 of `data`, checked after a chunked transfer.
    pub data_hash: [u8; 32],
}

/// A state-machine snapshot with its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the snapshot stands for.
    pub meta: SnapshotMeta,
    /// The encoded state machine (including the de-duplication table).
    pub data: Vec<u8>,
}

impl Snapshot {
    /// The empty snapshot at index 0 that bootstraps a brand-new cluster with `membership`.
    #[must_use]
    pub fn bootstrap(membership: Membership, data: Vec<u8>) -> Snapshot {
        let data_hash = *blake3::hash(&data).as_bytes();
        Snapshot {
            meta: SnapshotMeta {
                last: LogId::default(),
                membership,
                data_hash,
            },
            data,
        }
    }
}
