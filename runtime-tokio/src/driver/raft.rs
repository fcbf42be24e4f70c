//! The driver's adapter for a bare [`RaftNode`]: proposals, reads, membership changes and
//! transfers arrive from a [`NodeHandle`]; the adapter keeps their waiters and answers them from
//! the node's events (every proposal ends in exactly one event, so no waiter is left behind).
//! The loop itself is [`super::run_machine`]'s.

use super::{run_machine, Action, Clock, DriverError, Hooks, Machine, Parts, RaftView, Transport};
use crate::persist::Persister;
use paloma_core::raft::io::{DropReason, Event, Input, Output, Proposal, Role};
use paloma_core::raft::message::Envelope;
use paloma_core::raft::{
    MembershipChange, MembershipError, ProposeError, RaftNode, ReadError, StateMachine,
    TransferError,
};
use paloma_core::time::Now;
use paloma_core::{ClientId, Instant, LogIndex, NodeId, PersistSeq, ReadId};
use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
/// Proposals and reads waiting for their outcome; beyond this a request is refused
/// ([`ClientError::Busy`]), never queued without bound.
pub const PENDING_MAX: usize = 4096;

/// Hooks that log through `tracing` (production), for any machine with a Raft node inside.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingHooks;

impl<M: RaftView> Hooks<M> for TracingHooks {
    fn note(&mut self, machine: &M, note: &M::Note) {
        let Some(event) = M::raft_event(note) else {
            return;
        };
        let node = machine.raft().id();
        match event {
            Event::RoleChanged { .. }
            | Event::Removed { .. }
            | Event::MembershipApplied { .. }
            | Event::TransferEnded { .. } => {
                tracing::info!(%node, ?event, "raft");
            }
            _ => tracing::trace!(%node, ?event, "raft"),
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

/// A request from the application to the node task, opaque outside the adapter (built by
/// [`NodeHandle`]).
pub struct RaftRequest<S>(Request<S>);

impl<S> std::fmt::Debug for RaftRequest<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Request::Propose { .. } => "RaftRequest::Propose",
            Request::Read { .. } => "RaftRequest::Read",
            Request::Membership { .. } => "RaftRequest::Membership",
            Request::Transfer { .. } => "RaftRequest::Transfer",
        })
    }
}

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
    tx: mpsc::Sender<RaftRequest<S>>,
}

impl<S> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        NodeHandle {
            tx: self.tx.clone(),
        }
    }
}

impl<S: StateMachine + 'static> NodeHandle<S> {
    /// Wraps the sender returned by [`run_machine`] for a [`RaftMachine`] (what [`start`] does).
    #[must_use]
    pub fn new(tx: mpsc::Sender<RaftRequest<S>>) -> NodeHandle<S> {
        NodeHandle { tx }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(ReplyTo<T>) -> Request<S>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let (reply, rx) = oneshot::channel();
        let sent = tokio::time::timeout(timeout, self.tx.send(RaftRequest(make(reply)))).await;
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

/// Starts a Raft node's loop: returns the application's handle and the loop's future (spawn it,
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
    H: Hooks<RaftMachine<S>>,
{
    let (tx, running) = run_machine(RaftMachine::new(node), parts);
    (NodeHandle { tx }, running)
}

/// A [`RaftNode`] with the waiters of the requests it accepted.
pub struct RaftMachine<S: StateMachine> {
    node: RaftNode<S>,
    /// Proposals appended here, awaiting `Event::Applied` (a retry may add a second waiter).
    proposals: BTreeMap<(ClientId, u64), Vec<ReplyTo<Vec<u8>>>>,
    reads: BTreeMap<ReadId, (Query<S>, ReplyTo<Answer>)>,
    next_read: u64,
    /// `unix_ms` of the latest input, stamped into proposals.
    unix_ms: u64,
}

impl<S: StateMachine> std::fmt::Debug for RaftMachine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftMachine")
            .field("node", &self.node.id())
            .field("proposals", &self.proposals.len())
            .field("reads", &self.reads.len())
            .finish_non_exhaustive()
    }
}

impl<S: StateMachine> RaftMachine<S> {
    /// Wraps `node`.
    #[must_use]
    pub fn new(node: RaftNode<S>) -> RaftMachine<S> {
        RaftMachine {
            node,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_read: 0,
            unix_ms: 0,
        }
    }

    /// The node.
    #[must_use]
    pub fn node(&self) -> &RaftNode<S> {
        &self.node
    }
}

impl<S: StateMachine + Send + 'static> Machine for RaftMachine<S> {
    type Request = RaftRequest<S>;
    type Note = Event;

    fn frame_bytes_max(&self) -> usize {
        self.node.config().frame_bytes_max
    }

    fn now(&self) -> Instant {
        self.node.now()
    }

    fn on_frame(&mut self, now: Now, _from: Option<NodeId>, frame: &[u8]) {
        // The envelope names its sender; the transport's word is not needed.
        self.unix_ms = now.unix_ms;
        self.node.handle_frame(now.instant, frame);
    }

    fn on_persisted(&mut self, now: Now, seq: PersistSeq) {
        self.unix_ms = now.unix_ms;
        self.node.handle(now.instant, Input::Persisted(seq));
    }

    fn on_timeout(&mut self, now: Now) {
        self.unix_ms = now.unix_ms;
        self.node.handle(now.instant, Input::Timeout);
    }

    fn on_request(
        &mut self,
        now: Now,
        request: RaftRequest<S>,
        log: &mut dyn FnMut(std::fmt::Arguments<'_>),
    ) {
        self.unix_ms = now.unix_ms;
        self.request(now.instant, request.0, log);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout().map(|(at, _why)| at)
    }

    fn poll_output(&mut self) -> Option<Action<Event>> {
        Some(match self.node.poll_output()? {
            Output::Persist(batch) => Action::Persist(batch),
            Output::Send(env) => Action::Send {
                to: env.to,
                frame: env.encode(),
            },
            Output::Event(ev) => {
                self.on_event(&ev);
                Action::Note(ev)
            }
        })
    }
}

impl<S: StateMachine + Send + 'static> RaftView for RaftMachine<S> {
    type Sm = S;

    fn raft(&self) -> &RaftNode<S> {
        &self.node
    }

    fn raft_envelope(frame: &[u8]) -> Option<Envelope> {
        Envelope::decode(frame, frame.len()).ok()
    }

    fn raft_event(note: &Event) -> Option<&Event> {
        Some(note)
    }
}

impl<S: StateMachine + Send + 'static> RaftMachine<S> {
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

    fn request(
        &mut self,
        now: Instant,
        req: Request<S>,
        log: &mut dyn FnMut(std::fmt::Arguments<'_>),
    ) {
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
            } => match self.node.propose(now, self.unix_ms, client, seq, data) {
                Ok(index) => {
                    log(format_args!("propose {client}#{seq} at {}", index.0));
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
                        log(format_args!("read {rid} requested"));
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
                    .change_membership(now, self.unix_ms, change)
                    .map_err(ClientError::Membership);
                if let Ok(index) = result {
                    log(format_args!("membership {change:?} at {}", index.0));
                }
                let _ = reply.send(result);
            }
            Request::Transfer { to, reply } => {
                let result = self
                    .node
                    .transfer_leadership(now, to)
                    .map_err(ClientError::Transfer);
                if result.is_ok() {
                    log(format_args!("transfer to {to}"));
                }
                let _ = reply.send(result);
            }
        }
    }
}
