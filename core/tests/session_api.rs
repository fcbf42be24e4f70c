//! Behaviour of the session API at its edges: hostile bundles and messages, limits, restore,
//! simultaneous initiation, the key store.

use paloma_core::session::kat::XofEntropy;
use paloma_core::session::keystore::{self, KdfParams};
use paloma_core::session::{
    initial_header, AcceptError, DecryptError, EncryptError, Entropy, IdentityKeyPair,
    InitiateError, OneTimePrekeyPair, OpenError, PrekeyBundle, PrekeyId, SafetyNumber, Session,
    SignedPrekeyPair, StateError, CHAIN_JUMP_MAX, PLAINTEXT_BYTES_MAX,
    PREVIOUS_RECEIVING_CHAINS_MAX, SKIPPED_KEYS_MAX, SKIPPED_KEYS_PER_CHAIN_MAX, STATE_VERSION,
};

struct Bob {
    identity: IdentityKeyPair,
    signed_prekey: SignedPrekeyPair,
    one_time_prekey: OneTimePrekeyPair,
}

fn bob(entropy: &mut XofEntropy) -> Bob {
    let identity = IdentityKeyPair::generate(entropy);
    let signed_prekey = SignedPrekeyPair::generate(&identity, PrekeyId(7), entropy);
    let one_time_prekey = OneTimePrekeyPair::generate(PrekeyId(8), entropy);
    Bob {
        identity,
        signed_prekey,
        one_time_prekey,
    }
}

/// An established pair after one full round trip.
fn established(seed: &[u8]) -> (Session, Session, XofEntropy) {
    let mut e = XofEntropy::from_seed(seed);
    let alice_id = IdentityKeyPair::generate(&mut e);
    let b = bob(&mut e);
    let bundle = PrekeyBundle::new(&b.identity, &b.signed_prekey, Some(&b.one_time_prekey));
    let mut alice = Session::initiate(&alice_id, b.identity.user_id(), &bundle, &mut e).unwrap();
    let first = alice.encrypt(b"first", &mut e).unwrap();
    let (mut bob_session, _) = Session::accept(
        &b.identity,
        &b.signed_prekey,
        Some(&b.one_time_prekey),
        &first,
    )
    .unwrap();
    let reply = bob_session.encrypt(b"reply", &mut e).unwrap();
    alice.decrypt(&reply).unwrap();
    (alice, bob_session, e)
}

fn assert_tamper_proof(receiver: &mut Session, message: &[u8]) {
    let before = receiver.to_bytes();
    for i in 0..message.len() {
        for xor in [0x01, 0x80] {
            let mut bad = message.to_vec();
            bad[i] ^= xor;
            assert!(receiver.decrypt(&bad).is_err(), "flipped byte {i} accepted");
            assert!(*receiver.to_bytes() == *before, "byte {i} changed state");
        }
    }
    for len in 0..message.len() {
        assert!(receiver.decrypt(&message[..len]).is_err());
    }
    assert!(*receiver.to_bytes() == *before);
}

#[test]
fn tampering_any_byte_fails_and_changes_nothing() {
    let (mut alice, mut bob, mut e) = established(b"tamper");
    let m = alice.encrypt(b"payload of some length", &mut e).unwrap();
    assert_tamper_proof(&mut bob, &m);
    assert_eq!(bob.decrypt(&m).unwrap(), b"payload of some length");
    // A message starting a new chain (a DH step) too.
    let r = bob.encrypt(b"step", &mut e).unwrap();
    assert_tamper_proof(&mut alice, &r);
    assert_eq!(alice.decrypt(&r).unwrap(), b"step");
}

