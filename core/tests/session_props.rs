//! Property tests of the session layer: delivery under an adversarial network,
//! tampering, compromised message keys and post-compromise recovery.

use paloma_core::session::kat::{self, XofEntropy};
use paloma_core::session::{
    DecryptError, IdentityKeyPair, OneTimePrekeyPair, PrekeyBundle, PrekeyId, Session,
    SignedPrekeyPair, PREVIOUS_RECEIVING_CHAINS_MAX,
};
use proptest::prelude::*;

/// Two parties with an established session (Alice sent one message, Bob accepted it).
struct Pair {
    alice: Session,
    bob: Session,
    entropy: XofEntropy,
}

fn establish(seed: u64, with_one_time: bool) -> Pair {
    let mut entropy = XofEntropy::from_seed(&seed.to_be_bytes());
    let alice_id = IdentityKeyPair::generate(&mut entropy);
    let bob_id = IdentityKeyPair::generate(&mut entropy);
    let spk = SignedPrekeyPair::generate(&bob_id, PrekeyId(1), &mut entropy);
    let otk = OneTimePrekeyPair::generate(PrekeyId(2), &mut entropy);
    let otk = with_one_time.then_some(&otk);
    let bundle = PrekeyBundle::new(&bob_id, &spk, otk);
    let mut alice = Session::initiate(&alice_id, bob_id.user_id(), &bundle, &mut entropy).unwrap();
    let first = alice.encrypt(b"hello", &mut entropy).unwrap();
    let (bob, plaintext) = Session::accept(&bob_id, &spk, otk, &first).unwrap();
    assert_eq!(plaintext, b"hello");
    Pair {
        alice,
        bob,
        entropy,
    }
}

/// The ratchet key in a message's header (after the optional initial header).
fn ratchet_key(message: &[u8]) -> [u8; 32] {
    let offset = if message[1] == 1 { 2 + 169 } else { 2 };
    message[offset..offset + 32].try_into().unwrap()
}

/// One step of the adversarial network.
#[derive(Debug, Clone)]
enum Op {
    /// Alice (true) or Bob sends a message of this length.
    Send { from_alice: bool, len: usize },
    /// Deliver the in-flight message at this index (mod count); keep a copy if `duplicate`.
    Deliver { index: usize, duplicate: bool },
    /// Lose the in-flight message at this index.
    Drop { index: usize },
    /// Deliver a copy with one byte flipped; the original stays in flight.
    Tamper { index: usize, byte: usize, xor: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0usize..64).prop_map(|(from_alice, len)| Op::Send { from_alice, len }),
        4 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(index, duplicate)| Op::Deliver { index, duplicate }),
        1 => any::<usize>().prop_map(|index| Op::Drop { index }),
        1 => (any::<usize>(), any::<usize>(), 1u8..=255)
            .prop_map(|(index, byte, xor)| Op::Tamper { index, byte, xor }),
    ]
}

#[derive(Debug, Clone)]
struct InFlight {
    to_alice: bool,
    bytes: Vec<u8>,
    plaintext: Vec<u8>,
    id: usize,
}

/// What a receiver has seen: the remote ratchet keys in the order it stepped onto them, and the
/// ids it decrypted.
#[derive(Default)]
struct Receiver {
    chains: Vec<[u8; 32]>,
    decrypted: std::collections::BTreeSet<usize>,
}

impl Receiver {
    /// A message on a chain with more than `PREVIOUS_RECEIVING_CHAINS_MAX` newer chains is
    /// legitimately refused (its skipped keys were dropped with the chain).
    fn chain_retired(&self, key: &[u8; 32]) -> bool {
        match self.chains.iter().position(|k| k == key) {
            Some(i) => self.chains.len() - 1 - i > PREVIOUS_RECEIVING_CHAINS_MAX,
            None => false,
        }
    }

    fn note_chain(&mut self, key: [u8; 32]) {
        if !self.chains.contains(&key) {
            self.chains.push(key);
        }
    }
}

