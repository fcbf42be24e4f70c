//! The fast cluster simulator (VOPR-style, no madsim): a seeded event queue drives N sans-IO Raft
//! nodes with a virtual clock per node (drifting), a network emulator that drops, duplicates,
//! delays, reorders and partitions (minority, majority, bridge, one-way), and disks that lose or
//! tear what was not reported durable when a node crashes. Clients run a key-value workload whose
//! history is checked for linearizability; Raft's safety properties are checked after every step.
//!
//! Everything comes from one seed, forked per concern (network, disk, faults, clients, each node's
//! Raft), so removing a fault while shrinking does not reshuffle the rest of the run.

mod faults;
mod trace;

pub use faults::{Fault, FaultPlan, Faults};
pub use trace::Trace;

use crate::check::{SafetyChecker, Violation};
use crate::history::{History, KvOp, OpId};
use crate::kv::{decode_response, Kv, KvCommand};
use paloma_core::io::{Event, Input, Output, Role};
use paloma_core::raft::{Config, Envelope, MembershipChange, ProposeError, RaftNode};
use paloma_core::rng::DetRng;
use paloma_core::storage::{MemStorage, PersistBatch, Recovered};
use paloma_core::{ClientId, Instant, LogIndex, NodeId, ReadId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

/// Wall clock of the simulated world at time zero (2026-01-01), for entry stamps.
const UNIX_MS_EPOCH: u64 = 1_767_225_600_000;

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
    /// Record a human-readable trace.
    pub trace: bool,
    /// Which planned faults to inject (all when `None`); used by shrinking and replay.
    pub fault_mask: Option<BTreeSet<usize>>,
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
            fault_mask: None,
        }
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
    /// The first failure, if any.
    pub failure: Option<String>,
}

impl Report {
    /// One line for sweeps and summaries.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {:.1}s simulated, {} events, {} msgs ({} dropped, {} duplicated), {} crashes ({} torn), {} partitions, {} leaders, commit {}, ops {} writes + {} reads ok ({} pending), {} snapshots installed, {} safety checks{}",
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
            self.failure.as_ref().map_or(String::new(), |f| format!(" -- FAILED: {f}"))
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Deliver { to: NodeId, frame: Vec<u8> },
    Timer { node: NodeId, generation: u64 },
    DiskDone { node: NodeId, incarnation: u64 },
    Client { client: usize, generation: u64 },
    Fault(usize),
    Restart { node: NodeId },
    EndChaos,
}

struct SimNode {
    raft: Option<RaftNode<Kv>>,
    disk: MemStorage,
    /// Batches handed to the disk, not yet durable.
    disk_queue: VecDeque<PersistBatch>,
    disk_busy_until: u64,
    incarnation: u64,
    timer_generation: u64,
    drift_ppm: i64,
    /// (global, local) nanoseconds at the last drift change: the clock is continuous across it.
    clock_base: (u64, u64),
}

#[derive(Debug, Clone)]
enum Attempt {
    Write { seq: u64, cmd: Vec<u8> },
    Read { read: ReadId, key: u8 },
}

#[derive(Debug)]
struct Client {
    id: ClientId,
    seq: u64,
    target: NodeId,
    pending: Option<(OpId, Attempt)>,
    generation: u64,
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
                    drift_ppm,
                    clock_base: (0, 0),
                },
            );
        }
        let clients = (0..cfg.clients)
            .map(|c| Client {
                id: ClientId(c as u64 + 1),
                seq: 0,
                target: voters[c % voters.len()],
                pending: None,
                generation: 0,
            })
            .collect();
        let mut sim = Sim {
            net_rng: DetRng::fork(cfg.seed, "net"),
            disk_rng: DetRng::fork(cfg.seed, "disk"),
            client_rng: DetRng::fork(cfg.seed, "clients"),
            trace: Trace::new(cfg.trace),
            report: Report {
                seed: cfg.seed,
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
        for c in 0..sim.clients.len() {
            let start = 200_000_000 + sim.client_rng.below(100_000_000);
            sim.schedule_client(c, start);
        }
        sim
    }
}

