//! The madsim scenarios' toolkit (built only under `--cfg madsim`): a cluster of nodes running the
//! production driver (`paloma-runtime-sim`), the shared client workload ([`crate::workload`])
//! recorded into the shared [`History`], the shared safety checker wired in as the driver's
//! observer, and the shared fault vocabulary ([`crate::fastsim::faults`]): each seed draws its own
//! profile with [`Faults::swarm`] and its plan with [`FaultPlan::generate`], exactly as the fast
//! simulator does, and this module carries the plan out on madsim's network and disks.
//!
//! What madsim cannot do and how the plan's faults map onto it:
//! - latency spikes (per-message delays beyond the latency range) do not exist in madsim: a madsim
//!   profile has none, and its description says so;
//! - `CrashWhileUnsynced` crashes a node while its disk has writes in flight (the leader for an
//!   append, another node for a vote, a term or a snapshot): the disk cannot tell which record is
//!   pending, so the kind is a choice of victim, not a guarantee;
//! - `PartitionAfterMinorityAppend` cuts the current leader off with a minority at once: under the
//!   continuous workload a leader always has entries in flight;
//! - `Reconfigure`, `SplitConfig` and `Lease` are not planned here (the madsim cluster has no
//!   spare nodes, and those attacks strike at instants only the fast simulator's event loop
//!   catches); the fast simulator's `membership`, `membership4` and `lease-attack` families sweep
//!   them.

#![allow(clippy::disallowed_types)] // the checker and history are shared with node and client tasks

mod nemesis;
pub mod replica;

pub use nemesis::Nemesis;

use crate::fastsim::{FaultPlan, Faults};
use crate::history::{History, KvOp, OpId};
use crate::kv::{decode_response, Kv, KvCommand};
use crate::workload::{OpGen, Workload};
use madsim::rand::Rng as _;
use paloma_core::directory::Directory;
use paloma_core::raft::check::SafetyChecker;
use paloma_core::raft::io::DropReason;
use paloma_core::raft::message::Envelope;
use paloma_core::raft::storage::Recovered;
use paloma_core::raft::types::HardState;
use paloma_core::raft::{RaftNode, StateMachine};
use paloma_core::rng::DetRng;
use paloma_core::{ClientId, NodeId};
use paloma_runtime_sim::{ClientError, Cluster, DurableImages, Observer, RaftMachine, SimConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How each client waits for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// After the faults heal, the clients must complete the scenario's minimum of operations within
/// this window.
const RECOVERY_WINDOW: Duration = Duration::from_secs(5);
/// A client abandons an operation (it stays pending in the history) after this long.
const OP_GIVE_UP: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The command that replays the current seed of `test`.
#[must_use]
pub fn replay(test: &str) -> String {
    let seed = madsim::runtime::Handle::current().seed();
    format!("MADSIM_TEST_SEED={seed} cargo simtest -- --exact {test} --nocapture   (add PALOMA_TRACE=1 for the trace)")
}

/// The Raft safety checker, observing every node after every step.
#[derive(Debug, Default)]
pub struct Checker {
    safety: Mutex<SafetyChecker>,
    test: String,
}

impl Checker {
    /// A checker whose violations name `test` in their replay line.
    #[must_use]
    pub fn new(test: &str) -> Checker {
        Checker {
            safety: Mutex::new(SafetyChecker::new()),
            test: test.to_string(),
        }
    }

    /// Steps observed.
    pub fn observations(&self) -> u64 {
        lock(&self.safety).observations
    }

    /// Leaders observed, one per term.
    pub fn terms_with_leader(&self) -> usize {
        lock(&self.safety).leaders().len()
    }

    /// Boundary checks performed (messages and commits checked against the disks).
    pub fn boundary_checks(&self) -> u64 {
        lock(&self.safety).boundary_checks
    }

    /// Highest committed index observed.
    pub fn committed(&self) -> u64 {
        lock(&self.safety)
            .committed()
            .keys()
            .next_back()
            .map_or(0, |i| i.0)
    }
}

/// The digest the checker compares across nodes at equal applied indexes (state-machine safety).
pub trait StateDigest {
    /// A digest of the whole replicated state.
    fn state_digest(&self) -> [u8; 32];
}

impl StateDigest for Kv {
    fn state_digest(&self) -> [u8; 32] {
        self.digest()
    }
}

impl StateDigest for Directory {
    fn state_digest(&self) -> [u8; 32] {
        self.digest()
    }
}

impl<S: StateMachine + StateDigest> Observer<S> for Checker {
    fn after_step(&self, node: &RaftNode<S>, durable: &DurableImages) {
        let mut safety = lock(&self.safety);
        if let Err(v) = safety.observe(node, S::state_digest) {
            panic!("Raft safety violation: {v}\nreplay: {}", replay(&self.test));
        }
        if let Err(v) = safety.observe_commit_durable(node, |id| durable.get(&id)) {
            panic!("Raft safety violation: {v}\nreplay: {}", replay(&self.test));
        }
    }

    fn sending(&self, env: &Envelope, durable: &Recovered) {
        if let Err(v) = lock(&self.safety).observe_send(env, durable) {
            panic!("boundary violation: {v}\nreplay: {}", replay(&self.test));
        }
    }

    fn durable(&self, id: NodeId, hs: HardState) {
        if let Err(v) = lock(&self.safety).observe_durable(id, hs.term, hs.vote) {
            panic!("durability violation: {v}\nreplay: {}", replay(&self.test));
        }
    }

    fn restarted(&self, id: NodeId) {
        lock(&self.safety).on_restart(id);
    }
}

/// Counts of what the nemesis did, for the summary.
#[derive(Debug, Default)]
pub struct NemesisCounts {
    /// Faults carried out.
    pub faults: AtomicU64,
    /// Crashes.
    pub crashes: AtomicU64,
    /// Transfers the leader accepted.
    pub transfers: AtomicU64,
}

/// A running scenario: cluster, checker, history and clients.
pub struct Run {
    /// The cluster.
    pub cluster: Arc<Cluster<Kv>>,
    /// The safety checker.
    pub checker: Arc<Checker>,
    /// Every client operation.
    pub history: Arc<Mutex<History>>,
    /// The test's name (for replay lines).
    pub test: String,
    /// What the nemesis did.
    pub counts: Arc<NemesisCounts>,
    nemesis: Nemesis<RaftMachine<Kv>>,
    stop: Arc<AtomicBool>,
    clients: Vec<madsim::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("test", &self.test)
            .finish_non_exhaustive()
    }
}

