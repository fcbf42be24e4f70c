//! Client connections on one replica: the login challenge, the user a connection is bound to, and
//! its presence subscriptions (with the reverse indexes pushes need: subscribers by subject for
//! presence, connections by user for mailbox pushes).

use crate::ids::{ConnId, UserId};
use std::collections::{BTreeMap, BTreeSet};

/// One client connection.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    /// The challenge the login must sign.
    pub(crate) nonce: [u8; 32],
    /// The user proved by login; bound until the connection closes.
    pub(crate) user: Option<UserId>,
    subscriptions: BTreeSet<UserId>,
}

impl Conn {
    pub(crate) fn new(nonce: [u8; 32]) -> Conn {
        Conn {
            nonce,
            user: None,
            subscriptions: BTreeSet::new(),
        }
    }
}

/// The connection table.
#[derive(Debug, Default)]
pub(crate) struct Conns {
    conns: BTreeMap<ConnId, Conn>,
    subscribers: BTreeMap<UserId, BTreeSet<ConnId>>,
    /// Logged-in connections by their user (a user may hold several).
    by_user: BTreeMap<UserId, BTreeSet<ConnId>>,
}

impl Conns {
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn get(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.get(&conn)
    }

    pub(crate) fn insert(&mut self, id: ConnId, conn: Conn) {
        assert!(self.conns.insert(id, conn).is_none(), "{id:?} is new");
    }

    pub(crate) fn login(&mut self, id: ConnId, user: UserId) {
        let conn = self
            .conns
            .get_mut(&id)
            .expect("logging in an open connection");
        assert!(conn.user.is_none(), "a connection is bound to one user");
        conn.user = Some(user);
        self.by_user.entry(user).or_default().insert(id);
    }

    pub(crate) fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        for subject in &conn.subscriptions {
            self.unindex(*subject, id);
        }
        if let Some(user) = conn.user {
            let set = self
                .by_user
                .get_mut(&user)
                .expect("logged-in connections are indexed");
            set.remove(&id);
            if set.is_empty() {
                self.by_user.remove(&user);
            }
        }
        Some(conn)
    }

    /// The connections logged in as `user`.
    pub(crate) fn of_user(&self, user: &UserId) -> Vec<ConnId> {
        self.by_user
            .get(user)
            .map_or_else(Vec::new, |set| set.iter().copied().collect())
    }

    /// Every user logged in on some connection.
    pub(crate) fn logged_in_users(&self) -> Vec<UserId> {
        self.by_user.keys().copied().collect()
    }

    /// Replaces the connection's subscriptions.
    pub(crate) fn subscribe(&mut self, id: ConnId, subjects: BTreeSet<UserId>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut conn.subscriptions, subjects.clone());
        for subject in old {
            self.unindex(subject, id);
        }
        for subject in subjects {
            self.subscribers.entry(subject).or_default().insert(id);
        }
    }

    fn unindex(&mut self, subject: UserId, id: ConnId) {
        if let Some(set) = self.subscribers.get_mut(&subject) {
            set.remove(&id);
            if set.is_empty() {
                self.subscribers.remove(&subject);
            }
        }
    }

    /// The logged-in connections subscribed to `subject`, with their users.
    pub(crate) fn subscribers(&self, subject: &UserId) -> Vec<(ConnId, UserId)> {
        self.subscribers.get(subject).map_or_else(Vec::new, |set| {
            set.iter()
                .filter_map(|c| Some((*c, self.conns.get(c)?.user?)))
                .collect()
        })
    }

    /// Every user someone subscribes to.
    pub(crate) fn subscribed_users(&self) -> Vec<UserId> {
        self.subscribers.keys().copied().collect()
    }

    pub(crate) fn check_invariants(&self, subscriptions_max: usize) {
        for (id, conn) in &self.conns {
            assert!(
                conn.subscriptions.len() <= subscriptions_max,
                "{id:?}: subscriptions bounded"
            );
            for subject in &conn.subscriptions {
                assert!(
                    self.subscribers
                        .get(subject)
                        .is_some_and(|s| s.contains(id)),
                    "{id:?}: subscription indexed"
                );
            }
        }
        for (user, set) in &self.by_user {
            assert!(!set.is_empty(), "no empty user sets");
            for id in set {
                assert!(
                    self.conns.get(id).is_some_and(|c| c.user == Some(*user)),
                    "{id:?}: user index backed by the login"
                );
            }
        }
        let logged_in = self.conns.values().filter(|c| c.user.is_some()).count();
        let indexed: usize = self.by_user.values().map(BTreeSet::len).sum();
        assert_eq!(logged_in, indexed, "every logged-in connection is indexed");
        for (subject, set) in &self.subscribers {
            assert!(!set.is_empty(), "no empty index sets");
            for id in set {
                assert!(
                    self.conns
                        .get(id)
                        .is_some_and(|c| c.subscriptions.contains(subject)),
                    "index entry backed by a subscription"
                );
            }
        }
    }
}
