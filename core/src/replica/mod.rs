//! The composed replica (ARCHITECTURE.md, `core/src/replica/`): a [`RaftNode`] driving the [`Directory`], presence, and the
//! client protocol, behind the same driving contract as the node itself: feed one input with
//! [`Replica::handle`], drain [`Replica::poll_output`] until `None`, sleep until
//! [`Replica::poll_timeout`].
//!
//! Any replica serves any client. A write arrives on the client's connection, is forwarded to the
//! leader inside the cluster (`PeerFrame::Forward`), proposed there, and the answer returns to the
//! replica that holds the connection (`PeerFrame::ForwardReply`); the client never chases a
//! redirect. A leader change, a timeout or a full queue fails an in-flight request with a typed
//! error that says whether its outcome is unknown (then the client retries with the same
//! `(session, seq)` and de-duplication answers, Raft thesis §6.3). Nothing fails silently.

mod conns;
/// Fuzz entry points: compiled only for tests, cargo-fuzz and the `testing` feature.
#[cfg(any(test, fuzzing, feature = "testing"))]
pub mod fuzz;
/// An in-memory cluster for tests and benchmarks.
#[cfg(any(test, feature = "testing"))]
pub mod harness;
pub mod presence;
pub mod protocol;

pub use presence::PresenceConfig;

use crate::directory::mailbox::ENVELOPE_BYTES_MAX;
use crate::directory::{CommandBody, Deposit, Directory, DirectoryEntry, Outcome, Username};
use crate::ids::{ClientId, ConnId, LogIndex, MailboxSeq, NodeId, ReadId, RequestId, UserId};
use crate::raft::io::{DropReason, Event, Input, Output, Proposal, Role, TimerKind};
use crate::raft::storage::{PersistBatch, Recovered};
use crate::raft::{Config, ProposeError, RaftNode, ReadError, StartError};
use crate::rng::DetRng;
use crate::time::{Instant, Now};
use conns::{Conn, Conns};
use presence::{LeaderPresence, Leases, ReportTaken};
use protocol::{
    ClientFrame, Consistency, ForwardResult, LookupKey, LookupReply, MailboxReply, PeerFrame,
    ReplicaFrame, Reply, Request, RequestError, FETCH_MESSAGES_MAX, FETCH_REPLY_BYTES_MAX,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A replica's configuration: Raft's, presence's, and the client-facing limits.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The Raft node's configuration (`raft.id` is this replica).
    pub raft: Config,
    /// Presence timing.
    pub presence: PresenceConfig,
    /// Client connections held at once; more are closed at connect.
    pub connections_max: usize,
    /// Requests this replica has in flight for its clients (commands and reads).
    pub requests_max: usize,
    /// Commands the leader has in flight for other replicas' clients.
    pub forwards_max: usize,
    /// A request not answered by then fails with `Timeout`.
    pub request_timeout: Duration,
    /// Presence subscriptions per connection.
    pub subscriptions_max: usize,
}

impl Default for ReplicaConfig {
    fn default() -> ReplicaConfig {
        ReplicaConfig {
            raft: Config::default(),
            presence: PresenceConfig::default(),
            connections_max: 100_000,
            requests_max: 8192,
            forwards_max: 8192,
            request_timeout: Duration::from_secs(10),
            subscriptions_max: 256,
        }
    }
}

/// What happened to the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaInput {
    /// A frame from another replica.
    Peer {
        /// The sender, as the transport authenticated it.
        from: NodeId,
        /// The encoded [`PeerFrame`].
        frame: Vec<u8>,
    },
    /// A client connected; the replica answers with a challenge.
    Connected(ConnId),
    /// A frame from a client connection.
    Client {
        /// The connection.
        conn: ConnId,
        /// The encoded [`ClientFrame`].
        frame: Vec<u8>,
    },
    /// A client connection closed.
    Disconnected(ConnId),
    /// The runtime made batch `seq` durable.
    Persisted(crate::ids::PersistSeq),
    /// A deadline from `poll_timeout` passed.
    Timeout,
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaOutput {
    /// Write durably, then report `Persisted(seq)` (the Raft contract).
    Persist(PersistBatch),
    /// Send an encoded [`PeerFrame`] to another replica (best effort).
    Peer {
        /// The addressee.
        to: NodeId,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Send an encoded [`ReplicaFrame`] on a client connection.
    Client {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Close a client connection (over the connection limit).
    Close(ConnId),
    /// Something the operator may want to know (Raft's events: role changes, snapshots).
    Event(Event),
}

/// Why the replica wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaTimer {
    /// One of Raft's timers.
    Raft(TimerKind),
    /// A presence report is due (or the leader's batch).
    Presence,
    /// A presence lease ends.
    LeaseExpiry,
    /// A request's deadline.
    RequestExpiry,
}

/// Counters of the unusual, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Client frames that did not decode.
    pub client_frames_malformed: u64,
    /// Peer frames that did not decode (Raft's own malformed frames are in Raft's stats).
    pub peer_frames_malformed: u64,
    /// Logins whose signature did not verify.
    pub logins_failed: u64,
    /// Requests refused before reaching Raft (not logged in, wrong signer, limits).
    pub requests_refused: u64,
    /// Requests failed after being accepted (leader change, timeout).
    pub requests_failed: u64,
    /// Connections closed at connect for the limit.
    pub connections_refused: u64,
    /// Forwards or replies that arrived for nothing pending (duplicates, late).
    pub forwards_unmatched: u64,
    /// Presence reports out of order (a full report was asked for).
    pub presence_resyncs: u64,
    /// Presence batches proposed by this replica as leader.
    pub presence_batches: u64,
    /// Presence pushes sent to subscribers.
    pub presence_pushes: u64,
    /// `MailboxChanged` pushes sent to mailbox owners' connections.
    pub mailbox_pushes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// A command proposed here (we lead) or forwarded to `leader`.
    Command {
        client: ClientId,
        seq: u64,
        leader: Option<NodeId>,
    },
    /// A linearizable lookup waiting for `ReadReady`.
    Read,
}

