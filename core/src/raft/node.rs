//! `RaftNode`: one replica's state machine, its public API and the output funnel.
//!
//! Elections live in `election.rs`, replication in `replication.rs`, snapshots in `snapshot.rs`,
//! reads in `read.rs`; this file holds the state, the driving contract and persistence ordering.

use crate::ids::{ClientId, LogId, LogIndex, NodeId, PersistSeq, ReadId, Term};
use crate::raft::config::{Config, ConfigError};
use crate::raft::io::{
    DropReason, Event, Input, Output, Proposal, Role, TimerKind, TransferOutcome,
};
use crate::raft::log::RaftLog;
use crate::raft::message::{Body, Envelope};
use crate::raft::progress::Progress;
use crate::raft::state_machine::{Applied, DedupTable, SnapshotDecodeError, StateMachine};
use crate::raft::storage::{PersistBatch, PersistOp, Recovered};
use crate::raft::types::{Entry, HardState, Membership, MembershipChange, Payload, Snapshot};
use crate::rng::DetRng;
use crate::time::Instant;
use std::collections::{BTreeMap, VecDeque};

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
    Invalid(&'static str),
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
    Log(&'static str),
}

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

/// A snapshot being received chunk by chunk.
#[derive(Debug)]
pub(crate) struct IncomingSnapshot {
    pub term: Term,
    pub meta: crate::raft::types::SnapshotMeta,
    pub total: u64,
    pub data: Vec<u8>,
}

/// One Raft replica, generic over the application state machine it drives.
///
/// See the crate docs for the driving contract.
#[derive(Debug)]
pub struct RaftNode<S: StateMachine> {
    pub(crate) cfg: Config,
    pub(crate) id: NodeId,
    pub(crate) rng: DetRng,
    pub(crate) now: Instant,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog,
    pub(crate) commit: LogIndex,
    pub(crate) applied: LogIndex,
    pub(crate) sm: S,
    pub(crate) dedup: DedupTable,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) election_deadline: Option<Instant>,
    pub(crate) last_leader_contact: Option<Instant>,
    pub(crate) votes: BTreeMap<NodeId, bool>,
    pub(crate) lead: Option<LeaderState>,
    pub(crate) incoming_snapshot: Option<IncomingSnapshot>,
    /// Confirmed reads waiting for apply to reach their index.
    /// Confirmed reads waiting for apply to reach their index: (id, index, expires at).
    pub(crate) ready_reads: VecDeque<(ReadId, LogIndex, Instant)>,
    /// Reads forwarded to the leader: id -> (leader, sent at).
    pub(crate) remote_reads: BTreeMap<ReadId, (NodeId, Instant)>,
    /// Proposals made here, by index, awaiting apply: (what, term). Bounded by
    /// `pending_proposals_max`; each leaves with exactly one event: `Applied` or
    /// `MembershipApplied` on apply, `ProposalDropped` on truncation, snapshot install or a
    /// de-duplication refusal.
    pub(crate) local_proposals: BTreeMap<LogIndex, (Proposal, Term)>,
    pub(crate) last_unix_ms: u64,
    /// When this incarnation started (a restarted voter ignores votes for an election timeout).
    pub(crate) started_at: Instant,
    /// A leader told us we are not in its committed configuration: never campaign again.
    pub(crate) removed: bool,
    staged: Vec<PersistOp>,
    hard_state_dirty: bool,
    persist_issued: PersistSeq,
    persist_durable: PersistSeq,
    persist_pending: VecDeque<(PersistSeq, LogId)>,
    /// The last index known durable locally and still in the log (the leader's own vote in the
    /// commit count: etcd #14370).
    pub(crate) durable_match: LogIndex,
    /// The persist batch that records the current term; leader messages wait for it.
    pub(crate) term_seq: PersistSeq,
    ready: VecDeque<Output>,
    waiting: VecDeque<(PersistSeq, Envelope)>,
    pub(crate) stats: Stats,
}

