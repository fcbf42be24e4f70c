//! The driving contract's entry points: inputs in (`handle`, `handle_frame`), the dispatch of
//! every message by term (Raft §5.1), timeouts, and outputs out through the `Outbox`.

use crate::ids::{NodeId, PersistSeq};
use crate::raft::io::{Event, Input, Output, Role, TransferOutcome};
use crate::raft::message::{Body, Envelope, VoteResponse};
use crate::raft::node::RaftNode;
use crate::raft::outbox::{Needs, Persisted};
use crate::raft::state_machine::StateMachine;
use crate::raft::types::HardState;
use crate::time::Instant;

/// Terms and indexes beyond 2^62 cannot arise in a real cluster (a billion entries a second for
/// 146 years); a peer that sends one is hostile or broken, and accepting it would overflow the
/// arithmetic on terms and indexes (a hostile peer must not overflow them).
const PLAUSIBLE_MAX: u64 = 1 << 62;

fn plausible(env: &Envelope) -> bool {
    let ok = |id: crate::ids::LogId| id.index.0 <= PLAUSIBLE_MAX && id.term.0 <= PLAUSIBLE_MAX;
    let idx = |i: crate::ids::LogIndex| i.0 <= PLAUSIBLE_MAX;
    env.term.0 <= PLAUSIBLE_MAX
        && match &env.body {
            Body::PreVote(r) | Body::Vote(r) => ok(r.last_log),
            Body::Append(a) => ok(a.prev) && idx(a.commit) && a.entries.iter().all(|e| ok(e.id)),
            Body::AppendResp(crate::raft::message::AppendResponse::Accepted { match_index }) => {
                idx(*match_index)
            }
            Body::AppendResp(crate::raft::message::AppendResponse::Rejected { rejected, hint }) => {
                idx(*rejected) && ok(*hint)
            }
            Body::Heartbeat(h) => idx(h.commit),
            Body::HeartbeatResp(h) => idx(h.last_index),
            Body::Snapshot(c) => ok(c.meta.last),
            Body::SnapshotResp(a) => ok(a.last),
            Body::ReadIndexResp(_, Some(i)) => idx(*i),
            Body::Removed { config } => ok(*config),
            Body::PreVoteResp(_)
            | Body::VoteResp(_)
            | Body::TimeoutNow
            | Body::ReadIndex(_)
            | Body::ReadIndexResp(_, None) => true,
        }
}

impl<S: StateMachine> RaftNode<S> {
    /// Entry point for every message: term rules first (Raft §5.1), then per-kind handlers.
    pub(crate) fn step(&mut self, env: Envelope) {
        assert_eq!(
            self.role == Role::Leader,
            self.lead.is_some(),
            "{}: leader state iff leader",
            self.id
        );
        if env.to != self.id || env.from == self.id || !plausible(&env) {
            self.stats.messages_invalid += 1;
            return;
        }
        // Removal notices are about the log, not the term (see `on_removed`); a (pre-)vote from a
        // node our committed configuration removed is answered with one, whatever the terms.
        match &env.body {
            Body::Removed { config } => {
                self.on_removed(env.from, *config);
                return;
            }
            Body::PreVote(req) | Body::Vote(req) => {
                if let Some(config) = self.removal_known(env.from, req.last_log) {
                    self.send(env.from, Body::Removed { config });
                    return;
                }
            }
            _ => {}
        }
        if env.term > self.term {
            match &env.body {
                // A pre-vote carries the term the sender *would* use; it changes nobody's term.
                Body::PreVote(_) => {}
                // A granted pre-vote answer carries our own future term.
                Body::PreVoteResp(VoteResponse { granted: true }) => {}
                Body::Vote(req) if self.in_lease() && !req.transfer => {
                    // Leader stickiness: a node that heard from a leader within the election timeout
                    // neither votes nor adopts the term (disruptive rejoiner, thesis §9.6; etcd `checkquorum.txt`).
                    self.stats.votes_ignored_in_lease += 1;
                    return;
                }
                Body::Append(_) | Body::Heartbeat(_) | Body::Snapshot(_) => {
                    self.become_follower(env.term, Some(env.from))
                }
                _ => self.become_follower(env.term, None),
            }
        } else if env.term < self.term {
            self.stats.messages_stale += 1;
            match env.body {
                // Tell a stale leader about the newer term so it steps down (etcd: needed with
                // pre-vote/check-quorum, or a partitioned old leader never learns).
                Body::Append(_) | Body::Heartbeat(_) | Body::Snapshot(_) => {
                    let resp = crate::raft::message::HeartbeatResponse {
                        round: 0,
                        last_index: self.log.last_index(),
                    };
                    self.send(env.from, Body::HeartbeatResp(resp));
                }
                Body::PreVote(_) => {
                    self.send(env.from, Body::PreVoteResp(VoteResponse { granted: false }))
                }
                Body::Vote(_) => {
                    self.send(env.from, Body::VoteResp(VoteResponse { granted: false }))
                }
                _ => {}
            }
            return;
        }
        let from = env.from;
        let term = env.term;
        match env.body {
            Body::PreVote(req) => self.on_pre_vote(from, term, req),
            Body::PreVoteResp(resp) => self.on_vote_resp(from, term, resp, true),
            Body::Vote(req) => self.on_vote(from, term, req),
            Body::VoteResp(resp) => self.on_vote_resp(from, term, resp, false),
            Body::Append(req) => {
                if self.accept_leader(from) {
                    self.on_append(from, term, req);
                }
            }
            Body::AppendResp(resp) => self.on_append_resp(from, term, resp),
            Body::Heartbeat(req) => {
                if self.accept_leader(from) {
                    self.on_heartbeat(from, term, req);
                }
            }
            Body::HeartbeatResp(resp) => self.on_heartbeat_resp(from, term, resp),
            Body::Snapshot(chunk) => {
                if self.accept_leader(from) {
                    self.on_snapshot_chunk(from, term, chunk);
                }
            }
            Body::SnapshotResp(ack) => self.on_snapshot_ack(from, term, ack),
            Body::TimeoutNow => self.on_timeout_now(from, term),
            Body::ReadIndex(id) => self.on_read_index(from, term, id),
            Body::ReadIndexResp(id, index) => self.on_read_index_resp(from, term, id, index),
            Body::Removed { .. } => {}
        }
    }

