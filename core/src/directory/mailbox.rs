//! Offline mailboxes (ARCHITECTURE.md, "Mailboxes", rules 3-4): an owned part of the
//! [`Directory`](super::Directory), changed only by applying committed entries, so every replica
//! holds the same envelopes under the same seqs and purges them at the same directory time.
//!
//! A mailbox belongs to a registered user and lives as long as the registration: an emptied
//! mailbox keeps its last seq, so seqs are never reused; deregistering deletes it. Every limit
//! here decides what `apply` answers, so they are constants (tests lower them through
//! [`MailboxLimits`]), never per-node configuration (ARCHITECTURE.md, "Replicated settings").
//! Nothing here is a `HashMap`, and the work of one apply is bounded: a deposit touches one
//! envelope, an acknowledgement or a deregistration at most one mailbox's quota, a purge at most
//! [`MAILBOX_PURGE_PER_APPLY_MAX`] envelopes found through the expiry index.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::command::{CommandError, Deposit};
use crate::ids::{MailboxSeq, MessageId, UserId};
use crate::raft::state_machine::SnapshotDecodeError;

/// The largest envelope a mailbox stores. 8 KiB holds a text message of a few thousand
/// characters with its Double Ratchet header, MAC and padding; attachments travel another way
/// (ARCHITECTURE.md, "Mailboxes"). A deposit entry of this size fits in one proposal
/// (`DEPOSIT_OVERHEAD_BYTES_MAX`), and a fetch reply always has room for one.
pub const ENVELOPE_BYTES_MAX: usize = 8 * 1024;
/// Envelopes one mailbox holds. 1,000 is a month offline at over 30 messages a day, the TTL's
/// span; a sender past it gets `MailboxFull` and shows it.
pub const MAILBOX_MESSAGES_MAX: usize = 1_000;
/// Envelope bytes one mailbox holds: 2 MiB, 1,000 messages of 2 KiB. Large envelopes reach this
/// before the count (256 of the largest).
pub const MAILBOX_BYTES_MAX: u64 = 2 * 1024 * 1024;
/// Envelope bytes all mailboxes hold together. Every replica keeps them in memory and in every
/// snapshot, so this bounds both: 256 MiB, a quarter of Raft's default `snapshot_bytes_max`.
pub const MAILBOXES_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Envelopes all mailboxes hold together: 262,144, about 40 MiB of per-envelope overhead in
/// memory (the maps, the indexes) on top of the bytes.
pub const MAILBOXES_MESSAGES_MAX: u64 = 262_144;
/// How long an unacknowledged envelope stays, from the leader-stamped time of its deposit: 30
/// days (ARCHITECTURE.md, "Mailboxes", rule 3).
pub const MAILBOX_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Expired envelopes purged per applied entry at most. One entry deposits at most one envelope,
/// so purging outpaces depositing; a backlog (the directory clock jumped) drains over the next
/// entries, and until then an expired envelope is hidden from fetches but still counts toward
/// its mailbox's quota.
pub const MAILBOX_PURGE_PER_APPLY_MAX: usize = 256;
/// Worst-case encoded bytes of one [`MailboxMessage`] besides its envelope: varint seq 10,
/// message id 16, varint length 3, two varint times 10 each.
pub const MAILBOX_MESSAGE_OVERHEAD_BYTES_MAX: usize = 10 + 16 + 3 + 10 + 10;

/// The mailbox limits one directory applies with. Replicas must agree on them: production uses
/// [`MailboxLimits::default`] (the constants above); tests lower them to reach the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxLimits {
    /// [`ENVELOPE_BYTES_MAX`].
    pub envelope_bytes_max: usize,
    /// [`MAILBOX_MESSAGES_MAX`].
    pub messages_max: usize,
    /// [`MAILBOX_BYTES_MAX`].
    pub bytes_max: u64,
    /// [`MAILBOXES_MESSAGES_MAX`].
    pub total_messages_max: u64,
    /// [`MAILBOXES_BYTES_MAX`].
    pub total_bytes_max: u64,
    /// [`MAILBOX_TTL_MS`].
    pub ttl_ms: u64,
    /// [`MAILBOX_PURGE_PER_APPLY_MAX`].
    pub purge_per_apply_max: usize,
}

