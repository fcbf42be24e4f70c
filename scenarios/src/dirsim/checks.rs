//! What the directory family checks, from what clients and the attacker observed (the Raft
//! checker and identical applied state at equal index run after every replica step, in `world`):
//!
//! - **usernames**: no two users hold acknowledged registrations of one name at the same time
//!   (a tenure lasts from the acknowledgement until its holder *starts* deregistering); at the
//!   end, every acknowledged tenure not released is still in the directory;
//! - **linearizable lookups**: a linearizable lookup issued after a registration was
//!   acknowledged, and answered before its holder started deregistering, returns that holder;
//!   every answer names the user it was asked for, under a key that hashes to its id;
//! - **one-time prekeys**: none is handed out twice, and every one handed out was generated and
//!   published by its owner (checked in `world`, which holds the owners' private halves);
//! - **refusals**: a request before login, a bad login, garbage, a replayed command, a tampered
//!   signature, a command signed for another user, an invalid username and an oversized pool are
//!   each answered with their typed error (or a transient one under faults), never success; so
//!   are a fetch before login, an acknowledgement signed by another user, a replayed
//!   acknowledgement, a deposit for an unknown user and an oversized envelope;
//! - **mailboxes** ([`MailboxObserved`], ARCHITECTURE.md, "Mailboxes"): every deposit whose sender saw
//!   `Deposited` is fetched by its recipient, with identical bytes under the same seq, before the
//!   recipient acknowledges past it, and at the end after a final drain (unless the recipient
//!   deregistered or the TTL passed); one id is never delivered under two seqs, and nothing is
//!   fetched that was not deposited for that recipient; seqs increase past the cursor and a fetch
//!   returns nothing an applied acknowledgement deleted; a `MailboxFull` is true of the quotas
//!   and loses nothing acknowledged; replicas' stored bytes hold envelopes only as deposited.

use paloma_core::directory::{
    CommandError, Directory, MailboxLimits, MailboxPage, Outcome, SignedCommand,
};
use paloma_core::ids::{MailboxSeq, MessageId};
use paloma_core::raft::check::Violation;
use paloma_core::replica::protocol::{Consistency, LookupReply, Reply, RequestError};
use paloma_core::rng::DetRng;
use paloma_core::session::PrekeyId;
use paloma_core::UserId;
use std::collections::{BTreeMap, BTreeSet};

/// One holder's acknowledged registration of a name.
#[derive(Clone, Debug)]
struct Tenure {
    user: UserId,
    acked_at: u64,
    /// When its holder started deregistering (from then on the name may be free).
    released_from: Option<u64>,
}

/// What the run observed, and the counters the report prints.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Registrations acknowledged.
    pub registered: u64,
    /// Registrations refused because the name was taken.
    pub names_taken: u64,
    /// Bundles claimed, and how many came without a one-time prekey.
    pub claims: u64,
    /// Claims of an empty pool.
    pub claims_empty: u64,
    /// Lookups answered.
    pub lookups: u64,
    /// Linearizable lookups whose answer was checked against an acknowledged registration.
    pub lookups_checked: u64,
    /// Attacks sent, refused with the expected typed error, and answered only with a transient
    /// error (leader change, timeout: nothing to check).
    pub attacks_sent: u64,
    /// Attacks refused as expected.
    pub attacks_refused: u64,
    /// Attacks answered with a transient error.
    pub attacks_inconclusive: u64,
    /// The attacker's own registrations that applied (set-up, not attacks).
    pub attacker_successes: u64,
    /// Client calls refused before reaching the network (queue full and the like).
    pub refused_locally: u64,
    /// Operations failed after retries (by the client's report).
    pub failed: u64,
    /// Presence checks made at the end.
    pub presence_checked: u64,
    /// The mailbox workload and its checks.
    pub mailbox: MailboxObserved,
    tenures: BTreeMap<String, Vec<Tenure>>,
    claimed: BTreeSet<(UserId, PrekeyId)>,
}

