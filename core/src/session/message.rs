//! The wire format of session messages: fixed-width, versioned, decoded without panics.
//!
//! ```text
//! version u8 (= 1) ‖ kind u8 (0 normal, 1 initial)
//! [initial header, kind 1 only, 169 bytes:
//!     initiator identity Ed25519 key 32 ‖ initiator identity X25519 key 32 ‖
//!     identity binding signature 64 ‖ ephemeral key 32 ‖ signed prekey id u32 ‖
//!     one-time prekey flag u8 ‖ one-time prekey id u32]
//! ratchet header, 40 bytes: ratchet public key 32 ‖ PN u32 ‖ N u32      (Double Ratchet §3.1)
//! ciphertext ‖ 16-byte Poly1305 tag
//! ```
//! Integers are big-endian. Everything before the ciphertext (the *prefix*) is bound into the
//! AEAD's associated data together with the session's AD digest, so flipping any header bit fails
//! authentication (Double Ratchet §3.4: `CONCAT(AD, header)` is the associated data).

use super::error::MessageError;
use super::keys::{IdentityPublic, PrekeyId};

/// Version byte of the message format.
pub const MESSAGE_VERSION: u8 = 1;
/// Kind byte: a message on an established session.
const KIND_NORMAL: u8 = 0;
/// Kind byte: a message carrying the X3DH initial header (X3DH §3.3).
const KIND_INITIAL: u8 = 1;
/// Encoded [`InitialHeader`] length.
pub const INITIAL_HEADER_BYTES: usize = 32 + 32 + 64 + 32 + 4 + 1 + 4;
/// Encoded [`RatchetHeader`] length.
pub const RATCHET_HEADER_BYTES: usize = 32 + 4 + 4;
/// Poly1305 tag length.
pub const TAG_BYTES: usize = 16;
/// Largest plaintext [`super::Session::encrypt`] accepts. Attachments travel as separately
/// encrypted blobs; messages stay small so a mailbox can bound its queues by count.
pub const PLAINTEXT_BYTES_MAX: usize = 256 * 1024;
/// Largest message a decoder accepts: the largest plaintext plus every header and the tag.
pub const MESSAGE_BYTES_MAX: usize =
    2 + INITIAL_HEADER_BYTES + RATCHET_HEADER_BYTES + PLAINTEXT_BYTES_MAX + TAG_BYTES;

/// What the responder needs to run X3DH (X3DH §3.3); attached by the initiator to every message
/// until the first reply arrives, so any of them can start the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialHeader {
    /// The initiator's identity keys.
    pub initiator: IdentityPublic,
    /// Ed25519 signature binding the initiator's X25519 identity key to its signing key.
    pub identity_binding_signature: [u8; 64],
    /// The initiator's ephemeral key EK_A; also names the handshake.
    pub ephemeral_key: [u8; 32],
    /// Which signed prekey of the responder was used.
    pub signed_prekey_id: PrekeyId,
    /// Which one-time prekey was used, if any.
    pub one_time_prekey_id: Option<PrekeyId>,
}

impl InitialHeader {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initiator.signing_key);
        out.extend_from_slice(&self.initiator.dh_key);
        out.extend_from_slice(&self.identity_binding_signature);
        out.extend_from_slice(&self.ephemeral_key);
        out.extend_from_slice(&self.signed_prekey_id.0.to_be_bytes());
        match self.one_time_prekey_id {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.0.to_be_bytes());
            }
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 4]);
            }
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INITIAL_HEADER_BYTES);
        self.encode_into(&mut out);
        out
    }

    /// Decode exactly [`INITIAL_HEADER_BYTES`] bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() != INITIAL_HEADER_BYTES {
            return Err(MessageError::Truncated {
                len: bytes.len(),
                needed: INITIAL_HEADER_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        let signing_key = r.array32();
        let dh_key = r.array32();
        let identity_binding_signature = r.array64();
        let ephemeral_key = r.array32();
        let signed_prekey_id = PrekeyId(r.u32());
        let flag = r.u8();
        let id = r.u32();
        let one_time_prekey_id = match (flag, id) {
            (1, id) => Some(PrekeyId(id)),
            (0, 0) => None,
            _ => return Err(MessageError::MalformedPrekeyField),
        };
        Ok(Self {
            initiator: IdentityPublic {
                signing_key,
                dh_key,
            },
            identity_binding_signature,
            ephemeral_key,
            signed_prekey_id,
            one_time_prekey_id,
        })
    }
}

/// The Double Ratchet header (§3.1): sender's ratchet key, previous sending chain length, message
/// number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RatchetHeader {
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// PN: number of messages in the sender's previous sending chain.
    pub previous_chain_length: u32,
    /// N: number of this message in the current sending chain.
    pub message_number: u32,
}

impl RatchetHeader {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ratchet_key);
        out.extend_from_slice(&self.previous_chain_length.to_be_bytes());
        out.extend_from_slice(&self.message_number.to_be_bytes());
    }
}

/// A parsed message borrowing from its bytes.
#[derive(Debug)]
pub(crate) struct ParsedMessage<'a> {
    /// Everything before the ciphertext, bound into the AEAD's associated data.
    pub(crate) prefix: &'a [u8],
    pub(crate) initial: Option<InitialHeader>,
    pub(crate) header: RatchetHeader,
    /// Ciphertext ‖ tag, at least [`TAG_BYTES`] long.
    pub(crate) ciphertext: &'a [u8],
}

