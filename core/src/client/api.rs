//! The application's calls. Each validates what it can locally (so a doomed request never
//! travels), queues one operation and sends it at once if it may; refusals are a [`ClientError`]
//! and queue nothing.

use super::keys::{published, REGISTER_ONE_TIME_PREKEYS};
use super::ops::{OpKind, PendingCommand, PendingDeposit};
use super::{Client, ClientError, OpId, Registration, ONE_TIME_PREKEYS_HELD_MAX};
use crate::directory::command::{
    ADDRESSES_MAX, ADDRESS_BYTES_MAX, CONTACTS_MAX, ONE_TIME_PREKEYS_MAX,
};
use crate::directory::mailbox::ENVELOPE_BYTES_MAX;
use crate::directory::{CommandBody, Username, Visibility};
use crate::ids::{MailboxSeq, MessageId, RequestId, UserId};
use crate::replica::protocol::{
    ClientFrame, Consistency, LookupKey, Request, CLIENT_FRAME_BYTES_MAX,
};
use crate::session::{PrekeyId, SignedPrekeyPair};
use crate::time::Now;

impl Client {
    /// Registers this identity as `username`, publishing a new signed prekey and
    /// [`REGISTER_ONE_TIME_PREKEYS`] one-time prekeys (their private halves are held at once).
    /// Ends in `Registered` or `Failed`.
    pub fn register(
        &mut self,
        now: Now,
        username: &str,
        addresses: Vec<String>,
    ) -> Result<OpId, ClientError> {
        let name = Username::parse(username).map_err(ClientError::InvalidUsername)?;
        check_addresses(&addresses)?;
        if self.registration != Registration::Unregistered {
            return Err(ClientError::AlreadyRegistered);
        }
        self.admit()?;
        self.prekey_room(REGISTER_ONE_TIME_PREKEYS)?;
        let pair = self.keys.generate_signed(&self.identity);
        let one_time_prekeys = self.keys.generate_one_time(REGISTER_ONE_TIME_PREKEYS);
        let one_time = one_time_prekeys.iter().map(|k| k.id).collect();
        let body = CommandBody::Register {
            username: name.as_str().to_owned(),
            identity_dh: self.identity.public().dh_key,
            signed_prekey: published(&pair),
            one_time_prekeys,
            addresses,
        };
        let id = self.enqueue_command(now, body, Some(pair), one_time);
        self.registration = Registration::Pending(id);
        Ok(id)
    }

    /// Looks a user up. Ends in `LookedUp` (which may raise `KeyChanged` first) or `Failed`.
    pub fn lookup(
        &mut self,
        now: Now,
        key: LookupKey,
        consistency: Consistency,
    ) -> Result<OpId, ClientError> {
        if let LookupKey::Name(raw) = &key {
            Username::parse(raw).map_err(ClientError::InvalidUsername)?;
        }
        self.admit()?;
        Ok(self.enqueue(now, OpKind::Lookup { key, consistency }))
    }

    /// Claims `target`'s prekey bundle, taking one of its one-time prekeys. Ends in
    /// `BundleClaimed` (verified) or `Failed`.
    pub fn claim_bundle(&mut self, now: Now, target: UserId) -> Result<OpId, ClientError> {
        self.registered()?;
        self.admit()?;
        Ok(self.enqueue_command(now, CommandBody::ClaimBundle { target }, None, Vec::new()))
    }

    /// Publishes `n` new one-time prekeys (1 to `ONE_TIME_PREKEYS_MAX`). Ends in `Done` or
    /// `Failed`.
    pub fn publish_one_time_prekeys(&mut self, now: Now, n: usize) -> Result<OpId, ClientError> {
        self.registered()?;
        if n == 0 || n > ONE_TIME_PREKEYS_MAX {
            return Err(ClientError::PrekeyCount {
                requested: n,
                max: ONE_TIME_PREKEYS_MAX,
            });
        }
        self.admit()?;
        self.prekey_room(n)?;
        let keys = self.keys.generate_one_time(n);
        let ids = keys.iter().map(|k| k.id).collect();
        Ok(self.enqueue_command(now, CommandBody::PublishOneTimePrekeys(keys), None, ids))
    }

    /// Replaces the signed prekey (X3DH §2.4); the new one is used once the directory has it.
    /// Ends in `Done` or `Failed`.
    pub fn rotate_signed_prekey(&mut self, now: Now) -> Result<OpId, ClientError> {
        self.registered()?;
        self.admit()?;
        let pair = self.keys.generate_signed(&self.identity);
        let body = CommandBody::RotateSignedPrekey(published(&pair));
        Ok(self.enqueue_command(now, body, Some(pair), Vec::new()))
    }

    /// Replaces the published addresses. Ends in `Done` or `Failed`.
    pub fn update_addresses(
        &mut self,
        now: Now,
        addresses: Vec<String>,
    ) -> Result<OpId, ClientError> {
        self.registered()?;
        check_addresses(&addresses)?;
        self.admit()?;
        Ok(self.enqueue_command(
            now,
            CommandBody::UpdateAddresses(addresses),
            None,
            Vec::new(),
        ))
    }

    /// Sets who sees this user's presence and the contact list `Contacts` means. Ends in `Done`
    /// or `Failed`.
    pub fn set_visibility(
        &mut self,
        now: Now,
        visibility: Visibility,
        contacts: Vec<UserId>,
    ) -> Result<OpId, ClientError> {
        self.registered()?;
        if contacts.len() > CONTACTS_MAX {
            return Err(ClientError::TooManyContacts);
        }
        self.admit()?;
        let body = CommandBody::SetVisibility {
            visibility,
            contacts,
        };
        Ok(self.enqueue_command(now, body, None, Vec::new()))
    }

