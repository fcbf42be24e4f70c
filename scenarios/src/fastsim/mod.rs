//! The fast cluster simulator (VOPR-style, no madsim): a seeded event queue drives N sans-IO Raft
//! nodes with a virtual clock per node (drifting), a network emulator that drops, duplicates,
//! delays, reorders and partitions (minority, majority, bridge, one-way), and disks that lose or
//! tear what was not reported durable when a node crashes. Clients run a key-value workload whose
//! history is checked for linearizability; Raft's safety properties are checked after every step.
//!
//! Everything comes from one seed, forked per concern (network, disk, faults, clients, each node's
//! Raft), so removing a fault while shrinking does not reshuffle the rest of the run.

mod attacks;
mod clients;
mod disk;
mod faults;
mod nemesis;
mod net;

pub use faults::{Fault, FaultPlan, Faults, LeaseAttack, Unsynced};
pub use paloma_runtime_sim::Trace;

use crate::history::History;
use crate::kv::Kv;
use crate::workload::OpGen;
use clients::{Client, ClientKind};
use paloma_core::raft::check::{SafetyChecker, Violation};
use paloma_core::raft::io::{Input, Output, Role};
use paloma_core::raft::storage::{MemStorage, PersistBatch, Recovered};
use paloma_core::raft::{Config, RaftNode};
use paloma_core::rng::DetRng;
use paloma_core::{ClientId, Instant, LogIndex, NodeId, ReadId};
use paloma_runtime_sim::clock::{DriftClock, UNIX_MS_EPOCH};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

/// Everything that defines a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Voters at bootstrap (ids 1..=nodes).
    pub nodes: u64,
    /// Spare nodes (ids after the voters) that start empty and may be added by membership faults.
    pub spares: u64,
    /// Length of the chaos phase.
    pub chaos: Duration,
    /// Length of the liveness phase that follows (faults healed; progress required).
    pub liveness: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the workload touches (fewer keys, more contention).
    pub keys: u8,
    /// Percentage of operations that are reads.
    pub read_pct: u8,
    /// Fault rates and kinds.
    pub faults: Faults,
    /// Raft configuration template (`id` is set per node).
    pub raft: Config,
    /// Record a human-readable trace: the story of the run (faults, elections, progress).
    pub trace: bool,
    /// With `trace`, also every message sent and every role change.
    pub trace_messages: bool,
    /// Which planned faults to inject (all when `None`); used by shrinking and replay.
    pub fault_mask: Option<BTreeSet<usize>>,
    /// Swarm testing: draw this seed's own fault profile and Raft settings from the seed
    /// ([`Faults::swarm`]) on top of `faults` and `raft`.
    pub swarm: bool,
}

impl SimConfig {
    /// The default chaos run for `seed`: 5 nodes, 20 s of faults, 10 s of liveness.
    #[must_use]
    pub fn chaos(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 5,
            spares: 0,
            chaos: Duration::from_secs(20),
            liveness: Duration::from_secs(10),
            clients: 4,
            keys: 3,
            read_pct: 30,
            faults: Faults::default(),
            raft: Config {
                snapshot_threshold_entries: 64,
                snapshot_trailing_entries: 8,
                snapshot_chunk_bytes: 256,
                ..Config::default()
            },
            trace: false,
            trace_messages: false,
            fault_mask: None,
            swarm: false,
        }
    }

    /// The configuration the run really uses: with `swarm`, the seed's own profile.
    #[must_use]
    pub fn resolved(&self) -> SimConfig {
        let mut cfg = self.clone();
        if cfg.swarm {
            let mut rng = DetRng::fork(cfg.seed, "swarm");
            cfg.faults = self.faults.swarm(&mut cfg.raft, &mut rng);
            cfg.swarm = false;
        }
        cfg
    }
}

