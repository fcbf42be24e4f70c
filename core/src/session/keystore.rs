//! Sealing the user's private keys under a passphrase: Argon2id → XChaCha20-Poly1305.
//!
//! ```text
//! blob v1 = version u8 (= 1) ‖ kdf u8 (1 = Argon2id v0x13) ‖ memory KiB u32 ‖ iterations u32 ‖
//!           parallelism u32 ‖ salt 16 ‖ nonce 24 ‖ ciphertext ‖ tag 16
//! ```
//! The KDF parameters travel in the blob so they can be raised later without breaking old blobs,
//! and the whole header is the AEAD's associated data, so lowering them in a stored blob is
//! detected. Never BLAKE3 on a passphrase: a password needs a memory-hard KDF (RFC 9106).

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::error::{OpenError, SealError};
use super::keys::Entropy;

/// Version byte of the blob.
pub const KEYSTORE_VERSION: u8 = 1;
/// KDF id: Argon2id, version 0x13.
const KDF_ARGON2ID_V13: u8 = 1;
/// Salt length (the argon2 crate's recommendation).
pub const SALT_BYTES: usize = 16;
/// XChaCha20 nonce length; 192 bits are safe to draw at random.
pub const NONCE_BYTES: usize = 24;
/// Header length: version, kdf, three u32 parameters, salt, nonce.
pub const HEADER_BYTES: usize = 2 + 12 + SALT_BYTES + NONCE_BYTES;
/// Largest secret sealed: identity and prekey private keys are a few KiB.
pub const SECRET_BYTES_MAX: usize = 1024 * 1024;
/// Most memory a blob may ask for (1 GiB): a hostile blob must not exhaust the device.
pub const MEMORY_KIB_MAX: u32 = 1024 * 1024;
/// Most Argon2 passes a blob may ask for.
pub const ITERATIONS_MAX: u32 = 64;
/// Most Argon2 lanes a blob may ask for.
pub const PARALLELISM_MAX: u32 = 16;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB (Argon2 `m`).
    pub memory_kib: u32,
    /// Passes (Argon2 `t`).
    pub iterations: u32,
    /// Lanes (Argon2 `p`).
    pub parallelism: u32,
}

impl KdfParams {
    /// RFC 9106 §4's second recommended option (64 MiB, 3 passes) with one lane, since the core
    /// is single-threaded: about a quarter of a second on a phone.
    pub const RECOMMENDED: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// The cheapest parameters Argon2 accepts (8 KiB, 1 pass): **only for tests**, where the
    /// recommended ones would make a suite take minutes. Never use them for a real key store.
    pub const fn dangerous_test_params() -> Self {
        Self {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn argon2(&self) -> Option<Argon2<'static>> {
        let in_range = (1..=MEMORY_KIB_MAX).contains(&self.memory_kib)
            && (1..=ITERATIONS_MAX).contains(&self.iterations)
            && (1..=PARALLELISM_MAX).contains(&self.parallelism);
        if !in_range {
            return None;
        }
        let params =
            Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32)).ok()?;
        Some(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Seal `secret` under `passphrase` with the salt and nonce supplied by the caller (fresh random
/// bytes each time: reusing a nonce with the same passphrase and salt breaks confidentiality).
pub fn seal(
    passphrase: &[u8],
    secret: &[u8],
    params: KdfParams,
    salt: [u8; SALT_BYTES],
    nonce: [u8; NONCE_BYTES],
) -> Result<Vec<u8>, SealError> {
    if secret.len() > SECRET_BYTES_MAX {
        return Err(SealError::SecretTooLarge);
    }
    let argon2 = params.argon2().ok_or(SealError::ParamsOutOfRange)?;
    let mut header = Vec::with_capacity(HEADER_BYTES + secret.len() + 16);
    header.push(KEYSTORE_VERSION);
    header.push(KDF_ARGON2ID_V13);
    header.extend_from_slice(&params.memory_kib.to_be_bytes());
    header.extend_from_slice(&params.iterations.to_be_bytes());
    header.extend_from_slice(&params.parallelism.to_be_bytes());
    header.extend_from_slice(&salt);
    header.extend_from_slice(&nonce);
    let key = derive(&argon2, passphrase, &salt).ok_or(SealError::ParamsOutOfRange)?;
    let cipher = XChaCha20Poly1305::new(&Key::from(*key));
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: secret,
                aad: &header,
            },
        )
        .map_err(|_| SealError::SecretTooLarge)?;
    header.extend_from_slice(&ciphertext);
    Ok(header)
}

/// [`seal`] drawing the salt and nonce from `entropy`.
pub fn seal_with_entropy(
    passphrase: &[u8],
    secret: &[u8],
    params: KdfParams,
    entropy: &mut dyn Entropy,
) -> Result<Vec<u8>, SealError> {
    let mut salt = [0u8; SALT_BYTES];
    let mut nonce = [0u8; NONCE_BYTES];
    entropy.fill(&mut salt);
    entropy.fill(&mut nonce);
    seal(passphrase, secret, params, salt, nonce)
}

/// Open a blob made by [`seal`]. A wrong passphrase and a modified blob both give
/// [`OpenError::WrongPassphraseOrCorrupt`].
pub fn open(passphrase: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let version = *blob.first().ok_or(OpenError::Truncated)?;
    if version != KEYSTORE_VERSION {
        return Err(OpenError::UnsupportedVersion(version));
    }
    if blob.len() < HEADER_BYTES + 16 {
        return Err(OpenError::Truncated);
    }
    let (header, ciphertext) = blob.split_at(HEADER_BYTES);
    if header[1] != KDF_ARGON2ID_V13 {
        return Err(OpenError::UnknownKdf(header[1]));
    }
    let mut r = super::message::Reader::new(&header[2..]);
    let params = KdfParams {
        memory_kib: r.u32(),
        iterations: r.u32(),
        parallelism: r.u32(),
    };
    let argon2 = params.argon2().ok_or(OpenError::ParamsOutOfRange)?;
    let salt = &header[14..14 + SALT_BYTES];
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&header[14 + SALT_BYTES..]);
    let key = derive(&argon2, passphrase, salt).ok_or(OpenError::ParamsOutOfRange)?;
    let cipher = XChaCha20Poly1305::new(&Key::from(*key));
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: header,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| OpenError::WrongPassphraseOrCorrupt)
}