    /// Deletes this identity's record and releases its username; the prekeys are forgotten once
    /// it applied. Ends in `Done` or `Failed`.
    pub fn deregister(&mut self, now: Now) -> Result<OpId, ClientError> {
        self.registered()?;
        self.admit()?;
        Ok(self.enqueue_command(now, CommandBody::Deregister, None, Vec::new()))
    }

    /// Replaces the presence subscription with `users` (renewed by the client after every new
    /// login); their presence arrives as `PresenceChanged`. Ends in `Done` or `Failed`.
    pub fn subscribe(&mut self, now: Now, users: Vec<UserId>) -> Result<OpId, ClientError> {
        // The largest request id bounds the encoding from above.
        let frame = ClientFrame::Request {
            id: RequestId(u64::MAX),
            request: Request::Subscribe(users.clone()),
        };
        let bytes = frame.encode().len();
        if bytes > CLIENT_FRAME_BYTES_MAX {
            return Err(ClientError::TooLarge {
                bytes,
                max: CLIENT_FRAME_BYTES_MAX,
            });
        }
        self.admit()?;
        self.subscription.clone_from(&users);
        Ok(self.enqueue(
            now,
            OpKind::Subscribe {
                users,
                renewal: false,
            },
        ))
    }

    /// Deposits `envelope` (ciphertext, at most `ENVELOPE_BYTES_MAX` bytes) in `to`'s mailbox
    /// under `message_id` (ARCHITECTURE.md, "Mailboxes", rule 3). A write: it waits for the commands and deposits
    /// before it, and every retry resends the same `(session, seq)`. Ends in `Deposited` once
    /// committed, or `Failed` (a full mailbox is `OpError::Command(MailboxFull)`).
    pub fn deposit(
        &mut self,
        now: Now,
        to: UserId,
        message_id: MessageId,
        envelope: Vec<u8>,
    ) -> Result<OpId, ClientError> {
        if envelope.len() > ENVELOPE_BYTES_MAX {
            return Err(ClientError::EnvelopeTooLarge {
                len: envelope.len(),
                max: ENVELOPE_BYTES_MAX,
            });
        }
        self.admit()?;
        let deposit = PendingDeposit {
            to,
            message_id,
            envelope,
            slot: None,
        };
        Ok(self.enqueue(now, OpKind::Deposit(Box::new(deposit))))
    }

    /// Reads this user's mailbox after `after` (at most `max` envelopes, fewer if they do not fit
    /// in one frame; `MailboxReply::page.more` says so). Ends in `MailboxFetched` or `Failed`.
    pub fn fetch_mailbox(
        &mut self,
        now: Now,
        after: MailboxSeq,
        max: u32,
    ) -> Result<OpId, ClientError> {
        self.admit()?;
        Ok(self.enqueue(now, OpKind::FetchMailbox { after, max }))
    }

    /// Acknowledges (deletes) every envelope of this user's mailbox up to `upto`: a signed
    /// command, so only this identity can. Acknowledge only what is durable locally
    /// (ARCHITECTURE.md, "Mailboxes", rule 4). Ends in `MailboxAcked` or `Failed`.
    pub fn ack_mailbox(&mut self, now: Now, upto: MailboxSeq) -> Result<OpId, ClientError> {
        self.registered()?;
        self.admit()?;
        Ok(self.enqueue_command(now, CommandBody::AckMailbox { upto }, None, Vec::new()))
    }

    fn admit(&self) -> Result<(), ClientError> {
        if self.ops.len() >= self.config.queue_max {
            return Err(ClientError::QueueFull {
                max: self.config.queue_max,
            });
        }
        Ok(())
    }

    /// Commands other than `Register` need a record, or a registration queued before them.
    fn registered(&self) -> Result<(), ClientError> {
        match self.registration {
            Registration::Unregistered => Err(ClientError::NotRegistered),
            Registration::Pending(_) | Registration::Registered => Ok(()),
        }
    }

    fn prekey_room(&self, n: usize) -> Result<(), ClientError> {
        if self.keys.has_room(n) {
            Ok(())
        } else {
            Err(ClientError::TooManyPrekeysHeld {
                max: ONE_TIME_PREKEYS_HELD_MAX,
            })
        }
    }

    fn enqueue(&mut self, now: Now, kind: OpKind) -> OpId {
        let id = self.ops.push(kind);
        self.pump(now);
        id
    }

    fn enqueue_command(
        &mut self,
        now: Now,
        body: CommandBody,
        signed_prekey: Option<SignedPrekeyPair>,
        one_time: Vec<PrekeyId>,
    ) -> OpId {
        let command = PendingCommand {
            body,
            signed_prekey,
            one_time,
            signed: None,
            maybe_applied: false,
        };
        self.enqueue(now, OpKind::Command(Box::new(command)))
    }
}

/// The directory's address limits, checked before anything is signed.
fn check_addresses(addresses: &[String]) -> Result<(), ClientError> {
    if addresses.len() > ADDRESSES_MAX || addresses.iter().any(|a| a.len() > ADDRESS_BYTES_MAX) {
        return Err(ClientError::BadAddresses);
    }
    Ok(())
}
