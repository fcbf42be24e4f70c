//! The directory's command vocabulary: usernames, signed commands, the entries Raft carries, and
//! what applying them answers. Everything here is a wire or storage format, so every encoding
//! starts with a version byte (ARCHITECTURE.md, "Versioned formats").

use super::mailbox::ENVELOPE_BYTES_MAX;
use crate::ids::{MailboxSeq, MessageId, UserId};
use crate::session::{IdentityKeyPair, IdentityPublic, PrekeyBundle, PrekeyId};
use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version byte of every encoded [`DirectoryEntry`] and [`CommandResult`].
pub const DIRECTORY_FORMAT_VERSION: u8 = 1;
/// Domain separation of command signatures: the identity key signs nothing else that could be
/// taken for a directory command (the X3DH signatures use their own domains, `session::keys`).
pub const COMMAND_SIGNATURE_DOMAIN: &[u8] = b"Paloma directory command v1\0";

/// Shortest username, in bytes.
pub const USERNAME_BYTES_MIN: usize = 3;
/// Longest username, in bytes.
pub const USERNAME_BYTES_MAX: usize = 32;
/// One-time prekeys a user may hold in the directory; also the most one command may publish.
/// 100 is Signal's server-side batch size; a pool drains only as fast as people start sessions.
pub const ONE_TIME_PREKEYS_MAX: usize = 100;
/// Network addresses a user may publish (one per device or interface is plenty).
pub const ADDRESSES_MAX: usize = 4;
/// Longest address, in bytes (`[ipv6]:port` with a scope fits in 64; names may be longer).
pub const ADDRESS_BYTES_MAX: usize = 128;
/// Contacts a user may list for `Visibility::Contacts`.
pub const CONTACTS_MAX: usize = 256;
/// How far in the future a command's expiry may lie. Replay protection has two halves: the
/// per-user counter for as long as the directory remembers the key, and expiry beyond that (a
/// deregistered key's counter is kept exactly this long, so an old command can never apply again).
pub const COMMAND_VALIDITY_MAX_MS: u64 = 10 * 60 * 1000;
/// The largest encoded [`DirectoryEntry`] a replica proposes. Every entry within the other limits
/// fits (the test `full_entries_fit_in_one_proposal` builds the worst cases): a full contact list
/// is the largest signed command (256 × 32 bytes plus ~130, about 8.2 KiB), a full presence batch
/// about 11 KiB, a full prekey pool about 4.5 KiB. Well within Raft's default `command_bytes_max`.
pub const ENTRY_BYTES_MAX: usize = 16 * 1024;

/// A case-folded username: 3 to 32 bytes of `a-z 0-9 _ . -`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

/// Why a username is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum UsernameError {
    /// Fewer than 3 bytes.
    #[error("username is {len} characters long; use at least {USERNAME_BYTES_MIN}")]
    TooShort {
        /// The length given.
        len: usize,
    },
    /// More than 32 bytes.
    #[error("username is {len} characters long; use at most {USERNAME_BYTES_MAX}")]
    TooLong {
        /// The length given.
        len: usize,
    },
    /// A character outside `a-z 0-9 _ . -` (after case folding).
    #[error("username may hold only a-z, 0-9, '_', '.' and '-'; found {found:?} at position {at}")]
    InvalidChar {
        /// The character.
        found: char,
        /// Its position (in characters).
        at: usize,
    },
}

impl Username {
    /// Parses and case-folds a username: `Alice` and `alice` are the same name.
    pub fn parse(raw: &str) -> Result<Username, UsernameError> {
        for (at, found) in raw.chars().enumerate() {
            let c = found.to_ascii_lowercase();
            if !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')) {
                return Err(UsernameError::InvalidChar { found, at });
            }
        }
        // Only ASCII is left, so bytes and characters agree.
        let len = raw.len();
        if len < USERNAME_BYTES_MIN {
            return Err(UsernameError::TooShort { len });
        }
        if len > USERNAME_BYTES_MAX {
            return Err(UsernameError::TooLong { len });
        }
        Ok(Username(raw.to_ascii_lowercase()))
    }

    /// The folded name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = UsernameError;
    fn try_from(raw: String) -> Result<Username, UsernameError> {
        Username::parse(&raw)
    }
}