    /// Feeds one input. Drain [`RaftNode::poll_output`] afterwards.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.advance_clock(now);
        match input {
            Input::Message(env) => self.step(env),
            Input::Persisted(seq) => self.on_persisted(seq),
            Input::Timeout => self.on_timeout(),
        }
    }

    /// Decodes a raw frame and feeds it; malformed frames are dropped and counted.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) {
        match Envelope::decode(frame, self.cfg.frame_bytes_max) {
            Ok(env) => self.handle(now, Input::Message(env)),
            Err(err) => {
                self.stats.frames_malformed += 1;
                tracing::debug!(node = %self.id, %err, "dropped malformed frame");
            }
        }
    }

    /// The next output, if any. Persist batches come before the messages that depend on them;
    /// messages that need a write (votes, acknowledgements) are released only after `Persisted`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.flush();
        self.outbox.pop()
    }

    fn on_persisted(&mut self, seq: PersistSeq) {
        match self.outbox.on_persisted(seq, &self.log, self.term) {
            Persisted::Unknown => self.stats.persisted_unknown += 1,
            Persisted::Durable { stale } => {
                self.stats.stale_released_dropped += stale;
                if self.lead.is_some() {
                    self.maybe_commit();
                }
            }
        }
    }

    /// Emits the staged writes as one batch and lets the leader send what proposals produced.
    fn flush(&mut self) {
        if let Some(lead) = &mut self.lead {
            let append = std::mem::take(&mut lead.append_needed);
            let round = std::mem::take(&mut lead.round_needed);
            if append {
                let peers: Vec<NodeId> = lead.progress.keys().copied().collect();
                for peer in peers {
                    self.send_append(peer);
                }
                // A single voter commits on its own once the write is durable.
                self.maybe_commit();
            }
            if round && self.lead.is_some() {
                self.broadcast_heartbeat();
            }
        }
        let hard_state = HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
        };
        self.outbox.issue(hard_state, self.log.last_id());
    }

    fn on_timeout(&mut self) {
        assert_eq!(
            self.role == Role::Leader,
            self.lead.is_some(),
            "{}: leader state iff leader",
            self.id
        );
        self.expire_reads();
        let now = self.now;
        if self.lead.is_some() {
            let lead = self.lead.as_ref().expect("checked");
            let (hb, cq, transfer) = (lead.heartbeat_at, lead.check_quorum_at, lead.transfer);
            if let Some((to, deadline)) = transfer {
                if now >= deadline {
                    tracing::debug!(node = %self.id, "leadership transfer timed out");
                    self.lead.as_mut().expect("checked").transfer = None;
                    self.emit(Event::TransferEnded {
                        to,
                        outcome: TransferOutcome::TimedOut,
                    });
                }
            }
            if self.cfg.check_quorum && now >= cq {
                self.check_quorum();
                if self.lead.is_none() {
                    return;
                }
            }
            if now >= hb {
                self.tick_heartbeat();
            }
        } else if self.election.deadline.is_some_and(|d| now >= d) {
            self.on_election_timeout();
        }
    }

    /// Queues `body` for `to`. Messages from a non-leader carry state that must be durable first
    /// (a granted vote, an acknowledged append, a new term): they wait for the persist batch that
    /// holds that state (Raft Figure 2 "respond after persisting"; openraft io_ordering).
    pub(crate) fn send(&mut self, to: NodeId, body: Body) {
        let env = Envelope {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.send_envelope(env);
    }

    pub(crate) fn send_envelope(&mut self, env: Envelope) {
        assert!(
            env.from == self.id && env.to != self.id,
            "{}: sends {env:?}",
            self.id
        );
        if matches!(env.body, Body::TimeoutNow) {
            if let Some(lead) = &mut self.lead {
                lead.lease_revoked = true;
                lead.lease_until = None;
            }
        }
        let needs = if self.role == Role::Leader {
            // A leader's messages need nothing of its log on disk (thesis §10.2.1), but they carry
            // its term, which must be durable first: a single voter wins the election in the same
            // step it enters the term, and a crash before that write must not leave two leaders'
            // entries under one term on a learner (Raft Figure 2: persist before responding,
            // here before leading).
            Needs::Term
        } else if matches!(env.body, Body::PreVote(_) | Body::PreVoteResp(_)) {
            // A pre-vote promises nothing and changes no state (thesis §9.6).
            Needs::Nothing
        } else {
            Needs::Staged
        };
        if !self.outbox.send(env, needs) {
            self.stats.outbox_dropped += 1;
        }
    }

    pub(crate) fn emit(&mut self, event: Event) {
        self.outbox.emit(event);
    }
}
