//! A simulated cluster: nodes in madsim at `10.0.0.<id>`, their disks, faults, and a client API.
//!
//! Faults on top of madsim's own (packet loss and latency through `NetSim::update_config`):
//! - partitions by clogging links: [`Cluster::isolate`] (a minority or a majority),
//!   [`Cluster::partition`] (two groups; a *bridge* is two groups that both still reach a third
//!   node), [`Cluster::cut_one_way`];
//! - crashes: [`Cluster::kill`] is a power cut (the disk loses or tears unsynced writes, see
//!   [`crate::disk`]), [`Cluster::restart`] recovers from the disk with a new `RaftNode`;
//! - duplication of datagrams and per-node clock drift, which madsim lacks.
//!
//! Every call must run inside a madsim runtime (a `#[madsim::test]` or `Runtime::block_on`).

#![allow(clippy::disallowed_types)] // shared slots between the scenario and node tasks; see disk.rs.

use crate::clock::{DriftClock, DRIFT_PPM_MAX};
use crate::disk::{CrashMode, CrashReport, SimDisk};
use crate::node::{self, lock, Env, MakeSm, NodeSlot, Observer, SimMachine};
use crate::trace::Trace;
use madsim::net::NetSim;
use madsim::rand::Rng as _;
use madsim::runtime::{Handle, NodeHandle};
use paloma_core::raft::io::Role;
use paloma_core::raft::{Config, StateMachine, Status};
use paloma_core::replica::ReplicaConfig;
use paloma_core::{ClientId, NodeId};
use paloma_runtime_tokio::driver::{
    ClientConn, ClientError, ConnError, NodeHandle as Driven, RaftMachine, ReplicaMachine,
};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a simulated cluster behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The Raft configuration of every node (`id` is set per node).
    pub raft: Config,
    /// How long an fsync takes, drawn per batch. A crash during it tears the batch.
    pub fsync_latency: Range<Duration>,
    /// Each node's clock runs `1 ± drift` with `drift` drawn uniformly up to this, in ppm.
    pub drift_ppm_max: i32,
    /// Probability in parts per million that an fsync stalls (a dying disk, a busy volume).
    pub fsync_stall_ppm: u32,
    /// A stall adds up to this much to the fsync.
    pub fsync_stall_max: Duration,
    /// The UDP port every node listens on.
    pub port: u16,
    /// How a [`Cluster::kill`] treats unsynced writes; drawn among these.
    pub crash_modes: Vec<CrashMode>,
    /// Record the trace in memory (for the determinism check); printing is `PALOMA_TRACE=1`.
    pub record_trace: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            raft: SimConfig::raft_defaults(),
            fsync_latency: Duration::from_micros(200)..Duration::from_millis(3),
            drift_ppm_max: 200,
            fsync_stall_ppm: 0,
            fsync_stall_max: Duration::ZERO,
            port: 7000,
            crash_modes: CrashMode::ALL.to_vec(),
            record_trace: false,
        }
    }
}

impl SimConfig {
    /// Raft defaults fitted to UDP datagrams and to short simulated runs: frames under 64 KiB,
    /// small snapshot chunks and a low snapshot threshold so that compaction and chunked
    /// InstallSnapshot happen within a scenario.
    #[must_use]
    pub fn raft_defaults() -> Config {
        Config {
            frame_bytes_max: 60 << 10,
            append_bytes_max: 32 << 10,
            append_entries_max: 64,
            command_bytes_max: 4 << 10,
            snapshot_chunk_bytes: 2 << 10,
            snapshot_threshold_entries: 150,
            snapshot_trailing_entries: 20,
            ..Config::default()
        }
    }
}

/// A simulated cluster of bare Raft nodes, each running state machine `S`.
pub type Cluster<S> = SimCluster<RaftMachine<S>>;
/// A simulated cluster of composed replicas (directory, presence, client protocol).
pub type ReplicaCluster = SimCluster<ReplicaMachine>;