impl From<Username> for String {
    fn from(name: Username) -> String {
        name.0
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A signed prekey as published (X3DH §3.2): its signature covers the identity's X25519 key too
/// (`session::keys::signed_prekey_message`), so neither key can be swapped for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekey {
    /// Its id.
    pub id: PrekeyId,
    /// The X25519 public key.
    pub key: [u8; 32],
    /// Ed25519 signature by the identity key.
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

/// A one-time prekey as published (X3DH §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OneTimePrekey {
    /// Its id.
    pub id: PrekeyId,
    /// The X25519 public key.
    pub key: [u8; 32],
}

/// Who may see a user's presence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Visibility {
    /// Anyone logged in.
    #[default]
    Everyone,
    /// The users on the subject's contact list.
    Contacts,
    /// No one (the subject is always shown offline).
    Nobody,
}

/// What a signed command does. The signer is the user it changes (for a claim: the claimer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandBody {
    /// Binds `username` to the signing key and publishes the first keys.
    Register {
        /// The wanted name, as typed (validated and folded at apply).
        username: String,
        /// The identity's X25519 key (the signed prekey's signature covers it).
        identity_dh: [u8; 32],
        /// The first signed prekey.
        signed_prekey: SignedPrekey,
        /// The first one-time prekeys.
        one_time_prekeys: Vec<OneTimePrekey>,
        /// Where the user's client can be reached directly.
        addresses: Vec<String>,
    },
    /// Replaces the signed prekey (X3DH §2.4: rotated periodically).
    RotateSignedPrekey(SignedPrekey),
    /// Adds one-time prekeys to the pool.
    PublishOneTimePrekeys(Vec<OneTimePrekey>),
    /// Takes `target`'s bundle, removing one one-time prekey from its pool if any is left.
    ClaimBundle {
        /// Whose bundle.
        target: UserId,
    },
    /// Replaces the published addresses.
    UpdateAddresses(Vec<String>),
    /// Sets who sees the signer's presence, and the contact list `Contacts` refers to.
    SetVisibility {
        /// The new visibility.
        visibility: Visibility,
        /// The new contact list (replaces the old one).
        contacts: Vec<UserId>,
    },
    /// Deletes the record and releases the username (and deletes the user's mailbox).
    Deregister,
    /// Deletes every envelope of the signer's mailbox up to and including `upto` (ARCHITECTURE.md,
    /// "Mailboxes": cumulative, because a client drains its mailbox in order and acknowledges
    /// what it has made durable; a list of seqs would cost a bound and buy nothing). `upto` may
    /// not exceed the last seq the mailbox assigned. (Appended last: the variant index is part of
    /// the encoding.)
    AckMailbox {
        /// The highest seq acknowledged.
        upto: MailboxSeq,
    },
}

impl CommandBody {
    /// The kind, for audit records and traces.
    #[must_use]
    pub fn kind(&self) -> CommandKind {
        match self {
            CommandBody::Register { .. } => CommandKind::Register,
            CommandBody::RotateSignedPrekey(_) => CommandKind::RotateSignedPrekey,
            CommandBody::PublishOneTimePrekeys(_) => CommandKind::PublishOneTimePrekeys,
            CommandBody::ClaimBundle { .. } => CommandKind::ClaimBundle,
            CommandBody::UpdateAddresses(_) => CommandKind::UpdateAddresses,
            CommandBody::SetVisibility { .. } => CommandKind::SetVisibility,
            CommandBody::Deregister => CommandKind::Deregister,
            CommandBody::AckMailbox { .. } => CommandKind::AckMailbox,
        }
    }
}

