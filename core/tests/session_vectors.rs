//! Known-answer vectors for the session layer, one JSON file per scenario in `tests/vectors/`.
//!
//! Each file holds every input (secret keys, entropy drawn, plaintexts) and every intermediate
//! (DH outputs, shared secret, associated data, root / chain / message keys, AEAD keys and
//! nonces, headers, wire messages), so another implementation can check ours. This test
//! regenerates every value and fails if any differs from the checked-in file; run with
//! `PALOMA_BLESS=1` to rewrite the files after a deliberate format change.
//!
//! The test also recomputes each derivation *independently* from the spec mapping
//! (notes/e2e.md) with x25519-dalek, blake3 and chacha20poly1305 directly, so the vectors are
//! checked against the construction as written, not only against themselves.

use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use paloma_core::session::kat::{self, Snapshot};
use paloma_core::session::{
    Entropy, IdentityKeyPair, OneTimePrekeyPair, PrekeyBundle, PrekeyId, Session, SignedPrekeyPair,
};
use serde_json::{json, Value};
use x25519_dalek::{PublicKey, StaticSecret};

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// A named input secret: reproducible from its label alone.
fn secret(label: &str) -> [u8; 32] {
    blake3::derive_key("Paloma 2026-11-22 test vector inputs", label.as_bytes())
}

/// Entropy that hands out labelled secrets and records them.
struct Scripted {
    party: &'static str,
    drawn: Vec<[u8; 32]>,
}

impl Entropy for Scripted {
    fn fill(&mut self, buf: &mut [u8]) {
        assert_eq!(buf.len(), 32, "the session draws whole keys");
        let value = secret(&format!("{} ratchet {}", self.party, self.drawn.len() + 2));
        buf.copy_from_slice(&value);
        self.drawn.push(value);
    }
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().unwrap())
}

fn dh(secret: &[u8; 32], public: &[u8; 32]) -> [u8; 32] {
    StaticSecret::from(*secret)
        .diffie_hellman(&PublicKey::from(*public))
        .to_bytes()
}

