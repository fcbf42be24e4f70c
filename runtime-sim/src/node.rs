//! One incarnation of a simulated node: the **production** driving loop
//! (`paloma_runtime_tokio::driver`) with the simulated parts behind its traits. This file adds only
//! what simulation needs:
//!
//! - [`SimTransport`]: the production [`UdpTransport`] on madsim's network, plus our duplication
//!   fault (madsim has none);
//! - [`SimClock`]: the node's drifting clock ([`DriftClock`]) over madsim's global clock;
//! - [`SimPersister`]: the production [`RedbPersister`] (group commit on the persistence task) on
//!   the node's [`SimDisk`], then a simulated fsync latency, then the disk settles: a crash during
//!   the latency is a power cut during fsync;
//! - [`SimHooks`]: the trace, the scenario's [`Observer`] and the status the cluster reads.
//!
//! Start-up (recovery, bootstrap of a new member) is here too; `paloma init` does the same in
//! production.

#![allow(clippy::disallowed_types)] // shared slots between the scenario and node tasks; see disk.rs.

use crate::clock::{DriftClock, UNIX_MS_EPOCH};
use crate::cluster::SimConfig;
use crate::disk::SimDisk;
use crate::trace::Trace;
use madsim::rand::Rng as _;
use paloma_core::raft::io::Event;
use paloma_core::raft::message::Envelope;
use paloma_core::raft::storage::{apply_op, PersistBatch, PersistOp, Recovered, Storage};
use paloma_core::raft::types::{HardState, Snapshot};
use paloma_core::raft::{Config, RaftNode, StateMachine, Status};
use paloma_core::replica::{Replica, ReplicaConfig};
use paloma_core::time::Now;
use paloma_core::{Instant, NodeId, PersistSeq};
use paloma_runtime_tokio::driver::{
    self, Clock, Hooks, NodeHandle, Parts, RaftMachine, RaftView, ReplicaHandle, ReplicaMachine,
    Transport,
};
use paloma_runtime_tokio::net::UdpTransport;
use paloma_runtime_tokio::{Persister, RedbPersister, RedbStorage, StorageError};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What every node's disk durably holds, as `Recovered` images: updated when a simulated fsync
/// completes (a group commit is atomic in redb, so what settled is exactly what a crash keeps), and
/// compared with what the node really recovers at each restart.
pub type DurableImages = BTreeMap<NodeId, Recovered>;

/// Watches every node (the scenario's safety checkers). A method that finds a violation panics:
/// madsim then stops the run and prints the seed.
pub trait Observer<S: StateMachine>: Send + Sync + 'static {
    /// The node drained its outputs after an input; `durable` is every disk's durable image.
    fn after_step(&self, node: &RaftNode<S>, durable: &DurableImages);
    /// `env` is leaving its sender, whose disk durably holds `durable` (the boundary checks).
    fn sending(&self, env: &Envelope, durable: &Recovered);
    /// `hard_state` is durable on `id` (after a persist settled, or as recovered at a restart).
    fn durable(&self, id: NodeId, hard_state: HardState);
    /// `id` starts a new incarnation (its in-memory state is new).
    fn restarted(&self, id: NodeId);
}

/// An observer that checks nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl<S: StateMachine> Observer<S> for NoObserver {
    fn after_step(&self, _: &RaftNode<S>, _: &DurableImages) {}
    fn sending(&self, _: &Envelope, _: &Recovered) {}
    fn durable(&self, _: NodeId, _: HardState) {}
    fn restarted(&self, _: NodeId) {}
}

/// A machine the simulated cluster can run: a Raft node alone ([`RaftMachine`]) or the composed
/// replica ([`ReplicaMachine`]). Each incarnation is built from the machine's `Make` and what the
/// node recovered from its disk; the scenario talks to it through its `Handle`.
pub trait SimMachine: RaftView + Sized {
    /// What every incarnation is built from, besides its Raft configuration and recovered state.
    type Make: Send + Sync + 'static;
    /// The application's handle on a running incarnation.
    type Handle: Clone + Send + Sync + 'static;
    /// Builds an incarnation.
    ///
    /// # Errors
    /// If the recovered state cannot start a node (a finding: the scenario fails).
    fn boot(
        make: &Self::Make,
        raft: Config,
        recovered: Recovered,
        seed: u64,
        now: Now,
    ) -> Result<Self, String>;
    /// Wraps the request sender of a running incarnation.
    fn handle(tx: tokio::sync::mpsc::Sender<Self::Request>) -> Self::Handle;
    /// Asks the running incarnation (the leader) to hand leadership to `to`; whether it accepted.
    fn transfer(
        handle: &Self::Handle,
        to: NodeId,
        timeout: Duration,
    ) -> impl Future<Output = bool> + Send;
}

