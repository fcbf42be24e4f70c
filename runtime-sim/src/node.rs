//! The node task: one incarnation of a replica inside a madsim node, looping exactly per the
//! driving contract of `paloma_core` (crate docs there):
//!
//! 1. feed one input: a UDP datagram (`handle_frame`), a client request (`propose` / `read`), or
//!    the expiry of `poll_timeout`'s deadline (`Input::Timeout`);
//! 2. drain `poll_output` until it is empty: `Persist` goes to redb on the node's [`SimDisk`]
//!    (one write transaction per batch), then a simulated fsync latency, then the disk settles and
//!    `Input::Persisted(seq)` goes back in; `Send` goes out as one datagram (sometimes two: our
//!    duplication fault); `Event` answers clients and feeds the trace;
//! 3. let the [`Observer`] check the node, then sleep until the next deadline or input.
//!
//! Time is the global simulated clock scaled by the node's [`DriftClock`].

#![allow(clippy::disallowed_types)] // shared slots between the scenario and node tasks; see disk.rs.

use crate::clock::DriftClock;
use crate::cluster::SimConfig;
use crate::disk::SimDisk;
use crate::trace::Trace;
use madsim::rand::Rng as _;
use paloma_core::raft::io::{Event, Input, Output, Role};
use paloma_core::raft::storage::{PersistBatch, PersistOp, Recovered, Storage};
use paloma_core::raft::types::{HardState, Snapshot};
use paloma_core::raft::{Config, Envelope, RaftNode, ReadError, StateMachine, Status};
use paloma_core::{ClientId, Instant, NodeId, PersistSeq, ReadId};
use paloma_runtime_tokio::{RedbStorage, StorageError};
use std::any::Any;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Client requests queued per node before senders wait.
const REQUESTS_MAX: usize = 1024;
/// The wall clock stamped into entries is this plus the node's monotonic clock (deterministic).
const UNIX_MS_BASE: u64 = 1_700_000_000_000;

/// Watches every node after every step (the scenario's safety checkers). A method that finds a
/// violation panics: madsim then stops the run and prints the seed.
pub trait Observer<S: StateMachine>: Send + Sync + 'static {
    /// The node drained its outputs after an input.
    fn after_step(&self, node: &RaftNode<S>);
    /// `hard_state` is durable on `id` (after a persist settled, or as recovered at a restart).
    fn durable(&self, id: NodeId, hard_state: HardState);
    /// `id` starts a new incarnation (its in-memory state is new).
    fn restarted(&self, id: NodeId);
}

/// An observer that checks nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl<S: StateMachine> Observer<S> for NoObserver {
    fn after_step(&self, _: &RaftNode<S>) {}
    fn durable(&self, _: NodeId, _: HardState) {}
    fn restarted(&self, _: NodeId) {}
}

/// Why a client request did not get an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node is not the leader; try `0` if known. Nothing was appended.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The node refused the request (backpressure, transfer, size). Nothing was appended.
    #[error("refused: {0}")]
    Refused(String),
    /// The command was appended but the node stopped leading before it applied: it may or may not
    /// take effect. Retry with the same `(client, seq)`.
    #[error("outcome unknown: leadership lost")]
    LeadershipLost,
    /// No answer in time (the command may or may not take effect).
    #[error("timed out")]
    Timeout,
    /// The node is down or crashed while the request was pending.
    #[error("node down")]
    NodeDown,
    /// The read could not be served; retry.
    #[error("read failed")]
    ReadFailed,
    /// The node reported that the command will never apply here (`Event::ProposalDropped`):
    /// truncated, covered by a snapshot, removed, or refused by de-duplication.
    #[error("dropped: {0:?}")]
    Dropped(paloma_core::raft::io::DropReason),
}

/// A read's query, run on the state machine when the read is linearizable.
pub(crate) type Query<S> = Box<dyn FnOnce(&S) -> Box<dyn Any + Send> + Send>;

/// A request from a scenario's client to one node.
pub(crate) enum Request<S> {
    Propose {
        client: ClientId,
        seq: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, ClientError>>,
    },
    Read {
        query: Query<S>,
        reply: oneshot::Sender<Result<Box<dyn Any + Send>, ClientError>>,
    },
}

/// What the cluster and every incarnation of one node share.
pub(crate) struct NodeSlot<S> {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub disk: SimDisk,
    pub clock: DriftClock,
    /// The running incarnation's request inbox.
    pub inbox: Mutex<Option<mpsc::Sender<Request<S>>>>,
    /// The running incarnation's status after its last step; `None` while down.
    pub status: Mutex<Option<Status>>,
    pub incarnations: AtomicU64,
}

/// What the cluster and all node tasks share.
pub(crate) struct Env<S> {
    pub cfg: SimConfig,
    pub voters: Vec<NodeId>,
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub trace: Trace,
    pub observer: Arc<dyn Observer<S>>,
    pub make_sm: Arc<dyn Fn() -> S + Send + Sync>,
    pub epoch: std::time::Instant,
    /// Probability in parts per million that a datagram is sent twice.
    pub duplicate_ppm: AtomicU64,
}