impl Default for MailboxLimits {
    fn default() -> MailboxLimits {
        MailboxLimits {
            envelope_bytes_max: ENVELOPE_BYTES_MAX,
            messages_max: MAILBOX_MESSAGES_MAX,
            bytes_max: MAILBOX_BYTES_MAX,
            total_messages_max: MAILBOXES_MESSAGES_MAX,
            total_bytes_max: MAILBOXES_BYTES_MAX,
            ttl_ms: MAILBOX_TTL_MS,
            purge_per_apply_max: MAILBOX_PURGE_PER_APPLY_MAX,
        }
    }
}

/// One stored envelope, as a fetch hands it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxMessage {
    /// Its place in the mailbox.
    pub seq: MailboxSeq,
    /// The sender's id for it.
    pub message_id: MessageId,
    /// The ciphertext.
    pub envelope: Vec<u8>,
    /// Directory time of the deposit.
    pub deposited_unix_ms: u64,
    /// Directory time from which it is purged.
    pub expires_unix_ms: u64,
}

impl MailboxMessage {
    /// An upper bound of its encoded size.
    #[must_use]
    pub fn encoded_bytes_max(&self) -> usize {
        MAILBOX_MESSAGE_OVERHEAD_BYTES_MAX + self.envelope.len()
    }

    fn bytes(&self) -> u64 {
        self.envelope.len() as u64
    }
}

/// A page of a mailbox, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxPage {
    /// Live envelopes after the cursor, in seq order.
    pub messages: Vec<MailboxMessage>,
    /// More live envelopes follow the last one given (fetch again after it).
    pub more: bool,
}

/// One user's mailbox. Only the directory hands these out, by `&` reference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    /// The last seq assigned (0 before the first deposit); never decreases.
    last_seq: MailboxSeq,
    messages: BTreeMap<MailboxSeq, MailboxMessage>,
    /// message id → seq; derived (not written).
    #[serde(skip)]
    by_id: BTreeMap<MessageId, MailboxSeq>,
    /// Sum of the envelopes' lengths; derived.
    #[serde(skip)]
    bytes: u64,
}

impl Mailbox {
    /// The last seq assigned (0 before the first deposit).
    #[must_use]
    pub fn last_seq(&self) -> MailboxSeq {
        self.last_seq
    }

    /// Envelopes held (expired ones not yet purged included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Envelope bytes held.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The envelopes, in seq order.
    pub fn messages(&self) -> impl Iterator<Item = &MailboxMessage> {
        self.messages.values()
    }

    /// Tests only: the envelopes and the last seq, to build inconsistent snapshots (the derived
    /// indexes are not kept up: only the snapshot encoding of the result is used).
    #[cfg(test)]
    pub(crate) fn parts_mut(
        &mut self,
    ) -> (&mut MailboxSeq, &mut BTreeMap<MailboxSeq, MailboxMessage>) {
        (&mut self.last_seq, &mut self.messages)
    }
}

/// Every mailbox, the expiry index and the totals the global bounds apply to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mailboxes {
    boxes: BTreeMap<UserId, Mailbox>,
    /// `(expires, recipient, seq)` of every envelope: purging costs O(expired); derived.
    by_expiry: BTreeSet<(u64, UserId, MailboxSeq)>,
    messages_total: u64,
    bytes_total: u64,
    limits: MailboxLimits,
}

/// Where a deposit is (a fresh one, or the held one a re-deposit found).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deposited {
    pub(crate) seq: MailboxSeq,
    pub(crate) expires_unix_ms: u64,
}

impl Mailboxes {
    pub(crate) fn new(limits: MailboxLimits) -> Mailboxes {
        assert!(
            limits.envelope_bytes_max > 0
                && limits.messages_max > 0
                && limits.total_messages_max > 0
                && limits.ttl_ms > 0
                && limits.purge_per_apply_max > 0,
            "mailbox limits must be positive: {limits:?}"
        );
        Mailboxes {
            boxes: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            messages_total: 0,
            bytes_total: 0,
            limits,
        }
    }

    pub(crate) fn limits(&self) -> MailboxLimits {
        self.limits
    }

    pub(crate) fn get(&self, user: &UserId) -> Option<&Mailbox> {
        self.boxes.get(user)
    }

    /// Envelopes in all mailboxes.
    pub(crate) fn messages_total(&self) -> u64 {
        self.messages_total
    }

    /// Envelope bytes in all mailboxes.
    pub(crate) fn bytes_total(&self) -> u64 {
        self.bytes_total
    }

