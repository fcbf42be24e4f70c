//! The directory's replicated state: user records, the username index, deregistration
//! tombstones, the users' mailboxes (`mailbox.rs`), a bounded audit trail and the directory's clock, changed only by applying
//! committed [`DirectoryEntry`]s. Every replica applies the same entries in the same order, so
//! everything here is deterministic: ordered maps only, no floats, and no time but the leader's
//! stamp in each entry (Raft §5.4.3; ARCHITECTURE.md, "Determinism").
//!
//! A refused command changes no user state: every handler checks everything first and mutates
//! only once nothing can fail. Only the audit trail and the directory's clock move (and
//! tombstones and mailbox envelopes whose time has passed are pruned, as at every apply).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::command::{
    encode_result, CommandError, CommandKind, DirectoryEntry, SignedPrekey, Username, Visibility,
    ADDRESSES_MAX, ADDRESS_BYTES_MAX, CONTACTS_MAX, ONE_TIME_PREKEYS_MAX,
};
use super::mailbox::{Mailbox, MailboxLimits, MailboxPage, Mailboxes};
use crate::ids::{LogIndex, MailboxSeq, UserId};
use crate::raft::state_machine::{ApplyContext, SnapshotDecodeError, StateMachine};
use crate::session::{IdentityPublic, PrekeyId};

/// Most users the directory holds; a `Register` beyond it is refused with `DirectoryFull`. It
/// keeps a replica's memory and snapshot finite: a record is a few hundred bytes with a drained
/// pool, at most about 12 KiB with a full pool and contact list (those have their own limits).
pub const USERS_MAX: usize = 4_000_000;
/// Most deregistration tombstones held at once. A tombstone cannot be dropped before its time
/// (that would reopen replay of the key's old commands), so at the bound `Deregister` is refused
/// with `DirectoryFull` until some expire. 65,536 deregistrations within one command validity
/// window ([`COMMAND_VALIDITY_MAX_MS`](super::command::COMMAND_VALIDITY_MAX_MS)) is far beyond
/// any honest rate; the set costs about 5 MiB.
pub const TOMBSTONES_MAX: usize = 65_536;
/// Audit records kept (oldest dropped first). A record is under 100 bytes, so the trail adds at
/// most about 1 MiB to every snapshot while covering the last 10,000 entries.
pub const AUDIT_RECORDS_MAX: usize = 10_000;
/// Version byte of [`Directory`]'s snapshot (ARCHITECTURE.md, "Versioned formats"). Version 2
/// added the mailboxes; version 1 snapshots (no mailboxes) are still read.
pub const SNAPSHOT_VERSION: u8 = 2;

/// A user's presence as the directory last committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    /// Online since this directory time.
    Online {
        /// Directory time of the transition.
        since_unix_ms: u64,
    },
    /// Offline; `None` until the user has been seen online and left.
    Offline {
        /// When the user was last heard from (leader-stamped), if ever.
        last_seen_unix_ms: Option<u64>,
    },
}

/// Everything the directory holds about one user. Only [`Directory`] hands these out, and only
/// by `&` reference: the fields are public to read, not to edit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user: the hash of `identity.signing_key`.
    pub user: UserId,
    /// The user's (folded) name, unique in the directory.
    pub username: Username,
    /// The identity keys (the signing key signs every command for this user).
    pub identity: IdentityPublic,
    /// The current signed prekey (verified against `identity` when stored).
    pub signed_prekey: SignedPrekey,
    /// The one-time prekey pool; each key is handed out by at most one claim, lowest id first.
    pub one_time_prekeys: BTreeMap<PrekeyId, [u8; 32]>,
    /// Published addresses (at most [`ADDRESSES_MAX`], each at most [`ADDRESS_BYTES_MAX`]).
    pub addresses: Vec<String>,
    /// Who sees the user's presence.
    pub visibility: Visibility,
    /// The contacts `Visibility::Contacts` refers to (at most [`CONTACTS_MAX`]).
    pub contacts: BTreeSet<UserId>,
    /// Last committed presence.
    pub presence: Presence,
    /// Directory time of registration.
    pub registered_unix_ms: u64,
    /// The counter of the last command applied for this user.
    pub counter: u64,
}