/// What a linearizable read serves once ready.
#[derive(Clone, Debug)]
enum ReadRequest {
    Lookup(LookupKey),
    /// A page of the connection's own mailbox.
    Mailbox {
        after: MailboxSeq,
        max: u32,
    },
}

#[derive(Clone, Debug)]
struct Pending {
    conn: ConnId,
    id: RequestId,
    deadline: Instant,
    waiting: Waiting,
    /// For reads: what to serve once ready.
    read: Option<ReadRequest>,
}

/// Who waits for a command the leader proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Local(u64),
    Remote(NodeId, u64),
}

/// The composed replica.
#[derive(Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    node: RaftNode<Directory>,
    rng: DetRng,
    conns: Conns,
    pending: BTreeMap<u64, Pending>,
    by_deadline: BTreeSet<(Instant, u64)>,
    next_token: u64,
    /// Leader only: proposals awaiting their `Applied`/`ProposalDropped`, keyed by `(client, seq)`.
    proposed: BTreeMap<(ClientId, u64), Vec<Origin>>,
    leases: Leases,
    report_number: u64,
    next_report: Instant,
    next_full_report: Instant,
    leader_presence: Option<LeaderPresence>,
    presence_seq: u64,
    /// Bumped when a presence proposal is dropped: a session that never opened (or was evicted)
    /// refuses every later sequence number (thesis §6.3), so batches move to a fresh one.
    presence_epoch: u64,
    known_leader: Option<NodeId>,
    pushed_upto: LogIndex,
    pushed_restores: u64,
    outputs: std::collections::VecDeque<ReplicaOutput>,
    now: Now,
    stats: ReplicaStats,
}

impl Replica {
    /// Starts a replica from what its store recovered.
    pub fn new(
        cfg: ReplicaConfig,
        recovered: Recovered,
        seed: u64,
        now: Now,
    ) -> Result<Replica, StartError> {
        Replica::start(cfg, recovered, Directory::new(), seed, now)
    }

    /// Starts a replica whose directory has other limits ([`Directory::with_mailbox_limits`]):
    /// the simulators' knob; every replica of a cluster must be given the same.
    #[cfg(any(test, fuzzing, feature = "testing"))]
    pub fn with_directory(
        cfg: ReplicaConfig,
        recovered: Recovered,
        directory: Directory,
        seed: u64,
        now: Now,
    ) -> Result<Replica, StartError> {
        Replica::start(cfg, recovered, directory, seed, now)
    }

    fn start(
        cfg: ReplicaConfig,
        recovered: Recovered,
        directory: Directory,
        seed: u64,
        now: Now,
    ) -> Result<Replica, StartError> {
        let node = RaftNode::new(cfg.raft.clone(), recovered, directory, seed, now.instant)?;
        let pushed_upto = node.applied();
        let pushed_restores = node.state_machine().restores();
        // Tokens name this incarnation's requests to the leader, and a `ForwardReply` is matched
        // by token (and leader) alone: an incarnation that numbered from 1 again took the replies
        // meant for its predecessor's requests as answers to its own (dirsim seed 26454,
        // README). Each incarnation starts at a point drawn from its own seed.
        let mut tokens = DetRng::fork(seed, "replica-tokens");
        Ok(Replica {
            rng: DetRng::fork(seed, "replica"),
            conns: Conns::default(),
            pending: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
            next_token: tokens.next_u64() >> 1,
            proposed: BTreeMap::new(),
            leases: Leases::default(),
            report_number: 0,
            next_report: now.instant,
            next_full_report: now.instant,
            leader_presence: None,
            presence_seq: 0,
            presence_epoch: 0,
            known_leader: None,
            pushed_upto,
            pushed_restores,
            outputs: std::collections::VecDeque::new(),
            now,
            stats: ReplicaStats::default(),
            node,
            cfg,
        })
    }

