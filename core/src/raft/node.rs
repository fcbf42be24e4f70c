//! `RaftNode`: one replica's state, its construction, timers, inspection and invariants.
//!
//! The node is split by concern (ARCHITECTURE.md, code map of `core/src/raft/`): `dispatch.rs`
//! feeds inputs and funnels outputs through the `Outbox` (`outbox.rs`, persistence ordering),
//! `election.rs`, `replication.rs`, `snapshot.rs` and `read.rs` handle messages, `leader.rs` holds
//! leader-only state, `membership.rs` configuration changes, `apply.rs` proposals and apply,
//! `status.rs` and `error.rs` what the node reports.

use crate::ids::{LogIndex, NodeId, Term};
use crate::raft::config::Config;
use crate::raft::election::ElectionState;
use crate::raft::error::{RecoveredLogError, StartError};
use crate::raft::io::{Event, Proposal, Role, TimerKind};
use crate::raft::leader::LeaderState;
use crate::raft::log::RaftLog;
use crate::raft::outbox::Outbox;
use crate::raft::read::PendingReads;
use crate::raft::snapshot::IncomingSnapshot;
use crate::raft::state_machine::{DedupTable, StateMachine};
use crate::raft::status::Stats;
use crate::raft::storage::Recovered;
use crate::raft::types::Snapshot;
use crate::rng::DetRng;
use crate::time::Instant;
use std::collections::BTreeMap;

/// One Raft replica, generic over the application state machine it drives.
///
/// See the crate docs for the driving contract.
#[derive(Debug)]
pub struct RaftNode<S: StateMachine> {
    /// Local tunables, validated once.
    pub(crate) cfg: Config,
    /// This replica (`cfg.id`).
    pub(crate) id: NodeId,
    /// The only randomness: election jitter, forked from the seed under `"raft"`.
    pub(crate) rng: DetRng,
    /// The latest `now` a caller gave (never goes backwards).
    pub(crate) now: Instant,
    /// Raft Figure 2 persistent state: the current term and our vote in it.
    pub(crate) term: Term,
    /// Whom we voted for in `term`.
    pub(crate) vote: Option<NodeId>,
    /// Entries, snapshot and membership history.
    pub(crate) log: RaftLog,
    /// Highest index known committed (monotone).
    pub(crate) commit: LogIndex,
    /// Highest index applied to `sm` (`applied <= commit`).
    pub(crate) applied: LogIndex,
    /// The application.
    pub(crate) sm: S,
    /// Client sessions (thesis §6.3), replicated state beside `sm`.
    pub(crate) dedup: DedupTable,
    /// Follower, pre-candidate, candidate or leader.
    pub(crate) role: Role,
    /// The leader we follow in `term`, if known.
    pub(crate) leader: Option<NodeId>,
    /// Election timing, the current campaign's votes, whether we were removed.
    pub(crate) election: ElectionState,
    /// State that exists only while leading (`Some` iff `role == Leader`).
    pub(crate) lead: Option<LeaderState>,
    /// A snapshot being received chunk by chunk.
    pub(crate) incoming_snapshot: Option<IncomingSnapshot>,
    /// Reads answered here once confirmed (the leader's own are in `lead`).
    pub(crate) reads: PendingReads,
    /// Proposals made here, by index, awaiting apply: (what, term). Bounded by
    /// `pending_proposals_max`; each leaves with exactly one event: `Applied` or
    /// `MembershipApplied` on apply, `ProposalDropped` on truncation, snapshot install or a
    /// de-duplication refusal.
    pub(crate) local_proposals: BTreeMap<LogIndex, (Proposal, Term)>,
    /// The latest wall time stamped into an entry: a new entry never goes back in time.
    pub(crate) last_unix_ms: u64,
    /// Writes to issue, messages held until their writes are durable, outputs to hand out.
    pub(crate) outbox: Outbox,
    /// Counters of the unusual.
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
            return Err(RecoveredLogError::NotContiguous.into());
        }
        if entries
            .first()
            .is_some_and(|e| e.index() != base.index.next())
        {
            return Err(RecoveredLogError::NotAfterBase.into());
        }
        // The bound is replicated state (`ReplicatedSettings`): the snapshot's configuration
        // decides it; a node that knows none yet applies nothing until it does (`apply.rs`).
        let mut dedup = DedupTable::new(snapshot.meta.membership.settings.dedup_bound());
        let mut sm = sm;
        if snapshot.meta.last.index > LogIndex(0) {
            dedup.restore(&mut sm, &snapshot.data)?;
        }
        let log = RaftLog::new(snapshot, base, entries);
        let applied = log.snapshot().meta.last.index;
        let commit = hard_state.commit.clamp(applied, log.last_index());
        let term = hard_state.term.max(log.last_id().term);
        // Everything recovered is on disk: the whole log counts toward the leader's own vote.
        let outbox = Outbox::new(log.last_index(), cfg.outbox_messages_max);
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
            last_unix_ms: log.entries().last().map_or(0, |e| e.unix_ms),
            log,
            commit,
            applied,
            sm,
            dedup,
            role: Role::Follower,
            leader: None,
            election: ElectionState::new(now),
            lead: None,
            incoming_snapshot: None,
            reads: PendingReads::default(),
            local_proposals: BTreeMap::new(),
            outbox,
            stats: Stats::default(),
        };
        node.apply_committed();
        node.reset_election_deadline();
        node.check_invariants();
        Ok(node)
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
            None => self.election.deadline.map(|d| (d, TimerKind::Election)),
        }
    }

    // ----- inspection -------------------------------------------------------------------------

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

    /// The leader this node follows (itself when leading), if known.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The applied index.
    #[must_use]
    pub fn applied(&self) -> LogIndex {
        self.applied
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
        self.outbox.check_invariants(self.log.last_index());
    }

    pub(crate) fn advance_clock(&mut self, now: Instant) {
        // A runtime handing us an older `now` is tolerated (clocks are the runtime's concern); time
        // inside the core never goes backwards.
        if now > self.now {
            self.now = now;
        }
    }

    /// Draws a fresh election deadline in `[t, 2t)` (Raft §5.2); none for non-voters, which never
    /// campaign (a removed or learner node must not disrupt: thesis §4.2.3; etcd
    /// `confchange_v1_remove_leader.txt`).
    pub(crate) fn reset_election_deadline(&mut self) {
        if self.lead.is_some() || self.election.removed || !self.log.membership().is_voter(self.id)
        {
            self.election.deadline = None;
            return;
        }
        let base = self.cfg.election_timeout;
        let jitter_nanos = self
            .rng
            .below(u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1));
        self.election.deadline =
            Some(self.now + base + std::time::Duration::from_nanos(jitter_nanos));
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
