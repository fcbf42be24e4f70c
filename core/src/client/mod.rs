//! The client side of the identity directory: a sans-IO [`Client`] that logs in to one replica,
//! sends signed directory commands and reads, retries them safely, caches what it learns and pins
//! identity keys on first use.
//!
//! # Driving it
//!
//! The same contract as the rest of the core (crate docs): feed [`Client::handle`] an input (a
//! link came up, a frame arrived, the link went down, a deadline passed); application calls take
//! `now` too; after **every** input or call drain [`Client::poll_output`]:
//! - [`ClientOutput::Send`]: write the frame to the current replica's link;
//! - [`ClientOutput::Reconnect`]: close the current link if any, pick a replica (another one if
//!   possible) and report [`ClientInput::Connected`] once a link is up. The request stands until
//!   then; `new` makes the first one;
//! - [`ClientOutput::Event`]: tell the application.
//!
//! Then sleep until [`Client::poll_timeout`] (which names its reason) and feed
//! [`ClientInput::Timeout`]. [`Now`] carries both clocks: the monotonic one for timers, the wall
//! clock only as data for command expiry.
//!
//! # Safety of retries
//!
//! The directory applies a user's signed commands only with rising counters, so one command is in
//! flight at a time; the rest wait in a bounded queue. A command is signed once, at its first
//! send, and every retry resends the identical `(session, seq, command)`, so the cluster's
//! de-duplication (Raft thesis §6.3) answers a command that already ran instead of running it
//! twice. It is re-signed under a new counter only when no attempt can have applied: after
//! `Replayed` or `Expired` answers to a command none of whose attempts had an unknown outcome, or
//! when it nears its expiry having only been refused before running (`NoLeader`, `Busy`).
//!
//! ```
//! use paloma_core::client::{Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, ClientTimer};
//! use paloma_core::replica::protocol::{ClientFrame, ReplicaFrame};
//! use paloma_core::session::{Entropy, IdentityKeyPair};
//! use paloma_core::time::{Instant, Now};
//! use paloma_core::NodeId;
//!
//! struct Fixed;
//! impl Entropy for Fixed {
//!     fn fill(&mut self, buf: &mut [u8]) { buf.fill(7) } // the runtime reads the OS source
//! }
//! let identity = IdentityKeyPair::generate(&mut Fixed);
//! let user = identity.user_id();
//! let now = Now { instant: Instant::ZERO, unix_ms: 1_700_000_000_000 };
//! let config = ClientConfig { seed: 42, ..ClientConfig::default() };
//! let mut client = Client::new(config, identity, now).unwrap();
//! // A replica played inline: it challenges on connect and accepts the login.
//! let challenge = ReplicaFrame::Challenge { nonce: [1; 32], replica: NodeId(1) };
//! let mut inputs = vec![ClientInput::Connected { replica: NodeId(1) }, ClientInput::Frame(challenge.encode())];
//! let mut logged_in = false;
//! while !inputs.is_empty() {
//!     client.handle(now, inputs.remove(0));
//!     while let Some(output) = client.poll_output() {
//!         match output {
//!             ClientOutput::Reconnect => {} // connect somewhere, then feed `Connected`
//!             ClientOutput::Send(bytes) => {
//!                 if let Ok(ClientFrame::Login { .. }) = ClientFrame::decode(&bytes) {
//!                     inputs.push(ClientInput::Frame(ReplicaFrame::LoggedIn { user }.encode()));
//!                 }
//!             }
//!             ClientOutput::Event(event) => logged_in |= matches!(event, ClientEvent::LoggedIn { .. }),
//!         }
//!     }
//! }
//! assert!(logged_in);
//! assert_eq!(client.poll_timeout().map(|(_, why)| why), Some(ClientTimer::Heartbeat));
//! ```

mod answers;
mod api;
mod cache;
mod config;
mod keys;
mod ops;
#[cfg(test)]
mod tests;

pub use cache::PINS_MAX;
pub use config::{ClientConfig, ClientConfigError};
pub use keys::{ONE_TIME_PREKEYS_HELD_MAX, REGISTER_ONE_TIME_PREKEYS};
pub use ops::{ClientError, OpError, OpId};

use crate::directory::command::COMMAND_VALIDITY_MAX_MS;
use crate::directory::{Bundle, CommandBody, Presence, SignedCommand, UserView, Username};
use crate::ids::{MailboxSeq, NodeId, UserId};
use crate::replica::protocol::{self, ClientFrame, LookupReply, MailboxReply, ReplicaFrame};
use crate::rng::DetRng;
use crate::session::{
    IdentityKeyPair, IdentityPublic, OneTimePrekeyPair, PrekeyId, SafetyNumber, SignedPrekeyPair,
};
use crate::time::{Instant, Now};
use cache::{DirectoryCache, Pins};
use keys::KeyRing;
use ops::{Ops, Signed};
use std::collections::VecDeque;