#[test]
fn tampered_initial_messages_are_refused() {
    let mut e = XofEntropy::from_seed(b"initial tamper");
    let alice_id = IdentityKeyPair::generate(&mut e);
    let b = bob(&mut e);
    let bundle = PrekeyBundle::new(&b.identity, &b.signed_prekey, None);
    let mut alice = Session::initiate(&alice_id, b.identity.user_id(), &bundle, &mut e).unwrap();
    let first = alice.encrypt(b"first", &mut e).unwrap();
    for i in 0..first.len() {
        let mut bad = first.clone();
        bad[i] ^= 0x01;
        assert!(
            Session::accept(&b.identity, &b.signed_prekey, None, &bad).is_err(),
            "byte {i}"
        );
    }
    // The second message still carries the header and is tamper-proof on Bob's session.
    let second = alice.encrypt(b"second", &mut e).unwrap();
    let (mut bob_session, _) =
        Session::accept(&b.identity, &b.signed_prekey, None, &first).unwrap();
    assert_tamper_proof(&mut bob_session, &second);
    assert_eq!(bob_session.decrypt(&second).unwrap(), b"second");
}

#[test]
fn accept_checks_the_prekeys_it_is_given() {
    let mut e = XofEntropy::from_seed(b"accept errors");
    let alice_id = IdentityKeyPair::generate(&mut e);
    let b = bob(&mut e);
    let other_spk = SignedPrekeyPair::generate(&b.identity, PrekeyId(99), &mut e);
    let other_otk = OneTimePrekeyPair::generate(PrekeyId(98), &mut e);
    let bundle = PrekeyBundle::new(&b.identity, &b.signed_prekey, Some(&b.one_time_prekey));
    let mut alice = Session::initiate(&alice_id, b.identity.user_id(), &bundle, &mut e).unwrap();
    let first = alice.encrypt(b"first", &mut e).unwrap();
    let header = initial_header(&first).unwrap().unwrap();
    assert_eq!(header.signed_prekey_id, PrekeyId(7));
    assert_eq!(header.one_time_prekey_id, Some(PrekeyId(8)));
    assert_eq!(header.initiator, *alice_id.public());

    let accept = |spk, otk| Session::accept(&b.identity, spk, otk, &first).map(|_| ());
    assert_eq!(
        accept(&other_spk, Some(&b.one_time_prekey)),
        Err(AcceptError::SignedPrekeyMismatch)
    );
    assert_eq!(
        accept(&b.signed_prekey, None),
        Err(AcceptError::OneTimePrekeyMismatch)
    );
    assert_eq!(
        accept(&b.signed_prekey, Some(&other_otk)),
        Err(AcceptError::OneTimePrekeyMismatch)
    );
    assert_eq!(accept(&b.signed_prekey, Some(&b.one_time_prekey)), Ok(()));

    // A normal message is not an initial one.
    let (mut alice2, mut bob2, mut e2) = established(b"not initial");
    let normal = alice2.encrypt(b"x", &mut e2).unwrap();
    assert_eq!(
        Session::accept(&b.identity, &b.signed_prekey, None, &normal).map(|_| ()),
        Err(AcceptError::NotInitial)
    );
    assert!(bob2.decrypt(&normal).is_ok());
}

#[test]
fn initiate_refuses_bad_bundles() {
    let mut e = XofEntropy::from_seed(b"bad bundles");
    let alice_id = IdentityKeyPair::generate(&mut e);
    let b = bob(&mut e);
    let good = PrekeyBundle::new(&b.identity, &b.signed_prekey, None);
    let mut bad_sig = good.clone();
    bad_sig.signed_prekey_signature[10] ^= 1;
    let mut swapped_dh = good.clone();
    swapped_dh.identity.dh_key = alice_id.public().dh_key;
    let mut invalid_key = good.clone();
    // Not a valid compressed Edwards point.
    invalid_key.identity.signing_key = [0xFF; 32];
    assert_eq!(
        Session::initiate(&alice_id, b.identity.user_id(), &bad_sig, &mut e).unwrap_err(),
        InitiateError::BadSignedPrekeySignature
    );
    assert_eq!(
        Session::initiate(&alice_id, b.identity.user_id(), &swapped_dh, &mut e).unwrap_err(),
        InitiateError::BadSignedPrekeySignature
    );
    assert!(matches!(
        Session::initiate(
            &alice_id,
            invalid_key.identity.user_id(),
            &invalid_key,
            &mut e
        )
        .unwrap_err(),
        InitiateError::InvalidIdentityKey | InitiateError::BadSignedPrekeySignature
    ));
    let own = PrekeyBundle::new(
        &alice_id,
        &SignedPrekeyPair::generate(&alice_id, PrekeyId(1), &mut e),
        None,
    );
    assert_eq!(
        Session::initiate(&alice_id, alice_id.user_id(), &own, &mut e).unwrap_err(),
        InitiateError::SelfSession
    );
}

