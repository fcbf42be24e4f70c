//! The driver's adapter for the composed [`Replica`] (directory, presence, client protocol on a
//! Raft node; ARCHITECTURE.md, "The replica"). Peer frames come from the [`super::Transport`];
//! client connections come from a [`ReplicaHandle`]: each [`ClientConn`] is a pair of bounded
//! channels, which is what a TCP listener's per-connection task hands the node task in production
//! and what a simulated client holds in the scenarios. The adapter owns the replica-to-client
//! half of every connection and nothing else: every protocol decision is the `Replica`'s.
//!
//! Bounds: every connection of a replica shares the node task's request queue
//! ([`super::REQUESTS_MAX`]); a client that does not read its frames fills its channel ([`CONN_FRAMES_MAX`]) and is
//! disconnected (counted), so one slow reader never stalls the node task or grows its memory.

use super::{Action, Machine, RaftView};
use paloma_core::directory::Directory;
use paloma_core::raft::io::Event;
use paloma_core::raft::message::Envelope;
use paloma_core::raft::RaftNode;
use paloma_core::replica::protocol::{PeerFrame, PEER_FRAME_BYTES_MAX};
use paloma_core::replica::{Replica, ReplicaInput, ReplicaOutput};
use paloma_core::time::Now;
use paloma_core::{ConnId, Instant, NodeId, PersistSeq};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

/// Frames queued from the replica to one client before the client counts as not reading.
pub const CONN_FRAMES_MAX: usize = 256;
/// How often the adapter looks for connections whose client went away without a word (its
/// `Close` could not be queued): at most this stale.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A request to the replica's node task, opaque outside the adapter (built by [`ReplicaHandle`]
/// and [`ClientConn`]).
#[derive(Debug)]
pub struct ReplicaRequest(ConnRequest);

enum ConnRequest {
    Open {
        reply: oneshot::Sender<(ConnId, mpsc::Receiver<Vec<u8>>)>,
    },
    Frame {
        conn: ConnId,
        frame: Vec<u8>,
    },
    Close(ConnId),
    /// Runs on the replica between two inputs (status for the operator, checks for a scenario).
    Query(Box<dyn FnOnce(&Replica) + Send>),
}

impl std::fmt::Debug for ConnRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnRequest::Open { .. } => f.write_str("Open"),
            ConnRequest::Frame { conn, frame } => {
                write!(f, "Frame({conn:?}, {} bytes)", frame.len())
            }
            ConnRequest::Close(conn) => write!(f, "Close({conn:?})"),
            ConnRequest::Query(_) => f.write_str("Query"),
        }
    }
}

/// Why a connection could not be opened or used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The node is down or stopped.
    #[error("replica down")]
    NodeDown,
    /// The node did not answer in time.
    #[error("timed out")]
    Timeout,
    /// The replica closed the connection (over its limit, or the client did not read).
    #[error("connection closed")]
    Closed,
}

/// Opens client connections to a running replica: cheap to clone.
#[derive(Clone, Debug)]
pub struct ReplicaHandle {
    tx: mpsc::Sender<ReplicaRequest>,
}

impl ReplicaHandle {
    /// Wraps the sender returned by [`super::run_machine`] for a [`ReplicaMachine`].
    #[must_use]
    pub fn new(tx: mpsc::Sender<ReplicaRequest>) -> ReplicaHandle {
        ReplicaHandle { tx }
    }

    /// Opens a connection; the replica's first frame on it is its login challenge.
    ///
    /// # Errors
    /// [`ConnError::NodeDown`] or [`ConnError::Timeout`].
    pub async fn connect(&self, timeout: Duration) -> Result<ClientConn, ConnError> {
        let (reply, rx) = oneshot::channel();
        let open = ReplicaRequest(ConnRequest::Open { reply });
        match tokio::time::timeout(timeout, self.tx.send(open)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ConnError::NodeDown),
            Err(_) => return Err(ConnError::Timeout),
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok((id, frames))) => Ok(ClientConn {
                id,
                tx: self.tx.clone(),
                rx: frames,
            }),
            Ok(Err(_)) => Err(ConnError::NodeDown),
            Err(_) => Err(ConnError::Timeout),
        }
    }
}