    /// Stores `deposit` at directory time `now_unix_ms`; the caller checked that the recipient
    /// is registered. Checks in order: envelope size, a held message id (the same envelope
    /// answers its first outcome again; another envelope is a conflict), the mailbox's quota, the
    /// global bounds. A refusal changes nothing.
    pub(crate) fn deposit(
        &mut self,
        deposit: &Deposit,
        now_unix_ms: u64,
    ) -> Result<Deposited, CommandError> {
        let len = deposit.envelope.len();
        if len > self.limits.envelope_bytes_max {
            return Err(CommandError::EnvelopeTooLarge {
                len,
                max: self.limits.envelope_bytes_max,
            });
        }
        let bytes = len as u64;
        if let Some(mailbox) = self.boxes.get(&deposit.recipient) {
            if let Some(seq) = mailbox.by_id.get(&deposit.message_id) {
                let held = &mailbox.messages[seq];
                if held.envelope != deposit.envelope {
                    return Err(CommandError::MessageIdConflict);
                }
                return Ok(Deposited {
                    seq: *seq,
                    expires_unix_ms: held.expires_unix_ms,
                });
            }
        }
        let (held_messages, held_bytes) = self
            .boxes
            .get(&deposit.recipient)
            .map_or((0, 0), |m| (m.messages.len(), m.bytes));
        if held_messages >= self.limits.messages_max
            || held_bytes.saturating_add(bytes) > self.limits.bytes_max
        {
            return Err(CommandError::MailboxFull {
                messages: u32::try_from(held_messages).unwrap_or(u32::MAX),
                bytes: held_bytes,
            });
        }
        if self.messages_total >= self.limits.total_messages_max
            || self.bytes_total.saturating_add(bytes) > self.limits.total_bytes_max
        {
            return Err(CommandError::MailboxesFull);
        }
        // Nothing can fail from here on.
        let mailbox = self.boxes.entry(deposit.recipient).or_default();
        let seq = MailboxSeq(
            mailbox
                .last_seq
                .0
                .checked_add(1)
                .expect("2^64 deposits into one mailbox"),
        );
        let expires_unix_ms = now_unix_ms.saturating_add(self.limits.ttl_ms);
        mailbox.last_seq = seq;
        mailbox.bytes += bytes;
        assert!(mailbox.by_id.insert(deposit.message_id, seq).is_none());
        let message = MailboxMessage {
            seq,
            message_id: deposit.message_id,
            envelope: deposit.envelope.clone(),
            deposited_unix_ms: now_unix_ms,
            expires_unix_ms,
        };
        assert!(mailbox.messages.insert(seq, message).is_none());
        assert!(self
            .by_expiry
            .insert((expires_unix_ms, deposit.recipient, seq)));
        self.messages_total += 1;
        self.bytes_total += bytes;
        Ok(Deposited {
            seq,
            expires_unix_ms,
        })
    }

    /// Deletes `user`'s envelopes up to and including `upto`; refuses an `upto` beyond the last
    /// seq assigned (changing nothing). Returns how many were deleted.
    pub(crate) fn ack(&mut self, user: &UserId, upto: MailboxSeq) -> Result<u32, CommandError> {
        let last = self.boxes.get(user).map_or(MailboxSeq(0), |m| m.last_seq);
        if upto > last {
            return Err(CommandError::AckBeyondLast { upto, last });
        }
        let Some(mailbox) = self.boxes.get_mut(user) else {
            return Ok(0);
        };
        // `upto <= last_seq`, and `last_seq` was assigned by `checked_add`, so `upto + 1` fits.
        let kept = mailbox.messages.split_off(&MailboxSeq(upto.0 + 1));
        let removed = std::mem::replace(&mut mailbox.messages, kept);
        let count = u32::try_from(removed.len()).expect("a mailbox holds at most its quota");
        for (seq, message) in removed {
            self.forget(user, seq, &message);
        }
        Ok(count)
    }

    /// Deletes `user`'s mailbox (deregistration).
    pub(crate) fn remove_user(&mut self, user: &UserId) {
        let Some(mailbox) = self.boxes.get(user) else {
            return;
        };
        let seqs: Vec<MailboxSeq> = mailbox.messages.keys().copied().collect();
        for seq in seqs {
            self.remove_message(user, seq);
        }
        let mailbox = self.boxes.remove(user).expect("present above");
        assert!(
            mailbox.is_empty() && mailbox.bytes == 0,
            "{user:?}: emptied"
        );
    }

    /// Purges envelopes whose expiry is at or before `now_unix_ms`, oldest expiry first, at most
    /// `purge_per_apply_max` of them. Returns how many.
    pub(crate) fn purge_expired(&mut self, now_unix_ms: u64) -> usize {
        let mut purged = 0;
        while purged < self.limits.purge_per_apply_max {
            let Some(&(expires, user, seq)) = self.by_expiry.first() else {
                break;
            };
            if expires > now_unix_ms {
                break;
            }
            self.remove_message(&user, seq);
            purged += 1;
        }
        purged
    }

