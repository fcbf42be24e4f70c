//! Log replication (Raft §5.3): the leader's pipelined, windowed appends with fast back-tracking,
//! the follower's consistency check, heartbeats, and commitment (§5.4.2).

use crate::ids::{LogId, LogIndex, NodeId, Term};
use crate::raft::io::Role;
use crate::raft::message::{
    AppendRequest, AppendResponse, Body, HeartbeatRequest, HeartbeatResponse,
};
use crate::raft::node::RaftNode;
use crate::raft::progress::ProgressState;
use crate::raft::state_machine::StateMachine;

/// Recent heartbeat rounds remembered for leases; older acknowledgements are useless anyway.
const ROUNDS_REMEMBERED_MAX: usize = 64;

impl<S: StateMachine> RaftNode<S> {
    /// Leader: sends what `to` is missing, within its window.
    pub(crate) fn send_append(&mut self, to: NodeId) {
        let now = self.now;
        let append_timeout = self.cfg.append_timeout;
        loop {
            let Some(lead) = &mut self.lead else { return };
            let Some(pr) = lead.progress.get_mut(&to) else {
                return;
            };
            match pr.state {
                ProgressState::Snapshot { .. } => return,
                ProgressState::Probe { sent_at: Some(t) } if now < t + append_timeout => return,
                ProgressState::Replicate if pr.inflight.len() >= self.cfg.inflight_messages_max => {
                    return
                }
                _ => {}
            }
            let probing = matches!(pr.state, ProgressState::Probe { .. });
            let next = pr.next_index;
            let prev_index = next.prev();
            let (Some(prev_term), Some(entries)) = (
                self.log.term(prev_index),
                self.log
                    .entries_from(next, self.cfg.append_entries_max, self.cfg.append_bytes_max),
            ) else {
                // What the follower needs was compacted away: send the snapshot (Raft §7).
                self.start_snapshot(to);
                return;
            };
            if entries.is_empty() && !probing {
                return;
            }
            let last_sent = entries.last().map_or(prev_index, |e| e.index());
            assert!(
                last_sent <= self.log.last_index() && next > pr.match_index,
                "{}: append to {to} outside the log or below its match",
                self.id
            );
            if probing {
                pr.state = ProgressState::Probe { sent_at: Some(now) };
            } else {
                pr.next_index = last_sent.next();
                pr.inflight.push_back(last_sent);
            }
            self.stats.appends_sent += 1;
            self.stats.entries_sent += entries.len() as u64;
            let req = AppendRequest {
                prev: LogId::new(prev_term, prev_index),
                entries,
                commit: self.commit,
            };
            self.send(to, Body::Append(req));
            if probing {
                return;
            }
        }
    }

    /// Head of every leader-to-follower handler: `accept_leader` just made us follow the sender in
    /// this term (Raft §5.1, §5.2).
    pub(crate) fn assert_following(&self, from: NodeId, term: Term) {
        assert!(
            from != self.id
                && term == self.term
                && self.role == Role::Follower
                && self.leader == Some(from),
            "{}: {from} in {term} is not our leader",
            self.id
        );
    }

    /// Follower: the consistency check and append of Raft §5.3 (Figure 2 receiver steps 2-5).
    pub(crate) fn on_append(&mut self, from: NodeId, term: Term, req: AppendRequest) {
        self.assert_following(from, term);
        if !self.valid_append(&req) {
            self.stats.messages_invalid += 1;
            return;
        }
        let AppendRequest {
            mut prev,
            mut entries,
            commit,
        } = req;
        // Entries at or below our commit are committed and therefore already ours (Log Matching);
        // skip them so a stale or compacted prefix never causes a truncation (etcd TestLogReplicationWithReorderedMessage).
        if prev.index < self.commit {
            let skip = usize::try_from(self.commit.0 - prev.index.0)
                .unwrap_or(usize::MAX)
                .min(entries.len());
            if let Some(last_skipped) = skip.checked_sub(1).map(|i| entries[i].id) {
                prev = last_skipped;
            }
            entries.drain(..skip);
            if prev.index < self.commit {
                // The whole message is behind our commit: everything it carries matches.
                let match_index = prev.index;
                self.send(
                    from,
                    Body::AppendResp(AppendResponse::Accepted { match_index }),
                );
                return;
            }
        }
        match self.log.term(prev.index) {
            Some(t) if t == prev.term => {}
            _ => {
                let hint = if prev.index > self.log.last_index() {
                    self.log.last_id()
                } else {
                    self.log.conflict_hint(prev.index, prev.term)
                };
                self.send(
                    from,
                    Body::AppendResp(AppendResponse::Rejected {
                        rejected: prev.index,
                        hint,
                    }),
                );
                return;
            }
        }
        let match_index = LogIndex(prev.index.0 + entries.len() as u64);
        // Find the first entry we do not already hold; truncate only on a real term conflict.
        let mut first_new = entries.len();
        for (i, e) in entries.iter().enumerate() {
            match self.log.term(e.index()) {
                Some(t) if t == e.term() => continue,
                Some(_) => {
                    if e.index() <= self.commit {
                        self.stats.messages_invalid += 1;
                        tracing::warn!(node = %self.id, index = ?e.index(), "leader tried to overwrite a committed entry");
                        return;
                    }
                    self.truncate_log(e.index());
                    first_new = i;
                    break;
                }
                None => {
                    first_new = i;
                    break;
                }
            }
        }
        if first_new < entries.len() {
            entries.drain(..first_new);
            self.append_entries(entries);
        }
        let new_commit = commit.min(match_index);
        if new_commit > self.commit {
            self.commit = new_commit;
            // Postcondition: a follower commits only what it holds from this leader (Figure 2,
            // receiver step 5: commit = min(leaderCommit, index of last new entry)).
            assert!(
                self.commit <= match_index && self.log.term(self.commit).is_some(),
                "{}: commit {:?} past what the append proved ({match_index:?})",
                self.id,
                self.commit
            );
            self.outbox.mark_hard_state();
            self.apply_committed();
        }
        self.send(
            from,
            Body::AppendResp(AppendResponse::Accepted { match_index }),
        );
    }

