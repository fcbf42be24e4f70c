//! Key material: injected entropy, identities, prekeys and the directory's prekey bundle.
//!
//! Every key is built from bytes handed in through [`Entropy`], never from an ambient random
//! source: the runtime reads the OS source, the simulator forks a seed. Private parts are
//! zeroized on drop.

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::error::BundleError;
use crate::ids::UserId;

/// The only source of randomness the session layer sees.
///
/// Implementations must return uniformly random bytes from a cryptographically secure source
/// (the OS in production, a seeded ChaCha20 stream in simulation). The session draws 32 bytes per
/// key it generates and nothing else, so one seed reproduces a run bit for bit.
pub trait Entropy {
    /// Fill all of `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// Draw one 32-byte secret.
pub(crate) fn draw_secret(entropy: &mut dyn Entropy) -> Secret32 {
    let mut secret = Secret32([0; 32]);
    entropy.fill(&mut secret.0);
    secret
}

/// 32 secret bytes, wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub(crate) struct Secret32(pub(crate) [u8; 32]);

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(..)")
    }
}

/// Id of a signed or one-time prekey, chosen by its owner and echoed in the initial message so
/// the responder can find the private part (X3DH §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PrekeyId(pub u32);

/// Domain separation for the signed prekey's signature (X3DH §3.2, §4.5): the identity key signs
/// nothing else that could be mistaken for a prekey.
pub(crate) const SIGNED_PREKEY_DOMAIN: &[u8] = b"Paloma X3DH v1 signed prekey\0";
/// Domain separation for the identity binding signature.
pub(crate) const IDENTITY_BINDING_DOMAIN: &[u8] = b"Paloma X3DH v1 identity binding\0";

/// The public half of an identity: an Ed25519 signing key and a separate X25519 DH key.
///
/// Separate keys avoid XEdDSA, but then the DH key must be bound to the signing key, or an
/// attacker could pair someone's signing key with their own DH key. The responder's binding is its
/// signed prekey signature (which covers `dh_key`); the initiator's is the identity binding
/// signature sent in the initial message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityPublic {
    /// Ed25519 public key; [`UserId`] is its hash.
    pub signing_key: [u8; 32],
    /// X25519 public key used in DH1 / DH2.
    pub dh_key: [u8; 32],
}

impl IdentityPublic {
    /// The user this identity belongs to.
    pub fn user_id(&self) -> UserId {
        UserId::from_signing_key(&self.signing_key)
    }

    /// The Ed25519 key, or `None` if the bytes are not a valid point.
    pub(crate) fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.signing_key).ok()
    }

    /// Whether `signature` binds `dh_key` to `signing_key` (strict verification).
    pub fn verify_binding(&self, signature: &[u8; 64]) -> bool {
        let Some(key) = self.verifying_key() else {
            return false;
        };
        key.verify_strict(
            &binding_message(&self.dh_key),
            &Signature::from_bytes(signature),
        )
        .is_ok()
    }
}

fn binding_message(dh_key: &[u8; 32]) -> Vec<u8> {
    [IDENTITY_BINDING_DOMAIN, dh_key].concat()
}

/// The message the signed prekey signature covers: domain ‖ identity X25519 key ‖ prekey id
/// (u32 big-endian) ‖ signed prekey. Covering the identity DH key binds it to the signing key.
pub(crate) fn signed_prekey_message(
    identity_dh_key: &[u8; 32],
    id: PrekeyId,
    prekey: &[u8; 32],
) -> Vec<u8> {
    [
        SIGNED_PREKEY_DOMAIN,
        identity_dh_key,
        &id.0.to_be_bytes(),
        prekey,
    ]
    .concat()
}

/// A user's long-term identity: signing and DH private keys (wiped on drop).
pub struct IdentityKeyPair {
    signing: SigningKey,
    dh: StaticSecret,
    public: IdentityPublic,
    binding_signature: [u8; 64],
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl IdentityKeyPair {
    /// Build an identity from its two 32-byte private keys (as stored in the key store).
    pub fn from_secret_bytes(signing_secret: &[u8; 32], dh_secret: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(signing_secret);
        let dh = StaticSecret::from(*dh_secret);
        let public = IdentityPublic {
            signing_key: signing.verifying_key().to_bytes(),
            dh_key: PublicKey::from(&dh).to_bytes(),
        };
        // Ed25519 signatures are deterministic, so this is reproducible from the secrets alone.
        let binding_signature = signing.sign(&binding_message(&public.dh_key)).to_bytes();
        Self {
            signing,
            dh,
            public,
            binding_signature,
        }
    }

    /// Generate a fresh identity from 64 bytes of entropy.
    pub fn generate(entropy: &mut dyn Entropy) -> Self {
        let signing = draw_secret(entropy);
        let dh = draw_secret(entropy);
        Self::from_secret_bytes(&signing.0, &dh.0)
    }

    /// The private keys, signing key first, for sealing in the key store.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(self.signing.as_bytes());
        out[32..].copy_from_slice(self.dh.as_bytes());
        out
    }

    /// The public half.
    pub fn public(&self) -> &IdentityPublic {
        &self.public
    }