fn dur_nanos(d: Duration) -> u64 {
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
            self.now = at;
            self.report.events += 1;
            self.dispatch(ev)?;
        }
        self.now = self.now.max(until);
        Ok(())
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
                if self.cfg.trace {
                    if let Ok(env) = Envelope::decode(&frame, usize::MAX) {
                        self.trace.message(self.now, "recv", &env);
                    }
                }
                self.step_node(to, |node, now| node.handle_frame(now, &frame))
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
                let fault = self.plan.events[i].1.clone();
                self.inject_fault(fault)
            }
            Ev::Restart { node } => self.restart(node),
            Ev::EndChaos => self.heal_all(),
        }
    }

    fn local_now(&self, id: NodeId) -> Instant {
        let n = &self.nodes[&id];
        let (base_g, base_l) = n.clock_base;
        let elapsed = i128::from(self.now.saturating_sub(base_g));
        let local = i128::from(base_l) + elapsed + elapsed * i128::from(n.drift_ppm) / 1_000_000;
        Instant::from_nanos(u64::try_from(local.max(0)).unwrap_or(u64::MAX))
    }

    fn to_global(&self, id: NodeId, local: Instant) -> u64 {
        let n = &self.nodes[&id];
        let (base_g, base_l) = n.clock_base;
        let ppm = i128::from(n.drift_ppm);
        let l = i128::from(local.as_nanos()) - i128::from(base_l);
        // Smallest global time whose local time is at least `local`.
        let g = i128::from(base_g) + (l * 1_000_000 + (1_000_000 + ppm) - 1) / (1_000_000 + ppm);
        u64::try_from(g.max(0)).unwrap_or(u64::MAX)
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
        let before = (node.status().role, node.status().term);
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
                Output::Send(env) => self.send(env),
                Output::Event(ev) => self.on_event(id, ev)?,
            }
        }
        let node = self.nodes[&id].raft.as_ref().expect("live");
        let st = node.status();
        if self.cfg.trace && (st.role, st.term) != before {
            self.trace.line(
                self.now,
                format_args!(
                    "{id} is {:?} in {} (leader {:?}, commit {}, last {:?})",
                    st.role, st.term, st.leader, st.commit.0, st.last
                ),
            );
        }
        self.checker.observe(node, Kv::digest)?;
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

    // ----- disks ----------------------------------------------------------------------------------

    fn submit_disk(&mut self, id: NodeId, batch: PersistBatch) {
        let latency = 50_000
            + self
                .disk_rng
                .below(dur_nanos(self.cfg.faults.disk_latency_max).max(1));
        let n = self.nodes.get_mut(&id).expect("node");
        n.disk_queue.push_back(batch);
        // Writes complete in order (one fsync after another).
        let done = (self.now + latency).max(n.disk_busy_until);
        n.disk_busy_until = done;
        let incarnation = n.incarnation;
        self.schedule(
            done,
            Ev::DiskDone {
                node: id,
                incarnation,
            },
        );
    }

    fn on_disk_done(&mut self, id: NodeId, incarnation: u64) -> Result<(), Violation> {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.incarnation != incarnation || n.raft.is_none() {
            return Ok(());
        }
        let Some(batch) = n.disk_queue.pop_front() else {
            return Ok(());
        };
        for op in &batch.ops {
            n.disk.apply_op(op);
        }
        let hs = n.disk.state().hard_state;
        self.checker.observe_durable(id, hs.term, hs.vote)?;
        self.step_node(id, |raft, now| {
            raft.handle(now, Input::Persisted(batch.seq))
        })
    }

    // ----- network --------------------------------------------------------------------------------

    fn send(&mut self, env: Envelope) {
        self.report.messages.0 += 1;
        if self.cfg.trace {
            self.trace.message(self.now, "send", &env);
        }
        if self.blocked.contains(&(env.from, env.to)) || !self.nodes.contains_key(&env.to) {
            self.report.messages.1 += 1;
            return;
        }
        let f = self.cfg.faults.clone();
        if self.lossy && self.net_rng.below(1_000_000) < u64::from(f.loss_ppm) {
            self.report.messages.1 += 1;
            return;
        }
        let copies = if self.lossy && self.net_rng.below(1_000_000) < u64::from(f.dup_ppm) {
            2
        } else {
            1
        };
        self.report.messages.2 += copies - 1;
        let frame = env.encode();
        for _ in 0..copies {
            let (lo, hi) = (dur_nanos(f.delay_min), dur_nanos(f.delay_max));
            let mut delay = lo + self.net_rng.below(hi.saturating_sub(lo).max(1));
            if self.lossy && self.net_rng.below(1_000_000) < u64::from(f.spike_ppm) {
                // A latency spike long enough to reorder across heartbeats and elections.
                delay += self
                    .net_rng
                    .below(2 * dur_nanos(self.cfg.raft.election_timeout));
            }
            self.schedule(
                self.now + delay,
                Ev::Deliver {
                    to: env.to,
                    frame: frame.clone(),
                },
            );
        }
    }

    // ----- faults ---------------------------------------------------------------------------------

    /// Injects `fault` now.
    pub fn inject_fault(&mut self, fault: Fault) -> Result<(), Violation> {
        self.trace.line(self.now, format_args!("FAULT {fault:?}"));
        match fault {
            Fault::Heal => self.blocked.clear(),
            Fault::Partition { groups } => {
                self.report.partitions += 1;
                self.blocked.clear();
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for a in &ids {
                    for b in &ids {
                        let ga = groups.iter().position(|g| g.contains(a));
                        let gb = groups.iter().position(|g| g.contains(b));
                        if a != b && ga != gb {
                            self.blocked.insert((*a, *b));
                        }
                    }
                }
            }
            Fault::Bridge {
                bridge,
                left,
                right,
            } => {
                // `bridge` talks to everyone; `left` and `right` cannot talk to each other (Howard 2020).
                self.report.partitions += 1;
                self.blocked.clear();
                for a in &left {
                    for b in &right {
                        if *a != bridge && *b != bridge {
                            self.blocked.insert((*a, *b));
                            self.blocked.insert((*b, *a));
                        }
                    }
                }
            }
            Fault::OneWay { from, to } => {
                self.report.partitions += 1;
                self.blocked.insert((from, to));
            }
            Fault::Reconfigure { choice } => self.reconfigure(choice)?,
            Fault::CrashLeader { down_for } => {
                if let Some(node) = self.leader() {
                    self.crash(node);
                    self.schedule(self.now + dur_nanos(down_for), Ev::Restart { node });
                }
            }
            Fault::Crash { node, down_for } => {
                self.crash(node);
                self.schedule(self.now + dur_nanos(down_for), Ev::Restart { node });
            }
        }
        Ok(())
    }

    fn reconfigure(&mut self, choice: u64) -> Result<(), Violation> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let m = self.node(leader).expect("live").status().membership;
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let spares: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|id| !m.contains(*id) && !self.removed.contains(id))
            .collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let mut options = Vec::new();
        options.extend(spares.iter().map(|id| MembershipChange::AddLearner(*id)));
        options.extend(learners.iter().map(|id| MembershipChange::Promote(*id)));
        if voters.len() > 3 {
            options.extend(voters.iter().map(|id| MembershipChange::Remove(*id)));
        }
        if options.is_empty() {
            return Ok(());
        }
        let change = options[(choice % options.len() as u64) as usize];
        let result = self.with_node(leader, |n, now, unix_ms| {
            n.change_membership(now, unix_ms, change)
        })?;
        self.trace.line(
            self.now,
            format_args!("{leader} proposes {change:?}: {result:?}"),
        );
        if let (Ok(_), MembershipChange::Remove(id)) = (result, change) {
            // Node ids are never reused (etcd README): a removed node never comes back as a member.
            self.removed.insert(id);
        }
        Ok(())
    }

    /// Crashes `id`: its memory is gone, and so is every write not yet durable; with torn writes
    /// enabled, a prefix of the first pending batch may have reached the disk.
    pub fn crash(&mut self, id: NodeId) {
        let torn = self.cfg.faults.torn_writes;
        let n = self.nodes.get_mut(&id).expect("node");
        if n.raft.is_none() {
            return;
        }
        n.raft = None;
        n.incarnation += 1;
        n.disk_busy_until = 0;
        self.report.crashes.0 += 1;
        if let Some(first) = n.disk_queue.front() {
            if torn && !first.ops.is_empty() {
                let keep = self.disk_rng.below(first.ops.len() as u64 + 1) as usize;
                if keep > 0 {
                    self.report.crashes.1 += 1;
                }
                for op in &first.ops[..keep] {
                    n.disk.apply_op(op);
                }
            }
        }
        n.disk_queue.clear();
        self.checker.on_restart(id);
        self.trace
            .line(self.now, format_args!("crash {id} (unsynced writes lost)"));
    }

    /// Restarts `id` from its durable state (no-op if it is running).
    pub fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        if self.nodes[&id].raft.is_some() {
            return Ok(());
        }
        self.start_node(id);
        self.trace.line(self.now, format_args!("restart {id}"));
        let before = (
            Role::Follower,
            self.nodes[&id]
                .raft
                .as_ref()
                .expect("started")
                .status()
                .term,
        );
        self.after_step(id, before)
    }

    fn start_node(&mut self, id: NodeId) {
        let now = self.local_now(id);
        let n = self.nodes.get_mut(&id).expect("node");
        let recovered = n.disk.state().clone();
        let cfg = Config {
            id,
            ..self.cfg.raft.clone()
        };
        let seed = self.cfg.seed ^ (id.0 << 48) ^ (n.incarnation << 32);
        let raft = RaftNode::new(cfg, recovered, Kv::default(), seed, now)
            .expect("recovered state is valid");
        n.raft = Some(raft);
        self.arm_timer(id);
    }

    /// Ends the chaos phase: every partition heals, crashed nodes restart, the network turns
    /// reliable, and clients must make progress from here (the liveness phase).
    fn heal_all(&mut self) -> Result<(), Violation> {
        self.chaos_over = true;
        self.blocked.clear();
        self.lossy = false;
        self.healed_at = Some(self.now);
        self.trace.line(
            self.now,
            format_args!("END OF CHAOS: network healed, crashed nodes restart; liveness phase"),
        );
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.restart(id)?;
        }
        Ok(())
    }

    /// Cuts the network into `groups` (nodes not listed are isolated).
    pub fn partition(&mut self, groups: Vec<Vec<NodeId>>) -> Result<(), Violation> {
        self.inject_fault(Fault::Partition { groups })
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
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
        let before = (node.status().role, node.status().term);
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
    pub fn set_drift(&mut self, id: NodeId, ppm: i64) {
        assert!(ppm > -1_000_000, "a clock must move forward");
        let local = self.local_now(id).as_nanos();
        let now = self.now;
        let n = self.nodes.get_mut(&id).expect("node");
        n.clock_base = (now, local);
        n.drift_ppm = ppm;
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

    // ----- clients --------------------------------------------------------------------------------

    fn schedule_client(&mut self, c: usize, at: u64) {
        self.clients[c].generation += 1;
        let generation = self.clients[c].generation;
        self.schedule(
            at,
            Ev::Client {
                client: c,
                generation,
            },
        );
    }

    fn client_act(&mut self, c: usize) -> Result<(), Violation> {
        if self.clients[c].pending.is_none() {
            if !self.workload {
                return Ok(());
            }
            self.new_op(c);
        }
        self.attempt(c)
    }

    fn new_op(&mut self, c: usize) {
        let key = self.client_rng.below(u64::from(self.cfg.keys.max(1))) as u8;
        let roll = self.client_rng.below(100);
        let client = &mut self.clients[c];
        let (op, attempt) = if roll < u64::from(self.cfg.read_pct) {
            self.next_read += 1;
            (
                KvOp::Get { key },
                Attempt::Read {
                    read: ReadId(self.next_read),
                    key,
                },
            )
        } else {
            client.seq += 1;
            // Values are unique per client and sequence, so a read identifies the write it saw.
            let value = client.id.0 * 1_000_000 + client.seq;
            let (op, cmd) = if roll % 3 == 0 {
                let expected = None;
                (
                    KvOp::Cas {
                        key,
                        expected,
                        new: value,
                    },
                    KvCommand::Cas {
                        key,
                        expected,
                        new: value,
                    },
                )
            } else {
                (KvOp::Put { key, value }, KvCommand::Put { key, value })
            };
            (
                op,
                Attempt::Write {
                    seq: client.seq,
                    cmd: cmd.encode(),
                },
            )
        };
        let id = self.history.invoke(client.id.0, op, self.now);
        self.clients[c].pending = Some((id, attempt));
    }

    /// Tries the pending operation on the client's current target; on refusal, picks another
    /// replica and backs off; otherwise waits for the outcome with a timeout.
    fn attempt(&mut self, c: usize) -> Result<(), Violation> {
        let target = self.clients[c].target;
        let (_, attempt) = self.clients[c].pending.clone().expect("pending");
        if self.nodes[&target].raft.is_none() {
            return self.retry_elsewhere(c, None);
        }
        let client_id = self.clients[c].id;
        let outcome = match attempt {
            Attempt::Write { seq, cmd } => self.with_node(target, |n, now, unix_ms| {
                match n.propose(now, unix_ms, client_id, seq, cmd) {
                    Ok(_) => Ok(()),
                    Err(ProposeError::NotLeader { leader }) => Err(leader),
                    Err(_) => Err(None),
                }
            })?,
            Attempt::Read { read, .. } => {
                // A fresh read id per attempt: an answer to an older attempt must not count.
                self.next_read += 1;
                let new_read = ReadId(self.next_read);
                if let Some((_, Attempt::Read { read: r, .. })) = &mut self.clients[c].pending {
                    *r = new_read;
                }
                let _ = read;
                self.with_node(target, |n, now, _| {
                    n.read(now, new_read).map_err(|_| n.status().leader)
                })?
            }
        };
        match outcome {
            Ok(()) => {
                let at = self.now + 2_000_000_000;
                self.schedule_client(c, at);
                Ok(())
            }
            Err(hint) => self.retry_elsewhere(c, hint),
        }
    }

    fn retry_elsewhere(&mut self, c: usize, hint: Option<NodeId>) -> Result<(), Violation> {
        let nodes = self.cfg.nodes + self.cfg.spares;
        let next = match hint {
            Some(l) if l != self.clients[c].target => l,
            _ => NodeId(1 + self.client_rng.below(nodes)),
        };
        self.clients[c].target = next;
        let at = self.now + 20_000_000 + self.client_rng.below(30_000_000);
        self.schedule_client(c, at);
        Ok(())
    }

    fn on_event(&mut self, node: NodeId, ev: Event) -> Result<(), Violation> {
        match ev {
            Event::Applied {
                client,
                seq,
                response,
                ..
            } => {
                let Some(c) = self.clients.iter().position(|x| x.id == client) else {
                    return Ok(());
                };
                let Some((op, Attempt::Write { seq: s, .. })) = &self.clients[c].pending else {
                    return Ok(());
                };
                if *s != seq {
                    return Ok(());
                }
                let op = *op;
                let result = decode_response(&response)
                    .ok_or_else(|| Violation("undecodable kv response".into()))?;
                self.history.complete(op, result, self.now);
                if self.healed_at.is_some() {
                    self.healed_ops.0 += 1;
                }
                self.finish_op(c);
            }
            Event::ReadReady { id, index } => {
                self.reads_served.push((node, id, index));
                let Some(c) = self.clients.iter().position(
                    |x| matches!(x.pending, Some((_, Attempt::Read { read, .. })) if read == id),
                ) else {
                    return Ok(());
                };
                let Some((op, Attempt::Read { key, .. })) = self.clients[c].pending.clone() else {
                    return Ok(());
                };
                let value = self.nodes[&node]
                    .raft
                    .as_ref()
                    .expect("live")
                    .state_machine()
                    .get(key);
                self.history.complete(op, value, self.now);
                if self.healed_at.is_some() {
                    self.healed_ops.1 += 1;
                }
                self.finish_op(c);
            }
            Event::ReadFailed { id } => {
                if let Some(c) = self.clients.iter().position(
                    |x| matches!(x.pending, Some((_, Attempt::Read { read, .. })) if read == id),
                ) {
                    self.retry_elsewhere(c, None)?;
                }
            }
            Event::RoleChanged { .. } | Event::SnapshotTaken { .. } => {}
        }
        Ok(())
    }

    fn finish_op(&mut self, c: usize) {
        self.clients[c].pending = None;
        let at = self.now + 1_000_000 + self.client_rng.below(20_000_000);
        self.schedule_client(c, at);
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
