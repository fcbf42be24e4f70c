//! The persisted session: a version byte, then the postcard encoding of [`SessionState`].
//!
//! postcard is not self-describing, so the leading byte names the layout. A future layout gets
//! version 2 and a decoder for version 1 stays. Decoding untrusted bytes checks every invariant, so
//! a corrupt or hostile blob is refused, never half-loaded.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::StateError;
use super::keys::IdentityPublic;
use super::message::{InitialHeader, INITIAL_HEADER_BYTES};
use super::ratchet::RatchetState;

/// Version byte of the serialized session state.
pub const STATE_VERSION: u8 = 1;

/// Which X3DH role this side played; fixes the order of identities in the associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Role {
    /// Fetched the bundle and sent the initial message ("Alice").
    Initiator,
    /// Owned the bundle and accepted the initial message ("Bob").
    Responder,
}

/// Everything a session persists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SessionState {
    pub(crate) role: Role,
    pub(crate) local: IdentityPublic,
    pub(crate) remote: IdentityPublic,
    /// The encoded X3DH initial header of this session's handshake ([`INITIAL_HEADER_BYTES`]).
    pub(crate) initial_header: Vec<u8>,
    /// Initiator only: no reply yet, so outgoing messages carry the initial header.
    pub(crate) awaiting_reply: bool,
    pub(crate) ratchet: RatchetState,
}

impl SessionState {
    /// (initiator, responder), the order of the associated data (X3DH §3.3).
    pub(crate) fn initiator_and_responder(&self) -> (&IdentityPublic, &IdentityPublic) {
        match self.role {
            Role::Initiator => (&self.local, &self.remote),
            Role::Responder => (&self.remote, &self.local),
        }
    }

    /// EK_A, bytes 128..160 of the encoded initial header.
    pub(crate) fn handshake_ephemeral_key(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(&self.initial_header[128..160]);
        key
    }

    pub(crate) fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        // Size first so the buffer never reallocates and leaves secret copies behind.
        let size = postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .unwrap_or_else(|_| unreachable!("session state always serializes"));
        let mut out = Vec::with_capacity(1 + size);
        out.push(STATE_VERSION);
        let out = Zeroizing::new(
            postcard::to_extend(self, out)
                .unwrap_or_else(|_| unreachable!("session state always serializes")),
        );
        debug_assert_eq!(out.len(), 1 + size);
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let (&version, body) = bytes.split_first().ok_or(StateError::Empty)?;
        if version != STATE_VERSION {
            return Err(StateError::UnsupportedVersion(version));
        }
        let (state, rest): (Self, _) =
            postcard::take_from_bytes(body).map_err(|_| StateError::Undecodable)?;
        if !rest.is_empty() {
            return Err(StateError::Undecodable);
        }
        state.check_invariants().map_err(StateError::Invalid)?;
        Ok(state)
    }

    /// Every invariant of a session between operations.
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        if self.initial_header.len() != INITIAL_HEADER_BYTES {
            return Err("initial header of the wrong length");
        }
        let initial = InitialHeader::from_bytes(&self.initial_header)
            .map_err(|_| "undecodable initial header")?;
        let (initiator, responder) = self.initiator_and_responder();
        if initial.initiator != *initiator {
            return Err("initial header names another initiator");
        }
        if initiator.signing_key == responder.signing_key {
            return Err("session with ourselves");
        }
        if self.role == Role::Responder && self.awaiting_reply {
            return Err("a responder never awaits a reply");
        }
        if self.role == Role::Initiator && !self.awaiting_reply && self.ratchet.receiving.is_none()
        {
            return Err("initiator saw a reply but has no receiving chain");
        }
        self.ratchet.check_invariants()
    }
}