fn public(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// Independent KDF_RK: keyed BLAKE3 (key = root key) over the DH output, 64-byte XOF.
fn kdf_rk(root: &[u8; 32], dh_out: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let mut out = [0u8; 64];
    blake3::Hasher::new_keyed(root)
        .update(dh_out)
        .finalize_xof()
        .fill(&mut out);
    (out[..32].try_into().unwrap(), out[32..].try_into().unwrap())
}

/// Independent KDF_CK.
fn kdf_ck(chain: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (
        *blake3::keyed_hash(chain, &[0x01]).as_bytes(),
        *blake3::keyed_hash(chain, &[0x02]).as_bytes(),
    )
}

/// Independent message key expansion.
fn expand(message_key: &[u8; 32]) -> ([u8; 32], [u8; 12]) {
    let mut out = [0u8; 44];
    blake3::Hasher::new_derive_key(kat::MESSAGE_KEY_CONTEXT)
        .update(message_key)
        .finalize_xof()
        .fill(&mut out);
    (out[..32].try_into().unwrap(), out[32..].try_into().unwrap())
}

fn prefix_len(message: &[u8]) -> usize {
    if message[1] == 1 {
        2 + 169 + 40
    } else {
        2 + 40
    }
}

/// Independent AEAD: encrypt the plaintext under the message's prefix and compare.
fn check_aead(message_key: &[u8; 32], ad_digest: &[u8; 32], plaintext: &[u8], message: &[u8]) {
    let (key, nonce) = expand(message_key);
    let prefix = &message[..prefix_len(message)];
    let mut aad = ad_digest.to_vec();
    aad.extend_from_slice(prefix);
    let ciphertext = ChaCha20Poly1305::new(&Key::from(key))
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap();
    assert_eq!(&message[prefix.len()..], &ciphertext[..], "AEAD output");
}

/// The fixed parties of every scenario.
struct Parties {
    alice: IdentityKeyPair,
    bob: IdentityKeyPair,
    spk: SignedPrekeyPair,
    otk: OneTimePrekeyPair,
    inputs: Value,
}

fn parties() -> Parties {
    let a_sign = secret("alice identity signing");
    let a_dh = secret("alice identity dh");
    let b_sign = secret("bob identity signing");
    let b_dh = secret("bob identity dh");
    let spk_secret = secret("bob signed prekey");
    let otk_secret = secret("bob one-time prekey");
    let alice = IdentityKeyPair::from_secret_bytes(&a_sign, &a_dh);
    let bob = IdentityKeyPair::from_secret_bytes(&b_sign, &b_dh);
    let spk = SignedPrekeyPair::from_secret_bytes(&bob, PrekeyId(1), &spk_secret);
    let otk = OneTimePrekeyPair::from_secret_bytes(PrekeyId(42), &otk_secret);
    let inputs = json!({
        "alice_identity_signing_secret": h(&a_sign),
        "alice_identity_dh_secret": h(&a_dh),
        "bob_identity_signing_secret": h(&b_sign),
        "bob_identity_dh_secret": h(&b_dh),
        "bob_signed_prekey_id": 1,
        "bob_signed_prekey_secret": h(&spk_secret),
        "bob_one_time_prekey_id": 42,
        "bob_one_time_prekey_secret": h(&otk_secret),
        "alice_ephemeral_secret": h(&secret("alice ephemeral")),
        "alice_ratchet_secret_1": h(&secret("alice ratchet 1")),
    });
    Parties {
        alice,
        bob,
        spk,
        otk,
        inputs,
    }
}

fn identity_json(id: &IdentityKeyPair) -> Value {
    json!({
        "signing_public": h(&id.public().signing_key),
        "dh_public": h(&id.public().dh_key),
        "user_id": h(&id.user_id().0),
        "binding_signature": h(&id.binding_signature()),
    })
}

/// X3DH and Alice's first message, checked independently; returns both sessions.
fn handshake(p: &Parties, with_one_time: bool, plaintext: &[u8]) -> (Session, Session, Value) {
    let otk = with_one_time.then_some(&p.otk);
    let bundle = PrekeyBundle::new(&p.bob, &p.spk, otk);
    let ephemeral = secret("alice ephemeral");
    let ratchet = secret("alice ratchet 1");
    let (mut alice, trace) =
        kat::initiate_with_secrets(&p.alice, &bundle, ephemeral, ratchet).unwrap();
    let before = kat::snapshot(&alice);
    let (chain_key, _) = before.sending.unwrap();
    let mut no_entropy = Scripted {
        party: "alice",
        drawn: Vec::new(),
    };
    let (message, message_key) =
        kat::encrypt_with_key(&mut alice, plaintext, &mut no_entropy).unwrap();
    assert!(no_entropy.drawn.is_empty());
    let (bob, received, bob_trace) = kat::accept_with_trace(&p.bob, &p.spk, otk, &message).unwrap();
    assert_eq!(received, plaintext);
    assert_eq!(bob_trace.shared_secret, trace.shared_secret);

    // Independent recomputation (X3DH §3.3).
    let a_dh = secret("alice identity dh");
    let spk_pub = p.spk.public_key();
    let mut dhs = vec![
        dh(&a_dh, &spk_pub),
        dh(&ephemeral, &p.bob.public().dh_key),
        dh(&ephemeral, &spk_pub),
    ];
    if with_one_time {
        dhs.push(dh(&ephemeral, &p.otk.public_key()));
    }
    assert_eq!(dhs, trace.dh_outputs);
    let mut kdf_input = vec![0xFFu8; 32];
    for d in &dhs {
        kdf_input.extend_from_slice(d);
    }
    let sk = blake3::derive_key(kat::X3DH_CONTEXT, &kdf_input);
    assert_eq!(sk, trace.shared_secret);
    let ad = kat::associated_data(p.alice.public(), p.bob.public());
    let mut expected_ad = vec![1u8];
    for key in [
        p.alice.public().signing_key,
        p.alice.public().dh_key,
        p.bob.public().signing_key,
        p.bob.public().dh_key,
    ] {
        expected_ad.extend_from_slice(&[0, 32]);
        expected_ad.extend_from_slice(&key);
    }
    expected_ad.extend_from_slice(&p.alice.user_id().0);
    expected_ad.extend_from_slice(&p.bob.user_id().0);
    assert_eq!(ad, expected_ad);
    let ad_digest = blake3::derive_key(kat::ASSOCIATED_DATA_CONTEXT, &ad);
    assert_eq!(ad_digest, before.ad_digest);
    let ratchet_dh = dh(&ratchet, &spk_pub);
    let (root_1, chain_0) = kdf_rk(&sk, &ratchet_dh);
    assert_eq!((root_1, chain_0), (before.root_key, chain_key));
    let (mk, _) = kdf_ck(&chain_0);
    assert_eq!(mk, message_key);
    check_aead(&mk, &ad_digest, plaintext, &message);
    let (aead_key, aead_nonce) = expand(&mk);

    let mut dh_json = serde_json::Map::new();
    for (i, d) in dhs.iter().enumerate() {
        dh_json.insert(format!("dh{}", i + 1), json!(h(d)));
    }
    let value = json!({
        "alice_identity": identity_json(&p.alice),
        "bob_identity": identity_json(&p.bob),
        "bob_signed_prekey_public": h(&spk_pub),
        "bob_signed_prekey_signature": h(&bundle.signed_prekey_signature),
        "bob_one_time_prekey_public": with_one_time.then(|| h(&p.otk.public_key())),
        "bundle": h(&bundle.to_bytes()),
        "alice_ephemeral_public": h(&public(&ephemeral)),
        "dh_outputs": dh_json,
        "shared_secret": h(&sk),
        "associated_data": h(&ad),
        "associated_data_digest": h(&ad_digest),
        "alice_ratchet_public_1": h(&public(&ratchet)),
        "ratchet_init_dh": h(&ratchet_dh),
        "root_key_1": h(&root_1),
        "sending_chain_key_0": h(&chain_0),
        "message_key_0": h(&mk),
        "aead_key_0": h(&aead_key),
        "aead_nonce_0": h(&aead_nonce),
        "plaintext_0": h(plaintext),
        "message_0": h(&message),
        "safety_number": alice.safety_number().to_string(),
    });
    (alice, bob, value)
}

fn constants() -> Value {
    json!({
        "x3dh_context": kat::X3DH_CONTEXT,
        "x3dh_f": h(&[0xFF; 32]),
        "associated_data_context": kat::ASSOCIATED_DATA_CONTEXT,
        "message_key_context": kat::MESSAGE_KEY_CONTEXT,
        "kdf_ck_message_key_input": "01",
        "kdf_ck_next_chain_key_input": "02",
        "input_secret_derivation": "blake3 derive_key(\"Paloma 2026-11-22 test vector inputs\", label)",
    })
}

fn x3dh_scenario(with_one_time: bool) -> Value {
    let p = parties();
    let (alice, bob, value) = handshake(&p, with_one_time, b"Hello Bob, this is Alice.");
    assert_eq!(alice.safety_number(), bob.safety_number());
    json!({
        "scenario": if with_one_time { "x3dh_with_otk" } else { "x3dh_without_otk" },
        "description": "X3DH (rev. 1) on X25519/Ed25519/BLAKE3 and Alice's first message.",
        "constants": constants(),
        "inputs": p.inputs,
        "intermediates": value,
    })
}

/// One action of a ratchet script.
enum Action {
    /// The party (true = Alice) encrypts this plaintext.
    Send(bool, &'static str),
    /// Deliver the message with this index (in send order) to its receiver.
    Deliver(usize),
}

struct Party {
    session: Session,
    entropy: Scripted,
}

fn snapshot_json(s: &Snapshot) -> Value {
    json!({
        "root_key": h(&s.root_key),
        "sending_chain_key": s.sending.map(|(ck, _)| h(&ck)),
        "sending_next_number": s.sending.map(|(_, n)| n),
        "previous_sending_length": s.previous_sending_length,
        "local_ratchet_public": s.local_ratchet.map(|(_, p)| h(&p)),
        "remote_ratchet_key": s.remote_ratchet_key.map(|k| h(&k)),
        "receiving_chain_key": s.receiving.map(|(ck, _)| h(&ck)),
        "receiving_next_number": s.receiving.map(|(_, n)| n),
        "skipped_keys_total": s.skipped_keys_total,
    })
}

fn ratchet_scenario(name: &str, description: &str, script: &[Action]) -> Value {
    let p = parties();
    let (alice, bob, handshake_json) = handshake(&p, true, b"first");
    let mut alice = Party {
        session: alice,
        entropy: Scripted {
            party: "alice",
            drawn: Vec::new(),
        },
    };
    let mut bob = Party {
        session: bob,
        entropy: Scripted {
            party: "bob",
            drawn: Vec::new(),
        },
    };
    // (from Alice, plaintext, message)
    let mut sent: Vec<(bool, &str, Vec<u8>)> = Vec::new();
    let mut steps = Vec::new();
    for action in script {
        match *action {
            Action::Send(from_alice, plaintext) => {
                let party = if from_alice { &mut alice } else { &mut bob };
                let before = kat::snapshot(&party.session);
                let drawn_before = party.entropy.drawn.len();
                let (message, message_key) = kat::encrypt_with_key(
                    &mut party.session,
                    plaintext.as_bytes(),
                    &mut party.entropy,
                )
                .unwrap();
                let after = kat::snapshot(&party.session);
                let drawn = party.entropy.drawn.get(drawn_before).copied();
                // Independent recomputation of the chain key this message used.
                let (chain_key, dh_step) = match (before.sending, drawn) {
                    (Some((ck, _)), None) => (ck, None),
                    (None, Some(new_secret)) => {
                        let remote = before.remote_ratchet_key.unwrap();
                        let dh_out = dh(&new_secret, &remote);
                        let (root, ck) = kdf_rk(&before.root_key, &dh_out);
                        assert_eq!(root, after.root_key);
                        (ck, Some((new_secret, dh_out, root)))
                    }
                    other => panic!("unexpected sending state {other:?}"),
                };
                let (mk, next_ck) = kdf_ck(&chain_key);
                assert_eq!(mk, message_key);
                assert_eq!(Some(next_ck), after.sending.map(|(ck, _)| ck));
                check_aead(&mk, &before.ad_digest, plaintext.as_bytes(), &message);
                let (aead_key, aead_nonce) = expand(&mk);
                let offset = prefix_len(&message) - 40;
                let header = &message[offset..offset + 40];
                steps.push(json!({
                    "action": "encrypt",
                    "index": sent.len(),
                    "sender": if from_alice { "alice" } else { "bob" },
                    "plaintext": plaintext,
                    "entropy_drawn": drawn.map(|d| h(&d)),
                    "dh_ratchet": dh_step.map(|(secret, dh_out, root)| json!({
                        "new_ratchet_secret": h(&secret),
                        "new_ratchet_public": h(&public(&secret)),
                        "dh_output": h(&dh_out),
                        "root_key": h(&root),
                    })),
                    "chain_key": h(&chain_key),
                    "message_key": h(&mk),
                    "next_chain_key": h(&next_ck),
                    "aead_key": h(&aead_key),
                    "aead_nonce": h(&aead_nonce),
                    "header": {
                        "ratchet_key": h(&header[..32]),
                        "previous_chain_length": be32(&header[32..36]),
                        "message_number": be32(&header[36..40]),
                    },
                    "message": h(&message),
                    "sender_state_after": snapshot_json(&after),
                }));
                sent.push((from_alice, plaintext, message));
            }
            Action::Deliver(index) => {
                let (from_alice, plaintext, message) = &sent[index];
                let party = if *from_alice { &mut bob } else { &mut alice };
                let result = party.session.decrypt(message);
                if let Ok(received) = &result {
                    assert_eq!(received, plaintext.as_bytes());
                }
                steps.push(json!({
                    "action": "decrypt",
                    "index": index,
                    "receiver": if *from_alice { "bob" } else { "alice" },
                    "result": match &result {
                        Ok(p) => json!({ "plaintext": String::from_utf8(p.clone()).unwrap() }),
                        Err(e) => json!({ "error": format!("{e:?}") }),
                    },
                    "receiver_state_after": snapshot_json(&kat::snapshot(&party.session)),
                }));
            }
        }
    }
    json!({
        "scenario": name,
        "description": description,
        "constants": constants(),
        "inputs": p.inputs,
        "handshake": handshake_json,
        "entropy_inputs": concat!(
            "each party's k-th drawn ratchet secret (k from 2) is the input secret ",
            "labelled '<party> ratchet <k>'"
        ),
        "steps": steps,
    })
}

fn scenarios() -> Vec<(&'static str, Value)> {
    use Action::{Deliver, Send};
    vec![
        ("x3dh_with_otk", x3dh_scenario(true)),
        ("x3dh_without_otk", x3dh_scenario(false)),
        (
            "ratchet_in_order",
            ratchet_scenario(
                "ratchet_in_order",
                "Messages delivered in order across three DH ratchet steps.",
                &[
                    Send(true, "a1"),
                    Deliver(0),
                    Send(false, "b0"),
                    Send(false, "b1"),
                    Deliver(1),
                    Deliver(2),
                    Send(true, "a2"),
                    Deliver(3),
                    Send(false, "b2"),
                    Deliver(4),
                ],
            ),
        ),
        (
            "ratchet_out_of_order",
            ratchet_scenario(
                "ratchet_out_of_order",
                "Skipped keys within a chain and across a DH step, and a refused duplicate.",
                &[
                    Send(true, "a1"),
                    Send(true, "a2"),
                    Send(true, "a3"),
                    Deliver(2),
                    Deliver(0),
                    Send(false, "b0"),
                    Deliver(3),
                    Send(true, "a4 new chain"),
                    Deliver(4),
                    Deliver(1),
                    Deliver(2),
                ],
            ),
        ),
    ]
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The first JSON path where two values differ.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let (va, vb) = (x.get(key), y.get(key));
                match (va, vb) {
                    (Some(va), Some(vb)) => {
                        if let Some(d) = first_difference(&format!("{path}.{key}"), va, vb) {
                            return Some(d);
                        }
                    }
                    _ => return Some(format!("{path}.{key} present on one side only")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(&format!("{path}[{i}]"), va, vb)),
        _ if a == b => None,
        _ => Some(format!("{path}: checked in {a}, computed {b}")),
    }
}

#[test]
fn vectors_match_checked_in_files() {
    let bless = std::env::var("PALOMA_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for (name, computed) in scenarios() {
        let path = vectors_dir().join(format!("{name}.json"));
        if bless {
            std::fs::create_dir_all(vectors_dir()).unwrap();
            let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
            std::fs::write(&path, text).unwrap();
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            failures.push(format!("{name}: missing {path:?}; run with PALOMA_BLESS=1"));
            continue;
        };
        let stored: Value = serde_json::from_str(&text).unwrap();
        if let Some(diff) = first_difference(name, &stored, &computed) {
            failures.push(diff);
        }
    }
    assert!(
        failures.is_empty(),
        "known-answer vectors changed (PALOMA_BLESS=1 rewrites them if intended):\n{}",
        failures.join("\n")
    );
}
