//! End-to-end encrypted sessions: X3DH to start, the Double Ratchet to continue (README,
//! "End-to-end sessions").
//!
//! The Signal specifications (X3DH rev. 1, Double Ratchet rev. 1) instantiated on X25519,
//! Ed25519, BLAKE3 and ChaCha20-Poly1305; the README's "Constructions" maps each spec function
//! onto a crate.
//! The layer does no IO, reads no clock and draws randomness only through [`Entropy`].
//!
//! # Using a session
//! ```
//! use paloma_core::session::{
//!     initial_header, Entropy, IdentityKeyPair, PrekeyBundle, PrekeyId, Session,
//!     SignedPrekeyPair,
//! };
//! # struct Counter(u8);
//! # impl Entropy for Counter {
//! #     fn fill(&mut self, buf: &mut [u8]) {
//! #         for b in buf { self.0 = self.0.wrapping_add(1); *b = self.0; }
//! #     }
//! # }
//! # let mut entropy = Counter(0); // the runtime passes the OS source here
//! // Bob publishes a bundle through the directory.
//! let bob = IdentityKeyPair::generate(&mut entropy);
//! let spk = SignedPrekeyPair::generate(&bob, PrekeyId(1), &mut entropy);
//! let bundle = PrekeyBundle::new(&bob, &spk, None);
//!
//! // Alice asked the directory for Bob's bundle; she starts a session, checking that the bundle
//! // is Bob's, and sends. She persists the session *before* sending.
//! let alice = IdentityKeyPair::generate(&mut entropy);
//! let mut to_bob = Session::initiate(&alice, bob.user_id(), &bundle, &mut entropy)?;
//! let wire = to_bob.encrypt(b"hello", &mut entropy)?;
//! let _persist_this_first = to_bob.to_bytes();
//!
//! // Bob looks up the prekeys the message names, then accepts it.
//! let header = initial_header(&wire)?.expect("first message carries the X3DH header");
//! assert_eq!(header.signed_prekey_id, spk.id());
//! let (mut to_alice, plaintext) = Session::accept(&bob, &spk, None, &wire)?;
//! assert_eq!(plaintext, b"hello");
//!
//! let reply = to_alice.encrypt(b"hi", &mut entropy)?;
//! assert_eq!(to_bob.decrypt(&reply)?, b"hi");
//! assert_eq!(to_bob.safety_number(), to_alice.safety_number());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Rules the caller must keep
//! - **Persist before sending.** [`Session::encrypt`] advances the sending chain in memory; store
//!   [`Session::to_bytes`] durably before the returned message leaves the device. Otherwise a
//!   crash and restore would encrypt a different plaintext under the same message key, that is
//!   the same ChaCha20-Poly1305 key and nonce (RFC 8439 §4: a nonce must never repeat under a
//!   key). Likewise persist after a successful [`Session::decrypt`] before
//!   acknowledging, so a message key is not kept after its plaintext is stored.
//! - **Delete one-time prekeys** after [`Session::accept`] succeeds with them (X3DH §4.2), and
//!   remember [`Session::handshake_id`]s of accepted sessions: an initial message without a
//!   one-time prekey can be replayed to create a second session (X3DH §4.2).
//! - **Pass the user you asked for** to [`Session::initiate`]: a bundle is self-signed, so only
//!   the caller knows whose bundle it should be ([`InitiateError::WrongUser`], X3DH §4.1).
//! - **Compare safety numbers** out of band to rule out a lying directory (X3DH §4.1).
//! - A message whose [`DecryptError::OtherHandshake`] says it starts a new handshake goes to
//!   [`Session::accept`]; keep the previous session for receiving (simultaneous initiation, as
//!   in Signal's Sesame specification).

mod error;
#[cfg(any(test, fuzzing, feature = "testing"))]
pub mod fuzz;
#[doc(hidden)]
#[cfg(any(test, fuzzing, feature = "testing"))]
pub mod kat;
mod kdf;
mod keys;
pub mod keystore;
mod message;
mod ratchet;
mod safety;
mod state;
mod x3dh;

pub use error::{
    AcceptError, BundleError, DecryptError, EncryptError, InitiateError, MessageError, OpenError,
    SealError, StateError,
};
pub use keys::{
    Entropy, IdentityKeyPair, IdentityPublic, OneTimePrekeyPair, PrekeyBundle, PrekeyId,
    SignedPrekeyPair, BUNDLE_BYTES, BUNDLE_VERSION,
};
pub use message::{
    initial_header, InitialHeader, RatchetHeader, INITIAL_HEADER_BYTES, MESSAGE_BYTES_MAX,
    MESSAGE_VERSION, PLAINTEXT_BYTES_MAX, RATCHET_HEADER_BYTES, TAG_BYTES,
};
pub use ratchet::{
    CHAIN_JUMP_MAX, PREVIOUS_RECEIVING_CHAINS_MAX, RETIRED_RATCHET_KEYS_MAX, SKIPPED_KEYS_MAX,
    SKIPPED_KEYS_PER_CHAIN_MAX, SKIPPED_KEY_AGE_MESSAGES_MAX,
};
pub use safety::SafetyNumber;
pub use state::STATE_VERSION;

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::ids::UserId;
use keys::draw_secret;
use ratchet::RatchetState;
use state::{Role, SessionState};