    /// Structural validation of an append from a possibly hostile peer: consecutive indexes, terms
    /// that never decrease and never exceed the sender's term.
    fn valid_append(&self, req: &AppendRequest) -> bool {
        let mut prev = req.prev;
        if prev.term > self.term || req.entries.len() > self.cfg.append_entries_max.max(1) * 4 {
            return false;
        }
        for e in &req.entries {
            let Some(expected) = prev.index.0.checked_add(1) else {
                return false;
            };
            if e.index().0 != expected || e.term() < prev.term || e.term() > self.term {
                return false;
            }
            if let crate::raft::types::Payload::Command { data, .. } = &e.payload {
                if data.len() > self.cfg.command_bytes_max {
                    return false;
                }
            }
            prev = e.id;
        }
        true
    }

    pub(crate) fn on_append_resp(&mut self, from: NodeId, term: Term, resp: AppendResponse) {
        // Dispatch (`step`) settled the term: this message is from another node, in ours.
        assert!(
            from != self.id && term == self.term,
            "{}: misrouted {from} {term}",
            self.id
        );
        let last = self.log.last_index();
        let now = self.now;
        let Some(lead) = &mut self.lead else {
            self.stats.messages_stale += 1;
            return;
        };
        let Some(pr) = lead.progress.get_mut(&from) else {
            self.stats.messages_stale += 1;
            return;
        };
        pr.recent_active = true;
        match resp {
            AppendResponse::Accepted { match_index } => {
                if match_index > last {
                    self.stats.messages_invalid += 1;
                    return;
                }
                let advanced = pr.on_match(match_index, now);
                if matches!(pr.state, ProgressState::Probe { .. })
                    && (advanced || match_index == pr.match_index)
                {
                    pr.state = ProgressState::Replicate;
                    pr.next_index = pr.match_index.next();
                    pr.inflight.clear();
                }
                let transfer_ready = lead.transfer.is_some_and(|(to, _)| to == from)
                    && pr.match_index == last
                    && !pr.timeout_now_sent;
                if transfer_ready {
                    pr.timeout_now_sent = true;
                }
                if advanced {
                    self.maybe_commit();
                }
                if transfer_ready {
                    self.send(from, crate::raft::message::Body::TimeoutNow);
                }
                self.send_append(from);
            }
            AppendResponse::Rejected { rejected, hint } => {
                if rejected <= pr.match_index || rejected >= pr.next_index {
                    // Outdated by a later success, or about an append we no longer consider sent.
                    self.stats.messages_stale += 1;
                    return;
                }
                // Fast back-tracking: skip to the last index at or before the hint whose term is at
                // most the hint's term in *our* log (etcd findConflictByTerm on both sides).
                let probe_from = if hint.index >= self.log.base().index {
                    self.log.conflict_hint(hint.index, hint.term).index
                } else {
                    hint.index
                };
                let pr = self
                    .lead
                    .as_mut()
                    .expect("leader")
                    .progress
                    .get_mut(&from)
                    .expect("present");
                pr.become_probe();
                pr.next_index = probe_from.next().min(rejected).max(pr.match_index.next());
                self.send_append(from);
            }
        }
    }