/// What a lookup shows of a user: the public keys and addresses, but not the one-time pool
/// (a key leaves the directory only through a claim, which removes it), the contacts or the
/// presence (shown separately, subject to visibility: [`Directory::presence_visible_to`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// The user.
    pub user: UserId,
    /// The user's name.
    pub username: Username,
    /// The identity keys.
    pub identity: IdentityPublic,
    /// The current signed prekey.
    pub signed_prekey: SignedPrekey,
    /// Published addresses.
    pub addresses: Vec<String>,
    /// Directory time of registration.
    pub registered_unix_ms: u64,
    /// The counter of the last command applied (the client's next command must exceed it).
    pub counter: u64,
    /// One-time prekeys left in the pool (so the owner knows when to publish more).
    pub one_time_prekeys_left: u32,
}

impl UserRecord {
    /// The public view of the record.
    #[must_use]
    pub fn view(&self) -> UserView {
        UserView {
            user: self.user,
            username: self.username.clone(),
            identity: self.identity,
            signed_prekey: self.signed_prekey,
            addresses: self.addresses.clone(),
            registered_unix_ms: self.registered_unix_ms,
            counter: self.counter,
            one_time_prekeys_left: u32::try_from(self.one_time_prekeys.len())
                .expect("the pool is bounded by ONE_TIME_PREKEYS_MAX"),
        }
    }
}

/// One entry of the audit trail: which entry, when, for whom, what kind, and whether it applied.
/// No keys, no names, no addresses: the user id is the only identifying data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The Raft entry.
    pub index: LogIndex,
    /// Directory time at apply.
    pub unix_ms: u64,
    /// The verified signer; `None` for presence batches, malformed entries and bad signatures
    /// (an unverified signer is a claim anyone can make).
    pub user: Option<UserId>,
    /// What the entry was.
    pub kind: CommandKind,
    /// Whether it applied, or why not.
    pub outcome: Result<(), CommandError>,
}

/// What the directory remembers of a deregistered key until every command it ever signed has
/// expired: the last counter applied, so none of those commands can apply again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Tombstone {
    counter: u64,
    until_unix_ms: u64,
}

/// The identity directory: the [`StateMachine`] Raft drives with encoded [`DirectoryEntry`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    users: BTreeMap<UserId, UserRecord>,
    /// username → user; derived from `users` (not in the snapshot, rebuilt on restore).
    names: BTreeMap<Username, UserId>,
    /// Keyed by the user id, which names the signing key one to one.
    tombstones: BTreeMap<UserId, Tombstone>,
    /// `(until, user)` for every tombstone, so pruning costs O(expired); derived from `tombstones`.
    tombstones_by_expiry: BTreeSet<(u64, UserId)>,
    audit: VecDeque<AuditRecord>,
    /// max(leader stamps applied so far): replicated time never runs backwards.
    clock_unix_ms: u64,
    /// [`USERS_MAX`]; tests lower it to reach the bound.
    users_max: usize,
    /// [`TOMBSTONES_MAX`]; tests lower it to reach the bound.
    tombstones_max: usize,
    /// Recent presence transitions, for the replica's pushes to subscribers (derived, local).
    presence_log: ChangeLog,
    /// Recent deposits, `(index, recipient)`, for the replica's mailbox pushes to the owners'
    /// connections (derived, local, like `presence_log`; its `restores` moves with that one's).
    deposit_log: ChangeLog,
    /// Every registered user's mailbox (an owned part with its own invariants).
    mailboxes: Mailboxes,
}

/// Changes applied recently (presence transitions, deposits), `(index, user)` oldest first, at
/// most [`PRESENCE_LOG_MAX`] or [`DEPOSIT_LOG_MAX`]. Derived data kept for the replica's pushes,
/// not replicated state: it is not in the snapshot, and two directories are equal whatever their
/// logs hold.
#[derive(Clone, Debug, Default)]
struct ChangeLog {
    entries: VecDeque<(LogIndex, UserId)>,
    /// Transitions at or below this index may be missing (evicted).
    floor: LogIndex,
    /// How many times the directory was restored from a snapshot (transitions before it are lost).
    restores: u64,
}

impl PartialEq for ChangeLog {
    fn eq(&self, _: &ChangeLog) -> bool {
        true
    }
}

impl Eq for ChangeLog {}

/// The most presence transitions a directory remembers for pushes (a replica that falls further
/// behind pushes every subscription's current state instead).
pub const PRESENCE_LOG_MAX: usize = 65_536;

/// The most deposits a directory remembers for mailbox pushes (a replica that falls further
/// behind pushes to every logged-in owner of a mailbox instead). One entry deposits at most one
/// envelope, so this covers as many entries as `PRESENCE_LOG_MAX` does.
pub const DEPOSIT_LOG_MAX: usize = 65_536;