/// An established pairwise session with one peer device.
///
/// Created by [`Session::initiate`] (the side that fetched a bundle) or [`Session::accept`] (the
/// side that received the first message); restored with [`Session::from_bytes`].
pub struct Session {
    state: SessionState,
    /// Digest of the X3DH associated data, bound into every AEAD call; derived, not stored.
    ad_digest: [u8; 32],
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.state.role)
            .field("remote", &self.state.remote.user_id())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Start a session with user `peer` from the bundle the directory returned for them
    /// (X3DH §3.3, then Double Ratchet §3.3 for Alice).
    ///
    /// Refuses a bundle whose identity key is not `peer`'s ([`InitiateError::WrongUser`], before
    /// drawing any entropy) and verifies the signed prekey signature, aborting on failure. Draws
    /// 64 bytes of entropy: the ephemeral key, then the first ratchet key. Every message sent
    /// until the first reply carries the initial header.
    pub fn initiate(
        local: &IdentityKeyPair,
        peer: UserId,
        bundle: &PrekeyBundle,
        entropy: &mut dyn Entropy,
    ) -> Result<Self, InitiateError> {
        let found = bundle.identity.user_id();
        if found != peer {
            // Checked before drawing so a refused bundle consumes no entropy; x3dh checks again.
            return Err(InitiateError::WrongUser {
                expected: peer,
                found,
            });
        }
        let ephemeral_secret = draw_secret(entropy);
        let ratchet_secret = draw_secret(entropy);
        Self::initiate_with_secrets(local, peer, bundle, ephemeral_secret, ratchet_secret)
            .map(|(session, _)| session)
    }

    fn initiate_with_secrets(
        local: &IdentityKeyPair,
        peer: UserId,
        bundle: &PrekeyBundle,
        ephemeral_secret: keys::Secret32,
        ratchet_secret: keys::Secret32,
    ) -> Result<(Self, x3dh::Agreement), InitiateError> {
        let ephemeral = StaticSecret::from(ephemeral_secret.0);
        let agreement = x3dh::initiator_agree(local, peer, bundle, &ephemeral)?;
        let ratchet = RatchetState::initiator(
            &agreement.shared_secret,
            &bundle.signed_prekey,
            ratchet_secret,
        )
        // The signed prekey already passed the contributory check in DH1 and DH3.
        .ok_or(InitiateError::NonContributoryKey)?;
        let initial = InitialHeader {
            initiator: *local.public(),
            identity_binding_signature: local.binding_signature(),
            ephemeral_key: PublicKey::from(&ephemeral).to_bytes(),
            signed_prekey_id: bundle.signed_prekey_id,
            one_time_prekey_id: bundle.one_time_prekey.map(|(id, _)| id),
        };
        let state = SessionState {
            role: Role::Initiator,
            local: *local.public(),
            remote: bundle.identity,
            initial_header: initial.to_bytes(),
            awaiting_reply: true,
            ratchet,
        };
        let session = Self::from_state(state);
        session.assert_invariants();
        Ok((session, agreement))
    }

    /// Accept a session from its initial message (X3DH §3.4), decrypting that message.
    ///
    /// The caller finds the prekeys named by [`initial_header`] and passes their private parts.
    /// Nothing is created unless the first message authenticates. Afterwards the caller deletes
    /// the one-time prekey (X3DH §4.2).
    pub fn accept(
        local: &IdentityKeyPair,
        signed_prekey: &SignedPrekeyPair,
        one_time_prekey: Option<&OneTimePrekeyPair>,
        message: &[u8],
    ) -> Result<(Self, Vec<u8>), AcceptError> {
        let (session, plaintext, _) =
            Self::accept_with_agreement(local, signed_prekey, one_time_prekey, message)?;
        Ok((session, plaintext))
    }

    fn accept_with_agreement(
        local: &IdentityKeyPair,
        signed_prekey: &SignedPrekeyPair,
        one_time_prekey: Option<&OneTimePrekeyPair>,
        message: &[u8],
    ) -> Result<(Self, Vec<u8>, x3dh::Agreement), AcceptError> {
        let initial = message::parse(message)?
            .initial
            .ok_or(AcceptError::NotInitial)?;
        let agreement = x3dh::responder_agree(local, signed_prekey, one_time_prekey, &initial)?;
        let spk_secret = keys::Secret32(*signed_prekey.to_secret_bytes());
        let state = SessionState {
            role: Role::Responder,
            local: *local.public(),
            remote: initial.initiator,
            initial_header: initial.to_bytes(),
            awaiting_reply: false,
            ratchet: RatchetState::responder(&agreement.shared_secret, spk_secret),
        };
        let mut session = Self::from_state(state);
        let plaintext = session.decrypt(message)?;
        session.assert_invariants();
        Ok((session, plaintext, agreement))
    }

    fn from_state(state: SessionState) -> Self {
        let (initiator, responder) = state.initiator_and_responder();
        let ad = kdf::associated_data(initiator, responder);
        let ad_digest = kdf::associated_data_digest(&ad);
        Self { state, ad_digest }
    }

    /// Encrypt one message (Double Ratchet §3.4).
    ///
    /// **The caller must persist [`Self::to_bytes`] before the returned bytes leave the device**
    /// (see the module docs, "Rules the caller must keep"): the state has already advanced, and a
    /// restore from an older copy would reuse a message key. Draws 32 bytes of entropy when a DH
    /// ratchet step is due (the first send after receiving a new ratchet key). On error nothing
    /// changes.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        entropy: &mut dyn Entropy,
    ) -> Result<Vec<u8>, EncryptError> {
        self.encrypt_traced(plaintext, entropy)
            .map(|(message, _)| message)
    }

    /// [`Self::encrypt`], also returning the message key (for known-answer tests).
    fn encrypt_traced(
        &mut self,
        plaintext: &[u8],
        entropy: &mut dyn Entropy,
    ) -> Result<(Vec<u8>, keys::Secret32), EncryptError> {
        if plaintext.len() > PLAINTEXT_BYTES_MAX {
            return Err(EncryptError::PlaintextTooLarge {
                len: plaintext.len(),
            });
        }
        let (header, message_key) = self.state.ratchet.next_sending_key(entropy)?;
        let initial = self
            .state
            .awaiting_reply
            .then_some(&self.state.initial_header[..]);
        let mut out = message::encode_prefix_raw(initial, &header, plaintext.len() + TAG_BYTES);
        let prefix_len = out.len();
        let aad = AssociatedData::new(&self.ad_digest, &out);
        out.extend_from_slice(plaintext);
        kdf::seal_in_place(
            &kdf::expand_message_key(&message_key),
            aad.as_slice(),
            &mut out,
            prefix_len,
        );
        Ok((out, message_key))
    }

    /// Decrypt one message (Double Ratchet §3.5), transactionally: on any error the session is
    /// unchanged. A duplicate of an already decrypted message gives
    /// [`DecryptError::DuplicateOrExpired`].
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let parsed = message::parse(message)?;
        if let Some(initial) = &parsed.initial {
            // Only the responder receives initial headers, and only of its own handshake.
            if self.state.role != Role::Responder
                || initial.ephemeral_key != self.state.handshake_ephemeral_key()
            {
                return Err(DecryptError::OtherHandshake);
            }
        }
        let plan = self.state.ratchet.plan(&parsed.header)?;
        let key = kdf::expand_message_key(&plan.message_key);
        let aad = AssociatedData::new(&self.ad_digest, parsed.prefix);
        let plaintext = kdf::open(&key, aad.as_slice(), parsed.ciphertext)
            .ok_or(DecryptError::Authentication)?;
        self.state.ratchet.commit(plan);
        // Any authenticated message from the responder is the first reply (X3DH §3.3).
        self.state.awaiting_reply = false;
        Ok(plaintext)
    }

    /// The versioned serialized state, to persist (see [`Self::encrypt`] for when). Contains
    /// secrets: store it encrypted at rest.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        self.state.to_bytes()
    }

    /// Restore a session from [`Self::to_bytes`]. Untrusted bytes give a typed error, never a
    /// panic; the decoded state is checked against every invariant.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        Ok(Self::from_state(SessionState::from_bytes(bytes)?))
    }

    /// Our identity.
    pub fn local_identity(&self) -> &IdentityPublic {
        &self.state.local
    }

    /// The peer's identity, as authenticated by X3DH.
    pub fn remote_identity(&self) -> &IdentityPublic {
        &self.state.remote
    }

    /// The peer's user id.
    pub fn remote_user_id(&self) -> UserId {
        self.state.remote.user_id()
    }

    /// Whether we started this session (and so attach the initial header until a reply).
    pub fn is_initiator(&self) -> bool {
        self.state.role == Role::Initiator
    }

    /// Whether outgoing messages still carry the initial header (no reply received yet).
    pub fn is_awaiting_reply(&self) -> bool {
        self.state.awaiting_reply
    }

    /// The handshake's ephemeral key: the same on both sides, unique per handshake. Responders
    /// record it to refuse replays of initial messages without a one-time prekey.
    pub fn handshake_id(&self) -> [u8; 32] {
        self.state.handshake_ephemeral_key()
    }

    /// The safety number of the two identities, to compare out of band.
    pub fn safety_number(&self) -> SafetyNumber {
        SafetyNumber::of(&self.state.local, &self.state.remote)
    }

    /// Number of stored skipped message keys (bounded by [`SKIPPED_KEYS_MAX`]).
    pub fn skipped_keys_total(&self) -> usize {
        self.state.ratchet.skipped_keys_total()
    }

    /// Check every state invariant; panics with the broken one. Cheap enough to run after each
    /// step in tests and simulation.
    pub fn assert_invariants(&self) {
        if let Err(broken) = self.state.check_invariants() {
            panic!("session invariant broken: {broken}");
        }
    }
}

