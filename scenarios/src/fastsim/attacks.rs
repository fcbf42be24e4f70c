//! Targeted attacks that need more than one strike: lease attacks (thesis §6.4.1), which cut,
//! crash or transfer at the moment a leader lease is most exposed and then pin reads to the old
//! leader, and configuration splits (Ongaro's single-server membership bug, raft-dev 2015), which
//! lead two leaders to two changes whose quorums do not meet. Both are planned from the seed like
//! every other fault ([`super::FaultPlan`]); the checkers (linearizability, committed entries
//! immutable) decide whether the cluster survived.

use super::clients::ClientKind;
use super::{dur_nanos, nemesis, Ev, Fault, LeaseAttack, Sim};
use paloma_core::raft::check::Violation;
use paloma_core::raft::io::Role;
use paloma_core::raft::{Body, Envelope, MembershipChange};
use paloma_core::{NodeId, Term};
use std::collections::BTreeSet;
use std::time::Duration;

/// A lease attack waiting for its moment.
#[derive(Clone, Debug)]
pub(super) enum LeaseArmed {
    /// Cut `leader` off alone at the first heartbeat acknowledgement it receives in `term` at or
    /// after `not_before` (global nanoseconds); first crash `crash.0` for `crash.1`.
    AfterRound {
        leader: NodeId,
        term: Term,
        not_before: u64,
        crash: Option<(NodeId, Duration)>,
    },
    /// Cut `leader` off alone right after it sends TimeoutNow in `term`.
    AfterTimeoutNow { leader: NodeId, term: Term },
    /// The workload is paused so that every voter's log catches up; then the bridge goes up.
    Quiet {
        leader: NodeId,
        term: Term,
        bridge: NodeId,
        down_for: Duration,
    },
}

impl LeaseArmed {
    /// The leader and term the attack aims at.
    fn target(&self) -> (NodeId, Term) {
        match self {
            LeaseArmed::AfterRound { leader, term, .. }
            | LeaseArmed::AfterTimeoutNow { leader, term }
            | LeaseArmed::Quiet { leader, term, .. } => (*leader, *term),
        }
    }
}

/// Reads pinned to an old leader (and writes kept away from it) until `until`.
#[derive(Clone, Debug)]
pub(super) struct Probe {
    pub old: NodeId,
    pub until: u64,
}

/// A configuration split in progress.
#[derive(Clone, Debug)]
pub(super) enum Split {
    /// `old` (leader of `old_term`, voters `c0`) appended the change to `c1` cut off from the others;
    /// waiting for the first message of a leader of a later term elsewhere.
    AwaitLeader {
        old: NodeId,
        old_term: Term,
        c0: BTreeSet<NodeId>,
        c1: BTreeSet<NodeId>,
        choice: u64,
    },
    /// `leader` of `term` has just won; it proposes a change whose quorum lies inside `side`.
    Propose {
        leader: NodeId,
        term: Term,
        side: BTreeSet<NodeId>,
        choice: u64,
    },
}

fn quorum(voters: &BTreeSet<NodeId>) -> usize {
    voters.len() / 2 + 1
}

impl Sim {
    // ----- lease attacks ------------------------------------------------------------------------