impl<S: StateMachine> RaftNode<S> {
    /// Starts a replica from what its storage recovered (`Recovered::default()` plus a bootstrap
    /// snapshot for a new cluster, see [`Recovered::bootstrap`]). `seed` feeds the election jitter.
    pub fn new(
        cfg: Config,
        recovered: Recovered,
        sm: S,
        seed: u64,
        now: Instant,
    ) -> Result<RaftNode<S>, StartError> {
        cfg.validate()?;
        let Recovered {
            hard_state,
            snapshot,
            base,
            entries,
        } = recovered;
        let snapshot = snapshot.unwrap_or_default();
        if entries
            .windows(2)
            .any(|w| w[1].index() != w[0].index().next() || w[1].term() < w[0].term())
        {
            return Err(StartError::Log("entries are not contiguous"));
        }
        if entries
            .first()
            .is_some_and(|e| e.index() != base.index.next())
        {
            return Err(StartError::Log("entries do not follow the base"));
        }
        let mut dedup = DedupTable::new(cfg.dedup_clients_max);
        let mut sm = sm;
        if snapshot.meta.last.index > LogIndex(0) {
            dedup.restore(&mut sm, &snapshot.data)?;
        }
        let log = RaftLog::new(snapshot, base, entries);
        let applied = log.snapshot().meta.last.index;
        let commit = hard_state.commit.clamp(applied, log.last_index());
        let term = hard_state.term.max(log.last_id().term);
        let mut node = RaftNode {
            id: cfg.id,
            rng: DetRng::fork(seed, "raft"),
            cfg,
            now,
            term,
            vote: if term == hard_state.term {
                hard_state.vote
            } else {
                None
            },
            durable_match: log.last_index(),
            term_seq: PersistSeq(0),
            last_unix_ms: log.entries().last().map_or(0, |e| e.unix_ms),
            started_at: now,
            removed: false,
            log,
            commit,
            applied,
            sm,
            dedup,
            role: Role::Follower,
            leader: None,
            election_deadline: None,
            last_leader_contact: None,
            votes: BTreeMap::new(),
            lead: None,
            incoming_snapshot: None,
            ready_reads: VecDeque::new(),
            remote_reads: BTreeMap::new(),
            local_proposals: BTreeMap::new(),
            staged: Vec::new(),
            hard_state_dirty: false,
            persist_issued: PersistSeq(0),
            persist_durable: PersistSeq(0),
            persist_pending: VecDeque::new(),
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            stats: Stats::default(),
        };
        node.apply_committed();
        node.reset_election_deadline();
        node.check_invariants();
        Ok(node)
    }