/// The kind of a directory entry, without its data (audit records hold only this).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CommandKind {
    /// [`CommandBody::Register`].
    Register,
    /// [`CommandBody::RotateSignedPrekey`].
    RotateSignedPrekey,
    /// [`CommandBody::PublishOneTimePrekeys`].
    PublishOneTimePrekeys,
    /// [`CommandBody::ClaimBundle`].
    ClaimBundle,
    /// [`CommandBody::UpdateAddresses`].
    UpdateAddresses,
    /// [`CommandBody::SetVisibility`].
    SetVisibility,
    /// [`CommandBody::Deregister`].
    Deregister,
    /// [`DirectoryEntry::Presence`].
    Presence,
    /// An entry that did not decode.
    Malformed,
    /// [`DirectoryEntry::Deposit`]. (Mailbox kinds appended last: the variant index is part of
    /// the audit trail's encoding.)
    Deposit,
    /// [`CommandBody::AckMailbox`].
    AckMailbox,
}

/// A command signed by the identity key of the user it changes. The signature covers the version,
/// the signer, the counter, the expiry and the body, so none can be altered or replayed: the
/// counter must exceed the last one the directory applied for this key, and the expiry bounds how
/// long a command can wait (see [`COMMAND_VALIDITY_MAX_MS`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// The Ed25519 identity key; the user is its BLAKE3 hash.
    pub signer: [u8; 32],
    /// Strictly increasing per signer.
    pub counter: u64,
    /// Leader-stamped time after which the command is refused.
    pub expires_unix_ms: u64,
    /// What to do.
    pub body: CommandBody,
    /// Ed25519 over `COMMAND_SIGNATURE_DOMAIN ‖ postcard(version, signer, counter, expiry, body)`.
    #[serde(with = "sig_bytes")]
    pub signature: [u8; 64],
}

impl SignedCommand {
    /// Signs `body` with `identity`.
    #[must_use]
    pub fn sign(
        identity: &IdentityKeyPair,
        counter: u64,
        expires_unix_ms: u64,
        body: CommandBody,
    ) -> SignedCommand {
        let signer = identity.public().signing_key;
        let message = signed_bytes(&signer, counter, expires_unix_ms, &body);
        SignedCommand {
            signer,
            counter,
            expires_unix_ms,
            signature: identity.sign(&message),
            body,
        }
    }

    /// The user the command speaks for.
    #[must_use]
    pub fn user(&self) -> UserId {
        UserId::from_signing_key(&self.signer)
    }

    /// Whether the signature verifies under `signer` (`verify_strict`: rejects non-canonical and
    /// small-order encodings, RFC 8032 §5.1.7 plus the dalek strictness checks).
    #[must_use]
    pub fn verify(&self) -> bool {
        let public = IdentityPublic {
            signing_key: self.signer,
            dh_key: [0; 32],
        };
        let Some(key) = public.verifying_key() else {
            return false;
        };
        let message = signed_bytes(&self.signer, self.counter, self.expires_unix_ms, &self.body);
        key.verify_strict(&message, &Signature::from_bytes(&self.signature))
            .is_ok()
    }
}

/// The bytes a command signature covers: domain ‖ postcard(version, signer, counter, expiry, body).
fn signed_bytes(
    signer: &[u8; 32],
    counter: u64,
    expires_unix_ms: u64,
    body: &CommandBody,
) -> Vec<u8> {
    let mut out = COMMAND_SIGNATURE_DOMAIN.to_vec();
    let encoded = postcard::to_allocvec(&(
        DIRECTORY_FORMAT_VERSION,
        signer,
        counter,
        expires_unix_ms,
        body,
    ))
    .expect("encoding to a Vec cannot fail");
    out.extend_from_slice(&encoded);
    out
}

/// Presence transitions the leader commits in one entry (README, "Presence": heartbeats are soft state; only
/// transitions are replicated).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceBatch {
    /// Each user's new state, at most once per user per batch.
    pub changes: Vec<(UserId, PresenceChange)>,
}