fn derive(argon2: &Argon2<'_>, passphrase: &[u8], salt: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    argon2
        .hash_password_into(passphrase, salt, &mut key[..])
        .ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: KdfParams = KdfParams::dangerous_test_params();

    #[test]
    fn round_trip() {
        let blob = seal(b"correct horse", b"secret keys", TEST, [1; 16], [2; 24]).unwrap();
        assert_eq!(&open(b"correct horse", &blob).unwrap()[..], b"secret keys");
    }

    #[test]
    fn wrong_passphrase_and_tampering_are_one_clear_error() {
        let blob = seal(b"correct horse", b"secret keys", TEST, [1; 16], [2; 24]).unwrap();
        assert_eq!(
            open(b"wrong horse", &blob).unwrap_err(),
            OpenError::WrongPassphraseOrCorrupt
        );
        // Every byte after the version/kdf/params is authenticated.
        for i in 14..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(b"correct horse", &bad).unwrap_err(),
                OpenError::WrongPassphraseOrCorrupt,
                "byte {i}"
            );
        }
        // Raising the iterations is authenticated too (the header is the AD).
        let mut bad = blob.clone();
        bad[9] = 2;
        assert_eq!(
            open(b"correct horse", &bad).unwrap_err(),
            OpenError::WrongPassphraseOrCorrupt
        );
    }

    #[test]
    fn hostile_headers_are_rejected_before_any_work() {
        let blob = seal(b"p", b"s", TEST, [1; 16], [2; 24]).unwrap();
        assert_eq!(open(b"p", &[]).unwrap_err(), OpenError::Truncated);
        assert_eq!(open(b"p", &blob[..20]).unwrap_err(), OpenError::Truncated);
        let mut bad = blob.clone();
        bad[0] = 9;
        assert_eq!(
            open(b"p", &bad).unwrap_err(),
            OpenError::UnsupportedVersion(9)
        );
        let mut bad = blob.clone();
        bad[1] = 9;
        assert_eq!(open(b"p", &bad).unwrap_err(), OpenError::UnknownKdf(9));
        let mut bad = blob.clone();
        bad[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(open(b"p", &bad).unwrap_err(), OpenError::ParamsOutOfRange);
        assert_eq!(
            seal(
                b"p",
                b"s",
                KdfParams {
                    iterations: 0,
                    ..TEST
                },
                [1; 16],
                [2; 24]
            )
            .unwrap_err(),
            SealError::ParamsOutOfRange
        );
    }
}
