//! The in-memory view of the log: a base, the entries after it, the latest snapshot, and the
//! membership history needed to roll configuration back when entries are truncated.

use crate::ids::{LogId, LogIndex, Term};
use crate::raft::types::{Entry, Membership, Payload, Snapshot};
use std::collections::VecDeque;

/// The log of one replica.
#[derive(Debug, Clone)]
pub struct RaftLog {
    /// The entry just before `entries[0]` (only its id is kept).
    base: LogId,
    entries: VecDeque<Entry>,
    snapshot: Snapshot,
    /// Membership entries at indexes above the snapshot, in index order.
    configs: Vec<(LogIndex, Membership)>,
    /// Bytes held in `entries` (estimated), for compaction decisions.
    bytes: usize,
}

impl RaftLog {
    /// A log holding `snapshot`, then `entries` after `base`.
    #[must_use]
    pub fn new(snapshot: Snapshot, base: LogId, entries: Vec<Entry>) -> RaftLog {
        assert!(
            base.index <= snapshot.meta.last.index
                || entries.is_empty()
                || entries[0].index() == base.index.next(),
            "log base after snapshot without entries"
        );
        let mut log = RaftLog {
            base,
            entries: VecDeque::new(),
            snapshot,
            configs: Vec::new(),
            bytes: 0,
        };
        if log.base.index < log.snapshot.meta.last.index
            && !entries.iter().any(|e| e.id == log.snapshot.meta.last)
        {
            // The log does not reach the snapshot consistently: the snapshot supersedes it.
            log.base = log.snapshot.meta.last;
        } else {
            // Entries continue from the base (which may lie behind the snapshot), so they are pushed
            // here rather than through `append`, which continues from the snapshot on an empty log.
            for e in entries.into_iter().filter(|e| e.index() > base.index) {
                let prev = log.entries.back().map_or(log.base, |p| p.id);
                assert_eq!(
                    e.index(),
                    prev.index.next(),
                    "recovered log must be contiguous"
                );
                if let Payload::Membership(m) = &e.payload {
                    log.configs.push((e.index(), m.clone()));
                }
                log.bytes += e.size_bytes();
                log.entries.push_back(e);
            }
        }
        if log.base.index < log.snapshot.meta.last.index {
            // Entries before the snapshot stay only if the log reaches past it (Figure 13 step 6).
            let snap_last = log.snapshot.meta.last;
            if log.last_index() < snap_last.index
                || log.term(snap_last.index) != Some(snap_last.term)
            {
                log.entries.clear();
                log.configs.clear();
                log.bytes = 0;
                log.base = snap_last;
            }
        }
        let snap_index = log.snapshot.meta.last.index;
        log.configs.retain(|(i, _)| *i > snap_index);
        log
    }

    /// The last entry's id (the snapshot's or base's if the log is empty).
    #[must_use]
    pub fn last_id(&self) -> LogId {
        self.entries
            .back()
            .map_or_else(|| self.base.max_by_index(self.snapshot.meta.last), |e| e.id)
    }

    /// The last index.
    #[must_use]
    pub fn last_index(&self) -> LogIndex {
        self.last_id().index
    }

    /// The first index held in memory.
    #[must_use]
    pub fn first_index(&self) -> LogIndex {
        self.base.index.next()
    }

    /// The base (the id just before the first held entry).
    #[must_use]
    pub fn base(&self) -> LogId {
        self.base
    }

