//! What the client remembers of the directory: a bounded cache of looked-up users, and the
//! identity keys it pinned on first use. The two are kept apart on purpose: the cache is data (it
//! shows what the directory last said), the pins are trust (they move only when the user says so).

use crate::directory::{UserView, Username};
use crate::ids::UserId;
use crate::session::IdentityPublic;
use crate::time::Instant;
use std::collections::BTreeMap;

/// Usernames whose identity key the client pins. Pins are trust state, never evicted (evicting
/// one would let a changed key be pinned silently on its next lookup); a person's contacts number
/// in the hundreds, so 16,384 pins (about 1.6 MiB) is far beyond need. At the limit a new name is
/// not pinned and the refusal is counted.
pub const PINS_MAX: usize = 16_384;

/// Looked-up users by username, the oldest fetched evicted first.
#[derive(Debug)]
pub(crate) struct DirectoryCache {
    entries: BTreeMap<Username, Cached>,
    /// Eviction order: (fetched, insertion number) → username. The insertion number breaks ties
    /// between views fetched at the same instant, so the order is total and deterministic.
    by_age: BTreeMap<(Instant, u64), Username>,
    inserted: u64,
    entries_max: usize,
}

#[derive(Debug)]
struct Cached {
    view: UserView,
    age: (Instant, u64),
}

impl DirectoryCache {
    pub(crate) fn new(entries_max: usize) -> DirectoryCache {
        assert!(entries_max > 0, "the cache needs room for one entry");
        DirectoryCache {
            entries: BTreeMap::new(),
            by_age: BTreeMap::new(),
            inserted: 0,
            entries_max,
        }
    }

    pub(crate) fn view(&self, name: &Username) -> Option<&UserView> {
        self.entries.get(name).map(|c| &c.view)
    }

    /// Stores `view` fetched at `now`; returns whether an older entry was evicted for room.
    pub(crate) fn insert(&mut self, view: UserView, now: Instant) -> bool {
        self.remove(&view.username);
        let mut evicted = false;
        if self.entries.len() == self.entries_max {
            let (_, oldest) = self.by_age.pop_first().expect("a full cache has entries");
            self.entries.remove(&oldest);
            evicted = true;
        }
        self.inserted += 1;
        let age = (now, self.inserted);
        self.by_age.insert(age, view.username.clone());
        self.entries
            .insert(view.username.clone(), Cached { view, age });
        evicted
    }

    /// Forgets `name` (the directory says no one holds it now).
    pub(crate) fn remove(&mut self, name: &Username) {
        if let Some(old) = self.entries.remove(name) {
            self.by_age.remove(&old.age);
        }
    }

    /// A cached view by user id (a linear scan: only claims use it, and the cache is bounded).
    pub(crate) fn by_user(&self, user: UserId) -> Option<&UserView> {
        self.entries
            .values()
            .map(|c| &c.view)
            .find(|v| v.user == user)
    }

    pub(crate) fn check_invariants(&self) {
        assert!(
            self.entries.len() <= self.entries_max,
            "cache over its bound"
        );
        assert_eq!(
            self.entries.len(),
            self.by_age.len(),
            "cache index out of step"
        );
        for (age, name) in &self.by_age {
            assert_eq!(
                self.entries.get(name).map(|c| c.age),
                Some(*age),
                "cache age of {name}"
            );
        }
    }
}

/// Trust on first use: the first identity key seen for a username, and a key seen since that
/// differs and awaits the user's decision.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    pinned: BTreeMap<Username, IdentityPublic>,
    /// A different key the directory showed for a pinned name; it replaces the pin only through
    /// `accept`. Bounded by `pinned` (one per pinned name).
    changed: BTreeMap<Username, IdentityPublic>,
}

/// What a sighting of a key did to the pins.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sighting {
    /// The key matches the pin (or was just pinned).
    Trusted,
    /// The key differs from the pin; the pin stays.
    Changed {
        /// The pinned key.
        old: IdentityPublic,
    },
    /// The name was new but the pins are full: not pinned.
    Refused,
}