    /// The live envelopes of `user`'s mailbox after `after`: at most `max` of them and, beyond
    /// the first, at most `bytes_max` bytes encoded (the first always fits: the caller's budget
    /// holds the largest envelope). Expired envelopes awaiting their purge are left out.
    pub(crate) fn fetch(
        &self,
        user: &UserId,
        after: MailboxSeq,
        max: usize,
        bytes_max: usize,
        now_unix_ms: u64,
    ) -> MailboxPage {
        assert!(
            bytes_max >= MAILBOX_MESSAGE_OVERHEAD_BYTES_MAX + self.limits.envelope_bytes_max,
            "a fetch budget must hold the largest envelope"
        );
        let mut page = MailboxPage::default();
        let Some(mailbox) = self.boxes.get(user) else {
            return page;
        };
        let Some(from) = after.0.checked_add(1) else {
            return page;
        };
        let mut bytes = 0usize;
        let live = mailbox
            .messages
            .range(MailboxSeq(from)..)
            .map(|(_, m)| m)
            .filter(|m| m.expires_unix_ms > now_unix_ms);
        for message in live {
            let size = message.encoded_bytes_max();
            if page.messages.len() >= max || bytes + size > bytes_max {
                page.more = true;
                break;
            }
            bytes += size;
            page.messages.push(message.clone());
        }
        page
    }

    fn remove_message(&mut self, user: &UserId, seq: MailboxSeq) {
        let mailbox = self.boxes.get_mut(user).expect("indexed mailbox exists");
        let message = mailbox
            .messages
            .remove(&seq)
            .expect("indexed envelope exists");
        self.forget(user, seq, &message);
    }

    /// Drops the indexes and totals of an envelope already taken out of its mailbox.
    fn forget(&mut self, user: &UserId, seq: MailboxSeq, message: &MailboxMessage) {
        let mailbox = self.boxes.get_mut(user).expect("mailbox exists");
        assert_eq!(
            mailbox.by_id.remove(&message.message_id),
            Some(seq),
            "{user:?}: id index"
        );
        mailbox.bytes -= message.bytes();
        assert!(
            self.by_expiry
                .remove(&(message.expires_unix_ms, *user, seq)),
            "{user:?}: expiry index"
        );
        self.messages_total -= 1;
        self.bytes_total -= message.bytes();
    }

    /// Tests only: the mailboxes themselves, to build inconsistent snapshots.
    #[cfg(test)]
    pub(crate) fn boxes_mut(&mut self) -> &mut BTreeMap<UserId, Mailbox> {
        &mut self.boxes
    }

    /// The replicated content (no derived index) for digests.
    pub(crate) fn content(&self) -> &BTreeMap<UserId, Mailbox> {
        &self.boxes
    }

    /// Asserts every invariant; `registered` says whether a user has a record, `clock_unix_ms`
    /// is the directory's time. [`Mailboxes::from_snapshot`] refuses every state this would
    /// reject, so a restored snapshot never trips it.
    pub(crate) fn check_invariants(
        &self,
        registered: impl Fn(&UserId) -> bool,
        clock_unix_ms: u64,
    ) {
        let limits = &self.limits;
        let (mut messages_total, mut bytes_total) = (0u64, 0u64);
        for (user, mailbox) in &self.boxes {
            assert!(registered(user), "{user:?}: a mailbox without a user");
            check_mailbox(mailbox, limits, clock_unix_ms)
                .unwrap_or_else(|why| panic!("{user:?}: {why}"));
            for (seq, message) in &mailbox.messages {
                assert!(
                    self.by_expiry
                        .contains(&(message.expires_unix_ms, *user, *seq)),
                    "{user:?}: {seq:?} not in the expiry index"
                );
            }
            messages_total += mailbox.messages.len() as u64;
            bytes_total += mailbox.bytes;
        }
        assert_eq!(messages_total, self.messages_total, "message total");
        assert_eq!(bytes_total, self.bytes_total, "byte total");
        assert!(
            messages_total <= limits.total_messages_max && bytes_total <= limits.total_bytes_max,
            "global bounds"
        );
        assert_eq!(
            self.by_expiry.len() as u64,
            messages_total,
            "expiry index size"
        );
    }