    /// The term at `index`, if known (held, the base, or the snapshot's last entry).
    #[must_use]
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.meta.last.index {
            return Some(self.snapshot.meta.last.term);
        }
        if index == self.base.index {
            return Some(self.base.term);
        }
        self.entry(index).map(Entry::term)
    }

    /// The entry at `index`, if held.
    #[must_use]
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.first_index().0)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Entries from `from` on, at most `count_max` of them and about `bytes_max` bytes (always at
    /// least one). `None` if `from` was compacted away.
    #[must_use]
    pub fn entries_from(
        &self,
        from: LogIndex,
        count_max: usize,
        bytes_max: usize,
    ) -> Option<Vec<Entry>> {
        if from < self.first_index() {
            return None;
        }
        let offset = usize::try_from(from.0 - self.first_index().0).ok()?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in self.entries.iter().skip(offset).take(count_max) {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    /// All held entries (for checkers and recovery tests).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Appends consecutive entries after the last one.
    pub fn append(&mut self, entries: Vec<Entry>) {
        for e in entries {
            assert_eq!(
                e.index(),
                self.last_index().next(),
                "log append must be contiguous"
            );
            assert!(
                e.term() >= self.last_id().term,
                "log terms must not decrease"
            );
            if let Payload::Membership(m) = &e.payload {
                self.configs.push((e.index(), m.clone()));
            }
            self.bytes += e.size_bytes();
            self.entries.push_back(e);
        }
    }

    /// Deletes every entry at or after `from`; membership rolls back with them.
    pub fn truncate_from(&mut self, from: LogIndex) {
        assert!(
            from > self.snapshot.meta.last.index,
            "never truncate into the snapshot"
        );
        while self.entries.back().is_some_and(|e| e.index() >= from) {
            let e = self.entries.pop_back().expect("checked");
            self.bytes -= e.size_bytes();
        }
        self.configs.retain(|(i, _)| *i < from);
    }

    /// Drops held entries up to `upto` (which must be at or before the snapshot).
    pub fn compact(&mut self, upto: LogIndex) {
        assert!(
            upto <= self.snapshot.meta.last.index,
            "compact only behind a snapshot"
        );
        if upto <= self.base.index {
            return;
        }
        let term = self.term(upto).expect("compaction point is held");
        while self.entries.front().is_some_and(|e| e.index() <= upto) {
            let e = self.entries.pop_front().expect("checked");
            self.bytes -= e.size_bytes();
        }
        self.base = LogId::new(term, upto);
    }

    /// Installs a snapshot: entries it covers go, unless the log holds its last entry, in which case
    /// the suffix stays (Raft Figure 13 step 6).
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        let last = snapshot.meta.last;
        assert!(
            last.index >= self.snapshot.meta.last.index,
            "snapshots only move forward"
        );
        if self.term(last.index) != Some(last.term) || self.last_index() < last.index {
            self.entries.clear();
            self.bytes = 0;
            self.configs.clear();
            self.base = last;
        }
        self.configs.retain(|(i, _)| *i > last.index);
        self.snapshot = snapshot;
    }

    /// Records a snapshot this node took itself at an index it holds.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        let last = snapshot.meta.last;
        assert_eq!(
            self.term(last.index),
            Some(last.term),
            "own snapshot must match the log"
        );
        self.install_snapshot(snapshot);
    }

    /// The latest snapshot.
    #[must_use]
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The effective membership: the latest config entry, committed or not (thesis §4.1).
    #[must_use]
    pub fn membership(&self) -> &Membership {
        self.configs
            .last()
            .map_or(&self.snapshot.meta.membership, |(_, m)| m)
    }

    /// The index of the entry that set the effective membership (the snapshot's for none).
    #[must_use]
    pub fn membership_index(&self) -> LogIndex {
        self.configs
            .last()
            .map_or(self.snapshot.meta.last.index, |(i, _)| *i)
    }

    /// The membership in effect at `index` (which must not be before the snapshot).
    #[must_use]
    pub fn membership_at(&self, index: LogIndex) -> &Membership {
        self.configs
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or(&self.snapshot.meta.membership, |(_, m)| m)
    }

    /// Approximate bytes of the held entries.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The number of entries held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entries are held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The fast back-tracking hint (Raft §5.3 end; etcd `findConflictByTerm`): the last index at or
    /// before `index` whose term is at most `term`, with that term. Never below the base.
    #[must_use]
    pub fn conflict_hint(&self, index: LogIndex, term: Term) -> LogId {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t <= term => return LogId::new(t, i),
                Some(_) if i > self.base.index => i = i.prev(),
                _ => return self.base.max_by_index(self.snapshot.meta.last),
            }
        }
    }
}

trait MaxByIndex {
    fn max_by_index(self, other: LogId) -> LogId;
}

impl MaxByIndex for LogId {
    fn max_by_index(self, other: LogId) -> LogId {
        if other.index > self.index {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            id: LogId::new(Term(term), LogIndex(index)),
            unix_ms: 0,
            payload: Payload::Noop,
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, t)| e(i as u64 + 1, *t))
            .collect();
        RaftLog::new(Snapshot::default(), LogId::default(), entries)
    }

    #[test]
    fn conflict_hint_skips_whole_terms() {
        // Figure 7 (f): terms 1 1 1 2 2 2 3 3 3 3 3; leader probes at index 10 term 6.
        let log = log_with(&[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]);
        assert_eq!(
            log.conflict_hint(LogIndex(10), Term(6)),
            LogId::new(Term(3), LogIndex(10))
        );
        assert_eq!(
            log.conflict_hint(LogIndex(10), Term(2)),
            LogId::new(Term(2), LogIndex(6))
        );
        assert_eq!(log.conflict_hint(LogIndex(10), Term(0)), LogId::default());
        assert_eq!(
            log.conflict_hint(LogIndex(50), Term(9)),
            LogId::new(Term(3), LogIndex(11))
        );
    }

    #[test]
    fn truncate_rolls_back_membership_and_compaction_keeps_terms() {
        let mut log = log_with(&[1, 1]);
        let m = Membership::with_voters([crate::ids::NodeId(1)]);
        log.append(vec![Entry {
            id: LogId::new(Term(1), LogIndex(3)),
            unix_ms: 0,
            payload: Payload::Membership(m.clone()),
        }]);
        assert_eq!(log.membership(), &m);
        log.truncate_from(LogIndex(3));
        assert_eq!(log.membership(), &Membership::default());
        assert_eq!(log.last_index(), LogIndex(2));
        let snap = Snapshot {
            meta: crate::raft::types::SnapshotMeta {
                last: LogId::new(Term(1), LogIndex(2)),
                ..Default::default()
            },
            data: vec![],
        };
        log.set_snapshot(snap);
        log.compact(LogIndex(1));
        assert_eq!(log.term(LogIndex(1)), Some(Term(1)));
        assert_eq!(log.first_index(), LogIndex(2));
        assert!(log.entries_from(LogIndex(1), 10, 10).is_none());
        assert_eq!(log.entries_from(LogIndex(2), 10, 10).unwrap().len(), 1);
    }
}
