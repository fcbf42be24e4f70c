//! The operations the application asked for, from acceptance to their final event: the queue, the
//! requests in flight, the retry budget and backoff. It decides nothing about the directory; the
//! client (`mod.rs`, `command.rs`) tells it what each answer means.

use super::config::ClientConfig;
use super::ClientTimer;
use crate::directory::{CommandBody, CommandError, SignedCommand, UsernameError};
use crate::ids::{MailboxSeq, MessageId, RequestId};
use crate::replica::protocol::{Consistency, LookupKey, RequestError};
use crate::rng::DetRng;
use crate::session::{InitiateError, PrekeyId, SignedPrekeyPair};
use crate::time::Instant;
use crate::UserId;
use std::collections::BTreeMap;
use std::time::Duration;

/// An accepted operation, returned by every API call and named in its final event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Why an API call was refused at once; nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The username is not acceptable.
    #[error("invalid username: {0}")]
    InvalidUsername(UsernameError),
    /// As many operations are pending as the configuration allows.
    #[error("at most {max} operations may be pending")]
    QueueFull {
        /// `queue_max`.
        max: usize,
    },
    /// The command needs a registration (done, or at least queued) first.
    #[error("register first")]
    NotRegistered,
    /// This identity is registered, or a registration is pending.
    #[error("already registered, or a registration is pending")]
    AlreadyRegistered,
    /// Too many or too long addresses.
    #[error("at most {max} addresses of at most {bytes_max} bytes", max = crate::directory::command::ADDRESSES_MAX, bytes_max = crate::directory::command::ADDRESS_BYTES_MAX)]
    BadAddresses,
    /// Too many contacts.
    #[error("at most {} contacts", crate::directory::command::CONTACTS_MAX)]
    TooManyContacts,
    /// A publish must carry 1 to `max` one-time prekeys.
    #[error("publish 1 to {max} one-time prekeys, not {requested}")]
    PrekeyCount {
        /// How many were asked for.
        requested: usize,
        /// `ONE_TIME_PREKEYS_MAX`.
        max: usize,
    },
    /// The client holds as many unused one-time prekeys as it may.
    #[error("at most {max} one-time prekeys may be held")]
    TooManyPrekeysHeld {
        /// `ONE_TIME_PREKEYS_HELD_MAX`.
        max: usize,
    },
    /// The request would not fit in one client frame.
    #[error("the request takes {bytes} bytes; a frame holds {max}")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// `CLIENT_FRAME_BYTES_MAX`.
        max: usize,
    },
    /// `accept_key_change`: no changed key awaits a decision for this name.
    #[error("no key change is pending for this username")]
    NoKeyChange,
    /// `deposit`: the envelope is larger than a mailbox stores.
    #[error("an envelope of {len} bytes; a mailbox stores at most {max}")]
    EnvelopeTooLarge {
        /// Its length.
        len: usize,
        /// `ENVELOPE_BYTES_MAX`.
        max: usize,
    },
}

/// Why an accepted operation failed (the payload of `ClientEvent::Failed`).
///
/// After `Request(LeaderChanged | Timeout)` or `Disconnected` a command's outcome is unknown: it
/// may have been applied. A lookup of oneself shows the counter and keys the directory holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The directory refused the command; it changed nothing (unless an earlier attempt of the same
    /// operation, whose outcome was unknown, applied: `Replayed` and `Expired` then say so).
    #[error("the directory refused the command: {0}")]
    Command(CommandError),
    /// The replica refused the request, or retries ran out after this answer.
    #[error("the request failed: {0}")]
    Request(RequestError),
    /// Retries ran out while the link was lost with the request in flight.
    #[error("the link to the replica was lost with the request in flight")]
    Disconnected,
    /// A claimed bundle's identity key belongs to another user than the one claimed.
    #[error("the claimed bundle belongs to another user")]
    BundleForWrongUser,
    /// A claimed bundle's signed prekey does not verify; it was not used.
    #[error("the claimed bundle does not verify: {0}")]
    BadBundle(InitiateError),
    /// A claimed bundle's identity key differs from the one pinned for the user (see
    /// `ClientEvent::KeyChanged`); it was not used.
    #[error("the claimed bundle's identity key differs from the pinned one")]
    KeyNotTrusted,
}

