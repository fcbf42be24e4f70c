//! The Raft safety checker, run after every simulated step by both simulators and by the core's
//! random-schedule proptest (one implementation: Raft Figure 3's properties; the list follows
//! openraft's `tests-turmoil` invariants and etcd's robustness tests). Compiled only for tests and
//! the `testing` feature, like `fuzz`.
//!
//! Checked from the nodes' state:
//! - Election safety: at most one leader per term.
//! - Log matching / committed entries immutable: every index a node reports committed holds the
//!   same term on every node and forever.
//! - Leader completeness (Raft §5.4): a leader of term T holds every entry committed in a term
//!   before T. An entry's commit term is taken as the lowest current term of any node seen holding
//!   it committed, which is never below the term it was really committed in, so the check never
//!   fires on a legal run: a candidate of T whose votes were delayed may still win T after a
//!   leader of T+1 committed entries it lacks (seen at seed 4077 of the 10,000-seed sweep).
//! - State machine safety: nodes that applied the same index have the same state.
//! - Per node: term, commit and applied never decrease within an incarnation; the durable term and
//!   vote never regress across restarts (vote durability: no double vote in a term).
//!
//! Checked at the boundary, from what the simulator's disks hold and what leaves a node on the
//! network, never from the node's own word ([`SafetyChecker::observe_send`],
//! [`SafetyChecker::observe_commit_durable`]):
//! - a message carrying term T leaves only once T is durable (pre-votes excepted: they carry a
//!   term nobody adopted);
//! - a granted vote leaves only once that vote is durable (Raft Figure 2, "respond after
//!   persisting"); an append acknowledgement for index i only once the log up to i is durable; a
//!   snapshot acknowledgement only once the snapshot is durable;
//! - a node never grants votes to two candidates in one term, across restarts (seen on the wire);
//! - every index a leader reports committed is durable, with the leader's term at that index, on
//!   a quorum of the configuration it was committed under (the leader's at that moment), and
//!   a leader advances its commit index only to an entry of its own term (Raft §5.4.2, Figure 8).

use crate::ids::{LogId, LogIndex, NodeId, Term};
use crate::raft::io::Role;
use crate::raft::message::{AppendResponse, Body, Envelope};
use crate::raft::storage::Recovered;
use crate::raft::{RaftNode, StateMachine};
use std::collections::BTreeMap;

/// A broken invariant, with what the checker saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Default)]
struct NodeTrack {
    term: Term,
    commit_checked: LogIndex,
    applied: LogIndex,
    leader_checked_term: Option<Term>,
}

/// Observes nodes after every step and remembers what was committed.
#[derive(Clone, Debug, Default)]
pub struct SafetyChecker {
    leaders: BTreeMap<Term, NodeId>,
    committed: BTreeMap<LogIndex, Term>,
    /// Per committed index: the lowest current term of a node seen holding it committed (an upper
    /// bound of the term it was committed in).
    commit_terms: BTreeMap<LogIndex, Term>,
    applied_digest: BTreeMap<LogIndex, ([u8; 32], NodeId)>,
    nodes: BTreeMap<NodeId, NodeTrack>,
    /// Highest durable (term, vote) per node, across incarnations.
    durable_votes: BTreeMap<NodeId, (Term, Option<NodeId>)>,
    /// Granted votes seen on the wire: (voter, term) -> candidate.
    grants: BTreeMap<(NodeId, Term), NodeId>,
    /// Per leader node: the commit index whose quorum durability was last checked, and its term.
    leader_commit_checked: BTreeMap<NodeId, (Term, LogIndex)>,
    /// Boundary checks performed.
    pub boundary_checks: u64,
    /// Checks performed (so a test can assert the checker ran).
    pub observations: u64,
}

impl SafetyChecker {
    /// A fresh checker.
    #[must_use]
    pub fn new() -> SafetyChecker {
        SafetyChecker::default()
    }

    /// The committed prefix as observed so far: index -> term.
    #[must_use]
    pub fn committed(&self) -> &BTreeMap<LogIndex, Term> {
        &self.committed
    }

    /// Leaders observed per term.
    #[must_use]
    pub fn leaders(&self) -> &BTreeMap<Term, NodeId> {
        &self.leaders
    }

    /// A node restarted: its in-memory tracking starts over (durable checks continue).
    pub fn on_restart(&mut self, id: NodeId) {
        self.nodes.remove(&id);
    }

