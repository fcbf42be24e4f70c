//! Presence (README, "Presence"): heartbeats are soft state, only transitions are replicated.
//!
//! - Every replica holds a *lease* per user logged in on one of its connections, renewed by each
//!   heartbeat; it ends when the last connection closes or `lease` passes without a heartbeat.
//! - Every `report_interval` each replica tells the leader what changed (`PeerFrame::Presence`),
//!   and every `full_report_interval` (or when asked) everything, so a lost delta heals.
//! - The leader unions the replicas' views and, at most every `flush_interval` and one batch at a
//!   time, commits the differences from the directory as one `PresenceBatch` entry. It keeps the
//!   union up to date as reports arrive and compares with the directory only the users whose
//!   presence may have changed, so a flush costs O(changes), not O(users) (at 100,000 connected
//!   users the whole comparison at every flush took ~12 % of a core; `benches/directory.rs`).
//! - A replica whose reports stop for `view_stale` is taken as gone: its users go offline.
//! - A new leader waits `leader_grace` (one full report interval plus slack) before it commits any
//!   *offline* transition, so a leader change does not flip everyone offline.
//!
//! The bound on showing a user offline after their last heartbeat, in the worst case with one
//! leader change in between, is `lease + report_interval + leader_grace + flush_interval` plus
//! one commit round trip; with the defaults 30 + 1 + 12 + 1 = 44 s (about 32 s without a leader
//! change). [`PresenceConfig::offline_bound`] computes it and the scenarios check it.

use crate::directory::command::PRESENCE_BATCH_MAX;
use crate::directory::{Directory, Presence, PresenceBatch, PresenceChange};
use crate::ids::{LogIndex, NodeId, UserId};
use crate::time::{Instant, Now};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The most presence entries a leader proposes per flush: with the default flush interval, at
/// most 8 Raft entries per second and 2,048 transitions per second (a whole 100,000-user cluster
/// comes online in under a minute after a cold start).
pub const PRESENCE_ENTRIES_PER_FLUSH_MAX: usize = 8;

/// Presence timing. Defaults suit clients heartbeating every 10 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceConfig {
    /// A lease lasts this long after the last heartbeat (3 heartbeats of 10 s: one lost heartbeat
    /// never flips a user offline).
    pub lease: Duration,
    /// How often a replica reports changes to the leader.
    pub report_interval: Duration,
    /// How often a replica sends its whole view (heals lost deltas).
    pub full_report_interval: Duration,
    /// How often the leader commits a batch of transitions (at most).
    pub flush_interval: Duration,
    /// A replica silent this long is taken as gone (its users go offline).
    pub view_stale: Duration,
    /// A new leader commits no offline transition for this long.
    pub leader_grace: Duration,
    /// Leases a replica holds (one per logged-in user); a login beyond is refused presence (the
    /// user is served but shown offline) and counted.
    pub leases_max: usize,
}

impl Default for PresenceConfig {
    fn default() -> PresenceConfig {
        PresenceConfig {
            lease: Duration::from_secs(30),
            report_interval: Duration::from_secs(1),
            full_report_interval: Duration::from_secs(10),
            flush_interval: Duration::from_secs(1),
            view_stale: Duration::from_secs(5),
            leader_grace: Duration::from_secs(12),
            leases_max: 1_000_000,
        }
    }
}

impl PresenceConfig {
    /// The documented worst-case delay between a user's last heartbeat and the directory showing
    /// them offline, with one leader change in between (excluding the commit round trip).
    #[must_use]
    pub fn offline_bound(&self) -> Duration {
        self.lease + self.report_interval + self.leader_grace + self.flush_interval
    }
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    conns: u32,
    expires: Instant,
    last_heard_unix_ms: u64,
}

/// This replica's leases and the changes not yet reported.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    leases: BTreeMap<UserId, Lease>,
    by_expiry: BTreeSet<(Instant, UserId)>,
    came_online: BTreeSet<UserId>,
    went_offline: BTreeMap<UserId, u64>,
    pub(crate) refused: u64,
}

