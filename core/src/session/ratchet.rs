//! The Double Ratchet state machine (Double Ratchet §3): chains, skipped keys, transactional
//! decryption.
//!
//! Decryption is split in two: [`RatchetState::plan`] reads the state and computes everything a
//! message needs (skipped keys, a possible DH ratchet step, the message key) into a [`Plan`];
//! the caller authenticates the ciphertext with the plan's key and only then calls
//! [`RatchetState::commit`]. A message that fails authentication therefore changes nothing
//! (§3.5: on an authentication failure the changes to the state are discarded), without cloning
//! the state on the hot path.
//!
//! One deliberate variation on §3.5, the one §6.5 describes: after receiving a new ratchet key we
//! run only the receiving half of the DH ratchet and generate our next ratchet key lazily, at the
//! next send. The root key sequence and every message are identical to the eager version;
//! decryption needs no entropy, and the old ratchet private key is erased as soon as the
//! receiving half is done.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::error::{DecryptError, EncryptError};
use super::kdf;
use super::keys::{draw_secret, Entropy, Secret32};
use super::message::RatchetHeader;

/// Most message keys one message may make us skip in one chain (§3.5 MAX_SKIP, denial of
/// service).
/// libsignal's value: deriving 25,000 keys costs a few milliseconds.
pub const CHAIN_JUMP_MAX: u32 = 25_000;
/// Most skipped message keys stored per receiving chain; the oldest are evicted first
/// (libsignal's value).
pub const SKIPPED_KEYS_PER_CHAIN_MAX: usize = 2_000;
/// Most skipped message keys stored in a session across all chains; the oldest are evicted
/// first. Bounds the persisted state to roughly 4,000 × 44 bytes.
pub const SKIPPED_KEYS_MAX: usize = 4_000;
/// A skipped key expires once this many further messages have been decrypted in the session
/// (§6.4: evict by message count, never by time, so the state machine reads no clock).
pub const SKIPPED_KEY_AGE_MESSAGES_MAX: u64 = 5_000;
/// Previous receiving chains kept for messages that cross a ratchet step (libsignal's value).
pub const PREVIOUS_RECEIVING_CHAINS_MAX: usize = 5;
/// Ratchet keys of dropped chains remembered so that late duplicates are reported as such
/// instead of triggering a DH computation.
pub const RETIRED_RATCHET_KEYS_MAX: usize = 64;

const _: () = assert!(SKIPPED_KEYS_PER_CHAIN_MAX <= SKIPPED_KEYS_MAX);
const _: () = assert!(SKIPPED_KEYS_PER_CHAIN_MAX as u64 <= CHAIN_JUMP_MAX as u64);

/// An X25519 ratchet key pair (DHs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RatchetKeyPair {
    pub(crate) secret: Secret32,
    pub(crate) public: [u8; 32],
}

impl RatchetKeyPair {
    pub(crate) fn from_secret(secret: Secret32) -> Self {
        let public = PublicKey::from(&StaticSecret::from(secret.0)).to_bytes();
        Self { secret, public }
    }

    /// DH with a peer key; `None` if the output is all zero (low-order peer key).
    fn dh(&self, public: &[u8; 32]) -> Option<Secret32> {
        let shared = StaticSecret::from(self.secret.0).diffie_hellman(&PublicKey::from(*public));
        shared
            .was_contributory()
            .then(|| Secret32(shared.to_bytes()))
    }
}

/// CKs and Ns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SendingChain {
    pub(crate) chain_key: Secret32,
    pub(crate) next_number: u32,
}

/// A skipped message key and when it was stored (in decrypted-message count).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SkippedKey {
    pub(crate) key: Secret32,
    pub(crate) stored_at: u64,
}

/// A receiving chain: the current one keeps its chain key; previous ones keep only their
/// skipped keys (their chain keys are erased, forward secrecy §2.2).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ReceivingChain {
    pub(crate) ratchet_key: [u8; 32],
    pub(crate) chain_key: Option<Secret32>,
    pub(crate) next_number: u32,
    /// MKSKIPPED for this chain (§3.2), by message number.
    pub(crate) skipped: BTreeMap<u32, SkippedKey>,
}