impl ChangeLog {
    fn push(&mut self, index: LogIndex, user: UserId, max: usize) {
        if self.entries.len() == max {
            let (evicted, _) = self.entries.pop_front().expect("full");
            self.floor = evicted;
        }
        self.entries.push_back((index, user));
    }

    fn since(&self, since: LogIndex) -> Option<impl Iterator<Item = UserId> + '_> {
        if since < self.floor {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(move |(index, _)| *index > since)
                .map(|(_, user)| *user),
        )
    }
}

impl Default for Directory {
    fn default() -> Directory {
        Directory::new()
    }
}

impl Directory {
    /// An empty directory at time 0.
    #[must_use]
    pub fn new() -> Directory {
        Directory::with_limits(USERS_MAX, TOMBSTONES_MAX)
    }

    /// An empty directory with other bounds (replicas must agree on them: tests only).
    pub(crate) fn with_limits(users_max: usize, tombstones_max: usize) -> Directory {
        Directory::with_all_limits(users_max, tombstones_max, MailboxLimits::default())
    }

    /// An empty directory with other mailbox limits: the simulators' knob to reach the quotas
    /// and the TTL within a short run (replicas must agree on them; never in production, where
    /// the limits are constants: ARCHITECTURE.md, "Replicated settings").
    #[cfg(any(test, fuzzing, feature = "testing"))]
    #[must_use]
    pub fn with_mailbox_limits(limits: MailboxLimits) -> Directory {
        Directory::with_all_limits(USERS_MAX, TOMBSTONES_MAX, limits)
    }

    /// An empty directory with other user, tombstone and mailbox bounds (tests only).
    pub(crate) fn with_all_limits(
        users_max: usize,
        tombstones_max: usize,
        mailbox_limits: MailboxLimits,
    ) -> Directory {
        assert!(
            users_max > 0 && tombstones_max > 0,
            "limits must be positive"
        );
        Directory {
            users: BTreeMap::new(),
            names: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            tombstones_by_expiry: BTreeSet::new(),
            audit: VecDeque::new(),
            clock_unix_ms: 0,
            users_max,
            tombstones_max,
            presence_log: ChangeLog::default(),
            deposit_log: ChangeLog::default(),
            mailboxes: Mailboxes::new(mailbox_limits),
        }
    }

    /// Whether `user` is committed as online.
    #[must_use]
    pub fn is_online(&self, user: &UserId) -> bool {
        self.users
            .get(user)
            .is_some_and(|r| matches!(r.presence, Presence::Online { .. }))
    }