#[test]
fn initiate_refuses_a_bundle_of_another_user() {
    let mut e = XofEntropy::from_seed(b"wrong user");
    let alice_id = IdentityKeyPair::generate(&mut e);
    let bob_keys = bob(&mut e);
    let carol_keys = bob(&mut e);
    // Alice asked the directory for Bob; it answered with Carol's bundle, valid in itself.
    let carols = PrekeyBundle::new(
        &carol_keys.identity,
        &carol_keys.signed_prekey,
        Some(&carol_keys.one_time_prekey),
    );
    let before = e.clone();
    assert_eq!(
        Session::initiate(&alice_id, bob_keys.identity.user_id(), &carols, &mut e).unwrap_err(),
        InitiateError::WrongUser {
            expected: bob_keys.identity.user_id(),
            found: carol_keys.identity.user_id(),
        }
    );
    // Refused before any key was drawn.
    let (mut drawn_after, mut drawn_before) = ([0u8; 32], [0u8; 32]);
    e.fill(&mut drawn_after);
    before.clone().fill(&mut drawn_before);
    assert_eq!(drawn_after, drawn_before);
    // Bob's identity with Carol's prekeys is refused too, by the signature.
    let mut mixed = carols.clone();
    mixed.identity = *bob_keys.identity.public();
    assert_eq!(
        Session::initiate(&alice_id, bob_keys.identity.user_id(), &mixed, &mut e).unwrap_err(),
        InitiateError::BadSignedPrekeySignature
    );
    // The same bundle is accepted when Carol is the user asked for.
    let session =
        Session::initiate(&alice_id, carol_keys.identity.user_id(), &carols, &mut e).unwrap();
    assert_eq!(session.remote_user_id(), carol_keys.identity.user_id());
}

#[test]
fn replayed_initial_message_without_one_time_prekey_is_recognisable() {
    let mut e = XofEntropy::from_seed(b"replay initial");
    let alice_id = IdentityKeyPair::generate(&mut e);
    let b = bob(&mut e);
    let bundle = PrekeyBundle::new(&b.identity, &b.signed_prekey, None);
    let mut alice = Session::initiate(&alice_id, b.identity.user_id(), &bundle, &mut e).unwrap();
    let first = alice.encrypt(b"first", &mut e).unwrap();
    let (mut s1, _) = Session::accept(&b.identity, &b.signed_prekey, None, &first).unwrap();
    // On the existing session the replay is a duplicate ...
    assert_eq!(
        s1.decrypt(&first).unwrap_err(),
        DecryptError::DuplicateOrExpired
    );
    // ... and a second accept yields the same handshake id, which the caller refuses (X3DH §4.2).
    let (s2, _) = Session::accept(&b.identity, &b.signed_prekey, None, &first).unwrap();
    assert_eq!(s1.handshake_id(), s2.handshake_id());
    assert_eq!(s1.handshake_id(), alice.handshake_id());
}