/// The whole Double Ratchet state (§3.2), serialized as part of the session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RatchetState {
    /// RK.
    pub(crate) root_key: Secret32,
    /// DHs. `None` between receiving a new remote ratchet key and our next send.
    pub(crate) local_ratchet: Option<RatchetKeyPair>,
    /// CKs, Ns. Present exactly when `local_ratchet` is (outside `Session::accept`).
    pub(crate) sending: Option<SendingChain>,
    /// PN for our next sending chain.
    pub(crate) previous_sending_length: u32,
    /// DHr.
    pub(crate) remote_ratchet_key: Option<[u8; 32]>,
    /// CKr, Nr and the current chain's skipped keys.
    pub(crate) receiving: Option<ReceivingChain>,
    /// Older receiving chains, oldest first, at most [`PREVIOUS_RECEIVING_CHAINS_MAX`].
    pub(crate) previous_receiving: VecDeque<ReceivingChain>,
    /// Ratchet keys of dropped chains, oldest first, at most [`RETIRED_RATCHET_KEYS_MAX`].
    pub(crate) retired_ratchet_keys: VecDeque<[u8; 32]>,
    /// Messages decrypted so far: the clock of skipped-key expiry.
    pub(crate) messages_received_total: u64,
}

/// Where a stored skipped key lives.
#[derive(Debug, Clone, Copy)]
enum ChainSlot {
    Current,
    Previous(usize),
}

#[derive(Debug)]
enum PlanKind {
    /// The key is a stored skipped key: remove it.
    Stored { slot: ChainSlot, number: u32 },
    /// Advance the current receiving chain.
    Advance {
        skipped: Vec<(u32, Secret32)>,
        chain_key: Secret32,
        next_number: u32,
    },
    /// DH ratchet step (§3.5 DHRatchet), receiving half.
    Step {
        old_chain_skipped: Vec<(u32, Secret32)>,
        root_key: Secret32,
        new_chain_skipped: Vec<(u32, Secret32)>,
        ratchet_key: [u8; 32],
        chain_key: Secret32,
        next_number: u32,
    },
}

/// Everything decrypting one message would change, computed without changing anything.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The message key to try.
    pub(crate) message_key: Secret32,
    kind: PlanKind,
}

/// Derive the keys of messages `from..until` of a chain whose key at `from` is `chain_key`.
/// Returns the skipped keys worth storing (only the last [`SKIPPED_KEYS_PER_CHAIN_MAX`]; older
/// ones would be evicted at once) and the chain key at `until`. §3.5 SkipMessageKeys.
fn skip(chain_key: &Secret32, from: u32, until: u32) -> (Vec<(u32, Secret32)>, Secret32) {
    assert!(
        until >= from && until - from <= CHAIN_JUMP_MAX,
        "skip range {from}..{until} not checked against CHAIN_JUMP_MAX"
    );
    let keep_from = until
        .saturating_sub(SKIPPED_KEYS_PER_CHAIN_MAX as u32)
        .max(from);
    let mut skipped = Vec::with_capacity((until - keep_from) as usize);
    let mut chain_key = chain_key.clone();
    for number in from..until {
        let (message_key, next) = kdf::kdf_ck(&chain_key);
        if number >= keep_from {
            skipped.push((number, message_key));
        }
        chain_key = next;
    }
    (skipped, chain_key)
}

fn check_jump(from: u32, until: u32) -> Result<(), DecryptError> {
    let skipped = u64::from(until).saturating_sub(u64::from(from));
    if skipped > u64::from(CHAIN_JUMP_MAX) {
        return Err(DecryptError::TooManySkipped { skipped });
    }
    Ok(())
}

/// A chain advanced to one message: what [`advance`] computes.
struct Advanced {
    skipped: Vec<(u32, Secret32)>,
    message_key: Secret32,
    chain_key: Secret32,
    next_number: u32,
}

/// Advance a chain whose key at `next_number` is `chain_key` to message `number`.
fn advance(chain_key: &Secret32, next_number: u32, number: u32) -> Result<Advanced, DecryptError> {
    check_jump(next_number, number)?;
    // u32::MAX is never sent (EncryptError::ChainExhausted), so it cannot be a valid number.
    let after = number.checked_add(1).ok_or(DecryptError::TooManySkipped {
        skipped: u64::from(u32::MAX),
    })?;
    let (skipped, at_number) = skip(chain_key, next_number, number);
    let (message_key, chain_key) = kdf::kdf_ck(&at_number);
    Ok(Advanced {
        skipped,
        message_key,
        chain_key,
        next_number: after,
    })
}