/// Something that happened to the client's link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientInput {
    /// A link to `replica` is up; the replica will send a `Challenge`.
    Connected {
        /// The replica the runtime connected to.
        replica: NodeId,
    },
    /// An encoded [`ReplicaFrame`] from the current replica.
    Frame(Vec<u8>),
    /// The link reported by the last `Connected` went down.
    Disconnected,
    /// A deadline returned by [`Client::poll_timeout`] has passed.
    Timeout,
}

/// Something the runtime must do or may want to know.
// An output lives only from `handle` to `poll_output`, and most are events: boxing them would
// allocate for each one to save a few hundred bytes of move.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutput {
    /// Write this encoded [`ClientFrame`] to the current replica.
    Send(Vec<u8>),
    /// The client wants a (different) replica: see the module docs.
    Reconnect,
    /// Tell the application.
    Event(ClientEvent),
}

/// What the application hears. Every accepted operation ends in exactly one of `Registered`,
/// `LookedUp`, `BundleClaimed`, `Done`, `Deposited`, `MailboxFetched`, `MailboxAcked` or
/// `Failed` naming its [`OpId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The link is logged in as `user`; queued operations are being sent.
    LoggedIn {
        /// This client's user.
        user: UserId,
    },
    /// A registration applied.
    Registered {
        /// The `register` call.
        op: OpId,
        /// The new user (this client's).
        user: UserId,
        /// The leader-stamped registration time.
        registered_unix_ms: u64,
    },
    /// A lookup's answer.
    LookedUp {
        /// The `lookup` call.
        op: OpId,
        /// The answer.
        reply: LookupReply,
    },
    /// A claimed bundle whose signed prekey verified, for a user whose pinned key (if any) it
    /// matches.
    BundleClaimed {
        /// The `claim_bundle` call.
        op: OpId,
        /// The bundle.
        bundle: Bundle,
        /// The pool was empty: no one-time prekey (weaker replay protection, X3DH §4.2).
        pool_empty: bool,
    },
    /// A command other than a registration or a claim applied, or a subscription was replaced.
    Done {
        /// The call.
        op: OpId,
    },
    /// An operation failed.
    Failed {
        /// The call.
        op: OpId,
        /// Why.
        error: OpError,
    },
    /// The directory shows another identity key for a pinned username. The pin stays until
    /// [`Client::accept_key_change`]; compare the safety number out of band first.
    KeyChanged {
        /// Whose.
        username: Username,
        /// The pinned key.
        old: IdentityPublic,
        /// The key the directory now shows.
        new: IdentityPublic,
        /// The safety number of this client's identity and the new key.
        safety_number: SafetyNumber,
    },
    /// A subscribed user's presence.
    PresenceChanged {
        /// Whose.
        user: UserId,
        /// Now.
        presence: Presence,
    },
    /// The link was lost; requests in flight will be retried after the next login.
    Disconnected,
    /// A deposit is committed in the recipient's mailbox (ARCHITECTURE.md, "Mailboxes", rule 3: *stored*). A refusal
    /// (`MailboxFull`, `UnknownUser`, ...) ends the operation in `Failed` instead.
    Deposited {
        /// The `deposit` call.
        op: OpId,
        /// Its place in the recipient's mailbox.
        seq: MailboxSeq,
        /// Directory time at which it is purged unless acknowledged.
        expires_unix_ms: u64,
    },
    /// A page of this user's mailbox (linearizable: every deposit acknowledged to its sender
    /// before the fetch is in it, unless acknowledged or expired since).
    MailboxFetched {
        /// The `fetch_mailbox` call.
        op: OpId,
        /// The page.
        reply: MailboxReply,
    },
    /// The replica pushed that deposits reached this user's mailbox (`ReplicaFrame::
    /// MailboxChanged`). Not an operation's end. The client does not fetch on its own: it holds
    /// no cursor and no store of received envelopes (the inbox comes with delivery), so the
    /// application calls [`Client::fetch_mailbox`] after its cursor when `last_seq` is beyond it,
    /// and also after every `LoggedIn`, since a push is only a hint (lost with a link).
    MailboxChanged {
        /// The mailbox's last seq when the replica sent the push.
        last_seq: MailboxSeq,
    },
    /// An acknowledgement applied: every envelope up to `upto` is deleted.
    MailboxAcked {
        /// The `ack_mailbox` call.
        op: OpId,
        /// The bound acknowledged.
        upto: MailboxSeq,
        /// Envelopes it deleted (0 for a repeat).
        removed: u32,
    },
}

