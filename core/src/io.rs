//! The whole effect vocabulary of the core: what goes in, what comes out.

use crate::ids::{ClientId, LogIndex, NodeId, PersistSeq, ReadId, Term};
use crate::raft::message::Envelope;
use crate::storage::PersistBatch;

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
