//! Shared by the madsim scenarios (`tests/madsim_*.rs`): the KV client workload recorded into a
//! `History`, the safety checker wired in as the driver's `Observer`, the fault schedule
//! ("nemesis"), the liveness phase, and the final checks. Built only under `--cfg madsim`.

#![allow(dead_code)] // each scenario file uses a different part
#![allow(clippy::disallowed_types)] // the checker and history are shared with node and client tasks

use madsim::rand::Rng as _;
use paloma_core::raft::check::SafetyChecker;
use paloma_core::raft::io::Role;
use paloma_core::raft::types::HardState;
use paloma_core::raft::RaftNode;
use paloma_core::{ClientId, NodeId};
use paloma_runtime_sim::{ClientError, Cluster, CrashMode, Observer, SimConfig};
use paloma_scenarios::history::{History, KvOp, OpId};
use paloma_scenarios::kv::{decode_response, Kv, KvCommand};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How each client waits for one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// A client abandons an operation (it stays pending in the history) after this long.
const OP_GIVE_UP: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The command that replays the current seed of `test`.
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
    fn new(test: &str) -> Checker {
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

    /// Highest committed index observed.
    pub fn committed(&self) -> u64 {
        lock(&self.safety)
            .committed()
            .keys()
            .next_back()
            .map_or(0, |i| i.0)
    }
}

impl Observer<Kv> for Checker {
    fn after_step(&self, node: &RaftNode<Kv>) {
        if let Err(v) = lock(&self.safety).observe(node, Kv::digest) {
            panic!("Raft safety violation: {v}\nreplay: {}", replay(&self.test));
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

/// What the clients do.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Concurrent clients.
    pub clients: u64,
    /// Keys `0..keys`.
    pub keys: u8,
    /// Percent of operations that are reads.
    pub read_percent: u32,
    /// Percent that are compare-and-set (the rest are puts).
    pub cas_percent: u32,
    /// Pause between a client's operations.
    pub think: Range<Duration>,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            clients: 4,
            keys: 4,
            read_percent: 30,
            cas_percent: 30,
            think: Duration::from_millis(5)..Duration::from_millis(80),
        }
    }
}

/// A running scenario: cluster, checker, history and clients.
pub struct Run {
    pub cluster: Arc<Cluster<Kv>>,
    pub checker: Arc<Checker>,
    pub history: Arc<Mutex<History>>,
    pub test: String,
    stop: Arc<AtomicBool>,
    clients: Vec<madsim::task::JoinHandle<()>>,
}