impl Run {
    /// Starts `nodes` nodes and the workload's clients.
    #[must_use]
    pub fn start(test: &str, nodes: u64, cfg: SimConfig, workload: &Workload) -> Run {
        let checker = Arc::new(Checker::new(test));
        let cluster = Arc::new(Cluster::start(nodes, cfg, Kv::default, checker.clone()));
        let seed = madsim::runtime::Handle::current().seed();
        cluster.note(format_args!("scenario {test} seed={seed} nodes={nodes}"));
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (1..=workload.clients)
            .map(|c| {
                let client = Client {
                    cluster: cluster.clone(),
                    history: history.clone(),
                    stop: stop.clone(),
                    gen: OpGen::new(c),
                    workload: workload.clone(),
                    sessions: 1,
                };
                madsim::task::spawn(client.run())
            })
            .collect();
        let nemesis = Nemesis::new(cluster.clone(), test);
        Run {
            cluster,
            checker,
            history,
            test: test.to_string(),
            counts: nemesis.counts.clone(),
            nemesis,
            stop,
            clients,
        }
    }

    /// Stops the clients after their current operation.
    pub async fn stop_clients(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients.drain(..) {
            c.await.expect("client task");
        }
    }

    /// Ends the run (last call of a scenario): stops any client still running and shuts the
    /// cluster down, so that nothing of this seed outlives it (`Cluster::shutdown`).
    pub async fn shutdown(mut self) {
        for c in self.clients.drain(..) {
            c.abort();
        }
        self.cluster.shutdown().await;
    }

