//! X3DH key agreement (X3DH §3), both roles.
//!
//! The initiator ("Alice") verifies the bundle and computes DH1..DH4 with an ephemeral key; the
//! responder ("Bob") recomputes them from the initial header with its prekeys' private parts.

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::error::{AcceptError, InitiateError};
use super::kdf;
use super::keys::{
    IdentityKeyPair, IdentityPublic, OneTimePrekeyPair, PrekeyBundle, Secret32, SignedPrekeyPair,
};
use super::message::InitialHeader;
use crate::ids::UserId;

/// The longest X3DH KDF input: F ‖ DH1 ‖ DH2 ‖ DH3 ‖ DH4.
const KEY_MATERIAL_BYTES_MAX: usize = 32 + 4 * 32;

/// The X3DH KDF input `F ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4]` (X3DH §2.2, §3.3), built in place.
///
/// X3DH §3.3 and §3.4 require both parties to delete the DH outputs once SK is computed. Each
/// output is written straight from x25519-dalek's `SharedSecret` (itself wiped on drop) into this
/// fixed-size buffer, which never reallocates and is wiped on drop: growing a `Vec` by `push`
/// would move its contents to a new allocation and free the old one unwiped, leaving copies of
/// the DH outputs in freed memory.
pub(crate) struct KeyMaterial {
    bytes: Zeroizing<[u8; KEY_MATERIAL_BYTES_MAX]>,
    len: usize,
}

impl core::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("dh_outputs", &self.dh_outputs().count())
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// F alone.
    fn new() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_MATERIAL_BYTES_MAX]);
        bytes[..kdf::X3DH_F.len()].copy_from_slice(&kdf::X3DH_F);
        Self {
            bytes,
            len: kdf::X3DH_F.len(),
        }
    }

    /// Append DH(secret, public). `None` if the output is all zero (a low-order public key):
    /// X3DH leaves this check out and RFC 7748 §6.1 recommends it; we make it mandatory so a
    /// hostile bundle or message cannot force a known contribution to SK.
    fn push_dh(&mut self, secret: &StaticSecret, public: &[u8; 32]) -> Option<()> {
        let shared = secret.diffie_hellman(&PublicKey::from(*public));
        if !shared.was_contributory() {
            return None;
        }
        // At most four outputs are ever pushed (DH1..DH4), which is what the buffer holds.
        self.bytes[self.len..self.len + 32].copy_from_slice(shared.as_bytes());
        self.len += 32;
        Some(())
    }

    /// The KDF input, F included.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// DH1, DH2, DH3 and, with a one-time prekey, DH4 (for known-answer vectors).
    pub(crate) fn dh_outputs(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes[kdf::X3DH_F.len()..self.len].chunks_exact(32)
    }
}

/// The agreed secret, and in test builds the KDF input it came from (for known-answer vectors;
/// dropping the agreement wipes it). Release builds wipe the KDF input as soon as SK is derived.
#[derive(Debug)]
pub(crate) struct Agreement {
    /// SK (X3DH §3.3).
    pub(crate) shared_secret: Secret32,
    /// F ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4].
    #[cfg(any(test, fuzzing, feature = "testing"))]
    pub(crate) key_material: KeyMaterial,
}

fn finish(key_material: KeyMaterial) -> Agreement {
    Agreement {
        shared_secret: kdf::x3dh_shared_secret(key_material.as_bytes()),
        #[cfg(any(test, fuzzing, feature = "testing"))]
        key_material,
    }
}

/// The initiator's side (X3DH §3.3): check the bundle is the expected user's and verify it,
/// then DH1 = DH(IK_A, SPK_B), DH2 = DH(EK_A, IK_B), DH3 = DH(EK_A, SPK_B),
/// DH4 = DH(EK_A, OPK_B).
pub(crate) fn initiator_agree(
    local: &IdentityKeyPair,
    expected_peer: UserId,
    bundle: &PrekeyBundle,
    ephemeral: &StaticSecret,
) -> Result<Agreement, InitiateError> {
    // A bundle is self-signed: it proves only that its prekeys belong to its identity key, not
    // that this identity is the user the caller asked the directory for. Without this check a
    // directory (or a swapped response) could answer a request for one user with another user's
    // valid bundle, and the session would silently be with the wrong person (X3DH §4.1: the
    // protocol itself does not tell the parties who they are talking to).
    let found = bundle.identity.user_id();
    if found != expected_peer {
        return Err(InitiateError::WrongUser {
            expected: expected_peer,
            found,
        });
    }
    bundle.verify()?;
    if bundle.identity.signing_key == local.public().signing_key
        || bundle.identity.dh_key == local.public().dh_key
    {
        return Err(InitiateError::SelfSession);
    }
    let contributory = InitiateError::NonContributoryKey;
    let mut key_material = KeyMaterial::new();
    key_material
        .push_dh(local.dh(), &bundle.signed_prekey)
        .ok_or(contributory)?;
    key_material
        .push_dh(ephemeral, &bundle.identity.dh_key)
        .ok_or(contributory)?;
    key_material
        .push_dh(ephemeral, &bundle.signed_prekey)
        .ok_or(contributory)?;
    if let Some((_, one_time)) = &bundle.one_time_prekey {
        key_material
            .push_dh(ephemeral, one_time)
            .ok_or(contributory)?;
    }
    Ok(finish(key_material))
}