impl<S> Env<S> {
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
pub(crate) async fn run<S: StateMachine + 'static>(env: Arc<Env<S>>, slot: Arc<NodeSlot<S>>) {
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
    let frame_bytes_max = cfg.frame_bytes_max;
    let now = slot.clock.local(env.elapsed());
    let node = RaftNode::new(cfg, recovered, (env.make_sm)(), seed, now)
        .unwrap_or_else(|e| panic!("{id}: cannot start from its recovered state: {e}"));
    let sock = UdpSocket::bind(slot.addr)
        .await
        .unwrap_or_else(|e| panic!("{id}: bind {}: {e}", slot.addr));
    let (tx, mut rx) = mpsc::channel(REQUESTS_MAX);
    *lock(&slot.inbox) = Some(tx);
    let mut d = Driver {
        env,
        slot,
        node,
        storage,
        sock,
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        next_read: 0,
    };
    let mut buf = vec![0u8; frame_bytes_max + 1];
    loop {
        if let Err(e) = d.drain().await {
            d.env.trace.line(
                d.env.t(),
                format_args!("{id} storage failed, stopping: {e}"),
            );
            *lock(&d.slot.status) = None;
            *lock(&d.slot.inbox) = None;
            return;
        }
        d.env.observer.after_step(&d.node);
        *lock(&d.slot.status) = Some(d.node.status());
        let wake_at = match d.node.poll_timeout() {
            Some((deadline, _why)) => d.env.epoch + d.slot.clock.global(deadline),
            None => d.env.epoch + d.env.elapsed() + Duration::from_secs(1),
        };
        let wake = tokio::select! {
            biased;
            r = d.sock.recv_from(&mut buf) => match r {
                Ok((n, _from)) => Wake::Frame(n),
                Err(_) => continue,
            },
            Some(req) = rx.recv() => Wake::Request(req),
            () = madsim::time::sleep_until(wake_at) => Wake::Timeout,
        };
        let now = d.now();
        match wake {
            Wake::Frame(n) => {
                if n > frame_bytes_max {
                    // Truncated by our buffer: let the core count it as malformed.
                    d.node.handle_frame(now, &[]);
                } else {
                    d.node.handle_frame(now, &buf[..n]);
                }
            }
            Wake::Request(req) => d.on_request(now, req),
            Wake::Timeout => d.node.handle(now, Input::Timeout),
        }
    }
}

enum Wake<S> {
    Frame(usize),
    Request(Request<S>),
    Timeout,
}

type ReplyTo<T> = oneshot::Sender<Result<T, ClientError>>;
/// A read's answer, type-erased (the cluster downcasts it to the query's type).
type Answer = Box<dyn Any + Send>;

struct Driver<S: StateMachine> {
    env: Arc<Env<S>>,
    slot: Arc<NodeSlot<S>>,
    node: RaftNode<S>,
    storage: RedbStorage,
    sock: UdpSocket,
    /// Proposals appended here, awaiting `Event::Applied` (a retry may add a second waiter).
    proposals: BTreeMap<(ClientId, u64), Vec<ReplyTo<Vec<u8>>>>,
    reads: BTreeMap<ReadId, (Query<S>, ReplyTo<Answer>)>,
    next_read: u64,
}

