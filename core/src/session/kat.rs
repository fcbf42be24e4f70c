//! Known-answer-test access to the session's internals. **Not an API**: hidden from the docs,
//! used by `core/tests/session_vectors.rs`, the fuzz targets and the benchmark to expose
//! intermediate values (shared secrets, root and chain keys) and to drive the KDFs directly.

use zeroize::Zeroizing;

use super::error::{AcceptError, InitiateError};
use super::keys::{
    Entropy, IdentityKeyPair, OneTimePrekeyPair, PrekeyBundle, Secret32, SignedPrekeyPair,
};
use super::{kdf, keys, safety, Session};
use crate::ids::UserId;

pub use super::kdf::{ASSOCIATED_DATA_CONTEXT, MESSAGE_KEY_CONTEXT, X3DH_CONTEXT};
pub use super::safety::{SAFETY_NUMBER_ITERATIONS, SAFETY_NUMBER_VERSION};

/// X3DH §2.2 F, prepended to the DH outputs in the X3DH KDF input.
pub const X3DH_F: [u8; 32] = kdf::X3DH_F;
/// First byte of the X3DH associated data.
pub const ASSOCIATED_DATA_VERSION: u8 = kdf::ASSOCIATED_DATA_VERSION;
/// KDF_CK input for the message key.
pub const CHAIN_MESSAGE_KEY_INPUT: [u8; 1] = kdf::CHAIN_MESSAGE_KEY_INPUT;
/// KDF_CK input for the next chain key.
pub const CHAIN_NEXT_KEY_INPUT: [u8; 1] = kdf::CHAIN_NEXT_KEY_INPUT;
/// Prefix of the message the signed prekey signature covers.
pub const SIGNED_PREKEY_DOMAIN: &[u8] = keys::SIGNED_PREKEY_DOMAIN;
/// Prefix of the message the identity binding signature covers.
pub const IDENTITY_BINDING_DOMAIN: &[u8] = keys::IDENTITY_BINDING_DOMAIN;
/// Derivation context of the safety number hash.
pub const SAFETY_NUMBER_CONTEXT: &str = safety::SAFETY_NUMBER_CONTEXT;

/// Deterministic entropy: the BLAKE3 XOF of a seed. For tests, fuzzing, benches and simulation
/// only; production reads the OS source in the runtime.
#[derive(Debug, Clone)]
pub struct XofEntropy {
    reader: blake3::OutputReader,
}

impl XofEntropy {
    /// A stream determined by `seed`.
    pub fn from_seed(seed: &[u8]) -> Self {
        let reader = blake3::Hasher::new_derive_key("Paloma 2026-11-22 test entropy v1")
            .update(seed)
            .finalize_xof();
        Self { reader }
    }
}

impl Entropy for XofEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        self.reader.fill(buf);
    }
}

/// X3DH §2.2 KDF over the given DH outputs (F is prepended here).
pub fn x3dh_shared_secret(dh_outputs: &[[u8; 32]]) -> [u8; 32] {
    let mut input = Zeroizing::new(Vec::with_capacity(32 * (1 + dh_outputs.len())));
    input.extend_from_slice(&kdf::X3DH_F);
    for dh in dh_outputs {
        input.extend_from_slice(dh);
    }
    kdf::x3dh_shared_secret(&input).0
}

/// KDF_RK → (root key, chain key).
pub fn kdf_rk(root_key: &[u8; 32], dh_output: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let (root, chain) = kdf::kdf_rk(&Secret32(*root_key), dh_output);
    (root.0, chain.0)
}

/// KDF_CK → (message key, next chain key).
pub fn kdf_ck(chain_key: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let (message, next) = kdf::kdf_ck(&Secret32(*chain_key));
    (message.0, next.0)
}

/// Message key → (AEAD key, nonce).
pub fn expand_message_key(message_key: &[u8; 32]) -> ([u8; 32], [u8; 12]) {
    let expanded = kdf::expand_message_key(&Secret32(*message_key));
    let mut key = [0u8; 32];
    key.copy_from_slice(expanded.key());
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&expanded.nonce());
    (key, nonce)
}

/// The X3DH associated data, initiator first.
pub fn associated_data(
    initiator: &super::IdentityPublic,
    responder: &super::IdentityPublic,
) -> Vec<u8> {
    kdf::associated_data(initiator, responder)
}

/// The digest of the associated data bound into each AEAD call.
pub fn associated_data_digest(ad: &[u8]) -> [u8; 32] {
    kdf::associated_data_digest(ad)
}