    // ----- the driving contract ---------------------------------------------------------------

    /// Feeds one input. Drain [`Replica::poll_output`] afterwards.
    pub fn handle(&mut self, now: Now, input: ReplicaInput) {
        self.advance(now);
        match input {
            ReplicaInput::Peer { from, frame } => self.on_peer(from, &frame),
            ReplicaInput::Connected(conn) => self.on_connected(conn),
            ReplicaInput::Client { conn, frame } => self.on_client(conn, &frame),
            ReplicaInput::Disconnected(conn) => self.on_disconnected(conn),
            ReplicaInput::Persisted(seq) => self.node.handle(now.instant, Input::Persisted(seq)),
            ReplicaInput::Timeout => self.on_timeout(),
        }
        self.after_input();
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<ReplicaOutput> {
        if self.outputs.is_empty() {
            self.drain_node();
        }
        self.outputs.pop_front()
    }

    /// The next deadline and its reason.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, ReplicaTimer)> {
        let mut best = self
            .node
            .poll_timeout()
            .map(|(at, kind)| (at, ReplicaTimer::Raft(kind)));
        let mut consider = |at: Option<Instant>, why: ReplicaTimer| {
            if let Some(at) = at {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, why));
                }
            }
        };
        // The leader's next batch is due only once the previous one applied (or was dropped):
        // until then an elapsed flush deadline must not wake the replica again and again.
        let presence = match &self.leader_presence {
            Some(lead) if lead.in_flight.is_empty() => self.next_report.min(lead.next_flush()),
            _ => self.next_report,
        };
        consider(Some(presence), ReplicaTimer::Presence);
        consider(self.leases.next_expiry(), ReplicaTimer::LeaseExpiry);
        consider(
            self.by_deadline.first().map(|&(at, _)| at),
            ReplicaTimer::RequestExpiry,
        );
        best
    }

    // ----- inspection -------------------------------------------------------------------------

    /// The Raft node (role, log, status).
    #[must_use]
    pub fn node(&self) -> &RaftNode<Directory> {
        &self.node
    }

    /// The directory as applied here.
    #[must_use]
    pub fn directory(&self) -> &Directory {
        self.node.state_machine()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// Live presence leases held here.
    #[must_use]
    pub fn leases(&self) -> usize {
        self.leases.len()
    }

    /// Open client connections.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Asserts the replica's invariants (with the node's and the directory's).
    pub fn check_invariants(&self) {
        self.node.check_invariants();
        self.directory().check_invariants();
        self.leases.check_invariants();
        self.conns.check_invariants(self.cfg.subscriptions_max);
        assert_eq!(
            self.pending.len(),
            self.by_deadline.len(),
            "every request has a deadline"
        );
        assert!(
            self.pending.len() <= self.cfg.requests_max,
            "requests bounded"
        );
        for (at, token) in &self.by_deadline {
            let p = self
                .pending
                .get(token)
                .expect("deadline of a pending request");
            assert_eq!(p.deadline, *at);
            assert!(
                self.conns.get(p.conn).is_some(),
                "pending requests belong to open connections"
            );
        }
        if let Some(lead) = &self.leader_presence {
            lead.check_invariants();
        }
        assert_eq!(
            self.leader_presence.is_some(),
            self.node.role() == Role::Leader,
            "the leader's presence view exists exactly while leading"
        );
        if self.node.role() != Role::Leader {
            assert!(self.proposed.is_empty(), "only a leader tracks proposals");
        }
    }

    // ----- inputs -----------------------------------------------------------------------------

    fn advance(&mut self, now: Now) {
        // The monotonic clock never runs back; the wall clock may (it is data).
        if now.instant >= self.now.instant {
            self.now = now;
        } else {
            self.now.unix_ms = now.unix_ms;
        }
    }

    fn on_peer(&mut self, from: NodeId, frame: &[u8]) {
        let frame = match PeerFrame::decode(frame) {
            Ok(frame) => frame,
            Err(err) => {
                self.stats.peer_frames_malformed += 1;
                tracing::debug!(node = %self.node.id(), %from, %err, "dropped malformed peer frame");
                return;
            }
        };
        match frame {
            PeerFrame::Raft(bytes) => self.node.handle_frame(self.now.instant, &bytes),
            PeerFrame::Forward {
                token,
                client,
                seq,
                entry,
            } => self.on_forward(from, token, ClientId(client), seq, entry),
            PeerFrame::ForwardReply { token, result } => self.on_forward_reply(from, token, result),
            PeerFrame::Presence {
                full,
                number,
                online,
                offline,
            } => {
                let now = self.now.instant;
                if let Some(lead) = &mut self.leader_presence {
                    if lead.report(from, full, number, online, offline, now) == ReportTaken::Gap {
                        self.stats.presence_resyncs += 1;
                        self.send_peer(from, &PeerFrame::PresenceResync);
                    }
                }
            }
            PeerFrame::PresenceResync => {
                if self.node.leader() == Some(from) {
                    self.next_full_report = self.now.instant;
                    self.next_report = self.now.instant;
                }
            }
        }
    }

    fn on_connected(&mut self, conn: ConnId) {
        if self.conns.len() >= self.cfg.connections_max || self.conns.get(conn).is_some() {
            self.stats.connections_refused += 1;
            self.outputs.push_back(ReplicaOutput::Close(conn));
            return;
        }
        let mut nonce = [0u8; 32];
        self.rng.fill(&mut nonce);
        self.conns.insert(conn, Conn::new(nonce));
        self.send_client(
            conn,
            &ReplicaFrame::Challenge {
                nonce,
                replica: self.node.id(),
            },
        );
    }

    fn on_disconnected(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(conn) else {
            return;
        };
        if let Some(user) = c.user {
            self.leases.logout(user);
        }
        // Its requests can no longer be answered; a command may still apply (the client retries
        // with the same (session, seq) on its next connection and de-duplication answers).
        let tokens: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.take_pending(token);
        }
    }

    fn on_client(&mut self, conn: ConnId, frame: &[u8]) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        let frame = match ClientFrame::decode(frame) {
            Ok(frame) => frame,
            Err(err) => {
                self.stats.client_frames_malformed += 1;
                tracing::debug!(node = %self.node.id(), %conn, %err, "dropped malformed client frame");
                self.send_client(conn, &ReplicaFrame::Malformed);
                return;
            }
        };
        let user = c.user;
        match frame {
            ClientFrame::Login { signer, signature } => {
                let nonce = c.nonce;
                match protocol::verify_login(&signer, &signature, &nonce, self.node.id()) {
                    Some(proved) if user.is_none() => {
                        self.conns.login(conn, proved);
                        self.leases.login(&self.cfg.presence, proved, self.now);
                        self.send_client(conn, &ReplicaFrame::LoggedIn { user: proved });
                    }
                    Some(proved) if user == Some(proved) => {
                        self.send_client(conn, &ReplicaFrame::LoggedIn { user: proved });
                    }
                    _ => {
                        self.stats.logins_failed += 1;
                        self.send_client(conn, &ReplicaFrame::LoginFailed);
                    }
                }
            }
            ClientFrame::Heartbeat => {
                if let Some(user) = user {
                    if self.leases.is_live(&user) {
                        self.leases.heartbeat(&self.cfg.presence, user, self.now);
                    } else {
                        // The lease ran out while the connection stayed open: start a new one.
                        self.leases.login(&self.cfg.presence, user, self.now);
                    }
                }
            }
            ClientFrame::Request { id, request } => {
                let Some(user) = user else {
                    self.refuse(conn, id, RequestError::NotLoggedIn);
                    return;
                };
                self.on_request(conn, user, id, request);
            }
        }
    }

    fn on_request(&mut self, conn: ConnId, user: UserId, id: RequestId, request: Request) {
        match request {
            Request::Command {
                session,
                seq,
                command,
            } => {
                if command.user() != user {
                    self.refuse(conn, id, RequestError::WrongSigner);
                    return;
                }
                if let CommandBody::Register { username, .. } = &command.body {
                    if let Err(err) = Username::parse(username) {
                        self.refuse(conn, id, RequestError::InvalidUsername(err));
                        return;
                    }
                }
                let entry = DirectoryEntry::Signed(command).encode();
                if entry.len() > crate::directory::command::ENTRY_BYTES_MAX {
                    self.refuse(conn, id, RequestError::TooLarge);
                    return;
                }
                self.submit_command(conn, id, scoped_client(&user, session), seq, entry);
            }
            Request::Lookup { key, consistency } => match consistency {
                Consistency::Local => {
                    let reply = self.lookup(&key, user, true);
                    self.answer(conn, id, Ok(Reply::Lookup(reply)));
                }
                Consistency::Linearizable => {
                    self.read_linearizable(conn, id, ReadRequest::Lookup(key));
                }
            },
            Request::Deposit {
                session,
                seq,
                to,
                message_id,
                envelope,
            } => {
                // The directory refuses it too (`EnvelopeTooLarge`); refusing here keeps a
                // doomed entry out of the log.
                if envelope.len() > ENVELOPE_BYTES_MAX {
                    self.refuse(conn, id, RequestError::TooLarge);
                    return;
                }
                // The depositor is `user`, authenticated by the connection's login; it scopes
                // the de-duplication session (thesis §6.3) but is not in the entry.
                let entry = DirectoryEntry::Deposit(Deposit {
                    recipient: to,
                    message_id,
                    envelope,
                })
                .encode();
                self.submit_command(conn, id, scoped_client(&user, session), seq, entry);
            }
            // Only the connection's own user: there is no way to name another mailbox.
            Request::FetchMailbox { after, max } => {
                self.read_linearizable(conn, id, ReadRequest::Mailbox { after, max });
            }
            Request::Subscribe(users) => {
                if users.len() > self.cfg.subscriptions_max {
                    self.refuse(
                        conn,
                        id,
                        RequestError::TooManySubscriptions {
                            max: self.cfg.subscriptions_max,
                        },
                    );
                    return;
                }
                self.conns.subscribe(conn, users.iter().copied().collect());
                self.answer(conn, id, Ok(Reply::Subscribed));
                for subject in users {
                    self.push_presence(conn, user, subject);
                }
            }
        }
    }

    /// Starts a ReadIndex round (thesis §6.4) for `read`, served at `ReadReady`.
    fn read_linearizable(&mut self, conn: ConnId, id: RequestId, read: ReadRequest) {
        let Some(token) = self.admit(conn, id, Waiting::Read, Some(read)) else {
            return;
        };
        if let Err(err) = self.node.read(self.now.instant, ReadId(token)) {
            let error = match err {
                ReadError::NoLeader => RequestError::NoLeader,
                _ => RequestError::Busy,
            };
            self.fail(token, error);
        }
    }

    /// A page of `user`'s mailbox that fits in one client frame.
    fn fetch_mailbox(&self, user: UserId, after: MailboxSeq, max: u32) -> MailboxReply {
        let max = max.min(FETCH_MESSAGES_MAX) as usize;
        MailboxReply {
            page: self
                .directory()
                .fetch_mailbox(&user, after, max, FETCH_REPLY_BYTES_MAX),
            index: self.node.applied(),
        }
    }

    /// Proposes here when leading, forwards to the leader otherwise.
    fn submit_command(
        &mut self,
        conn: ConnId,
        id: RequestId,
        client: ClientId,
        seq: u64,
        entry: Vec<u8>,
    ) {
        let leader = self.node.leader();
        let waiting = Waiting::Command {
            client,
            seq,
            leader,
        };
        let Some(token) = self.admit(conn, id, waiting, None) else {
            return;
        };
        match leader {
            None => self.fail(token, RequestError::NoLeader),
            Some(leader) if leader == self.node.id() => match self.propose(client, seq, entry) {
                Ok(()) => self.track(client, seq, Origin::Local(token)),
                Err(error) => self.fail(token, error),
            },
            Some(leader) => self.send_peer(
                leader,
                &PeerFrame::Forward {
                    token,
                    client: client.0,
                    seq,
                    entry,
                },
            ),
        }
    }

    fn on_forward(&mut self, from: NodeId, token: u64, client: ClientId, seq: u64, entry: Vec<u8>) {
        let result = if self.node.role() != Role::Leader {
            Err(RequestError::LeaderChanged)
        } else if self.proposed.len() >= self.cfg.forwards_max {
            Err(RequestError::Busy)
        } else {
            // Only signed commands and deposits come from clients; presence entries are the
            // leader's own.
            match DirectoryEntry::decode(&entry) {
                Ok(DirectoryEntry::Signed(_) | DirectoryEntry::Deposit(_))
                    if entry.len() <= crate::directory::command::ENTRY_BYTES_MAX =>
                {
                    self.propose(client, seq, entry)
                }
                _ => {
                    self.stats.forwards_unmatched += 1;
                    return;
                }
            }
        };
        match result {
            Ok(()) => self.track(client, seq, Origin::Remote(from, token)),
            Err(error) => self.send_peer(
                from,
                &PeerFrame::ForwardReply {
                    token,
                    result: ForwardResult::Failed(error),
                },
            ),
        }
    }

    fn on_forward_reply(&mut self, from: NodeId, token: u64, result: ForwardResult) {
        let matches = self.pending.get(&token).is_some_and(
            |p| matches!(p.waiting, Waiting::Command { leader: Some(l), .. } if l == from),
        );
        if !matches {
            self.stats.forwards_unmatched += 1;
            return;
        }
        match result {
            ForwardResult::Applied(response) => self.complete_command(token, &response),
            ForwardResult::Failed(error) => self.fail(token, error),
        }
    }

    fn on_timeout(&mut self) {
        let now = self.now.instant;
        if self.node.poll_timeout().is_some_and(|(at, _)| at <= now) {
            self.node.handle(now, Input::Timeout);
        }
        self.leases.expire(now);
        while let Some(&(at, token)) = self.by_deadline.first() {
            if at > now {
                break;
            }
            self.fail(token, RequestError::Timeout);
        }
        if now >= self.next_report {
            self.report_presence();
        }
    }

    // ----- after every input ------------------------------------------------------------------

    fn after_input(&mut self) {
        self.drain_node();
        self.flush_presence();
        self.drain_node();
        self.push_applied();
    }

    /// Moves the node's outputs out, acting on the events the replica owns.
    fn drain_node(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Persist(batch) => self.outputs.push_back(ReplicaOutput::Persist(batch)),
                Output::Send(env) => {
                    let frame = PeerFrame::raft(&env).encode();
                    self.outputs
                        .push_back(ReplicaOutput::Peer { to: env.to, frame });
                }
                Output::Event(event) => self.on_event(event),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match &event {
            Event::Applied {
                client,
                seq,
                response,
                ..
            } => {
                if let Some(lead) = &mut self.leader_presence {
                    if *client
                        == presence_client(self.node.id(), self.node.term(), self.presence_epoch)
                    {
                        lead.in_flight.remove(seq);
                    } else if let Ok(Ok(Outcome::Registered { user, .. })) =
                        crate::directory::command::decode_result(response)
                    {
                        // A connected user may have registered (again): presence compares them
                        // at the next flush rather than every user at every flush.
                        lead.touch(user);
                    }
                }
                for origin in self.proposed.remove(&(*client, *seq)).unwrap_or_default() {
                    match origin {
                        Origin::Local(token) => self.complete_command(token, response),
                        Origin::Remote(node, token) => self.send_peer(
                            node,
                            &PeerFrame::ForwardReply {
                                token,
                                result: ForwardResult::Applied(response.clone()),
                            },
                        ),
                    }
                }
            }
            Event::ProposalDropped {
                proposal: Proposal::Command { client, seq },
                reason,
                ..
            } => {
                if *client == presence_client(self.node.id(), self.node.term(), self.presence_epoch)
                {
                    if let Some(lead) = &mut self.leader_presence {
                        lead.in_flight.remove(seq);
                        lead.reconcile_all_soon();
                    }
                    self.presence_epoch += 1;
                    self.presence_seq = 0;
                }
                let error = match reason {
                    DropReason::SessionExpired => RequestError::SessionExpired,
                    DropReason::Stale => RequestError::Stale,
                    DropReason::Truncated | DropReason::SnapshotInstalled | DropReason::Removed => {
                        RequestError::LeaderChanged
                    }
                };
                for origin in self.proposed.remove(&(*client, *seq)).unwrap_or_default() {
                    self.reply_origin(origin, error.clone());
                }
            }
            Event::ReadReady { id, .. }
                if self
                    .pending
                    .get(&id.0)
                    .is_some_and(|p| p.waiting == Waiting::Read) =>
            {
                let p = self.take_pending(id.0).expect("present");
                // Pending requests belong to open, logged-in connections (checked invariant).
                let user = self
                    .conns
                    .get(p.conn)
                    .and_then(|c| c.user)
                    .expect("logged in");
                let reply = match p.read.expect("a read carries what it reads") {
                    ReadRequest::Lookup(key) => Reply::Lookup(self.lookup(&key, user, false)),
                    ReadRequest::Mailbox { after, max } => {
                        Reply::Mailbox(self.fetch_mailbox(user, after, max))
                    }
                };
                self.answer(p.conn, p.id, Ok(reply));
            }
            Event::ReadFailed { id }
                if self
                    .pending
                    .get(&id.0)
                    .is_some_and(|p| p.waiting == Waiting::Read) =>
            {
                self.fail(id.0, RequestError::ReadFailed);
            }
            Event::RoleChanged { role, leader, .. } => self.on_role(*role, *leader),
            _ => {}
        }
        self.outputs.push_back(ReplicaOutput::Event(event));
    }

    fn on_role(&mut self, role: Role, leader: Option<NodeId>) {
        if role == Role::Leader {
            if self.leader_presence.is_none() {
                self.leader_presence = Some(LeaderPresence::new(
                    &self.cfg.presence,
                    self.now.instant,
                    self.node.applied(),
                    self.directory().restores(),
                ));
                self.presence_seq = 0;
                // Ask every replica for its whole view; until the grace period ends no one is
                // taken offline for lack of a report.
                let peers: Vec<NodeId> = self
                    .node
                    .log()
                    .membership()
                    .members()
                    .filter(|&m| m != self.node.id())
                    .collect();
                for peer in peers {
                    self.send_peer(peer, &PeerFrame::PresenceResync);
                }
                self.next_full_report = self.now.instant;
                self.next_report = self.now.instant;
            }
        } else {
            self.leader_presence = None;
            // Proposals made as leader end in Applied or ProposalDropped later, but the origins
            // cannot wait for that: the client is told now and retries with the same (session, seq).
            for (_, origins) in std::mem::take(&mut self.proposed) {
                for origin in origins {
                    self.reply_origin(origin, RequestError::LeaderChanged);
                }
            }
        }
        if leader != self.known_leader {
            self.known_leader = leader;
            // Commands forwarded to another leader get no reply from it now.
            let stale: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| matches!(p.waiting, Waiting::Command { leader: l, .. } if l != leader && l != Some(self.node.id())))
                .map(|(t, _)| *t)
                .collect();
            for token in stale {
                self.fail(token, RequestError::LeaderChanged);
            }
            if leader.is_some() && leader != Some(self.node.id()) {
                self.next_full_report = self.now.instant;
                self.next_report = self.now.instant;
            }
        }
    }

    // ----- presence ---------------------------------------------------------------------------

    fn report_presence(&mut self) {
        let cfg = &self.cfg.presence;
        let now = self.now.instant;
        self.next_report = now + cfg.report_interval;
        let full = now >= self.next_full_report;
        if full {
            self.next_full_report = now + cfg.full_report_interval;
        }
        let (online, offline) = if full {
            let (_, offline) = self.leases.take_delta();
            (self.leases.full(), offline)
        } else {
            self.leases.take_delta()
        };
        self.report_number += 1;
        let number = self.report_number;
        match self.node.leader() {
            Some(leader) if leader == self.node.id() => {
                if let Some(lead) = &mut self.leader_presence {
                    lead.report(leader, full, number, online, offline, now);
                }
            }
            Some(leader) => {
                self.send_peer(
                    leader,
                    &PeerFrame::Presence {
                        full,
                        number,
                        online,
                        offline,
                    },
                );
            }
            // No leader: the next leader asks for a full report anyway.
            None => self.next_full_report = now,
        }
    }

    fn flush_presence(&mut self) {
        if self.node.role() != Role::Leader {
            return;
        }
        let Some(lead) = &mut self.leader_presence else {
            return;
        };
        let batches = lead.batch(
            &self.cfg.presence,
            self.node.state_machine(),
            self.node.applied(),
            self.now,
        );
        let client = presence_client(self.node.id(), self.node.term(), self.presence_epoch);
        for batch in batches {
            let seq = self.presence_seq + 1;
            let entry = DirectoryEntry::Presence(batch).encode();
            match self
                .node
                .propose(self.now.instant, self.now.unix_ms, client, seq, entry)
            {
                Ok(_) => {
                    self.presence_seq = seq;
                    self.stats.presence_batches += 1;
                    if let Some(lead) = &mut self.leader_presence {
                        lead.in_flight.insert(seq);
                    }
                }
                Err(err) => {
                    // Back-pressure or a transfer: the next flush compares everyone again.
                    tracing::debug!(node = %self.node.id(), %err, "presence batch not proposed");
                    if let Some(lead) = &mut self.leader_presence {
                        lead.reconcile_all_soon();
                    }
                    break;
                }
            }
        }
    }

    /// Pushes what entries applied since the last call changed: presence to subscribed
    /// connections, `MailboxChanged` to the connections of users who received deposits.
    fn push_applied(&mut self) {
        let applied = self.node.applied();
        if applied <= self.pushed_upto {
            return;
        }
        let restores = self.pushed_restores;
        let changed: Vec<UserId> = match self
            .directory()
            .presence_changes_since(self.pushed_upto, restores)
        {
            Some(changes) => changes.collect(),
            // The ring no longer reaches back (a snapshot was installed): push every subscription.
            None => self.conns.subscribed_users(),
        };
        // A set: a burst of deposits for one user is one push per connection (coalesced here,
        // once per input, which is when the runtime flushes our outputs).
        let deposited: BTreeSet<UserId> =
            match self.directory().deposits_since(self.pushed_upto, restores) {
                Some(recipients) => recipients.collect(),
                // Same: every logged-in user may have received something.
                None => self.conns.logged_in_users().into_iter().collect(),
            };
        self.pushed_upto = applied;
        self.pushed_restores = self.directory().restores();
        for subject in changed {
            for (conn, viewer) in self.conns.subscribers(&subject) {
                self.push_presence(conn, viewer, subject);
            }
        }
        for user in deposited {
            // A deregistered user has no mailbox left to fetch: nothing to say.
            let Some(last_seq) = self.directory().mailbox(&user).map(|m| m.last_seq()) else {
                continue;
            };
            for conn in self.conns.of_user(&user) {
                self.stats.mailbox_pushes += 1;
                self.send_client(conn, &ReplicaFrame::MailboxChanged { last_seq });
            }
        }
    }

    fn push_presence(&mut self, conn: ConnId, viewer: UserId, subject: UserId) {
        if let Some(presence) = self.directory().presence_visible_to(&subject, &viewer) {
            self.stats.presence_pushes += 1;
            self.send_client(
                conn,
                &ReplicaFrame::PresencePush {
                    user: subject,
                    presence,
                },
            );
        }
    }

    // ----- requests ---------------------------------------------------------------------------

    fn lookup(&self, key: &LookupKey, viewer: UserId, possibly_stale: bool) -> LookupReply {
        let dir = self.directory();
        let record = match key {
            LookupKey::Name(name) => Username::parse(name).ok().and_then(|n| dir.lookup(&n)),
            LookupKey::Id(id) => dir.user(id),
        };
        LookupReply {
            presence: record.and_then(|r| dir.presence_visible_to(&r.user, &viewer)),
            user: record.map(|r| r.view()),
            index: self.node.applied(),
            possibly_stale,
        }
    }

    fn propose(&mut self, client: ClientId, seq: u64, entry: Vec<u8>) -> Result<(), RequestError> {
        match self
            .node
            .propose(self.now.instant, self.now.unix_ms, client, seq, entry)
        {
            Ok(_) => Ok(()),
            Err(ProposeError::NotLeader { .. } | ProposeError::TransferInProgress) => {
                Err(RequestError::LeaderChanged)
            }
            Err(_) => Err(RequestError::Busy),
        }
    }

    fn track(&mut self, client: ClientId, seq: u64, origin: Origin) {
        self.proposed.entry((client, seq)).or_default().push(origin);
    }

    /// Registers a request as pending; refuses it (and returns `None`) at the limit.
    fn admit(
        &mut self,
        conn: ConnId,
        id: RequestId,
        waiting: Waiting,
        read: Option<ReadRequest>,
    ) -> Option<u64> {
        if self.pending.len() >= self.cfg.requests_max {
            self.refuse(conn, id, RequestError::Busy);
            return None;
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        let deadline = self.now.instant + self.cfg.request_timeout;
        self.pending.insert(
            token,
            Pending {
                conn,
                id,
                deadline,
                waiting,
                read,
            },
        );
        self.by_deadline.insert((deadline, token));
        Some(token)
    }

    fn take_pending(&mut self, token: u64) -> Option<Pending> {
        let p = self.pending.remove(&token)?;
        self.by_deadline.remove(&(p.deadline, token));
        Some(p)
    }

    fn complete_command(&mut self, token: u64, response: &[u8]) {
        let Some(p) = self.take_pending(token) else {
            self.stats.forwards_unmatched += 1;
            return;
        };
        let reply = match crate::directory::command::decode_result(response) {
            Ok(result) => Reply::Command(result),
            Err(err) => Reply::Command(Err(err)),
        };
        self.answer(p.conn, p.id, Ok(reply));
    }

    fn fail(&mut self, token: u64, error: RequestError) {
        if let Some(p) = self.take_pending(token) {
            self.stats.requests_failed += 1;
            self.answer(p.conn, p.id, Err(error));
        }
    }

    fn reply_origin(&mut self, origin: Origin, error: RequestError) {
        match origin {
            Origin::Local(token) => self.fail(token, error),
            Origin::Remote(node, token) => self.send_peer(
                node,
                &PeerFrame::ForwardReply {
                    token,
                    result: ForwardResult::Failed(error),
                },
            ),
        }
    }

    fn refuse(&mut self, conn: ConnId, id: RequestId, error: RequestError) {
        self.stats.requests_refused += 1;
        self.answer(conn, id, Err(error));
    }

    fn answer(&mut self, conn: ConnId, id: RequestId, result: Result<Reply, RequestError>) {
        self.send_client(conn, &ReplicaFrame::Response { id, result });
    }

    fn send_client(&mut self, conn: ConnId, frame: &ReplicaFrame) {
        self.outputs.push_back(ReplicaOutput::Client {
            conn,
            frame: frame.encode(),
        });
    }

    fn send_peer(&mut self, to: NodeId, frame: &PeerFrame) {
        self.outputs.push_back(ReplicaOutput::Peer {
            to,
            frame: frame.encode(),
        });
    }
}

