//! Linearizable reads without log writes: ReadIndex (thesis §6.4), follower reads through the
//! leader, and optional leader leases (§6.4.1, unsafe under clock drift).

use crate::ids::{LogIndex, NodeId, ReadId, Term};
use crate::raft::config::ReadMode;
use crate::raft::error::ReadError;
use crate::raft::io::{Event, Role};
use crate::raft::leader::{LeaderRead, ReadOrigin};
use crate::raft::message::Body;
use crate::raft::node::RaftNode;
use crate::raft::state_machine::StateMachine;
use crate::time::Instant;
use std::collections::{BTreeMap, VecDeque};

/// Reads this node answers itself once they are confirmed (the leader's own wait in
/// `LeaderState` for their heartbeat round first).
#[derive(Debug, Default)]
pub(crate) struct PendingReads {
    /// Confirmed reads waiting for apply to reach their index: (id, index, expires at).
    pub(crate) ready: VecDeque<(ReadId, LogIndex, Instant)>,
    /// Reads forwarded to the leader: id -> (leader, sent at).
    pub(crate) remote: BTreeMap<ReadId, (NodeId, Instant)>,
}

impl<S: StateMachine> RaftNode<S> {
    /// Asks for a linearizable read. When `Event::ReadReady { id, .. }` comes out, reading the local
    /// state machine at that moment is linearizable; `Event::ReadFailed` means retry.
    pub fn read(&mut self, now: Instant, id: ReadId) -> Result<(), ReadError> {
        if now > self.now {
            self.handle_clock(now);
        }
        if self.pending_reads() >= self.cfg.pending_reads_max {
            return Err(ReadError::Backpressure);
        }
        if self.role == Role::Leader {
            self.leader_read(ReadOrigin::Local, id);
            return Ok(());
        }
        let Some(leader) = self.leader else {
            return Err(ReadError::NoLeader);
        };
        self.reads.remote.insert(id, (leader, self.now));
        self.send(leader, Body::ReadIndex(id));
        Ok(())
    }

    fn handle_clock(&mut self, now: Instant) {
        self.now = now;
    }

    fn pending_reads(&self) -> usize {
        let leader = self
            .lead
            .as_ref()
            .map_or(0, |l| l.reads.len() + l.reads_before_commit.len());
        leader + self.reads.ready.len() + self.reads.remote.len()
    }

    /// Leader side of a read, local or on behalf of a follower.
    fn leader_read(&mut self, origin: ReadOrigin, id: ReadId) {
        let committed_in_term = self.log.term(self.commit) == Some(self.term);
        let commit = self.commit;
        let now = self.now;
        let lease_mode = self.cfg.read_mode == ReadMode::LeaseBased;
        let lead = self.lead.as_mut().expect("leader");
        assert_eq!(
            self.role,
            Role::Leader,
            "{}: leader read off the leader",
            self.id
        );
        if !committed_in_term {
            // A new leader does not know the commit index until its no-op commits
            // (etcd TestReadOnlyForNewLeader).
            lead.reads_before_commit.push_back((origin, id));
            return;
        }
        // A transfer target campaigns with voters ignoring stickiness, so the lease guarantee is
        // void from the moment TimeoutNow may have been sent (thesis §3.10 with §6.4.1).
        if lease_mode && !lead.lease_revoked && lead.lease_until.is_some_and(|until| now < until) {
            self.read_confirmed(origin, id, commit);
            return;
        }
        let round = lead.round + 1;
        lead.reads.push_back(LeaderRead {
            origin,
            id,
            index: commit,
            round,
        });
        lead.round_needed = true;
    }

    pub(crate) fn on_read_index(&mut self, from: NodeId, term: Term, id: ReadId) {
        // Dispatch (`step`) settled the term: this message is from another node, in ours.
        assert!(
            from != self.id && term == self.term,
            "{}: misrouted {from} {term}",
            self.id
        );
        if self.role != Role::Leader || self.pending_reads() >= self.cfg.pending_reads_max {
            self.send(from, Body::ReadIndexResp(id, None));
            return;
        }
        self.leader_read(ReadOrigin::Remote(from), id);
    }

    pub(crate) fn on_read_index_resp(
        &mut self,
        from: NodeId,
        term: Term,
        id: ReadId,
        index: Option<LogIndex>,
    ) {
        // Dispatch (`step`) settled the term: this message is from another node, in ours.
        assert!(
            from != self.id && term == self.term,
            "{}: misrouted {from} {term}",
            self.id
        );
        match self.reads.remote.get(&id) {
            Some((leader, _)) if *leader == from => {}
            _ => {
                self.stats.messages_stale += 1;
                return;
            }
        }
        self.reads.remote.remove(&id);
        match index {
            Some(index) => {
                self.reads
                    .ready
                    .push_back((id, index, self.now + self.cfg.election_timeout));
                self.release_ready_reads();
            }
            None => self.emit(Event::ReadFailed { id }),
        }
    }

