//! Elections: pre-vote (thesis §9.6), votes (Raft §5.2, §5.4.1), check-quorum and leader
//! stickiness (thesis §6.2 / §9.6). Messages reach these handlers through `dispatch.rs`.

use crate::ids::{LogId, LogIndex, NodeId, Term};
use crate::raft::io::Role;
use crate::raft::leader::LeaderState;
use crate::raft::message::{Body, Envelope, VoteRequest, VoteResponse};
use crate::raft::node::RaftNode;
use crate::raft::progress::Progress;
use crate::raft::state_machine::StateMachine;
use crate::time::Instant;
use std::collections::{BTreeMap, VecDeque};

/// Election timing and the votes of a campaign (Raft §5.2; thesis §9.6 for pre-votes).
#[derive(Debug)]
pub(crate) struct ElectionState {
    /// When this node campaigns unless it hears from a leader; none while leading and for a
    /// non-voter or a removed node, which never campaign.
    pub(crate) deadline: Option<Instant>,
    /// When this node last heard from a leader (leader stickiness, `in_lease`).
    pub(crate) leader_contact: Option<Instant>,
    /// Answers to the current (pre-)campaign: voter -> granted.
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// When this incarnation started (a restarted voter ignores votes for an election timeout).
    pub(crate) started_at: Instant,
    /// A leader told us we are not in its committed configuration: never campaign again.
    pub(crate) removed: bool,
}

impl ElectionState {
    /// The state of an incarnation started at `now`: no deadline drawn yet, no votes.
    pub(crate) fn new(now: Instant) -> ElectionState {
        ElectionState {
            deadline: None,
            leader_contact: None,
            votes: BTreeMap::new(),
            started_at: now,
            removed: false,
        }
    }
}

impl<S: StateMachine> RaftNode<S> {
    /// A message from the leader of our term: follow it. Two leaders in one term would break
    /// election safety, so a claim from another node while we lead is counted and dropped.
    pub(crate) fn accept_leader(&mut self, from: NodeId) -> bool {
        match self.role {
            Role::Leader => {
                self.stats.messages_invalid += 1;
                tracing::warn!(node = %self.id, %from, term = %self.term, "second leader claims our term");
                false
            }
            Role::Candidate | Role::PreCandidate => {
                self.become_follower(self.term, Some(from));
                self.note_leader_contact(from);
                true
            }
            Role::Follower => {
                if self.leader != Some(from) {
                    self.leader = Some(from);
                    self.emit_role();
                }
                self.note_leader_contact(from);
                true
            }
        }
    }

    fn note_leader_contact(&mut self, _from: NodeId) {
        self.election.leader_contact = Some(self.now);
        self.reset_election_deadline();
    }

    /// Whether this node heard from a live leader within the election timeout (check-quorum's
    /// leader stickiness; etcd `inLease`).
    pub(crate) fn in_lease(&self) -> bool {
        if !self.cfg.check_quorum {
            return false;
        }
        if self.role == Role::Leader {
            return true;
        }
        // A node that just started cannot know whether it heard from a leader before it went
        // down, so it acts as if it had, for one election timeout from its start: otherwise a
        // leader whose lease counted this voter's last acknowledgement could be outlived by a new
        // leader this voter elects right after restarting, with no clock drift at all (thesis
        // §6.4.1 assumes a voter that acknowledged a leader refuses votes for a full timeout).
        if self.now < self.election.started_at + self.cfg.election_timeout {
            return true;
        }
        self.leader.is_some()
            && self
                .election
                .leader_contact
                .is_some_and(|t| self.now < t + self.cfg.election_timeout)
    }