/// Parse a message without any cryptography.
pub(crate) fn parse(bytes: &[u8]) -> Result<ParsedMessage<'_>, MessageError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(MessageError::TooLarge { len: bytes.len() });
    }
    let truncated = |needed| MessageError::Truncated {
        len: bytes.len(),
        needed,
    };
    let (&version, rest) = bytes.split_first().ok_or(truncated(2))?;
    if version != MESSAGE_VERSION {
        return Err(MessageError::UnsupportedVersion(version));
    }
    let (&kind, rest) = rest.split_first().ok_or(truncated(2))?;
    let initial_bytes = match kind {
        KIND_NORMAL => 0,
        KIND_INITIAL => INITIAL_HEADER_BYTES,
        other => return Err(MessageError::UnknownKind(other)),
    };
    let needed = 2 + initial_bytes + RATCHET_HEADER_BYTES + TAG_BYTES;
    if bytes.len() < needed {
        return Err(truncated(needed));
    }
    let (initial_raw, rest) = rest.split_at(initial_bytes);
    let initial = if kind == KIND_INITIAL {
        Some(InitialHeader::from_bytes(initial_raw)?)
    } else {
        None
    };
    let (header_raw, ciphertext) = rest.split_at(RATCHET_HEADER_BYTES);
    let mut r = Reader::new(header_raw);
    let header = RatchetHeader {
        ratchet_key: r.array32(),
        previous_chain_length: r.u32(),
        message_number: r.u32(),
    };
    let prefix_len = 2 + initial_bytes + RATCHET_HEADER_BYTES;
    Ok(ParsedMessage {
        prefix: &bytes[..prefix_len],
        initial,
        header,
        ciphertext,
    })
}

/// Encode the prefix of a message (everything before the ciphertext), reserving room for
/// `capacity_extra` more bytes. `initial` is an encoded [`InitialHeader`].
pub(crate) fn encode_prefix_raw(
    initial: Option<&[u8]>,
    header: &RatchetHeader,
    capacity_extra: usize,
) -> Vec<u8> {
    let initial_bytes = initial.map_or(0, <[u8]>::len);
    assert!(
        initial_bytes == 0 || initial_bytes == INITIAL_HEADER_BYTES,
        "encoded initial header of the wrong length"
    );
    let mut out = Vec::with_capacity(2 + initial_bytes + RATCHET_HEADER_BYTES + capacity_extra);
    out.push(MESSAGE_VERSION);
    match initial {
        Some(initial) => {
            out.push(KIND_INITIAL);
            out.extend_from_slice(initial);
        }
        None => out.push(KIND_NORMAL),
    }
    header.encode_into(&mut out);
    out
}

/// Peek at a message's initial header, if it has one, so the caller can find the prekeys it
/// names before calling [`super::Session::accept`].
pub fn initial_header(message: &[u8]) -> Result<Option<InitialHeader>, MessageError> {
    Ok(parse(message)?.initial)
}

/// A cursor over a slice whose length the caller has already checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        // Callers check lengths before reading; running short is a bug in this module.
        assert!(self.bytes.len() >= N, "Reader overrun: length not checked");
        let (head, tail) = self.bytes.split_at(N);
        self.bytes = tail;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        out
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take::<4>())
    }

    pub(crate) fn array32(&mut self) -> [u8; 32] {
        self.take::<32>()
    }

    pub(crate) fn array64(&mut self) -> [u8; 64] {
        self.take::<64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_initial() -> InitialHeader {
        InitialHeader {
            initiator: IdentityPublic {
                signing_key: [1; 32],
                dh_key: [2; 32],
            },
            identity_binding_signature: [3; 64],
            ephemeral_key: [4; 32],
            signed_prekey_id: PrekeyId(5),
            one_time_prekey_id: Some(PrekeyId(6)),
        }
    }

    #[test]
    fn prefix_round_trips() {
        let header = RatchetHeader {
            ratchet_key: [7; 32],
            previous_chain_length: 8,
            message_number: 9,
        };
        for initial in [None, Some(sample_initial())] {
            let encoded = initial.as_ref().map(InitialHeader::to_bytes);
            let mut bytes = encode_prefix_raw(encoded.as_deref(), &header, 0);
            bytes.extend_from_slice(&[0; TAG_BYTES]);
            let parsed = parse(&bytes).unwrap();
            assert_eq!(parsed.header, header);
            assert_eq!(parsed.initial, initial);
            assert_eq!(parsed.ciphertext.len(), TAG_BYTES);
            assert_eq!(parsed.prefix.len(), bytes.len() - TAG_BYTES);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let header = RatchetHeader {
            ratchet_key: [7; 32],
            previous_chain_length: 8,
            message_number: 9,
        };
        let mut bytes = encode_prefix_raw(Some(&sample_initial().to_bytes()), &header, 0);
        bytes.extend_from_slice(&[0; TAG_BYTES]);
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn bad_version_kind_and_flag() {
        assert_eq!(
            parse(&[2, 0]).unwrap_err(),
            MessageError::UnsupportedVersion(2)
        );
        assert_eq!(parse(&[1, 5]).unwrap_err(), MessageError::UnknownKind(5));
        let mut initial = sample_initial().to_bytes();
        initial[INITIAL_HEADER_BYTES - 5] = 2;
        assert_eq!(
            InitialHeader::from_bytes(&initial),
            Err(MessageError::MalformedPrekeyField)
        );
    }
}