impl RatchetState {
    /// Alice's state after X3DH (§3.3 RatchetInitAlice): her first sending chain comes from
    /// DH(her ratchet key, Bob's signed prekey).
    pub(crate) fn initiator(
        shared_secret: &Secret32,
        remote_signed_prekey: &[u8; 32],
        ratchet_secret: Secret32,
    ) -> Option<Self> {
        let local = RatchetKeyPair::from_secret(ratchet_secret);
        let dh = local.dh(remote_signed_prekey)?;
        let (root_key, chain_key) = kdf::kdf_rk(shared_secret, &dh.0);
        Some(Self {
            root_key,
            local_ratchet: Some(local),
            sending: Some(SendingChain {
                chain_key,
                next_number: 0,
            }),
            previous_sending_length: 0,
            remote_ratchet_key: Some(*remote_signed_prekey),
            receiving: None,
            previous_receiving: VecDeque::new(),
            retired_ratchet_keys: VecDeque::new(),
            messages_received_total: 0,
        })
    }

    /// Bob's state after X3DH (§3.3 RatchetInitBob): his signed prekey is his first ratchet key;
    /// the first message he receives performs the first step.
    pub(crate) fn responder(shared_secret: &Secret32, signed_prekey_secret: Secret32) -> Self {
        Self {
            root_key: shared_secret.clone(),
            local_ratchet: Some(RatchetKeyPair::from_secret(signed_prekey_secret)),
            sending: None,
            previous_sending_length: 0,
            remote_ratchet_key: None,
            receiving: None,
            previous_receiving: VecDeque::new(),
            retired_ratchet_keys: VecDeque::new(),
            messages_received_total: 0,
        }
    }

    /// The header and message key for the next message (§3.4 RatchetEncrypt), completing a
    /// pending DH ratchet step with a fresh key first. Mutates the state: the caller must persist
    /// it before the message leaves (no message key may ever be used twice).
    pub(crate) fn next_sending_key(
        &mut self,
        entropy: &mut dyn Entropy,
    ) -> Result<(RatchetHeader, Secret32), EncryptError> {
        if let Some(sending) = &self.sending {
            if sending.next_number == u32::MAX {
                return Err(EncryptError::ChainExhausted);
            }
        } else {
            // Sending half of the DH ratchet step (§3.5), deferred to here.
            let remote = self
                .remote_ratchet_key
                .expect("no sending chain and no remote ratchet key: state invariant broken");
            let local = RatchetKeyPair::from_secret(draw_secret(entropy));
            // The remote key passed the contributory check on receipt, and whether X25519 with a
            // clamped scalar yields zero depends only on the point.
            let dh = local
                .dh(&remote)
                .expect("remote ratchet key was validated as contributory on receipt");
            let (root_key, chain_key) = kdf::kdf_rk(&self.root_key, &dh.0);
            self.root_key = root_key;
            self.local_ratchet = Some(local);
            self.sending = Some(SendingChain {
                chain_key,
                next_number: 0,
            });
        }
        let local = self
            .local_ratchet
            .as_ref()
            .expect("sending chain without ratchet key");
        let sending = self.sending.as_mut().expect("sending chain just ensured");
        let (message_key, next_chain_key) = kdf::kdf_ck(&sending.chain_key);
        let header = RatchetHeader {
            ratchet_key: local.public,
            previous_chain_length: self.previous_sending_length,
            message_number: sending.next_number,
        };
        sending.chain_key = next_chain_key;
        sending.next_number += 1;
        Ok((header, message_key))
    }