impl Pins {
    pub(crate) fn pinned(&self, name: &Username) -> Option<&IdentityPublic> {
        self.pinned.get(name)
    }

    /// The name pinned to `user`'s key, if any (a linear scan: claims only).
    pub(crate) fn name_of(&self, user: UserId) -> Option<&Username> {
        self.pinned
            .iter()
            .find(|(_, k)| k.user_id() == user)
            .map(|(n, _)| n)
    }

    /// Records that the directory showed `key` for `name`.
    pub(crate) fn see(&mut self, name: &Username, key: IdentityPublic) -> Sighting {
        match self.pinned.get(name) {
            Some(pin) if *pin == key => {
                // The directory is back to the pinned key: nothing awaits a decision any more.
                self.changed.remove(name);
                Sighting::Trusted
            }
            Some(pin) => {
                let old = *pin;
                self.changed.insert(name.clone(), key);
                Sighting::Changed { old }
            }
            None if self.pinned.len() >= PINS_MAX => Sighting::Refused,
            None => {
                self.pinned.insert(name.clone(), key);
                Sighting::Trusted
            }
        }
    }

    /// Moves the pin of `name` to the changed key last seen; returns it.
    pub(crate) fn accept(&mut self, name: &Username) -> Option<IdentityPublic> {
        let key = self.changed.remove(name)?;
        self.pinned.insert(name.clone(), key);
        Some(key)
    }

    pub(crate) fn check_invariants(&self) {
        assert!(self.pinned.len() <= PINS_MAX, "pins over their bound");
        for (name, key) in &self.changed {
            let pin = self.pinned.get(name);
            assert!(
                pin.is_some() && pin != Some(key),
                "a pending change of {name} without a different pin"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::SignedPrekey;
    use crate::session::PrekeyId;

    fn key(b: u8) -> IdentityPublic {
        IdentityPublic {
            signing_key: [b; 32],
            dh_key: [b; 32],
        }
    }

    fn view(name: &str, b: u8) -> UserView {
        UserView {
            user: key(b).user_id(),
            username: Username::parse(name).unwrap(),
            identity: key(b),
            signed_prekey: SignedPrekey {
                id: PrekeyId(1),
                key: [0; 32],
                signature: [0; 64],
            },
            addresses: vec![],
            registered_unix_ms: 0,
            counter: 0,
            one_time_prekeys_left: 0,
        }
    }

    #[test]
    fn cache_evicts_the_oldest_fetched() {
        let mut cache = DirectoryCache::new(2);
        assert!(!cache.insert(view("alice", 1), Instant::from_millis(5)));
        assert!(!cache.insert(view("bob", 2), Instant::from_millis(1)));
        // Refreshing alice keeps one entry for her.
        assert!(!cache.insert(view("alice", 1), Instant::from_millis(6)));
        assert!(cache.insert(view("carol", 3), Instant::from_millis(7)));
        let alice = Username::parse("alice").unwrap();
        assert!(cache.view(&Username::parse("bob").unwrap()).is_none());
        assert!(cache.view(&alice).is_some());
        assert_eq!(
            cache.by_user(key(3).user_id()).map(|v| v.username.as_str()),
            Some("carol")
        );
        cache.remove(&alice);
        assert_eq!(cache.entries.len(), 1);
        cache.check_invariants();
    }

    #[test]
    fn a_pin_moves_only_when_accepted() {
        let mut pins = Pins::default();
        let alice = Username::parse("alice").unwrap();
        assert_eq!(pins.see(&alice, key(1)), Sighting::Trusted);
        assert_eq!(pins.see(&alice, key(2)), Sighting::Changed { old: key(1) });
        assert_eq!(pins.pinned(&alice), Some(&key(1)));
        pins.check_invariants();
        assert_eq!(pins.accept(&alice), Some(key(2)));
        assert_eq!(pins.pinned(&alice), Some(&key(2)));
        assert_eq!(pins.accept(&alice), None);
        assert_eq!(pins.name_of(key(2).user_id()), Some(&alice));
        pins.check_invariants();
    }
}