/// Why [`Client::poll_timeout`] wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTimer {
    /// Time to send a heartbeat.
    Heartbeat,
    /// The login has taken too long: another replica will be asked for.
    Login,
    /// A request has gone unanswered too long: another replica will be asked for.
    Request,
    /// An operation's backoff ends.
    Retry,
}

/// Counters of what the client dropped or repeated (hostile input is counted, never fatal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Frames that did not decode.
    pub malformed_frames: u64,
    /// Well-formed frames that made no sense in the link's state (a second challenge, a
    /// challenge naming another replica, a login for another user, a push before login).
    pub unexpected_frames: u64,
    /// Responses to no request in flight (a duplicate, or an old link's).
    pub unknown_responses: u64,
    /// Responses whose reply does not fit the request (left unanswered: the request times out).
    pub mismatched_replies: u64,
    /// `Malformed` frames from the replica: it could not decode one of ours.
    pub refused_frames: u64,
    /// Logins the replica refused.
    pub login_failures: u64,
    /// Logins or requests that went unanswered past `request_timeout`.
    pub timeouts: u64,
    /// Attempts after an operation's first.
    pub retries: u64,
    /// Commands signed again under a new counter.
    pub resigned: u64,
    /// Cache entries evicted for room.
    pub cache_evictions: u64,
    /// Usernames not pinned because the pins were full.
    pub pins_refused: u64,
}

/// The link to a replica, named after what it awaits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No link: a `Reconnect` stands.
    ExpectConnected,
    /// Connected; the replica's challenge is due by `deadline`.
    ExpectChallenge { replica: NodeId, deadline: Instant },
    /// The login was sent; the answer is due by `deadline`.
    ExpectLoggedIn { replica: NodeId, deadline: Instant },
    /// Logged in: requests flow, a heartbeat is due at `heartbeat_at`.
    LoggedIn { heartbeat_at: Instant },
}

/// Whether this identity holds a directory record, as far as the client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registration {
    Unregistered,
    /// A `register` is queued or in flight.
    Pending(OpId),
    Registered,
}

/// The de-duplication session and the command counter.
#[derive(Debug)]
struct Dedup {
    rng: DetRng,
    session: u64,
    /// The last sequence number used in `session`.
    seq: u64,
    /// The highest counter signed or seen applied for this identity.
    counter: u64,
}

impl Dedup {
    fn new(seed: u64) -> Dedup {
        let mut rng = DetRng::fork(seed, "client-session");
        let session = rng.next_u64();
        Dedup {
            rng,
            session,
            seq: 0,
            counter: 0,
        }
    }

    /// A fresh session: its first command must carry `seq` 1 (thesis §6.3).
    fn renew(&mut self) {
        self.session = self.rng.next_u64();
        self.seq = 0;
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Signs `body` under the next counter, valid for half the longest validity so a client
    /// clock ahead of the leader's does not make it `ExpiryTooFar`. The counter saturates: a
    /// lying replica can make our commands fail (`Replayed`), never make us panic.
    fn sign(
        &mut self,
        identity: &IdentityKeyPair,
        unix_ms: u64,
        body: CommandBody,
    ) -> SignedCommand {
        self.counter = self.counter.saturating_add(1);
        let expires_unix_ms = unix_ms.saturating_add(COMMAND_VALIDITY_MAX_MS / 2);
        SignedCommand::sign(identity, self.counter, expires_unix_ms, body)
    }

    fn slot(&mut self, command: SignedCommand) -> Signed {
        Signed {
            session: self.session,
            seq: self.next_seq(),
            command,
        }
    }
}

/// The client state machine (see the module docs).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    identity: IdentityKeyPair,
    link: Link,
    ops: Ops,
    keys: KeyRing,
    cache: DirectoryCache,
    pins: Pins,
    dedup: Dedup,
    registration: Registration,
    /// The last subscription the application asked for, renewed on every login.
    subscription: Vec<UserId>,
    outputs: VecDeque<ClientOutput>,
    stats: ClientStats,
}

impl Client {
    /// A client for `identity`, not yet connected: its first output is a `Reconnect`. `now` is
    /// taken like every other call's; nothing is timed before the first link.
    pub fn new(
        config: ClientConfig,
        identity: IdentityKeyPair,
        _now: Now,
    ) -> Result<Client, ClientConfigError> {
        config.validate()?;
        let seed = config.seed;
        Ok(Client {
            link: Link::ExpectConnected,
            ops: Ops::new(seed),
            keys: KeyRing::new(seed),
            cache: DirectoryCache::new(config.cache_entries_max),
            pins: Pins::default(),
            dedup: Dedup::new(seed),
            registration: Registration::Unregistered,
            subscription: Vec::new(),
            outputs: VecDeque::from([ClientOutput::Reconnect]),
            stats: ClientStats::default(),
            config,
            identity,
        })
    }