/// The responder's side (X3DH §3.4): check the prekeys named in the header are the ones
/// supplied, verify the initiator's identity binding, then recompute DH1..DH4.
pub(crate) fn responder_agree(
    local: &IdentityKeyPair,
    signed_prekey: &SignedPrekeyPair,
    one_time_prekey: Option<&OneTimePrekeyPair>,
    initial: &InitialHeader,
) -> Result<Agreement, AcceptError> {
    if initial.signed_prekey_id != signed_prekey.id() {
        return Err(AcceptError::SignedPrekeyMismatch);
    }
    if initial.one_time_prekey_id != one_time_prekey.map(OneTimePrekeyPair::id) {
        return Err(AcceptError::OneTimePrekeyMismatch);
    }
    let initiator: &IdentityPublic = &initial.initiator;
    if initiator.signing_key == local.public().signing_key
        || initiator.dh_key == local.public().dh_key
    {
        return Err(AcceptError::SelfSession);
    }
    // Without this check anyone could pair the initiator's signing key (hence its user id) with
    // their own DH key and pass DH1 as that user.
    if !initiator.verify_binding(&initial.identity_binding_signature) {
        return Err(AcceptError::BadIdentityBinding);
    }
    let contributory = || AcceptError::NonContributoryKey;
    let mut key_material = KeyMaterial::new();
    key_material
        .push_dh(signed_prekey.secret(), &initiator.dh_key)
        .ok_or_else(contributory)?;
    key_material
        .push_dh(local.dh(), &initial.ephemeral_key)
        .ok_or_else(contributory)?;
    key_material
        .push_dh(signed_prekey.secret(), &initial.ephemeral_key)
        .ok_or_else(contributory)?;
    if let Some(one_time) = one_time_prekey {
        key_material
            .push_dh(one_time.secret(), &initial.ephemeral_key)
            .ok_or_else(contributory)?;
    }
    Ok(finish(key_material))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::keys::PrekeyId;

    fn identity(seed: u8) -> IdentityKeyPair {
        IdentityKeyPair::from_secret_bytes(&[seed; 32], &[seed.wrapping_add(1); 32])
    }

    fn run(with_one_time: bool) -> (Agreement, Agreement) {
        let alice = identity(1);
        let bob = identity(10);
        let spk = SignedPrekeyPair::from_secret_bytes(&bob, PrekeyId(1), &[20; 32]);
        let otk = OneTimePrekeyPair::from_secret_bytes(PrekeyId(2), &[21; 32]);
        let otk_ref = with_one_time.then_some(&otk);
        let bundle = PrekeyBundle::new(&bob, &spk, otk_ref);
        let ephemeral = StaticSecret::from([30; 32]);
        let a = initiator_agree(&alice, bob.user_id(), &bundle, &ephemeral).unwrap();
        let header = InitialHeader {
            initiator: *alice.public(),
            identity_binding_signature: alice.binding_signature(),
            ephemeral_key: PublicKey::from(&ephemeral).to_bytes(),
            signed_prekey_id: PrekeyId(1),
            one_time_prekey_id: with_one_time.then_some(PrekeyId(2)),
        };
        let b = responder_agree(&bob, &spk, otk_ref, &header).unwrap();
        (a, b)
    }

    #[test]
    fn both_sides_agree_with_and_without_one_time_prekey() {
        for with in [false, true] {
            let (a, b) = run(with);
            assert_eq!(a.shared_secret, b.shared_secret);
            assert_eq!(a.key_material.as_bytes(), b.key_material.as_bytes());
            assert_eq!(
                a.key_material.dh_outputs().count(),
                if with { 4 } else { 3 }
            );
            assert_eq!(a.key_material.as_bytes()[..32], kdf::X3DH_F);
        }
        assert_ne!(run(false).0.shared_secret, run(true).0.shared_secret);
    }

    #[test]
    fn low_order_prekey_is_rejected() {
        let alice = identity(1);
        let bob = identity(10);
        let spk = SignedPrekeyPair::from_secret_bytes(&bob, PrekeyId(1), &[20; 32]);
        let mut bundle = PrekeyBundle::new(&bob, &spk, None);
        // The identity point (u = 0) is of low order; a one-time prekey is not signed, so this is
        // what a hostile directory would do.
        bundle.one_time_prekey = Some((PrekeyId(9), [0; 32]));
        let ephemeral = StaticSecret::from([30; 32]);
        assert_eq!(
            initiator_agree(&alice, bob.user_id(), &bundle, &ephemeral).unwrap_err(),
            InitiateError::NonContributoryKey
        );
    }

    #[test]
    fn bundle_of_another_user_is_rejected() {
        let alice = identity(1);
        let bob = identity(10);
        let carol = identity(20);
        let spk = SignedPrekeyPair::from_secret_bytes(&carol, PrekeyId(1), &[20; 32]);
        // A valid bundle, but Carol's, served for a request for Bob.
        let bundle = PrekeyBundle::new(&carol, &spk, None);
        let ephemeral = StaticSecret::from([30; 32]);
        assert_eq!(
            initiator_agree(&alice, bob.user_id(), &bundle, &ephemeral).unwrap_err(),
            InitiateError::WrongUser {
                expected: bob.user_id(),
                found: carol.user_id(),
            }
        );
    }

    #[test]
    fn forged_identity_binding_is_rejected() {
        let alice = identity(1);
        let mallory = identity(50);
        let bob = identity(10);
        let spk = SignedPrekeyPair::from_secret_bytes(&bob, PrekeyId(1), &[20; 32]);
        let header = InitialHeader {
            initiator: IdentityPublic {
                signing_key: alice.public().signing_key,
                dh_key: mallory.public().dh_key,
            },
            identity_binding_signature: mallory.binding_signature(),
            ephemeral_key: [9; 32],
            signed_prekey_id: PrekeyId(1),
            one_time_prekey_id: None,
        };
        assert_eq!(
            responder_agree(&bob, &spk, None, &header).unwrap_err(),
            AcceptError::BadIdentityBinding
        );
    }
}