    /// Compute, without changing anything, what decrypting a message with `header` needs
    /// (§3.5 RatchetDecrypt up to the AEAD).
    pub(crate) fn plan(&self, header: &RatchetHeader) -> Result<Plan, DecryptError> {
        let number = header.message_number;
        if let Some(current) = self
            .receiving
            .as_ref()
            .filter(|c| c.ratchet_key == header.ratchet_key)
        {
            if number < current.next_number {
                return Self::stored(current, ChainSlot::Current, number);
            }
            let chain_key = current
                .chain_key
                .as_ref()
                .expect("current receiving chain without chain key");
            let Advanced {
                skipped,
                message_key,
                chain_key,
                next_number,
            } = advance(chain_key, current.next_number, number)?;
            return Ok(Plan {
                message_key,
                kind: PlanKind::Advance {
                    skipped,
                    chain_key,
                    next_number,
                },
            });
        }
        if let Some((index, chain)) = self
            .previous_receiving
            .iter()
            .enumerate()
            .find(|(_, c)| c.ratchet_key == header.ratchet_key)
        {
            return Self::stored(chain, ChainSlot::Previous(index), number);
        }
        if self.retired_ratchet_keys.contains(&header.ratchet_key) {
            return Err(DecryptError::DuplicateOrExpired);
        }
        if self.remote_ratchet_key == Some(header.ratchet_key) {
            // Our current DHr without a receiving chain (Alice before the first reply): the
            // peer never sends on its signed prekey.
            return Err(DecryptError::UnexpectedRatchetKey);
        }
        // A new ratchet key: the peer has seen our current ratchet key (§3.5 DHRatchet).
        let local = self
            .local_ratchet
            .as_ref()
            .ok_or(DecryptError::UnexpectedRatchetKey)?;
        let old_chain_skipped = match &self.receiving {
            Some(current) if header.previous_chain_length > current.next_number => {
                check_jump(current.next_number, header.previous_chain_length)?;
                let chain_key = current
                    .chain_key
                    .as_ref()
                    .expect("current receiving chain without chain key");
                skip(chain_key, current.next_number, header.previous_chain_length).0
            }
            _ => Vec::new(),
        };
        let dh = local
            .dh(&header.ratchet_key)
            .ok_or(DecryptError::NonContributoryKey)?;
        let (root_key, chain_key) = kdf::kdf_rk(&self.root_key, &dh.0);
        let Advanced {
            skipped: new_chain_skipped,
            message_key,
            chain_key,
            next_number,
        } = advance(&chain_key, 0, number)?;
        Ok(Plan {
            message_key,
            kind: PlanKind::Step {
                old_chain_skipped,
                root_key,
                new_chain_skipped,
                ratchet_key: header.ratchet_key,
                chain_key,
                next_number,
            },
        })
    }

    fn stored(chain: &ReceivingChain, slot: ChainSlot, number: u32) -> Result<Plan, DecryptError> {
        let stored = chain
            .skipped
            .get(&number)
            .ok_or(DecryptError::DuplicateOrExpired)?;
        Ok(Plan {
            message_key: stored.key.clone(),
            kind: PlanKind::Stored { slot, number },
        })
    }

    /// Apply a plan whose message authenticated (§3.5, the state changes only now), then enforce
    /// the skipped-key limits.
    pub(crate) fn commit(&mut self, plan: Plan) {
        let now = self.messages_received_total;
        let store = |chain: &mut ReceivingChain, keys: Vec<(u32, Secret32)>| {
            for (number, key) in keys {
                chain.skipped.insert(
                    number,
                    SkippedKey {
                        key,
                        stored_at: now,
                    },
                );
            }
        };
        match plan.kind {
            PlanKind::Stored { slot, number } => {
                let chain = match slot {
                    ChainSlot::Current => self.receiving.as_mut(),
                    ChainSlot::Previous(index) => self.previous_receiving.get_mut(index),
                }
                .expect("planned chain vanished before commit");
                let removed = chain.skipped.remove(&number);
                assert!(
                    removed.is_some(),
                    "planned skipped key vanished before commit"
                );
            }
            PlanKind::Advance {
                skipped,
                chain_key,
                next_number,
            } => {
                let current = self
                    .receiving
                    .as_mut()
                    .expect("planned advance without a receiving chain");
                store(current, skipped);
                current.chain_key = Some(chain_key);
                current.next_number = next_number;
            }
            PlanKind::Step {
                old_chain_skipped,
                root_key,
                new_chain_skipped,
                ratchet_key,
                chain_key,
                next_number,
            } => {
                if let Some(mut old) = self.receiving.take() {
                    store(&mut old, old_chain_skipped);
                    old.chain_key = None;
                    self.previous_receiving.push_back(old);
                    while self.previous_receiving.len() > PREVIOUS_RECEIVING_CHAINS_MAX {
                        let dropped = self
                            .previous_receiving
                            .pop_front()
                            .expect("length checked above");
                        self.retired_ratchet_keys.push_back(dropped.ratchet_key);
                    }
                    while self.retired_ratchet_keys.len() > RETIRED_RATCHET_KEYS_MAX {
                        self.retired_ratchet_keys.pop_front();
                    }
                }
                let mut chain = ReceivingChain {
                    ratchet_key,
                    chain_key: Some(chain_key),
                    next_number,
                    skipped: BTreeMap::new(),
                };
                store(&mut chain, new_chain_skipped);
                self.receiving = Some(chain);
                self.root_key = root_key;
                self.previous_sending_length = self.sending.as_ref().map_or(0, |s| s.next_number);
                self.remote_ratchet_key = Some(ratchet_key);
                // Erase DHs now; the sending half of the step happens at the next send.
                self.local_ratchet = None;
                self.sending = None;
            }
        }
        self.messages_received_total += 1;
        self.enforce_skipped_limits();
    }