    /// Rebuilds the mailboxes from a snapshot's, refusing what [`Mailboxes::check_invariants`]
    /// would reject.
    pub(crate) fn from_snapshot(
        boxes: Vec<(UserId, MailboxSnapshot)>,
        limits: MailboxLimits,
        registered: impl Fn(&UserId) -> bool,
        clock_unix_ms: u64,
    ) -> Result<Mailboxes, SnapshotDecodeError> {
        use SnapshotDecodeError::Inconsistent;
        let mut out = Mailboxes::new(limits);
        for (user, snapshot) in boxes {
            if out
                .boxes
                .last_key_value()
                .is_some_and(|(last, _)| *last >= user)
            {
                return Err(Inconsistent("mailboxes out of order or repeated"));
            }
            if !registered(&user) {
                return Err(Inconsistent("a mailbox of an unregistered user"));
            }
            if snapshot.messages.len() > limits.messages_max {
                return Err(Inconsistent("a mailbox over its quota"));
            }
            let mut mailbox = Mailbox {
                last_seq: snapshot.last_seq,
                ..Mailbox::default()
            };
            for (seq, message) in snapshot.messages {
                if mailbox
                    .messages
                    .last_key_value()
                    .is_some_and(|(last, _)| *last >= seq)
                {
                    return Err(Inconsistent("mailbox seqs out of order or repeated"));
                }
                if mailbox.by_id.insert(message.message_id, seq).is_some() {
                    return Err(Inconsistent("a message id twice in one mailbox"));
                }
                mailbox.bytes = mailbox.bytes.saturating_add(message.bytes());
                mailbox.messages.insert(seq, message);
            }
            check_mailbox(&mailbox, &limits, clock_unix_ms).map_err(Inconsistent)?;
            out.messages_total += mailbox.messages.len() as u64;
            out.bytes_total = out.bytes_total.saturating_add(mailbox.bytes);
            if out.messages_total > limits.total_messages_max
                || out.bytes_total > limits.total_bytes_max
            {
                return Err(Inconsistent("mailboxes over the global bounds"));
            }
            for (seq, message) in &mailbox.messages {
                out.by_expiry.insert((message.expires_unix_ms, user, *seq));
            }
            out.boxes.insert(user, mailbox);
        }
        Ok(out)
    }
}

/// One mailbox as a snapshot holds it (version 2): its last seq and its envelopes by seq. Maps
/// are read as sequences so repeats are refused rather than merged.
#[derive(Deserialize)]
pub(crate) struct MailboxSnapshot {
    last_seq: MailboxSeq,
    messages: Vec<(MailboxSeq, MailboxMessage)>,
}

/// The invariants of one mailbox (shared by `check_invariants` and the snapshot decoder, so a
/// restored mailbox meets exactly what the running code asserts). Seqs are ascending by
/// construction of the map.
fn check_mailbox(
    mailbox: &Mailbox,
    limits: &MailboxLimits,
    clock_unix_ms: u64,
) -> Result<(), &'static str> {
    if mailbox.messages.len() > limits.messages_max || mailbox.bytes > limits.bytes_max {
        return Err("a mailbox over its quota");
    }
    if mailbox.by_id.len() != mailbox.messages.len() {
        return Err("the id index and the envelopes differ in size");
    }
    let mut bytes = 0u64;
    let mut previous_deposit = 0u64;
    for (seq, message) in &mailbox.messages {
        if message.seq != *seq {
            return Err("an envelope filed under another seq");
        }
        if seq.0 == 0 || *seq > mailbox.last_seq {
            return Err("an envelope seq outside 1..=last seq");
        }
        if mailbox.by_id.get(&message.message_id) != Some(seq) {
            return Err("the id index disagrees with an envelope");
        }
        if message.envelope.len() > limits.envelope_bytes_max {
            return Err("an envelope over its bound");
        }
        if message.deposited_unix_ms > clock_unix_ms {
            return Err("an envelope deposited after the directory's time");
        }
        // Entries apply in log order and directory time never runs back.
        if message.deposited_unix_ms < previous_deposit {
            return Err("envelopes deposited out of seq order");
        }
        previous_deposit = message.deposited_unix_ms;
        if message.expires_unix_ms != message.deposited_unix_ms.saturating_add(limits.ttl_ms) {
            return Err("an envelope's expiry is not its deposit plus the TTL");
        }
        bytes += message.bytes();
    }
    if bytes != mailbox.bytes {
        return Err("a mailbox's byte count disagrees with its envelopes");
    }
    Ok(())
}