impl Observed {
    /// Users whose registration is acknowledged and not being released (claim and subscribe
    /// targets).
    pub fn holders(&self) -> Vec<UserId> {
        self.tenures
            .values()
            .flatten()
            .filter(|t| t.released_from.is_none())
            .map(|t| t.user)
            .collect()
    }

    /// A registration of `name` by `user` was acknowledged at `at`: fails if another user holds an
    /// acknowledged, unreleased registration of it (username uniqueness).
    pub fn on_registered(&mut self, name: &str, user: UserId, at: u64) -> Result<(), Violation> {
        self.registered += 1;
        let tenures = self.tenures.entry(name.to_string()).or_default();
        if let Some(other) = tenures
            .iter()
            .find(|t| t.released_from.is_none() && t.user != user)
        {
            return Err(Violation(format!(
                "@{name} acknowledged to {user:?} while {:?} holds it since {:.3}s (username uniqueness)",
                other.user,
                other.acked_at as f64 / 1e9
            )));
        }
        if !tenures
            .iter()
            .any(|t| t.user == user && t.released_from.is_none())
        {
            tenures.push(Tenure {
                user,
                acked_at: at,
                released_from: None,
            });
        }
        Ok(())
    }

    /// `user` started deregistering at `at`: from then on its name may be free.
    pub fn on_deregistering(&mut self, user: UserId, at: u64) {
        for t in self.tenures.values_mut().flatten() {
            if t.user == user && t.released_from.is_none() {
                t.released_from = Some(at);
            }
        }
    }

    /// `user`'s deregistration was acknowledged at `at`.
    pub fn on_deregistered(&mut self, user: UserId, at: u64) {
        self.on_deregistering(user, at);
    }

    /// A lookup of `name` issued at `issued` was answered at `completed`: the answer must name the
    /// user asked for under a key hashing to its id, and a linearizable one must see every
    /// registration acknowledged before it was issued and not released before it completed.
    pub fn on_lookup(
        &mut self,
        name: &str,
        consistency: Consistency,
        issued: u64,
        completed: u64,
        reply: &LookupReply,
    ) -> Result<(), Violation> {
        self.lookups += 1;
        if let Some(view) = &reply.user {
            if view.username.as_str() != name {
                return Err(Violation(format!(
                    "a lookup of @{name} answered @{}",
                    view.username
                )));
            }
            if view.identity.user_id() != view.user {
                return Err(Violation(format!(
                    "@{name}: the record's key does not hash to its user id"
                )));
            }
        }
        if consistency != Consistency::Linearizable {
            return Ok(());
        }
        if reply.possibly_stale {
            return Err(Violation(format!(
                "a linearizable lookup of @{name} was marked possibly stale"
            )));
        }
        let binding = self.tenures.get(name).and_then(|ts| {
            ts.iter()
                .find(|t| t.acked_at < issued && t.released_from.is_none_or(|r| r > completed))
        });
        if let Some(t) = binding {
            self.lookups_checked += 1;
            let got = reply.user.as_ref().map(|v| v.user);
            if got != Some(t.user) {
                return Err(Violation(format!(
                    "linearizable lookup of @{name} issued at {:.3}s returned {got:?}, but {:?} holds it since {:.3}s (stale read)",
                    issued as f64 / 1e9,
                    t.user,
                    t.acked_at as f64 / 1e9
                )));
            }
        }
        Ok(())
    }