/// What a run did and saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Simulated time at the end.
    pub sim_time: Duration,
    /// Events processed.
    pub events: u64,
    /// Messages sent / dropped by faults / duplicated.
    pub messages: (u64, u64, u64),
    /// Crashes injected (and how many tore a write).
    pub crashes: (u64, u64),
    /// Partitions injected.
    pub partitions: u64,
    /// Leaders elected (distinct terms with a leader).
    pub leaders: usize,
    /// Highest committed index seen.
    pub committed: u64,
    /// Client operations completed (writes, reads) and left pending.
    pub ops: (usize, usize, usize),
    /// Snapshots installed on followers.
    pub snapshots_installed: u64,
    /// Safety observations made.
    pub observations: u64,
    /// Boundary checks made (messages and commits checked against the disks).
    pub boundary_checks: u64,
    /// The fault profile and Raft settings of the run.
    pub profile: String,
    /// The first failure, if any.
    pub failure: Option<String>,
}

impl Report {
    /// One line for sweeps and summaries.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {:.1}s simulated, {} events, {} msgs ({} dropped, {} duplicated), {} crashes ({} torn), {} partitions, {} leaders, commit {}, ops {} writes + {} reads ok ({} pending), {} snapshots installed, {} safety + {} boundary checks{}",
            self.seed,
            self.sim_time.as_secs_f64(),
            self.events,
            self.messages.0,
            self.messages.1,
            self.messages.2,
            self.crashes.0,
            self.crashes.1,
            self.partitions,
            self.leaders,
            self.committed,
            self.ops.0,
            self.ops.1,
            self.ops.2,
            self.snapshots_installed,
            self.observations,
            self.boundary_checks,
            self.failure
                .as_ref()
                .map_or(String::new(), |f| format!(" -- FAILED: {f}\n  profile: {}", self.profile))
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver {
        to: NodeId,
        frame: Vec<u8>,
    },
    Timer {
        node: NodeId,
        generation: u64,
    },
    DiskDone {
        node: NodeId,
        incarnation: u64,
    },
    Client {
        client: usize,
        generation: u64,
    },
    Fault(usize),
    Restart {
        node: NodeId,
    },
    CrashNow {
        node: NodeId,
        incarnation: u64,
        down_for: Duration,
    },
    EndChaos,
    /// A configuration split's new leader proposes its change (see `attacks.rs`).
    SplitPropose,
    /// A lease attack's next stage (see `attacks.rs`).
    LeaseStage,
}

struct SimNode {
    raft: Option<RaftNode<Kv>>,
    disk: MemStorage,
    /// Batches handed to the disk, not yet durable.
    disk_queue: VecDeque<PersistBatch>,
    disk_busy_until: u64,
    incarnation: u64,
    timer_generation: u64,
    /// The node's clock (the same drift model as madsim's nodes).
    clock: DriftClock,
}

