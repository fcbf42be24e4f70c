//! Single-server membership changes (thesis §4.1) and what a node does when its effective
//! configuration changes (appended, truncated or installed with a snapshot).

use crate::ids::LogIndex;
use crate::raft::error::{InvalidChange, MembershipError};
use crate::raft::io::{DropReason, Event, Proposal, TransferOutcome};
use crate::raft::node::RaftNode;
use crate::raft::progress::Progress;
use crate::raft::state_machine::StateMachine;
use crate::raft::types::{MembershipChange, Payload};
use crate::time::Instant;

impl<S: StateMachine> RaftNode<S> {
    /// Changes membership by one server (thesis §4.1). Returns the config entry's index.
    pub fn change_membership(
        &mut self,
        now: Instant,
        unix_ms: u64,
        change: MembershipChange,
    ) -> Result<LogIndex, MembershipError> {
        self.advance_clock(now);
        let Some(lead) = &self.lead else {
            return Err(MembershipError::NotLeader);
        };
        if lead.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        // Ongaro's fix for the single-server change bug: no config entry before an entry of this
        // term is committed; and one uncommitted config at a time.
        if self.log.term(self.commit) != Some(self.term)
            || self.log.membership_index() > self.commit
        {
            return Err(MembershipError::NotReady);
        }
        let mut next = self.log.membership().clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if next.contains(id) {
                    return Err(MembershipError::Invalid(InvalidChange::AlreadyMember));
                }
                next.learners.insert(id);
            }
            MembershipChange::Promote(id) => {
                if !next.learners.contains(&id) {
                    return Err(MembershipError::Invalid(InvalidChange::NotLearner));
                }
                let matched = lead
                    .progress
                    .get(&id)
                    .map_or(LogIndex(0), |p| p.match_index);
                if matched.0 + self.cfg.catch_up_lag_max < self.log.last_index().0 {
                    return Err(MembershipError::NotCaughtUp);
                }
                next.learners.remove(&id);
                next.voters.insert(id);
            }
            MembershipChange::Remove(id) => {
                if !next.contains(id) {
                    return Err(MembershipError::Invalid(InvalidChange::NotMember));
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
                if next.voters.is_empty() {
                    return Err(MembershipError::Invalid(InvalidChange::LastVoter));
                }
            }
        }
        if self.local_proposals.len() >= self.cfg.pending_proposals_max {
            return Err(MembershipError::NotReady);
        }
        assert!(
            !next.voters.is_empty(),
            "{}: a configuration without voters",
            self.id
        );
        let index = self.append_as_leader(unix_ms, Payload::Membership(next));
        // A configuration takes effect when appended, not when committed (thesis §4.1).
        assert_eq!(
            self.log.membership_index(),
            index,
            "{}: config not in effect",
            self.id
        );
        self.local_proposals
            .insert(index, (Proposal::Membership, self.term));
        Ok(index)
    }

    /// Effective membership changed (appended, truncated or installed config).
    pub(crate) fn on_membership_changed(&mut self) {
        let membership = self.log.membership().clone();
        let last = self.log.last_index();
        let now = self.now;
        if let Some(lead) = &mut self.lead {
            lead.progress.retain(|id, _| membership.contains(*id));
            for id in membership.members() {
                if id != self.id {
                    lead.progress
                        .entry(id)
                        .or_insert_with(|| Progress::new(last, now));
                }
            }
            // Postcondition: the leader tracks exactly the other members.
            assert!(
                lead.progress.len() + usize::from(membership.contains(self.id))
                    == membership.voters.len() + membership.learners.len(),
                "{}: progress out of step with the membership",
                self.id
            );
            if let Some((to, _)) = lead.transfer {
                if !membership.is_voter(to) {
                    lead.transfer = None;
                    self.outbox.emit(Event::TransferEnded {
                        to,
                        outcome: TransferOutcome::TargetRemoved,
                    });
                }
            }
        } else if membership.is_voter(self.id) && !self.election.removed {
            if self.election.deadline.is_none() {
                self.reset_election_deadline();
            }
        } else {
            self.election.deadline = None;
        }
        self.drop_proposals_if_outside();
    }

    /// A node that is not leading and not in its own configuration receives no more entries
    /// (leaders replicate only to members): what it proposed as leader will never reach it.
    pub(crate) fn drop_proposals_if_outside(&mut self) {
        if self.lead.is_none()
            && !self.local_proposals.is_empty()
            && !self.log.membership().contains(self.id)
        {
            let pending = std::mem::take(&mut self.local_proposals);
            self.drop_proposals(pending, DropReason::Removed);
        }
    }
}
