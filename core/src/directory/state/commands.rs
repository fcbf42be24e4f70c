//! The handlers of each entry kind. Each checks everything before it changes anything, so a
//! refused command leaves user state as it was (the tests compare digests to prove it).

use std::collections::{BTreeMap, BTreeSet};

#[cfg(any(test, feature = "testing"))]
use super::AuditRecord;
use super::{addresses_ok, Directory, Presence, Tombstone, UserRecord};
use crate::directory::command::{
    Bundle, CommandBody, CommandError, CommandResult, Deposit, OneTimePrekey, Outcome,
    PresenceBatch, PresenceChange, SignedCommand, SignedPrekey, Username, Visibility,
    COMMAND_VALIDITY_MAX_MS, CONTACTS_MAX, ONE_TIME_PREKEYS_MAX, PRESENCE_BATCH_MAX,
};
use crate::ids::{LogIndex, UserId};
#[cfg(any(test, feature = "testing"))]
use crate::raft::state_machine::ApplyContext;
use crate::session::{IdentityPublic, PrekeyBundle, PrekeyId};

impl Directory {
    /// Checks in the documented order: expiry, counter, then the body's own checks.
    pub(super) fn apply_signed(&mut self, user: UserId, cmd: &SignedCommand) -> CommandResult {
        let now = self.clock_unix_ms;
        if cmd.expires_unix_ms < now {
            return Err(CommandError::Expired {
                expires_unix_ms: cmd.expires_unix_ms,
                now_unix_ms: now,
            });
        }
        // The bound is what makes tombstones sufficient: no applied command outlives
        // `now + COMMAND_VALIDITY_MAX_MS`, and a tombstone lasts exactly that long.
        if cmd.expires_unix_ms > now.saturating_add(COMMAND_VALIDITY_MAX_MS) {
            return Err(CommandError::ExpiryTooFar);
        }
        let last = self.last_counter(&user);
        if cmd.counter <= last {
            return Err(CommandError::Replayed {
                counter: cmd.counter,
                last,
            });
        }
        let counter = cmd.counter;
        match &cmd.body {
            CommandBody::Register { .. } => self.register(user, cmd),
            CommandBody::RotateSignedPrekey(prekey) => {
                let record = self
                    .users
                    .get_mut(&user)
                    .ok_or(CommandError::NotRegistered)?;
                verify_signed_prekey(&record.identity, prekey)?;
                record.signed_prekey = *prekey;
                record.counter = counter;
                Ok(Outcome::Done)
            }
            CommandBody::PublishOneTimePrekeys(keys) => {
                let record = self
                    .users
                    .get_mut(&user)
                    .ok_or(CommandError::NotRegistered)?;
                check_new_prekeys(&record.one_time_prekeys, keys)?;
                record
                    .one_time_prekeys
                    .extend(keys.iter().map(|k| (k.id, k.key)));
                record.counter = counter;
                Ok(Outcome::Done)
            }
            CommandBody::ClaimBundle { target } => self.claim(user, counter, target),
            CommandBody::UpdateAddresses(addresses) => {
                let record = self
                    .users
                    .get_mut(&user)
                    .ok_or(CommandError::NotRegistered)?;
                if !addresses_ok(addresses) {
                    return Err(CommandError::BadAddresses);
                }
                record.addresses.clone_from(addresses);
                record.counter = counter;
                Ok(Outcome::Done)
            }
            CommandBody::SetVisibility {
                visibility,
                contacts,
            } => {
                let record = self
                    .users
                    .get_mut(&user)
                    .ok_or(CommandError::NotRegistered)?;
                // Bounded after de-duplication: repeating a contact costs nothing to store.
                let contacts: BTreeSet<UserId> = contacts.iter().copied().collect();
                if contacts.len() > CONTACTS_MAX {
                    return Err(CommandError::TooManyContacts);
                }
                record.visibility = *visibility;
                record.contacts = contacts;
                record.counter = counter;
                Ok(Outcome::Done)
            }
            CommandBody::Deregister => self.deregister(user, counter),
            CommandBody::AckMailbox { upto } => {
                // Only the signer's own mailbox: the signature is the proof of ownership.
                if !self.users.contains_key(&user) {
                    return Err(CommandError::NotRegistered);
                }
                let removed = self.mailboxes.ack(&user, *upto)?;
                self.users.get_mut(&user).expect("checked above").counter = counter;
                Ok(Outcome::Acked { removed })
            }
        }
    }

    /// Stores an envelope in a registered recipient's mailbox, stamped with directory time (the
    /// mailbox's own checks and their order are in `Mailboxes::deposit`).
    pub(super) fn apply_deposit(&mut self, deposit: &Deposit) -> CommandResult {
        if !self.users.contains_key(&deposit.recipient) {
            return Err(CommandError::UnknownUser);
        }
        let done = self.mailboxes.deposit(deposit, self.clock_unix_ms)?;
        Ok(Outcome::Deposited {
            seq: done.seq,
            expires_unix_ms: done.expires_unix_ms,
        })
    }

