//! The client's prekeys (X3DH §2.4): the private halves of what it publishes. They are generated
//! from the seeded stream `DetRng::fork(seed, "client-keys")`, held here read-only for the session
//! layer, and (in a later issue) persisted by the runtime.

use crate::directory::command::ONE_TIME_PREKEYS_MAX;
use crate::directory::{OneTimePrekey, SignedPrekey};
use crate::rng::DetRng;
use crate::session::{IdentityKeyPair, OneTimePrekeyPair, PrekeyId, SignedPrekeyPair};
use std::collections::BTreeMap;

/// One-time prekeys a client holds private halves for: a full directory pool plus one full
/// publish in flight. Above it `publish_one_time_prekeys` is refused.
pub const ONE_TIME_PREKEYS_HELD_MAX: usize = 2 * ONE_TIME_PREKEYS_MAX;
/// One-time prekeys a registration publishes: a full pool, as Signal's first upload does.
pub const REGISTER_ONE_TIME_PREKEYS: usize = ONE_TIME_PREKEYS_MAX;

/// The signed prekey in use, the one it replaced (kept so initial messages sent against it while
/// a rotation propagated still open, X3DH §3.2), and the one-time prekeys.
#[derive(Debug)]
pub(crate) struct KeyRing {
    entropy: DetRng,
    signed: Option<SignedPrekeyPair>,
    previous: Option<SignedPrekeyPair>,
    one_time: BTreeMap<PrekeyId, OneTimePrekeyPair>,
    /// Prekey ids are never reused, so an initial message can name exactly one private key.
    next_id: u32,
}

impl KeyRing {
    pub(crate) fn new(seed: u64) -> KeyRing {
        KeyRing {
            entropy: DetRng::fork(seed, "client-keys"),
            signed: None,
            previous: None,
            one_time: BTreeMap::new(),
            next_id: 1,
        }
    }

    fn next_id(&mut self) -> PrekeyId {
        let id = PrekeyId(self.next_id);
        self.next_id = self.next_id.checked_add(1).expect("prekey id overflow");
        id
    }

    /// A new signed prekey, not yet in use (see [`KeyRing::install_signed`]).
    pub(crate) fn generate_signed(&mut self, identity: &IdentityKeyPair) -> SignedPrekeyPair {
        let id = self.next_id();
        SignedPrekeyPair::generate(identity, id, &mut self.entropy)
    }

    /// `n` new one-time prekeys, held at once (their private halves must exist before anyone can
    /// claim them); the caller checked the room.
    pub(crate) fn generate_one_time(&mut self, n: usize) -> Vec<OneTimePrekey> {
        assert!(
            self.one_time.len() + n <= ONE_TIME_PREKEYS_HELD_MAX,
            "prekey room unchecked"
        );
        (0..n)
            .map(|_| {
                let id = self.next_id();
                let pair = OneTimePrekeyPair::generate(id, &mut self.entropy);
                let public = OneTimePrekey {
                    id,
                    key: pair.public_key(),
                };
                self.one_time.insert(id, pair);
                public
            })
            .collect()
    }

    /// Room for `n` more one-time prekeys.
    pub(crate) fn has_room(&self, n: usize) -> bool {
        self.one_time.len() + n <= ONE_TIME_PREKEYS_HELD_MAX
    }

    /// Makes `pair` the signed prekey in use; the old one stays as the previous.
    pub(crate) fn install_signed(&mut self, pair: SignedPrekeyPair) {
        self.previous = self.signed.replace(pair);
    }

    /// Drops one-time prekeys the directory definitely refused.
    pub(crate) fn discard(&mut self, ids: &[PrekeyId]) {
        for id in ids {
            self.one_time.remove(id);
        }
    }

    /// Forgets every prekey (after deregistration).
    pub(crate) fn clear(&mut self) {
        self.signed = None;
        self.previous = None;
        self.one_time.clear();
    }

    pub(crate) fn signed(&self) -> Option<&SignedPrekeyPair> {
        self.signed.as_ref()
    }

    pub(crate) fn signed_with_id(&self, id: PrekeyId) -> Option<&SignedPrekeyPair> {
        [&self.signed, &self.previous]
            .into_iter()
            .flatten()
            .find(|p| p.id() == id)
    }

    pub(crate) fn one_time(&self, id: PrekeyId) -> Option<&OneTimePrekeyPair> {
        self.one_time.get(&id)
    }

    pub(crate) fn one_time_all(&self) -> impl Iterator<Item = &OneTimePrekeyPair> {
        self.one_time.values()
    }

    pub(crate) fn take_one_time(&mut self, id: PrekeyId) -> Option<OneTimePrekeyPair> {
        self.one_time.remove(&id)
    }

    pub(crate) fn one_time_len(&self) -> usize {
        self.one_time.len()
    }
}

/// The published form of a signed prekey pair.
pub(crate) fn published(pair: &SignedPrekeyPair) -> SignedPrekey {
    SignedPrekey {
        id: pair.id(),
        key: pair.public_key(),
        signature: pair.signature(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::PrekeyBundle;

    #[test]
    fn keys_are_reproducible_signed_and_never_reuse_ids() {
        let identity = IdentityKeyPair::generate(&mut DetRng::fork(1, "id"));
        let (mut a, mut b) = (KeyRing::new(9), KeyRing::new(9));
        let spk = a.generate_signed(&identity);
        assert_eq!(spk.public_key(), b.generate_signed(&identity).public_key());
        assert_eq!(PrekeyBundle::new(&identity, &spk, None).verify(), Ok(()));
        let otks = a.generate_one_time(3);
        assert_eq!(
            otks.iter().map(|k| k.id.0).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        a.install_signed(spk);
        let next = a.generate_signed(&identity);
        a.install_signed(next);
        assert!(
            a.signed_with_id(PrekeyId(1)).is_some(),
            "the previous one is kept"
        );
        a.discard(&[PrekeyId(2)]);
        assert!(a.one_time(PrekeyId(2)).is_none());
        assert!(a.take_one_time(PrekeyId(3)).is_some());
        assert_eq!(a.one_time_len(), 1);
        assert!(!a.has_room(ONE_TIME_PREKEYS_HELD_MAX));
    }
}