impl<S: StateMachine + 'static> Driver<S> {
    fn now(&self) -> Instant {
        // The node's clock never goes back, even if a drifted conversion rounds down.
        self.slot
            .clock
            .local(self.env.elapsed())
            .max(self.node.now())
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        UNIX_MS_BASE + now.as_nanos() / 1_000_000
    }

    /// Step 2 of the contract: drain every output.
    async fn drain(&mut self) -> Result<(), StorageError> {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Persist(batch) => self.persist(batch).await?,
                Output::Send(env) => self.send(env).await,
                Output::Event(ev) => self.on_event(ev),
            }
        }
        Ok(())
    }

    async fn persist(&mut self, batch: PersistBatch) -> Result<(), StorageError> {
        let id = self.slot.id;
        if self.env.trace.enabled() {
            self.env.trace.line(
                self.env.t(),
                format_args!("{id} persist {} {}", batch.seq, describe_ops(&batch.ops)),
            );
        }
        self.storage.persist(&batch)?;
        // The fsync is in flight for this long; a crash now tears the batch's writes.
        let latency = {
            let r = &self.env.cfg.fsync_latency;
            if r.is_empty() {
                r.start
            } else {
                madsim::rand::thread_rng().gen_range(r.clone())
            }
        };
        madsim::time::sleep(latency).await;
        self.slot.disk.settle();
        for op in &batch.ops {
            if let PersistOp::HardState(hs) = op {
                self.env.observer.durable(id, *hs);
            }
        }
        let now = self.now();
        self.node.handle(now, Input::Persisted(batch.seq));
        Ok(())
    }

    async fn send(&mut self, env: Envelope) {
        let Some(&addr) = self.env.peers.get(&env.to) else {
            return;
        };
        let bytes = env.encode();
        self.env.trace.message(self.env.t(), &env, "->");
        // madsim's `send_to` takes (dst, buf): the reverse of tokio's. Errors are loss.
        let _ = self.sock.send_to(addr, &bytes).await;
        let dup_ppm = self.env.duplicate_ppm.load(Ordering::Relaxed);
        if dup_ppm > 0 && madsim::rand::thread_rng().gen_range(0..1_000_000) < dup_ppm {
            // Our duplication fault: madsim gives the copy its own latency, so it may overtake.
            self.env.trace.message(self.env.t(), &env, "=>");
            let _ = self.sock.send_to(addr, &bytes).await;
        }
    }

    fn on_event(&mut self, ev: Event) {
        let id = self.slot.id;
        let t = self.env.t();
        match ev {
            Event::RoleChanged { role, term, leader } => {
                self.env.trace.line(
                    t,
                    format_args!(
                        "{id} becomes {role:?} term={} leader={}",
                        term.0,
                        leader.map_or("-".to_string(), |l| l.to_string())
                    ),
                );
                if role != Role::Leader {
                    for (_, waiters) in std::mem::take(&mut self.proposals) {
                        for w in waiters {
                            let _ = w.send(Err(ClientError::LeadershipLost));
                        }
                    }
                }
            }
            Event::Applied {
                client,
                seq,
                index,
                response,
            } => {
                self.env.trace.line(
                    t,
                    format_args!("{id} applied {client}#{seq} at {}", index.0),
                );
                for w in self.proposals.remove(&(client, seq)).unwrap_or_default() {
                    let _ = w.send(Ok(response.clone()));
                }
            }
            Event::ReadReady { id: rid, index } => {
                self.env
                    .trace
                    .line(t, format_args!("{id} read {rid} ready at {}", index.0));
                if let Some((query, reply)) = self.reads.remove(&rid) {
                    let _ = reply.send(Ok(query(self.node.state_machine())));
                }
            }
            Event::ReadFailed { id: rid } => {
                self.env
                    .trace
                    .line(t, format_args!("{id} read {rid} failed"));
                if let Some((_, reply)) = self.reads.remove(&rid) {
                    let _ = reply.send(Err(ClientError::ReadFailed));
                }
            }
            Event::SnapshotTaken { index } => {
                self.env
                    .trace
                    .line(t, format_args!("{id} snapshot at {}", index.0));
            }
            Event::ProposalDropped {
                index,
                proposal,
                reason,
            } => {
                self.env.trace.line(
                    t,
                    format_args!("{id} dropped {proposal:?} at {}: {reason:?}", index.0),
                );
                if let paloma_core::raft::io::Proposal::Command { client, seq } = proposal {
                    for w in self.proposals.remove(&(client, seq)).unwrap_or_default() {
                        let _ = w.send(Err(ClientError::Dropped(reason)));
                    }
                }
            }
            Event::MembershipApplied { index } => {
                self.env.trace.line(
                    t,
                    format_args!("{id} membership change at {} applied", index.0),
                );
            }
            Event::TransferEnded { to, outcome } => {
                self.env
                    .trace
                    .line(t, format_args!("{id} transfer to {to} ended: {outcome:?}"));
            }
            Event::Removed { by, config } => {
                self.env.trace.line(
                    t,
                    format_args!(
                        "{id} removed from the cluster (told by {by}, config {})",
                        config.0
                    ),
                );
            }
        }
    }

    fn on_request(&mut self, now: Instant, req: Request<S>) {
        let id = self.slot.id;
        match req {
            Request::Propose {
                client,
                seq,
                data,
                reply,
            } => match self.node.propose(now, self.unix_ms(now), client, seq, data) {
                Ok(index) => {
                    self.env.trace.line(
                        self.env.t(),
                        format_args!("{id} propose {client}#{seq} at {}", index.0),
                    );
                    self.proposals.entry((client, seq)).or_default().push(reply);
                }
                Err(paloma_core::raft::ProposeError::NotLeader { leader }) => {
                    let _ = reply.send(Err(ClientError::NotLeader(leader)));
                }
                Err(e) => {
                    let _ = reply.send(Err(ClientError::Refused(e.to_string())));
                }
            },
            Request::Read { query, reply } => {
                self.next_read += 1;
                let rid = ReadId(self.next_read);
                match self.node.read(now, rid) {
                    Ok(()) => {
                        self.env
                            .trace
                            .line(self.env.t(), format_args!("{id} read {rid} requested"));
                        self.reads.insert(rid, (query, reply));
                    }
                    Err(ReadError::NoLeader) => {
                        let _ = reply.send(Err(ClientError::NotLeader(None)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ClientError::Refused(e.to_string())));
                    }
                }
            }
        }
    }
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