    /// The leader of the highest term among running nodes, if any.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        self.cluster.leader()
    }

    /// Waits for a leader ([`Nemesis::wait_for_leader`]).
    pub async fn wait_for_leader(&self) -> NodeId {
        self.nemesis.wait_for_leader().await
    }

    /// Carries out `plan` ([`Nemesis::run_plan`]).
    pub async fn nemesis(&self, faults: &Faults, plan: &FaultPlan, duration: Duration) {
        self.nemesis.run_plan(faults, plan, duration).await;
    }

    /// Carries out one fault now ([`Nemesis::inject`]).
    pub async fn inject(&self, fault: &crate::fastsim::Fault, faults: &Faults) {
        self.nemesis.inject(fault, faults).await;
    }

    /// Waits until every node applied the leader's commit index ([`Nemesis::converge`]).
    pub async fn converge(&self, bound: Duration) {
        self.nemesis.converge(bound).await;
    }

    fn stable_leader(&self) -> Option<NodeId> {
        self.nemesis.stable_leader()
    }

    /// The slowest fsync the run's disks may take.
    #[must_use]
    pub fn cluster_fsync_max(&self) -> Duration {
        self.cluster.sim_config().fsync_latency.end
    }

    /// Restores everything, then requires within `bound`: one leader that every running node
    /// follows, a new write through it, and a read of that write through another node.
    pub async fn liveness(&self, bound: Duration) {
        self.nemesis.heal_all();
        let c = &self.cluster;
        c.note(format_args!("liveness phase: faults healed"));
        let start = c.now_nanos();
        let deadline = start + bound.as_nanos() as u64;
        // The liveness client retries one sequence number until it applies (thesis §6.3: a new
        // number for a command whose outcome is unknown could apply both); a session the cluster
        // no longer knows is replaced by a new one.
        let mut client = 1_000_000;
        let mut last_err = String::from("no leader yet");
        let mut seq = 1;
        let mut op = None;
        while c.now_nanos() < deadline {
            madsim::time::sleep(Duration::from_millis(50)).await;
            let Some(leader) = self.stable_leader() else {
                continue;
            };
            let value = 900_000 + client + seq;
            // A key no client touches, so the read must see exactly this write.
            let key = u8::MAX;
            let id = *op.get_or_insert_with(|| self.invoke(client, KvOp::Put { key, value }));
            match c
                .propose(
                    leader,
                    ClientId(client),
                    seq,
                    KvCommand::Put { key, value }.encode(),
                    ATTEMPT_TIMEOUT,
                )
                .await
            {
                Ok(resp) => {
                    self.complete(id, decode_response(&resp).expect("kv response"));
                    op = None;
                    seq += 1;
                }
                Err(ClientError::Dropped(DropReason::SessionExpired)) => {
                    // Not applied, and never will be: the operation stays pending in the history
                    // (allowed), and a new session starts.
                    last_err = format!("write via {leader}: session {client} expired");
                    op = None;
                    client += 1;
                    seq = 1;
                    continue;
                }
                Err(e) => {
                    last_err = format!("write via {leader}: {e}");
                    continue;
                }
            }
            let reader = c
                .ids()
                .into_iter()
                .find(|&id| id != leader)
                .unwrap_or(leader);
            let op = self.invoke(client + 500_000, KvOp::Get { key });
            match c
                .read(reader, move |kv: &Kv| kv.get(key), ATTEMPT_TIMEOUT)
                .await
            {
                Ok(v) => {
                    self.complete(op, v);
                    assert_eq!(
                        v,
                        Some(900_000 + client + seq - 1),
                        "read after the liveness write saw another value\nreplay: {}",
                        replay(&self.test)
                    );
                    let took = (c.now_nanos() - start) as f64 / 1e9;
                    c.note(format_args!(
                        "liveness ok in {took:.3}s: leader {leader}, write and read done"
                    ));
                    return;
                }
                Err(e) => last_err = format!("read via {reader}: {e}"),
            }
        }
        panic!(
            "liveness: no stable leader with a successful write and read within {bound:?} after the faults healed ({last_err}); statuses: {:?}\nreplay: {}",
            c.ids().into_iter().map(|id| c.status(id)).collect::<Vec<_>>(),
            replay(&self.test)
        );
    }

    /// Requires the clients to complete at least `floor` operations within `window` from now (the
    /// faults healed): a cluster that is up but stalls fails here.
    pub async fn check_progress(&self, window: Duration, floor: usize) {
        let before = lock(&self.history).completed();
        madsim::time::sleep(window).await;
        let done = lock(&self.history).completed() - before;
        assert!(
            done >= floor,
            "only {done} operations completed in the {window:?} after the faults healed (want {floor})\nreplay: {}",
            replay(&self.test)
        );
        self.cluster.note(format_args!(
            "progress: {done} operations in {window:?} after healing"
        ));
    }

    /// The history's linearizability, plus a floor on the work done so a silent stall fails.
    pub fn check_history(&self, completed_min: usize) {
        let h = lock(&self.history);
        if let Err(e) = h.check_linearizable() {
            panic!("{e}\nreplay: {}", replay(&self.test));
        }
        assert!(
            h.completed() >= completed_min,
            "only {} of {} operations completed (want {completed_min})\nreplay: {}",
            h.completed(),
            h.len(),
            replay(&self.test)
        );
        assert!(
            self.checker.observations() > 0 && self.checker.boundary_checks() > 0,
            "the safety checker never ran"
        );
        self.cluster.note(format_args!(
            "summary: {} ops ({} completed, {} reads), {} steps checked, {} leader terms, commit {}",
            h.len(),
            h.completed(),
            h.completed_reads(),
            self.checker.observations(),
            self.checker.terms_with_leader(),
            self.checker.committed()
        ));
    }

    /// A one-line summary for the test output.
    #[must_use]
    pub fn summary(&self) -> String {
        let h = lock(&self.history);
        let crashes = self.cluster.crash_reports();
        let torn = crashes.iter().filter(|(_, r)| r.kept > 0 || r.torn).count();
        format!(
            "{}: t={:.1}s ops={} completed={} reads={} steps={} boundary={} terms={} commit={} faults={} crashes={} (torn {}) transfers={}",
            self.test,
            self.cluster.now_nanos() as f64 / 1e9,
            h.len(),
            h.completed(),
            h.completed_reads(),
            self.checker.observations(),
            self.checker.boundary_checks(),
            self.checker.terms_with_leader(),
            self.checker.committed(),
            self.counts.faults.load(Ordering::Relaxed),
            crashes.len(),
            torn,
            self.counts.transfers.load(Ordering::Relaxed),
        )
    }

    /// Records an operation's invocation.
    pub fn invoke(&self, client: u64, op: KvOp) -> OpId {
        lock(&self.history).invoke(client, op, self.cluster.now_nanos())
    }

    /// Records an operation's completion.
    pub fn complete(&self, op: OpId, result: Option<u64>) {
        lock(&self.history).complete(op, result, self.cluster.now_nanos());
    }
}