#[test]
fn messages_on_more_than_five_older_chains_are_refused_as_expired() {
    for round_trips in [
        PREVIOUS_RECEIVING_CHAINS_MAX,
        PREVIOUS_RECEIVING_CHAINS_MAX + 1,
    ] {
        let (mut alice, mut bob, mut e) = established(b"retired chains");
        let held = alice.encrypt(b"held", &mut e).unwrap();
        let sent = alice.encrypt(b"sent", &mut e).unwrap();
        bob.decrypt(&sent).unwrap();
        // Each round trip gives Bob one more receiving chain.
        for _ in 0..round_trips {
            let r = bob.encrypt(b"r", &mut e).unwrap();
            alice.decrypt(&r).unwrap();
            let m = alice.encrypt(b"m", &mut e).unwrap();
            bob.decrypt(&m).unwrap();
        }
        let before = bob.to_bytes();
        let result = bob.decrypt(&held);
        if round_trips <= PREVIOUS_RECEIVING_CHAINS_MAX {
            assert_eq!(result.unwrap(), b"held");
        } else {
            assert_eq!(result.unwrap_err(), DecryptError::DuplicateOrExpired);
            assert!(*bob.to_bytes() == *before);
        }
        bob.assert_invariants();
    }
}

#[test]
fn skipped_keys_are_bounded_per_message_per_chain_and_in_total() {
    let (mut alice, mut bob, mut e) = established(b"skipped limits");
    // Craft headers by sending many messages and delivering only the last.
    let messages: Vec<Vec<u8>> = (0..=SKIPPED_KEYS_PER_CHAIN_MAX + 10)
        .map(|_| alice.encrypt(b"m", &mut e).unwrap())
        .collect();
    bob.decrypt(messages.last().unwrap()).unwrap();
    assert_eq!(bob.skipped_keys_total(), SKIPPED_KEYS_PER_CHAIN_MAX);
    // The oldest were evicted, the newest skipped ones still decrypt.
    assert_eq!(
        bob.decrypt(&messages[0]).unwrap_err(),
        DecryptError::DuplicateOrExpired
    );
    assert_eq!(bob.decrypt(&messages[messages.len() - 2]).unwrap(), b"m");

    // Fill several chains: the session-wide total stays bounded.
    for _ in 0..3 {
        let r = bob.encrypt(b"r", &mut e).unwrap();
        alice.decrypt(&r).unwrap();
        let burst: Vec<Vec<u8>> = (0..=SKIPPED_KEYS_PER_CHAIN_MAX)
            .map(|_| alice.encrypt(b"m", &mut e).unwrap())
            .collect();
        bob.decrypt(burst.last().unwrap()).unwrap();
        assert!(bob.skipped_keys_total() <= SKIPPED_KEYS_MAX);
        bob.assert_invariants();
    }
    assert_eq!(bob.skipped_keys_total(), SKIPPED_KEYS_MAX);
}

#[test]
fn a_jump_beyond_the_limit_is_refused_without_state_change() {
    let (mut alice, mut bob, mut e) = established(b"jump");
    let mut last = Vec::new();
    for _ in 0..=CHAIN_JUMP_MAX + 1 {
        last = alice.encrypt(b"", &mut e).unwrap();
    }
    let before = bob.to_bytes();
    assert_eq!(
        bob.decrypt(&last).unwrap_err(),
        DecryptError::TooManySkipped {
            skipped: u64::from(CHAIN_JUMP_MAX) + 1
        }
    );
    assert!(*bob.to_bytes() == *before);
}

#[test]
fn simultaneous_initiation_yields_two_sessions() {
    let mut e = XofEntropy::from_seed(b"simultaneous");
    let a = bob(&mut e);
    let b = bob(&mut e);
    let bundle_a = PrekeyBundle::new(&a.identity, &a.signed_prekey, None);
    let bundle_b = PrekeyBundle::new(&b.identity, &b.signed_prekey, None);
    let mut a_to_b =
        Session::initiate(&a.identity, b.identity.user_id(), &bundle_b, &mut e).unwrap();
    let mut b_to_a =
        Session::initiate(&b.identity, a.identity.user_id(), &bundle_a, &mut e).unwrap();
    let from_a = a_to_b.encrypt(b"from a", &mut e).unwrap();
    let from_b = b_to_a.encrypt(b"from b", &mut e).unwrap();
    // Each side's initiated session refuses the other's initial message ...
    assert_eq!(
        a_to_b.decrypt(&from_b).unwrap_err(),
        DecryptError::OtherHandshake
    );
    // ... which the caller accepts as a second session.
    let (_, p) = Session::accept(&a.identity, &a.signed_prekey, None, &from_b).unwrap();
    assert_eq!(p, b"from b");
    let (_, p) = Session::accept(&b.identity, &b.signed_prekey, None, &from_a).unwrap();
    assert_eq!(p, b"from a");
}