    fn register(&mut self, user: UserId, cmd: &SignedCommand) -> CommandResult {
        let CommandBody::Register {
            username,
            identity_dh,
            signed_prekey,
            one_time_prekeys,
            addresses,
        } = &cmd.body
        else {
            unreachable!("register is called for Register bodies only")
        };
        let username = Username::parse(username).map_err(CommandError::InvalidUsername)?;
        if self.users.contains_key(&user) {
            return Err(CommandError::AlreadyRegistered);
        }
        if self.names.contains_key(&username) {
            return Err(CommandError::UsernameTaken);
        }
        let identity = IdentityPublic {
            signing_key: cmd.signer,
            dh_key: *identity_dh,
        };
        verify_signed_prekey(&identity, signed_prekey)?;
        check_new_prekeys(&BTreeMap::new(), one_time_prekeys)?;
        if !addresses_ok(addresses) {
            return Err(CommandError::BadAddresses);
        }
        if self.users.len() >= self.users_max {
            return Err(CommandError::DirectoryFull);
        }
        // Nothing can fail from here on.
        Ok(self.insert_user(user, username, identity, &cmd.body, cmd.counter))
    }

    /// Stores a `Register` body that passed every check.
    fn insert_user(
        &mut self,
        user: UserId,
        username: Username,
        identity: IdentityPublic,
        body: &CommandBody,
        counter: u64,
    ) -> Outcome {
        let CommandBody::Register {
            signed_prekey,
            one_time_prekeys,
            addresses,
            ..
        } = body
        else {
            unreachable!("insert_user is called for Register bodies only")
        };
        let now = self.clock_unix_ms;
        let record = UserRecord {
            user,
            username: username.clone(),
            identity,
            signed_prekey: *signed_prekey,
            one_time_prekeys: one_time_prekeys.iter().map(|k| (k.id, k.key)).collect(),
            addresses: addresses.clone(),
            visibility: Visibility::default(),
            contacts: BTreeSet::new(),
            presence: Presence::Offline {
                last_seen_unix_ms: None,
            },
            registered_unix_ms: now,
            counter,
        };
        // The counter check above already used the tombstone; the record carries it on.
        if let Some(tombstone) = self.tombstones.remove(&user) {
            let indexed = self
                .tombstones_by_expiry
                .remove(&(tombstone.until_unix_ms, user));
            assert!(indexed, "tombstone maps");
        }
        assert!(self.users.insert(user, record).is_none());
        assert!(self.names.insert(username, user).is_none());
        Outcome::Registered {
            user,
            registered_unix_ms: now,
        }
    }

    /// Benchmarks and tests only (compiled out of release builds): registers as applying, at
    /// `ctx`, a `Register` command signed by `signer` would, with the same checks, the same stored
    /// record and the same audit record, except that neither the command's signature nor the
    /// signed prekey's is checked (there are none to check). It lets a benchmark fill a directory
    /// with a million users without a million key generations and four million Ed25519
    /// operations; the directory's memory does not depend on whether the signatures were checked.
    #[cfg(any(test, feature = "testing"))]
    pub fn register_unverified(
        &mut self,
        ctx: &ApplyContext,
        signer: [u8; 32],
        counter: u64,
        body: &CommandBody,
    ) -> CommandResult {
        self.clock_unix_ms = self.clock_unix_ms.max(ctx.unix_ms);
        self.prune_tombstones();
        let result = self.register_unverified_checked(signer, counter, body);
        self.push_audit(AuditRecord {
            index: ctx.index,
            unix_ms: self.clock_unix_ms,
            user: Some(UserId::from_signing_key(&signer)),
            kind: body.kind(),
            outcome: result.as_ref().map(|_| ()).map_err(Clone::clone),
        });
        result
    }

    #[cfg(any(test, feature = "testing"))]
    fn register_unverified_checked(
        &mut self,
        signer: [u8; 32],
        counter: u64,
        body: &CommandBody,
    ) -> CommandResult {
        let CommandBody::Register {
            username,
            identity_dh,
            one_time_prekeys,
            addresses,
            ..
        } = body
        else {
            return Err(CommandError::Malformed);
        };
        let user = UserId::from_signing_key(&signer);
        let username = Username::parse(username).map_err(CommandError::InvalidUsername)?;
        if self.last_counter(&user) >= counter {
            return Err(CommandError::Replayed {
                counter,
                last: self.last_counter(&user),
            });
        }
        if self.users.contains_key(&user) {
            return Err(CommandError::AlreadyRegistered);
        }
        if self.names.contains_key(&username) {
            return Err(CommandError::UsernameTaken);
        }
        check_new_prekeys(&BTreeMap::new(), one_time_prekeys)?;
        if !addresses_ok(addresses) {
            return Err(CommandError::BadAddresses);
        }
        if self.users.len() >= self.users_max {
            return Err(CommandError::DirectoryFull);
        }
        let identity = IdentityPublic {
            signing_key: signer,
            dh_key: *identity_dh,
        };
        Ok(self.insert_user(user, username, identity, body, counter))
    }