    fn chains_mut(&mut self) -> impl Iterator<Item = &mut ReceivingChain> {
        self.previous_receiving
            .iter_mut()
            .chain(self.receiving.as_mut())
    }

    fn chains(&self) -> impl Iterator<Item = &ReceivingChain> {
        self.previous_receiving
            .iter()
            .chain(self.receiving.as_ref())
    }

    /// Total stored skipped keys.
    pub(crate) fn skipped_keys_total(&self) -> usize {
        self.chains().map(|c| c.skipped.len()).sum()
    }

    /// Evict by per-chain cap, by age (§6.4), then by total cap, oldest first each time.
    fn enforce_skipped_limits(&mut self) {
        let now = self.messages_received_total;
        for chain in self.chains_mut() {
            while chain.skipped.len() > SKIPPED_KEYS_PER_CHAIN_MAX {
                chain.skipped.pop_first();
            }
            // Within a chain keys are stored in number order, so the first is the oldest.
            while chain.skipped.first_key_value().is_some_and(|(_, k)| {
                now.saturating_sub(k.stored_at) > SKIPPED_KEY_AGE_MESSAGES_MAX
            }) {
                chain.skipped.pop_first();
            }
        }
        let mut total = self.skipped_keys_total();
        while total > SKIPPED_KEYS_MAX {
            // The oldest key overall is the oldest of some chain's first entry; ties go to the
            // older chain (iteration order), a stable choice.
            let oldest = self
                .chains_mut()
                .filter_map(|c| c.skipped.first_key_value().map(|(_, k)| k.stored_at))
                .min()
                .expect("total > 0 implies some chain has a key");
            let chain = self
                .chains_mut()
                .find(|c| {
                    c.skipped
                        .first_key_value()
                        .is_some_and(|(_, k)| k.stored_at == oldest)
                })
                .expect("the minimum came from some chain");
            chain.skipped.pop_first();
            total -= 1;
        }
    }

