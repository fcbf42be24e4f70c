//! The nemesis: carries out the shared fault vocabulary ([`crate::fastsim::faults`]) on a
//! madsim cluster of any machine (a bare Raft node or the composed replica), and the cluster-wide
//! waits every scenario needs (a leader, convergence). One implementation for every madsim
//! scenario; what madsim cannot do is listed in the parent module's docs.

use super::{replay, NemesisCounts, ATTEMPT_TIMEOUT};
use crate::fastsim::{Fault, FaultPlan, Faults, Unsynced};
use madsim::rand::Rng as _;
use paloma_core::raft::io::Role;
use paloma_core::NodeId;
use paloma_runtime_sim::{CrashMode, SimCluster, SimMachine};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Faults and waits on one cluster.
pub struct Nemesis<M: SimMachine> {
    /// The cluster.
    pub cluster: Arc<SimCluster<M>>,
    /// What the nemesis did.
    pub counts: Arc<NemesisCounts>,
    /// The test's name (for replay lines).
    pub test: String,
}

impl<M: SimMachine> std::fmt::Debug for Nemesis<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nemesis")
            .field("test", &self.test)
            .finish_non_exhaustive()
    }
}

impl<M: SimMachine> Nemesis<M> {
    /// A nemesis on `cluster`.
    #[must_use]
    pub fn new(cluster: Arc<SimCluster<M>>, test: &str) -> Nemesis<M> {
        Nemesis {
            cluster,
            counts: Arc::new(NemesisCounts::default()),
            test: test.to_string(),
        }
    }

    /// Waits until some node leads, for at most a bound derived from the configured timeouts
    /// (never a fixed sleep: a seed whose first elections split or lose votes needs longer):
    /// twenty election timeouts, enough for repeated split votes under loss. Returns the leader.
    pub async fn wait_for_leader(&self) -> NodeId {
        let et = self.cluster.raft_config().election_timeout;
        let bound = et * 20;
        let start = self.cluster.now_nanos();
        loop {
            if let Some(leader) = self.cluster.leader() {
                return leader;
            }
            let waited = Duration::from_nanos(self.cluster.now_nanos() - start);
            assert!(
                waited < bound,
                "no leader within {bound:?} (20 election timeouts)\nreplay: {}",
                replay(&self.test)
            );
            madsim::time::sleep(et / 20).await;
        }
    }

    /// Carries out `plan` (times from now), with the profile's loss, duplication and latency on for
    /// the whole phase, which lasts `duration`.
    pub async fn run_plan(&self, faults: &Faults, plan: &FaultPlan, duration: Duration) {
        let c = &self.cluster;
        c.set_loss(f64::from(faults.loss_ppm) / 1e6);
        c.set_duplication(f64::from(faults.dup_ppm) / 1e6);
        c.set_latency(
            faults.delay_min
                ..faults
                    .delay_max
                    .max(faults.delay_min + Duration::from_micros(1)),
        );
        let start = c.now_nanos();
        for (at, fault) in &plan.events {
            let due = start + at;
            let now = c.now_nanos();
            if due > now {
                madsim::time::sleep(Duration::from_nanos(due - now)).await;
            }
            self.inject(fault, faults).await;
        }
        let end = start + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let now = c.now_nanos();
        if end > now {
            madsim::time::sleep(Duration::from_nanos(end - now)).await;
        }
    }

    fn crash_mode(&self, faults: &Faults) -> CrashMode {
        if !faults.torn_writes {
            return CrashMode::LoseUnsynced;
        }
        CrashMode::ALL[madsim::rand::thread_rng().gen_range(0..CrashMode::ALL.len())]
    }

    /// Crashes `id` now and restarts it after `down_for` (unless it is up again by then).
    fn crash_for(&self, id: NodeId, mode: CrashMode, down_for: Duration) {
        if !self.cluster.is_up(id) {
            return;
        }
        self.cluster.kill_with(id, mode);
        self.counts.crashes.fetch_add(1, Ordering::Relaxed);
        self.restart_after(id, down_for);
    }

    fn restart_after(&self, id: NodeId, down_for: Duration) {
        let cluster = self.cluster.clone();
        madsim::task::spawn(async move {
            madsim::time::sleep(down_for).await;
            if !cluster.is_up(id) {
                cluster.restart(id);
            }
        });
    }