/// One client: sequential operations from the shared workload, each retried across nodes until it
/// completes or is abandoned (then it stays pending: it may or may not have taken effect).
struct Client {
    cluster: Arc<Cluster<Kv>>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    gen: OpGen,
    workload: Workload,
    /// Sessions this client started (a new one after its session expired).
    sessions: u64,
}

fn below(n: u64) -> u64 {
    madsim::rand::thread_rng().gen_range(0..n.max(1))
}

impl Client {
    async fn run(mut self) {
        let ids = self.cluster.ids();
        let mut target = ids[madsim::rand::thread_rng().gen_range(0..ids.len())];
        let first = self.gen.client();
        while !self.stop.load(Ordering::Relaxed) {
            let think = madsim::rand::thread_rng().gen_range(self.workload.think.clone());
            madsim::time::sleep(think).await;
            let client = self.gen.client();
            let op = self.gen.next(&self.workload, &mut below);
            let id = lock(&self.history).invoke(client, op.op, self.cluster.now_nanos());
            let give_up = self.cluster.now_nanos() + OP_GIVE_UP.as_nanos() as u64;
            let mut result = None;
            while result.is_none() && self.cluster.now_nanos() < give_up {
                let attempt = match (&op.op, &op.write) {
                    (KvOp::Get { key }, _) => {
                        let key = *key;
                        // Reads go to any node half the time: follower reads (ReadIndex through the
                        // leader) are where stale reads would hide.
                        let node = if madsim::rand::thread_rng().gen_bool(0.5) {
                            ids[madsim::rand::thread_rng().gen_range(0..ids.len())]
                        } else {
                            target
                        };
                        self.cluster
                            .read(node, move |kv: &Kv| kv.get(key), ATTEMPT_TIMEOUT)
                            .await
                    }
                    (_, Some((seq, cmd))) => self
                        .cluster
                        .propose(
                            target,
                            ClientId(client),
                            *seq,
                            cmd.encode(),
                            ATTEMPT_TIMEOUT,
                        )
                        .await
                        .map(|resp| decode_response(&resp).expect("kv response decodes")),
                    (_, None) => unreachable!("a write carries its command"),
                };
                match attempt {
                    Ok(v) => result = Some(v),
                    Err(ClientError::NotLeader(Some(leader))) if leader != target => {
                        target = leader;
                    }
                    Err(ClientError::Dropped(DropReason::SessionExpired)) => {
                        // The cluster does not know this session (its first write never applied,
                        // or it was evicted): this write never applies. It stays pending in the
                        // history, and the client starts a new session (thesis §6.3).
                        self.sessions += 1;
                        self.gen = OpGen::new(first + 1_000 * self.sessions);
                        break;
                    }
                    Err(_) => {
                        target = ids[madsim::rand::thread_rng().gen_range(0..ids.len())];
                        let backoff = madsim::rand::thread_rng().gen_range(20..200);
                        madsim::time::sleep(Duration::from_millis(backoff)).await;
                    }
                }
            }
            if let Some(v) = result {
                self.gen.saw(v);
                lock(&self.history).complete(id, v, self.cluster.now_nanos());
            }
        }
    }
}