/// One presence transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceChange {
    /// Came online.
    Online,
    /// Went offline; last heard from at this leader-clock time.
    Offline {
        /// When the user was last heard from.
        last_seen_unix_ms: u64,
    },
}

/// The most transitions one presence entry carries. A transition encodes in at most 43 bytes
/// (user id 32, tag 1, varint `u64` 10), so a full batch stays within [`ENTRY_BYTES_MAX`]; a
/// leader with more transitions proposes several entries.
pub const PRESENCE_BATCH_MAX: usize = 256;

/// Worst-case bytes of one encoded presence transition: user id, variant tag, varint `u64`.
const PRESENCE_CHANGE_BYTES_MAX: usize = 32 + 1 + 10;
// A full batch (version, entry tag, varint length of at most 5 bytes, the changes) must fit in one
// proposal.
const _: () =
    assert!(1 + 1 + 5 + PRESENCE_BATCH_MAX * PRESENCE_CHANGE_BYTES_MAX <= ENTRY_BYTES_MAX);

/// What a Raft command entry of the directory holds.
// An entry is decoded, applied and dropped one at a time, never stored in bulk: boxing the large
// variant would only add an allocation per entry.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryEntry {
    /// A user's signed command, forwarded by a replica.
    Signed(SignedCommand),
    /// Presence transitions, proposed by the leader replica.
    Presence(PresenceBatch),
    /// An envelope for a recipient's mailbox, proposed by the replica the depositor is logged in
    /// to. (Appended last: the variant index is part of the encoding.)
    Deposit(Deposit),
}

/// An opaque ciphertext envelope for `recipient`'s mailbox (ARCHITECTURE.md, "Mailboxes", rule 3). It carries nothing
/// about its sender: the replica that proposes it authenticated the depositor by the login of its
/// connection, and that is all routing needs (ARCHITECTURE.md, "Mailboxes", says what this does
/// and does not hide).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deposit {
    /// Whose mailbox.
    pub recipient: UserId,
    /// Chosen by the sender; a mailbox holds one envelope per id (re-depositing is idempotent).
    pub message_id: MessageId,
    /// The ciphertext, at most [`ENVELOPE_BYTES_MAX`] bytes. Never decrypted by a replica.
    pub envelope: Vec<u8>,
}

/// Worst-case bytes of an encoded deposit entry besides the envelope itself: version, entry tag,
/// recipient, message id, the envelope's varint length (3 bytes up to 2 MiB).
pub const DEPOSIT_OVERHEAD_BYTES_MAX: usize = 1 + 1 + 32 + 16 + 3;
// A deposit of the largest envelope fits in one proposal.
const _: () = assert!(DEPOSIT_OVERHEAD_BYTES_MAX + ENVELOPE_BYTES_MAX <= ENTRY_BYTES_MAX);

impl DirectoryEntry {
    /// Versioned encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![DIRECTORY_FORMAT_VERSION];
        postcard::to_io(self, &mut out).expect("encoding to a Vec cannot fail");
        out
    }

    /// Decodes [`DirectoryEntry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<DirectoryEntry, CommandError> {
        match bytes.split_first() {
            Some((&DIRECTORY_FORMAT_VERSION, rest)) => {
                let (entry, tail) =
                    postcard::take_from_bytes(rest).map_err(|_| CommandError::Malformed)?;
                if tail.is_empty() {
                    Ok(entry)
                } else {
                    Err(CommandError::Malformed)
                }
            }
            Some((&v, _)) => Err(CommandError::Version(v)),
            None => Err(CommandError::Malformed),
        }
    }
}

/// The public half of a user's bundle as the directory hands it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The owner's identity keys.
    pub identity: IdentityPublic,
    /// The current signed prekey.
    pub signed_prekey: SignedPrekey,
    /// A one-time prekey, removed from the pool by this claim; `None` when the pool was empty
    /// (the session then has weaker replay protection, X3DH §4.2).
    pub one_time_prekey: Option<OneTimePrekey>,
}

