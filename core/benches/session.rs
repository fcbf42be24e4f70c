//! Session layer figures: `cargo bench -p paloma-core --bench session`.
//!
//! A plain binary (`harness = false`) that prints the mean of many iterations for: a 200-byte
//! message encrypted and decrypted in an established chain, a message that carries a DH ratchet
//! step, an X3DH handshake, and raw ChaCha20-Poly1305 on the same 200 bytes for comparison.
//! Design target (README, "End-to-end sessions", bench figures): a message in an established
//! chain costs at most 1.5x the raw AEAD.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use paloma_core::session::kat::XofEntropy;
use paloma_core::session::{
    IdentityKeyPair, OneTimePrekeyPair, PrekeyBundle, PrekeyId, Session, SignedPrekeyPair,
};

const MESSAGE_BYTES: usize = 200;

/// Mean time per iteration of `f` over `iterations` runs, after a warm-up.
// Benchmarks read the clock; the core never does (clippy.toml).
#[allow(clippy::disallowed_methods)]
fn time<F: FnMut()>(iterations: u32, mut f: F) -> Duration {
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed() / iterations
}

/// Best of several runs, to shed scheduler noise on a shared machine.
fn best_of<F: FnMut()>(runs: u32, iterations: u32, mut f: F) -> Duration {
    (0..runs)
        .map(|_| time(iterations, &mut f))
        .min()
        .expect("at least one run")
}

struct Fixture {
    alice_id: IdentityKeyPair,
    bob_id: IdentityKeyPair,
    spk: SignedPrekeyPair,
    otk: OneTimePrekeyPair,
}

fn fixture(entropy: &mut XofEntropy) -> Fixture {
    let alice_id = IdentityKeyPair::generate(entropy);
    let bob_id = IdentityKeyPair::generate(entropy);
    let spk = SignedPrekeyPair::generate(&bob_id, PrekeyId(1), entropy);
    let otk = OneTimePrekeyPair::generate(PrekeyId(2), entropy);
    Fixture {
        alice_id,
        bob_id,
        spk,
        otk,
    }
}

fn handshake(f: &Fixture, entropy: &mut XofEntropy) -> (Session, Session) {
    let bundle = PrekeyBundle::new(&f.bob_id, &f.spk, Some(&f.otk));
    let mut alice =
        Session::initiate(&f.alice_id, f.bob_id.user_id(), &bundle, entropy).expect("initiate");
    let first = alice.encrypt(b"hello", entropy).expect("encrypt");
    let (bob, _) = Session::accept(&f.bob_id, &f.spk, Some(&f.otk), &first).expect("accept");
    (alice, bob)
}

fn main() {
    let mut entropy = XofEntropy::from_seed(b"paloma session bench");
    let f = fixture(&mut entropy);
    let plaintext = [0x5Au8; MESSAGE_BYTES];

    // 1. Established chain: Alice sends, Bob receives, same chain every time.
    let (mut alice, mut bob) = handshake(&f, &mut entropy);
    let reply = bob.encrypt(b"reply", &mut entropy).expect("encrypt");
    alice.decrypt(&reply).expect("decrypt");
    let mut in_chain_once = || {
        let m = alice
            .encrypt(black_box(&plaintext), &mut entropy)
            .expect("encrypt");
        black_box(bob.decrypt(&m).expect("decrypt"));
    };
    // 4. Raw AEAD on the same 200 bytes, no associated data (a fresh cipher per message, as the
    //    session builds one per message key).
    let nonce = Nonce::from([9u8; 12]);
    let raw_once = || {
        let cipher = ChaCha20Poly1305::new(&Key::from(black_box([7u8; 32])));
        let c = cipher
            .encrypt(&nonce, black_box(&plaintext[..]))
            .expect("seal");
        black_box(cipher.decrypt(&nonce, &c[..]).expect("open"));
    };
    // Interleave the two so both see the same machine load (the VM is shared); keep the best.
    let (mut in_chain, mut raw) = (Duration::MAX, Duration::MAX);
    let mut raw_once = raw_once;
    for _ in 0..7 {
        in_chain = in_chain.min(time(20_000, &mut in_chain_once));
        raw = raw.min(time(20_000, &mut raw_once));
    }

    // 2. Ping-pong: every message starts a new chain, so each costs one DH ratchet step on the
    //    sender (new key, DH, KDF_RK) and one on the receiver (DH, KDF_RK).
    let (mut alice, mut bob) = handshake(&f, &mut entropy);
    let mut alice_turn = false;
    let ping_pong = best_of(5, 2_000, || {
        let (sender, receiver) = if alice_turn {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        alice_turn = !alice_turn;
        let m = sender
            .encrypt(black_box(&plaintext), &mut entropy)
            .expect("encrypt");
        black_box(receiver.decrypt(&m).expect("decrypt"));
    });

    // 3. X3DH: bundle verification, DH1..DH4 both sides, the first message and its acceptance.
    let x3dh = best_of(3, 500, || {
        black_box(handshake(&f, &mut entropy));
    });

    let cipher = ChaCha20Poly1305::new(&Key::from([7u8; 32]));
    // 5. Raw AEAD with associated data the size ours binds (32-byte AD digest + 42-byte prefix).
    let aad = [3u8; 74];
    let raw_with_ad = best_of(5, 20_000, || {
        let c = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: black_box(&plaintext[..]),
                    aad: &aad,
                },
            )
            .expect("seal");
        black_box(
            cipher
                .decrypt(
                    &nonce,
                    Payload {
                        msg: &c[..],
                        aad: &aad,
                    },
                )
                .expect("open"),
        );
    });

    let ratio = in_chain.as_secs_f64() / raw.as_secs_f64();
    println!(
        "paloma session layer, {MESSAGE_BYTES}-byte messages (mean per iteration, best of runs)"
    );
    println!(
        "  encrypt+decrypt, established chain     {:>10.2?}",
        in_chain
    );
    println!(
        "  encrypt+decrypt with a DH ratchet step  {:>10.2?}",
        ping_pong
    );
    println!(
        "    => one DH ratchet step (both sides)   {:>10.2?}",
        ping_pong.saturating_sub(in_chain)
    );
    println!("  X3DH handshake + first message         {:>10.2?}", x3dh);
    println!("  raw ChaCha20-Poly1305 seal+open         {:>10.2?}", raw);
    println!(
        "  raw ChaCha20-Poly1305 seal+open, 74B AD {:>10.2?}",
        raw_with_ad
    );
    println!(
        "  ratio established chain / raw AEAD      {ratio:>10.2}x (target <= 1.5x: {})",
        if ratio <= 1.5 { "met" } else { "NOT met" }
    );
}