    /// `BLAKE3(identity Ed25519 public key)`.
    pub fn user_id(&self) -> UserId {
        self.public.user_id()
    }

    /// Ed25519 signature over domain ‖ X25519 identity key, sent in initial messages.
    pub fn binding_signature(&self) -> [u8; 64] {
        self.binding_signature
    }

    pub(crate) fn dh(&self) -> &StaticSecret {
        &self.dh
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }
}

/// A signed prekey with its private part (X3DH §2.4): rotated periodically, old private parts
/// deleted after a grace window for delayed messages (X3DH §3.2).
pub struct SignedPrekeyPair {
    id: PrekeyId,
    secret: StaticSecret,
    public: [u8; 32],
    signature: [u8; 64],
}

impl fmt::Debug for SignedPrekeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPrekeyPair")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SignedPrekeyPair {
    /// Build from a stored private key and sign it with `identity`.
    pub fn from_secret_bytes(identity: &IdentityKeyPair, id: PrekeyId, secret: &[u8; 32]) -> Self {
        let secret = StaticSecret::from(*secret);
        let public = PublicKey::from(&secret).to_bytes();
        let signature = identity.sign(&signed_prekey_message(&identity.public.dh_key, id, &public));
        Self {
            id,
            secret,
            public,
            signature,
        }
    }

    /// Generate from 32 bytes of entropy and sign it with `identity`.
    pub fn generate(identity: &IdentityKeyPair, id: PrekeyId, entropy: &mut dyn Entropy) -> Self {
        Self::from_secret_bytes(identity, id, &draw_secret(entropy).0)
    }

    /// Its id.
    pub fn id(&self) -> PrekeyId {
        self.id
    }

    /// Its X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The identity key's signature over it (see `signed_prekey_message`).
    pub fn signature(&self) -> [u8; 64] {
        self.signature
    }

    /// The private key, for storage.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

/// A one-time prekey with its private part (X3DH §2.4). Delete it after its first successful
/// use: an initial message on a one-time prekey then cannot be replayed (X3DH §4.2).
pub struct OneTimePrekeyPair {
    id: PrekeyId,
    secret: StaticSecret,
    public: [u8; 32],
}

impl fmt::Debug for OneTimePrekeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePrekeyPair")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl OneTimePrekeyPair {
    /// Build from a stored private key.
    pub fn from_secret_bytes(id: PrekeyId, secret: &[u8; 32]) -> Self {
        let secret = StaticSecret::from(*secret);
        let public = PublicKey::from(&secret).to_bytes();
        Self { id, secret, public }
    }

    /// Generate from 32 bytes of entropy.
    pub fn generate(id: PrekeyId, entropy: &mut dyn Entropy) -> Self {
        Self::from_secret_bytes(id, &draw_secret(entropy).0)
    }

    /// Its id.
    pub fn id(&self) -> PrekeyId {
        self.id
    }

    /// Its X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The private key, for storage.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

/// What the directory publishes for a user (X3DH §3.2). Untrusted until [`Self::verify`] passes;
/// [`super::Session::initiate`] verifies it itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// The owner's identity keys.
    pub identity: IdentityPublic,
    /// Id of the signed prekey.
    pub signed_prekey_id: PrekeyId,
    /// The signed prekey (X25519).
    pub signed_prekey: [u8; 32],
    /// Ed25519 signature over `"Paloma X3DH v1 signed prekey\0" ‖ identity.dh_key ‖ id (u32
    /// big-endian) ‖ signed_prekey`.
    pub signed_prekey_signature: [u8; 64],
    /// A one-time prekey, if the directory had one left (X3DH §3.2; without one the session has
    /// weaker replay protection, X3DH §4.2).
    pub one_time_prekey: Option<(PrekeyId, [u8; 32])>,
}

/// Version byte of the encoded bundle.
pub const BUNDLE_VERSION: u8 = 1;
/// Encoded bundle length: version, identity (64), spk id (4), spk (32), signature (64), flag (1),
/// otk id (4), otk (32). Fixed width so a decoder needs no length fields.
pub const BUNDLE_BYTES: usize = 1 + 64 + 4 + 32 + 64 + 1 + 4 + 32;

impl PrekeyBundle {
    /// Assemble the bundle a user uploads to the directory.
    pub fn new(
        identity: &IdentityKeyPair,
        signed_prekey: &SignedPrekeyPair,
        one_time_prekey: Option<&OneTimePrekeyPair>,
    ) -> Self {
        Self {
            identity: identity.public,
            signed_prekey_id: signed_prekey.id,
            signed_prekey: signed_prekey.public,
            signed_prekey_signature: signed_prekey.signature,
            one_time_prekey: one_time_prekey.map(|k| (k.id, k.public)),
        }
    }

    /// Whether the signed prekey signature verifies under the identity key (`verify_strict`:
    /// rejects non-canonical and small-order encodings).
    pub fn verify(&self) -> Result<(), super::error::InitiateError> {
        use super::error::InitiateError;
        let key = self
            .identity
            .verifying_key()
            .ok_or(InitiateError::InvalidIdentityKey)?;
        let message = signed_prekey_message(
            &self.identity.dh_key,
            self.signed_prekey_id,
            &self.signed_prekey,
        );
        key.verify_strict(
            &message,
            &Signature::from_bytes(&self.signed_prekey_signature),
        )
        .map_err(|_| InitiateError::BadSignedPrekeySignature)
    }