    /// Leader: advances the commit index to the highest index a quorum of voters holds, if that
    /// entry is from the current term (Raft §5.4.2: never commit older terms by counting, Figure 8).
    pub(crate) fn maybe_commit(&mut self) {
        let Some(lead) = &self.lead else { return };
        let membership = self.log.membership();
        let mut matches: Vec<LogIndex> = membership
            .voters
            .iter()
            .map(|id| {
                if *id == self.id {
                    self.outbox.durable_match()
                } else {
                    lead.progress.get(id).map_or(LogIndex(0), |p| p.match_index)
                }
            })
            .collect();
        if matches.is_empty() {
            return;
        }
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matches[membership.quorum() - 1];
        if candidate <= self.commit || self.log.term(candidate) != Some(self.term) {
            return;
        }
        let first_in_term = self.log.term(self.commit) != Some(self.term);
        let before = self.commit;
        self.commit = candidate;
        // Postconditions (Raft §5.4.2): commit advanced, within the log, to an entry of this
        // leader's term held by a quorum that counts our own log only as far as it is durable.
        assert!(
            self.commit > before && self.commit <= self.log.last_index(),
            "{}: commit {:?} not advanced within the log",
            self.id,
            self.commit
        );
        assert_eq!(
            self.log.term(self.commit),
            Some(self.term),
            "{}: committed by counting an entry of an older term (Figure 8)",
            self.id
        );
        self.outbox.mark_hard_state();
        if first_in_term {
            self.on_first_commit_in_term();
        }
        self.apply_committed();
    }

    /// Leader: one heartbeat tick: retransmissions, a new heartbeat round, and the next tick.
    pub(crate) fn tick_heartbeat(&mut self) {
        let now = self.now;
        let append_timeout = self.cfg.append_timeout;
        let last = self.log.last_index();
        let lead = self.lead.as_mut().expect("leader");
        lead.heartbeat_at = now + self.cfg.heartbeat_interval;
        let mut resend = Vec::new();
        for (id, pr) in &mut lead.progress {
            match pr.state {
                // Appends unacknowledged for too long are presumed lost: probe again.
                ProgressState::Replicate
                    if !pr.inflight.is_empty() && now >= pr.last_ack_at + append_timeout =>
                {
                    pr.become_probe();
                    resend.push(*id);
                }
                ProgressState::Snapshot { sent_at, .. } if now >= sent_at + append_timeout => {
                    resend.push(*id)
                }
                _ if pr.match_index < last => resend.push(*id),
                _ => {}
            }
        }
        for id in resend {
            self.resend(id);
        }
        self.broadcast_heartbeat();
    }

    fn resend(&mut self, id: NodeId) {
        let is_snapshot = self
            .lead
            .as_ref()
            .and_then(|l| l.progress.get(&id))
            .is_some_and(|p| matches!(p.state, ProgressState::Snapshot { .. }));
        if is_snapshot {
            self.send_snapshot_chunk(id);
        } else {
            self.send_append(id);
        }
    }

    /// Leader: starts a heartbeat round to every member (learners too: they need the commit index).
    pub(crate) fn broadcast_heartbeat(&mut self) {
        let now = self.now;
        let commit = self.commit;
        let lead = self.lead.as_mut().expect("leader");
        lead.round += 1;
        let round = lead.round;
        lead.round_sent.push_back((round, now));
        while lead.round_sent.len() > ROUNDS_REMEMBERED_MAX {
            lead.round_sent.pop_front();
        }
        let targets: Vec<(NodeId, LogIndex)> = lead
            .progress
            .iter()
            .map(|(id, p)| (*id, commit.min(p.match_index)))
            .collect();
        for (id, commit) in targets {
            self.send(id, Body::Heartbeat(HeartbeatRequest { commit, round }));
        }
        // A single voter confirms its own rounds.
        self.confirm_reads();
    }

    pub(crate) fn on_heartbeat(&mut self, from: NodeId, term: Term, req: HeartbeatRequest) {
        self.assert_following(from, term);
        let commit = req.commit.min(self.log.last_index());
        if commit > self.commit {
            self.commit = commit;
            assert!(
                self.commit <= self.log.last_index(),
                "{}: commit past the log",
                self.id
            );
            self.outbox.mark_hard_state();
            self.apply_committed();
        }
        self.expire_reads();
        let resp = HeartbeatResponse {
            round: req.round,
            last_index: self.log.last_index(),
        };
        self.send(from, Body::HeartbeatResp(resp));
    }

    pub(crate) fn on_heartbeat_resp(&mut self, from: NodeId, term: Term, resp: HeartbeatResponse) {
        // Dispatch (`step`) settled the term: this message is from another node, in ours.
        assert!(
            from != self.id && term == self.term,
            "{}: misrouted {from} {term}",
            self.id
        );
        let last = self.log.last_index();
        let now = self.now;
        let append_timeout = self.cfg.append_timeout;
        let Some(lead) = &mut self.lead else {
            self.stats.messages_stale += 1;
            return;
        };
        let Some(pr) = lead.progress.get_mut(&from) else {
            self.stats.messages_stale += 1;
            return;
        };
        pr.recent_active = true;
        if resp.round <= lead.round {
            pr.acked_round = pr.acked_round.max(resp.round);
        }
        // A follower that is behind but whose probe got lost recovers here (etcd
        // heartbeat_resp_recovers_from_probing).
        let lagging = pr.match_index < last;
        if let ProgressState::Probe { sent_at: Some(t) } = pr.state {
            if now >= t + append_timeout {
                pr.state = ProgressState::Probe { sent_at: None };
            }
        }
        self.confirm_reads();
        if lagging {
            self.send_append(from);
        }
    }
}
