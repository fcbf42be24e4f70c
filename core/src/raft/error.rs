//! The typed errors of `RaftNode`'s application calls (ARCHITECTURE.md, "Errors: three kinds,
//! three mechanisms"): one small enum per operation, no strings to parse.

use crate::ids::NodeId;
use crate::raft::config::ConfigError;
use crate::raft::state_machine::SnapshotDecodeError;

/// A proposal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; try `leader` if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node follows, if any.
        leader: Option<NodeId>,
    },
    /// Leadership is being transferred; retry shortly at the new leader (thesis §3.10).
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Too many uncommitted entries or pending proposals: retry later.
    #[error("too many uncommitted entries")]
    Backpressure,
    /// The command exceeds `command_bytes_max`.
    #[error("command of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Command length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes membership.
    #[error("not the leader")]
    NotLeader,
    /// The leader has not committed an entry of its term yet (Ongaro, raft-dev 2015) or another
    /// change is still uncommitted (one at a time, thesis §4.1).
    #[error("another membership change is in progress or the leader is too new")]
    NotReady,
    /// The change makes no sense for the current membership.
    #[error("invalid membership change: {0}")]
    Invalid(#[from] InvalidChange),
    /// The learner is too far behind to be promoted (thesis §4.2.1).
    #[error("learner has not caught up")]
    NotCaughtUp,
    /// Leadership is being transferred.
    #[error("leadership transfer in progress")]
    TransferInProgress,
}

/// A leadership transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader transfers leadership.
    #[error("not the leader")]
    NotLeader,
    /// The target is this node or not a voter.
    #[error("transfer target is not another voter")]
    InvalidTarget,
    /// A transfer is already running.
    #[error("a transfer is already in progress")]
    InProgress,
}

/// A read was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No leader is known to serve the read index.
    #[error("no leader known")]
    NoLeader,
    /// Too many reads are pending.
    #[error("too many pending reads")]
    Backpressure,
}

/// The node could not be started from its recovered state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The recovered snapshot does not decode.
    #[error(transparent)]
    Snapshot(#[from] SnapshotDecodeError),
    /// The recovered log is inconsistent.
    #[error("recovered log is inconsistent: {0}")]
    Log(#[from] RecoveredLogError),
}

/// Why a single-server membership change (thesis §4.1) makes no sense for the current membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChange {
    /// `AddLearner` of a node that is already a voter or a learner.
    #[error("already a member")]
    AlreadyMember,
    /// `Promote` of a node that is not a learner.
    #[error("not a learner")]
    NotLearner,
    /// `Remove` of a node that is not a member.
    #[error("not a member")]
    NotMember,
    /// `Remove` of the only voter: nobody would be left to commit anything.
    #[error("cannot remove the last voter")]
    LastVoter,
}

/// How a recovered log is inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecoveredLogError {
    /// Two consecutive entries do not have consecutive indexes, or their terms decrease.
    #[error("entries are not contiguous")]
    NotContiguous,
    /// The first entry does not follow the base.
    #[error("entries do not follow the base")]
    NotAfterBase,
}
