//! The production driver: one task that owns a sans-IO machine and loops exactly per the driving
//! contract (ARCHITECTURE.md, "The driving contract"; `paloma_core`'s crate docs):
//!
//! 1. feed one input: a frame from the [`Transport`], a request from the application (a handle's
//!    channel), the durable `seq` published by the persistence task ([`crate::persist`]), or the
//!    expiry of `poll_timeout`'s deadline;
//! 2. drain `poll_output`: `Persist` goes to the persistence task's queue (the driver does not
//!    wait for the fsync: input keeps flowing while a write is pending, and the core holds back
//!    every message that depends on it), `Send` goes to the transport, a `Note` (events, client
//!    frames) is the machine adapter's own business, then the [`Hooks`]';
//! 3. let the [`Hooks`] look at the machine, then wait for the next input or deadline.
//!
//! The loop is written once, here, for every machine: [`raft::RaftMachine`] (a bare
//! `RaftNode<S>` with proposals and reads from a [`raft::NodeHandle`]) and
//! [`replica::ReplicaMachine`] (the composed `Replica`: directory, presence, client protocol,
//! with client connections from a [`replica::ReplicaHandle`]). An adapter ([`Machine`]) turns the
//! machine's inputs and outputs into the driver's four inputs and three outputs, and keeps what
//! only it understands (the waiters of a proposal, the channel of a client connection).
//!
//! It is written against `tokio`, which is madsim's tokio under `--cfg madsim`: the simulated
//! scenarios run this very loop, with a simulated transport, clock and disk behind the traits
//! (`paloma-runtime-sim`). Every `select!` is `biased` (madsim replays a seed only if the choice
//! among ready branches is deterministic).

pub mod raft;
pub mod replica;

use crate::persist::{self, Persister, QUEUE_BATCHES_MAX};
use paloma_core::raft::io::Event;
use paloma_core::raft::message::Envelope;
use paloma_core::raft::storage::PersistBatch;
use paloma_core::raft::{RaftNode, StateMachine};
use paloma_core::time::Now;
use paloma_core::{Instant, NodeId, PersistSeq};
use std::future::Future;
use tokio::sync::{mpsc, watch};

pub use raft::{start, ClientError, NodeHandle, RaftMachine, TracingHooks};
pub use replica::{ClientConn, ConnError, ReplicaHandle, ReplicaMachine};

/// Requests queued per node before a handle's caller waits.
pub const REQUESTS_MAX: usize = 1024;

