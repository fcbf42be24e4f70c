//! Fuzz entry points for the session layer, shared by the cargo-fuzz targets in `fuzz/` and by
//! the corpus replay test (`core/tests/session_fuzz_corpus.rs`).
//!
//! Each builds a deterministic session or identity from fixed seeds, feeds the bytes, and
//! checks what must hold for *any* input: no panic, a failed decrypt leaves the state unchanged,
//! a decoded state satisfies every invariant and re-encodes stably. A broken check panics, which
//! is how a fuzzer reports it.

use std::sync::OnceLock;

use super::kat::XofEntropy;
use super::{
    initial_header, IdentityKeyPair, OneTimePrekeyPair, PrekeyBundle, PrekeyId, Session,
    SignedPrekeyPair,
};

/// Bob's fixed keys.
struct Responder {
    identity: IdentityKeyPair,
    signed_prekey: SignedPrekeyPair,
    one_time_prekey: OneTimePrekeyPair,
}

fn responder() -> Responder {
    let identity = IdentityKeyPair::from_secret_bytes(&[0xB0; 32], &[0xB1; 32]);
    let signed_prekey = SignedPrekeyPair::from_secret_bytes(&identity, PrekeyId(1), &[0xB2; 32]);
    let one_time_prekey = OneTimePrekeyPair::from_secret_bytes(PrekeyId(2), &[0xB3; 32]);
    Responder {
        identity,
        signed_prekey,
        one_time_prekey,
    }
}

fn initiator() -> IdentityKeyPair {
    IdentityKeyPair::from_secret_bytes(&[0xA0; 32], &[0xA1; 32])
}

/// A fixed conversation, and what the fuzz targets start from.
struct Established {
    /// Bob's session: one previous receiving chain holding a skipped key, a current one.
    bob: Vec<u8>,
    /// Valid inputs for the decrypt target: the skipped message, the next message, a replay.
    decrypt_corpus: Vec<Vec<u8>>,
    /// Valid initial messages (with and without a one-time prekey).
    initial_corpus: Vec<Vec<u8>>,
    /// Valid serialized states of both sides at several points.
    state_corpus: Vec<Vec<u8>>,
}

fn established() -> &'static Established {
    static ESTABLISHED: OnceLock<Established> = OnceLock::new();
    ESTABLISHED.get_or_init(build)
}

fn build() -> Established {
    let mut e = XofEntropy::from_seed(b"paloma fuzz session");
    let bob_keys = responder();
    let alice_id = initiator();
    let bundle = PrekeyBundle::new(
        &bob_keys.identity,
        &bob_keys.signed_prekey,
        Some(&bob_keys.one_time_prekey),
    );
    let mut state_corpus = Vec::new();
    let mut alice = Session::initiate(&alice_id, bob_keys.identity.user_id(), &bundle, &mut e)
        .expect("fixed bundle is valid");
    state_corpus.push(alice.to_bytes().to_vec());
    let m: Vec<Vec<u8>> = (0..3u8)
        .map(|i| alice.encrypt(&[b'm', i], &mut e).expect("encrypt"))
        .collect();
    let (mut bob, _) = Session::accept(
        &bob_keys.identity,
        &bob_keys.signed_prekey,
        Some(&bob_keys.one_time_prekey),
        &m[0],
    )
    .expect("fixed initial message is valid");
    bob.decrypt(&m[2]).expect("in-session message");
    state_corpus.push(bob.to_bytes().to_vec());
    let reply = bob.encrypt(b"r0", &mut e).expect("encrypt");
    alice.decrypt(&reply).expect("reply");
    let n0 = alice.encrypt(b"n0", &mut e).expect("encrypt");
    let n1 = alice.encrypt(b"n1", &mut e).expect("encrypt");
    bob.decrypt(&n0).expect("new chain");
    state_corpus.push(alice.to_bytes().to_vec());
    state_corpus.push(bob.to_bytes().to_vec());

    let without_otk = PrekeyBundle::new(&bob_keys.identity, &bob_keys.signed_prekey, None);
    let mut other = Session::initiate(&alice_id, bob_keys.identity.user_id(), &without_otk, &mut e)
        .expect("valid bundle");
    let initial_corpus = vec![
        m[0].clone(),
        other
            .encrypt(b"no one-time prekey", &mut e)
            .expect("encrypt"),
    ];
    let bob = bob.to_bytes().to_vec();
    // The decrypt seeds must reach the success paths: a stored skipped key on a previous chain
    // and the next key of the current chain.
    for valid in [&m[1], &n1] {
        let mut copy = Session::from_bytes(&bob).expect("fixed state decodes");
        copy.decrypt(valid).expect("seed message decrypts");
    }
    Established {
        bob,
        decrypt_corpus: vec![m[1].clone(), n1, n0, reply],
        initial_corpus,
        state_corpus,
    }
}

