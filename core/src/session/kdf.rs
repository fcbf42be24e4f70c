//! The specifications' KDFs and AEAD instantiated on BLAKE3 and ChaCha20-Poly1305 (X3DH spec
//! §2.2, Double Ratchet spec §5.2; the README's "Constructions" lists each mapping).
//!
//! Every input here has a fixed length, so concatenation is unambiguous; every use of BLAKE3 has
//! its own key or context string, so no two derivations can collide across purposes.
//!
//! # Wiping intermediates
//! The specifications ask that secrets be deleted as soon as they are no longer needed (X3DH spec
//! §3.3 and §3.4: the DH outputs once SK is computed; Double Ratchet spec §6.1, secure deletion:
//! keys must not be recoverable afterwards). A BLAKE3 `Hasher` in keyed mode holds its key (a root
//! or chain key), and in any mode holds the buffered input (a DH output, a message key) and the
//! chaining value derived from both; an `OutputReader` holds the last compression's inputs. None
//! of these types wipe themselves on drop, so every hasher, reader and hash that touches a secret
//! here lives in a [`Zeroizing`] wrapper (blake3's `zeroize` feature provides the `Zeroize`
//! impls). The AEAD key is borrowed by the cipher, never copied onto the stack.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use zeroize::Zeroizing;

use super::keys::{IdentityPublic, Secret32};

/// X3DH §2.2 KDF context (BLAKE3 `derive_key`; the context string replaces HKDF's `info`).
pub const X3DH_CONTEXT: &str = "Paloma 2026-11-22 X3DH shared secret v1";
/// Hash of the session's associated data (X3DH §3.3 AD), so each AEAD call binds 32 bytes
/// instead of the ~200-byte AD.
pub const ASSOCIATED_DATA_CONTEXT: &str = "Paloma 2026-11-22 session associated data v1";
/// Expansion of a message key into an AEAD key and nonce (Double Ratchet §5.2 ENCRYPT).
pub const MESSAGE_KEY_CONTEXT: &str = "Paloma 2026-11-22 Double Ratchet message key v1";

/// X3DH §2.2: F is 32 bytes of 0xFF for X25519, prepended so the KDF input never starts like a
/// valid DH output in another protocol. Pinned by a known-answer test (a public implementation
/// once built it as 2 bytes).
pub(crate) const X3DH_F: [u8; 32] = [0xFF; 32];

/// Version byte that starts the associated data (X3DH §3.3).
pub(crate) const ASSOCIATED_DATA_VERSION: u8 = 1;

/// KDF_CK input constant for the message key (Double Ratchet §5.2 recommends distinct constants).
pub(crate) const CHAIN_MESSAGE_KEY_INPUT: [u8; 1] = [0x01];
/// KDF_CK input constant for the next chain key.
pub(crate) const CHAIN_NEXT_KEY_INPUT: [u8; 1] = [0x02];

/// X3DH §2.2: `SK = KDF(F ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4])`. `key_material` is the whole KDF input,
/// F included (built by `x3dh::KeyMaterial` in one wiped buffer). The hasher, which buffers the
/// DH outputs, and the output hash are wiped before returning (X3DH §3.3).
pub(crate) fn x3dh_shared_secret(key_material: &[u8]) -> Secret32 {
    let mut hasher = Zeroizing::new(blake3::Hasher::new_derive_key(X3DH_CONTEXT));
    hasher.update(key_material);
    let hash = Zeroizing::new(hasher.finalize());
    Secret32(*hash.as_bytes())
}

/// Double Ratchet §5.2 KDF_RK: keyed BLAKE3 with the root key as key over the DH output, XOF to
/// 64 bytes → (root key, chain key).
/// The hasher (keyed by the root key, buffering the DH output) and the XOF reader are wiped
/// (Double Ratchet §6.1).
pub(crate) fn kdf_rk(root_key: &Secret32, dh_output: &[u8; 32]) -> (Secret32, Secret32) {
    let mut hasher = Zeroizing::new(blake3::Hasher::new_keyed(&root_key.0));
    hasher.update(dh_output);
    let mut reader = Zeroizing::new(hasher.finalize_xof());
    let mut out = Zeroizing::new([0u8; 64]);
    reader.fill(&mut out[..]);
    let mut root = Secret32([0; 32]);
    let mut chain = Secret32([0; 32]);
    root.0.copy_from_slice(&out[..32]);
    chain.0.copy_from_slice(&out[32..]);
    (root, chain)
}