    /// Fixed-width, versioned encoding (see [`BUNDLE_BYTES`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BUNDLE_BYTES);
        out.push(BUNDLE_VERSION);
        out.extend_from_slice(&self.identity.signing_key);
        out.extend_from_slice(&self.identity.dh_key);
        out.extend_from_slice(&self.signed_prekey_id.0.to_be_bytes());
        out.extend_from_slice(&self.signed_prekey);
        out.extend_from_slice(&self.signed_prekey_signature);
        let (flag, id, key) = match self.one_time_prekey {
            Some((id, key)) => (1u8, id.0, key),
            None => (0u8, 0, [0u8; 32]),
        };
        out.push(flag);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&key);
        debug_assert_eq!(out.len(), BUNDLE_BYTES);
        out
    }

    /// Decode [`Self::to_bytes`]. Does not verify the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BundleError> {
        let version = *bytes.first().ok_or(BundleError::WrongLength)?;
        if version != BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion(version));
        }
        if bytes.len() != BUNDLE_BYTES {
            return Err(BundleError::WrongLength);
        }
        let mut r = super::message::Reader::new(&bytes[1..]);
        let signing_key = r.array32();
        let dh_key = r.array32();
        let signed_prekey_id = PrekeyId(r.u32());
        let signed_prekey = r.array32();
        let signed_prekey_signature = r.array64();
        let flag = r.u8();
        let id = r.u32();
        let key = r.array32();
        let one_time_prekey = match flag {
            1 => Some((PrekeyId(id), key)),
            0 if id == 0 && key == [0; 32] => None,
            _ => return Err(BundleError::MalformedPrekeyField),
        };
        Ok(Self {
            identity: IdentityPublic {
                signing_key,
                dh_key,
            },
            signed_prekey_id,
            signed_prekey,
            signed_prekey_signature,
            one_time_prekey,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);
    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
    }

    #[test]
    fn identity_round_trips_through_secret_bytes() {
        let id = IdentityKeyPair::generate(&mut Counter(0));
        let secret = id.to_secret_bytes();
        let mut signing = [0u8; 32];
        let mut dh = [0u8; 32];
        signing.copy_from_slice(&secret[..32]);
        dh.copy_from_slice(&secret[32..]);
        let again = IdentityKeyPair::from_secret_bytes(&signing, &dh);
        assert_eq!(again.public(), id.public());
        assert!(id.public().verify_binding(&id.binding_signature()));
    }

    #[test]
    fn bundle_round_trips_and_verifies() {
        let mut e = Counter(7);
        let id = IdentityKeyPair::generate(&mut e);
        let spk = SignedPrekeyPair::generate(&id, PrekeyId(3), &mut e);
        let otk = OneTimePrekeyPair::generate(PrekeyId(9), &mut e);
        for bundle in [
            PrekeyBundle::new(&id, &spk, Some(&otk)),
            PrekeyBundle::new(&id, &spk, None),
        ] {
            assert_eq!(bundle.verify(), Ok(()));
            let decoded = PrekeyBundle::from_bytes(&bundle.to_bytes()).unwrap();
            assert_eq!(decoded, bundle);
        }
    }

    #[test]
    fn signature_covers_identity_dh_key_and_prekey_id() {
        let mut e = Counter(1);
        let id = IdentityKeyPair::generate(&mut e);
        let spk = SignedPrekeyPair::generate(&id, PrekeyId(3), &mut e);
        let good = PrekeyBundle::new(&id, &spk, None);
        let mut swapped_dh = good.clone();
        swapped_dh.identity.dh_key[0] ^= 1;
        let mut swapped_id = good.clone();
        swapped_id.signed_prekey_id = PrekeyId(4);
        let mut swapped_spk = good.clone();
        swapped_spk.signed_prekey[5] ^= 1;
        for bad in [swapped_dh, swapped_id, swapped_spk] {
            assert_eq!(
                bad.verify(),
                Err(super::super::error::InitiateError::BadSignedPrekeySignature)
            );
        }
    }

    #[test]
    fn malformed_bundles_are_rejected() {
        assert_eq!(PrekeyBundle::from_bytes(&[]), Err(BundleError::WrongLength));
        assert_eq!(
            PrekeyBundle::from_bytes(&[9]),
            Err(BundleError::UnsupportedVersion(9))
        );
        assert_eq!(
            PrekeyBundle::from_bytes(&[BUNDLE_VERSION; 10]),
            Err(BundleError::WrongLength)
        );
        let mut bytes = vec![0u8; BUNDLE_BYTES];
        bytes[0] = BUNDLE_VERSION;
        bytes[BUNDLE_BYTES - 37] = 2;
        assert_eq!(
            PrekeyBundle::from_bytes(&bytes),
            Err(BundleError::MalformedPrekeyField)
        );
    }
}