    /// Feeds one input; drain [`Client::poll_output`] afterwards.
    pub fn handle(&mut self, now: Now, input: ClientInput) {
        match input {
            ClientInput::Connected { replica } => {
                // A new link replaces the old one, which the runtime has given up on.
                self.drop_link(now);
                let deadline = now.instant + self.config.request_timeout;
                self.link = Link::ExpectChallenge { replica, deadline };
            }
            ClientInput::Frame(bytes) => match ReplicaFrame::decode(&bytes) {
                Ok(frame) => self.on_frame(now, frame),
                Err(_) => self.stats.malformed_frames += 1,
            },
            // Ignored without a link: the runtime reports only the link it announced, and a
            // `Reconnect` already stands.
            ClientInput::Disconnected => self.link_lost(now),
            ClientInput::Timeout => self.on_timeout(now),
        }
        self.pump(now);
    }

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// The earliest deadline and its reason; `None` when nothing is timed (no link).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, ClientTimer)> {
        let link = match self.link {
            Link::ExpectConnected => None,
            Link::ExpectChallenge { deadline, .. } | Link::ExpectLoggedIn { deadline, .. } => {
                Some((deadline, ClientTimer::Login))
            }
            Link::LoggedIn { heartbeat_at } => Some((heartbeat_at, ClientTimer::Heartbeat)),
        };
        let ops = self.ops.next_deadline(self.is_logged_in());
        link.into_iter().chain(ops).min_by_key(|(at, _)| *at)
    }

    /// This client's user.
    #[must_use]
    pub fn user(&self) -> UserId {
        self.identity.user_id()
    }

    /// Whether the link is logged in.
    #[must_use]
    pub fn is_logged_in(&self) -> bool {
        matches!(self.link, Link::LoggedIn { .. })
    }

    /// Whether this identity is known to be registered (a registration applied, or a lookup of
    /// oneself found the record).
    #[must_use]
    pub fn is_registered(&self) -> bool {
        self.registration == Registration::Registered
    }

    /// The highest command counter signed or seen applied.
    #[must_use]
    pub fn counter(&self) -> u64 {
        self.dedup.counter
    }

    /// What was dropped or repeated.
    #[must_use]
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The directory's last view of `name`, if cached.
    #[must_use]
    pub fn cached(&self, name: &Username) -> Option<&UserView> {
        self.cache.view(name)
    }

    /// The identity key pinned for `name`.
    #[must_use]
    pub fn pinned(&self, name: &Username) -> Option<&IdentityPublic> {
        self.pins.pinned(name)
    }

    /// The safety number of this client's identity and the key pinned for `name`.
    #[must_use]
    pub fn safety_number(&self, name: &Username) -> Option<SafetyNumber> {
        let pin = self.pins.pinned(name)?;
        Some(SafetyNumber::of(self.identity.public(), pin))
    }

    /// Pins the changed key last reported by `KeyChanged` for `name`; returns it.
    pub fn accept_key_change(&mut self, name: &Username) -> Result<IdentityPublic, ClientError> {
        self.pins.accept(name).ok_or(ClientError::NoKeyChange)
    }

    /// The signed prekey in use (its private half), once a registration or rotation applied.
    #[must_use]
    pub fn signed_prekey(&self) -> Option<&SignedPrekeyPair> {
        self.keys.signed()
    }

    /// The signed prekey `id`: the one in use or the one it replaced.
    #[must_use]
    pub fn signed_prekey_with_id(&self, id: PrekeyId) -> Option<&SignedPrekeyPair> {
        self.keys.signed_with_id(id)
    }

    /// Every held one-time prekey, by id.
    pub fn one_time_prekeys(&self) -> impl Iterator<Item = &OneTimePrekeyPair> {
        self.keys.one_time_all()
    }

    /// A held one-time prekey.
    #[must_use]
    pub fn one_time_prekey(&self, id: PrekeyId) -> Option<&OneTimePrekeyPair> {
        self.keys.one_time(id)
    }

    /// Removes a one-time prekey on its first use (X3DH §4.2: its private half must not outlive
    /// the session that used it).
    pub fn take_one_time_prekey(&mut self, id: PrekeyId) -> Option<OneTimePrekeyPair> {
        self.keys.take_one_time(id)
    }

    /// Panics if a structural invariant is broken (tests and simulation run it after each step).
    pub fn check_invariants(&self) {
        self.ops
            .check_invariants(self.config.queue_max, self.is_logged_in());
        self.cache.check_invariants();
        self.pins.check_invariants();
        assert!(
            self.keys.one_time_len() <= ONE_TIME_PREKEYS_HELD_MAX,
            "prekeys over their bound"
        );
        if let Registration::Pending(op) = self.registration {
            assert!(
                self.ops.contains(op),
                "pending registration {op:?} without its operation"
            );
        }
    }

    fn on_frame(&mut self, now: Now, frame: ReplicaFrame) {
        match (frame, self.link) {
            (
                ReplicaFrame::Challenge { nonce, replica },
                Link::ExpectChallenge { replica: ours, .. },
            ) => {
                if replica != ours {
                    // Signing a challenge that names another replica would let this one log in
                    // there as us (the replica id is in the signed bytes for that reason).
                    self.stats.unexpected_frames += 1;
                    self.link_lost(now);
                    return;
                }
                self.send(&protocol::login(&self.identity, &nonce, replica));
                let deadline = now.instant + self.config.request_timeout;
                self.link = Link::ExpectLoggedIn { replica, deadline };
            }
            (ReplicaFrame::LoggedIn { user }, Link::ExpectLoggedIn { .. })
                if user == self.user() =>
            {
                self.link = Link::LoggedIn {
                    heartbeat_at: now.instant + self.config.heartbeat_interval,
                };
                self.emit(ClientEvent::LoggedIn { user });
                self.renew_subscription();
            }
            (ReplicaFrame::LoginFailed, Link::ExpectLoggedIn { .. }) => {
                self.stats.login_failures += 1;
                self.link_lost(now);
            }
            (ReplicaFrame::Response { id, result }, Link::LoggedIn { .. }) => {
                self.on_response(now, id, result)
            }
            (ReplicaFrame::Response { .. }, _) => self.stats.unknown_responses += 1,
            (ReplicaFrame::PresencePush { user, presence }, Link::LoggedIn { .. }) => {
                self.emit(ClientEvent::PresenceChanged { user, presence });
            }
            (ReplicaFrame::MailboxChanged { last_seq }, Link::LoggedIn { .. }) => {
                self.emit(ClientEvent::MailboxChanged { last_seq });
            }
            (ReplicaFrame::Malformed, _) => self.stats.refused_frames += 1,
            (ReplicaFrame::LoggedIn { .. }, Link::ExpectLoggedIn { .. }) => {
                // Logged in as someone else: this replica cannot be trusted with our requests.
                self.stats.unexpected_frames += 1;
                self.link_lost(now);
            }
            _ => self.stats.unexpected_frames += 1,
        }
    }

    fn on_timeout(&mut self, now: Now) {
        match self.link {
            Link::ExpectChallenge { deadline, .. } | Link::ExpectLoggedIn { deadline, .. }
                if deadline <= now.instant =>
            {
                self.stats.timeouts += 1;
                self.link_lost(now);
            }
            Link::LoggedIn { .. } if self.ops.overdue(now.instant) => {
                // The replica answers `Timeout` itself when the cluster is slow, so silence past
                // our longer deadline means the link or the replica is gone.
                self.stats.timeouts += 1;
                self.link_lost(now);
            }
            Link::LoggedIn { heartbeat_at } if heartbeat_at <= now.instant => {
                self.send(&ClientFrame::Heartbeat);
                self.link = Link::LoggedIn {
                    heartbeat_at: now.instant + self.config.heartbeat_interval,
                };
            }
            _ => {}
        }
    }

    /// The link is gone (or unusable): fail over and ask for another replica.
    fn link_lost(&mut self, now: Now) {
        if self.drop_link(now) {
            self.outputs.push_back(ClientOutput::Reconnect);
        }
    }

    /// Forgets the link; requests in flight go back to the queue to be resent after the next
    /// login, each spending a retry. Returns whether there was a link.
    fn drop_link(&mut self, now: Now) -> bool {
        if std::mem::replace(&mut self.link, Link::ExpectConnected) == Link::ExpectConnected {
            return false;
        }
        for id in self.ops.in_flight() {
            self.attempt_failed(now, id, true, true, OpError::Disconnected);
        }
        self.emit(ClientEvent::Disconnected);
        true
    }

    fn send(&mut self, frame: &ClientFrame) {
        self.outputs.push_back(ClientOutput::Send(frame.encode()));
    }

    fn emit(&mut self, event: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(event));
    }
}