    /// `Fault::Lease`: arms `attack` against the current leader.
    pub(super) fn lease_attack(
        &mut self,
        attack: LeaseAttack,
        worst_clocks: bool,
        choice: u64,
    ) -> Result<(), Violation> {
        if let Some((leader, term)) = self.lease_armed.as_ref().map(LeaseArmed::target) {
            if self
                .node(leader)
                .is_some_and(|n| n.role() == Role::Leader && n.term() == term)
            {
                return Ok(());
            }
            // The leader it was aimed at is gone: the attack lapsed.
            self.lease_armed = None;
            self.resume_workload();
        }
        if self.probing() {
            return Ok(());
        }
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let st = self.node(leader).expect("live").status();
        let others = self.other_voters(leader);
        if others.is_empty() {
            return Ok(());
        }
        if worst_clocks {
            // The worst case the lease must survive (thesis §6.4.1, bounded drift δ): the leader
            // measures its lease on a clock slow by δ, the voters their vote refusal on clocks
            // fast by δ.
            let d = i64::from(self.cfg.raft.clock_drift_max_ppm);
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.set_drift(id, if id == leader { -d } else { d });
            }
        }
        self.trace.line(
            self.now,
            format_args!(
                "FAULT lease attack {attack:?} on {leader} ({}){}",
                st.term,
                if worst_clocks {
                    ", worst-case clocks"
                } else {
                    ""
                }
            ),
        );
        let term = st.term;
        match attack {
            LeaseAttack::CutAfterRound => {
                self.lease_armed = Some(LeaseArmed::AfterRound {
                    leader,
                    term,
                    not_before: self.now,
                    crash: None,
                });
            }
            LeaseAttack::CrashAfterRound { down_for } => {
                // A far voter can win only with a log as long as the bridge voter's: no new
                // writes while the bridge stands (reads do not touch the log).
                let bridge = others[(choice % others.len() as u64) as usize];
                self.workload_paused = true;
                self.lease_armed = Some(LeaseArmed::Quiet {
                    leader,
                    term,
                    bridge,
                    down_for,
                });
                self.schedule(self.now + 300_000_000, Ev::LeaseStage);
            }
            LeaseAttack::TransferThenCut => {
                self.lease_armed = Some(LeaseArmed::AfterTimeoutNow { leader, term });
                let accepted = self.nemesis.len();
                self.transfer(choice)?;
                if self.nemesis.len() == accepted {
                    self.lease_armed = None;
                }
            }
        }
        Ok(())
    }

    /// `Ev::LeaseStage`: the log is quiet; the leader now reaches only the bridge voter.
    pub(super) fn lease_stage(&mut self) -> Result<(), Violation> {
        let Some(LeaseArmed::Quiet {
            leader,
            term,
            bridge,
            down_for,
        }) = self.lease_armed.clone()
        else {
            return Ok(());
        };
        if !self
            .node(leader)
            .is_some_and(|n| n.role() == Role::Leader && n.term() == term)
        {
            self.lease_armed = None;
            self.resume_workload();
            return Ok(());
        }
        let far: Vec<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| *id != leader && *id != bridge)
            .collect();
        self.inject_fault(Fault::Bridge {
            bridge,
            left: vec![leader],
            right: far,
        })?;
        // The far voters must be out of the leader's stickiness (an election timeout without it
        // on the fastest allowed clock) before the bridge voter's round.
        let et = dur_nanos(self.cfg.raft.election_timeout);
        self.lease_armed = Some(LeaseArmed::AfterRound {
            leader,
            term,
            not_before: self.now + et + et / 5,
            crash: Some((bridge, down_for)),
        });
        Ok(())
    }

    /// The workload clients start new operations again.
    pub(super) fn resume_workload(&mut self) {
        if !self.workload_paused {
            return;
        }
        self.workload_paused = false;
        for c in 0..self.clients.len() {
            if self.clients[c].kind == ClientKind::Workload && self.clients[c].pending.is_none() {
                let at = self.now + 1_000_000 + self.client_rng.below(20_000_000);
                self.schedule_client(c, at);
            }
        }
    }

    /// Whether delivering `frame` to `to` is the heartbeat acknowledgement an armed
    /// `AfterRound` attack waits for.
    pub(super) fn is_armed_round_ack(&mut self, to: NodeId, frame: &[u8]) -> bool {
        let Some(LeaseArmed::AfterRound {
            leader,
            term,
            not_before,
            crash,
        }) = &self.lease_armed
        else {
            return false;
        };
        if to != *leader || self.now < *not_before {
            return false;
        }
        let leads = self
            .node(to)
            .is_some_and(|n| n.role() == Role::Leader && n.term() == *term);
        if !leads {
            // The leader it was aimed at is gone: the attack lapses.
            self.lease_armed = None;
            self.resume_workload();
            return false;
        }
        let Ok(env) = Envelope::decode(frame, usize::MAX) else {
            return false;
        };
        let from_ok = crash.is_none_or(|(bridge, _)| env.from == bridge);
        env.term == *term && from_ok && matches!(env.body, Body::HeartbeatResp(h) if h.round > 0)
    }

    /// The armed leader has just counted a round for its lease: strike.
    pub(super) fn after_round_ack(&mut self) -> Result<(), Violation> {
        let Some(LeaseArmed::AfterRound { leader, crash, .. }) = self.lease_armed.take() else {
            return Ok(());
        };
        if let Some((voter, down_for)) = crash {
            self.crash(voter);
            self.schedule(self.now + dur_nanos(down_for), Ev::Restart { node: voter });
        }
        self.cut_off_and_probe(leader)
    }

    /// Called for every message sent while a lease attack is armed: whether this is the
    /// TimeoutNow after which the leader is cut off.
    pub(super) fn is_armed_timeout_now(&self, env: &Envelope) -> bool {
        matches!(self.lease_armed, Some(LeaseArmed::AfterTimeoutNow { leader, term })
            if env.from == leader && env.term == term && matches!(env.body, Body::TimeoutNow))
    }

    /// After the TimeoutNow went out (it is delivered): cut the old leader off.
    pub(super) fn after_timeout_now(&mut self) -> Result<(), Violation> {
        let Some(LeaseArmed::AfterTimeoutNow { leader, .. }) = self.lease_armed.take() else {
            return Ok(());
        };
        self.cut_off_and_probe(leader)
    }

    /// Isolates `old` and, for two election timeouts, pins the probe reader to it and keeps the
    /// probe writer away from it: any read it serves after a newer leader completed a write is
    /// stale, and the linearizability checker sees it.
    fn cut_off_and_probe(&mut self, old: NodeId) -> Result<(), Violation> {
        self.resume_workload();
        let rest: Vec<NodeId> = self.nodes.keys().copied().filter(|id| *id != old).collect();
        self.inject_fault(Fault::Partition {
            groups: vec![vec![old], rest.clone()],
        })?;
        let et = dur_nanos(self.cfg.raft.election_timeout);
        self.probe = Some(Probe {
            old,
            until: self.now + 2 * et,
        });
        for c in 0..self.clients.len() {
            let kind = self.clients[c].kind;
            if kind == ClientKind::Workload {
                continue;
            }
            self.clients[c].target = if kind == ClientKind::ProbeReader {
                old
            } else {
                rest[0]
            };
            // At once, also an operation left pending by an earlier probe (its timeout is void).
            let at = self.now + 1_000_000;
            self.schedule_client(c, at);
        }
        Ok(())
    }

    /// Whether the probe clients are active.
    pub(super) fn probing(&self) -> bool {
        self.probe.as_ref().is_some_and(|p| self.now < p.until)
    }

    // ----- configuration splits -----------------------------------------------------------------

    /// `Fault::SplitConfig`, first strike: the leader of an even number of voters is cut off
    /// (with the learner it promotes) and appends a change only its side receives.
    pub(super) fn split_config(&mut self, choice: u64) -> Result<(), Violation> {
        if self.split.is_some() {
            return Ok(());
        }
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let st = self.node(leader).expect("live").status();
        let c0 = st.membership.voters.clone();
        // Two single-server changes of an odd configuration always have intersecting quorums.
        if c0.len() < 4 || c0.len() % 2 == 1 {
            return Ok(());
        }
        let mut options: Vec<MembershipChange> = c0
            .iter()
            .filter(|v| **v != leader)
            .map(|v| MembershipChange::Remove(*v))
            .collect();
        options.extend(
            st.membership
                .learners
                .iter()
                .map(|l| MembershipChange::Promote(*l)),
        );
        let change = options[(choice % options.len() as u64) as usize];
        let mut side = vec![leader];
        let mut c1 = c0.clone();
        match change {
            MembershipChange::Promote(l) => {
                side.push(l);
                c1.insert(l);
            }
            MembershipChange::Remove(v) => {
                c1.remove(&v);
            }
            MembershipChange::AddLearner(_) => unreachable!("not an option"),
        }
        let rest = self.all_but(|id| side.contains(id));
        self.trace.line(
            self.now,
            format_args!(
                "FAULT config split: {leader} ({}) cut off with {side:?}",
                st.term
            ),
        );
        self.inject_fault(Fault::Partition {
            groups: vec![side, rest],
        })?;
        if self.propose_change(leader, change)? {
            self.split = Some(Split::AwaitLeader {
                old: leader,
                old_term: st.term,
                c0,
                c1,
                choice,
            });
        }
        Ok(())
    }

    /// Second strike, at the first append or heartbeat of a leader of a later term elsewhere
    /// (before it leaves): cut the network so that the old leader's side holds a quorum of its
    /// new configuration, and let the new leader propose a change at once.
    pub(super) fn split_on_new_leader(&mut self, env: &Envelope) -> Result<(), Violation> {
        let Some(Split::AwaitLeader {
            old,
            old_term,
            c0,
            c1,
            choice,
        }) = &self.split
        else {
            return Ok(());
        };
        if !matches!(env.body, Body::Append(_) | Body::Heartbeat(_))
            || env.from == *old
            || env.term <= *old_term
            || self.node(env.from).is_none_or(|n| n.role() != Role::Leader)
        {
            return Ok(());
        }
        let (leader, term, choice) = (env.from, env.term, *choice);
        let mut side: BTreeSet<NodeId> = c1.difference(c0).copied().collect();
        side.insert(*old);
        let mut pool: Vec<NodeId> = c0
            .intersection(c1)
            .copied()
            .filter(|id| id != old && *id != leader)
            .collect();
        if !pool.is_empty() {
            let k = (choice % pool.len() as u64) as usize;
            pool.rotate_left(k);
        }
        for z in pool {
            if side.intersection(c1).count() >= quorum(c1) {
                break;
            }
            side.insert(z);
        }
        if side.intersection(c1).count() < quorum(c1) {
            self.split = None;
            return Ok(());
        }
        let rest: BTreeSet<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !side.contains(id))
            .collect();
        self.trace.line(
            self.now,
            format_args!(
                "FAULT config split: {leader} leads {term}; {side:?} (a quorum of {c1:?}) cut off from {rest:?}"
            ),
        );
        self.inject_fault(Fault::Partition {
            groups: vec![side.into_iter().collect(), rest.iter().copied().collect()],
        })?;
        self.split = Some(Split::Propose {
            leader,
            term,
            side: rest,
            choice,
        });
        // Right after this step, before any answer to the new leader's first append arrives.
        self.schedule(self.now, Ev::SplitPropose);
        Ok(())
    }

    /// Third strike: the new leader proposes a change whose quorum lies on its side.
    pub(super) fn split_propose(&mut self) -> Result<(), Violation> {
        let Some(Split::Propose {
            leader,
            term,
            side,
            choice,
        }) = self.split.take()
        else {
            return Ok(());
        };
        let Some(st) = self.node(leader).map(paloma_core::raft::RaftNode::status) else {
            return Ok(());
        };
        if st.role != Role::Leader || st.term != term {
            return Ok(());
        }
        let options: Vec<MembershipChange> = st
            .membership
            .voters
            .iter()
            .copied()
            .filter(|v| *v != leader)
            .filter(|v| {
                let mut c2 = st.membership.voters.clone();
                c2.remove(v);
                c2.intersection(&side).count() >= quorum(&c2)
            })
            .map(MembershipChange::Remove)
            .collect();
        if options.is_empty() {
            return Ok(());
        }
        let change = options[((choice >> 32) % options.len() as u64) as usize];
        self.propose_change(leader, change)?;
        Ok(())
    }

    /// `leader` proposes `change`; an accepted change is tracked until it ends (see `nemesis.rs`).
    fn propose_change(
        &mut self,
        leader: NodeId,
        change: MembershipChange,
    ) -> Result<bool, Violation> {
        let result = self.with_node(leader, |n, now, unix_ms| {
            n.change_membership(now, unix_ms, change)
        })?;
        self.trace.line(
            self.now,
            format_args!("FAULT {leader} proposes {change:?}: {result:?}"),
        );
        let Ok(index) = result else {
            return Ok(false);
        };
        if let MembershipChange::Remove(id) = change {
            // Node ids are never reused (etcd README): a removed node never comes back.
            self.removed.insert(id);
        }
        self.nemesis.push(nemesis::Pending {
            node: leader,
            incarnation: self.nodes[&leader].incarnation,
            action: nemesis::Action::Membership { index, change },
        });
        Ok(true)
    }
}