/// Builds the state machine of every incarnation of a bare Raft node.
pub type MakeSm<S> = Arc<dyn Fn() -> S + Send + Sync>;

impl<S: StateMachine + Send + 'static> SimMachine for RaftMachine<S> {
    type Make = MakeSm<S>;
    type Handle = NodeHandle<S>;

    fn boot(
        make: &MakeSm<S>,
        raft: Config,
        recovered: Recovered,
        seed: u64,
        now: Now,
    ) -> Result<Self, String> {
        RaftNode::new(raft, recovered, make(), seed, now.instant)
            .map(RaftMachine::new)
            .map_err(|e| e.to_string())
    }

    fn handle(tx: tokio::sync::mpsc::Sender<Self::Request>) -> NodeHandle<S> {
        NodeHandle::new(tx)
    }

    fn transfer(
        handle: &NodeHandle<S>,
        to: NodeId,
        timeout: Duration,
    ) -> impl Future<Output = bool> + Send {
        let handle = handle.clone();
        async move { handle.transfer_leadership(to, timeout).await.is_ok() }
    }
}

impl SimMachine for ReplicaMachine {
    type Make = ReplicaConfig;
    type Handle = ReplicaHandle;

    fn boot(
        make: &ReplicaConfig,
        raft: Config,
        recovered: Recovered,
        seed: u64,
        now: Now,
    ) -> Result<Self, String> {
        let cfg = ReplicaConfig {
            raft,
            ..make.clone()
        };
        Replica::new(cfg, recovered, seed, now)
            .map(ReplicaMachine::new)
            .map_err(|e| e.to_string())
    }

    fn handle(tx: tokio::sync::mpsc::Sender<Self::Request>) -> ReplicaHandle {
        ReplicaHandle::new(tx)
    }

    fn transfer(
        _handle: &ReplicaHandle,
        _to: NodeId,
        _timeout: Duration,
    ) -> impl Future<Output = bool> + Send {
        // The replica has no administrative requests yet (`paloma admin transfer-leader` of the
        // runtime issue adds them): a planned transfer is not carried out, and says so.
        std::future::ready(false)
    }
}

/// What the cluster and every incarnation of one node share.
pub(crate) struct NodeSlot<M: SimMachine> {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub disk: SimDisk,
    pub clock: DriftClock,
    /// The running incarnation's handle; `None` while down.
    pub handle: Mutex<Option<M::Handle>>,
    /// The running incarnation's status after its last step; `None` while down.
    pub status: Mutex<Option<Status>>,
    pub incarnations: AtomicU64,
    /// Old frames the node is asked to send again (the stale-replay fault).
    pub replay: Arc<AtomicU64>,
}

/// What the cluster and all node tasks share.
pub(crate) struct Env<M: SimMachine> {
    pub cfg: SimConfig,
    pub voters: Vec<NodeId>,
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub trace: Trace,
    pub observer: Arc<dyn Observer<M::Sm>>,
    pub make: M::Make,
    pub epoch: std::time::Instant,
    /// Probability in parts per million that a datagram is sent twice.
    pub duplicate_ppm: Arc<AtomicU64>,
    /// Every disk's durable image.
    pub durable: Arc<Mutex<DurableImages>>,
    /// Per node, the operations of the group written but not yet reported durable (at most one
    /// group: the persistence task writes the next only after this one settled). A crash may keep
    /// it whole (redb commits are atomic) or lose it.
    pub in_flight: Arc<Mutex<BTreeMap<NodeId, Vec<PersistOp>>>>,
}

impl<M: SimMachine> Env<M> {
    /// Simulated time since the cluster started.
    pub fn elapsed(&self) -> Duration {
        // madsim makes `std::time::Instant::now` virtual: this is the simulated global clock.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        now.saturating_duration_since(self.epoch)
    }