/// Double Ratchet §5.2 KDF_CK: (message key, next chain key), keyed BLAKE3 on 0x01 and 0x02.
///
/// Equal to `blake3::keyed_hash(ck, [0x01])` and `blake3::keyed_hash(ck, [0x02])`, but with one
/// hasher we can wipe: the one-shot functions leave their hasher, keyed by the chain key, on the
/// stack (Double Ratchet §6.1). `reset` returns the hasher to its freshly keyed state, so the
/// second output is exactly the second one-shot call's.
pub(crate) fn kdf_ck(chain_key: &Secret32) -> (Secret32, Secret32) {
    let mut hasher = Zeroizing::new(blake3::Hasher::new_keyed(&chain_key.0));
    hasher.update(&CHAIN_MESSAGE_KEY_INPUT);
    let message_key = Zeroizing::new(hasher.finalize());
    hasher.reset();
    hasher.update(&CHAIN_NEXT_KEY_INPUT);
    let next_chain_key = Zeroizing::new(hasher.finalize());
    (
        Secret32(*message_key.as_bytes()),
        Secret32(*next_chain_key.as_bytes()),
    )
}

/// A message key expanded into the AEAD's key and nonce. The key is wiped on drop; the nonce is
/// derived (not random) because every message key is used exactly once.
pub(crate) struct AeadKey {
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 12],
}

impl AeadKey {
    /// The ChaCha20-Poly1305 key, borrowed: the cipher copies it into its own state, which it
    /// wipes on drop (chacha20poly1305's `zeroize` feature), and no other copy is made.
    pub(crate) fn key(&self) -> &Key {
        (&*self.key).into()
    }

    /// The nonce.
    pub(crate) fn nonce(&self) -> Nonce {
        Nonce::from(self.nonce)
    }
}

/// `derive_key(MESSAGE_KEY_CONTEXT, mk)` read as 44 bytes: key ‖ nonce, read straight into their
/// places (the XOF is sequential). The hasher (which buffers the message key) and the XOF reader
/// are wiped (Double Ratchet §6.1).
pub(crate) fn expand_message_key(message_key: &Secret32) -> AeadKey {
    let mut hasher = Zeroizing::new(blake3::Hasher::new_derive_key(MESSAGE_KEY_CONTEXT));
    hasher.update(&message_key.0);
    let mut reader = Zeroizing::new(hasher.finalize_xof());
    let mut key = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    reader.fill(&mut key[..]);
    reader.fill(&mut nonce);
    AeadKey { key, nonce }
}

/// X3DH §3.3 / §4.8 associated data: version ‖ the four identity keys, each length-prefixed
/// (u16 big-endian), initiator first ‖ both user ids. Binding the user ids as well as the keys
/// defeats unknown-key-share attacks at the application layer.
pub(crate) fn associated_data(initiator: &IdentityPublic, responder: &IdentityPublic) -> Vec<u8> {
    let mut ad = Vec::with_capacity(1 + 4 * 34 + 64);
    ad.push(ASSOCIATED_DATA_VERSION);
    for key in [
        &initiator.signing_key,
        &initiator.dh_key,
        &responder.signing_key,
        &responder.dh_key,
    ] {
        ad.extend_from_slice(&(key.len() as u16).to_be_bytes());
        ad.extend_from_slice(key);
    }
    ad.extend_from_slice(&initiator.user_id().0);
    ad.extend_from_slice(&responder.user_id().0);
    ad
}

/// The 32-byte digest of [`associated_data`] that each AEAD call binds.
pub(crate) fn associated_data_digest(ad: &[u8]) -> [u8; 32] {
    blake3::derive_key(ASSOCIATED_DATA_CONTEXT, ad)
}