impl ReplicaHandle {
    /// Runs `f` on the replica between two inputs and returns its answer: status and metrics for
    /// the operator, whole-state checks for a scenario. `f` must be quick: the node waits for it.
    ///
    /// # Errors
    /// [`ConnError::NodeDown`] or [`ConnError::Timeout`].
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Replica) -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, ConnError> {
        let (reply, rx) = oneshot::channel();
        let query = ReplicaRequest(ConnRequest::Query(Box::new(move |r: &Replica| {
            let _ = reply.send(f(r));
        })));
        match tokio::time::timeout(timeout, self.tx.send(query)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ConnError::NodeDown),
            Err(_) => return Err(ConnError::Timeout),
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(ConnError::NodeDown),
            Err(_) => Err(ConnError::Timeout),
        }
    }
}

/// One client connection to a replica. Dropping it closes the connection.
#[derive(Debug)]
pub struct ClientConn {
    id: ConnId,
    tx: mpsc::Sender<ReplicaRequest>,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl ClientConn {
    /// The connection's id on its replica.
    #[must_use]
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Sends an encoded `ClientFrame`; waits while the node task's queue is full.
    ///
    /// # Errors
    /// [`ConnError::NodeDown`] if the node stopped.
    pub async fn send(&self, frame: Vec<u8>) -> Result<(), ConnError> {
        let req = ReplicaRequest(ConnRequest::Frame {
            conn: self.id,
            frame,
        });
        self.tx.send(req).await.map_err(|_| ConnError::NodeDown)
    }

    /// The next encoded `ReplicaFrame`; `None` once the replica closed the connection or stopped.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        // Best effort: if the queue is full, the adapter's sweep finds the closed channel.
        let _ = self
            .tx
            .try_send(ReplicaRequest(ConnRequest::Close(self.id)));
    }
}

/// What the adapter counts (the replica counts everything else: `Replica::stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdapterStats {
    /// Connections opened.
    pub opened: u64,
    /// Connections closed because their client did not read ([`CONN_FRAMES_MAX`] frames queued).
    pub slow_clients_closed: u64,
    /// Peer frames dropped because the transport could not say who sent them.
    pub peer_frames_unknown_sender: u64,
}

/// A [`Replica`] and the replica-to-client half of its connections.
#[derive(Debug)]
pub struct ReplicaMachine {
    replica: Replica,
    conns: BTreeMap<ConnId, mpsc::Sender<Vec<u8>>>,
    next_conn: u64,
    /// Connections that went away under the replica (client gone, or not reading); told to it
    /// before the next output.
    gone: Vec<ConnId>,
    now: Now,
    next_sweep: Instant,
    stats: AdapterStats,
}

impl ReplicaMachine {
    /// Wraps `replica`.
    #[must_use]
    pub fn new(replica: Replica) -> ReplicaMachine {
        let instant = replica.node().now();
        ReplicaMachine {
            replica,
            conns: BTreeMap::new(),
            next_conn: 0,
            gone: Vec::new(),
            now: Now {
                instant,
                unix_ms: 0,
            },
            next_sweep: instant,
            stats: AdapterStats::default(),
        }
    }

    /// The replica.
    #[must_use]
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The adapter's counters.
    #[must_use]
    pub fn stats(&self) -> AdapterStats {
        self.stats
    }

    fn input(&mut self, now: Now, input: ReplicaInput) {
        self.now = now;
        self.replica.handle(now, input);
    }

    fn open(&mut self, now: Now, reply: oneshot::Sender<(ConnId, mpsc::Receiver<Vec<u8>>)>) {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let (tx, rx) = mpsc::channel(CONN_FRAMES_MAX);
        if reply.send((conn, rx)).is_err() {
            return; // the caller gave up before the connection existed
        }
        self.stats.opened += 1;
        self.conns.insert(conn, tx);
        self.input(now, ReplicaInput::Connected(conn));
    }

    /// Finds connections whose client dropped its end without a `Close` reaching the queue.
    fn sweep(&mut self, now: Now) {
        if now.instant < self.next_sweep {
            return;
        }
        self.next_sweep = now.instant + SWEEP_EVERY;
        let closed: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(&c, _)| c)
            .collect();
        for conn in closed {
            self.conns.remove(&conn);
            self.gone.push(conn);
        }
    }
}