    // ----- the driving contract -------------------------------------------------------------

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
        if let Some(out) = self.ready.pop_front() {
            return Some(out);
        }
        None
    }

    /// The next deadline and why. Call `handle(now, Input::Timeout)` once it has passed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerKind)> {
        let role_timer = self.role_timeout();
        match (role_timer, self.read_expiry()) {
            (Some(a), Some(b)) if b < a.0 => Some((b, TimerKind::ReadExpiry)),
            (None, Some(b)) => Some((b, TimerKind::ReadExpiry)),
            (a, _) => a,
        }
    }

    fn role_timeout(&self) -> Option<(Instant, TimerKind)> {
        match &self.lead {
            Some(lead) => {
                let mut best = (lead.heartbeat_at, TimerKind::Heartbeat);
                if self.cfg.check_quorum && lead.check_quorum_at < best.0 {
                    best = (lead.check_quorum_at, TimerKind::CheckQuorum);
                }
                if let Some((_, deadline)) = lead.transfer {
                    if deadline < best.0 {
                        best = (deadline, TimerKind::TransferTimeout);
                    }
                }
                Some(best)
            }
            None => self.election_deadline.map(|d| (d, TimerKind::Election)),
        }
    }

    // ----- application commands ---------------------------------------------------------------

    /// Proposes a command for `(client, seq)`. `unix_ms` is this node's wall clock, stamped into the
    /// entry. Returns the entry's index; the result arrives as `Event::Applied`.
    pub fn propose(
        &mut self,
        now: Instant,
        unix_ms: u64,
        client: ClientId,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<LogIndex, ProposeError> {
        self.advance_clock(now);
        let Some(lead) = &self.lead else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if lead.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if data.len() > self.cfg.command_bytes_max {
            return Err(ProposeError::TooLarge {
                len: data.len(),
                max: self.cfg.command_bytes_max,
            });
        }
        let uncommitted = self.log.last_index().0 - self.commit.0;
        if uncommitted >= self.cfg.uncommitted_entries_max as u64
            || self.local_proposals.len() >= self.cfg.pending_proposals_max
        {
            return Err(ProposeError::Backpressure);
        }
        let index = self.append_as_leader(unix_ms, Payload::Command { client, seq, data });
        self.local_proposals
            .insert(index, (Proposal::Command { client, seq }, self.term));
        Ok(index)
    }

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
                    return Err(MembershipError::Invalid("already a member"));
                }
                next.learners.insert(id);
            }
            MembershipChange::Promote(id) => {
                if !next.learners.contains(&id) {
                    return Err(MembershipError::Invalid("not a learner"));
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
                    return Err(MembershipError::Invalid("not a member"));
                }
                next.voters.remove(&id);
                next.learners.remove(&id);
                if next.voters.is_empty() {
                    return Err(MembershipError::Invalid("cannot remove the last voter"));
                }
            }
        }
        if self.local_proposals.len() >= self.cfg.pending_proposals_max {
            return Err(MembershipError::NotReady);
        }
        let index = self.append_as_leader(unix_ms, Payload::Membership(next));
        self.local_proposals
            .insert(index, (Proposal::Membership, self.term));
        Ok(index)
    }

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

    // ----- inspection -------------------------------------------------------------------------

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

    /// This replica's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The role (cheaper than `status()`, which copies the membership).
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    #[must_use]
    pub fn term(&self) -> Term {
        self.term
    }

    /// The commit index.
    #[must_use]
    pub fn commit(&self) -> LogIndex {
        self.commit
    }

    /// The log, for checkers and tests.
    #[must_use]
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The application state machine.
    #[must_use]
    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// This node's configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The node's current time (the latest `now` it was given).
    #[must_use]
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Asserts the node's internal invariants (TigerBeetle's assertion discipline; ARCHITECTURE.md,
    /// "Errors"). Called after every step in
    /// tests and simulation; cheap enough to keep on.
    pub fn check_invariants(&self) {
        let snap = self.log.snapshot().meta.last.index;
        assert!(
            self.log.base().index <= snap || self.log.first_index() <= snap,
            "{}: base past snapshot",
            self.id
        );
        assert!(
            snap <= self.applied,
            "{}: snapshot {:?} after applied {:?}",
            self.id,
            snap,
            self.applied
        );
        assert!(
            self.applied <= self.commit,
            "{}: applied {:?} after commit {:?}",
            self.id,
            self.applied,
            self.commit
        );
        assert!(
            self.commit <= self.log.last_index(),
            "{}: commit {:?} after last {:?}",
            self.id,
            self.commit,
            self.log.last_index()
        );
        assert!(
            self.durable_match <= self.log.last_index(),
            "{}: durable match past the log",
            self.id
        );
        assert!(
            self.log.last_id().term <= self.term,
            "{}: log term {:?} above current term {:?}",
            self.id,
            self.log.last_id().term,
            self.term
        );
        assert_eq!(
            self.role == Role::Leader,
            self.lead.is_some(),
            "{}: leader state iff leader",
            self.id
        );
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.id));
            assert_eq!(
                self.vote,
                Some(self.id),
                "{}: a leader voted for itself",
                self.id
            );
        }
        assert!(self.persist_durable <= self.persist_issued);
    }

    // ----- internals shared by the concern files -----------------------------------------------

    fn advance_clock(&mut self, now: Instant) {
        // A runtime handing us an older `now` is tolerated (clocks are the runtime's concern); time
        // inside the core never goes backwards.
        if now > self.now {
            self.now = now;
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
        if matches!(env.body, Body::TimeoutNow) {
            if let Some(lead) = &mut self.lead {
                lead.lease_revoked = true;
                lead.lease_until = None;
            }
        }
        if self.ready.len() + self.waiting.len() >= self.cfg.outbox_messages_max {
            self.stats.outbox_dropped += 1;
            return;
        }
        let needs_durability = self.role != Role::Leader
            && !matches!(env.body, Body::PreVote(_) | Body::PreVoteResp(_));
        let needs = if self.role == Role::Leader {
            // A leader's messages need nothing of its log on disk (thesis §10.2.1), but they carry
            // its term, which must be durable first: a single voter wins the election in the same
            // step it enters the term, and a crash before that write must not leave two leaders'
            // entries under one term on a learner (Raft Figure 2: persist before responding,
            // here before leading).
            if self.term_seq > self.persist_durable {
                self.term_seq
            } else {
                PersistSeq(0)
            }
        } else if !needs_durability {
            PersistSeq(0)
        } else if self.staged.is_empty() && !self.hard_state_dirty {
            self.persist_issued
        } else {
            PersistSeq(self.persist_issued.0 + 1)
        };
        if needs <= self.persist_durable && self.waiting.is_empty() {
            self.ready.push_back(Output::Send(env));
        } else {
            self.waiting.push_back((needs, env));
        }
    }

    pub(crate) fn emit(&mut self, event: Event) {
        self.ready.push_back(Output::Event(event));
    }

    pub(crate) fn stage(&mut self, op: PersistOp) {
        // Consecutive appends merge into one operation (one write for a burst of proposals).
        match (op, self.staged.last_mut()) {
            (PersistOp::Append(new), Some(PersistOp::Append(prev))) => prev.extend(new),
            (op, _) => self.staged.push(op),
        }
    }

    pub(crate) fn mark_hard_state(&mut self) {
        self.hard_state_dirty = true;
    }

    /// The term changed: the batch about to be issued records it.
    pub(crate) fn mark_term_changed(&mut self) {
        self.hard_state_dirty = true;
        self.term_seq = PersistSeq(self.persist_issued.0 + 1);
    }

    /// Appends entries to the log and stages them for persistence.
    pub(crate) fn append_entries(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        if let Some(last) = entries.last() {
            self.last_unix_ms = self.last_unix_ms.max(last.unix_ms);
        }
        let membership_changed = entries
            .iter()
            .any(|e| matches!(e.payload, Payload::Membership(_)));
        self.log.append(entries.clone());
        self.stage(PersistOp::Append(entries));
        if membership_changed {
            self.on_membership_changed();
        }
    }

    /// Truncates the log from `from` (a real conflict only, never at or below commit: Raft §5.3;
    /// openraft 9540c904).
    pub(crate) fn truncate_log(&mut self, from: LogIndex) {
        assert!(
            from > self.commit,
            "{}: truncating committed entry {:?} (commit {:?})",
            self.id,
            from,
            self.commit
        );
        let had_config = self.log.membership_index() >= from;
        self.log.truncate_from(from);
        self.stage(PersistOp::Truncate { from });
        // Proposals at truncated indexes will never apply here: say so, so no driver guesses.
        let dropped = self.local_proposals.split_off(&from);
        self.drop_proposals(dropped, DropReason::Truncated);
        self.durable_match = self.durable_match.min(from.prev());
        if had_config {
            self.on_membership_changed();
        }
    }

    fn append_as_leader(&mut self, unix_ms: u64, payload: Payload) -> LogIndex {
        self.last_unix_ms = self.last_unix_ms.max(unix_ms);
        let index = self.log.last_index().next();
        let entry = Entry {
            id: LogId::new(self.term, index),
            unix_ms: self.last_unix_ms,
            payload,
        };
        self.append_entries(vec![entry]);
        if let Some(lead) = &mut self.lead {
            lead.append_needed = true;
        }
        index
    }

    /// Appends the leader's no-op (Raft §8) when it takes office.
    pub(crate) fn append_noop(&mut self) {
        self.append_as_leader(self.last_unix_ms, Payload::Noop);
    }

    fn on_persisted(&mut self, seq: PersistSeq) {
        if seq > self.persist_issued || seq <= self.persist_durable {
            self.stats.persisted_unknown += 1;
            return;
        }
        self.persist_durable = seq;
        while self.persist_pending.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, last) = self.persist_pending.pop_front().expect("checked");
            // ABA guard (etcd async_storage_writes_append_aba_race): the write only counts if the
            // log still holds the same entry at that index.
            if self.log.term(last.index) == Some(last.term) && last.index > self.durable_match {
                self.durable_match = last.index;
            }
        }
        while self.waiting.front().is_some_and(|(needs, _)| *needs <= seq) {
            let (_, env) = self.waiting.pop_front().expect("checked");
            self.ready.push_back(Output::Send(env));
        }
        if self.lead.is_some() {
            self.maybe_commit();
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
        if self.staged.is_empty() && !self.hard_state_dirty {
            return;
        }
        let mut ops = std::mem::take(&mut self.staged);
        if std::mem::take(&mut self.hard_state_dirty) {
            // Hard state last: its commit index may cover entries this very batch truncates or
            // appends, and a torn batch must never leave a commit index over entries that were not
            // written (found by the torn-write proptest). Entries of a term newer than the durable
            // hard state are harmless: `RaftNode::new` takes the term from the log, and a vote lost
            // with the hard state was never sent (votes wait for `Persisted`).
            ops.push(PersistOp::HardState(HardState {
                term: self.term,
                vote: self.vote,
                commit: self.commit,
            }));
        }
        self.persist_issued = PersistSeq(self.persist_issued.0 + 1);
        self.persist_pending
            .push_back((self.persist_issued, self.log.last_id()));
        self.ready.push_back(Output::Persist(PersistBatch {
            seq: self.persist_issued,
            ops,
        }));
        // Messages that waited on this batch stay in `waiting` until `Persisted`.
    }

    fn on_timeout(&mut self) {
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
        } else if self.election_deadline.is_some_and(|d| now >= d) {
            self.on_election_timeout();
        }
    }

    /// Draws a fresh election deadline in `[t, 2t)` (Raft §5.2); none for non-voters, which never
    /// campaign (a removed or learner node must not disrupt: thesis §4.2.3; etcd
    /// `confchange_v1_remove_leader.txt`).
    pub(crate) fn reset_election_deadline(&mut self) {
        if self.lead.is_some() || self.removed || !self.log.membership().is_voter(self.id) {
            self.election_deadline = None;
            return;
        }
        let base = self.cfg.election_timeout;
        let jitter_nanos = self
            .rng
            .below(u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1));
        self.election_deadline =
            Some(self.now + base + std::time::Duration::from_nanos(jitter_nanos));
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
            if let Some((to, _)) = lead.transfer {
                if !membership.is_voter(to) {
                    lead.transfer = None;
                    self.ready.push_back(Output::Event(Event::TransferEnded {
                        to,
                        outcome: TransferOutcome::TargetRemoved,
                    }));
                }
            }
        } else if membership.is_voter(self.id) && !self.removed {
            if self.election_deadline.is_none() {
                self.reset_election_deadline();
            }
        } else {
            self.election_deadline = None;
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

    /// Applies committed entries to the state machine, answers local proposals, releases reads
    /// and takes a snapshot when due.
    pub(crate) fn apply_committed(&mut self) {
        let mut step_down = false;
        while self.applied < self.commit {
            let index = self.applied.next();
            // Borrow the entry: `log`, `dedup` and `sm` are disjoint fields, so applying needs no
            // copy of the command (the bench's profile showed entry clones as the top cost).
            let entry = self.log.entry(index).unwrap_or_else(|| {
                panic!("{}: committed entry {:?} not in the log", self.id, index)
            });
            let mut applied_event = None;
            // Ours only if the entry is the one proposed here (same term at the same index);
            // another entry there means ours was replaced (a snapshot that wiped the log).
            let proposed_here = match self.local_proposals.remove(&index) {
                Some((p, t)) if t == entry.term() => Some(p),
                Some((proposal, _)) => {
                    self.ready.push_back(Output::Event(Event::ProposalDropped {
                        index,
                        proposal,
                        reason: DropReason::Truncated,
                    }));
                    None
                }
                None => None,
            };
            match &entry.payload {
                Payload::Command { client, seq, data } => {
                    let ctx = crate::raft::state_machine::ApplyContext {
                        index,
                        term: entry.term(),
                        unix_ms: entry.unix_ms,
                        client: *client,
                    };
                    let applied = self.dedup.apply(&mut self.sm, &ctx, *seq, data);
                    let proposal = Proposal::Command {
                        client: *client,
                        seq: *seq,
                    };
                    if proposed_here == Some(proposal) {
                        let refused = |reason| Event::ProposalDropped {
                            index,
                            proposal,
                            reason,
                        };
                        applied_event = Some(match applied {
                            Applied::Fresh(response) | Applied::Duplicate(response) => {
                                Event::Applied {
                                    client: *client,
                                    seq: *seq,
                                    index,
                                    response,
                                }
                            }
                            Applied::Stale => refused(DropReason::Stale),
                            Applied::SessionExpired => refused(DropReason::SessionExpired),
                        });
                    }
                }
                Payload::Membership(m) => {
                    if proposed_here == Some(Proposal::Membership) {
                        applied_event = Some(Event::MembershipApplied { index });
                    }
                    // A leader removed by a committed config steps down (etcd StepDownOnRemoval).
                    if self.role == Role::Leader
                        && !m.is_voter(self.id)
                        && self.log.membership_index() == index
                    {
                        step_down = true;
                    }
                }
                Payload::Noop => {}
            }
            if let Some(event) = applied_event {
                self.emit(event);
            }
            self.applied = index;
        }
        self.release_ready_reads();
        self.maybe_snapshot();
        if step_down {
            tracing::debug!(node = %self.id, "removed from the cluster: stepping down");
            self.become_follower(self.term, None);
        }
    }

    /// Ends proposals that will never apply here with `ProposalDropped`.
    pub(crate) fn drop_proposals(
        &mut self,
        dropped: BTreeMap<LogIndex, (Proposal, Term)>,
        reason: DropReason,
    ) {
        for (index, (proposal, _)) in dropped {
            self.emit(Event::ProposalDropped {
                index,
                proposal,
                reason,
            });
        }
    }

    /// Emits `Event::RoleChanged` for the current role, term and leader.
    pub(crate) fn emit_role(&mut self) {
        self.emit(Event::RoleChanged {
            role: self.role,
            term: self.term,
            leader: self.leader,
        });
    }

    /// The snapshot as it is (for sending).
    pub(crate) fn current_snapshot(&self) -> &Snapshot {
        self.log.snapshot()
    }
}

impl Recovered {
    /// The initial state of a member of a brand-new cluster whose first voters are `voters`.
    #[must_use]
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> Recovered {
        Recovered {
            snapshot: Some(Snapshot::bootstrap(
                Membership::with_voters(voters),
                Vec::new(),
            )),
            ..Recovered::default()
        }
    }
}
