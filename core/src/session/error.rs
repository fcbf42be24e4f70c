//! One small error enum per operation, so each caller matches only the failures its operation
//! can produce.
//!
//! Hostile or malformed input never panics: every decoder and every decrypt path returns one of
//! these. None of them carries secret material, so they are safe to log.

use crate::ids::UserId;

/// Why a wire message could not be parsed (before any cryptography runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The message ends before its fixed-width fields do.
    #[error("message truncated: {len} bytes, at least {needed} needed")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the fixed-width prefix and the AEAD tag need.
        needed: usize,
    },
    /// The leading version byte names a format this build does not know.
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u8),
    /// The kind byte is neither a normal nor an initial message.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The one-time-prekey flag is neither 0 nor 1, or an absent prekey has a non-zero id.
    #[error("malformed one-time prekey field")]
    MalformedPrekeyField,
    /// The message exceeds `MESSAGE_BYTES_MAX`.
    #[error("message of {len} bytes exceeds the maximum")]
    TooLarge {
        /// Bytes received.
        len: usize,
    },
}

/// Why a prekey bundle could not be decoded or verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bundle ends early or has trailing bytes.
    #[error("bundle has the wrong length")]
    WrongLength,
    /// The leading version byte names a format this build does not know.
    #[error("unsupported bundle version {0}")]
    UnsupportedVersion(u8),
    /// The one-time-prekey flag is neither 0 nor 1.
    #[error("malformed one-time prekey field")]
    MalformedPrekeyField,
}

/// Why [`super::Session::initiate`] refused a bundle (X3DH §3.3: "abort the protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InitiateError {
    /// The bundle's identity is not the user the caller asked for: its identity key hashes to
    /// another user id.
    #[error("the bundle belongs to user {found:?}, not to the requested {expected:?}")]
    WrongUser {
        /// The user id the caller passed to `Session::initiate`.
        expected: UserId,
        /// The user id of the bundle's identity key.
        found: UserId,
    },
    /// The identity Ed25519 key is not a valid point.
    #[error("the bundle's identity key is not a valid Ed25519 key")]
    InvalidIdentityKey,
    /// `verify_strict` rejected the signed prekey's signature.
    #[error("the signed prekey's signature does not verify")]
    BadSignedPrekeySignature,
    /// A DH output was all zero: a low-order key in the bundle (RFC 7748 §6.1 contributory check).
    #[error("a Diffie-Hellman output is all zero (low-order key in the bundle)")]
    NonContributoryKey,
    /// The bundle is our own identity.
    #[error("cannot open a session with our own identity")]
    SelfSession,
}

/// Why [`super::Session::accept`] refused an initial message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// The bytes are not a well-formed message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The message carries no initial (X3DH) header.
    #[error("not an initial message")]
    NotInitial,
    /// The caller passed a signed prekey whose id is not the one the message names.
    #[error("the message uses another signed prekey")]
    SignedPrekeyMismatch,
    /// The message names a one-time prekey and the caller passed none or another one, or the
    /// reverse.
    #[error("the message's one-time prekey does not match the one supplied")]
    OneTimePrekeyMismatch,
    /// The initiator's identity key is invalid or its X25519 key is not bound to its Ed25519 key.
    #[error("the initiator's identity binding signature does not verify")]
    BadIdentityBinding,
    /// A DH output was all zero (low-order key in the message).
    #[error("a Diffie-Hellman output is all zero (low-order key in the message)")]
    NonContributoryKey,
    /// The initiator claims our own identity.
    #[error("the initial message claims our own identity")]
    SelfSession,
    /// Key agreement succeeded but the first message did not decrypt: no session is created.
    #[error("the first message does not decrypt: {0}")]
    Decrypt(#[from] DecryptError),
}

/// Why [`super::Session::encrypt`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    /// The plaintext exceeds `PLAINTEXT_BYTES_MAX`.
    #[error("plaintext of {len} bytes exceeds the maximum")]
    PlaintextTooLarge {
        /// Bytes offered.
        len: usize,
    },
    /// The sending chain reached `u32::MAX` messages; a reply is needed to ratchet.
    #[error("the sending chain is exhausted")]
    ChainExhausted,
}

/// Why [`super::Session::decrypt`] refused. In every case the session state is unchanged
/// (Double Ratchet §3.5: decryption is transactional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The bytes are not a well-formed message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The message starts another X3DH handshake than this session's: hand it to
    /// [`super::Session::accept`] (simultaneous initiation: both sides initiated, so each holds
    /// an initiated session and receives the other's initial message).
    #[error("the message belongs to another handshake")]
    OtherHandshake,
    /// The peer started a new ratchet chain although it cannot have seen our new key yet.
    #[error("unexpected new ratchet key")]
    UnexpectedRatchetKey,
    /// The new ratchet key gives an all-zero DH output (low-order point).
    #[error("the ratchet key is a low-order point")]
    NonContributoryKey,
    /// The message number lies more than `CHAIN_JUMP_MAX` ahead (Double Ratchet §3.5
    /// MAX_SKIP: skipped keys denial of service).
    #[error("the message skips {skipped} keys, more than the limit")]
    TooManySkipped {
        /// Keys that would have to be skipped.
        skipped: u64,
    },
    /// The message's key was already consumed: a duplicate or replay of a decrypted message, or a
    /// message whose skipped key expired or was evicted, or a chain retired long ago.
    #[error("duplicate message or expired key")]
    DuplicateOrExpired,
    /// The AEAD rejected the message: tampered, forged or for another session.
    #[error("authentication failed")]
    Authentication,
}

/// Why a serialized session could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The input is empty.
    #[error("empty session state")]
    Empty,
    /// The leading version byte names a format this build does not know.
    #[error("unsupported session state version {0}")]
    UnsupportedVersion(u8),
    /// postcard could not decode the body, or there are trailing bytes.
    #[error("undecodable session state")]
    Undecodable,
    /// The body decoded but breaks an invariant (limits, key consistency).
    #[error("invalid session state: {0}")]
    Invalid(&'static str),
}

/// Why [`super::keystore::seal`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The Argon2id parameters are outside the accepted range.
    #[error("key derivation parameters out of range")]
    ParamsOutOfRange,
    /// The secret exceeds `keystore::SECRET_BYTES_MAX`.
    #[error("secret too large")]
    SecretTooLarge,
}

/// Why [`super::keystore::open`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The blob is shorter than its header and tag.
    #[error("key store blob truncated")]
    Truncated,
    /// The leading version byte names a format this build does not know.
    #[error("unsupported key store version {0}")]
    UnsupportedVersion(u8),
    /// The key derivation function id is unknown.
    #[error("unknown key derivation function {0}")]
    UnknownKdf(u8),
    /// The stored Argon2id parameters are outside the accepted range (a hostile blob could
    /// otherwise demand gigabytes of memory).
    #[error("stored key derivation parameters out of range")]
    ParamsOutOfRange,
    /// Authentication failed: the passphrase is wrong or the blob was modified. The two cannot
    /// be told apart, by design.
    #[error("wrong passphrase or corrupt key store")]
    WrongPassphraseOrCorrupt,
}