    /// The users whose presence changed in entries after `since`, oldest first, or `None` if the
    /// directory no longer remembers back that far (evicted, or restored from a snapshot after
    /// `restores` restores: pass the count [`Directory::restores`] gave when `since` was read).
    #[must_use]
    pub fn presence_changes_since(
        &self,
        since: LogIndex,
        restores: u64,
    ) -> Option<impl Iterator<Item = UserId> + '_> {
        self.changes_since(&self.presence_log, since, restores)
    }

    /// How many times this directory was restored from a snapshot.
    #[must_use]
    pub fn restores(&self) -> u64 {
        self.presence_log.restores
    }

    fn log_presence(&mut self, index: LogIndex, user: UserId) {
        self.presence_log.push(index, user, PRESENCE_LOG_MAX);
    }

    /// The recipients of deposits applied in entries after `since`, oldest first (a recipient
    /// once per deposit), or `None` if the directory no longer remembers back that far (as for
    /// [`Directory::presence_changes_since`]). The replica pushes `MailboxChanged` from it.
    #[must_use]
    pub fn deposits_since(
        &self,
        since: LogIndex,
        restores: u64,
    ) -> Option<impl Iterator<Item = UserId> + '_> {
        self.changes_since(&self.deposit_log, since, restores)
    }

    /// `log`'s users after `since`, unless a restore since then emptied the derived logs (both
    /// logs are cleared together at a restore; the presence log keeps the count).
    fn changes_since<'a>(
        &self,
        log: &'a ChangeLog,
        since: LogIndex,
        restores: u64,
    ) -> Option<impl Iterator<Item = UserId> + 'a> {
        if restores != self.presence_log.restores {
            return None;
        }
        log.since(since)
    }

    /// `user`'s mailbox, if anything was ever deposited for them since they registered.
    #[must_use]
    pub fn mailbox(&self, user: &UserId) -> Option<&Mailbox> {
        self.mailboxes.get(user)
    }

    /// A page of `user`'s mailbox: the live envelopes after `after`, at most `max` and at most
    /// `bytes_max` encoded bytes beyond the first (`bytes_max` must hold the largest envelope
    /// with its overhead). The replica serves fetches with it after a ReadIndex round.
    #[must_use]
    pub fn fetch_mailbox(
        &self,
        user: &UserId,
        after: MailboxSeq,
        max: usize,
        bytes_max: usize,
    ) -> MailboxPage {
        self.mailboxes
            .fetch(user, after, max, bytes_max, self.clock_unix_ms)
    }

    /// Envelopes and envelope bytes held in all mailboxes.
    #[must_use]
    pub fn mailbox_totals(&self) -> (u64, u64) {
        (
            self.mailboxes.messages_total(),
            self.mailboxes.bytes_total(),
        )
    }

    /// The mailbox limits this directory applies with.
    #[must_use]
    pub fn mailbox_limits(&self) -> MailboxLimits {
        self.mailboxes.limits()
    }

    /// The record of `user`, if registered.
    #[must_use]
    pub fn user(&self, user: &UserId) -> Option<&UserRecord> {
        self.users.get(user)
    }

    /// The record holding `username`, if any.
    #[must_use]
    pub fn lookup(&self, username: &Username) -> Option<&UserRecord> {
        self.names.get(username).and_then(|id| self.users.get(id))
    }

    /// Registered users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no one is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Directory time: the latest leader stamp applied.
    #[must_use]
    pub fn clock_unix_ms(&self) -> u64 {
        self.clock_unix_ms
    }

    /// `subject`'s presence as `viewer` may see it: `Everyone` shows it to anyone, `Contacts` to
    /// the subject's contacts and the subject, `Nobody` to the subject only. `None` when hidden
    /// or when the subject is unknown (the two look the same to the viewer on purpose).
    #[must_use]
    pub fn presence_visible_to(&self, subject: &UserId, viewer: &UserId) -> Option<Presence> {
        let record = self.users.get(subject)?;
        let visible = match record.visibility {
            Visibility::Everyone => true,
            Visibility::Contacts => viewer == subject || record.contacts.contains(viewer),
            Visibility::Nobody => viewer == subject,
        };
        visible.then_some(record.presence)
    }

    /// Users committed as online, in id order (a new leader seeds its presence view with them).
    /// O(users): it runs once per leadership, not per entry.
    pub fn online_users(&self) -> impl Iterator<Item = UserId> + '_ {
        self.users
            .values()
            .filter(|r| matches!(r.presence, Presence::Online { .. }))
            .map(|r| r.user)
    }

    /// The audit trail, oldest first (at most [`AUDIT_RECORDS_MAX`]).
    pub fn audit(&self) -> impl Iterator<Item = &AuditRecord> {
        self.audit.iter()
    }

    /// BLAKE3 of the snapshot: equal digests mean equal replicated state.
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.snapshot()).as_bytes()
    }

    /// BLAKE3 of the user state alone (records, tombstones and mailboxes), leaving out the audit
    /// trail and the clock, which every entry moves: what a refused command must leave unchanged.
    #[must_use]
    pub fn user_state_digest(&self) -> [u8; 32] {
        let bytes = postcard::to_stdvec(&(&self.users, &self.tombstones, self.mailboxes.content()))
            .expect("encoding to a Vec cannot fail");
        *blake3::hash(&bytes).as_bytes()
    }

    /// Asserts every structural invariant (run after every step in tests and simulation).
    pub fn check_invariants(&self) {
        assert!(
            self.users.len() <= self.users_max,
            "{} users over the bound",
            self.users.len()
        );
        assert_eq!(
            self.names.len(),
            self.users.len(),
            "name index and records differ in size"
        );
        for (id, record) in &self.users {
            assert_eq!(record.user, *id, "record filed under another id");
            assert_eq!(
                record.identity.user_id(),
                *id,
                "user id is not its key's hash"
            );
            assert_eq!(
                self.names.get(&record.username),
                Some(id),
                "{id:?}'s name not indexed"
            );
            assert!(
                record.one_time_prekeys.len() <= ONE_TIME_PREKEYS_MAX,
                "{id:?}: pool"
            );
            assert!(
                addresses_ok(&record.addresses),
                "{id:?}: addresses over the bounds"
            );
            assert!(
                record.contacts.len() <= CONTACTS_MAX,
                "{id:?}: contacts over the bound"
            );
            assert!(
                record.registered_unix_ms <= self.clock_unix_ms,
                "{id:?}: from the future"
            );
            assert!(
                !self.tombstones.contains_key(id),
                "{id:?} is live and tombstoned"
            );
        }
        for (name, id) in &self.names {
            let record = self
                .users
                .get(id)
                .expect("name index points at a missing user");
            assert_eq!(
                &record.username, name,
                "name index points at the wrong user"
            );
        }
        assert!(
            self.tombstones.len() <= self.tombstones_max,
            "tombstones over the bound"
        );
        assert_eq!(
            self.tombstones.len(),
            self.tombstones_by_expiry.len(),
            "tombstone maps"
        );
        for (until, id) in &self.tombstones_by_expiry {
            let tombstone = self
                .tombstones
                .get(id)
                .expect("expiry index names a missing tombstone");
            assert_eq!(
                tombstone.until_unix_ms, *until,
                "{id:?}: tombstone expiry disagrees"
            );
        }
        assert!(
            self.audit.len() <= AUDIT_RECORDS_MAX,
            "audit trail over the bound"
        );
        self.mailboxes
            .check_invariants(|user| self.users.contains_key(user), self.clock_unix_ms);
    }

    /// The last counter applied for the key: from the live record, else from its tombstone;
    /// 0 for a key the directory does not remember (so counters start at 1).
    fn last_counter(&self, user: &UserId) -> u64 {
        match (self.users.get(user), self.tombstones.get(user)) {
            (Some(record), None) => record.counter,
            (None, Some(tombstone)) => tombstone.counter,
            (None, None) => 0,
            (Some(_), Some(_)) => panic!("{user:?} is live and tombstoned"),
        }
    }

    /// Drops tombstones whose time has passed: every command their key signed has expired.
    fn prune_tombstones(&mut self) {
        while let Some(&(until, user)) = self.tombstones_by_expiry.first() {
            if until >= self.clock_unix_ms {
                break;
            }
            self.tombstones_by_expiry.pop_first();
            let removed = self.tombstones.remove(&user);
            assert_eq!(
                removed.map(|t| t.until_unix_ms),
                Some(until),
                "tombstone maps"
            );
        }
    }

    fn push_audit(&mut self, record: AuditRecord) {
        if self.audit.len() == AUDIT_RECORDS_MAX {
            self.audit.pop_front();
        }
        self.audit.push_back(record);
        assert!(self.audit.len() <= AUDIT_RECORDS_MAX);
    }
}