    pub(crate) fn on_election_timeout(&mut self) {
        if self.election.removed || !self.log.membership().is_voter(self.id) {
            self.election.deadline = None;
            return;
        }
        if self.cfg.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let changed = term != self.term || self.role != Role::Follower || self.leader != leader;
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.outbox.mark_term_changed();
            // A transfer from an older term's leader will never complete.
            self.incoming_snapshot = None;
        }
        if self.role == Role::Leader {
            self.fail_leader_reads();
            if let Some((to, _)) = self.lead.as_ref().and_then(|l| l.transfer) {
                self.emit(crate::raft::io::Event::TransferEnded {
                    to,
                    outcome: crate::raft::io::TransferOutcome::SteppedDown,
                });
            }
        }
        self.role = Role::Follower;
        self.lead = None;
        self.leader = leader;
        assert!(self.term >= term, "{}: follower of an older term", self.id);
        self.election.votes.clear();
        if leader.is_some() {
            self.election.leader_contact = Some(self.now);
        }
        self.fail_remote_reads();
        // Raft Figure 2: a follower's election timer restarts only when it hears from the leader
        // or grants a vote, not when it merely adopts a newer term. Restarting it here too (etcd
        // does) lets a candidate with a stale log, which nobody will elect, hold back the timers
        // of every up-to-date node with each failed campaign: without pre-vote, the sweeps saw
        // two stale candidates keep a 5-node cluster leaderless for 10 s.
        if leader.is_some() || self.election.deadline.is_none() {
            self.reset_election_deadline();
        }
        self.drop_proposals_if_outside();
        if changed {
            self.emit_role();
        }
    }

    fn become_pre_candidate(&mut self) {
        let term = self.term;
        self.stats.pre_campaigns += 1;
        if self.role == Role::Leader {
            self.fail_leader_reads();
        }
        self.role = Role::PreCandidate;
        self.lead = None;
        self.leader = None;
        self.fail_remote_reads();
        self.election.votes = BTreeMap::from([(self.id, true)]);
        self.reset_election_deadline();
        self.emit_role();
        // A pre-candidate asks for votes without raising its term (thesis §9.6).
        assert_eq!(self.term, term, "{}: pre-vote changed the term", self.id);
        let req = VoteRequest {
            last_log: self.log.last_id(),
            transfer: false,
        };
        let next_term = self.term.next();
        for peer in self.other_voters() {
            let env = Envelope {
                from: self.id,
                to: peer,
                term: next_term,
                body: Body::PreVote(req),
            };
            self.send_envelope(env);
        }
        self.tally(true);
    }

    pub(crate) fn become_candidate(&mut self, transfer: bool) {
        assert_ne!(
            self.role,
            Role::Leader,
            "{}: a leader does not campaign",
            self.id
        );
        self.stats.campaigns += 1;
        self.role = Role::Candidate;
        self.lead = None;
        self.leader = None;
        self.fail_remote_reads();
        self.term = self.term.next();
        self.vote = Some(self.id);
        self.outbox.mark_term_changed();
        self.election.votes = BTreeMap::from([(self.id, true)]);
        self.reset_election_deadline();
        self.emit_role();
        let req = VoteRequest {
            last_log: self.log.last_id(),
            transfer,
        };
        for peer in self.other_voters() {
            self.send(peer, Body::Vote(req));
        }
        self.tally(false);
    }

    fn become_leader(&mut self) {
        // Only a candidate that voted for itself in this term wins it (Raft §5.2).
        assert!(
            self.role == Role::Candidate && self.vote == Some(self.id),
            "{}: becomes leader from {:?}, vote {:?}",
            self.id,
            self.role,
            self.vote
        );
        self.stats.leaderships += 1;
        tracing::debug!(node = %self.id, term = %self.term, "became leader");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.election.deadline = None;
        self.election.votes.clear();
        let now = self.now;
        let last = self.log.last_index();
        let progress = self
            .log
            .membership()
            .members()
            .filter(|id| *id != self.id)
            .map(|id| (id, Progress::new(last, now)))
            .collect();
        self.lead = Some(LeaderState {
            progress,
            heartbeat_at: now + self.cfg.heartbeat_interval,
            check_quorum_at: now + self.cfg.election_timeout,
            transfer: None,
            round: 0,
            round_sent: VecDeque::new(),
            reads: VecDeque::new(),
            reads_before_commit: VecDeque::new(),
            round_needed: false,
            append_needed: false,
            lease_until: None,
            lease_revoked: false,
        });
        self.emit_role();
        // Raft §8: commit an entry of the new term so earlier entries commit and reads can start.
        self.append_noop();
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.log
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|id| *id != self.id)
            .collect()
    }

    /// Our committed configuration entry if it leaves `from` out and the candidate's log, which
    /// ends at `last_log`, cannot hold it: it lies past that log, or in a later term than the
    /// log's last entry. Then `from` was removed. Proof sketch: `from` joined through an entry it
    /// holds; had that entry come after ours in the committed chain, the leader that appended it
    /// held ours (leader completeness), so `from` would hold ours too (log matching). So its
    /// joining came first, and ours, which descends from it, removed it; ids are never reused.
    /// An entry the candidate may hold proves nothing (we may simply lag behind its addition).
    pub(crate) fn removal_known(&self, from: NodeId, last_log: LogId) -> Option<LogId> {
        let index = self.log.membership_index();
        if index > self.commit || index == LogIndex(0) || self.log.membership().contains(from) {
            return None;
        }
        let term = self.log.term(index).unwrap_or_default();
        let cannot_hold = index > last_log.index || last_log.term < term;
        cannot_hold.then_some(LogId::new(term, index))
    }

    /// Someone's committed configuration entry `config` leaves us out. Trust it when our log
    /// cannot hold that entry, whatever the terms: by the argument of `removal_known` we were
    /// removed (thesis §4.2.2 notes a removed server is otherwise never told). Never campaign
    /// again.
    pub(crate) fn on_removed(&mut self, from: NodeId, config: LogId) {
        assert_ne!(from, self.id, "a node never removes itself by message");
        let last = self.log.last_id();
        let cannot_hold = config.index > last.index || last.term < config.term;
        if self.election.removed || !cannot_hold {
            self.stats.messages_stale += 1;
            return;
        }
        tracing::info!(node = %self.id, by = %from, ?config, "removed from the cluster");
        self.election.removed = true;
        self.election.deadline = None;
        // What we proposed will never reach us now: its outcome is unknown here.
        let pending = std::mem::take(&mut self.local_proposals);
        self.drop_proposals(pending, crate::raft::io::DropReason::Removed);
        self.emit(crate::raft::io::Event::Removed {
            by: from,
            config: config.index,
        });
    }

    pub(crate) fn on_pre_vote(&mut self, from: NodeId, term: Term, req: VoteRequest) {
        // A pre-vote for an older term was answered by dispatch; it never changed our term.
        assert!(
            from != self.id && term >= self.term,
            "{}: pre-vote {from} {term}",
            self.id
        );
        // Granted only for a future term, an up-to-date log, and no live leader (thesis §9.6).
        let granted = term > self.term
            && req.last_log >= self.log.last_id()
            && (!self.in_lease() || req.transfer);
        let reply_term = if granted { term } else { self.term };
        let env = Envelope {
            from: self.id,
            to: from,
            term: reply_term,
            body: Body::PreVoteResp(VoteResponse { granted }),
        };
        self.send_envelope(env);
    }

    pub(crate) fn on_vote(&mut self, from: NodeId, term: Term, req: VoteRequest) {
        // Dispatch (`step`) settled the term: this message is from another node, in ours.
        assert!(
            from != self.id && term == self.term,
            "{}: misrouted {from} {term}",
            self.id
        );
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && req.last_log >= self.log.last_id();
        if granted {
            if self.vote != Some(from) {
                self.vote = Some(from);
                self.outbox.mark_hard_state();
            }
            self.reset_election_deadline();
        }
        // Postcondition: one vote per term (Raft §5.2); a grant goes only to whom we voted for.
        assert!(
            !granted || self.vote == Some(from),
            "{}: granted without voting",
            self.id
        );
        self.send(from, Body::VoteResp(VoteResponse { granted }));
    }

    pub(crate) fn on_vote_resp(&mut self, from: NodeId, term: Term, resp: VoteResponse, pre: bool) {
        // Only a granted pre-vote answer carries a term above ours (the one we would campaign in).
        assert!(
            from != self.id && (term == self.term || (pre && resp.granted && term > self.term)),
            "{}: vote answer {from} {term}",
            self.id
        );
        let expected_role = if pre {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        let expected_term = if pre && resp.granted {
            self.term.next()
        } else {
            self.term
        };
        if self.role != expected_role
            || term != expected_term
            || !self.log.membership().is_voter(from)
        {
            self.stats.messages_stale += 1;
            return;
        }
        self.election.votes.insert(from, resp.granted);
        self.tally(pre);
    }

    fn tally(&mut self, pre: bool) {
        let quorum = self.log.membership().quorum();
        let voters = &self.log.membership().voters;
        let granted = self
            .election
            .votes
            .iter()
            .filter(|(id, g)| **g && voters.contains(id))
            .count();
        let rejected = self
            .election
            .votes
            .iter()
            .filter(|(id, g)| !**g && voters.contains(id))
            .count();
        assert!(
            granted + rejected <= voters.len(),
            "{}: more votes than voters",
            self.id
        );
        if granted >= quorum {
            if pre {
                self.become_candidate(false);
            } else {
                self.become_leader();
            }
        } else if rejected >= quorum {
            self.become_follower(self.term, None);
        }
    }

    /// Leader: step down if a quorum of voters was not heard from within an election timeout.
    pub(crate) fn check_quorum(&mut self) {
        assert_eq!(
            self.role,
            Role::Leader,
            "{}: check-quorum off the leader",
            self.id
        );
        let membership = self.log.membership().clone();
        let lead = self.lead.as_mut().expect("leader");
        let active = membership
            .voters
            .iter()
            .filter(|id| **id == self.id || lead.progress.get(id).is_some_and(|p| p.recent_active))
            .count();
        for pr in lead.progress.values_mut() {
            pr.recent_active = false;
        }
        lead.check_quorum_at = self.now + self.cfg.election_timeout;
        if active < membership.quorum() {
            tracing::debug!(node = %self.id, term = %self.term, "check-quorum failed: stepping down");
            self.become_follower(self.term, None);
        }
    }

    pub(crate) fn on_timeout_now(&mut self, from: NodeId, term: Term) {
        // Dispatch (`step`) settled the term: this message is from another node, in ours.
        assert!(
            from != self.id && term == self.term,
            "{}: misrouted {from} {term}",
            self.id
        );
        if self.role != Role::Follower
            || self.leader != Some(from)
            || !self.log.membership().is_voter(self.id)
        {
            self.stats.messages_stale += 1;
            return;
        }
        tracing::debug!(node = %self.id, "leadership transferred to us: campaigning");
        self.become_candidate(true);
    }
}