    /// A claim of `target`'s bundle answered: no one-time prekey is handed out twice.
    pub fn on_claim(
        &mut self,
        target: UserId,
        one_time: Option<PrekeyId>,
        pool_empty: bool,
    ) -> Result<(), Violation> {
        self.claims += 1;
        if pool_empty != one_time.is_none() {
            return Err(Violation(format!(
                "a claim of {target:?} said pool_empty={pool_empty} with one-time prekey {one_time:?}"
            )));
        }
        match one_time {
            None => self.claims_empty += 1,
            Some(id) => {
                if !self.claimed.insert((target, id)) {
                    return Err(Violation(format!(
                        "one-time prekey {id:?} of {target:?} was handed out twice"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A registration was refused because the name was taken.
    pub fn on_taken(&mut self) {
        self.names_taken += 1;
    }

    /// An operation failed after the client's retries.
    pub fn on_failed(&mut self) {
        self.failed += 1;
    }

    /// At the end, on a replica's directory: its invariants hold, and every acknowledged registration
    /// not released is still there.
    pub fn check_final(&self, dir: &Directory) -> Result<(), Violation> {
        dir.check_invariants();
        for (name, tenures) in &self.tenures {
            for t in tenures.iter().filter(|t| t.released_from.is_none()) {
                let parsed = paloma_core::directory::Username::parse(name)
                    .expect("workload names are valid");
                let holder = dir.lookup(&parsed).map(|r| r.user);
                if holder != Some(t.user) {
                    return Err(Violation(format!(
                        "@{name} was acknowledged to {:?} and never released, but the directory holds it for {holder:?}",
                        t.user
                    )));
                }
            }
        }
        Ok(())
    }

    pub(super) fn on_attack_result(
        &mut self,
        kind: &AttackKind,
        result: &Result<Reply, RequestError>,
    ) -> Result<(), Violation> {
        let transient = matches!(
            result,
            Err(RequestError::NoLeader
                | RequestError::LeaderChanged
                | RequestError::Timeout
                | RequestError::Busy)
        );
        if transient {
            self.attacks_inconclusive += 1;
            return Ok(());
        }
        let expected = match kind {
            AttackKind::BeforeLogin | AttackKind::FetchBeforeLogin => {
                matches!(result, Err(RequestError::NotLoggedIn))
            }
            AttackKind::ForeignAck => matches!(result, Err(RequestError::WrongSigner)),
            AttackKind::AckReplay => matches!(
                result,
                Ok(Reply::Command(Err(CommandError::Replayed { .. })))
            ),
            AttackKind::DepositUnknown => {
                matches!(result, Ok(Reply::Command(Err(CommandError::UnknownUser))))
            }
            AttackKind::DepositOversized => matches!(result, Err(RequestError::TooLarge)),
            AttackKind::Replay => matches!(
                result,
                Ok(Reply::Command(Err(CommandError::Replayed { .. })))
            ),
            AttackKind::Tampered => {
                matches!(result, Ok(Reply::Command(Err(CommandError::BadSignature))))
            }
            AttackKind::OtherSigner => matches!(result, Err(RequestError::WrongSigner)),
            AttackKind::InvalidName => matches!(result, Err(RequestError::InvalidUsername(_))),
            // A registration whose first attempt's answer was lost may have applied: then the
            // oversized one meets `AlreadyRegistered` first (still a refusal that changes nothing,
            // which the end check of the attacker's counter confirms).
            AttackKind::Oversized => matches!(
                result,
                Ok(Reply::Command(Err(
                    CommandError::TooManyPrekeys { .. } | CommandError::AlreadyRegistered
                ))) | Err(RequestError::TooLarge)
            ),
            _ => false,
        };
        if !expected {
            return Err(Violation(format!(
                "attack {kind:?} was answered {result:?}"
            )));
        }
        if matches!(
            result,
            Ok(Reply::Command(Ok(Outcome::Done
                | Outcome::Registered { .. }
                | Outcome::Deposited { .. }
                | Outcome::Acked { .. })))
        ) {
            return Err(Violation(format!("attack {kind:?} succeeded")));
        }
        self.attacks_refused += 1;
        Ok(())
    }
}

/// What the attacker does on its next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attack {
    /// A request before logging in.
    BeforeLogin,
    /// A mailbox fetch before logging in.
    FetchBeforeLogin,
    /// A login whose signature covers another replica.
    BadLogin,
    /// A 20 KiB frame of junk.
    Garbage,
    /// Log in properly, then this.
    LoggedIn(LoggedInAttack),
}

/// The attacks that need a login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LoggedInAttack {
    /// Set-up: the attacker registers itself (its command is replayed later).
    RegisterSelf,
    /// Its applied registration, sent again in a new de-duplication session.
    Replay,
    /// A command whose body was changed after signing.
    Tampered,
    /// A command whose signer is not the logged-in user.
    OtherSigner,
    /// A registration of an invalid username.
    InvalidName,
    /// More one-time prekeys than a pool holds.
    Oversized,
    /// Set-up: the attacker acknowledges its own (empty) mailbox (replayed later).
    AckSelf,
    /// Its applied acknowledgement, sent again in a new de-duplication session.
    AckReplay,
    /// An acknowledgement a client signed (captured on the wire), sent on the attacker's login.
    ForeignAck,
    /// A deposit for a user who does not exist.
    DepositUnknown,
    /// A deposit one byte over the envelope bound.
    DepositOversized,
}

impl Attack {
    pub(super) fn pick(rng: &mut DetRng, registered: bool, acked: bool) -> Attack {
        use LoggedInAttack as L;
        if !registered && rng.below(2) == 0 {
            return Attack::LoggedIn(L::RegisterSelf);
        }
        match rng.below(13) {
            0 => Attack::BeforeLogin,
            1 => Attack::BadLogin,
            2 => Attack::Garbage,
            3 if registered => Attack::LoggedIn(L::Replay),
            4 => Attack::LoggedIn(L::OtherSigner),
            5 => Attack::LoggedIn(L::InvalidName),
            6 => Attack::LoggedIn(L::Oversized),
            7 => Attack::FetchBeforeLogin,
            8 if registered && acked => Attack::LoggedIn(L::AckReplay),
            8 if registered => Attack::LoggedIn(L::AckSelf),
            9 => Attack::LoggedIn(L::ForeignAck),
            10 => Attack::LoggedIn(L::DepositUnknown),
            11 => Attack::LoggedIn(L::DepositOversized),
            _ => Attack::LoggedIn(L::Tampered),
        }
    }
}

/// What the attacker is waiting for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum AttackKind {
    BeforeLogin,
    BadLogin,
    Garbage,
    Login(Attack),
    Register(Box<SignedCommand>),
    Replay,
    Tampered,
    OtherSigner,
    InvalidName,
    Oversized,
    FetchBeforeLogin,
    AckSelf(Box<SignedCommand>),
    AckReplay,
    ForeignAck,
    DepositUnknown,
    DepositOversized,
}

// ----- mailboxes ---------------------------------------------------------------------------

/// Where the workload's envelopes carry their marker: random bytes, then [`ENVELOPE_MARKER`],
/// the sender's client index (2 bytes, little-endian) and its per-sender counter (4 bytes), then
/// more random bytes. Opaque to the replicas: nothing in them means anything yet (E2E is a later
/// slice), but the marker lets the stored-bytes scan find every copy.
pub const ENVELOPE_MARKER: [u8; 8] = *b"\xA7ENVLP\x5E\x01";

/// One deposit the workload sent.
#[derive(Clone, Debug)]
struct SentDeposit {
    recipient: UserId,
    /// The recipient's registration epoch when it was sent (deposits go to holders only).
    epoch: u64,
    envelope: Vec<u8>,
    /// Where the marker is in `envelope`.
    marker_at: usize,
    issued_at: u64,
    /// `Deposited { seq, expires_unix_ms }`, once the sender saw it.
    acked: Option<(MailboxSeq, u64)>,
    /// Acknowledged before some deposit to the same recipient met `MailboxFull`.
    before_full: bool,
}

/// What the mailbox workload observed (ARCHITECTURE.md, "Mailboxes": a deposit acknowledged as *stored* reaches
/// its recipient exactly once).
#[derive(Clone, Debug, Default)]
pub struct MailboxObserved {
    /// Deposits sent (not counting the attacker's).
    pub sent: u64,
    /// Deposits the sender saw acknowledged (`Deposited`).
    pub acked: u64,
    /// Acknowledged deposits found fetched, with identical bytes and seq, by the final check.
    pub fetched: u64,
    /// Acknowledged deposits excused at the end: the recipient deregistered, or the TTL passed.
    pub excused: u64,
    /// Envelopes fetched (with repeats).
    pub envelopes_fetched: u64,
    /// Fetches answered.
    pub fetches: u64,
    /// Acknowledgements applied.
    pub acks: u64,
    /// `MailboxFull` refusals seen by senders.
    pub full: u64,
    /// `MailboxChanged` pushes the clients received.
    pub pushes: u64,
    /// Envelope copies found and verified in replicas' stored bytes.
    pub stored_copies: u64,
    /// Deposits sent again under the same id.
    pub resent: u64,
    deposits: BTreeMap<MessageId, SentDeposit>,
    /// `(sender index, counter)` → message id, for the stored-bytes scan.
    by_marker: BTreeMap<(u16, u32), MessageId>,
    /// `(recipient, epoch)` → message id → the seq it was fetched under.
    delivered: BTreeMap<(UserId, u64), BTreeMap<MessageId, MailboxSeq>>,
    /// `(recipient, epoch)` → the highest `upto` of an acknowledgement sent.
    ack_sent: BTreeMap<(UserId, u64), MailboxSeq>,
    /// When each user started deregistering.
    deregistering: BTreeMap<UserId, Vec<u64>>,
}

/// An envelope's expiry is excused from delivery once the directory's clock (the max of leader
/// stamps, which drift: `dir_clock_unix_ms` is the highest any replica applied) is within this
/// of it.
const EXPIRY_MARGIN_MS: u64 = 1_000;

impl MailboxObserved {
    /// A deposit was sent.
    #[allow(clippy::too_many_arguments)]
    pub fn on_sent(
        &mut self,
        id: MessageId,
        marker: (u16, u32),
        recipient: UserId,
        epoch: u64,
        envelope: Vec<u8>,
        marker_at: usize,
        at: u64,
    ) {
        self.sent += 1;
        self.by_marker.insert(marker, id);
        self.deposits.insert(
            id,
            SentDeposit {
                recipient,
                epoch,
                envelope,
                marker_at,
                issued_at: at,
                acked: None,
                before_full: false,
            },
        );
    }

    /// A deposit sent again under its id (an outbox resending after a crash, say): while the
    /// mailbox holds the first copy it must answer that copy's seq and store nothing.
    pub fn on_resent(&mut self) {
        self.sent += 1;
        self.resent += 1;
    }

    /// Whether the recipient acknowledged past `seq`: then the mailbox no longer holds that copy,
    /// and a resend of its id legitimately stores a new one under a new seq (exactly once holds
    /// while a copy is held; the delivery layer de-duplicates by id, ARCHITECTURE.md, "Mailboxes", rule 6).
    fn released(&self, key: (UserId, u64), seq: MailboxSeq) -> bool {
        self.ack_sent.get(&key).is_some_and(|upto| *upto >= seq)
    }

    /// `user` started deregistering at `at`: what was deposited for them before may vanish.
    pub fn on_deregistering(&mut self, user: UserId, at: u64) {
        self.deregistering.entry(user).or_default().push(at);
    }

    fn excused(&self, d: &SentDeposit, dir_clock_unix_ms: u64) -> bool {
        let deregistered = self
            .deregistering
            .get(&d.recipient)
            .is_some_and(|ts| ts.iter().any(|t| *t >= d.issued_at));
        let expired = d
            .acked
            .is_some_and(|(_, expires)| expires <= dir_clock_unix_ms + EXPIRY_MARGIN_MS);
        deregistered || expired
    }

    /// The sender saw `Deposited { seq, expires }` for `id`.
    pub fn on_deposited(
        &mut self,
        id: MessageId,
        seq: MailboxSeq,
        expires_unix_ms: u64,
        dir_clock_unix_ms: u64,
    ) -> Result<(), Violation> {
        self.acked += 1;
        let d = self
            .deposits
            .get_mut(&id)
            .ok_or_else(|| Violation(format!("Deposited for {id:?}, which was never sent")))?;
        let key = (d.recipient, d.epoch);
        let first = d.acked.map(|(s, _)| s);
        // A first copy that expired (and was purged) is released too.
        let first_expired = d
            .acked
            .is_some_and(|(_, e)| e <= dir_clock_unix_ms + EXPIRY_MARGIN_MS);
        if let Some(first) = first {
            if first != seq && !first_expired && !self.released(key, first.min(seq)) {
                return Err(Violation(format!(
                    "deposit {id:?} acknowledged under {first:?} and then {seq:?} while the first copy was held (a second copy)"
                )));
            }
        }
        let d = self.deposits.get_mut(&id).expect("present above");
        d.acked = Some((seq, expires_unix_ms));
        let d = d.clone();
        let got = self.delivered.get(&key).and_then(|m| m.get(&id)).copied();
        if let Some(got) = got {
            if got != seq && !first_expired && !self.released(key, got.min(seq)) {
                return Err(Violation(format!(
                    "deposit {id:?} acknowledged under {seq:?} but fetched under {got:?} (exactly once)"
                )));
            }
        } else if self.ack_sent.get(&key).is_some_and(|upto| *upto >= seq)
            && !self.excused(&d, dir_clock_unix_ms)
        {
            return Err(Violation(format!(
                "the recipient {:?} acknowledged its mailbox past {seq:?} without fetching deposit {id:?}",
                d.recipient
            )));
        }
        Ok(())
    }

    /// A deposit for `recipient` of `len` bytes met `MailboxFull { messages, bytes }`: the
    /// refusal must be true of the limits, and nothing acknowledged before it may be lost.
    pub fn on_full(
        &mut self,
        recipient: UserId,
        messages: u32,
        bytes: u64,
        len: usize,
        limits: &MailboxLimits,
    ) -> Result<(), Violation> {
        self.full += 1;
        let over_count = messages as usize >= limits.messages_max;
        let over_bytes = bytes + len as u64 > limits.bytes_max;
        if messages as usize > limits.messages_max
            || bytes > limits.bytes_max
            || !(over_count || over_bytes)
        {
            return Err(Violation(format!(
                "MailboxFull {{ messages: {messages}, bytes: {bytes} }} for a {len}-byte envelope with quotas {} messages, {} bytes",
                limits.messages_max, limits.bytes_max
            )));
        }
        for d in self.deposits.values_mut() {
            if d.recipient == recipient && d.acked.is_some() {
                d.before_full = true;
            }
        }
        Ok(())
    }

    /// `recipient` (registration `epoch`) fetched `page` after `after`, having seen its
    /// acknowledgements applied up to `acked_upto` when it asked.
    pub fn on_fetched(
        &mut self,
        recipient: UserId,
        epoch: u64,
        after: MailboxSeq,
        acked_upto: MailboxSeq,
        page: &MailboxPage,
        dir_clock_unix_ms: u64,
    ) -> Result<(), Violation> {
        self.fetches += 1;
        let mut previous = after;
        for m in &page.messages {
            self.envelopes_fetched += 1;
            if m.seq <= previous {
                return Err(Violation(format!(
                    "{recipient:?} fetched after {after:?} and got {:?} after {previous:?} (seqs must increase past the cursor)",
                    m.seq
                )));
            }
            previous = m.seq;
            if m.seq <= acked_upto {
                return Err(Violation(format!(
                    "{recipient:?} fetched {:?}, which its applied acknowledgement up to {acked_upto:?} deleted",
                    m.seq
                )));
            }
            let d = self.deposits.get(&m.message_id).ok_or_else(|| {
                Violation(format!(
                    "{recipient:?} fetched {:?} under an id never deposited (integrity)",
                    m.seq
                ))
            })?;
            if d.recipient != recipient || d.envelope != m.envelope {
                return Err(Violation(format!(
                    "{recipient:?} fetched {:?} ({:?}) whose recipient or bytes differ from the deposit's (integrity)",
                    m.seq, m.message_id
                )));
            }
            let key = (recipient, epoch);
            let expired = d
                .acked
                .is_some_and(|(_, e)| e <= dir_clock_unix_ms + EXPIRY_MARGIN_MS);
            if let Some((seq, _)) = d.acked {
                if seq != m.seq && !expired && !self.released(key, seq.min(m.seq)) {
                    return Err(Violation(format!(
                        "{:?} was acknowledged under {seq:?} and fetched under {:?} (exactly once)",
                        m.message_id, m.seq
                    )));
                }
            }
            let released = self.ack_sent.get(&key).copied();
            let delivered = self.delivered.entry(key).or_default();
            if let Some(first) = delivered.insert(m.message_id, m.seq) {
                if first != m.seq && !expired && released.is_none_or(|upto| upto < first.min(m.seq))
                {
                    return Err(Violation(format!(
                        "{:?} delivered to {recipient:?} under {first:?} and {:?} (exactly once)",
                        m.message_id, m.seq
                    )));
                }
            }
        }
        Ok(())
    }

    /// `recipient` is about to acknowledge up to `upto`: every acknowledged deposit at or below it
    /// must have been fetched (and recorded: "persisted") first.
    pub fn on_ack_sent(
        &mut self,
        recipient: UserId,
        epoch: u64,
        upto: MailboxSeq,
        dir_clock_unix_ms: u64,
    ) -> Result<(), Violation> {
        let key = (recipient, epoch);
        let delivered = self.delivered.get(&key);
        for (id, d) in &self.deposits {
            let Some((seq, _)) = d.acked else { continue };
            if d.recipient != recipient || d.epoch != epoch || seq > upto {
                continue;
            }
            if delivered.and_then(|m| m.get(id)).is_none() && !self.excused(d, dir_clock_unix_ms) {
                return Err(Violation(format!(
                    "{recipient:?} acknowledges up to {upto:?} but never fetched deposit {id:?} (acknowledged under {seq:?})"
                )));
            }
        }
        let sent = self.ack_sent.entry(key).or_default();
        *sent = (*sent).max(upto);
        Ok(())
    }

    /// At the end, after the final drain: every acknowledged deposit not excused was fetched by its
    /// recipient under its seq.
    pub fn check_final(&mut self, dir_clock_unix_ms: u64) -> Result<(), Violation> {
        let (mut fetched, mut excused) = (0, 0);
        for (id, d) in &self.deposits {
            let Some((seq, _)) = d.acked else { continue };
            if self.excused(d, dir_clock_unix_ms) {
                excused += 1;
                continue;
            }
            let got = self
                .delivered
                .get(&(d.recipient, d.epoch))
                .and_then(|m| m.get(id));
            let resent_after_release =
                got.is_some_and(|g| self.released((d.recipient, d.epoch), (*g).min(seq)));
            if got != Some(&seq) && !resent_after_release {
                return Err(Violation(format!(
                    "deposit {id:?} to {:?}, acknowledged under {seq:?}{}, was never delivered after the final drain (got {got:?})",
                    d.recipient,
                    if d.before_full { " before a MailboxFull" } else { "" }
                )));
            }
            fetched += 1;
        }
        self.fetched = fetched;
        self.excused = excused;
        Ok(())
    }

    /// Scans bytes a replica stores (snapshot, log entries) for envelopes: every marker must sit
    /// inside an exact copy of the envelope deposited with it. This slice has no plaintext to
    /// look for; the E2E slice adds a plaintext marker to the same scan.
    pub fn scan_stored(&mut self, what: &str, bytes: &[u8]) -> Result<(), Violation> {
        let m = ENVELOPE_MARKER.len();
        let mut from = 0;
        while let Some(off) = find(&bytes[from..], &ENVELOPE_MARKER) {
            let at = from + off;
            from = at + 1;
            let Some(tail) = bytes.get(at + m..at + m + 6) else {
                return Err(Violation(format!("{what}: a truncated envelope marker")));
            };
            let sender = u16::from_le_bytes([tail[0], tail[1]]);
            let counter = u32::from_le_bytes([tail[2], tail[3], tail[4], tail[5]]);
            let d = self
                .by_marker
                .get(&(sender, counter))
                .and_then(|id| self.deposits.get(id))
                .ok_or_else(|| {
                    Violation(format!(
                        "{what}: an envelope marker of client {sender} #{counter}, never deposited"
                    ))
                })?;
            let start = at.checked_sub(d.marker_at);
            let copy = start.and_then(|s| bytes.get(s..s + d.envelope.len()));
            if copy != Some(d.envelope.as_slice()) {
                return Err(Violation(format!(
                    "{what}: envelope of client {sender} #{counter} stored other than deposited"
                )));
            }
            self.stored_copies += 1;
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