/// A simulated cluster. Scenario code can drive it step by step (see the methods) or call
/// [`Sim::run`] for a full chaos run.
pub struct Sim {
    cfg: SimConfig,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    queue_seq: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: Vec<Client>,
    net_rng: DetRng,
    disk_rng: DetRng,
    client_rng: DetRng,
    /// Directed links that are cut: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    plan: FaultPlan,
    chaos_over: bool,
    /// Network faults (loss, duplication, spikes) are active.
    lossy: bool,
    history: History,
    checker: SafetyChecker,
    report: Report,
    trace: Trace,
    next_read: u64,
    /// When the liveness phase started, and the ops completed since.
    healed_at: Option<u64>,
    healed_ops: (usize, usize),
    workload: bool,
    reads_served: Vec<(NodeId, ReadId, LogIndex)>,
    /// Nodes whose removal was proposed (they are never added again).
    removed: BTreeSet<NodeId>,
    /// Nodes whose removal a leader applied, and nodes that were told they were removed.
    /// (With the index and term of the configuration entry that removed them.)
    removals_applied: BTreeMap<NodeId, (LogIndex, paloma_core::Term)>,
    removed_told: BTreeSet<NodeId>,
    /// Cluster operations accepted and not yet ended (see `nemesis.rs`).
    nemesis: Vec<nemesis::Pending>,
    /// Targeted faults waiting for their moment.
    armed_unsynced: Option<(Unsynced, Duration)>,
    armed_replay: Option<u8>,
    armed_minority_append: bool,
    /// Frames sent earlier, for stale replays: (to, frame).
    old_frames: VecDeque<(NodeId, Vec<u8>)>,
    /// The highest term in which a leader was seen (a leader change fires stale replays).
    leader_term_seen: paloma_core::Term,
    /// When the story trace prints its next progress line (nanoseconds).
    next_progress: u64,
    /// A lease attack waiting for its moment, and the reads it pins to an old leader.
    lease_armed: Option<attacks::LeaseArmed>,
    probe: Option<attacks::Probe>,
    /// A configuration split in progress.
    split: Option<attacks::Split>,
    /// The workload clients start no new operation (a lease attack quiets the log first).
    workload_paused: bool,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.cfg.seed)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// Builds the cluster at time zero.
    #[must_use]
    pub fn new(cfg: SimConfig) -> Sim {
        let cfg = cfg.resolved();
        let mut fault_rng = DetRng::fork(cfg.seed, "faults");
        let voters: Vec<NodeId> = (1..=cfg.nodes).map(NodeId).collect();
        let all: Vec<NodeId> = (1..=cfg.nodes + cfg.spares).map(NodeId).collect();
        // Faults hit every node, spares included: they may have become voters by then.
        let plan = FaultPlan::generate(&cfg.faults, &all, cfg.chaos, &mut fault_rng);
        let mut drift_rng = DetRng::fork(cfg.seed, "drift");
        let mut nodes = BTreeMap::new();
        for &id in &all {
            let drift_ppm = if cfg.faults.drift_ppm_max == 0 {
                0
            } else {
                let span = u64::from(cfg.faults.drift_ppm_max) * 2 + 1;
                drift_rng.below(span) as i64 - i64::from(cfg.faults.drift_ppm_max)
            };
            let recovered = if id.0 <= cfg.nodes {
                Recovered::bootstrap(voters.iter().copied())
            } else {
                Recovered::default()
            };
            nodes.insert(
                id,
                SimNode {
                    raft: None,
                    disk: MemStorage::new(recovered),
                    disk_queue: VecDeque::new(),
                    disk_busy_until: 0,
                    incarnation: 0,
                    timer_generation: 0,
                    clock: DriftClock::new(
                        i32::try_from(drift_ppm).expect("drift within DRIFT_PPM_MAX"),
                    ),
                },
            );
        }
        let mut clients: Vec<Client> = (0..cfg.clients)
            .map(|c| Client {
                id: ClientId(c as u64 + 1),
                gen: OpGen::new(c as u64 + 1),
                target: voters[c % voters.len()],
                pending: None,
                generation: 0,
                kind: ClientKind::Workload,
            })
            .collect();
        if cfg.faults.lease_attacks {
            // Idle until a lease attack strikes (see `attacks.rs`).
            for kind in [ClientKind::ProbeReader, ClientKind::ProbeWriter] {
                clients.push(Client {
                    id: ClientId(clients.len() as u64 + 1),
                    gen: OpGen::new(clients.len() as u64 + 1),
                    target: voters[0],
                    pending: None,
                    generation: 0,
                    kind,
                });
            }
        }
        let mut sim = Sim {
            net_rng: DetRng::fork(cfg.seed, "net"),
            disk_rng: DetRng::fork(cfg.seed, "disk"),
            client_rng: DetRng::fork(cfg.seed, "clients"),
            trace: Trace::story(cfg.trace, cfg.trace_messages),
            report: Report {
                seed: cfg.seed,
                profile: cfg.faults.describe(&cfg.raft),
                ..Report::default()
            },
            cfg,
            now: 0,
            queue: BinaryHeap::new(),
            queue_seq: 0,
            nodes,
            clients,
            blocked: BTreeSet::new(),
            plan,
            chaos_over: false,
            lossy: true,
            history: History::default(),
            checker: SafetyChecker::new(),
            next_read: 0,
            healed_at: None,
            healed_ops: (0, 0),
            workload: true,
            reads_served: Vec::new(),
            removed: BTreeSet::new(),
            removals_applied: BTreeMap::new(),
            removed_told: BTreeSet::new(),
            nemesis: Vec::new(),
            armed_unsynced: None,
            armed_replay: None,
            armed_minority_append: false,
            old_frames: VecDeque::new(),
            leader_term_seen: paloma_core::Term(0),
            next_progress: 1_000_000_000,
            lease_armed: None,
            probe: None,
            split: None,
            workload_paused: false,
        };
        for id in all {
            sim.start_node(id);
        }
        for (i, (at, _)) in sim.plan.events.clone().iter().enumerate() {
            if sim.cfg.fault_mask.as_ref().is_none_or(|m| m.contains(&i)) {
                sim.schedule(*at, Ev::Fault(i));
            }
        }
        let chaos_end = dur_nanos(sim.cfg.chaos);
        sim.schedule(chaos_end, Ev::EndChaos);
        for c in 0..sim.cfg.clients {
            let start = 200_000_000 + sim.client_rng.below(100_000_000);
            sim.schedule_client(c, start);
        }
        sim
    }
}