/// The AEAD's associated data: AD digest ‖ message prefix, on the stack (the prefix is at most
/// 211 bytes).
struct AssociatedData {
    bytes: [u8; 32 + 2 + INITIAL_HEADER_BYTES + RATCHET_HEADER_BYTES],
    len: usize,
}

impl AssociatedData {
    fn new(ad_digest: &[u8; 32], prefix: &[u8]) -> Self {
        let mut bytes = [0u8; 32 + 2 + INITIAL_HEADER_BYTES + RATCHET_HEADER_BYTES];
        let len = 32 + prefix.len();
        assert!(len <= bytes.len(), "message prefix longer than its format");
        bytes[..32].copy_from_slice(ad_digest);
        bytes[32..len].copy_from_slice(prefix);
        Self { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);
    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_add(7);
                *b = self.0;
            }
        }
    }

    fn pair(with_one_time: bool) -> (Session, Session, Counter) {
        pair_seeded(with_one_time, 0)
    }

    fn pair_seeded(with_one_time: bool, seed: u8) -> (Session, Session, Counter) {
        let mut e = Counter(seed);
        let alice = IdentityKeyPair::generate(&mut e);
        let bob = IdentityKeyPair::generate(&mut e);
        let spk = SignedPrekeyPair::generate(&bob, PrekeyId(1), &mut e);
        let otk = OneTimePrekeyPair::generate(PrekeyId(2), &mut e);
        let otk = with_one_time.then_some(&otk);
        let bundle = PrekeyBundle::new(&bob, &spk, otk);
        let mut a = Session::initiate(&alice, bob.user_id(), &bundle, &mut e).unwrap();
        let first = a.encrypt(b"first", &mut e).unwrap();
        let (b, plaintext) = Session::accept(&bob, &spk, otk, &first).unwrap();
        assert_eq!(plaintext, b"first");
        (a, b, e)
    }

    #[test]
    fn initial_header_attached_until_first_reply() {
        let (mut a, mut b, mut e) = pair(true);
        let second = a.encrypt(b"second", &mut e).unwrap();
        assert!(initial_header(&second).unwrap().is_some());
        assert_eq!(b.decrypt(&second).unwrap(), b"second");
        let reply = b.encrypt(b"reply", &mut e).unwrap();
        assert!(initial_header(&reply).unwrap().is_none());
        assert_eq!(a.decrypt(&reply).unwrap(), b"reply");
        assert!(!a.is_awaiting_reply());
        let third = a.encrypt(b"third", &mut e).unwrap();
        assert!(initial_header(&third).unwrap().is_none());
        assert_eq!(b.decrypt(&third).unwrap(), b"third");
        assert_eq!(a.handshake_id(), b.handshake_id());
        a.assert_invariants();
        b.assert_invariants();
    }

    #[test]
    fn state_round_trips() {
        let (mut a, mut b, mut e) = pair(false);
        let m = a.encrypt(b"x", &mut e).unwrap();
        let restored = Session::from_bytes(&b.to_bytes()).unwrap();
        assert_eq!(*restored.to_bytes(), *b.to_bytes());
        b = restored;
        assert_eq!(b.decrypt(&m).unwrap(), b"x");
    }

    #[test]
    fn initial_message_of_another_handshake_is_refused() {
        let (_, mut b, mut e) = pair(false);
        let (mut a2, _, _) = pair_seeded(false, 1);
        let other = a2.encrypt(b"other", &mut e).unwrap();
        assert_eq!(b.decrypt(&other).unwrap_err(), DecryptError::OtherHandshake);
    }
}
