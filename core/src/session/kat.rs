//! Known-answer-test access to the session's internals. **Not an API**: hidden from the docs,
//! used by `core/tests/session_vectors.rs`, the fuzz targets and the benchmark to expose
//! intermediate values (shared secrets, root and chain keys) and to drive the KDFs directly.

use super::error::{AcceptError, InitiateError};
use super::keys::{
    Entropy, IdentityKeyPair, OneTimePrekeyPair, PrekeyBundle, Secret32, SignedPrekeyPair,
};
use super::{kdf, Session};

pub use super::kdf::{ASSOCIATED_DATA_CONTEXT, MESSAGE_KEY_CONTEXT, X3DH_CONTEXT};

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

/// X3DH §2.2 KDF over the given DH outputs.
pub fn x3dh_shared_secret(dh_outputs: &[[u8; 32]]) -> [u8; 32] {
    let refs: Vec<&[u8; 32]> = dh_outputs.iter().collect();
    kdf::x3dh_shared_secret(&refs).0
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
    let key = kdf::expand_message_key(&Secret32(*message_key));
    (*key.key, key.nonce)
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
    /// SK.
    pub shared_secret: [u8; 32],
}

impl From<super::x3dh::Agreement> for X3dhTrace {
    fn from(a: super::x3dh::Agreement) -> Self {
        Self {
            dh_outputs: a.dh_outputs.iter().map(|d| d.0).collect(),
            shared_secret: a.shared_secret.0,
        }
    }
}

/// [`Session::initiate`] with explicit ephemeral and ratchet secrets, returning the X3DH trace.
pub fn initiate_with_secrets(
    local: &IdentityKeyPair,
    bundle: &PrekeyBundle,
    ephemeral_secret: [u8; 32],
    ratchet_secret: [u8; 32],
) -> Result<(Session, X3dhTrace), InitiateError> {
    Session::initiate_with_secrets(
        local,
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
        ad_digest: session.ad_digest,
    }
}