    /// Check the invariants a valid state keeps between operations; the error names the first
    /// broken one. Used after decoding untrusted bytes and after every step in tests.
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        if self.local_ratchet.is_some() != self.sending.is_some() {
            return Err("ratchet key pair and sending chain must come together");
        }
        if let Some(local) = &self.local_ratchet {
            let public = PublicKey::from(&StaticSecret::from(local.secret.0)).to_bytes();
            if public != local.public {
                return Err("ratchet public key does not match its secret");
            }
        }
        match &self.remote_ratchet_key {
            None => return Err("no remote ratchet key"),
            Some(remote) => {
                // Whether the output is zero depends only on the point (clamped scalars).
                let probe = RatchetKeyPair::from_secret(Secret32([0x42; 32]));
                if probe.dh(remote).is_none() {
                    return Err("remote ratchet key is a low-order point");
                }
            }
        }
        if self.sending.is_none() && self.receiving.is_none() {
            return Err("neither a sending nor a receiving chain");
        }
        if let Some(current) = &self.receiving {
            if current.chain_key.is_none() {
                return Err("current receiving chain without chain key");
            }
            if Some(current.ratchet_key) != self.remote_ratchet_key {
                return Err("current receiving chain is not on the remote ratchet key");
            }
        }
        if self.previous_receiving.len() > PREVIOUS_RECEIVING_CHAINS_MAX {
            return Err("too many previous receiving chains");
        }
        if self
            .previous_receiving
            .iter()
            .any(|c| c.chain_key.is_some())
        {
            return Err("previous receiving chain still holds a chain key");
        }
        if self.retired_ratchet_keys.len() > RETIRED_RATCHET_KEYS_MAX {
            return Err("too many retired ratchet keys");
        }
        for chain in self.chains() {
            if chain.skipped.len() > SKIPPED_KEYS_PER_CHAIN_MAX {
                return Err("too many skipped keys in one chain");
            }
            if chain
                .skipped
                .values()
                .any(|k| k.stored_at > self.messages_received_total)
            {
                return Err("skipped key stored in the future");
            }
        }
        if let Some(current) = &self.receiving {
            if current
                .skipped
                .range(current.next_number..)
                .next()
                .is_some()
            {
                return Err("skipped key at or beyond the chain's next number");
            }
        }
        if self.skipped_keys_total() > SKIPPED_KEYS_MAX {
            return Err("too many skipped keys");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (RatchetState, RatchetState) {
        let sk = Secret32([1; 32]);
        let bob_spk = Secret32([2; 32]);
        let bob_spk_public = RatchetKeyPair::from_secret(bob_spk.clone()).public;
        let alice = RatchetState::initiator(&sk, &bob_spk_public, Secret32([3; 32])).unwrap();
        let bob = RatchetState::responder(&sk, bob_spk);
        (alice, bob)
    }

    struct Fixed(u8);
    impl Entropy for Fixed {
        fn fill(&mut self, buf: &mut [u8]) {
            self.0 = self.0.wrapping_add(1);
            buf.fill(self.0);
        }
    }

    fn receive(state: &mut RatchetState, header: &RatchetHeader) -> Result<Secret32, DecryptError> {
        let plan = state.plan(header)?;
        let key = plan.message_key.clone();
        state.commit(plan);
        Ok(key)
    }

    #[test]
    fn keys_agree_across_steps_and_out_of_order() {
        let (mut alice, mut bob) = pair();
        let mut e = Fixed(10);
        let sent: Vec<_> = (0..3)
            .map(|_| alice.next_sending_key(&mut e).unwrap())
            .collect();
        // Deliver 2, 0, 1.
        for i in [2, 0, 1] {
            assert_eq!(receive(&mut bob, &sent[i].0).unwrap(), sent[i].1);
        }
        bob.check_invariants().unwrap();
        assert_eq!(
            receive(&mut bob, &sent[1].0).unwrap_err(),
            DecryptError::DuplicateOrExpired
        );
        let (h, k) = bob.next_sending_key(&mut e).unwrap();
        assert_eq!(h.previous_chain_length, 0);
        assert_eq!(receive(&mut alice, &h).unwrap(), k);
        let (h2, k2) = alice.next_sending_key(&mut e).unwrap();
        assert_eq!(h2.previous_chain_length, 3);
        assert_eq!(receive(&mut bob, &h2).unwrap(), k2);
        alice.check_invariants().unwrap();
        bob.check_invariants().unwrap();
    }

    #[test]
    fn jump_limit_is_enforced_without_state_change() {
        let (mut alice, mut bob) = pair();
        let mut e = Fixed(10);
        let (mut h, _) = alice.next_sending_key(&mut e).unwrap();
        h.message_number = CHAIN_JUMP_MAX + 1;
        assert_eq!(
            bob.plan(&h).unwrap_err(),
            DecryptError::TooManySkipped {
                skipped: u64::from(CHAIN_JUMP_MAX) + 1
            }
        );
        h.message_number = CHAIN_JUMP_MAX;
        let plan = bob.plan(&h).unwrap();
        bob.commit(plan);
        assert_eq!(bob.skipped_keys_total(), SKIPPED_KEYS_PER_CHAIN_MAX);
        bob.check_invariants().unwrap();
    }

    #[test]
    fn skipped_keys_expire_by_message_count() {
        let (mut alice, mut bob) = pair();
        let mut e = Fixed(10);
        let first = alice.next_sending_key(&mut e).unwrap();
        let second = alice.next_sending_key(&mut e).unwrap();
        receive(&mut bob, &second.0).unwrap();
        assert_eq!(bob.skipped_keys_total(), 1);
        for _ in 0..SKIPPED_KEY_AGE_MESSAGES_MAX {
            let (h, _) = alice.next_sending_key(&mut e).unwrap();
            receive(&mut bob, &h).unwrap();
        }
        assert_eq!(bob.skipped_keys_total(), 0);
        assert_eq!(
            receive(&mut bob, &first.0).unwrap_err(),
            DecryptError::DuplicateOrExpired
        );
    }
}