impl Leases {
    /// A connection of `user` logged in.
    pub(crate) fn login(&mut self, cfg: &PresenceConfig, user: UserId, now: Now) {
        if let Some(lease) = self.leases.get_mut(&user) {
            lease.conns += 1;
        } else if self.leases.len() >= cfg.leases_max {
            self.refused += 1;
            return;
        } else {
            self.leases.insert(
                user,
                Lease {
                    conns: 1,
                    expires: now.instant,
                    last_heard_unix_ms: now.unix_ms,
                },
            );
            self.by_expiry.insert((now.instant, user));
            self.went_offline.remove(&user);
            self.came_online.insert(user);
        }
        self.heartbeat(cfg, user, now);
    }

    /// A heartbeat (or any sign of life) from `user`. A heartbeat after the lease expired (the
    /// connection survived a long stall) starts a new one.
    pub(crate) fn heartbeat(&mut self, cfg: &PresenceConfig, user: UserId, now: Now) {
        let Some(lease) = self.leases.get_mut(&user) else {
            return;
        };
        self.by_expiry.remove(&(lease.expires, user));
        lease.expires = now.instant + cfg.lease;
        lease.last_heard_unix_ms = now.unix_ms;
        self.by_expiry.insert((lease.expires, user));
    }

    /// A connection of `user` closed.
    pub(crate) fn logout(&mut self, user: UserId) {
        let Some(lease) = self.leases.get_mut(&user) else {
            return;
        };
        lease.conns -= 1;
        if lease.conns == 0 {
            let lease = self.leases.remove(&user).expect("present");
            self.by_expiry.remove(&(lease.expires, user));
            self.end(user, lease.last_heard_unix_ms);
        }
    }

    fn end(&mut self, user: UserId, last_heard_unix_ms: u64) {
        if !self.came_online.remove(&user) {
            self.went_offline.insert(user, last_heard_unix_ms);
        }
    }

    /// Ends the leases whose time is up. A user whose connection is still open but silent is
    /// offline until its next heartbeat.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(at, user)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            self.by_expiry.pop_first();
            let lease = self.leases.remove(&user).expect("indexed lease exists");
            self.end(user, lease.last_heard_unix_ms);
        }
    }

    /// When the next lease ends.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|&(at, _)| at)
    }

    /// Whether `user` has a live lease here.
    pub(crate) fn is_live(&self, user: &UserId) -> bool {
        self.leases.contains_key(user)
    }

    /// Takes the changes since the last report.
    pub(crate) fn take_delta(&mut self) -> (Vec<UserId>, Vec<(UserId, u64)>) {
        let online = std::mem::take(&mut self.came_online).into_iter().collect();
        let offline = std::mem::take(&mut self.went_offline).into_iter().collect();
        (online, offline)
    }

    /// Everyone with a live lease (a full report), clearing the delta it supersedes.
    pub(crate) fn full(&mut self) -> Vec<UserId> {
        self.came_online.clear();
        self.leases.keys().copied().collect()
    }

    /// Live leases.
    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }

    pub(crate) fn check_invariants(&self) {
        assert_eq!(
            self.leases.len(),
            self.by_expiry.len(),
            "every lease is indexed once"
        );
        for (at, user) in &self.by_expiry {
            let lease = self.leases.get(user).expect("indexed lease exists");
            assert_eq!(lease.expires, *at, "index matches the lease");
            assert!(lease.conns > 0, "a lease has a connection");
        }
        for user in &self.came_online {
            assert!(
                !self.went_offline.contains_key(user),
                "a user is not both in one delta"
            );
        }
    }
}

/// What the leader made of a presence report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportTaken {
    /// Taken in order.
    Applied,
    /// Taken, but a delta before it was lost: ask for a full report.
    Gap,
    /// An old or repeated report: ignored.
    Stale,
}

#[derive(Debug)]
struct View {
    online: BTreeSet<UserId>,
    number: u64,
    last_report: Instant,
}

/// How often the leader compares every user of its union and every user online in the directory,
/// beyond the comparison when its grace period ends. Between those the leader looks only at the
/// users whose presence may have changed (their union membership moved, their committed presence
/// moved, or they registered), so a flush costs O(changes) rather than O(users); this pass is a
/// safety net.
pub const RECONCILE_ALL_INTERVAL: Duration = Duration::from_secs(60);