/// What an operation does.
#[derive(Debug)]
pub(crate) enum OpKind {
    /// A signed directory command (at most one in flight). Boxed: it is ten times a read's size.
    Command(Box<PendingCommand>),
    /// A read.
    Lookup {
        /// Whom.
        key: LookupKey,
        /// How fresh.
        consistency: Consistency,
    },
    /// Replace the presence subscription. A `renewal` is the client's own re-subscription after
    /// a new login (subscriptions belong to a connection): it ends without an event.
    Subscribe {
        /// Whose presence.
        users: Vec<UserId>,
        /// Sent by the client itself.
        renewal: bool,
    },
    /// A deposit in another user's mailbox: a write, so it waits its turn with the commands
    /// (one `(session, seq)` in flight at a time, thesis §6.3). Boxed: it carries the envelope.
    Deposit(Box<PendingDeposit>),
    /// A page of this user's mailbox (a read).
    FetchMailbox {
        /// The cursor.
        after: MailboxSeq,
        /// The most envelopes wanted.
        max: u32,
    },
}

impl OpKind {
    /// Whether the operation is a write, which goes out only at the head of the write queue.
    pub(crate) fn is_write(&self) -> bool {
        matches!(self, OpKind::Command(_) | OpKind::Deposit(_))
    }
}

/// A deposit and its de-duplication slot.
#[derive(Debug)]
pub(crate) struct PendingDeposit {
    pub(crate) to: UserId,
    pub(crate) message_id: MessageId,
    pub(crate) envelope: Vec<u8>,
    /// `(session, seq)`, fixed at the first send and reused by every retry; moved to a new
    /// session only after `SessionExpired` (a re-deposit of the same message id is idempotent
    /// while the mailbox holds it, so that cannot store it twice).
    pub(crate) slot: Option<(u64, u64)>,
}

/// A directory command and the private keys its body publishes.
#[derive(Debug)]
pub(crate) struct PendingCommand {
    pub(crate) body: CommandBody,
    /// The signed prekey a `Register` or `RotateSignedPrekey` publishes: installed once the
    /// command applied or may have applied, dropped if the directory definitely refused it.
    pub(crate) signed_prekey: Option<SignedPrekeyPair>,
    /// One-time prekeys the body publishes (already held): dropped on a definite refusal.
    pub(crate) one_time: Vec<PrekeyId>,
    /// The signed form and its de-duplication slot, fixed at the first send and reused by every
    /// retry (Raft thesis §6.3); replaced only when no attempt can have applied.
    pub(crate) signed: Option<Signed>,
    /// An attempt ended without an answer (lost link, `LeaderChanged`, `Timeout`): it may have
    /// applied, so the command must not be re-signed under a new counter.
    pub(crate) maybe_applied: bool,
}

/// A signed command in its de-duplication slot.
#[derive(Clone, Debug)]
pub(crate) struct Signed {
    pub(crate) session: u64,
    pub(crate) seq: u64,
    pub(crate) command: SignedCommand,
}

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpState {
    /// Waiting to be sent (for the login, or for the command ahead of it).
    Queued,
    /// Waiting to be retried.
    Backoff { until: Instant },
    /// Sent; unanswered.
    InFlight {
        request: RequestId,
        deadline: Instant,
    },
}

/// One accepted operation.
#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) kind: OpKind,
    pub(crate) state: OpState,
    /// Retries spent (attempts after the first).
    pub(crate) retries: u32,
}

impl Op {
    pub(crate) fn command(&mut self) -> Option<&mut PendingCommand> {
        match &mut self.kind {
            OpKind::Command(c) => Some(c),
            _ => None,
        }
    }
}

