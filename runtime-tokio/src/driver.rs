//! The production driver: one task that owns a [`RaftNode`] and loops exactly per the driving
//! contract (ARCHITECTURE.md, "The driving contract"; `paloma_core`'s crate docs):
//!
//! 1. feed one input: a frame from the [`Transport`], a request from a [`NodeHandle`], the durable
//!    `seq` published by the persistence task ([`crate::persist`]), or the expiry of
//!    `poll_timeout`'s deadline;
//! 2. drain `poll_output`: `Persist` goes to the persistence task's queue (the driver does not
//!    wait for the fsync: input keeps flowing while a write is pending, and the core holds back
//!    every message that depends on it), `Send` goes to the transport, `Event` answers clients;
//! 3. let the [`Hooks`] look at the node, then wait for the next input or deadline.
//!
//! It is written against `tokio`, which is madsim's tokio under `--cfg madsim`: the simulated
//! scenarios run this very loop, with a simulated transport, clock and disk behind the traits
//! (`paloma-runtime-sim`). Every `select!` is `biased` (madsim replays a seed only if the choice
//! among ready branches is deterministic).

use crate::persist::{self, Persister, QUEUE_BATCHES_MAX};
use paloma_core::raft::io::{DropReason, Event, Input, Output, Proposal, Role};
use paloma_core::raft::message::Envelope;
use paloma_core::raft::storage::PersistBatch;
use paloma_core::raft::{
    MembershipChange, MembershipError, ProposeError, RaftNode, ReadError, StateMachine,
    TransferError,
};
use paloma_core::{ClientId, Instant, LogIndex, NodeId, PersistSeq, ReadId};
use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests queued per node before a [`NodeHandle`] caller waits.
pub const REQUESTS_MAX: usize = 1024;
/// Proposals and reads waiting for their outcome; beyond this a request is refused
/// ([`ClientError::Busy`]), never queued without bound.
pub const PENDING_MAX: usize = 4096;

/// Where frames come from and go to. Sending is best effort (the core tolerates loss).
pub trait Transport: Send + 'static {
    /// Waits for the next frame and copies it into `buf`; returns its length, which may exceed
    /// `buf.len()` if the frame was too long (the driver then counts it as malformed). Must be
    /// cancel-safe: the driver drops the future when another input wins the `select!`.
    fn recv(&mut self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send;
    /// Sends one encoded envelope to `to`, best effort.
    fn send(&mut self, to: NodeId, frame: &[u8]) -> impl Future<Output = ()> + Send;
}

/// The node's monotonic clock and its wall clock.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since the node's epoch: what the core sees.
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch, stamped into entries by a leader.
    fn unix_ms(&self) -> u64;
    /// Resolves once `now()` has reached `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send;
}

/// What a runtime watches: tracing in production, checkers and the trace in simulation. Every
/// method has an empty default.
pub trait Hooks<S: StateMachine>: Send + 'static {
    /// The node drained its outputs after an input.
    fn after_step(&mut self, _node: &RaftNode<S>) {}
    /// A batch went to the persistence task.
    fn persist_queued(&mut self, _batch: &PersistBatch) {}
    /// An envelope is about to be sent.
    fn sending(&mut self, _env: &Envelope) {}
    /// The node reported an event (after the driver answered the clients waiting on it).
    fn event(&mut self, _node: &RaftNode<S>, _event: &Event) {}
    /// A client request was accepted by the core.
    fn request(&mut self, _what: std::fmt::Arguments<'_>) {}
}

/// Hooks that log through `tracing` (production).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingHooks;

impl<S: StateMachine> Hooks<S> for TracingHooks {
    fn event(&mut self, node: &RaftNode<S>, event: &Event) {
        match event {
            Event::RoleChanged { .. }
            | Event::Removed { .. }
            | Event::MembershipApplied { .. }
            | Event::TransferEnded { .. } => {
                tracing::info!(node = %node.id(), ?event, "raft");
            }
            _ => tracing::trace!(node = %node.id(), ?event, "raft"),
        }
    }
}

/// Why a client request got no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node is not the leader; try `0` if known. Nothing was appended.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The core refused the proposal. Nothing was appended.
    #[error("proposal refused: {0}")]
    Propose(ProposeError),
    /// The core refused the read.
    #[error("read refused: {0}")]
    Read(ReadError),
    /// The core refused the membership change.
    #[error("membership change refused: {0}")]
    Membership(MembershipError),
    /// The core refused the transfer.
    #[error("transfer refused: {0}")]
    Transfer(TransferError),
    /// Too many requests are waiting for an outcome on this node; retry later.
    #[error("too many pending requests")]
    Busy,
    /// The command was appended but the node stopped leading before it applied: it may or may not
    /// take effect. Retry with the same `(client, seq)`.
    #[error("outcome unknown: leadership lost")]
    LeadershipLost,
    /// The core reported that the command will never apply here (`Event::ProposalDropped`).
    #[error("dropped: {0:?}")]
    Dropped(DropReason),
    /// The read could not be served; retry.
    #[error("read failed")]
    ReadFailed,
    /// No answer in time (the command may or may not take effect).
    #[error("timed out")]
    Timeout,
    /// The node is down or stopped while the request was pending.
    #[error("node down")]
    NodeDown,
}