    /// Leader: the newest round a quorum of voters has acknowledged; every read of that round or
    /// earlier is confirmed, and the lease runs from that round's start.
    pub(crate) fn confirm_reads(&mut self) {
        let Some(lead) = &mut self.lead else { return };
        let membership = self.log.membership();
        let mut acked: Vec<u64> = membership
            .voters
            .iter()
            .map(|id| {
                if *id == self.id {
                    lead.round
                } else {
                    lead.progress.get(id).map_or(0, |p| p.acked_round)
                }
            })
            .collect();
        if acked.is_empty() {
            return;
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_round = acked[membership.quorum() - 1];
        if let Some((_, sent)) = lead.round_sent.iter().find(|(r, _)| *r == quorum_round) {
            // The voters that acknowledged this round refuse votes for an election timeout on
            // their own clocks from when they heard it (after `sent`). With drift of at most δ
            // either way, that is at least ET/(1+δ) of real time, and a leader duration D on our
            // clock is at most D/(1-δ) of real time: D = ET·(1-δ)/(1+δ) keeps the lease inside.
            let drift = u128::from(self.cfg.clock_drift_max_ppm);
            let et = self.cfg.election_timeout.as_nanos();
            let lease = et * (1_000_000 - drift) / (1_000_000 + drift);
            let until =
                *sent + std::time::Duration::from_nanos(u64::try_from(lease).unwrap_or(u64::MAX));
            if !lead.lease_revoked && lead.lease_until.is_none_or(|u| u < until) {
                lead.lease_until = Some(until);
            }
        }
        let mut confirmed = Vec::new();
        while lead.reads.front().is_some_and(|r| r.round <= quorum_round) {
            confirmed.push(lead.reads.pop_front().expect("checked"));
        }
        for read in confirmed {
            self.read_confirmed(read.origin, read.id, read.index);
        }
    }

    fn read_confirmed(&mut self, origin: ReadOrigin, id: ReadId, index: LogIndex) {
        // A read index is a commit index of this leader's term (thesis §6.4 step 1).
        assert!(index <= self.commit, "{}: read index past commit", self.id);
        match origin {
            ReadOrigin::Local => {
                self.reads
                    .ready
                    .push_back((id, index, self.now + self.cfg.election_timeout));
                self.release_ready_reads();
            }
            ReadOrigin::Remote(to) => self.send(to, Body::ReadIndexResp(id, Some(index))),
        }
    }

    /// Emits `ReadReady` for confirmed reads whose index has been applied.
    pub(crate) fn release_ready_reads(&mut self) {
        let applied = self.applied;
        let mut i = 0;
        while i < self.reads.ready.len() {
            if self.reads.ready[i].1 <= applied {
                let (id, index, _) = self.reads.ready.remove(i).expect("in range");
                self.emit(Event::ReadReady { id, index });
            } else {
                i += 1;
            }
        }
    }

    /// Leader: the no-op of this term committed; reads that waited for it join a round.
    pub(crate) fn on_first_commit_in_term(&mut self) {
        let waiting: Vec<(ReadOrigin, ReadId)> = self
            .lead
            .as_mut()
            .map(|l| l.reads_before_commit.drain(..).collect())
            .unwrap_or_default();
        for (origin, id) in waiting {
            self.leader_read(origin, id);
        }
    }

    /// Leadership lost: every read the leader held fails (never served stale).
    pub(crate) fn fail_leader_reads(&mut self) {
        let Some(lead) = &mut self.lead else { return };
        let mut failed: Vec<(ReadOrigin, ReadId)> =
            lead.reads.drain(..).map(|r| (r.origin, r.id)).collect();
        failed.extend(lead.reads_before_commit.drain(..));
        for (origin, id) in failed {
            match origin {
                ReadOrigin::Local => self.emit(Event::ReadFailed { id }),
                ReadOrigin::Remote(to) => self.send(to, Body::ReadIndexResp(id, None)),
            }
        }
    }

    /// Role or leader changed: reads forwarded to the old leader fail.
    pub(crate) fn fail_remote_reads(&mut self) {
        let ids: Vec<ReadId> = std::mem::take(&mut self.reads.remote).into_keys().collect();
        for id in ids {
            self.emit(Event::ReadFailed { id });
        }
    }

    /// Reads forwarded more than an election timeout ago are presumed lost, and confirmed reads
    /// whose index was not applied within an election timeout (a follower cut off after the leader
    /// answered) fail: a read never waits forever (thesis §6.4: a read that cannot be confirmed is
    /// failed, not held).
    pub(crate) fn expire_reads(&mut self) {
        let timeout = self.cfg.election_timeout;
        let now = self.now;
        let expired: Vec<ReadId> = self
            .reads
            .remote
            .iter()
            .filter(|(_, (_, sent))| now >= *sent + timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.reads.remote.remove(&id);
            self.emit(Event::ReadFailed { id });
        }
        let mut i = 0;
        while i < self.reads.ready.len() {
            if now >= self.reads.ready[i].2 {
                let (id, _, _) = self.reads.ready.remove(i).expect("in range");
                self.emit(Event::ReadFailed { id });
            } else {
                i += 1;
            }
        }
    }

    /// When the oldest pending read expires, if any.
    pub(crate) fn read_expiry(&self) -> Option<Instant> {
        let remote = self
            .reads
            .remote
            .values()
            .map(|(_, sent)| *sent + self.cfg.election_timeout)
            .min();
        let ready = self.reads.ready.iter().map(|r| r.2).min();
        match (remote, ready) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
