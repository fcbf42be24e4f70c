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

/// The cluster configuration: who votes and who only replicates, and the settings every replica
/// must apply with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Members that vote and count toward quorums.
    pub voters: BTreeSet<NodeId>,
    /// Members that receive the log but neither vote nor count (thesis §4.2.1).
    pub learners: BTreeSet<NodeId>,
    /// Settings that decide what `apply` produces.
    pub settings: ReplicatedSettings,
}

/// Settings that decide replicated state, so they travel with the configuration instead of
/// being read from each node's `Config`.
///
/// Why: the de-duplication table is part of the replicated state (thesis §6.3): which client it
/// evicts decides whether a retry is answered from the cache, refused (`SessionExpired`) or run,
/// and the table is in every snapshot. Replicas applying the same log with different bounds would
/// diverge, breaking state machine safety (Raft §5.4.3). So the bound is fixed when the cluster is
/// bootstrapped (`Recovered::bootstrap_with`), carried in the bootstrap snapshot's membership and
/// copied into every configuration entry (`change_membership` never changes it), and a replica
/// applies each entry with the settings of the configuration in effect at its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatedSettings {
    /// Client sessions kept in the de-duplication table (thesis §6.3); the client idle longest is
    /// evicted first. Size it well above the number of clients (see `DedupTable::apply`). A value
    /// of 0 from a hostile peer is taken as 1.
    pub dedup_clients_max: u64,
}

impl Default for ReplicatedSettings {
    fn default() -> ReplicatedSettings {
        ReplicatedSettings {
            dedup_clients_max: 100_000,
        }
    }
}

impl ReplicatedSettings {
    /// The de-duplication table's bound as a size (at least one session).
    #[must_use]
    pub fn dedup_bound(&self) -> usize {
        usize::try_from(self.dedup_clients_max.max(1)).unwrap_or(usize::MAX)
    }
}

impl Membership {
    /// A membership of voters only.
    #[must_use]
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
            settings: ReplicatedSettings::default(),
        }
    }

    /// Whether this is a real configuration: every configuration a cluster ever had has a voter
    /// (the last one cannot be removed); only a node that never learned one (a joining node
    /// before its first configuration entry or snapshot) holds the empty default.
    #[must_use]
    pub fn is_known(&self) -> bool {
        !self.voters.is_empty()
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