/// The de-duplication client id of `session` of `user`: scoped by the user, so one user cannot
/// disturb another's retries by choosing the same session number.
#[must_use]
pub fn scoped_client(user: &UserId, session: u64) -> ClientId {
    let mut hasher = blake3::Hasher::new_derive_key("paloma 2026-11 client session v1");
    hasher.update(&user.0);
    hasher.update(&session.to_le_bytes());
    let bytes: [u8; 8] = hasher.finalize().as_bytes()[..8]
        .try_into()
        .expect("8 bytes");
    ClientId(u64::from_le_bytes(bytes))
}

/// The de-duplication client id of a leader's presence batches: a fresh session per term (and per
/// epoch within it), so a new leader starts at seq 1 without knowing its predecessor's numbers.
#[must_use]
pub fn presence_client(node: NodeId, term: crate::ids::Term, epoch: u64) -> ClientId {
    let mut hasher = blake3::Hasher::new_derive_key("paloma 2026-11 presence session v1");
    hasher.update(&node.0.to_le_bytes());
    hasher.update(&term.0.to_le_bytes());
    hasher.update(&epoch.to_le_bytes());
    let bytes: [u8; 8] = hasher.finalize().as_bytes()[..8]
        .try_into()
        .expect("8 bytes");
    ClientId(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests;