/// A running simulated cluster of machines `M`. Share it between client tasks with an `Arc`.
pub struct SimCluster<M: SimMachine> {
    env: Arc<Env<M>>,
    slots: BTreeMap<NodeId, Arc<NodeSlot<M>>>,
    handles: BTreeMap<NodeId, NodeHandle>,
    clogged: Mutex<BTreeSet<(NodeId, NodeId)>>,
    down: Mutex<BTreeSet<NodeId>>,
    crash_reports: Mutex<Vec<(NodeId, CrashReport)>>,
}

impl<M: SimMachine> std::fmt::Debug for SimCluster<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine + Send + 'static> SimCluster<RaftMachine<S>> {
    /// Starts nodes `1..=n` running `make_sm()` as the voters of a new cluster, each with an empty
    /// disk.
    ///
    /// # Panics
    /// Outside a madsim runtime, or if `cfg` is invalid.
    pub fn start(
        n: u64,
        cfg: SimConfig,
        make_sm: impl Fn() -> S + Send + Sync + 'static,
        observer: Arc<dyn Observer<S>>,
    ) -> Cluster<S> {
        let make: MakeSm<S> = Arc::new(make_sm);
        SimCluster::launch(n, cfg, make, observer)
    }
}

impl SimCluster<ReplicaMachine> {
    /// Starts replicas `1..=n` as the voters of a new cluster, each with an empty disk;
    /// `replica.raft` is replaced by `cfg.raft` (with each node's id).
    ///
    /// # Panics
    /// Outside a madsim runtime, or if `cfg` is invalid.
    pub fn start(
        n: u64,
        cfg: SimConfig,
        replica: ReplicaConfig,
        observer: Arc<dyn Observer<paloma_core::directory::Directory>>,
    ) -> ReplicaCluster {
        SimCluster::launch(n, cfg, replica, observer)
    }

    /// Opens a client connection to replica `id`.
    ///
    /// # Errors
    /// [`ConnError::NodeDown`] while it is down, or a timeout.
    pub async fn connect(&self, id: NodeId, timeout: Duration) -> Result<ClientConn, ConnError> {
        let handle = lock(&self.slot(id).handle).clone();
        match handle {
            Some(h) => h.connect(timeout).await,
            None => Err(ConnError::NodeDown),
        }
    }
}

impl SimCluster<ReplicaMachine> {
    /// Runs `f` on running replica `id` between two of its inputs.
    ///
    /// # Errors
    /// [`ConnError::NodeDown`] while it is down, or a timeout.
    pub async fn query<R: Send + 'static>(
        &self,
        id: NodeId,
        f: impl FnOnce(&paloma_core::replica::Replica) -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, ConnError> {
        let handle = lock(&self.slot(id).handle).clone();
        match handle {
            Some(h) => h.query(f, timeout).await,
            None => Err(ConnError::NodeDown),
        }
    }
}