/// The table of pending operations, in acceptance order.
#[derive(Debug)]
pub(crate) struct Ops {
    ops: BTreeMap<OpId, Op>,
    /// The request in flight for an operation: answers are matched by it.
    requests: BTreeMap<RequestId, OpId>,
    next_op: u64,
    /// Never reused for the client's life, so an answer from an old link cannot be taken for one
    /// on the new link.
    next_request: u64,
    jitter: DetRng,
}

impl Ops {
    pub(crate) fn new(seed: u64) -> Ops {
        Ops {
            ops: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_op: 1,
            next_request: 1,
            jitter: DetRng::fork(seed, "client-retry"),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn push(&mut self, kind: OpKind) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        let op = Op {
            kind,
            state: OpState::Queued,
            retries: 0,
        };
        self.ops.insert(id, op);
        id
    }

    pub(crate) fn contains(&self, id: OpId) -> bool {
        self.ops.contains_key(&id)
    }

    /// Whether a subscription is queued or in flight.
    pub(crate) fn has_subscribe(&self) -> bool {
        self.ops
            .values()
            .any(|op| matches!(op.kind, OpKind::Subscribe { .. }))
    }

    pub(crate) fn get(&self, id: OpId) -> Option<&Op> {
        self.ops.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: OpId) -> Option<&mut Op> {
        self.ops.get_mut(&id)
    }

    /// Finishes `id`: it leaves the table.
    pub(crate) fn remove(&mut self, id: OpId) -> Op {
        let op = self.ops.remove(&id).expect("removing a known operation");
        if let OpState::InFlight { request, .. } = op.state {
            self.requests.remove(&request);
        }
        op
    }

    /// The operation request `id` belongs to, if it is in flight.
    pub(crate) fn by_request(&self, id: RequestId) -> Option<OpId> {
        self.requests.get(&id).copied()
    }

    /// The operations to send now, in order: every due read, and the oldest write (command or
    /// deposit) if it is due. Writes wait for those before them (the directory wants rising
    /// counters, and a de-duplication session one request at a time).
    pub(crate) fn due(&self, now: Instant) -> Vec<OpId> {
        let head = self.head_command();
        self.ops
            .iter()
            .filter(|(id, op)| {
                let ready = match op.state {
                    OpState::Queued => true,
                    OpState::Backoff { until } => until <= now,
                    OpState::InFlight { .. } => false,
                };
                ready && (!op.kind.is_write() || Some(**id) == head)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    fn head_command(&self) -> Option<OpId> {
        self.ops
            .iter()
            .find(|(_, op)| op.kind.is_write())
            .map(|(id, _)| *id)
    }

    /// Records that `id` was sent; returns the request id to send it under.
    pub(crate) fn sent(&mut self, id: OpId, deadline: Instant) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        let op = self.ops.get_mut(&id).expect("sending a known operation");
        assert!(
            !matches!(op.state, OpState::InFlight { .. }),
            "{id:?} sent twice"
        );
        op.state = OpState::InFlight { request, deadline };
        self.requests.insert(request, id);
        request
    }

    /// Spends one retry of `id`: it goes back to wait `backoff` (zero: send at the next chance).
    /// Returns `false`, changing nothing, when the budget is spent.
    pub(crate) fn retry(
        &mut self,
        id: OpId,
        now: Instant,
        immediate: bool,
        config: &ClientConfig,
    ) -> bool {
        let op = self.ops.get_mut(&id).expect("retrying a known operation");
        if op.retries >= config.retries_max {
            return false;
        }
        op.retries += 1;
        if let OpState::InFlight { request, .. } = op.state {
            self.requests.remove(&request);
        }
        op.state = if immediate {
            OpState::Queued
        } else {
            let delay = backoff(config, op.retries, &mut self.jitter);
            OpState::Backoff { until: now + delay }
        };
        true
    }

    /// The operations in flight, oldest first (the link was lost: each must be retried or failed).
    pub(crate) fn in_flight(&self) -> Vec<OpId> {
        let mut ids: Vec<OpId> = self.requests.values().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest deadline: of a request in flight, and (when `sending`, i.e. logged in) of a
    /// backoff. A backoff that ends while logged out waits for the login, so it is no deadline.
    pub(crate) fn next_deadline(&self, sending: bool) -> Option<(Instant, ClientTimer)> {
        self.ops
            .values()
            .filter_map(|op| match op.state {
                OpState::InFlight { deadline, .. } => Some((deadline, ClientTimer::Request)),
                OpState::Backoff { until } if sending => Some((until, ClientTimer::Retry)),
                _ => None,
            })
            .min_by_key(|(at, _)| *at)
    }

    /// Whether a request in flight has gone unanswered past its deadline.
    pub(crate) fn overdue(&self, now: Instant) -> bool {
        self.ops
            .values()
            .any(|op| matches!(op.state, OpState::InFlight { deadline, .. } if deadline <= now))
    }

    pub(crate) fn check_invariants(&self, queue_max: usize, logged_in: bool) {
        assert!(
            self.ops.len() <= queue_max,
            "{} operations over queue_max {queue_max}",
            self.ops.len()
        );
        let mut commands_started = 0;
        let mut in_flight = 0;
        for (id, op) in &self.ops {
            if op.kind.is_write() && op.state != OpState::Queued {
                commands_started += 1;
                assert_eq!(
                    Some(*id),
                    self.head_command(),
                    "{id:?} started behind an older command"
                );
            }
            if let OpState::InFlight { request, .. } = op.state {
                in_flight += 1;
                assert!(logged_in, "{id:?} in flight while logged out");
                assert_eq!(
                    self.requests.get(&request),
                    Some(id),
                    "request index of {id:?}"
                );
            }
        }
        assert!(
            commands_started <= 1,
            "{commands_started} writes started at once"
        );
        assert_eq!(in_flight, self.requests.len(), "request index out of step");
    }
}

/// Exponential backoff with "equal jitter": the `retries`-th wait is drawn uniformly from
/// `[d/2, d]` with `d = initial · 2^(retries-1)` capped at `max`, so clients that failed together
/// do not retry together, and no wait is shorter than half the nominal one.
pub(crate) fn backoff(config: &ClientConfig, retries: u32, jitter: &mut DetRng) -> Duration {
    let doublings = retries.saturating_sub(1).min(31);
    let nominal = config
        .retry_backoff_initial
        .saturating_mul(1 << doublings)
        .min(config.retry_backoff_max);
    let nanos = u64::try_from(nominal.as_nanos()).unwrap_or(u64::MAX);
    let half = nanos / 2;
    Duration::from_nanos(half + jitter.below(nanos - half + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let config = ClientConfig::default();
        let mut rng = DetRng::fork(1, "t");
        for retries in 1..12u32 {
            let nominal = (config.retry_backoff_initial * 2u32.pow(retries - 1))
                .min(config.retry_backoff_max);
            for _ in 0..20 {
                let d = backoff(&config, retries, &mut rng);
                assert!(
                    d >= nominal / 2 && d <= nominal,
                    "retry {retries}: {d:?} vs {nominal:?}"
                );
            }
        }
    }

    #[test]
    fn only_the_oldest_command_is_due() {
        let body = || {
            OpKind::Command(Box::new(PendingCommand {
                body: CommandBody::Deregister,
                signed_prekey: None,
                one_time: vec![],
                signed: None,
                maybe_applied: false,
            }))
        };
        let mut ops = Ops::new(3);
        let first = ops.push(body());
        let _second = ops.push(body());
        let read = ops.push(OpKind::Subscribe {
            users: vec![],
            renewal: false,
        });
        let now = Instant::from_millis(1);
        assert_eq!(ops.due(now), vec![first, read]);
        let request = ops.sent(first, Instant::from_millis(10));
        assert_eq!(ops.by_request(request), Some(first));
        assert_eq!(ops.due(now), vec![read]);
        assert!(ops.retry(first, now, false, &ClientConfig::default()));
        assert_eq!(ops.by_request(request), None);
        assert!(ops
            .next_deadline(true)
            .is_some_and(|(at, why)| at > now && why == ClientTimer::Retry));
        assert_eq!(ops.next_deadline(false), None);
        ops.check_invariants(3, true);
    }
}
