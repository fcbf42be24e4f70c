//! The whole effect vocabulary of the core: what goes in, what comes out.

use crate::ids::{ClientId, LogIndex, NodeId, PersistSeq, ReadId, Term};
use crate::raft::message::Envelope;
use crate::raft::storage::PersistBatch;

/// Something that happened to the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A decoded message from another replica (use `RaftNode::handle_frame` for raw bytes).
    Message(Envelope),
    /// The runtime made batch `seq` (and every earlier one) durable.
    Persisted(PersistSeq),
    /// A deadline returned by `poll_timeout` has passed.
    Timeout,
}

/// Something the runtime must do or may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write this batch durably, then report `Input::Persisted(seq)`.
    Persist(PersistBatch),
    /// Send this message (best effort: the transport may drop, duplicate or reorder it).
    Send(Envelope),
    /// Tell the application.
    Event(Event),
}

/// The role of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes before bumping the term (thesis §9.6).
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Leads the term.
    Leader,
}

/// Application-visible happenings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The role, term or known leader changed.
    RoleChanged {
        /// The new role.
        role: Role,
        /// The current term.
        term: Term,
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// A command proposed on this node was applied (or found to be a retry of an applied one).
    Applied {
        /// The proposing client.
        client: ClientId,
        /// The client's sequence number.
        seq: u64,
        /// Where it sits in the log.
        index: LogIndex,
        /// The state machine's response (cached for a duplicate).
        response: Vec<u8>,
    },
    /// A read requested on this node may now be served from the local state machine: it is
    /// linearizable at this moment (the state machine has applied at least `index`).
    ReadReady {
        /// The caller's read id.
        id: ReadId,
        /// The read index.
        index: LogIndex,
    },
    /// A read could not be served (leadership lost, or no leader known); retry elsewhere or later.
    ReadFailed {
        /// The caller's read id.
        id: ReadId,
    },
    /// A snapshot was taken at `index` and the log compacted behind it.
    SnapshotTaken {
        /// The snapshot's last index.
        index: LogIndex,
    },
    /// A membership change proposed on this node was applied (it is the effective configuration
    /// from its index on).
    MembershipApplied {
        /// The config entry's index.
        index: LogIndex,
    },
    /// A proposal made on this node will never produce `Applied` or `MembershipApplied` here.
    /// Every proposal that `propose` or `change_membership` accepted ends in exactly one of these
    /// three events while the node runs (a crash ends them all; the runtime knows).
    ProposalDropped {
        /// Where the proposal was appended.
        index: LogIndex,
        /// What was proposed.
        proposal: Proposal,
        /// Why it will not apply.
        reason: DropReason,
    },
    /// A leadership transfer started by `transfer_leadership` ended without this node seeing its
    /// target win (the target may still win later: a transfer is a hint, thesis §3.10).
    TransferEnded {
        /// The target.
        to: NodeId,
        /// Why it ended.
        outcome: TransferOutcome,
    },
    /// A replica whose committed configuration (at `config`, past our whole log) leaves us out
    /// answered our (pre-)vote: we were removed (thesis §4.2.2: a removed server is otherwise
    /// never told). The node stops campaigning; the runtime should shut it down.
    Removed {
        /// The replica that said so.
        by: NodeId,
        /// The index of its committed configuration.
        config: LogIndex,
    },
}

/// What a dropped proposal was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposal {
    /// A client command `(client, seq)`.
    Command {
        /// The proposing client.
        client: ClientId,
        /// Its sequence number.
        seq: u64,
    },
    /// A membership change.
    Membership,
}

/// Why a proposal will never apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A newer leader's log replaced the entry (Raft §5.3): it was never committed.
    Truncated,
    /// A snapshot from the leader covered the entry's index before this node applied it: the
    /// outcome is unknown here (it may have been committed); retry with the same `(client, seq)`
    /// and de-duplication answers.
    SnapshotInstalled,
    /// The client's de-duplication session was evicted (or never opened with sequence number 1):
    /// the command did not run, and a retry would not be recognised as one (thesis §6.3).
    SessionExpired,
    /// A retry of a command older than the client's latest: it did not run again, and its
    /// response is gone.
    Stale,
    /// This node was removed from the cluster before it learned the outcome (it may have been
    /// committed); retry elsewhere with the same `(client, seq)`.
    Removed,
}

/// How a leadership transfer ended, seen from the old leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The target did not take over within an election timeout; this node leads on.
    TimedOut,
    /// This node stopped leading (most often because the target won).
    SteppedDown,
    /// The target left the configuration.
    TargetRemoved,
}

/// Why `poll_timeout` wants to be woken (firezone connlib style: the deadline carries its reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// A follower or candidate's election timeout.
    Election,
    /// The leader's heartbeat (also drives retransmission of lost appends and snapshot chunks).
    Heartbeat,
    /// The leader's check-quorum deadline.
    CheckQuorum,
    /// A leadership transfer gives up.
    TransferTimeout,
    /// A pending read has waited too long and will be failed.
    ReadExpiry,
}