impl Bundle {
    /// The session layer's form (verify it with [`PrekeyBundle::verify`]).
    #[must_use]
    pub fn to_prekey_bundle(&self) -> PrekeyBundle {
        PrekeyBundle {
            identity: self.identity,
            signed_prekey_id: self.signed_prekey.id,
            signed_prekey: self.signed_prekey.key,
            signed_prekey_signature: self.signed_prekey.signature,
            one_time_prekey: self.one_time_prekey.map(|k| (k.id, k.key)),
        }
    }
}

/// What an applied command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The user now exists, registered at this leader-stamped time.
    Registered {
        /// The new user.
        user: UserId,
        /// The leader-stamped registration time.
        registered_unix_ms: u64,
    },
    /// The change was made.
    Done,
    /// A claimed bundle.
    Bundle {
        /// The bundle.
        bundle: Bundle,
        /// The pool was empty: the bundle has no one-time prekey.
        pool_empty: bool,
    },
    /// A presence batch was applied (how many transitions changed something).
    Presence {
        /// Transitions that changed a record.
        changed: u32,
    },
    /// The envelope is in the recipient's mailbox (a re-deposit of an id the mailbox still holds
    /// answers exactly this again, storing nothing). (Appended last: the variant index is part
    /// of the encoding.)
    Deposited {
        /// Its place in the mailbox.
        seq: MailboxSeq,
        /// Directory time after which it is purged unless acknowledged first.
        expires_unix_ms: u64,
    },
    /// An acknowledgement deleted this many envelopes.
    Acked {
        /// Envelopes deleted.
        removed: u32,
    },
}

/// Why a command was refused; it changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// The entry does not decode.
    #[error("the command does not decode")]
    Malformed,
    /// An unknown format version.
    #[error("unknown directory format version {0}")]
    Version(u8),
    /// The signature does not verify under the signer's key.
    #[error("the signature does not verify")]
    BadSignature,
    /// The command's expiry has passed.
    #[error("the command expired at {expires_unix_ms} (directory time {now_unix_ms})")]
    Expired {
        /// The command's expiry.
        expires_unix_ms: u64,
        /// The directory's time at apply.
        now_unix_ms: u64,
    },
    /// The expiry lies further ahead than [`COMMAND_VALIDITY_MAX_MS`].
    #[error("the command's expiry is too far in the future")]
    ExpiryTooFar,
    /// The counter is not above the last one applied for this key: a replay or a stale retry.
    #[error("counter {counter} is not above the last applied {last}: replayed or out of order")]
    Replayed {
        /// The command's counter.
        counter: u64,
        /// The last counter applied for the key.
        last: u64,
    },
    /// The username is not acceptable.
    #[error("invalid username: {0}")]
    InvalidUsername(UsernameError),
    /// Someone else holds the username.
    #[error("username is taken")]
    UsernameTaken,
    /// The key already has a record (deregister first).
    #[error("this identity is already registered")]
    AlreadyRegistered,
    /// The signer has no record.
    #[error("this identity is not registered")]
    NotRegistered,
    /// The claim's target (or the deposit's recipient) has no record.
    #[error("no such user")]
    UnknownUser,
    /// The signed prekey's signature does not verify under the identity key.
    #[error("the signed prekey's signature does not verify")]
    BadSignedPrekey,
    /// Too many one-time prekeys (in the command or in the pool afterwards).
    #[error("at most {max} one-time prekeys")]
    TooManyPrekeys {
        /// The bound.
        max: usize,
    },
    /// A one-time prekey id is repeated or already in the pool.
    #[error("one-time prekey id {0:?} is already used")]
    DuplicatePrekey(PrekeyId),
    /// Too many or too long addresses.
    #[error("at most {ADDRESSES_MAX} addresses of at most {ADDRESS_BYTES_MAX} bytes")]
    BadAddresses,
    /// Too many contacts.
    #[error("at most {CONTACTS_MAX} contacts")]
    TooManyContacts,
    /// The directory holds as many users (or deregistration tombstones) as it may.
    #[error("the directory is full")]
    DirectoryFull,
    /// A presence entry carries more than [`PRESENCE_BATCH_MAX`] transitions. (Appended last: the
    /// variant index is part of the encoding.)
    #[error("{changes} presence transitions in one entry; at most {PRESENCE_BATCH_MAX}")]
    PresenceBatchTooLarge {
        /// Transitions in the entry.
        changes: usize,
    },
    /// The envelope is larger than a mailbox stores. (Mailbox errors appended last.)
    #[error("an envelope of {len} bytes; at most {max}")]
    EnvelopeTooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The recipient's mailbox is at its quota (count or bytes); nothing was stored. The sender
    /// shows it (ARCHITECTURE.md, "Mailboxes", rule 3: never a silent drop) and may retry once the recipient drains.
    #[error("the recipient's mailbox is full ({messages} messages, {bytes} bytes)")]
    MailboxFull {
        /// Envelopes the mailbox holds.
        messages: u32,
        /// Envelope bytes the mailbox holds.
        bytes: u64,
    },
    /// The cluster holds as many envelopes (or bytes) in all mailboxes as it may.
    #[error("the directory's mailbox storage is full")]
    MailboxesFull,
    /// The mailbox holds another envelope under this message id.
    #[error("the mailbox holds a different envelope under this message id")]
    MessageIdConflict,
    /// An acknowledgement beyond the last seq the mailbox assigned.
    #[error("acknowledging up to {upto:?}, but the mailbox's last seq is {last:?}")]
    AckBeyondLast {
        /// The acknowledgement's bound.
        upto: MailboxSeq,
        /// The last seq assigned.
        last: MailboxSeq,
    },
}

