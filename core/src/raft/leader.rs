//! State that exists only while leading, and leadership transfer (thesis §3.10).

use crate::ids::{LogIndex, NodeId, ReadId};
use crate::raft::error::TransferError;
use crate::raft::message::Body;
use crate::raft::node::RaftNode;
use crate::raft::progress::Progress;
use crate::raft::state_machine::StateMachine;
use crate::time::Instant;
use std::collections::{BTreeMap, VecDeque};

/// Who asked for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadOrigin {
    Local,
    Remote(NodeId),
}

/// A read the leader holds until a heartbeat round confirms its leadership (thesis §6.4).
#[derive(Clone, Debug)]
pub(crate) struct LeaderRead {
    pub origin: ReadOrigin,
    pub id: ReadId,
    pub index: LogIndex,
    pub round: u64,
}

/// State that exists only while leading.
#[derive(Debug)]
pub(crate) struct LeaderState {
    pub progress: BTreeMap<NodeId, Progress>,
    pub heartbeat_at: Instant,
    pub check_quorum_at: Instant,
    pub transfer: Option<(NodeId, Instant)>,
    /// The latest heartbeat round started.
    pub round: u64,
    /// Start times of recent rounds (bounded), for leases.
    pub round_sent: VecDeque<(u64, Instant)>,
    /// Reads waiting for their round to be acknowledged by a quorum, in round order.
    pub reads: VecDeque<LeaderRead>,
    /// Reads that arrived before the leader committed an entry of its term (etcd
    /// `TestReadOnlyForNewLeader`): they wait, then join a round.
    pub reads_before_commit: VecDeque<(ReadOrigin, ReadId)>,
    /// Reads want a new round at the next flush.
    pub round_needed: bool,
    /// New entries want to be sent at the next flush (batching proposals into one append).
    pub append_needed: bool,
    /// Until when the lease (ReadMode::LeaseBased) lets the leader answer reads alone.
    pub lease_until: Option<Instant>,
    /// TimeoutNow went out this term: its target campaigns past leader stickiness, so the lease
    /// means nothing for the rest of this leadership (thesis §3.10 with §6.4.1).
    pub lease_revoked: bool,
}

impl<S: StateMachine> RaftNode<S> {
    /// Starts a leadership transfer to `to` (thesis §3.10): proposals are refused until it
    /// completes or times out after an election timeout.
    pub fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), TransferError> {
        self.advance_clock(now);
        let timeout = self.cfg.election_timeout;
        let last = self.log.last_index();
        let Some(lead) = &mut self.lead else {
            return Err(TransferError::NotLeader);
        };
        if to == self.id || !self.log.membership().is_voter(to) {
            return Err(TransferError::InvalidTarget);
        }
        if lead.transfer.is_some() {
            return Err(TransferError::InProgress);
        }
        lead.transfer = Some((to, self.now + timeout));
        let pr = lead.progress.get_mut(&to).expect("voters have progress");
        pr.timeout_now_sent = false;
        if pr.match_index == last {
            pr.timeout_now_sent = true;
            self.send(to, Body::TimeoutNow);
        } else {
            self.send_append(to);
        }
        Ok(())
    }
}