impl Run {
    /// Starts `nodes` nodes and the workload's clients.
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
                    id: c,
                    workload: workload.clone(),
                };
                madsim::task::spawn(client.run())
            })
            .collect();
        Run {
            cluster,
            checker,
            history,
            test: test.to_string(),
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

    /// Random node.
    pub fn any_node(&self) -> NodeId {
        let ids = self.cluster.ids();
        ids[madsim::rand::thread_rng().gen_range(0..ids.len())]
    }

    /// The leader of the highest term among running nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.cluster
            .leaders()
            .into_iter()
            .max_by_key(|&(_, t)| t)
            .map(|(id, _)| id)
    }

    /// The slowest fsync the run's disks may take.
    pub fn cluster_fsync_max(&self) -> Duration {
        self.cluster.sim_config().fsync_latency.end
    }

    /// Waits until some node leads, for at most a bound derived from the configured timeouts
    /// (never a fixed sleep: a seed whose first elections split or lose votes needs longer):
    /// twenty election timeouts, enough for repeated split votes under loss. Returns the leader.
    pub async fn wait_for_leader(&self) -> NodeId {
        let et = self.cluster.raft_config().election_timeout;
        let bound = et * 20;
        let start = self.cluster.now_nanos();
        loop {
            if let Some(leader) = self.leader() {
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

    /// The fault phase: `duration` of faults drawn from `faults`, each held for a while, healed,
    /// then a pause.
    pub async fn nemesis(&self, faults: &[Fault], duration: Duration) {
        let start = self.cluster.now_nanos();
        let end = start + duration.as_nanos() as u64;
        while self.cluster.now_nanos() < end {
            let fault = faults[madsim::rand::thread_rng().gen_range(0..faults.len())];
            let hold = Duration::from_millis(madsim::rand::thread_rng().gen_range(300..3000));
            self.inject(fault, hold).await;
            madsim::time::sleep(Duration::from_millis(
                madsim::rand::thread_rng().gen_range(100..1500),
            ))
            .await;
        }
    }

    /// Applies one fault for `hold`, then undoes it.
    pub async fn inject(&self, fault: Fault, hold: Duration) {
        let c = &self.cluster;
        let ids = c.ids();
        let n = ids.len();
        let mut shuffled = ids.clone();
        shuffle(&mut shuffled);
        c.note(format_args!("nemesis {fault:?} for {hold:?}"));
        match fault {
            Fault::MinorityPartition => {
                let k = madsim::rand::thread_rng().gen_range(1..=(n - 1) / 2);
                c.isolate(&shuffled[..k]);
                madsim::time::sleep(hold).await;
                c.heal();
            }
            Fault::LeaderInMinority => {
                let leader = self.leader().unwrap_or(shuffled[0]);
                let mut group = vec![leader];
                group.extend(
                    shuffled
                        .iter()
                        .filter(|&&x| x != leader)
                        .take((n - 1) / 2 - 1),
                );
                c.isolate(&group);
                madsim::time::sleep(hold).await;
                c.heal();
            }
            Fault::NoQuorum => {
                // Groups all below a majority: nobody can commit until the heal.
                let size = (n - 1) / 2;
                let mut groups: Vec<&[NodeId]> = shuffled.chunks(size.max(1)).collect();
                while let Some(g) = groups.pop() {
                    for other in &groups {
                        c.partition(g, other);
                    }
                }
                madsim::time::sleep(hold).await;
                c.heal();
            }
            Fault::Bridge => {
                // Two halves that cannot talk, and one node both reach (Howard 2020's chained
                // partition: check-quorum and pre-vote must keep a stable leader).
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                c.partition(a, b);
                c.note(format_args!("bridge is {bridge}"));
                madsim::time::sleep(hold).await;
                c.heal();
            }
            Fault::OneWay => {
                // The leader can send but not hear from some followers, or the reverse.
                let leader = self.leader().unwrap_or(shuffled[0]);
                let others: Vec<NodeId> =
                    shuffled.iter().copied().filter(|&x| x != leader).collect();
                let k = madsim::rand::thread_rng().gen_range(1..=others.len());
                let inbound = madsim::rand::thread_rng().gen_bool(0.5);
                for &o in &others[..k] {
                    if inbound {
                        c.cut_one_way(o, leader);
                    } else {
                        c.cut_one_way(leader, o);
                    }
                }
                madsim::time::sleep(hold).await;
                c.heal();
            }
            Fault::Kill => {
                let victim = shuffled[0];
                c.kill(victim);
                madsim::time::sleep(hold).await;
                c.restart(victim);
            }
            Fault::KillLeaderTorn => {
                let victim = self.leader().unwrap_or(shuffled[0]);
                let mode = if madsim::rand::thread_rng().gen_bool(0.5) {
                    CrashMode::TornPrefix
                } else {
                    CrashMode::TornScrambled
                };
                c.kill_while_unsynced(victim, mode, Duration::from_millis(500))
                    .await;
                madsim::time::sleep(hold).await;
                c.restart(victim);
            }
            Fault::Loss => {
                c.set_loss(madsim::rand::thread_rng().gen_range(0.05..0.4));
                madsim::time::sleep(hold).await;
                c.set_loss(0.0);
            }
            Fault::Duplication => {
                c.set_duplication(madsim::rand::thread_rng().gen_range(0.1..0.5));
                madsim::time::sleep(hold).await;
                c.set_duplication(0.0);
            }
        }
    }

    /// Restores everything, then requires within `bound`: one leader that every running node
    /// follows, a new write through it, and a read of that write through another node.
    pub async fn liveness(&self, bound: Duration) {
        let c = &self.cluster;
        c.heal();
        c.set_loss(0.0);
        c.set_duplication(0.0);
        for id in c.ids() {
            if !c.is_up(id) {
                c.restart(id);
            }
        }
        c.note(format_args!("liveness phase: faults healed"));
        let start = c.now_nanos();
        let deadline = start + bound.as_nanos() as u64;
        let client = 1_000_000;
        let mut last_err = String::from("no leader yet");
        let mut seq = 0;
        while c.now_nanos() < deadline {
            madsim::time::sleep(Duration::from_millis(50)).await;
            let Some(leader) = self.stable_leader() else {
                continue;
            };
            seq += 1;
            let value = 900_000 + seq;
            // A key no client touches, so the read must see exactly this write.
            let key = u8::MAX;
            let op = self.invoke(client, KvOp::Put { key, value });
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
                Ok(resp) => self.complete(op, decode_response(&resp).expect("kv response")),
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
            let op = self.invoke(client + 1, KvOp::Get { key });
            match c
                .read(reader, move |kv: &Kv| kv.get(key), ATTEMPT_TIMEOUT)
                .await
            {
                Ok(v) => {
                    self.complete(op, v);
                    assert_eq!(
                        v,
                        Some(value),
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

    /// A leader that every running node follows in the same term.
    fn stable_leader(&self) -> Option<NodeId> {
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
        panic!(
            "nodes did not converge within {bound:?}\nreplay: {}",
            replay(&self.test)
        );
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
            self.checker.observations() > 0,
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
    pub fn summary(&self) -> String {
        let h = lock(&self.history);
        let crashes = self.cluster.crash_reports();
        let torn = crashes.iter().filter(|(_, r)| r.kept > 0 || r.torn).count();
        format!(
            "{}: t={:.1}s ops={} completed={} reads={} steps={} terms={} commit={} crashes={} (torn {})",
            self.test,
            self.cluster.now_nanos() as f64 / 1e9,
            h.len(),
            h.completed(),
            h.completed_reads(),
            self.checker.observations(),
            self.checker.terms_with_leader(),
            self.checker.committed(),
            crashes.len(),
            torn
        )
    }

    pub fn invoke(&self, client: u64, op: KvOp) -> OpId {
        lock(&self.history).invoke(client, op, self.cluster.now_nanos())
    }

    pub fn complete(&self, op: OpId, result: Option<u64>) {
        lock(&self.history).complete(op, result, self.cluster.now_nanos());
    }
}

/// Faults the nemesis draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A random minority is cut off.
    MinorityPartition,
    /// The leader is cut off with a minority; the majority elects anew.
    LeaderInMinority,
    /// Every group is below a majority.
    NoQuorum,
    /// Two halves connected only through one node.
    Bridge,
    /// Links to or from the leader cut in one direction.
    OneWay,
    /// A random node loses power (random crash mode) and restarts.
    Kill,
    /// The leader loses power with writes in flight (torn), and restarts.
    KillLeaderTorn,
    /// A burst of packet loss.
    Loss,
    /// A burst of duplicated datagrams.
    Duplication,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 9] = [
        Fault::MinorityPartition,
        Fault::LeaderInMinority,
        Fault::NoQuorum,
        Fault::Bridge,
        Fault::OneWay,
        Fault::Kill,
        Fault::KillLeaderTorn,
        Fault::Loss,
        Fault::Duplication,
    ];
}

fn shuffle<T>(v: &mut [T]) {
    let mut rng = madsim::rand::thread_rng();
    for i in (1..v.len()).rev() {
        let j = rng.gen_range(0..=i);
        v.swap(i, j);
    }
}

/// One client: sequential operations, each retried across nodes until it completes or is
/// abandoned (then it stays pending: it may or may not have taken effect).
struct Client {
    cluster: Arc<Cluster<Kv>>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    id: u64,
    workload: Workload,
}

impl Client {
    async fn run(self) {
        let ids = self.cluster.ids();
        let mut target = ids[madsim::rand::thread_rng().gen_range(0..ids.len())];
        let mut seq = 0u64;
        let mut next_value = self.id * 1_000_000;
        let mut last_seen: Option<u64> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let think = madsim::rand::thread_rng().gen_range(self.workload.think.clone());
            madsim::time::sleep(think).await;
            let (key, roll, cas_hit) = {
                let mut rng = madsim::rand::thread_rng();
                (
                    rng.gen_range(0..self.workload.keys),
                    rng.gen_range(0..100u32),
                    rng.gen_bool(0.7),
                )
            };
            next_value += 1;
            let op = if roll < self.workload.read_percent {
                KvOp::Get { key }
            } else if roll < self.workload.read_percent + self.workload.cas_percent {
                KvOp::Cas {
                    key,
                    expected: if cas_hit { last_seen } else { None },
                    new: next_value,
                }
            } else {
                KvOp::Put {
                    key,
                    value: next_value,
                }
            };
            let id = lock(&self.history).invoke(self.id, op, self.cluster.now_nanos());
            if !matches!(op, KvOp::Get { .. }) {
                seq += 1;
            }
            let give_up = self.cluster.now_nanos() + OP_GIVE_UP.as_nanos() as u64;
            let mut result = None;
            while result.is_none() && self.cluster.now_nanos() < give_up {
                let attempt = match op {
                    KvOp::Get { key } => {
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
                    KvOp::Put { key, value } => {
                        self.write(target, seq, KvCommand::Put { key, value }).await
                    }
                    KvOp::Cas { key, expected, new } => {
                        self.write(target, seq, KvCommand::Cas { key, expected, new })
                            .await
                    }
                };
                match attempt {
                    Ok(v) => result = Some(v),
                    Err(ClientError::NotLeader(Some(leader))) if leader != target => {
                        target = leader
                    }
                    Err(_) => {
                        target = ids[madsim::rand::thread_rng().gen_range(0..ids.len())];
                        let backoff = madsim::rand::thread_rng().gen_range(20..200);
                        madsim::time::sleep(Duration::from_millis(backoff)).await;
                    }
                }
            }
            if let Some(v) = result {
                last_seen = v;
                lock(&self.history).complete(id, v, self.cluster.now_nanos());
            }
        }
    }

    async fn write(
        &self,
        node: NodeId,
        seq: u64,
        cmd: KvCommand,
    ) -> Result<Option<u64>, ClientError> {
        let resp = self
            .cluster
            .propose(node, ClientId(self.id), seq, cmd.encode(), ATTEMPT_TIMEOUT)
            .await?;
        Ok(decode_response(&resp).expect("kv response decodes"))
    }
}

/// A whole chaos scenario: warm-up, `fault_time` of faults drawn from `faults` (none: a quiet
/// network for as long), liveness, drain, convergence, then the history checks. Returns the run's
/// one-line summary and the simulated time it took (the simulation-speed bench divides it by wall
/// time).
pub async fn chaos(
    test: &str,
    nodes: u64,
    cfg: SimConfig,
    workload: Workload,
    faults: &[Fault],
    fault_time: Duration,
    completed_min: usize,
) -> (String, Duration) {
    let (cfg, profile) = if faults.is_empty() {
        (cfg, "no faults".to_string())
    } else {
        swarm(cfg)
    };
    let mut run = Run::start(test, nodes, cfg, &workload);
    run.cluster.note(format_args!("fault profile: {profile}"));
    run.wait_for_leader().await;
    if faults.is_empty() {
        madsim::time::sleep(fault_time).await;
    } else {
        run.nemesis(faults, fault_time).await;
    }
    run.liveness(Duration::from_secs(20)).await;
    run.stop_clients().await;
    run.converge(Duration::from_secs(10)).await;
    // The scenarios' minimum throughput assumes the default disk (fsyncs of at most 3 ms); a
    // swarm profile with slower fsyncs completes proportionally fewer operations.
    let fsync_max = run.cluster_fsync_max();
    let scale = (Duration::from_millis(3).as_micros() as f64
        / fsync_max.as_micros().max(3000) as f64)
        .min(1.0);
    run.check_history(((completed_min as f64 * scale) as usize).max(5.min(completed_min)));
    let summary = format!("{} [{profile}]", run.summary());
    // Simulated time since the cluster started.
    let simulated = Duration::from_nanos(run.cluster.now_nanos());
    run.shutdown().await;
    (summary, simulated)
}

/// The simulation settings shared by the chaos scenarios.
pub fn sim_config() -> SimConfig {
    SimConfig::default()
}

/// Swarm testing under madsim (Groce et al., ISSTA 2012): each seed draws its own disk speed and
/// Raft settings from madsim's seeded RNG, on top of what the scenario set, so rare combinations
/// (slow fsyncs with frequent kills, no pre-vote under loss) occur in some seeds. Returns the
/// configuration and a line naming the profile (printed in the summary and the trace).
pub fn swarm(mut cfg: SimConfig) -> (SimConfig, String) {
    let mut rng = madsim::rand::thread_rng();
    let ms = Duration::from_millis;
    let fsync = [
        Duration::from_micros(5)..Duration::from_micros(100),
        Duration::from_micros(200)..ms(3),
        ms(2)..ms(25),
        ms(10)..ms(200),
    ];
    cfg.fsync_latency = fsync[rng.gen_range(0..fsync.len())].clone();
    cfg.raft.pre_vote = rng.gen_bool(0.7);
    cfg.raft.check_quorum = rng.gen_bool(0.7);
    cfg.raft.snapshot_chunk_bytes = [64, 512, 4096][rng.gen_range(0..3)];
    cfg.raft.append_entries_max = [4, 16, 512][rng.gen_range(0..3)];
    cfg.raft.inflight_messages_max = [1, 4, 32][rng.gen_range(0..3)];
    let profile = format!(
        "fsync {:?}, pre-vote {}, check-quorum {}, chunk {} B, append <= {} x {} in flight",
        cfg.fsync_latency,
        cfg.raft.pre_vote,
        cfg.raft.check_quorum,
        cfg.raft.snapshot_chunk_bytes,
        cfg.raft.append_entries_max,
        cfg.raft.inflight_messages_max
    );
    (cfg, profile)
}
