//! What a node tells about itself: counters of the unusual (`Stats`) and a summary (`Status`).

use crate::ids::{LogId, LogIndex, NodeId, Term};
use crate::raft::io::Role;
use crate::raft::node::RaftNode;
use crate::raft::state_machine::StateMachine;
use crate::raft::types::Membership;

/// Counters of everything unusual (ARCHITECTURE.md, "Errors": drop, count, keep serving).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames that did not decode.
    pub frames_malformed: u64,
    /// Decoded messages that made no sense here (wrong addressee, impossible indexes...).
    pub messages_invalid: u64,
    /// Messages from an older term or otherwise outdated.
    pub messages_stale: u64,
    /// Messages dropped because the outbox was full.
    pub outbox_dropped: u64,
    /// Vote requests ignored because a leader was heard from recently (leader stickiness).
    pub votes_ignored_in_lease: u64,
    /// Pre-vote campaigns started.
    pub pre_campaigns: u64,
    /// Elections (real campaigns) started.
    pub campaigns: u64,
    /// Times this node became leader.
    pub leaderships: u64,
    /// AppendEntries messages sent.
    pub appends_sent: u64,
    /// Entries carried by them.
    pub entries_sent: u64,
    /// Snapshot chunks sent.
    pub snapshot_chunks_sent: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshots taken locally.
    pub snapshots_taken: u64,
    /// Persist acknowledgements for batches never issued.
    pub persisted_unknown: u64,
    /// Messages that waited for a write and were dropped when it became durable, because the node
    /// had moved to a later term meanwhile (outbox invariant 7).
    pub stale_released_dropped: u64,
}

/// A snapshot of a node's state for status displays and checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// Whom it voted for in `term`.
    pub vote: Option<NodeId>,
    /// The leader it follows, if known.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: LogIndex,
    /// Applied index.
    pub applied: LogIndex,
    /// Last log entry.
    pub last: LogId,
    /// Effective membership.
    pub membership: Membership,
}

impl<S: StateMachine> RaftNode<S> {
    /// A summary of the node's state.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.commit,
            applied: self.applied,
            last: self.log.last_id(),
            membership: self.log.membership().clone(),
        }
    }
}