/// The settings a madsim chaos run starts from.
#[must_use]
pub fn sim_config() -> SimConfig {
    SimConfig::default()
}

/// Swarm testing under madsim (Groce et al., ISSTA 2012), with the fast simulator's vocabulary:
/// draws this seed's profile with [`Faults::swarm`] on top of `base` (which says which kinds the
/// scenario wants) and the Raft settings in `cfg`, then turns the profile into the madsim
/// cluster's settings. Returns the configuration, the profile, and the line naming it.
#[must_use]
pub fn swarm(mut cfg: SimConfig, base: &Faults) -> (SimConfig, Faults, String) {
    let seed = madsim::runtime::Handle::current().seed();
    let mut rng = DetRng::fork(seed, "madsim-swarm");
    let mut f = base.swarm(&mut cfg.raft, &mut rng);
    // madsim has no per-message latency spikes; the profile says so rather than pretend.
    f.spike_ppm = 0;
    f.spike_max = Duration::ZERO;
    // A scenario is named after the faults it attacks with: swarm varies everything else, but
    // never switches the scenario's own kinds off (nor on).
    f.partitions = base.partitions;
    f.crashes = base.crashes;
    f.membership = false;
    f.lease_attacks = false;
    f.config_splits = false;
    f.targeted = f.targeted && base.targeted;
    // The drift bound of the scenario is the upper limit (drift far beyond it belongs to the fast
    // simulator's sweeps).
    f.drift_ppm_max = f.drift_ppm_max.min(base.drift_ppm_max);
    cfg.fsync_latency = f.disk_latency_min..f.disk_latency_max;
    cfg.fsync_stall_ppm = f.disk_stall_ppm;
    cfg.fsync_stall_max = f.disk_stall_max;
    cfg.drift_ppm_max = i32::try_from(f.drift_ppm_max).unwrap_or(i32::MAX);
    let line = f.describe(&cfg.raft);
    (cfg, f, line)
}

/// The fault plan of this seed over `chaos` for nodes `1..=nodes`.
#[must_use]
pub fn plan(faults: &Faults, nodes: u64, chaos: Duration) -> FaultPlan {
    let seed = madsim::runtime::Handle::current().seed();
    let mut rng = DetRng::fork(seed, "madsim-plan");
    let ids: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
    FaultPlan::generate(faults, &ids, chaos, &mut rng)
}

/// A whole chaos scenario: the seed's swarm profile on top of `base`, warm-up, `fault_time` of the
/// seed's planned faults, liveness, drain, convergence, then the history checks. `base` of
/// [`Faults::none`] is a quiet network for as long. Returns the run's one-line summary and the
/// simulated time it took (the simulation-speed bench divides it by wall time).
pub async fn chaos(
    test: &str,
    nodes: u64,
    cfg: SimConfig,
    workload: Workload,
    base: &Faults,
    fault_time: Duration,
    completed_min: usize,
) -> (String, Duration) {
    let quiet = *base == Faults::none();
    let (cfg, faults, profile) = if quiet {
        (cfg, Faults::none(), "no faults".to_string())
    } else {
        swarm(cfg, base)
    };
    let plan = if quiet {
        FaultPlan::default()
    } else {
        plan(&faults, nodes, fault_time)
    };
    let mut run = Run::start(test, nodes, cfg, &workload);
    run.cluster.note(format_args!("fault profile: {profile}"));
    run.wait_for_leader().await;
    run.nemesis(&faults, &plan, fault_time).await;
    run.liveness(Duration::from_secs(30)).await;
    // Throughput is checked once the faults have healed: during the chaos phase a profile may
    // legitimately keep a quorum down most of the time (crashes every few hundred milliseconds).
    // The floor assumes the default disk (fsyncs of at most 3 ms); slower fsyncs complete
    // proportionally fewer operations.
    let fsync_max = run.cluster_fsync_max();
    let scale = (Duration::from_millis(3).as_micros() as f64
        / fsync_max.as_micros().max(3000) as f64)
        .min(1.0);
    let floor = ((completed_min as f64 * scale) as usize).max(5.min(completed_min));
    run.check_progress(RECOVERY_WINDOW, floor).await;
    run.stop_clients().await;
    run.converge(Duration::from_secs(10)).await;
    run.check_history(floor);
    let summary = format!("{} [{profile}]", run.summary());
    // Simulated time since the cluster started.
    let simulated = Duration::from_nanos(run.cluster.now_nanos());
    run.shutdown().await;
    (summary, simulated)
}