    fn claim(&mut self, claimer: UserId, counter: u64, target: &UserId) -> CommandResult {
        if !self.users.contains_key(&claimer) {
            return Err(CommandError::NotRegistered);
        }
        let record = self
            .users
            .get_mut(target)
            .ok_or(CommandError::UnknownUser)?;
        // Lowest id first: deterministic, and clients number keys upwards, so the oldest goes
        // first. Removing it here is what makes each key serve one session only (X3DH §4.2).
        let one_time_prekey = record
            .one_time_prekeys
            .pop_first()
            .map(|(id, key)| OneTimePrekey { id, key });
        let bundle = Bundle {
            identity: record.identity,
            signed_prekey: record.signed_prekey,
            one_time_prekey,
        };
        // The claimer may be the target (a second device fetching its own bundle).
        self.users.get_mut(&claimer).expect("checked above").counter = counter;
        Ok(Outcome::Bundle {
            pool_empty: one_time_prekey.is_none(),
            bundle,
        })
    }

    fn deregister(&mut self, user: UserId, counter: u64) -> CommandResult {
        if !self.users.contains_key(&user) {
            return Err(CommandError::NotRegistered);
        }
        // Already pruned at this apply: what is left is still needed.
        if self.tombstones.len() >= self.tombstones_max {
            return Err(CommandError::DirectoryFull);
        }
        let record = self.users.remove(&user).expect("checked above");
        // The mailbox goes with the record: no one could fetch or acknowledge it any more.
        self.mailboxes.remove_user(&user);
        assert_eq!(
            self.names.remove(&record.username),
            Some(user),
            "name index"
        );
        let until_unix_ms = self.clock_unix_ms.saturating_add(COMMAND_VALIDITY_MAX_MS);
        let tombstone = Tombstone {
            counter,
            until_unix_ms,
        };
        assert!(self.tombstones.insert(user, tombstone).is_none());
        assert!(self.tombstones_by_expiry.insert((until_unix_ms, user)));
        Ok(Outcome::Done)
    }

    pub(super) fn apply_presence(
        &mut self,
        index: LogIndex,
        batch: &PresenceBatch,
    ) -> CommandResult {
        if batch.changes.len() > PRESENCE_BATCH_MAX {
            return Err(CommandError::PresenceBatchTooLarge {
                changes: batch.changes.len(),
            });
        }
        let now = self.clock_unix_ms;
        let mut changed = 0u32;
        for (user, change) in &batch.changes {
            // The user may have deregistered after the leader saw the transition.
            let Some(record) = self.users.get_mut(user) else {
                continue;
            };
            let next = match (change, record.presence) {
                (PresenceChange::Online, online @ Presence::Online { .. }) => online,
                (PresenceChange::Online, Presence::Offline { .. }) => {
                    Presence::Online { since_unix_ms: now }
                }
                (PresenceChange::Offline { last_seen_unix_ms }, _) => Presence::Offline {
                    last_seen_unix_ms: Some(*last_seen_unix_ms),
                },
            };
            if next != record.presence {
                record.presence = next;
                changed += 1;
                self.log_presence(index, *user);
            }
        }
        Ok(Outcome::Presence { changed })
    }
}

/// Whether `prekey` is signed by `identity` over its X25519 key too (X3DH §3.2).
fn verify_signed_prekey(
    identity: &IdentityPublic,
    prekey: &SignedPrekey,
) -> Result<(), CommandError> {
    let bundle = PrekeyBundle {
        identity: *identity,
        signed_prekey_id: prekey.id,
        signed_prekey: prekey.key,
        signed_prekey_signature: prekey.signature,
        one_time_prekey: None,
    };
    bundle.verify().map_err(|_| CommandError::BadSignedPrekey)
}

/// Whether `keys` may join `pool`: the pool stays within its bound and no id repeats.
fn check_new_prekeys(
    pool: &BTreeMap<PrekeyId, [u8; 32]>,
    keys: &[OneTimePrekey],
) -> Result<(), CommandError> {
    if pool.len().saturating_add(keys.len()) > ONE_TIME_PREKEYS_MAX {
        return Err(CommandError::TooManyPrekeys {
            max: ONE_TIME_PREKEYS_MAX,
        });
    }
    let mut seen = BTreeSet::new();
    for key in keys {
        if pool.contains_key(&key.id) || !seen.insert(key.id) {
            return Err(CommandError::DuplicatePrekey(key.id));
        }
    }
    Ok(())
}
