//! The snapshot format, version 2: the version byte, then postcard of the clock, the records,
//! the tombstones, the audit trail and the mailboxes (each: its last seq and its envelopes by
//! seq). Version 1 is version 2 without the mailboxes, and is still read (as empty mailboxes), so
//! a replica of this release restores a snapshot of the previous one (ARCHITECTURE.md, "Versioned
//! formats"). Derived indexes (names, tombstone expiry, message ids, envelope expiry, sums) are
//! not written; a restore rebuilds them and refuses any snapshot that breaks an invariant, so a
//! bad snapshot is an error and never a panic.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{addresses_ok, AuditRecord, Directory, Tombstone, UserRecord};
use super::{AUDIT_RECORDS_MAX, SNAPSHOT_VERSION};
use crate::directory::command::{CONTACTS_MAX, ONE_TIME_PREKEYS_MAX};
use crate::directory::mailbox::{Mailbox, MailboxLimits, MailboxSnapshot, Mailboxes};
use crate::ids::UserId;
use crate::raft::state_machine::SnapshotDecodeError;

impl Directory {
    /// The versioned snapshot: [`SNAPSHOT_VERSION`], then postcard of the body.
    pub(super) fn encode_snapshot(&self) -> Vec<u8> {
        let snapshot = SnapshotRef {
            clock_unix_ms: self.clock_unix_ms,
            users: &self.users,
            tombstones: &self.tombstones,
            audit: &self.audit,
            mailboxes: self.mailboxes.content(),
        };
        let mut out = vec![SNAPSHOT_VERSION];
        postcard::to_io(&snapshot, &mut out).expect("encoding to a Vec cannot fail");
        out
    }

    /// Decodes [`Directory::encode_snapshot`] into a directory with these bounds.
    pub(super) fn decode_snapshot(
        data: &[u8],
        users_max: usize,
        tombstones_max: usize,
        mailbox_limits: MailboxLimits,
    ) -> Result<Directory, SnapshotDecodeError> {
        let (&version, body) = data.split_first().ok_or(SnapshotDecodeError::Empty)?;
        let (snapshot, tail) = match version {
            SNAPSHOT_VERSION => postcard::take_from_bytes::<SnapshotOwned>(body)?,
            1 => {
                let (v1, tail) = postcard::take_from_bytes::<SnapshotOwnedV1>(body)?;
                (v1.into(), tail)
            }
            _ => return Err(SnapshotDecodeError::Version(version)),
        };
        if !tail.is_empty() {
            return Err(SnapshotDecodeError::Inconsistent("trailing bytes"));
        }
        Directory::from_snapshot(snapshot, users_max, tombstones_max, mailbox_limits)
    }

    /// Rebuilds a directory from a decoded snapshot, checking what the encoding cannot.
    fn from_snapshot(
        snapshot: SnapshotOwned,
        users_max: usize,
        tombstones_max: usize,
        mailbox_limits: MailboxLimits,
    ) -> Result<Directory, SnapshotDecodeError> {
        use SnapshotDecodeError::Inconsistent;
        let mut dir = Directory::with_all_limits(users_max, tombstones_max, mailbox_limits);
        dir.clock_unix_ms = snapshot.clock_unix_ms;
        if snapshot.users.len() > users_max {
            return Err(Inconsistent("more users than the bound"));
        }
        for (id, record) in snapshot.users {
            // Strictly ascending ids: no duplicates, and the encoding is canonical.
            if dir
                .users
                .last_key_value()
                .is_some_and(|(last, _)| *last >= id)
            {
                return Err(Inconsistent("user ids out of order or repeated"));
            }
            if record.user != id || record.identity.user_id() != id {
                return Err(Inconsistent("a record filed under another user's id"));
            }
            if record.registered_unix_ms > dir.clock_unix_ms {
                return Err(Inconsistent("a user registered after the snapshot's time"));
            }
            if record.one_time_prekeys.len() > ONE_TIME_PREKEYS_MAX
                || !addresses_ok(&record.addresses)
                || record.contacts.len() > CONTACTS_MAX
            {
                return Err(Inconsistent("a record over its bounds"));
            }
            if dir.names.insert(record.username.clone(), id).is_some() {
                return Err(Inconsistent("two users hold one username"));
            }
            dir.users.insert(id, record);
        }
        if snapshot.tombstones.len() > tombstones_max {
            return Err(Inconsistent("more tombstones than the bound"));
        }
        for (id, tombstone) in snapshot.tombstones {
            if dir
                .tombstones
                .last_key_value()
                .is_some_and(|(last, _)| *last >= id)
            {
                return Err(Inconsistent("tombstones out of order or repeated"));
            }
            if dir.users.contains_key(&id) {
                return Err(Inconsistent("a live user has a tombstone"));
            }
            dir.tombstones.insert(id, tombstone);
            dir.tombstones_by_expiry
                .insert((tombstone.until_unix_ms, id));
        }
        if snapshot.audit.len() > AUDIT_RECORDS_MAX {
            return Err(Inconsistent("more audit records than the bound"));
        }
        dir.audit = snapshot.audit;
        dir.mailboxes = Mailboxes::from_snapshot(
            snapshot.mailboxes,
            mailbox_limits,
            |user| dir.users.contains_key(user),
            dir.clock_unix_ms,
        )?;
        dir.check_invariants();
        Ok(dir)
    }
}

/// Version 2 of the snapshot body, as written. postcard writes a map as its length and then
/// key-value pairs, exactly as it writes a sequence of pairs, so [`SnapshotOwned`] reads it back
/// (the round-trip tests hold the two together). The name index is derived and not written.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    clock_unix_ms: u64,
    users: &'a BTreeMap<UserId, UserRecord>,
    tombstones: &'a BTreeMap<UserId, Tombstone>,
    audit: &'a VecDeque<AuditRecord>,
    mailboxes: &'a BTreeMap<UserId, Mailbox>,
}

/// Version 2 of the snapshot body, as read: maps as sequences, so repeats can be refused rather
/// than silently merged.
#[derive(Deserialize)]
struct SnapshotOwned {
    clock_unix_ms: u64,
    users: Vec<(UserId, UserRecord)>,
    tombstones: Vec<(UserId, Tombstone)>,
    audit: VecDeque<AuditRecord>,
    mailboxes: Vec<(UserId, MailboxSnapshot)>,
}

/// Version 1 of the snapshot body (before mailboxes), as read.
#[derive(Deserialize)]
struct SnapshotOwnedV1 {
    clock_unix_ms: u64,
    users: Vec<(UserId, UserRecord)>,
    tombstones: Vec<(UserId, Tombstone)>,
    audit: VecDeque<AuditRecord>,
}

impl From<SnapshotOwnedV1> for SnapshotOwned {
    fn from(v1: SnapshotOwnedV1) -> SnapshotOwned {
        SnapshotOwned {
            clock_unix_ms: v1.clock_unix_ms,
            users: v1.users,
            tombstones: v1.tombstones,
            audit: v1.audit,
            mailboxes: Vec::new(),
        }
    }
}