/// What X3DH computed.
#[derive(Debug, Clone)]
pub struct X3dhTrace {
    /// DH1, DH2, DH3 and, with a one-time prekey, DH4.
    pub dh_outputs: Vec<[u8; 32]>,
    /// The KDF input F ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4].
    pub key_material: Vec<u8>,
    /// SK.
    pub shared_secret: [u8; 32],
}

impl From<super::x3dh::Agreement> for X3dhTrace {
    fn from(a: super::x3dh::Agreement) -> Self {
        Self {
            dh_outputs: a
                .key_material
                .dh_outputs()
                .map(|d| {
                    let mut out = [0u8; 32];
                    out.copy_from_slice(d);
                    out
                })
                .collect(),
            key_material: a.key_material.as_bytes().to_vec(),
            shared_secret: a.shared_secret.0,
        }
    }
}

/// [`Session::initiate`] with explicit ephemeral and ratchet secrets, returning the X3DH trace.
pub fn initiate_with_secrets(
    local: &IdentityKeyPair,
    peer: UserId,
    bundle: &PrekeyBundle,
    ephemeral_secret: [u8; 32],
    ratchet_secret: [u8; 32],
) -> Result<(Session, X3dhTrace), InitiateError> {
    Session::initiate_with_secrets(
        local,
        peer,
        bundle,
        Secret32(ephemeral_secret),
        Secret32(ratchet_secret),
    )
    .map(|(s, a)| (s, a.into()))
}

/// [`Session::accept`] returning the X3DH trace too.
pub fn accept_with_trace(
    local: &IdentityKeyPair,
    signed_prekey: &SignedPrekeyPair,
    one_time_prekey: Option<&OneTimePrekeyPair>,
    message: &[u8],
) -> Result<(Session, Vec<u8>, X3dhTrace), AcceptError> {
    Session::accept_with_agreement(local, signed_prekey, one_time_prekey, message)
        .map(|(s, p, a)| (s, p, a.into()))
}

/// [`Session::encrypt`], also returning the message key it used.
pub fn encrypt_with_key(
    session: &mut Session,
    plaintext: &[u8],
    entropy: &mut dyn Entropy,
) -> Result<(Vec<u8>, [u8; 32]), super::EncryptError> {
    session
        .encrypt_traced(plaintext, entropy)
        .map(|(message, key)| (message, key.0))
}

/// The ratchet's keys at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// RK.
    pub root_key: [u8; 32],
    /// DHs (secret, public), if held.
    pub local_ratchet: Option<([u8; 32], [u8; 32])>,
    /// CKs and Ns.
    pub sending: Option<([u8; 32], u32)>,
    /// PN for the next sending chain.
    pub previous_sending_length: u32,
    /// DHr.
    pub remote_ratchet_key: Option<[u8; 32]>,
    /// CKr and Nr of the current receiving chain.
    pub receiving: Option<([u8; 32], u32)>,
    /// Stored skipped keys.
    pub skipped_keys_total: usize,
    /// MKSKIPPED: (chain's ratchet key, message number, message key), previous chains oldest
    /// first, then the current chain, each by message number.
    pub skipped_keys: Vec<([u8; 32], u32, [u8; 32])>,
    /// The AD digest bound into each AEAD call.
    pub ad_digest: [u8; 32],
}

/// Read the ratchet's keys.
pub fn snapshot(session: &Session) -> Snapshot {
    let r = &session.state.ratchet;
    Snapshot {
        root_key: r.root_key.0,
        local_ratchet: r.local_ratchet.as_ref().map(|k| (k.secret.0, k.public)),
        sending: r.sending.as_ref().map(|s| (s.chain_key.0, s.next_number)),
        previous_sending_length: r.previous_sending_length,
        remote_ratchet_key: r.remote_ratchet_key,
        receiving: r.receiving.as_ref().map(|c| {
            (
                c.chain_key
                    .as_ref()
                    .expect("current receiving chain has a chain key")
                    .0,
                c.next_number,
            )
        }),
        skipped_keys_total: r.skipped_keys_total(),
        skipped_keys: r
            .previous_receiving
            .iter()
            .chain(r.receiving.as_ref())
            .flat_map(|c| {
                c.skipped
                    .iter()
                    .map(|(number, k)| (c.ratchet_key, *number, k.key.0))
            })
            .collect(),
        ad_digest: session.ad_digest,
    }
}