    /// Carries out one fault of the shared vocabulary now.
    pub async fn inject(&self, fault: &Fault, faults: &Faults) {
        let c = &self.cluster;
        c.note(format_args!("FAULT {fault:?}"));
        self.counts.faults.fetch_add(1, Ordering::Relaxed);
        match fault {
            Fault::Heal => c.heal(),
            Fault::Partition { groups } => {
                c.heal();
                for (i, a) in groups.iter().enumerate() {
                    for b in &groups[i + 1..] {
                        c.partition(a, b);
                    }
                }
            }
            Fault::Bridge {
                bridge,
                left,
                right,
            } => {
                c.heal();
                let strip = |g: &[NodeId]| {
                    g.iter()
                        .copied()
                        .filter(|x| x != bridge)
                        .collect::<Vec<_>>()
                };
                c.partition(&strip(left), &strip(right));
            }
            Fault::OneWay { from, to } => c.cut_one_way(*from, *to),
            Fault::CrashLeader { down_for } => {
                if let Some(leader) = self.cluster.leader() {
                    self.crash_for(leader, self.crash_mode(faults), *down_for);
                }
            }
            Fault::Crash { node, down_for } => {
                self.crash_for(*node, self.crash_mode(faults), *down_for);
            }
            Fault::CrashWhileUnsynced { what, down_for } => {
                let leader = self.cluster.leader();
                let ids: Vec<NodeId> = c.ids().into_iter().filter(|&id| c.is_up(id)).collect();
                let victim = match what {
                    Unsynced::Append => leader,
                    Unsynced::Vote | Unsynced::Term | Unsynced::Snapshot => {
                        let others: Vec<NodeId> = ids
                            .iter()
                            .copied()
                            .filter(|&id| Some(id) != leader)
                            .collect();
                        (!others.is_empty())
                            .then(|| others[madsim::rand::thread_rng().gen_range(0..others.len())])
                    }
                };
                if let Some(victim) = victim {
                    let mode = if faults.torn_writes {
                        CrashMode::TornPrefix
                    } else {
                        CrashMode::LoseUnsynced
                    };
                    if c.is_up(victim) {
                        c.kill_while_unsynced(victim, mode, Duration::from_millis(500))
                            .await;
                        self.counts.crashes.fetch_add(1, Ordering::Relaxed);
                        self.restart_after(victim, *down_for);
                    }
                }
            }
            Fault::StaleReplay { count } => {
                // At the next leader change (within a few election timeouts), every node sends
                // some of its old frames again.
                let cluster = self.cluster.clone();
                let count = u64::from(*count);
                let before = self.cluster.leader();
                let et = c.raft_config().election_timeout;
                madsim::task::spawn(async move {
                    for _ in 0..60 {
                        madsim::time::sleep(et / 10).await;
                        let now = cluster.leader();
                        if now.is_some() && now != before {
                            break;
                        }
                    }
                    for id in cluster.ids() {
                        cluster.replay_old_frames(id, count);
                    }
                });
            }
            Fault::PartitionAfterMinorityAppend => {
                if let Some(leader) = self.cluster.leader() {
                    let others: Vec<NodeId> =
                        c.ids().into_iter().filter(|&id| id != leader).collect();
                    let k = (c.ids().len() - 1) / 2;
                    let mut group = vec![leader];
                    group.extend(others.iter().take(k.saturating_sub(1)));
                    c.heal();
                    c.isolate(&group);
                }
            }
            Fault::Transfer { choice } => {
                if let Some(leader) = self.cluster.leader() {
                    let voters: Vec<NodeId> = c
                        .status(leader)
                        .map(|s| {
                            s.membership
                                .voters
                                .iter()
                                .copied()
                                .filter(|&v| v != leader)
                                .collect()
                        })
                        .unwrap_or_default();
                    if !voters.is_empty() {
                        let to = voters[usize::try_from(choice % voters.len() as u64).unwrap_or(0)];
                        if c.try_transfer(leader, to, ATTEMPT_TIMEOUT).await {
                            self.counts.transfers.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Fault::Reconfigure { .. } | Fault::SplitConfig { .. } | Fault::Lease { .. } => {
                // `swarm` never plans these here: membership needs spare nodes, and the lease
                // attacks and configuration splits strike at instants only the fast simulator's
                // event loop can catch (its `membership`, `membership4` and `lease-attack`
                // families sweep them).
                c.note(format_args!("{fault:?} is not carried out under madsim"));
            }
        }
    }

    /// Ends every fault: links healed, no loss or duplication, short latency, every node up.
    pub fn heal_all(&self) {
        let c = &self.cluster;
        c.heal();
        c.set_loss(0.0);
        c.set_duplication(0.0);
        c.set_latency(Duration::from_millis(1)..Duration::from_millis(10));
        for id in c.ids() {
            if !c.is_up(id) {
                c.restart(id);
            }
        }
    }

    /// A leader that every running node follows in the same term.
    pub fn stable_leader(&self) -> Option<NodeId> {
        let c = &self.cluster;
        let statuses: Vec<_> = c
            .ids()
            .into_iter()
            .map(|id| c.status(id))
            .collect::<Option<Vec<_>>>()?;
        let leader = statuses.iter().find(|s| s.role == Role::Leader)?;
        statuses
            .iter()
            .all(|s| s.term == leader.term && s.leader == Some(leader.id))
            .then_some(leader.id)
    }

    /// After liveness: every node applies the leader's commit index (state equality at equal
    /// applied indexes is the checker's state-machine safety).
    pub async fn converge(&self, bound: Duration) {
        let c = &self.cluster;
        let deadline = c.now_nanos() + bound.as_nanos() as u64;
        while c.now_nanos() < deadline {
            let st: Vec<_> = c.ids().into_iter().filter_map(|id| c.status(id)).collect();
            let commit = st.iter().map(|s| s.commit).max();
            if st.len() == c.ids().len() && st.iter().all(|s| Some(s.applied) == commit) {
                return;
            }
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
        let st: Vec<_> = c
            .ids()
            .into_iter()
            .map(|id| {
                c.status(id).map(|s| {
                    format!(
                        "{id}: {:?} t{} commit={} applied={}",
                        s.role, s.term.0, s.commit.0, s.applied.0
                    )
                })
            })
            .collect();
        panic!(
            "nodes did not converge within {bound:?}: {st:?}\nreplay: {}",
            replay(&self.test)
        );
    }
}