fn assert_unchanged(session: &Session, before: &[u8], what: &str) {
    assert!(
        *session.to_bytes() == *before,
        "{what} changed the session state"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any interleaving, loss, duplication and reordering: every delivered message decrypts
    /// exactly once and correctly; duplicates and tampered copies fail and change nothing.
    #[test]
    fn adversarial_network_delivers_each_message_exactly_once(
        seed in any::<u64>(),
        with_one_time in any::<bool>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let Pair { mut alice, mut bob, mut entropy } = establish(seed, with_one_time);
        let mut at_alice = Receiver::default();
        let mut at_bob = Receiver::default();
        // Bob already stepped onto Alice's first chain when accepting.
        at_bob.chains.push(kat::snapshot(&bob).remote_ratchet_key.unwrap());
        let mut in_flight: Vec<InFlight> = Vec::new();
        let mut next_id = 0usize;
        for op in ops {
            match op {
                Op::Send { from_alice, len } => {
                    let mut plaintext = next_id.to_be_bytes().to_vec();
                    plaintext.resize(8 + len, from_alice as u8);
                    let sender = if from_alice { &mut alice } else { &mut bob };
                    let bytes = sender.encrypt(&plaintext, &mut entropy).unwrap();
                    in_flight.push(InFlight {
                        to_alice: !from_alice,
                        bytes,
                        plaintext,
                        id: next_id,
                    });
                    next_id += 1;
                }
                Op::Deliver { index, duplicate } => {
                    if in_flight.is_empty() { continue; }
                    let i = index % in_flight.len();
                    let m = if duplicate { in_flight[i].clone() } else { in_flight.remove(i) };
                    let (receiver, model) = if m.to_alice {
                        (&mut alice, &mut at_alice)
                    } else {
                        (&mut bob, &mut at_bob)
                    };
                    let before = receiver.to_bytes();
                    let key = ratchet_key(&m.bytes);
                    let result = receiver.decrypt(&m.bytes);
                    if model.decrypted.contains(&m.id) {
                        prop_assert!(result.is_err(), "duplicate {} decrypted twice", m.id);
                        assert_unchanged(receiver, &before, "a duplicate");
                    } else if model.chain_retired(&key) {
                        prop_assert_eq!(result, Err(DecryptError::DuplicateOrExpired));
                        assert_unchanged(receiver, &before, "a message on a retired chain");
                    } else {
                        prop_assert_eq!(result.as_ref(), Ok(&m.plaintext), "message {}", m.id);
                        model.decrypted.insert(m.id);
                        model.note_chain(key);
                    }
                }
                Op::Drop { index } => {
                    if !in_flight.is_empty() {
                        let i = index % in_flight.len();
                        in_flight.remove(i);
                    }
                }
                Op::Tamper { index, byte, xor } => {
                    if in_flight.is_empty() { continue; }
                    let m = &in_flight[index % in_flight.len()];
                    let mut bytes = m.bytes.clone();
                    let at = byte % bytes.len();
                    bytes[at] ^= xor;
                    let receiver = if m.to_alice { &mut alice } else { &mut bob };
                    let before = receiver.to_bytes();
                    let result = receiver.decrypt(&bytes);
                    prop_assert!(result.is_err(), "tampered byte {} accepted", at);
                    assert_unchanged(receiver, &before, "a tampered message");
                }
            }
            alice.assert_invariants();
            bob.assert_invariants();
        }
    }

    /// A compromised message key opens its own message and no other.
    #[test]
    fn compromised_message_key_reveals_no_other_message(
        seed in any::<u64>(),
        senders in prop::collection::vec(any::<bool>(), 2..24),
        victim in any::<usize>(),
    ) {
        let Pair { mut alice, mut bob, mut entropy } = establish(seed, false);
        let ad_digest = kat::snapshot(&alice).ad_digest;
        let mut sent = Vec::new();
        for (i, from_alice) in senders.into_iter().enumerate() {
            let (sender, receiver) = if from_alice {
                (&mut alice, &mut bob)
            } else {
                (&mut bob, &mut alice)
            };
            let plaintext = format!("secret {i}").into_bytes();
            let (bytes, message_key) =
                kat::encrypt_with_key(sender, &plaintext, &mut entropy).unwrap();
            receiver.decrypt(&bytes).unwrap();
            sent.push((bytes, message_key, plaintext));
        }
        let victim = victim % sent.len();
        let (_, leaked, _) = &sent[victim];
        for (j, (bytes, key, plaintext)) in sent.iter().enumerate() {
            let opened = open_with(leaked, &ad_digest, bytes);
            if j == victim {
                prop_assert_eq!(opened.as_ref(), Some(plaintext));
            } else {
                prop_assert_ne!(key, leaked);
                prop_assert!(opened.is_none(), "key of message {} opened message {}", victim, j);
                // Nor is any other key one KDF step away from the leaked one.
                let (a, b) = kat::kdf_ck(leaked);
                prop_assert!(key != &a && key != &b);
            }
        }
    }

    /// Post-compromise recovery (Double Ratchet §6.2): an attacker with a full copy of Bob's
    /// state, or his receiving chain key, reads nothing once both sides have ratcheted.
    #[test]
    fn old_state_and_chain_keys_reveal_no_message_after_both_ratchet(
        seed in any::<u64>(),
        before in prop::collection::vec(any::<bool>(), 0..12),
        after_count in 1usize..6,
    ) {
        let Pair { mut alice, mut bob, mut entropy } = establish(seed, true);
        for from_alice in before {
            let (sender, receiver) = if from_alice {
                (&mut alice, &mut bob)
            } else {
                (&mut bob, &mut alice)
            };
            let bytes = sender.encrypt(b"before", &mut entropy).unwrap();
            receiver.decrypt(&bytes).unwrap();
        }
        // The compromise: everything Bob holds.
        let stolen_state = bob.to_bytes();
        let stolen_chain_key = kat::snapshot(&bob).receiving.map(|(ck, _)| ck);
        let ad_digest = kat::snapshot(&bob).ad_digest;
        // Two round trips, so Bob generates a ratchet key the attacker never saw and Alice
        // starts a chain on it.
        for _ in 0..2 {
            let m = alice.encrypt(b"heal", &mut entropy).unwrap();
            bob.decrypt(&m).unwrap();
            let r = bob.encrypt(b"heal", &mut entropy).unwrap();
            alice.decrypt(&r).unwrap();
        }
        let fresh: Vec<Vec<u8>> = (0..after_count)
            .map(|i| alice.encrypt(format!("after {i}").as_bytes(), &mut entropy).unwrap())
            .collect();
        for m in &fresh {
            let mut stale = Session::from_bytes(&stolen_state).unwrap();
            prop_assert!(stale.decrypt(m).is_err());
            if let Some(chain_key) = stolen_chain_key {
                let mut ck = chain_key;
                for _ in 0..64 {
                    let (mk, next) = kat::kdf_ck(&ck);
                    prop_assert!(open_with(&mk, &ad_digest, m).is_none());
                    ck = next;
                }
            }
            prop_assert!(bob.decrypt(m).is_ok());
        }
    }
}

/// Open a message with a given message key, as an attacker would (independent of `Session`).
fn open_with(message_key: &[u8; 32], ad_digest: &[u8; 32], message: &[u8]) -> Option<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
    let prefix_len = if message[1] == 1 {
        2 + 169 + 40
    } else {
        2 + 40
    };
    let (key, nonce) = kat::expand_message_key(message_key);
    let mut aad = ad_digest.to_vec();
    aad.extend_from_slice(&message[..prefix_len]);
    ChaCha20Poly1305::new(&Key::from(key))
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &message[prefix_len..],
                aad: &aad,
            },
        )
        .ok()
}
