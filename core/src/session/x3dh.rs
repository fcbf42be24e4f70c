//! X3DH key agreement (X3DH §3), both roles.
//!
//! The initiator ("Alice") verifies the bundle and computes DH1..DH4 with an ephemeral key; the
//! responder ("Bob") recomputes them from the initial header with its prekeys' private parts.

use x25519_dalek::{PublicKey, StaticSecret};

use super::error::{AcceptError, InitiateError};
use super::kdf;
use super::keys::{
    IdentityKeyPair, IdentityPublic, OneTimePrekeyPair, PrekeyBundle, Secret32, SignedPrekeyPair,
};
use super::message::InitialHeader;

/// The agreed secret and the DH outputs it came from (the latter only for known-answer vectors).
#[derive(Debug)]
pub(crate) struct Agreement {
    /// SK (X3DH §3.3).
    pub(crate) shared_secret: Secret32,
    /// DH1, DH2, DH3 and, with a one-time prekey, DH4.
    pub(crate) dh_outputs: Vec<Secret32>,
}

/// One X25519 computation; `None` if the output is all zero (a low-order public key). X3DH
/// leaves this check out and RFC 7748 §6.1 recommends it; we make it mandatory so a hostile
/// bundle cannot force a known contribution to SK.
fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Option<Secret32> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return None;
    }
    Some(Secret32(shared.to_bytes()))
}

fn finish(dh_outputs: Vec<Secret32>) -> Agreement {
    let refs: Vec<&[u8; 32]> = dh_outputs.iter().map(|d| &d.0).collect();
    let shared_secret = kdf::x3dh_shared_secret(&refs);
    Agreement {
        shared_secret,
        dh_outputs,
    }
}

/// The initiator's side (X3DH §3.3): verify the bundle, then
/// DH1 = DH(IK_A, SPK_B), DH2 = DH(EK_A, IK_B), DH3 = DH(EK_A, SPK_B), DH4 = DH(EK_A, OPK_B).
pub(crate) fn initiator_agree(
    local: &IdentityKeyPair,
    bundle: &PrekeyBundle,
    ephemeral: &StaticSecret,
) -> Result<Agreement, InitiateError> {
    bundle.verify()?;
    if bundle.identity.signing_key == local.public().signing_key
        || bundle.identity.dh_key == local.public().dh_key
    {
        return Err(InitiateError::SelfSession);
    }
    let contributory = InitiateError::NonContributoryKey;
    let mut outputs = vec![
        dh(local.dh(), &bundle.signed_prekey).ok_or(contributory)?,
        dh(ephemeral, &bundle.identity.dh_key).ok_or(contributory)?,
        dh(ephemeral, &bundle.signed_prekey).ok_or(contributory)?,
    ];
    if let Some((_, one_time)) = &bundle.one_time_prekey {
        outputs.push(dh(ephemeral, one_time).ok_or(contributory)?);
    }
    Ok(finish(outputs))
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
    let contributory = AcceptError::NonContributoryKey;
    let mut outputs = vec![
        dh(signed_prekey.secret(), &initiator.dh_key).ok_or(contributory.clone())?,
        dh(local.dh(), &initial.ephemeral_key).ok_or(contributory.clone())?,
        dh(signed_prekey.secret(), &initial.ephemeral_key).ok_or(contributory.clone())?,
    ];
    if let Some(one_time) = one_time_prekey {
        outputs.push(dh(one_time.secret(), &initial.ephemeral_key).ok_or(contributory)?);
    }
    Ok(finish(outputs))
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
        let a = initiator_agree(&alice, &bundle, &ephemeral).unwrap();
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
            assert_eq!(a.dh_outputs, b.dh_outputs);
            assert_eq!(a.dh_outputs.len(), if with { 4 } else { 3 });
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
            initiator_agree(&alice, &bundle, &ephemeral).unwrap_err(),
            InitiateError::NonContributoryKey
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
