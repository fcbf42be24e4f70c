//! The specifications' KDFs and AEAD instantiated on BLAKE3 and ChaCha20-Poly1305
//! (notes/e2e.md, "Mapping the spec's functions").
//!
//! Every input here has a fixed length, so concatenation is unambiguous; every use of BLAKE3 has
//! its own key or context string, so no two derivations can collide across purposes.

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
const CHAIN_MESSAGE_KEY_INPUT: [u8; 1] = [0x01];
/// KDF_CK input constant for the next chain key.
const CHAIN_NEXT_KEY_INPUT: [u8; 1] = [0x02];

/// X3DH §2.2: `SK = KDF(F ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4])`.
pub(crate) fn x3dh_shared_secret(dh_outputs: &[&[u8; 32]]) -> Secret32 {
    let mut hasher = blake3::Hasher::new_derive_key(X3DH_CONTEXT);
    hasher.update(&X3DH_F);
    for dh in dh_outputs {
        hasher.update(&dh[..]);
    }
    Secret32(*hasher.finalize().as_bytes())
}

/// Double Ratchet §5.2 KDF_RK: keyed BLAKE3 with the root key as key over the DH output, XOF to
/// 64 bytes → (root key, chain key).
pub(crate) fn kdf_rk(root_key: &Secret32, dh_output: &[u8; 32]) -> (Secret32, Secret32) {
    let mut out = Zeroizing::new([0u8; 64]);
    blake3::Hasher::new_keyed(&root_key.0)
        .update(dh_output)
        .finalize_xof()
        .fill(&mut out[..]);
    let mut root = Secret32([0; 32]);
    let mut chain = Secret32([0; 32]);
    root.0.copy_from_slice(&out[..32]);
    chain.0.copy_from_slice(&out[32..]);
    (root, chain)
}

/// Double Ratchet §5.2 KDF_CK: (message key, next chain key), keyed BLAKE3 on 0x01 and 0x02.
pub(crate) fn kdf_ck(chain_key: &Secret32) -> (Secret32, Secret32) {
    let message_key = blake3::keyed_hash(&chain_key.0, &CHAIN_MESSAGE_KEY_INPUT);
    let next_chain_key = blake3::keyed_hash(&chain_key.0, &CHAIN_NEXT_KEY_INPUT);
    (
        Secret32(*message_key.as_bytes()),
        Secret32(*next_chain_key.as_bytes()),
    )
}

/// A message key expanded into the AEAD's key and nonce. The nonce is derived (not random)
/// because every message key is used exactly once.
pub(crate) struct AeadKey {
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) nonce: [u8; 12],
}

/// `derive_key(MESSAGE_KEY_CONTEXT, mk)` read as 44 bytes: key ‖ nonce.
pub(crate) fn expand_message_key(message_key: &Secret32) -> AeadKey {
    let mut out = Zeroizing::new([0u8; 44]);
    blake3::Hasher::new_derive_key(MESSAGE_KEY_CONTEXT)
        .update(&message_key.0)
        .finalize_xof()
        .fill(&mut out[..]);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out[..32]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&out[32..]);
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
    let cipher = ChaCha20Poly1305::new(&Key::from(*key.key));
    let tag = cipher
        .encrypt_inout_detached(
            &Nonce::from(key.nonce),
            aad,
            (&mut buffer[body_start..]).into(),
        )
        // Fails only beyond 2^38 bytes; callers bound the plaintext far below that.
        .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 refused a bounded plaintext"));
    buffer.extend_from_slice(&tag);
}

/// ChaCha20-Poly1305 open of ciphertext ‖ tag; `None` on authentication failure (or if shorter
/// than a tag).
pub(crate) fn open(key: &AeadKey, aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    let (body, tag) = ciphertext.split_last_chunk::<16>()?;
    let mut plaintext = body.to_vec();
    let cipher = ChaCha20Poly1305::new(&Key::from(*key.key));
    // The crate checks the tag before decrypting, so a forgery leaves `plaintext` as ciphertext.
    cipher
        .decrypt_inout_detached(
            &Nonce::from(key.nonce),
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
        let dh1 = [1u8; 32];
        let dh2 = [2u8; 32];
        let dh3 = [3u8; 32];
        let sk = x3dh_shared_secret(&[&dh1, &dh2, &dh3]);
        let mut input = vec![0xFFu8; 32];
        input.extend_from_slice(&[1u8; 32]);
        input.extend_from_slice(&[2u8; 32]);
        input.extend_from_slice(&[3u8; 32]);
        assert_eq!(input.len(), 128);
        assert_eq!(sk.0, blake3::derive_key(X3DH_CONTEXT, &input));
        assert_eq!(
            hex(&sk.0),
            "7f55eddd3f94c913c60bafeae6d95a0fca7ac8ea35b69a7490d895dfd2068bb0"
        );
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