impl Machine for ReplicaMachine {
    type Request = ReplicaRequest;
    type Note = Event;

    fn frame_bytes_max(&self) -> usize {
        PEER_FRAME_BYTES_MAX
    }

    fn now(&self) -> Instant {
        self.replica.node().now()
    }

    fn on_frame(&mut self, now: Now, from: Option<NodeId>, frame: &[u8]) {
        match from {
            Some(from) => self.input(
                now,
                ReplicaInput::Peer {
                    from,
                    frame: frame.to_vec(),
                },
            ),
            None => self.stats.peer_frames_unknown_sender += 1,
        }
    }

    fn on_persisted(&mut self, now: Now, seq: PersistSeq) {
        self.input(now, ReplicaInput::Persisted(seq));
    }

    fn on_timeout(&mut self, now: Now) {
        self.sweep(now);
        self.input(now, ReplicaInput::Timeout);
    }

    fn on_request(
        &mut self,
        now: Now,
        request: ReplicaRequest,
        _log: &mut dyn FnMut(std::fmt::Arguments<'_>),
    ) {
        match request.0 {
            ConnRequest::Open { reply } => self.open(now, reply),
            ConnRequest::Frame { conn, frame } => {
                // A frame still queued from a connection that is gone is dropped.
                if self.conns.contains_key(&conn) {
                    self.input(now, ReplicaInput::Client { conn, frame });
                }
            }
            ConnRequest::Close(conn) => {
                if self.conns.remove(&conn).is_some() {
                    self.input(now, ReplicaInput::Disconnected(conn));
                }
            }
            ConnRequest::Query(f) => f(&self.replica),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.replica.poll_timeout().map(|(at, _why)| at)
    }

    fn poll_output(&mut self) -> Option<Action<Event>> {
        loop {
            match self.replica.poll_output() {
                Some(ReplicaOutput::Persist(batch)) => return Some(Action::Persist(batch)),
                Some(ReplicaOutput::Peer { to, frame }) => return Some(Action::Send { to, frame }),
                Some(ReplicaOutput::Event(ev)) => return Some(Action::Note(ev)),
                Some(ReplicaOutput::Client { conn, frame }) => {
                    let Some(tx) = self.conns.get(&conn) else {
                        continue;
                    };
                    match tx.try_send(frame) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            self.stats.slow_clients_closed += 1;
                            self.conns.remove(&conn);
                            self.gone.push(conn);
                        }
                        Err(TrySendError::Closed(_)) => {
                            self.conns.remove(&conn);
                            self.gone.push(conn);
                        }
                    }
                }
                Some(ReplicaOutput::Close(conn)) => {
                    // The replica already forgot it; dropping the sender ends the client's reads.
                    self.conns.remove(&conn);
                }
                None => {
                    // Only once every output is out: tell the replica about connections that went
                    // away meanwhile (this may produce more outputs).
                    let conn = self.gone.pop()?;
                    let now = self.now;
                    self.input(now, ReplicaInput::Disconnected(conn));
                }
            }
        }
    }
}

impl RaftView for ReplicaMachine {
    type Sm = Directory;

    fn raft(&self) -> &RaftNode<Directory> {
        self.replica.node()
    }

    fn raft_envelope(frame: &[u8]) -> Option<Envelope> {
        match PeerFrame::decode(frame) {
            Ok(PeerFrame::Raft(bytes)) => Envelope::decode(&bytes, bytes.len()).ok(),
            _ => None,
        }
    }

    fn raft_event(note: &Event) -> Option<&Event> {
        Some(note)
    }

    fn describe(frame: &[u8]) -> String {
        match PeerFrame::decode(frame) {
            Ok(PeerFrame::Forward {
                token, client, seq, ..
            }) => {
                format!("Forward token={token} c{client}#{seq}")
            }
            Ok(PeerFrame::ForwardReply { token, result }) => {
                format!("ForwardReply token={token} {result:?}")
            }
            Ok(PeerFrame::Presence {
                full,
                number,
                online,
                offline,
            }) => format!(
                "Presence #{number} full={full} online={} offline={}",
                online.len(),
                offline.len()
            ),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("undecodable peer frame: {e}"),
        }
    }
}