/// The leader's union of the replicas' views (exists only while leading).
#[derive(Debug)]
pub(crate) struct LeaderPresence {
    views: BTreeMap<NodeId, View>,
    /// Users online in at least one view, with the number of views: the union, kept up to date as
    /// reports arrive and views go stale.
    union: BTreeMap<UserId, u32>,
    /// Users to compare with the directory at the next flush: their union membership changed,
    /// their committed presence did, or they registered, since they were last compared.
    dirty: BTreeSet<UserId>,
    /// The directory's presence log has been read up to this applied index (and restore count).
    log_read: (LogIndex, u64),
    /// When every user is next compared (the first time when the grace period ends).
    next_reconcile_all: Instant,
    /// Compare every user at the next flush (a batch was lost, or the last pass was cut short).
    reconcile_all: bool,
    last_seen: BTreeMap<UserId, u64>,
    since: Instant,
    next_flush: Instant,
    /// The presence entries proposed and not yet applied or dropped (by sequence number).
    pub(crate) in_flight: BTreeSet<u64>,
}

/// `user` joined one more view.
fn join(union: &mut BTreeMap<UserId, u32>, dirty: &mut BTreeSet<UserId>, user: UserId) {
    let count = union.entry(user).or_insert(0);
    *count += 1;
    if *count == 1 {
        dirty.insert(user);
    }
}

/// `user` left one view.
fn leave(union: &mut BTreeMap<UserId, u32>, dirty: &mut BTreeSet<UserId>, user: UserId) {
    let count = union
        .get_mut(&user)
        .expect("a user in a view is in the union");
    *count -= 1;
    if *count == 0 {
        union.remove(&user);
        dirty.insert(user);
    }
}

impl LeaderPresence {
    /// A new leader's view; `applied` and `restores` say how far its directory is applied.
    pub(crate) fn new(
        cfg: &PresenceConfig,
        now: Instant,
        applied: LogIndex,
        restores: u64,
    ) -> LeaderPresence {
        LeaderPresence {
            views: BTreeMap::new(),
            union: BTreeMap::new(),
            dirty: BTreeSet::new(),
            log_read: (applied, restores),
            next_reconcile_all: now + cfg.leader_grace,
            reconcile_all: false,
            last_seen: BTreeMap::new(),
            since: now,
            next_flush: now,
            in_flight: BTreeSet::new(),
        }
    }

    /// Takes a report from `from` (itself included). Reports are numbered per replica; an older
    /// or repeated number is ignored (the network may duplicate and reorder), and only a delta
    /// that skips a number asks for a full report: answering duplicates with a resync would let a
    /// duplicating network multiply reports without bound.
    pub(crate) fn report(
        &mut self,
        from: NodeId,
        full: bool,
        number: u64,
        online: Vec<UserId>,
        offline: Vec<(UserId, u64)>,
        now: Instant,
    ) -> ReportTaken {
        let view = self.views.entry(from).or_insert_with(|| View {
            online: BTreeSet::new(),
            number: 0,
            last_report: now,
        });
        if number <= view.number && view.number != 0 {
            return ReportTaken::Stale;
        }
        // A delta is usable only if it follows the report taken last; otherwise ask for a full one.
        let follows = full || number == view.number + 1;
        view.number = number;
        view.last_report = now;
        let (union, dirty) = (&mut self.union, &mut self.dirty);
        if full {
            // Replaces the view: only the users that differ touch the union (a full report
            // arrives every few seconds and usually changes nothing).
            let mut new = online;
            new.sort_unstable();
            new.dedup();
            let mut changed = false;
            let mut old = view.online.iter().peekable();
            let mut fresh = new.iter().peekable();
            loop {
                match (old.peek(), fresh.peek()) {
                    (Some(a), Some(b)) if a == b => {
                        old.next();
                        fresh.next();
                    }
                    (Some(&&a), Some(&&b)) if a < b => {
                        leave(union, dirty, a);
                        changed = true;
                        old.next();
                    }
                    (Some(&&a), None) => {
                        leave(union, dirty, a);
                        changed = true;
                        old.next();
                    }
                    (_, Some(&&b)) => {
                        join(union, dirty, b);
                        changed = true;
                        fresh.next();
                    }
                    (None, None) => break,
                }
            }
            if changed {
                view.online = new.into_iter().collect();
            }
        } else {
            for user in online {
                if view.online.insert(user) {
                    join(union, dirty, user);
                }
            }
        }
        for (user, at) in offline {
            if view.online.remove(&user) {
                leave(union, dirty, user);
            }
            let seen = self.last_seen.entry(user).or_insert(at);
            *seen = (*seen).max(at);
        }
        if follows {
            ReportTaken::Applied
        } else {
            ReportTaken::Gap
        }
    }