pub(crate) fn dur_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Sim {
    // ----- running ------------------------------------------------------------------------------

    /// Runs (what remains of) the chaos phase and the liveness phase, checking everything; returns
    /// the report. Scripted scenarios drive the first part themselves, then call this.
    pub fn run(mut self) -> (Report, Trace) {
        let end = dur_nanos(self.cfg.chaos + self.cfg.liveness);
        let result = self.run_until(end).and_then(|()| self.check_end());
        self.conclude(result)
    }

    fn conclude(mut self, result: Result<(), Violation>) -> (Report, Trace) {
        if let Err(v) = result {
            self.report.failure = Some(v.0.clone());
            self.trace.line(self.now, format_args!("FAILED: {}", v.0));
        }
        self.finish_report();
        (self.report, self.trace)
    }

    /// Processes events until simulated time `until` (nanoseconds).
    pub fn run_until(&mut self, until: u64) -> Result<(), Violation> {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until {
                break;
            }
            let Reverse((at, _, ev)) = self.queue.pop().expect("peeked");
            while self.cfg.trace && at >= self.next_progress {
                self.progress_line();
            }
            self.now = at;
            self.report.events += 1;
            self.dispatch(ev)?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// One line of the story each simulated second: who leads, how far the log committed, who is
    /// down, how many client operations completed.
    fn progress_line(&mut self) {
        let at = self.next_progress;
        self.next_progress += 1_000_000_000;
        let leader = self
            .leader()
            .map(|id| (id, self.node(id).expect("live").status()));
        let down: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.is_none())
            .map(|(id, _)| id.to_string())
            .collect();
        let (done, reads) = (self.history.completed(), self.history.completed_reads());
        self.trace.line(
            at,
            format_args!(
                "-- leader {}, commit {}, {} down{}, {} writes + {} reads done, {} safety + {} boundary checks so far",
                leader.as_ref().map_or("none".to_string(), |(id, st)| format!("{id} ({})", st.term)),
                leader.as_ref().map_or(0, |(_, st)| st.commit.0),
                down.len(),
                if down.is_empty() { String::new() } else { format!(" ({})", down.join(" ")) },
                done - reads,
                reads,
                self.checker.observations,
                self.checker.boundary_checks,
            ),
        );
    }

    /// Simulated time now, in nanoseconds.
    #[must_use]
    pub fn now_nanos(&self) -> u64 {
        self.now
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.queue_seq += 1;
        self.queue.push(Reverse((at, self.queue_seq, ev)));
    }

    fn dispatch(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Deliver { to, frame } => {
                if self.nodes[&to].raft.is_none() {
                    return Ok(());
                }
                let round_ack = self.lease_armed.is_some() && self.is_armed_round_ack(to, &frame);
                self.step_node(to, |node, now| node.handle_frame(now, &frame))?;
                if round_ack {
                    self.after_round_ack()?;
                }
                Ok(())
            }
            Ev::Timer { node, generation } => {
                let n = &self.nodes[&node];
                if n.raft.is_none() || n.timer_generation != generation {
                    return Ok(());
                }
                self.step_node(node, |raft, now| raft.handle(now, Input::Timeout))
            }
            Ev::DiskDone { node, incarnation } => self.on_disk_done(node, incarnation),
            Ev::Client { client, generation } => {
                if self.clients[client].generation == generation {
                    self.client_act(client)?;
                }
                Ok(())
            }
            Ev::Fault(i) => {
                if self.chaos_over {
                    // Only a fault deferred past a lease attack's window can land here.
                    return Ok(());
                }
                if let Some(p) = self.probe.as_ref().filter(|p| self.now < p.until) {
                    // A lease attack's window is left alone: planned faults strike when it ends.
                    let at = p.until;
                    self.schedule(at, Ev::Fault(i));
                    return Ok(());
                }
                let fault = self.plan.events[i].1.clone();
                self.inject_fault(fault)
            }
            Ev::Restart { node } => self.restart(node),
            Ev::CrashNow {
                node,
                incarnation,
                down_for,
            } => {
                if self.nodes[&node].incarnation == incarnation && !self.chaos_over {
                    self.crash(node);
                    self.schedule(self.now + dur_nanos(down_for), Ev::Restart { node });
                }
                Ok(())
            }
            Ev::EndChaos => self.heal_all(),
            Ev::SplitPropose => self.split_propose(),
            Ev::LeaseStage => self.lease_stage(),
        }
    }

    fn local_now(&self, id: NodeId) -> Instant {
        self.nodes[&id].clock.local_nanos(self.now)
    }

    fn to_global(&self, id: NodeId, local: Instant) -> u64 {
        self.nodes[&id].clock.global_nanos(local)
    }

    fn unix_ms(&self, id: NodeId) -> u64 {
        UNIX_MS_EPOCH + self.local_now(id).as_nanos() / 1_000_000
    }

    /// Runs `f` on a live node, then drains and routes its outputs, checks it, and re-arms its timer.
    fn step_node(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut RaftNode<Kv>, Instant),
    ) -> Result<(), Violation> {
        let now = self.local_now(id);
        let node = self
            .nodes
            .get_mut(&id)
            .expect("node")
            .raft
            .as_mut()
            .expect("live");
        let before = (node.role(), node.term());
        f(node, now);
        self.after_step(id, before)
    }

    fn after_step(
        &mut self,
        id: NodeId,
        before: (Role, paloma_core::Term),
    ) -> Result<(), Violation> {
        loop {
            let node = self
                .nodes
                .get_mut(&id)
                .expect("node")
                .raft
                .as_mut()
                .expect("live");
            let Some(out) = node.poll_output() else { break };
            match out {
                Output::Persist(batch) => self.submit_disk(id, batch),
                Output::Send(env) => self.send(env)?,
                Output::Event(ev) => self.on_event(id, ev)?,
            }
        }
        let node = self.nodes[&id].raft.as_ref().expect("live");
        let (role, term) = (node.role(), node.term());
        let story = role == Role::Leader || before.0 == Role::Leader;
        if self.cfg.trace && (role, term) != before && (story || self.trace.messages()) {
            let st = node.status();
            self.trace.line(
                self.now,
                format_args!(
                    "{id} is {:?} in {} (leader {:?}, commit {}, last {:?})",
                    st.role, st.term, st.leader, st.commit.0, st.last
                ),
            );
        }
        self.checker.observe(node, Kv::digest)?;
        let nodes = &self.nodes;
        self.checker
            .observe_commit_durable(node, |n| nodes.get(&n).map(|x| x.disk.state()))?;
        if role == Role::Leader && term > self.leader_term_seen {
            self.leader_term_seen = term;
            if let Some(count) = self.armed_replay.take() {
                self.replay_old_frames(count);
            }
        }
        self.arm_timer(id);
        Ok(())
    }

    fn arm_timer(&mut self, id: NodeId) {
        let Some((deadline, _kind)) = self.nodes[&id].raft.as_ref().and_then(|n| n.poll_timeout())
        else {
            return;
        };
        let at = self.to_global(id, deadline).max(self.now);
        let n = self.nodes.get_mut(&id).expect("node");
        n.timer_generation += 1;
        let generation = n.timer_generation;
        self.schedule(
            at,
            Ev::Timer {
                node: id,
                generation,
            },
        );
    }

    // ----- inspection for scripted scenarios -------------------------------------------------------

    /// The live node `id`, if running.
    #[must_use]
    pub fn node(&self, id: NodeId) -> Option<&RaftNode<Kv>> {
        self.nodes.get(&id).and_then(|n| n.raft.as_ref())
    }

    /// Runs `f` on live node `id` (e.g. to propose or change membership) and routes its outputs.
    pub fn with_node<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut RaftNode<Kv>, Instant, u64) -> R,
    ) -> Result<R, Violation> {
        let now = self.local_now(id);
        let unix_ms = self.unix_ms(id);
        let node = self
            .nodes
            .get_mut(&id)
            .expect("node")
            .raft
            .as_mut()
            .expect("live");
        let before = (node.role(), node.term());
        let r = f(node, now, unix_ms);
        self.after_step(id, before)?;
        Ok(r)
    }

    /// The leader with the highest term among live nodes, if any.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.raft.as_ref().map(|r| (id, r.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| *id)
    }

    /// Turns the client workload on or off.
    pub fn set_workload(&mut self, on: bool) {
        self.workload = on;
    }

    /// Sets a node's clock drift in parts per million (positive: its clock runs fast).
    ///
    /// # Panics
    /// If `|ppm|` exceeds `paloma_runtime_sim::clock::DRIFT_PPM_MAX`.
    pub fn set_drift(&mut self, id: NodeId, ppm: i64) {
        let ppm = i32::try_from(ppm).expect("drift within DRIFT_PPM_MAX");
        let now = self.now;
        self.nodes
            .get_mut(&id)
            .expect("node")
            .clock
            .set_drift(now, ppm);
        self.arm_timer(id);
    }

    /// How many faults the plan holds (before masking).
    #[must_use]
    pub fn planned_faults(&self) -> usize {
        self.plan.events.len()
    }

    /// The safety checker (for asserting it ran).
    #[must_use]
    pub fn checker(&self) -> &SafetyChecker {
        &self.checker
    }

    /// The client history so far.
    #[must_use]
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The client history, for scripted operations a scenario records itself.
    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    /// Every `ReadReady` any node emitted: (node, read, index).
    #[must_use]
    pub fn reads_served(&self) -> &[(NodeId, ReadId, LogIndex)] {
        &self.reads_served
    }

    /// The report so far (counters are complete only after `run`).
    #[must_use]
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The trace so far.
    #[must_use]
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    // ----- end-of-run checks --------------------------------------------------------------------

    /// Liveness and convergence after the faults healed, then linearizability of the history.
    fn check_end(&mut self) -> Result<(), Violation> {
        if self.healed_at.is_some() {
            let leaders: Vec<(NodeId, paloma_core::Term)> = self
                .nodes
                .iter()
                .filter_map(|(id, n)| n.raft.as_ref().map(|r| (*id, r.status())))
                .filter(|(_, s)| s.role == Role::Leader)
                .map(|(id, s)| (id, s.term))
                .collect();
            if leaders.len() != 1 {
                return Err(Violation(format!(
                    "liveness: {} leaders after healing: {leaders:?}",
                    leaders.len()
                )));
            }
            if self.workload
                && self.cfg.clients > 0
                && (self.healed_ops.0 == 0 || (self.cfg.read_pct > 0 && self.healed_ops.1 == 0))
            {
                return Err(Violation(format!(
                    "liveness: only {} writes and {} reads completed after healing",
                    self.healed_ops.0, self.healed_ops.1
                )));
            }
            let leader = leaders[0].0;
            let lead_status = self.node(leader).expect("live").status();
            let commit = lead_status.commit;
            // Members of the leader's configuration must catch up. A removed node may never learn
            // of its removal (thesis §4.2.2) and is not expected to.
            for (id, n) in &self.nodes {
                let st = n.raft.as_ref().expect("all restarted").status();
                if lead_status.membership.contains(*id) && st.commit.0 + 64 < commit.0 {
                    return Err(Violation(format!(
                        "liveness: {id} still at commit {} while the leader is at {}",
                        st.commit, commit
                    )));
                }
            }
        }
        if self.healed_at.is_some() {
            self.check_nemesis()?;
        }
        self.history
            .check_linearizable()
            .map_err(|e| Violation(e.to_string()))
    }

    fn finish_report(&mut self) {
        self.report.sim_time = Duration::from_nanos(self.now);
        self.report.leaders = self.checker.leaders().len();
        self.report.committed = self
            .checker
            .committed()
            .last_key_value()
            .map_or(0, |(i, _)| i.0);
        self.report.observations = self.checker.observations;
        self.report.boundary_checks = self.checker.boundary_checks;
        let pending = self.history.len() - self.history.completed();
        let reads = self.history.completed_reads();
        self.report.ops = (self.history.completed() - reads, reads, pending);
        self.report.snapshots_installed = self
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.stats().snapshots_installed)
            .sum();
    }
}