/// ChaCha20-Poly1305 in place: encrypts `buffer[body_start..]` and appends the 16-byte tag, so
/// a message is built in one allocation.
pub(crate) fn seal_in_place(key: &AeadKey, aad: &[u8], buffer: &mut Vec<u8>, body_start: usize) {
    let cipher = ChaCha20Poly1305::new(key.key());
    let tag = cipher
        .encrypt_inout_detached(&key.nonce(), aad, (&mut buffer[body_start..]).into())
        // Fails only beyond 2^38 bytes; callers bound the plaintext far below that.
        .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 refused a bounded plaintext"));
    buffer.extend_from_slice(&tag);
}

/// ChaCha20-Poly1305 open of ciphertext ‖ tag; `None` on authentication failure (or if shorter
/// than a tag).
pub(crate) fn open(key: &AeadKey, aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    let (body, tag) = ciphertext.split_last_chunk::<16>()?;
    let mut plaintext = body.to_vec();
    let cipher = ChaCha20Poly1305::new(key.key());
    // The crate checks the tag before decrypting, so a forgery leaves `plaintext` as ciphertext.
    cipher
        .decrypt_inout_detached(
            &key.nonce(),
            aad,
            (&mut plaintext[..]).into(),
            &Tag::from(*tag),
        )
        .ok()?;
    Some(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins F and the KDF layout: if anyone shortens F or reorders the inputs, this fails.
    #[test]
    fn x3dh_kdf_known_answer() {
        let mut input = vec![0xFFu8; 32];
        input.extend_from_slice(&[1u8; 32]);
        input.extend_from_slice(&[2u8; 32]);
        input.extend_from_slice(&[3u8; 32]);
        assert_eq!(input.len(), 128);
        assert_eq!(X3DH_F[..], input[..32]);
        let sk = x3dh_shared_secret(&input);
        assert_eq!(sk.0, blake3::derive_key(X3DH_CONTEXT, &input));
        assert_eq!(
            hex(&sk.0),
            "7f55eddd3f94c913c60bafeae6d95a0fca7ac8ea35b69a7490d895dfd2068bb0"
        );
    }

    /// The wipeable single-hasher KDF_CK equals the one-shot keyed hashes it replaces, and the
    /// expansion equals the one-shot derive_key XOF: the wiping changed no value.
    #[test]
    fn wiping_kdfs_match_one_shot_blake3() {
        let ck = Secret32([9; 32]);
        let (mk, next) = kdf_ck(&ck);
        assert_eq!(mk.0, *blake3::keyed_hash(&ck.0, &[0x01]).as_bytes());
        assert_eq!(next.0, *blake3::keyed_hash(&ck.0, &[0x02]).as_bytes());
        let expanded = expand_message_key(&mk);
        let mut expected = [0u8; 44];
        blake3::Hasher::new_derive_key(MESSAGE_KEY_CONTEXT)
            .update(&mk.0)
            .finalize_xof()
            .fill(&mut expected);
        assert_eq!(expanded.key()[..], expected[..32]);
        assert_eq!(expanded.nonce()[..], expected[32..]);
        let (rk, ck2) = kdf_rk(&ck, &[7; 32]);
        let mut expected = [0u8; 64];
        blake3::Hasher::new_keyed(&ck.0)
            .update(&[7; 32])
            .finalize_xof()
            .fill(&mut expected);
        assert_eq!((&rk.0[..], &ck2.0[..]), (&expected[..32], &expected[32..]));
    }

    #[test]
    fn chain_kdf_outputs_are_distinct() {
        let ck = Secret32([9; 32]);
        let (mk, next) = kdf_ck(&ck);
        assert_ne!(mk.0, next.0);
        assert_ne!(mk.0, ck.0);
        let (rk, ck2) = kdf_rk(&ck, &[7; 32]);
        assert_ne!(rk.0, ck2.0);
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let key = expand_message_key(&Secret32([5; 32]));
        let mut ct = b"hello".to_vec();
        seal_in_place(&key, b"ad", &mut ct, 0);
        assert_eq!(open(&key, b"ad", &ct).as_deref(), Some(&b"hello"[..]));
        assert_eq!(open(&key, b"ae", &ct), None);
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(open(&key, b"ad", &bad), None);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