/// A read's query, run on the state machine once the read is linearizable.
pub type Query<S> = Box<dyn FnOnce(&S) -> Answer + Send>;
/// A read's answer, type-erased ([`NodeHandle::read`] downcasts it to the query's type).
pub type Answer = Box<dyn Any + Send>;
type ReplyTo<T> = oneshot::Sender<Result<T, ClientError>>;

/// A request from the application to the node task.
enum Request<S> {
    Propose {
        client: ClientId,
        seq: u64,
        data: Vec<u8>,
        reply: ReplyTo<Vec<u8>>,
    },
    Read {
        query: Query<S>,
        reply: ReplyTo<Answer>,
    },
    Membership {
        change: MembershipChange,
        reply: ReplyTo<LogIndex>,
    },
    Transfer {
        to: NodeId,
        reply: ReplyTo<()>,
    },
}

impl<S> Request<S> {
    /// Answers the request with `err` without handing it to the core.
    fn refuse(self, err: ClientError) {
        // A caller that gave up has dropped its receiver: nothing to tell.
        let _ = match self {
            Request::Propose { reply, .. } => reply.send(Err(err)).map_err(drop),
            Request::Read { reply, .. } => reply.send(Err(err)).map_err(drop),
            Request::Membership { reply, .. } => reply.send(Err(err)).map_err(drop),
            Request::Transfer { reply, .. } => reply.send(Err(err)).map_err(drop),
        };
    }
}

/// The application's handle on a running node: cheap to clone, every call bounded by a timeout.
#[derive(Debug)]
pub struct NodeHandle<S> {
    tx: mpsc::Sender<Request<S>>,
}

impl<S> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        NodeHandle {
            tx: self.tx.clone(),
        }
    }
}

impl<S: StateMachine + 'static> NodeHandle<S> {
    async fn call<T>(
        &self,
        make: impl FnOnce(ReplyTo<T>) -> Request<S>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let (reply, rx) = oneshot::channel();
        let sent = tokio::time::timeout(timeout, self.tx.send(make(reply))).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ClientError::NodeDown),
            Err(_) => return Err(ClientError::Timeout),
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::NodeDown),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Proposes `data` as `(client, seq)` and waits for it to apply, at most `timeout`. Retrying
    /// with the same `(client, seq)` is safe: it applies once (thesis §6.3).
    ///
    /// # Errors
    /// Why it did not apply, or that its outcome is unknown.
    pub async fn propose(
        &self,
        client: ClientId,
        seq: u64,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        self.call(
            |reply| Request::Propose {
                client,
                seq,
                data,
                reply,
            },
            timeout,
        )
        .await
    }

    /// A linearizable read (ReadIndex, thesis §6.4): `query` runs on the node's state machine once
    /// the read is safe.
    ///
    /// # Errors
    /// Why the read was not served.
    pub async fn read<R: Any + Send>(
        &self,
        query: impl FnOnce(&S) -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        let query: Query<S> = Box::new(move |sm: &S| Box::new(query(sm)) as Answer);
        let answer = self
            .call(|reply| Request::Read { query, reply }, timeout)
            .await?;
        Ok(*answer
            .downcast::<R>()
            .expect("the answer has the query's type"))
    }

    /// Changes membership by one server (thesis §4.1); resolves once the change is accepted
    /// (appended), with its index. Its end is reported by `Event::MembershipApplied` or
    /// `Event::ProposalDropped`.
    ///
    /// # Errors
    /// Why the change was refused.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<LogIndex, ClientError> {
        self.call(|reply| Request::Membership { change, reply }, timeout)
            .await
    }

    /// Starts a leadership transfer to `to` (thesis §3.10); its end is `Event::TransferEnded`.
    ///
    /// # Errors
    /// Why the transfer was refused.
    pub async fn transfer_leadership(
        &self,
        to: NodeId,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.call(|reply| Request::Transfer { to, reply }, timeout)
            .await
    }
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError<E: std::error::Error + 'static> {
    /// A write failed: the node may not acknowledge anything more and must recover from disk.
    #[error("storage failed: {0}")]
    Storage(#[source] E),
    /// The persistence task ended without an error (it cannot, unless it panicked).
    #[error("the persistence task ended")]
    PersistenceGone,
}