    /// `elapsed` in nanoseconds, for trace lines and histories.
    pub fn t(&self) -> u64 {
        u64::try_from(self.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One incarnation of a node; returns only if its storage fails.
pub(crate) async fn run<M: SimMachine>(env: Arc<Env<M>>, slot: Arc<NodeSlot<M>>) {
    let id = slot.id;
    let incarnation = slot.incarnations.fetch_add(1, Ordering::Relaxed) + 1;
    // A SimDisk that redb cannot open after a crash would be a real finding: fail loudly.
    let mut storage = RedbStorage::with_backend(slot.disk.open())
        .unwrap_or_else(|e| panic!("{id}: redb cannot open its disk after a crash: {e}"));
    slot.disk.settle();
    let mut recovered = storage
        .recover()
        .unwrap_or_else(|e| panic!("{id}: recovery failed: {e}"));
    if recovered == Recovered::default() {
        // A brand-new member of the initial cluster: write the bootstrap snapshot, as `paloma init`
        // would, before starting.
        let boot = Recovered::bootstrap(env.voters.iter().copied());
        let snap: Snapshot = boot.snapshot.clone().expect("bootstrap has a snapshot");
        storage
            .persist(&PersistBatch {
                seq: PersistSeq(0),
                ops: vec![PersistOp::Snapshot(snap)],
            })
            .expect("bootstrap write");
        slot.disk.settle();
        recovered = storage.recover().expect("recover after bootstrap");
    }
    {
        // What the node recovers must be exactly what was reported durable before the crash: a
        // difference is a lost or invented write (redb, the disk model, or the persistence task).
        let mut images = lock(&env.durable);
        let in_flight = lock(&env.in_flight).remove(&id).unwrap_or_default();
        if let Some(expected) = images.get(&id) {
            let mut with_group = expected.clone();
            for op in &in_flight {
                apply_op(&mut with_group, op);
            }
            assert!(
                *expected == recovered || with_group == recovered,
                "{id}: recovered state is neither what was reported durable before the crash nor that plus the group in flight:\n  durable:   {}\n  +group:    {}\n  recovered: {}",
                summary(expected),
                summary(&with_group),
                summary(&recovered)
            );
        }
        images.insert(id, recovered.clone());
    }
    env.observer.restarted(id);
    env.observer.durable(id, recovered.hard_state);
    let hs = recovered.hard_state;
    env.trace.line(
        env.t(),
        format_args!(
            "{id} starts incarnation={incarnation} term={} vote={:?} commit={} last={}",
            hs.term.0,
            hs.vote,
            hs.commit.0,
            recovered
                .entries
                .last()
                .map_or(recovered.base.index.0, |e| e.index().0)
        ),
    );
    let seed: u64 = madsim::rand::thread_rng().gen();
    let cfg = Config {
        id,
        ..env.cfg.raft.clone()
    };
    let clock = SimClock {
        epoch: env.epoch,
        drift: slot.clock,
    };
    let now = Now {
        instant: clock.now(),
        unix_ms: clock.unix_ms(),
    };
    let machine = M::boot(&env.make, cfg, recovered, seed, now)
        .unwrap_or_else(|e| panic!("{id}: cannot start from its recovered state: {e}"));
    let udp = UdpTransport::bind(slot.addr, env.peers.clone())
        .await
        .unwrap_or_else(|e| panic!("{id}: bind {}: {e}", slot.addr));
    let parts = Parts {
        transport: SimTransport {
            udp,
            duplicate_ppm: env.duplicate_ppm.clone(),
            trace: env.trace.clone(),
            epoch: env.epoch,
            sent: VecDeque::with_capacity(REPLAY_FRAMES_MAX),
            replay: slot.replay.clone(),
        },
        clock,
        persister: SimPersister {
            id,
            inner: RedbPersister::new(storage),
            disk: slot.disk.clone(),
            fsync_latency: env.cfg.fsync_latency.clone(),
            stall_ppm: env.cfg.fsync_stall_ppm,
            stall_max: env.cfg.fsync_stall_max,
            observer: env.observer.clone(),
            durable: env.durable.clone(),
            in_flight: env.in_flight.clone(),
        },
        hooks: SimHooks {
            env: env.clone(),
            slot: slot.clone(),
        },
    };
    let (tx, running) = driver::run_machine(machine, parts);
    *lock(&slot.handle) = Some(M::handle(tx));
    let err = running.await;
    env.trace.line(env.t(), format_args!("{id} stops: {err}"));
    *lock(&slot.status) = None;
    *lock(&slot.handle) = None;
}

/// Simulated nanoseconds since `epoch`.
fn since(epoch: std::time::Instant) -> u64 {
    // madsim makes `std::time::Instant::now` virtual: this is the simulated global clock.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Frames a node remembers for the stale-replay fault.
const REPLAY_FRAMES_MAX: usize = 64;

/// The production UDP transport plus what madsim lacks: duplication (madsim gives the copy its own
/// latency, so it may overtake the original) and stale replay (frames sent long ago, sent again:
/// an old message arriving after a leader change).
struct SimTransport {
    udp: UdpTransport,
    duplicate_ppm: Arc<AtomicU64>,
    trace: Trace,
    epoch: std::time::Instant,
    /// The last frames sent, oldest first.
    sent: VecDeque<(NodeId, Vec<u8>)>,
    replay: Arc<AtomicU64>,
}

impl Transport for SimTransport {
    fn recv(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = std::io::Result<(usize, Option<NodeId>)>> + Send {
        self.udp.recv(buf)
    }

    async fn send(&mut self, to: NodeId, frame: &[u8]) {
        self.udp.send(to, frame).await;
        let dup_ppm = self.duplicate_ppm.load(Ordering::Relaxed);
        let duplicate = dup_ppm > 0 && madsim::rand::thread_rng().gen_range(0..1_000_000) < dup_ppm;
        if duplicate {
            if self.trace.enabled() {
                self.trace.line(
                    since(self.epoch),
                    format_args!("duplicate of the last frame to {to}"),
                );
            }
            self.udp.send(to, frame).await;
        }
        let replay = self.replay.swap(0, Ordering::Relaxed);
        if replay > 0 {
            let n = usize::try_from(replay)
                .unwrap_or(usize::MAX)
                .min(self.sent.len());
            if self.trace.enabled() {
                self.trace
                    .line(since(self.epoch), format_args!("replaying {n} old frames"));
            }
            for (old_to, old) in self.sent.iter().take(n) {
                self.udp.send(*old_to, old).await;
            }
        }
        if self.sent.len() == REPLAY_FRAMES_MAX {
            self.sent.pop_front();
        }
        self.sent.push_back((to, frame.to_vec()));
    }
}

/// The node's clock: madsim's global clock run through the node's drift.
struct SimClock {
    epoch: std::time::Instant,
    drift: DriftClock,
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.drift.local(Duration::from_nanos(since(self.epoch)))
    }

    fn unix_ms(&self) -> u64 {
        UNIX_MS_EPOCH + self.now().as_nanos() / 1_000_000
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send {
        madsim::time::sleep_until(self.epoch + self.drift.global(deadline))
    }
}

/// The production persister on the simulated disk, with a simulated fsync latency after the write
/// and the disk settling only then.
struct SimPersister<S: StateMachine> {
    id: NodeId,
    inner: RedbPersister,
    disk: SimDisk,
    fsync_latency: Range<Duration>,
    /// Probability (ppm) that an fsync stalls, for up to `stall_max` more.
    stall_ppm: u32,
    stall_max: Duration,
    observer: Arc<dyn Observer<S>>,
    durable: Arc<Mutex<DurableImages>>,
    in_flight: Arc<Mutex<BTreeMap<NodeId, Vec<PersistOp>>>>,
}

impl<S: StateMachine + 'static> Persister for SimPersister<S> {
    type Error = StorageError;

    async fn persist(
        &mut self,
        group: Vec<PersistBatch>,
    ) -> Result<Vec<PersistBatch>, StorageError> {
        lock(&self.in_flight).insert(
            self.id,
            group.iter().flat_map(|b| b.ops.iter().cloned()).collect(),
        );
        let group = self.inner.persist(group).await?;
        // The fsync is in flight for this long; a crash now tears the group's writes.
        let latency = {
            let mut rng = madsim::rand::thread_rng();
            let mut latency = if self.fsync_latency.is_empty() {
                self.fsync_latency.start
            } else {
                rng.gen_range(self.fsync_latency.clone())
            };
            if self.stall_ppm > 0 && rng.gen_range(0..1_000_000) < self.stall_ppm {
                latency += self.stall_max.mul_f64(rng.gen_range(0.0..1.0));
            }
            latency
        };
        madsim::time::sleep(latency).await;
        self.disk.settle();
        let mut images = lock(&self.durable);
        let image = images.entry(self.id).or_default();
        for op in group.iter().flat_map(|b| &b.ops) {
            apply_op(image, op);
            if let PersistOp::HardState(hs) = op {
                self.observer.durable(self.id, *hs);
            }
        }
        drop(images);
        lock(&self.in_flight).remove(&self.id);
        Ok(group)
    }
}

/// The trace, the observer and the status the cluster reads.
struct SimHooks<M: SimMachine> {
    env: Arc<Env<M>>,
    slot: Arc<NodeSlot<M>>,
}

impl<M: SimMachine> Hooks<M> for SimHooks<M> {
    fn after_step(&mut self, machine: &M) {
        let node = machine.raft();
        self.env.observer.after_step(node, &lock(&self.env.durable));
        *lock(&self.slot.status) = Some(node.status());
    }

    fn persist_queued(&mut self, batch: &PersistBatch) {
        if self.env.trace.enabled() {
            self.env.trace.line(
                self.env.t(),
                format_args!(
                    "{} persist {} {}",
                    self.slot.id,
                    batch.seq,
                    describe_ops(&batch.ops)
                ),
            );
        }
    }

    fn sending(&mut self, to: NodeId, frame: &[u8]) {
        // The boundary checks see every Raft message as it leaves (decoded again: simulation only).
        let Some(env) = M::raft_envelope(frame) else {
            if self.env.trace.enabled() {
                self.env.trace.line(
                    self.env.t(),
                    format_args!("{} -> {to} {}", self.slot.id, M::describe(frame)),
                );
            }
            return;
        };
        let env = &env;
        self.env.trace.message(self.env.t(), env, "->");
        let images = lock(&self.env.durable);
        let empty = Recovered::default();
        self.env
            .observer
            .sending(env, images.get(&env.from).unwrap_or(&empty));
    }

    fn request(&mut self, what: std::fmt::Arguments<'_>) {
        self.env
            .trace
            .line(self.env.t(), format_args!("{} {what}", self.slot.id));
    }

    fn note(&mut self, _machine: &M, note: &M::Note) {
        if !self.env.trace.enabled() {
            return;
        }
        let Some(ev) = M::raft_event(note) else {
            return;
        };
        let id = self.slot.id;
        let t = self.env.t();
        let trace = &self.env.trace;
        match ev {
            Event::RoleChanged { role, term, leader } => trace.line(
                t,
                format_args!(
                    "{id} becomes {role:?} term={} leader={}",
                    term.0,
                    leader.map_or("-".to_string(), |l| l.to_string())
                ),
            ),
            Event::Applied {
                client, seq, index, ..
            } => trace.line(
                t,
                format_args!("{id} applied {client}#{seq} at {}", index.0),
            ),
            Event::ReadReady { id: rid, index } => {
                trace.line(t, format_args!("{id} read {rid} ready at {}", index.0));
            }
            Event::ReadFailed { id: rid } => trace.line(t, format_args!("{id} read {rid} failed")),
            Event::SnapshotTaken { index } => {
                trace.line(t, format_args!("{id} snapshot at {}", index.0));
            }
            Event::ProposalDropped {
                index,
                proposal,
                reason,
            } => trace.line(
                t,
                format_args!("{id} dropped {proposal:?} at {}: {reason:?}", index.0),
            ),
            Event::MembershipApplied { index } => trace.line(
                t,
                format_args!("{id} membership change at {} applied", index.0),
            ),
            Event::TransferEnded { to, outcome } => {
                trace.line(t, format_args!("{id} transfer to {to} ended: {outcome:?}"));
            }
            Event::Removed { by, config } => trace.line(
                t,
                format_args!(
                    "{id} removed from the cluster (told by {by}, config {})",
                    config.0
                ),
            ),
        }
    }
}

/// A recovered image in a few words, for the mismatch message.
fn summary(r: &Recovered) -> String {
    format!(
        "hs={:?} snapshot={:?} base={:?} entries={}..{}",
        r.hard_state,
        r.snapshot.as_ref().map(|s| s.meta.last),
        r.base,
        r.entries.first().map_or(0, |e| e.index().0),
        r.entries.last().map_or(0, |e| e.index().0)
    )
}

/// A persist batch in a few words: `hs=t3/n1/c4 append=5..7 truncate=5.. snap=9@2 compact=8@2`.
fn describe_ops(ops: &[PersistOp]) -> String {
    let mut parts = Vec::with_capacity(ops.len());
    for op in ops {
        parts.push(match op {
            PersistOp::HardState(hs) => format!(
                "hs={}/{}/c{}",
                hs.term,
                hs.vote.map_or("-".to_string(), |v| v.to_string()),
                hs.commit.0
            ),
            PersistOp::Append(es) => match (es.first(), es.last()) {
                (Some(a), Some(b)) => format!("append={}..{}", a.index().0, b.index().0),
                _ => "append=none".to_string(),
            },
            PersistOp::Truncate { from } => format!("truncate={}..", from.0),
            PersistOp::Snapshot(s) => format!("snap={:?}", s.meta.last),
            PersistOp::Compact { upto } => format!("compact={upto:?}"),
        });
    }
    parts.join(" ")
}