/// Bob's established session, decoded once (decoding checks invariants with scalar
/// multiplications, which would dominate every fuzz iteration).
fn bob_session() -> Session {
    static BOB: OnceLock<Session> = OnceLock::new();
    let bob = BOB.get_or_init(|| Session::from_bytes(&established().bob).expect("fixed state"));
    Session {
        state: bob.state.clone(),
        ad_digest: bob.ad_digest,
    }
}

/// Decrypt arbitrary bytes on Bob's established session. A failure must leave the serialized
/// state byte-for-byte unchanged; a success must keep every invariant.
pub fn fuzz_decrypt(data: &[u8]) {
    let before = &established().bob;
    let mut bob = bob_session();
    match bob.decrypt(data) {
        Ok(_) => bob.assert_invariants(),
        Err(_) => assert!(
            *bob.to_bytes() == before[..],
            "a failed decrypt changed the session state"
        ),
    }
}

/// Process arbitrary bytes as an initial message to Bob's fixed prekeys, supplying whichever
/// prekeys the header names (the responder's lookup) and also deliberately wrong ones.
pub fn fuzz_initial_message(data: &[u8]) {
    static RESPONDER: OnceLock<Responder> = OnceLock::new();
    let bob = RESPONDER.get_or_init(responder);
    let named = match initial_header(data) {
        Ok(Some(header)) => header.one_time_prekey_id,
        _ => None,
    };
    let one_time = named.map(|_| &bob.one_time_prekey);
    for otk in [one_time, None, Some(&bob.one_time_prekey)] {
        if let Ok((session, _)) = Session::accept(&bob.identity, &bob.signed_prekey, otk, data) {
            session.assert_invariants();
        }
    }
}

/// Decode arbitrary bytes as a session state; whatever decodes must satisfy the invariants,
/// re-encode stably and survive an encrypt and a decrypt.
pub fn fuzz_session_state(data: &[u8]) {
    let Ok(mut session) = Session::from_bytes(data) else {
        return;
    };
    session.assert_invariants();
    let encoded = session.to_bytes();
    let again = Session::from_bytes(&encoded).expect("a re-encoded valid state decodes");
    assert!(
        *again.to_bytes() == *encoded,
        "session state encoding is not stable"
    );
    let mut e = XofEntropy::from_seed(b"paloma fuzz state");
    if let Ok(message) = session.encrypt(b"probe", &mut e) {
        session.assert_invariants();
        // Our own message is not for us: it must fail cleanly.
        let _ = session.decrypt(&message);
    }
    let _ = session.decrypt(data);
    session.assert_invariants();
}

/// Seed inputs with structure for each target: `(target directory name, inputs)`. Written to
/// `fuzz/corpus/` by the corpus test under `PALOMA_BLESS=1`.
pub fn seed_corpora() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let e = established();
    vec![
        ("session_decrypt", e.decrypt_corpus.clone()),
        ("session_initial", e.initial_corpus.clone()),
        ("session_state", e.state_corpus.clone()),
    ]
}