impl<M: SimMachine> SimCluster<M> {
    /// Starts nodes `1..=n`, each an `M` built from `make`, as the voters of a new cluster, each
    /// with an empty disk.
    ///
    /// # Panics
    /// Outside a madsim runtime, or if `cfg` is invalid.
    pub fn launch(
        n: u64,
        cfg: SimConfig,
        make: M::Make,
        observer: Arc<dyn Observer<M::Sm>>,
    ) -> SimCluster<M> {
        assert!((1..=250).contains(&n), "1 to 250 nodes");
        assert!(cfg.drift_ppm_max.abs() <= DRIFT_PPM_MAX);
        assert!(!cfg.crash_modes.is_empty());
        cfg.raft.validate().expect("valid raft config");
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let port = cfg.port;
        let addr = move |id: NodeId| {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, id.0 as u8)), port)
        };
        let trace = Trace::from_env(cfg.record_trace);
        // madsim makes `std::time::Instant::now` virtual: the cluster's epoch on the simulated clock.
        #[allow(clippy::disallowed_methods)]
        let epoch = std::time::Instant::now();
        let env = Arc::new(Env {
            voters: ids.clone(),
            peers: ids.iter().map(|&id| (id, addr(id))).collect(),
            trace,
            observer,
            make,
            epoch,
            duplicate_ppm: Arc::new(AtomicU64::new(0)),
            durable: Arc::new(Mutex::new(BTreeMap::new())),
            in_flight: Arc::new(Mutex::new(BTreeMap::new())),
            cfg,
        });
        let mut rng = madsim::rand::thread_rng();
        let handle = Handle::current();
        let mut slots = BTreeMap::new();
        let mut handles = BTreeMap::new();
        for &id in &ids {
            let max = env.cfg.drift_ppm_max;
            let drift = if max == 0 {
                0
            } else {
                rng.gen_range(-max..=max)
            };
            let slot = Arc::new(NodeSlot {
                id,
                addr: addr(id),
                disk: SimDisk::new(),
                clock: DriftClock::new(drift),
                handle: Mutex::new(None),
                status: Mutex::new(None),
                incarnations: AtomicU64::new(0),
                replay: Arc::new(AtomicU64::new(0)),
            });
            env.trace.line(
                env.t(),
                format_args!("{id} at {} drift={drift}ppm", slot.addr),
            );
            let (e, s) = (env.clone(), slot.clone());
            let h = handle
                .create_node()
                .name(id.to_string())
                .ip(slot.addr.ip())
                .init(move || node::run(e.clone(), s.clone()))
                .build();
            slots.insert(id, slot);
            handles.insert(id, h);
        }
        SimCluster {
            env,
            slots,
            handles,
            clogged: Mutex::new(BTreeSet::new()),
            down: Mutex::new(BTreeSet::new()),
            crash_reports: Mutex::new(Vec::new()),
        }
    }

    // ----- inspection -------------------------------------------------------------------------

    /// The simulation settings of this cluster.
    pub fn sim_config(&self) -> &SimConfig {
        &self.env.cfg
    }

    /// The Raft configuration every node runs (its `id` aside).
    pub fn raft_config(&self) -> &Config {
        &self.env.cfg.raft
    }

    /// Every node id.
    #[must_use]
    pub fn ids(&self) -> Vec<NodeId> {
        self.slots.keys().copied().collect()
    }

    /// The trace.
    #[must_use]
    pub fn trace(&self) -> &Trace {
        &self.env.trace
    }

    /// Simulated nanoseconds since the cluster started (the global clock: use it for histories).
    #[must_use]
    pub fn now_nanos(&self) -> u64 {
        self.env.t()
    }

    /// Adds a free-form line to the trace.
    pub fn note(&self, args: std::fmt::Arguments<'_>) {
        self.env.trace.line(self.env.t(), args);
    }

    /// The node's status after its last step; `None` while it is down.
    #[must_use]
    pub fn status(&self, id: NodeId) -> Option<Status> {
        lock(&self.slot(id).status).clone()
    }

    /// Whether the node is running.
    #[must_use]
    pub fn is_up(&self, id: NodeId) -> bool {
        !lock(&self.down).contains(&id)
    }

    /// The running nodes that believe they lead, with their terms.
    #[must_use]
    pub fn leaders(&self) -> Vec<(NodeId, paloma_core::Term)> {
        self.ids()
            .into_iter()
            .filter_map(|id| {
                self.status(id)
                    .filter(|s| s.role == Role::Leader)
                    .map(|s| (id, s.term))
            })
            .collect()
    }

    /// The running node that leads in the highest term, if any.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders()
            .into_iter()
            .max_by_key(|&(_, t)| t)
            .map(|(id, _)| id)
    }

    /// A node's disk.
    #[must_use]
    pub fn disk(&self, id: NodeId) -> &SimDisk {
        &self.slot(id).disk
    }

    /// Every crash so far and what it kept.
    #[must_use]
    pub fn crash_reports(&self) -> Vec<(NodeId, CrashReport)> {
        lock(&self.crash_reports).clone()
    }

    /// The node's clock drift in ppm.
    #[must_use]
    pub fn drift_ppm(&self, id: NodeId) -> i32 {
        self.slot(id).clock.drift_ppm()
    }

    fn slot(&self, id: NodeId) -> &Arc<NodeSlot<M>> {
        self.slots
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Asks `node` (the leader) to hand leadership to `to`, for any machine; whether it accepted
    /// (`false` also when the machine has no such request, or `node` is down).
    pub async fn try_transfer(&self, node: NodeId, to: NodeId, timeout: Duration) -> bool {
        let handle = lock(&self.slot(node).handle).clone();
        match handle {
            Some(h) => M::transfer(&h, to, timeout).await,
            None => false,
        }
    }

    fn mid(&self, id: NodeId) -> madsim::task::NodeId {
        self.handles[&id].id()
    }

    /// Ends the run: kills every node that is up and lets the executor drop the killed tasks.
    ///
    /// Call it last in a scenario. madsim does not drop the tasks still pending when `block_on`
    /// returns: its run queue and timer heap hold them, and they hold the executor (a reference
    /// cycle), so every node's log, redb and disk image leaked once per seed, about 10 MB per
    /// 5-node seed, and a 1,000-seed sweep ran out of memory.
    pub async fn shutdown(&self) {
        for &id in self.slots.keys() {
            if self.is_up(id) {
                self.power_off(id);
            }
        }
        // Killed tasks are dropped when the executor next polls them.
        madsim::time::sleep(Duration::from_millis(1)).await;
    }

    // ----- crashes ----------------------------------------------------------------------------

    /// Power cut: the node's tasks die, its disk keeps what `mode` allows of unsynced writes.
    pub fn kill_with(&self, id: NodeId, mode: CrashMode) -> CrashReport {
        assert!(self.is_up(id), "{id} is already down");
        self.power_off(id);
        let report = self
            .slot(id)
            .disk
            .crash(mode, madsim::rand::thread_rng().gen());
        self.note(format_args!("crash {id} {mode:?} ({report})"));
        lock(&self.crash_reports).push((id, report));
        report
    }

    /// Stops the node's tasks and marks it down (what its disk keeps is the caller's business).
    fn power_off(&self, id: NodeId) {
        lock(&self.down).insert(id);
        Handle::current().kill(self.mid(id));
        let slot = self.slot(id);
        *lock(&slot.handle) = None;
        *lock(&slot.status) = None;
    }

    /// Power cut with a crash mode drawn from the configuration.
    pub fn kill(&self, id: NodeId) -> CrashReport {
        let modes = &self.env.cfg.crash_modes;
        let mode = modes[madsim::rand::thread_rng().gen_range(0..modes.len())];
        self.kill_with(id, mode)
    }

    /// Waits (up to `within`) for a moment when the node has writes in flight, then cuts the power
    /// with `mode`: the way to make tearing certain rather than likely.
    pub async fn kill_while_unsynced(
        &self,
        id: NodeId,
        mode: CrashMode,
        within: Duration,
    ) -> CrashReport {
        let step = Duration::from_micros(100);
        let mut waited = Duration::ZERO;
        while !self.slot(id).disk.has_pending() && waited < within {
            madsim::time::sleep(step).await;
            waited += step;
        }
        self.kill_with(id, mode)
    }

    /// Restarts a killed node: it recovers from its disk into a new `RaftNode`.
    pub fn restart(&self, id: NodeId) {
        assert!(lock(&self.down).remove(&id), "{id} is not down");
        self.note(format_args!("restart {id}"));
        Handle::current().restart(self.mid(id));
    }

    // ----- network ----------------------------------------------------------------------------

    fn clog(&self, from: NodeId, to: NodeId) {
        if from != to && lock(&self.clogged).insert((from, to)) {
            NetSim::current().clog_link(self.mid(from), self.mid(to));
        }
    }

    /// Cuts every link between `group` and the other nodes, both ways (a minority or a majority
    /// partition, depending on the group's size).
    pub fn isolate(&self, group: &[NodeId]) {
        let rest: Vec<NodeId> = self
            .ids()
            .into_iter()
            .filter(|id| !group.contains(id))
            .collect();
        self.partition(group, &rest);
    }

    /// Cuts every link between `a` and `b`, both ways. Nodes in neither keep all their links: with
    /// one such node this is a *bridge* partition.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        self.note(format_args!("partition {a:?} | {b:?}"));
        for &x in a {
            for &y in b {
                self.clog(x, y);
                self.clog(y, x);
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.note(format_args!("cut {from} -> {to}"));
        self.clog(from, to);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.note(format_args!("heal"));
        let net = NetSim::current();
        for (from, to) in std::mem::take(&mut *lock(&self.clogged)) {
            net.unclog_link(self.mid(from), self.mid(to));
        }
    }

    /// madsim's packet loss rate (0.0 to 1.0).
    pub fn set_loss(&self, rate: f64) {
        self.note(format_args!("loss {rate}"));
        NetSim::current().update_config(|c| c.packet_loss_rate = rate);
    }

    /// madsim's one-way latency range.
    pub fn set_latency(&self, latency: Range<Duration>) {
        NetSim::current().update_config(|c| c.send_latency = latency);
    }

    /// Our duplication fault: each datagram is sent twice with this probability.
    pub fn set_duplication(&self, rate: f64) {
        self.note(format_args!("duplication {rate}"));
        let ppm = (rate.clamp(0.0, 1.0) * 1e6) as u64;
        self.env.duplicate_ppm.store(ppm, Ordering::Relaxed);
    }

    /// The stale-replay fault: `id` sends its `count` oldest remembered frames again with its next
    /// frame (messages from an earlier term arriving after a leader change).
    pub fn replay_old_frames(&self, id: NodeId, count: u64) {
        self.note(format_args!(
            "stale replay: {id} resends {count} old frames"
        ));
        self.slot(id).replay.store(count, Ordering::Relaxed);
    }
}

impl<S: StateMachine + Send + 'static> SimCluster<RaftMachine<S>> {
    // ----- clients ----------------------------------------------------------------------------

    /// The running node's handle.
    fn handle(&self, id: NodeId) -> Result<Driven<S>, ClientError> {
        lock(&self.slot(id).handle)
            .clone()
            .ok_or(ClientError::NodeDown)
    }

    /// Proposes `data` as `(client, seq)` on `node` and waits for it to apply there, at most
    /// `timeout`. Retrying with the same `(client, seq)` is safe: it applies once.
    ///
    /// # Errors
    /// Why it did not apply, or that its outcome is unknown (`paloma_runtime_tokio::ClientError`).
    pub async fn propose(
        &self,
        node: NodeId,
        client: ClientId,
        seq: u64,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        self.handle(node)?.propose(client, seq, data, timeout).await
    }

    /// A linearizable read on `node` (ReadIndex through the leader): `query` runs on the node's
    /// state machine once the read is safe.
    ///
    /// # Errors
    /// Why the read was not served.
    pub async fn read<R: Any + Send>(
        &self,
        node: NodeId,
        query: impl FnOnce(&S) -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        self.handle(node)?.read(query, timeout).await
    }

    /// Changes membership by one server through `node` (it must lead); resolves once appended.
    ///
    /// # Errors
    /// Why the change was refused.
    pub async fn change_membership(
        &self,
        node: NodeId,
        change: paloma_core::raft::MembershipChange,
        timeout: Duration,
    ) -> Result<paloma_core::LogIndex, ClientError> {
        self.handle(node)?.change_membership(change, timeout).await
    }

    /// Asks `node` (the leader) to hand leadership to `to`.
    ///
    /// # Errors
    /// Why the transfer was refused.
    pub async fn transfer_leadership(
        &self,
        node: NodeId,
        to: NodeId,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.handle(node)?.transfer_leadership(to, timeout).await
    }
}