/// What the directory answers for one entry: its response bytes carry this.
pub type CommandResult = Result<Outcome, CommandError>;

/// Versioned encoding of a [`CommandResult`] (the `Applied` response bytes).
#[must_use]
pub fn encode_result(result: &CommandResult) -> Vec<u8> {
    let mut out = vec![DIRECTORY_FORMAT_VERSION];
    postcard::to_io(result, &mut out).expect("encoding to a Vec cannot fail");
    out
}

/// Decodes [`encode_result`]; trailing bytes are refused, as in [`DirectoryEntry::decode`].
pub fn decode_result(bytes: &[u8]) -> Result<CommandResult, CommandError> {
    match bytes.split_first() {
        Some((&DIRECTORY_FORMAT_VERSION, rest)) => {
            let (result, tail) =
                postcard::take_from_bytes(rest).map_err(|_| CommandError::Malformed)?;
            if tail.is_empty() {
                Ok(result)
            } else {
                Err(CommandError::Malformed)
            }
        }
        Some((&v, _)) => Err(CommandError::Version(v)),
        None => Err(CommandError::Malformed),
    }
}

/// serde for `[u8; 64]` (serde derives arrays only up to 32).
pub(crate) mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let (a, b) = bytes.split_at(32);
        let a: &[u8; 32] = a.try_into().expect("32 bytes");
        let b: &[u8; 32] = b.try_into().expect("32 bytes");
        (a, b).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&a);
        out[32..].copy_from_slice(&b);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);
    impl crate::session::Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_add(7);
                *b = self.0;
            }
        }
    }

    #[test]
    fn usernames_fold_and_refuse_clearly() {
        assert_eq!(Username::parse("Alice_01").unwrap().as_str(), "alice_01");
        assert_eq!(
            Username::parse("ab"),
            Err(UsernameError::TooShort { len: 2 })
        );
        assert_eq!(
            Username::parse(&"a".repeat(33)),
            Err(UsernameError::TooLong { len: 33 })
        );
        assert_eq!(
            Username::parse("al ice"),
            Err(UsernameError::InvalidChar { found: ' ', at: 2 })
        );
        assert!(matches!(
            Username::parse("álvaro"),
            Err(UsernameError::InvalidChar { found: 'á', at: 0 })
        ));
        // Deserialising validates too: a record can never hold a bad name.
        let bad = postcard::to_allocvec(&"NO WAY".to_string()).unwrap();
        assert!(postcard::from_bytes::<Username>(&bad).is_err());
    }

    #[test]
    fn a_signature_covers_every_field() {
        let id = IdentityKeyPair::generate(&mut Counter(1));
        let cmd = SignedCommand::sign(&id, 5, 1_000, CommandBody::Deregister);
        assert!(cmd.verify());
        assert_eq!(cmd.user(), id.user_id());
        let mut changed = cmd.clone();
        changed.counter = 6;
        assert!(!changed.verify());
        let mut changed = cmd.clone();
        changed.expires_unix_ms = 2_000;
        assert!(!changed.verify());
        let mut changed = cmd.clone();
        changed.body = CommandBody::UpdateAddresses(vec![]);
        assert!(!changed.verify());
        let other = IdentityKeyPair::generate(&mut Counter(99));
        let mut changed = cmd;
        changed.signer = other.public().signing_key;
        assert!(!changed.verify());
    }

    #[test]
    fn full_entries_fit_in_one_proposal() {
        let id = IdentityKeyPair::generate(&mut Counter(5));
        let signed_prekey = SignedPrekey {
            id: PrekeyId(u32::MAX),
            key: [0xff; 32],
            signature: [0xff; 64],
        };
        let register = CommandBody::Register {
            username: "a".repeat(USERNAME_BYTES_MAX),
            identity_dh: [0xff; 32],
            signed_prekey,
            one_time_prekeys: (0..ONE_TIME_PREKEYS_MAX)
                .map(|i| OneTimePrekey {
                    id: PrekeyId(u32::MAX - i as u32),
                    key: [0xff; 32],
                })
                .collect(),
            addresses: vec!["x".repeat(ADDRESS_BYTES_MAX); ADDRESSES_MAX],
        };
        let contacts = CommandBody::SetVisibility {
            visibility: Visibility::Contacts,
            contacts: (0..CONTACTS_MAX).map(|i| UserId([i as u8; 32])).collect(),
        };
        for body in [register, contacts] {
            let cmd = SignedCommand::sign(&id, u64::MAX, u64::MAX, body);
            let len = DirectoryEntry::Signed(cmd).encode().len();
            assert!(len <= ENTRY_BYTES_MAX, "{len} bytes");
        }
        let presence = DirectoryEntry::Presence(PresenceBatch {
            changes: vec![
                (
                    UserId([0xff; 32]),
                    PresenceChange::Offline {
                        last_seen_unix_ms: u64::MAX
                    }
                );
                PRESENCE_BATCH_MAX
            ],
        });
        let len = presence.encode().len();
        assert!(len <= ENTRY_BYTES_MAX, "{len} bytes");
    }

    #[test]
    fn entries_and_results_round_trip_with_a_version() {
        let id = IdentityKeyPair::generate(&mut Counter(3));
        let entry = DirectoryEntry::Signed(SignedCommand::sign(
            &id,
            1,
            9,
            CommandBody::ClaimBundle {
                target: UserId([4; 32]),
            },
        ));
        let bytes = entry.encode();
        assert_eq!(bytes[0], DIRECTORY_FORMAT_VERSION);
        assert_eq!(DirectoryEntry::decode(&bytes), Ok(entry));
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert_eq!(
            DirectoryEntry::decode(&wrong),
            Err(CommandError::Version(9))
        );
        let mut long = bytes;
        long.push(0);
        assert_eq!(DirectoryEntry::decode(&long), Err(CommandError::Malformed));
        let result: CommandResult = Err(CommandError::UsernameTaken);
        assert_eq!(decode_result(&encode_result(&result)), Ok(result));
    }
}