/// Where frames come from and go to. Sending is best effort (the core tolerates loss).
pub trait Transport: Send + 'static {
    /// Waits for the next frame and copies it into `buf`; returns its length, which may exceed
    /// `buf.len()` if the frame was too long (the driver then counts it as malformed), and the
    /// peer it came from if the transport knows it (an authenticated link, or a known address).
    /// Must be cancel-safe: the driver drops the future when another input wins the `select!`.
    fn recv(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = std::io::Result<(usize, Option<NodeId>)>> + Send;
    /// Sends one encoded frame to `to`, best effort.
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

/// What the driver does for a machine after an input.
#[derive(Debug)]
pub enum Action<N> {
    /// Make the batch durable (on the persistence task), then feed `Persisted(seq)`.
    Persist(PersistBatch),
    /// Send the encoded frame to a peer.
    Send {
        /// The addressee.
        to: NodeId,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Something only the hooks look at (the adapter already acted on it).
    Note(N),
}

/// A sans-IO machine as the driver sees it: the core's `handle` / `poll_output` / `poll_timeout`
/// contract, with the machine's own inputs and outputs mapped onto the driver's.
pub trait Machine: Send + 'static {
    /// What the application sends the node task (proposals, client connections).
    type Request: Send + 'static;
    /// What an [`Action::Note`] carries to the hooks.
    type Note: Send;
    /// The longest frame a peer may send; longer ones are counted as malformed.
    fn frame_bytes_max(&self) -> usize;
    /// The machine's own clock: the driver never feeds an earlier `now`.
    fn now(&self) -> Instant;
    /// A frame from a peer (`from` as the transport knows it).
    fn on_frame(&mut self, now: Now, from: Option<NodeId>, frame: &[u8]);
    /// Batch `seq` and every earlier one are durable.
    fn on_persisted(&mut self, now: Now, seq: PersistSeq);
    /// The deadline of `poll_timeout` passed.
    fn on_timeout(&mut self, now: Now);
    /// A request from the application; `log` tells the hooks what was accepted.
    fn on_request(
        &mut self,
        now: Now,
        request: Self::Request,
        log: &mut dyn FnMut(std::fmt::Arguments<'_>),
    );
    /// The next deadline, if any.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next action, if any.
    fn poll_output(&mut self) -> Option<Action<Self::Note>>;
}

/// A machine that runs a Raft node inside: what the simulators' safety checkers and the tracing
/// hooks look at, whatever composes the node.
pub trait RaftView: Machine {
    /// The replicated state machine.
    type Sm: StateMachine;
    /// The Raft node.
    fn raft(&self) -> &RaftNode<Self::Sm>;
    /// The Raft message inside a frame this machine sent, if it carries one (decoding only for
    /// observers: the simulators check every message at the boundary).
    fn raft_envelope(frame: &[u8]) -> Option<Envelope>;
    /// The Raft event inside a note, if it is one.
    fn raft_event(note: &Self::Note) -> Option<&Event>;
    /// A frame that carries no Raft message, in a few words (for traces).
    fn describe(frame: &[u8]) -> String {
        format!("frame of {} bytes", frame.len())
    }
}

/// What a runtime watches: tracing in production, checkers and the trace in simulation. Every
/// method has an empty default.
pub trait Hooks<M: Machine>: Send + 'static {
    /// The machine drained its outputs after an input.
    fn after_step(&mut self, _machine: &M) {}
    /// A batch went to the persistence task.
    fn persist_queued(&mut self, _batch: &PersistBatch) {}
    /// A frame is about to be sent to `to`.
    fn sending(&mut self, _to: NodeId, _frame: &[u8]) {}
    /// The machine reported a note (after its adapter acted on it).
    fn note(&mut self, _machine: &M, _note: &M::Note) {}
    /// A request from the application was accepted by the machine.
    fn request(&mut self, _what: std::fmt::Arguments<'_>) {}
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

/// What the driver needs besides the machine: its IO behind traits.
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

/// Starts a machine's loop: returns the sender of its requests (wrap it in the machine's handle)
/// and the loop's future (spawn it, or await it; it resolves only if storage fails).
pub fn run_machine<M, T, C, P, H>(
    machine: M,
    parts: Parts<T, C, P, H>,
) -> (
    mpsc::Sender<M::Request>,
    impl Future<Output = DriverError<P::Error>> + Send,
)
where
    M: Machine,
    T: Transport,
    C: Clock,
    P: Persister,
    H: Hooks<M>,
{
    let (tx, rx) = mpsc::channel(REQUESTS_MAX);
    (tx, run(machine, parts, rx))
}

async fn run<M, T, C, P, H>(
    machine: M,
    parts: Parts<T, C, P, H>,
    mut requests: mpsc::Receiver<M::Request>,
) -> DriverError<P::Error>
where
    M: Machine,
    T: Transport,
    C: Clock,
    P: Persister,
    H: Hooks<M>,
{
    let Parts {
        mut transport,
        clock,
        persister,
        mut hooks,
    } = parts;
    let frame_bytes_max = machine.frame_bytes_max();
    let (queue_tx, queue_rx) = mpsc::channel(QUEUE_BATCHES_MAX);
    let (durable_tx, mut durable_rx) = watch::channel(PersistSeq(0));
    let persist_task = persist::run(persister, queue_rx, durable_tx);
    tokio::pin!(persist_task);
    let mut machine = machine;
    let mut buf = vec![0u8; frame_bytes_max + 1];
    loop {
        // Step 2: drain. A full persistence queue makes this wait (backpressure: input stops while
        // the disk is behind); the persistence task is polled meanwhile, so the queue empties.
        if let Err(e) = drain(
            &mut machine,
            &mut transport,
            &mut hooks,
            &queue_tx,
            &mut persist_task,
        )
        .await
        {
            return e;
        }
        hooks.after_step(&machine);
        let deadline = machine.poll_timeout();
        let clock_ref = &clock;
        let sleep = async move {
            match deadline {
                Some(at) => clock_ref.sleep_until(at).await,
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
            r = transport.recv(&mut buf) => match r {
                Ok((n, from)) => Wake::Frame(n, from),
                Err(_) => Wake::Nothing,
            },
            Some(req) = requests.recv() => Wake::Request(req),
            () = sleep => Wake::Timeout,
        };
        // The core's clock never goes back, even if the runtime's rounds down.
        let now = Now {
            instant: clock.now().max(machine.now()),
            unix_ms: clock.unix_ms(),
        };
        match wake {
            Wake::PersistEnded(Err(e)) => return DriverError::Storage(e),
            Wake::PersistEnded(Ok(())) => return DriverError::PersistenceGone,
            Wake::Durable(seq) => machine.on_persisted(now, seq),
            Wake::Frame(n, from) if n > frame_bytes_max => {
                // Longer than any valid frame: the core counts it as malformed.
                machine.on_frame(now, from, &[]);
            }
            Wake::Frame(n, from) => machine.on_frame(now, from, &buf[..n]),
            Wake::Request(req) => {
                machine.on_request(now, req, &mut |what| hooks.request(what));
            }
            Wake::Timeout => machine.on_timeout(now),
            Wake::Nothing => {}
        }
    }
}

enum Wake<R, E> {
    PersistEnded(Result<(), E>),
    Durable(PersistSeq),
    Frame(usize, Option<NodeId>),
    Request(R),
    Timeout,
    Nothing,
}

/// Step 2 of the contract: drains every action. While the persistence queue is full, the
/// persistence task is polled here so the queue empties.
async fn drain<M, T, H, F, E>(
    machine: &mut M,
    transport: &mut T,
    hooks: &mut H,
    queue: &mpsc::Sender<PersistBatch>,
    persist_task: &mut std::pin::Pin<&mut F>,
) -> Result<(), DriverError<E>>
where
    M: Machine,
    T: Transport,
    H: Hooks<M>,
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + 'static,
{
    while let Some(action) = machine.poll_output() {
        match action {
            Action::Persist(batch) => {
                hooks.persist_queued(&batch);
                let send = queue.send(batch);
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
            Action::Send { to, frame } => {
                hooks.sending(to, &frame);
                transport.send(to, &frame).await;
            }
            Action::Note(note) => hooks.note(machine, &note),
        }
    }
    Ok(())
}