impl StateMachine for Directory {
    fn apply(&mut self, ctx: &ApplyContext, command: &[u8]) -> Vec<u8> {
        // Leaders' clocks may disagree after an election: directory time only moves forward.
        self.clock_unix_ms = self.clock_unix_ms.max(ctx.unix_ms);
        self.prune_tombstones();
        self.mailboxes.purge_expired(self.clock_unix_ms);
        let (user, kind, result) = match DirectoryEntry::decode(command) {
            Err(e) => (None, CommandKind::Malformed, Err(e)),
            Ok(DirectoryEntry::Presence(batch)) => (
                None,
                CommandKind::Presence,
                self.apply_presence(ctx.index, &batch),
            ),
            // No signer: the audit record names no one (the recipient is in the mailbox).
            Ok(DirectoryEntry::Deposit(deposit)) => {
                let result = self.apply_deposit(&deposit);
                if result.is_ok() {
                    // A re-deposit stores nothing but is logged too: a push more is harmless.
                    self.deposit_log
                        .push(ctx.index, deposit.recipient, DEPOSIT_LOG_MAX);
                }
                (None, CommandKind::Deposit, result)
            }
            Ok(DirectoryEntry::Signed(cmd)) => {
                let kind = cmd.body.kind();
                if cmd.verify() {
                    let user = cmd.user();
                    (Some(user), kind, self.apply_signed(user, &cmd))
                } else {
                    (None, kind, Err(CommandError::BadSignature))
                }
            }
        };
        self.push_audit(AuditRecord {
            index: ctx.index,
            unix_ms: self.clock_unix_ms,
            user,
            kind,
            outcome: result.as_ref().map(|_| ()).map_err(Clone::clone),
        });
        encode_result(&result)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.encode_snapshot()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError> {
        let restores = self.presence_log.restores + 1;
        *self = Directory::decode_snapshot(
            data,
            self.users_max,
            self.tombstones_max,
            self.mailboxes.limits(),
        )?;
        self.presence_log.restores = restores;
        Ok(())
    }
}

fn addresses_ok(addresses: &[String]) -> bool {
    addresses.len() <= ADDRESSES_MAX && addresses.iter().all(|a| a.len() <= ADDRESS_BYTES_MAX)
}

mod commands;
mod snapshot;
#[cfg(test)]
mod tests;