    /// Checks the durable hard state written for `id` (term and vote must never regress: a node
    /// that voted in a term must not forget it, Raft Figure 2).
    pub fn observe_durable(
        &mut self,
        id: NodeId,
        term: Term,
        vote: Option<NodeId>,
    ) -> Result<(), Violation> {
        if let Some(&(t, v)) = self.durable_votes.get(&id) {
            if term < t {
                return Err(Violation(format!(
                    "{id}: durable term went back from {t} to {term}"
                )));
            }
            if term == t && v.is_some() && vote != v {
                return Err(Violation(format!(
                    "{id}: durable vote in {term} changed from {v:?} to {vote:?} (double vote)"
                )));
            }
        }
        self.durable_votes.insert(id, (term, vote));
        Ok(())
    }

    /// Checks a message leaving `env.from`, whose disk durably holds `durable` right now: every
    /// promise the message makes must already be kept on disk.
    pub fn observe_send(&mut self, env: &Envelope, durable: &Recovered) -> Result<(), Violation> {
        self.boundary_checks += 1;
        let from = env.from;
        let hs = durable.hard_state;
        let durable_term = hs.term.max(durable_last(durable).term);
        let pre = matches!(env.body, Body::PreVote(_) | Body::PreVoteResp(_));
        if !pre && env.term > durable_term {
            return Err(Violation(format!(
                "{from} sent {} in {} before that term was durable (durable term {durable_term})",
                env.body, env.term
            )));
        }
        match &env.body {
            Body::VoteResp(r) if r.granted => {
                if hs.term < env.term || (hs.term == env.term && hs.vote != Some(env.to)) {
                    return Err(Violation(format!(
                        "{from} granted its vote in {} to {} before the vote was durable (durable {} vote {:?})",
                        env.term, env.to, hs.term, hs.vote
                    )));
                }
                match self.grants.insert((from, env.term), env.to) {
                    Some(other) if other != env.to => {
                        return Err(Violation(format!(
                            "{from} granted votes in {} to both {other} and {} (double vote)",
                            env.term, env.to
                        )));
                    }
                    _ => {}
                }
            }
            Body::AppendResp(AppendResponse::Accepted { match_index }) => {
                let last = durable_last(durable).index;
                if *match_index > last {
                    return Err(Violation(format!(
                        "{from} acknowledged entries up to {match_index} in {} with only {last} durable",
                        env.term
                    )));
                }
            }
            Body::SnapshotResp(ack) if ack.done => {
                let snap = durable
                    .snapshot
                    .as_ref()
                    .map_or(LogIndex(0), |s| s.meta.last.index);
                if snap < ack.last.index && durable_last(durable).index < ack.last.index {
                    return Err(Violation(format!(
                        "{from} acknowledged snapshot {:?} with only {snap} durable",
                        ack.last
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks that the leader's commit index is durable on a quorum of its configuration:
    /// `durable(id)` is what node `id`'s disk holds (None for a node the simulator does not know).
    pub fn observe_commit_durable<'a, S: StateMachine>(
        &mut self,
        node: &RaftNode<S>,
        durable: impl Fn(NodeId) -> Option<&'a Recovered>,
    ) -> Result<(), Violation> {
        if node.role() != Role::Leader {
            return Ok(());
        }
        // Runs after every step of every leader: look at the whole status only when the commit
        // index moved (`status()` copies the membership).
        let (id, leader_term, commit) = (node.id(), node.term(), node.commit());
        let checked = self.leader_commit_checked.entry(id).or_default();
        if checked.0 == leader_term && checked.1 >= commit {
            return Ok(());
        }
        let first_look = checked.0 != leader_term;
        *checked = (leader_term, commit);
        let st = node.status();
        // A leader's commit index at election was learned, not decided: only advances count.
        if first_look {
            return Ok(());
        }
        self.boundary_checks += 1;
        let index = st.commit;
        let Some(term) = node.log().term(index) else {
            return Ok(());
        };
        // Raft §5.4.2 (Figure 8): a leader advances its commit index only to an entry of its own
        // term, counted on a quorum; older entries commit only beneath it.
        if term != st.term {
            return Err(Violation(format!(
                "{}: leader of {} advanced its commit index to {index}, an entry of {term} (Figure 8)",
                st.id, st.term
            )));
        }
        let holders: Vec<NodeId> = st
            .membership
            .voters
            .iter()
            .copied()
            .filter(|id| durable(*id).is_some_and(|d| durably_holds(d, index, term)))
            .collect();
        if holders.len() < st.membership.quorum() {
            return Err(Violation(format!(
                "{}: leader of {} committed {index}@{term} but only {holders:?} of voters {:?} hold it durably",
                st.id, st.term, st.membership.voters
            )));
        }
        Ok(())
    }

    /// Checks one node after it stepped. `digest` summarises its state machine.
    pub fn observe<S: StateMachine>(
        &mut self,
        node: &RaftNode<S>,
        digest: impl Fn(&S) -> [u8; 32],
    ) -> Result<(), Violation> {
        self.observations += 1;
        node.check_invariants();
        let st = node.status();
        let id = st.id;
        let track = self.nodes.entry(id).or_default();
        if st.term < track.term {
            return Err(Violation(format!(
                "{id}: term went back from {} to {}",
                track.term, st.term
            )));
        }
        track.term = st.term;
        // Within one incarnation the commit and applied indexes only grow (Raft Figure 2: both are
        // monotonic; a restart starts them over from what is durable, see `on_restart`).
        if st.commit < track.commit_checked {
            return Err(Violation(format!(
                "{id}: commit went back from {} to {}",
                track.commit_checked, st.commit
            )));
        }
        if st.applied < track.applied {
            return Err(Violation(format!(
                "{id}: applied went back from {} to {}",
                track.applied, st.applied
            )));
        }
        // Election safety.
        if st.role == Role::Leader {
            if let Some(&other) = self.leaders.get(&st.term) {
                if other != id {
                    return Err(Violation(format!(
                        "two leaders in {}: {other} and {id}",
                        st.term
                    )));
                }
            } else {
                self.leaders.insert(st.term, id);
            }
        }
        // Committed entries: same term everywhere, forever.
        let log = node.log();
        let snap = log.snapshot().meta.last;
        let from = track.commit_checked.max(log.base().index);
        let mut i = from.next();
        while i <= st.commit {
            let Some(term) = log.term(i) else {
                return Err(Violation(format!(
                    "{id}: committed index {i} is not in its log"
                )));
            };
            match self.committed.get(&i) {
                Some(&t) if t != term => {
                    return Err(Violation(format!(
                        "{id}: committed {i} has term {term}, but {t} was committed there before"
                    )));
                }
                Some(_) => {
                    let seen = self.commit_terms.entry(i).or_insert(st.term);
                    *seen = (*seen).min(st.term);
                }
                None => {
                    self.committed.insert(i, term);
                    self.commit_terms.insert(i, st.term);
                }
            }
            i = i.next();
        }
        if snap.index > LogIndex(0) {
            if let Some(&t) = self.committed.get(&snap.index) {
                if t != snap.term {
                    return Err(Violation(format!(
                        "{id}: snapshot at {} has term {}, committed term {t}",
                        snap.index, snap.term
                    )));
                }
            }
        }
        let track = self.nodes.get_mut(&id).expect("inserted");
        track.commit_checked = track.commit_checked.max(st.commit);
        // Leader completeness: checked once per leader term, then incrementally through commits.
        if st.role == Role::Leader && track.leader_checked_term != Some(st.term) {
            track.leader_checked_term = Some(st.term);
            // Only entries committed in an earlier term bind this leader (§5.4).
            let binding = self
                .committed
                .iter()
                .filter(|&(idx, _)| self.commit_terms.get(idx).is_some_and(|&ct| ct < st.term));
            for (&idx, &t) in binding {
                if idx > st.last.index {
                    return Err(Violation(format!(
                        "{id}: leader of {} lacks index {idx} committed in an earlier term (last {})",
                        st.term, st.last.index
                    )));
                }
                if idx > log.base().index && log.term(idx).is_some_and(|have| have != t) {
                    return Err(Violation(format!(
                        "{id}: leader of {} holds term {:?} at committed {idx}, committed {t}",
                        st.term,
                        log.term(idx)
                    )));
                }
            }
        }
        // State machine safety.
        if st.applied != track.applied {
            track.applied = st.applied;
            if st.applied > LogIndex(0) {
                let d = digest(node.state_machine());
                match self.applied_digest.get(&st.applied) {
                    Some((other, who)) if *other != d => {
                        return Err(Violation(format!(
                            "{id} and {who} applied up to {} but their states differ",
                            st.applied
                        )));
                    }
                    Some(_) => {}
                    None => {
                        self.applied_digest.insert(st.applied, (d, id));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The last durable log position (the snapshot's if the log after it is empty).
fn durable_last(d: &Recovered) -> LogId {
    d.entries.last().map_or(d.base, |e| e.id)
}

/// Whether `d` holds `index` with `term` durably (in its log, or covered by its snapshot, which
/// holds only committed entries).
fn durably_holds(d: &Recovered, index: LogIndex, term: Term) -> bool {
    if d.snapshot
        .as_ref()
        .is_some_and(|s| s.meta.last.index >= index)
    {
        return true;
    }
    if index == d.base.index {
        return d.base.term == term;
    }
    d.entries
        .iter()
        .find(|e| e.id.index == index)
        .is_some_and(|e| e.id.term == term)
}