/// What the driver needs besides the node: its IO behind traits.
#[derive(Debug)]
pub struct Parts<T, C, P, H> {
    /// Frames in and out.
    pub transport: T,
    /// Time.
    pub clock: C,
    /// Durable storage.
    pub persister: P,
    /// Observation.
    pub hooks: H,
}

/// Starts the node task's loop: returns the application's handle and the loop's future (spawn it,
/// or await it; it resolves only if storage fails).
pub fn start<S, T, C, P, H>(
    node: RaftNode<S>,
    parts: Parts<T, C, P, H>,
) -> (
    NodeHandle<S>,
    impl Future<Output = DriverError<P::Error>> + Send,
)
where
    S: StateMachine + Send + 'static,
    T: Transport,
    C: Clock,
    P: Persister,
    H: Hooks<S>,
{
    let (tx, rx) = mpsc::channel(REQUESTS_MAX);
    let handle = NodeHandle { tx };
    (handle, run(node, parts, rx))
}

async fn run<S, T, C, P, H>(
    node: RaftNode<S>,
    parts: Parts<T, C, P, H>,
    mut requests: mpsc::Receiver<Request<S>>,
) -> DriverError<P::Error>
where
    S: StateMachine + Send + 'static,
    T: Transport,
    C: Clock,
    P: Persister,
    H: Hooks<S>,
{
    let Parts {
        transport,
        clock,
        persister,
        hooks,
    } = parts;
    let frame_bytes_max = node.config().frame_bytes_max;
    let (queue_tx, queue_rx) = mpsc::channel(QUEUE_BATCHES_MAX);
    let (durable_tx, mut durable_rx) = watch::channel(PersistSeq(0));
    let persist_task = persist::run(persister, queue_rx, durable_tx);
    tokio::pin!(persist_task);
    let mut d = Driver {
        node,
        transport,
        clock,
        hooks,
        queue: queue_tx,
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        next_read: 0,
    };
    let mut buf = vec![0u8; frame_bytes_max + 1];
    loop {
        // Step 2: drain. A full persistence queue makes this wait (backpressure: input stops while
        // the disk is behind); the persistence task is polled meanwhile, so the queue empties.
        if let Err(e) = d.drain(&mut persist_task).await {
            return e;
        }
        d.hooks.after_step(&d.node);
        let deadline = d.node.poll_timeout().map(|(at, _why)| at);
        let clock = &d.clock;
        let sleep = async move {
            match deadline {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let wake = tokio::select! {
            biased;
            result = &mut persist_task => Wake::PersistEnded(result),
            changed = durable_rx.changed() => match changed {
                Ok(()) => Wake::Durable(*durable_rx.borrow_and_update()),
                Err(_) => Wake::PersistEnded(Ok(())),
            },
            r = d.transport.recv(&mut buf) => match r {
                Ok(n) => Wake::Frame(n),
                Err(_) => Wake::Nothing,
            },
            Some(req) = requests.recv() => Wake::Request(req),
            () = sleep => Wake::Timeout,
        };
        let now = d.now();
        match wake {
            Wake::PersistEnded(Err(e)) => return DriverError::Storage(e),
            Wake::PersistEnded(Ok(())) => return DriverError::PersistenceGone,
            Wake::Durable(seq) => d.node.handle(now, Input::Persisted(seq)),
            Wake::Frame(n) if n > frame_bytes_max => {
                // Longer than any valid frame: the core counts it as malformed.
                d.node.handle_frame(now, &[]);
            }
            Wake::Frame(n) => d.node.handle_frame(now, &buf[..n]),
            Wake::Request(req) => d.on_request(now, req),
            Wake::Timeout => d.node.handle(now, Input::Timeout),
            Wake::Nothing => {}
        }
    }
}

enum Wake<S, E> {
    PersistEnded(Result<(), E>),
    Durable(PersistSeq),
    Frame(usize),
    Request(Request<S>),
    Timeout,
    Nothing,
}

struct Driver<S: StateMachine, T, C, H> {
    node: RaftNode<S>,
    transport: T,
    clock: C,
    hooks: H,
    queue: mpsc::Sender<PersistBatch>,
    /// Proposals appended here, awaiting `Event::Applied` (a retry may add a second waiter).
    proposals: BTreeMap<(ClientId, u64), Vec<ReplyTo<Vec<u8>>>>,
    reads: BTreeMap<ReadId, (Query<S>, ReplyTo<Answer>)>,
    next_read: u64,
}

impl<S, T, C, H> Driver<S, T, C, H>
where
    S: StateMachine + Send + 'static,
    T: Transport,
    C: Clock,
    H: Hooks<S>,
{
    fn now(&self) -> Instant {
        // The core's clock never goes back, even if the runtime's rounds down.
        self.clock.now().max(self.node.now())
    }

    /// Step 2 of the contract: drains every output. While the persistence queue is full, the
    /// persistence task is polled here so the queue empties.
    async fn drain<F, E>(
        &mut self,
        persist_task: &mut std::pin::Pin<&mut F>,
    ) -> Result<(), DriverError<E>>
    where
        F: Future<Output = Result<(), E>>,
        E: std::error::Error + 'static,
    {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Persist(batch) => {
                    self.hooks.persist_queued(&batch);
                    let send = self.queue.send(batch);
                    tokio::pin!(send);
                    tokio::select! {
                        biased;
                        result = persist_task.as_mut() => {
                            return Err(match result {
                                Err(e) => DriverError::Storage(e),
                                Ok(()) => DriverError::PersistenceGone,
                            });
                        }
                        sent = &mut send => {
                            if sent.is_err() {
                                return Err(DriverError::PersistenceGone);
                            }
                        }
                    }
                }
                Output::Send(env) => {
                    self.hooks.sending(&env);
                    let frame = env.encode();
                    self.transport.send(env.to, &frame).await;
                }
                Output::Event(ev) => {
                    self.on_event(&ev);
                    self.hooks.event(&self.node, &ev);
                }
            }
        }
        Ok(())
    }

    fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::RoleChanged { role, .. } => {
                if *role != Role::Leader {
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
                response,
                ..
            } => {
                for w in self.proposals.remove(&(*client, *seq)).unwrap_or_default() {
                    let _ = w.send(Ok(response.clone()));
                }
            }
            Event::ReadReady { id, .. } => {
                if let Some((query, reply)) = self.reads.remove(id) {
                    let _ = reply.send(Ok(query(self.node.state_machine())));
                }
            }
            Event::ReadFailed { id } => {
                if let Some((_, reply)) = self.reads.remove(id) {
                    let _ = reply.send(Err(ClientError::ReadFailed));
                }
            }
            Event::ProposalDropped {
                proposal, reason, ..
            } => {
                if let Proposal::Command { client, seq } = proposal {
                    for w in self.proposals.remove(&(*client, *seq)).unwrap_or_default() {
                        let _ = w.send(Err(ClientError::Dropped(*reason)));
                    }
                }
            }
            Event::SnapshotTaken { .. }
            | Event::MembershipApplied { .. }
            | Event::TransferEnded { .. }
            | Event::Removed { .. } => {}
        }
    }

    fn pending(&self) -> usize {
        self.proposals.values().map(Vec::len).sum::<usize>() + self.reads.len()
    }

    fn on_request(&mut self, now: Instant, req: Request<S>) {
        if self.pending() >= PENDING_MAX {
            req.refuse(ClientError::Busy);
            return;
        }
        match req {
            Request::Propose {
                client,
                seq,
                data,
                reply,
            } => match self
                .node
                .propose(now, self.clock.unix_ms(), client, seq, data)
            {
                Ok(index) => {
                    self.hooks
                        .request(format_args!("propose {client}#{seq} at {}", index.0));
                    self.proposals.entry((client, seq)).or_default().push(reply);
                }
                Err(ProposeError::NotLeader { leader }) => {
                    let _ = reply.send(Err(ClientError::NotLeader(leader)));
                }
                Err(e) => {
                    let _ = reply.send(Err(ClientError::Propose(e)));
                }
            },
            Request::Read { query, reply } => {
                self.next_read += 1;
                let rid = ReadId(self.next_read);
                match self.node.read(now, rid) {
                    Ok(()) => {
                        self.hooks.request(format_args!("read {rid} requested"));
                        self.reads.insert(rid, (query, reply));
                    }
                    Err(ReadError::NoLeader) => {
                        let _ = reply.send(Err(ClientError::NotLeader(None)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ClientError::Read(e)));
                    }
                }
            }
            Request::Membership { change, reply } => {
                let result = self
                    .node
                    .change_membership(now, self.clock.unix_ms(), change)
                    .map_err(ClientError::Membership);
                if let Ok(index) = result {
                    self.hooks
                        .request(format_args!("membership {change:?} at {}", index.0));
                }
                let _ = reply.send(result);
            }
            Request::Transfer { to, reply } => {
                let result = self
                    .node
                    .transfer_leadership(now, to)
                    .map_err(ClientError::Transfer);
                if result.is_ok() {
                    self.hooks.request(format_args!("transfer to {to}"));
                }
                let _ = reply.send(result);
            }
        }
    }
}