#[test]
fn restored_state_continues_without_reusing_keys() {
    let (mut alice, mut bob, mut e) = established(b"restore");
    let m1 = alice.encrypt(b"one", &mut e).unwrap();
    // Persist before sending, then "crash" and restore.
    let persisted = alice.to_bytes();
    let mut alice = Session::from_bytes(&persisted).unwrap();
    let m2 = alice.encrypt(b"two", &mut e).unwrap();
    assert_ne!(
        m1[2..44],
        m2[2..44],
        "headers must differ: no message key reuse"
    );
    assert_eq!(bob.decrypt(&m2).unwrap(), b"two");
    assert_eq!(bob.decrypt(&m1).unwrap(), b"one");
}

#[test]
fn hostile_state_bytes_are_refused() {
    let (_, bob, _) = established(b"state");
    let bytes = bob.to_bytes();
    assert_eq!(bytes[0], STATE_VERSION);
    assert_eq!(Session::from_bytes(&[]).unwrap_err(), StateError::Empty);
    let mut bad = bytes.to_vec();
    bad[0] = 99;
    assert_eq!(
        Session::from_bytes(&bad).unwrap_err(),
        StateError::UnsupportedVersion(99)
    );
    let mut trailing = bytes.to_vec();
    trailing.push(0);
    assert_eq!(
        Session::from_bytes(&trailing).unwrap_err(),
        StateError::Undecodable
    );
    for len in 1..bytes.len() {
        assert!(Session::from_bytes(&bytes[..len]).is_err(), "length {len}");
    }
}

#[test]
fn encrypt_refuses_oversized_plaintext() {
    let (mut alice, _, mut e) = established(b"large");
    let before = alice.to_bytes();
    let big = vec![0u8; PLAINTEXT_BYTES_MAX + 1];
    assert_eq!(
        alice.encrypt(&big, &mut e).unwrap_err(),
        EncryptError::PlaintextTooLarge {
            len: PLAINTEXT_BYTES_MAX + 1
        }
    );
    assert!(*alice.to_bytes() == *before);
}

#[test]
fn safety_numbers_match_on_both_sides() {
    let (alice, bob, _) = established(b"safety");
    let (carol, _, _) = established(b"other safety");
    assert_eq!(alice.safety_number(), bob.safety_number());
    assert_eq!(
        alice.safety_number(),
        SafetyNumber::of(bob.remote_identity(), alice.remote_identity())
    );
    assert_ne!(alice.safety_number(), carol.safety_number());
    let shown = alice.safety_number().to_string();
    assert_eq!(shown.len(), 60 + 11);
}

#[test]
fn key_store_seals_identity_keys() {
    let mut e = XofEntropy::from_seed(b"keystore");
    let identity = IdentityKeyPair::generate(&mut e);
    let params = KdfParams::dangerous_test_params();
    let blob = keystore::seal_with_entropy(
        b"passphrase",
        &identity.to_secret_bytes()[..],
        params,
        &mut e,
    )
    .unwrap();
    let opened = keystore::open(b"passphrase", &blob).unwrap();
    let signing: [u8; 32] = opened[..32].try_into().unwrap();
    let dh: [u8; 32] = opened[32..].try_into().unwrap();
    assert_eq!(
        IdentityKeyPair::from_secret_bytes(&signing, &dh).public(),
        identity.public()
    );
    assert_eq!(
        keystore::open(b"Passphrase", &blob).unwrap_err(),
        OpenError::WrongPassphraseOrCorrupt
    );
}