    /// When the next batch may be proposed.
    pub(crate) fn next_flush(&self) -> Instant {
        self.next_flush
    }

    /// A presence entry was lost (dropped, or not proposed): its users are compared again, with
    /// everyone else, at the next flush.
    pub(crate) fn reconcile_all_soon(&mut self) {
        self.reconcile_all = true;
    }

    /// `user`'s record changed outside presence (it registered, perhaps again while connected):
    /// compare it at the next flush.
    pub(crate) fn touch(&mut self, user: UserId) {
        self.dirty.insert(user);
    }

    /// The transitions to commit now, if it is time and none is in flight: users online in some
    /// fresh view but offline in the directory, and (after the grace period) users online in the
    /// directory but in no fresh view. At most [`PRESENCE_ENTRIES_PER_FLUSH_MAX`] entries of
    /// [`PRESENCE_BATCH_MAX`] transitions; the rest wait for the next flush. `applied` is the
    /// directory's applied index.
    ///
    /// Only the users whose presence may have changed are compared (see `dirty`), except when
    /// the grace period ends, every [`RECONCILE_ALL_INTERVAL`], after a lost entry and when the
    /// directory's presence log no longer reaches back: then every user of the union and every
    /// user online in the directory is.
    pub(crate) fn batch(
        &mut self,
        cfg: &PresenceConfig,
        directory: &Directory,
        applied: LogIndex,
        now: Now,
    ) -> Vec<PresenceBatch> {
        if !self.in_flight.is_empty() || now.instant < self.next_flush {
            return Vec::new();
        }
        let changes_max = PRESENCE_BATCH_MAX * PRESENCE_ENTRIES_PER_FLUSH_MAX;
        self.next_flush = now.instant + cfg.flush_interval;
        let stale = cfg.view_stale;
        let mut gone_at = BTreeMap::new();
        let gone: Vec<NodeId> = self
            .views
            .iter()
            .filter(|(_, view)| now.instant.saturating_duration_since(view.last_report) >= stale)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let view = self.views.remove(&id).expect("listed above");
            for user in view.online {
                gone_at.insert(user, now.unix_ms);
                leave(&mut self.union, &mut self.dirty, user);
            }
        }
        // Committed presence that moved since the last flush (this leader's batches, or a
        // previous leader's applied late): those users are compared again.
        let (read_upto, restores) = self.log_read;
        match directory.presence_changes_since(read_upto, restores) {
            Some(changed) => self.dirty.extend(changed),
            None => self.reconcile_all = true,
        }
        self.log_read = (applied, directory.restores());
        let after_grace = now.instant.saturating_duration_since(self.since) >= cfg.leader_grace;
        let offline = |user: &UserId, last_seen: &BTreeMap<UserId, u64>| PresenceChange::Offline {
            last_seen_unix_ms: last_seen
                .get(user)
                .or(gone_at.get(user))
                .copied()
                .unwrap_or(now.unix_ms),
        };
        let mut changes = Vec::new();
        if self.reconcile_all || now.instant >= self.next_reconcile_all {
            self.reconcile_all = false;
            if now.instant >= self.next_reconcile_all {
                self.next_reconcile_all = now.instant + RECONCILE_ALL_INTERVAL;
            }
            for user in self.union.keys() {
                if changes.len() >= changes_max {
                    break;
                }
                if directory
                    .user(user)
                    .is_some_and(|r| !matches!(r.presence, Presence::Online { .. }))
                {
                    changes.push((*user, PresenceChange::Online));
                }
            }
            if after_grace {
                for user in directory.online_users() {
                    if changes.len() >= changes_max {
                        break;
                    }
                    if !self.union.contains_key(&user) {
                        changes.push((user, offline(&user, &self.last_seen)));
                    }
                }
            }
            if changes.len() >= changes_max {
                // Cut short: the next flush goes on comparing everyone.
                self.reconcile_all = true;
            } else {
                self.dirty.clear();
            }
        } else {
            while changes.len() < changes_max {
                let Some(user) = self.dirty.pop_first() else {
                    break;
                };
                // An unknown user has nothing to show (the leader hears of a registration:
                // `LeaderPresence::touch`).
                let Some(record) = directory.user(&user) else {
                    continue;
                };
                match (self.union.contains_key(&user), record.presence) {
                    (true, Presence::Offline { .. }) => {
                        changes.push((user, PresenceChange::Online));
                    }
                    // Before the grace period ends no one is taken offline; the comparison of
                    // everyone when it ends catches up.
                    (false, Presence::Online { .. }) if after_grace => {
                        changes.push((user, offline(&user, &self.last_seen)));
                    }
                    _ => {}
                }
            }
        }
        // last-seen times are only needed until the transition is committed.
        for (user, change) in &changes {
            if matches!(change, PresenceChange::Online) {
                self.last_seen.remove(user);
            }
        }
        if self.last_seen.len() > cfg.leases_max {
            self.last_seen.clear();
        }
        changes
            .chunks(PRESENCE_BATCH_MAX)
            .map(|chunk| PresenceBatch {
                changes: chunk.to_vec(),
            })
            .collect()
    }

    /// Asserts that the union is the union of the views.
    pub(crate) fn check_invariants(&self) {
        let mut counts: BTreeMap<UserId, u32> = BTreeMap::new();
        for view in self.views.values() {
            for user in &view.online {
                *counts.entry(*user).or_insert(0) += 1;
            }
        }
        assert_eq!(counts, self.union, "the union counts every view's users");
    }

    /// Users in the leader's union.
    #[cfg(test)]
    pub(crate) fn online_count(&self) -> usize {
        self.union.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Now {
        Now {
            instant: Instant::from_millis(ms),
            unix_ms: 1_000_000 + ms,
        }
    }

    #[test]
    fn a_lease_ends_on_last_logout_or_silence() {
        let cfg = PresenceConfig::default();
        let mut leases = Leases::default();
        let (a, b) = (UserId([1; 32]), UserId([2; 32]));
        leases.login(&cfg, a, at(0));
        leases.login(&cfg, a, at(10));
        leases.login(&cfg, b, at(0));
        assert_eq!(leases.take_delta(), (vec![a, b], vec![]));
        leases.logout(a);
        assert!(leases.is_live(&a), "one connection of a is left");
        leases.logout(a);
        assert!(!leases.is_live(&a));
        assert_eq!(leases.take_delta(), (vec![], vec![(a, 1_000_010)]));
        leases.heartbeat(&cfg, b, at(20_000));
        leases.expire(Instant::from_millis(49_999));
        assert!(leases.is_live(&b), "renewed at 20 s, lasts until 50 s");
        leases.expire(Instant::from_millis(50_000));
        assert!(!leases.is_live(&b));
        assert_eq!(leases.take_delta(), (vec![], vec![(b, 1_020_000)]));
        leases.check_invariants();
    }

    #[test]
    fn an_online_then_offline_within_one_report_reports_nothing() {
        let cfg = PresenceConfig::default();
        let mut leases = Leases::default();
        let a = UserId([1; 32]);
        leases.login(&cfg, a, at(0));
        leases.logout(a);
        assert_eq!(leases.take_delta(), (vec![], vec![]));
    }

    #[test]
    fn reports_are_ordered_and_gaps_ask_for_a_full_one() {
        let mut leader =
            LeaderPresence::new(&PresenceConfig::default(), Instant::ZERO, LogIndex(0), 0);
        let a = UserId([1; 32]);
        let now = Instant::ZERO;
        let r = |l: &mut LeaderPresence, full, n, on: Vec<UserId>, off| {
            l.report(NodeId(2), full, n, on, off, now)
        };
        assert_eq!(
            r(&mut leader, true, 1, vec![a], vec![]),
            ReportTaken::Applied
        );
        assert_eq!(
            r(&mut leader, false, 1, vec![], vec![(a, 5)]),
            ReportTaken::Stale,
            "a repeat is ignored, and asks for nothing"
        );
        assert_eq!(leader.online_count(), 1);
        assert_eq!(
            r(&mut leader, false, 3, vec![], vec![]),
            ReportTaken::Gap,
            "2 was lost"
        );
        assert_eq!(
            r(&mut leader, false, 4, vec![], vec![(a, 9)]),
            ReportTaken::Applied
        );
        assert_eq!(leader.online_count(), 0);
    }
}
