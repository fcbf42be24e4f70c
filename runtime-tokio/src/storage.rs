//! `RedbStorage`: the production [`Storage`] of a replica, on redb.
//!
//! One redb write transaction per [`PersistBatch`], committed with `Durability::Immediate`: the
//! commit's fsync is the batching point the core's driving contract asks for (one fsync per batch,
//! then `Input::Persisted`). Four records make up the state:
//!
//! - `meta["hard_state"]`: the [`HardState`];
//! - `meta["base"]`: the [`LogId`] just before the first stored entry;
//! - `meta["snapshot"]`: the [`Snapshot`] (absent for a node that never had one);
//! - `log[index]`: one [`Entry`] per index.
//!
//! Every stored value starts with a version byte ([`RECORD_VERSION`]): postcard is not
//! self-describing, so the byte is what lets a later release read this format (ARCHITECTURE.md,
//! "Versioned formats").
//!
//! The meaning of each [`PersistOp`] is written once, in [`paloma_core::raft::storage::apply_op`]; this
//! file mirrors those rules on tables, and its tests compare it with `MemStorage` over random op
//! sequences, and after recovery from a reopened file.
//!
//! The backend is any [`redb::StorageBackend`], so the simulator can pass a disk that loses or tears
//! unsynced writes on a crash; [`RedbStorage::open`] is the convenience for a file.

use paloma_core::raft::storage::{PersistBatch, PersistOp, Recovered, Storage};
use paloma_core::raft::types::{Entry, HardState, Snapshot};
use paloma_core::{LogId, LogIndex};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// The version byte that starts every stored record. Version 2: `Membership` (in entries and
/// snapshots) carries the `ReplicatedSettings`; a version-1 store is refused as
/// `StorageError::Version` (no release ever wrote version 1).
pub const RECORD_VERSION: u8 = 2;

/// Small records: the hard state, the log base and the snapshot.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Log entries by index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");

const KEY_HARD_STATE: &str = "hard_state";
const KEY_BASE: &str = "base";
const KEY_SNAPSHOT: &str = "snapshot";

/// The page cache redb may use. Raft state is read back only at recovery; writes go straight
/// through the commit, so a small cache is enough and keeps many simulated nodes cheap.
const CACHE_BYTES_MAX: usize = 16 << 20;

/// A storage failure. Any error means the node must stop: it may not acknowledge the batch.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// redb failed (I/O, corruption it detected, a transaction or commit error).
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    /// A stored record has a version this build does not know.
    #[error("record {what} has unknown version {version}")]
    Version {
        /// Which record.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// A stored record did not decode.
    #[error("record {what} is malformed: {reason}")]
    Malformed {
        /// Which record.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The store can no longer be written by this incarnation (an earlier write did not come back).
    #[error("storage stopped: {0}")]
    Stopped(&'static str),
}

/// Converts each of redb's per-operation error types through `redb::Error`.
macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StorageError {
            fn from(err: $ty) -> StorageError {
                StorageError::Redb(redb::Error::from(err))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Raft's durable state in a redb database.
#[derive(Debug)]
pub struct RedbStorage {
    db: Database,
}

impl RedbStorage {
    /// Opens (or creates) the database on `backend`. An existing database is recovered by redb to
    /// its last durable commit.
    pub fn with_backend(backend: impl StorageBackend) -> Result<RedbStorage, StorageError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES_MAX)
            .create_with_backend(backend)?;
        RedbStorage::init(db)
    }

    /// Opens (or creates) the database in the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStorage, StorageError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES_MAX)
            .create(path)?;
        RedbStorage::init(db)
    }

    /// Applies every batch of `group` in order inside **one** write transaction and commits it with
    /// `Durability::Immediate`: one fsync for the whole group (group commit). Atomic like
    /// [`Storage::persist`]: after a crash either the whole group is durable or none of it.
    ///
    /// # Errors
    /// A redb failure; nothing of the group may then be acknowledged.
    pub fn persist_group(&mut self, group: &[PersistBatch]) -> Result<(), StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            let mut log = txn.open_table(LOG)?;
            for op in group.iter().flat_map(|b| &b.ops) {
                apply(&mut meta, &mut log, op)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Creates the tables if they are missing, so reads never meet `TableDoesNotExist`.
    fn init(db: Database) -> Result<RedbStorage, StorageError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            txn.open_table(META)?;
            txn.open_table(LOG)?;
        }
        txn.commit()?;
        Ok(RedbStorage { db })
    }
}

impl Storage for RedbStorage {
    type Error = StorageError;

    /// Applies the batch's operations in order inside one write transaction and commits it with
    /// `Durability::Immediate`: when this returns `Ok`, the whole batch is durable; after a crash
    /// before that, none of it is (redb commits are atomic).
    fn persist(&mut self, batch: &PersistBatch) -> Result<(), StorageError> {
        self.persist_group(std::slice::from_ref(batch))
    }

    fn recover(&self) -> Result<Recovered, StorageError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let log = txn.open_table(LOG)?;
        let hard_state = read_record::<HardState>(&meta, KEY_HARD_STATE)?.unwrap_or_default();
        let base = read_record::<LogId>(&meta, KEY_BASE)?.unwrap_or_default();
        let snapshot = read_record::<Snapshot>(&meta, KEY_SNAPSHOT)?;
        let mut entries = Vec::new();
        for row in log.range::<u64>(..)? {
            let (key, value) = row?;
            let entry: Entry = decode("log entry", value.value())?;
            if entry.index() != LogIndex(key.value()) {
                return Err(StorageError::Malformed {
                    what: "log entry",
                    reason: format!("entry {:?} stored under key {}", entry.id, key.value()),
                });
            }
            entries.push(entry);
        }
        Ok(Recovered {
            hard_state,
            snapshot,
            base,
            entries,
        })
    }
}

type MetaTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;
type LogTable<'t> = redb::Table<'t, u64, &'static [u8]>;

/// One operation, with exactly the rules of `paloma_core::raft::storage::apply_op`.
fn apply(
    meta: &mut MetaTable<'_>,
    log: &mut LogTable<'_>,
    op: &PersistOp,
) -> Result<(), StorageError> {
    match op {
        PersistOp::HardState(hs) => {
            meta.insert(KEY_HARD_STATE, encode(hs).as_slice())?;
        }
        PersistOp::Snapshot(snap) => {
            // apply_op: the entries stay if the log holds the snapshot's last entry; otherwise the
            // snapshot replaces the whole log and its last entry becomes the base.
            let last = snap.meta.last;
            let base = read_record::<LogId>(meta, KEY_BASE)?.unwrap_or_default();
            let holds_last =
                last == base || read_entry(log, last.index)?.is_some_and(|e| e.id == last);
            if !holds_last {
                log.retain(|_, _| false)?;
                meta.insert(KEY_BASE, encode(&last).as_slice())?;
            }
            meta.insert(KEY_SNAPSHOT, encode(snap).as_slice())?;
        }
        PersistOp::Truncate { from } => {
            log.retain_in(from.0.., |_, _| false)?;
        }
        PersistOp::Append(entries) => {
            if let Some(first) = entries.first() {
                let last_key = log.last()?.map(|(k, _)| k.value());
                if let Some(last) = last_key {
                    assert_eq!(
                        first.index(),
                        LogIndex(last).next(),
                        "append must be contiguous"
                    );
                }
            }
            for entry in entries {
                log.insert(entry.index().0, encode(entry).as_slice())?;
            }
        }
        PersistOp::Compact { upto } => {
            let base = read_record::<LogId>(meta, KEY_BASE)?.unwrap_or_default();
            if upto.index > base.index {
                log.retain_in(..=upto.index.0, |_, _| false)?;
                meta.insert(KEY_BASE, encode(upto).as_slice())?;
            }
        }
    }
    Ok(())
}

fn read_entry(
    log: &impl ReadableTable<u64, &'static [u8]>,
    index: LogIndex,
) -> Result<Option<Entry>, StorageError> {
    match log.get(index.0)? {
        Some(value) => Ok(Some(decode("log entry", value.value())?)),
        None => Ok(None),
    }
}

fn read_record<T: DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &'static str,
) -> Result<Option<T>, StorageError> {
    match meta.get(key)? {
        Some(value) => Ok(Some(decode(key, value.value())?)),
        None => Ok(None),
    }
}

/// `RECORD_VERSION` followed by the postcard encoding.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    postcard::to_io(value, &mut out).expect("encoding to a Vec cannot fail");
    out
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    let (&version, body) = bytes.split_first().ok_or(StorageError::Malformed {
        what,
        reason: "empty record".into(),
    })?;
    if version != RECORD_VERSION {
        return Err(StorageError::Version { what, version });
    }
    postcard::from_bytes(body).map_err(|e| StorageError::Malformed {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use paloma_core::raft::storage::MemStorage;
    use paloma_core::raft::types::{Membership, Payload, SnapshotMeta};
    use paloma_core::{ClientId, NodeId, PersistSeq, Term};
    use proptest::prelude::*;
    use redb::backends::InMemoryBackend;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            id: LogId::new(Term(term), LogIndex(index)),
            unix_ms: index * 10,
            payload: Payload::Command {
                client: ClientId(1),
                seq: index,
                data: vec![index as u8; 3],
            },
        }
    }

    fn snapshot(last: LogId) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                last,
                membership: Membership::with_voters([NodeId(1), NodeId(2)]),
                data_hash: [7; 32],
            },
            data: vec![1, 2, 3],
        }
    }

    /// A generator's abstract operation, turned into a valid `PersistOp` against the model's state
    /// (apply_op asserts that appends are contiguous).
    #[derive(Clone, Debug)]
    enum Step {
        HardState(u64, Option<u64>, u64),
        Append(u8, u64),
        Truncate(u8),
        Compact(u8),
        Snapshot(u8, bool),
        SnapshotElsewhere(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..5u64, proptest::option::of(1..4u64), 0..20u64)
                .prop_map(|(t, v, c)| Step::HardState(t, v, c)),
            (1..6u8, 0..3u64).prop_map(|(n, dt)| Step::Append(n, dt)),
            any::<u8>().prop_map(Step::Truncate),
            any::<u8>().prop_map(Step::Compact),
            (any::<u8>(), any::<bool>()).prop_map(|(i, t)| Step::Snapshot(i, t)),
            (1..40u64).prop_map(Step::SnapshotElsewhere),
        ]
    }

    fn materialize(state: &Recovered, step: &Step) -> PersistOp {
        let last = state.entries.last().map_or(state.base, |e| e.id);
        let span = state.entries.len() as u64 + 1;
        let pick = |k: u8| LogIndex(state.base.index.0 + u64::from(k) % span);
        // The term at a picked index: of its entry, or of the base when the pick is the base.
        let term_at = |i: LogIndex| {
            state
                .entries
                .iter()
                .find(|e| e.index() == i)
                .map_or(state.base.term, |e| e.term())
        };
        match *step {
            Step::HardState(term, vote, commit) => PersistOp::HardState(HardState {
                term: Term(term),
                vote: vote.map(NodeId),
                commit: LogIndex(commit),
            }),
            Step::Append(n, dt) => PersistOp::Append(
                (1..=u64::from(n))
                    .map(|k| entry(last.term.0 + dt, last.index.0 + k))
                    .collect(),
            ),
            Step::Truncate(k) => PersistOp::Truncate {
                from: pick(k).next(),
            },
            Step::Compact(k) => {
                let i = pick(k);
                PersistOp::Compact {
                    upto: LogId::new(term_at(i), i),
                }
            }
            Step::Snapshot(k, same_term) => {
                let i = pick(k);
                let term = term_at(i);
                let term = if same_term { term } else { Term(term.0 + 1) };
                PersistOp::Snapshot(snapshot(LogId::new(term, i)))
            }
            Step::SnapshotElsewhere(ahead) => PersistOp::Snapshot(snapshot(LogId::new(
                Term(last.term.0 + 1),
                LogIndex(last.index.0 + ahead),
            ))),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random batches of random operations: redb recovers exactly what `MemStorage` (the shared
        /// `apply_op`) holds, after every batch.
        #[test]
        fn redb_matches_mem_storage(batches in proptest::collection::vec(proptest::collection::vec(step(), 1..5), 1..25)) {
            let mut redb = RedbStorage::with_backend(InMemoryBackend::new()).unwrap();
            let mut mem = MemStorage::new(Recovered::default());
            for (seq, steps) in batches.iter().enumerate() {
                let mut ops = Vec::new();
                for s in steps {
                    let op = materialize(mem.state(), s);
                    mem.apply_op(&op);
                    ops.push(op);
                }
                redb.persist(&PersistBatch { seq: PersistSeq(seq as u64 + 1), ops }).unwrap();
                prop_assert_eq!(&redb.recover().unwrap(), mem.state());
            }
        }
    }

    #[test]
    fn survives_reopen_of_a_file() {
        let dir = std::env::temp_dir().join(format!("paloma-redb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("raft.redb");
        let _ = std::fs::remove_file(&path);
        let mut mem = MemStorage::new(Recovered::bootstrap([NodeId(1)]));
        {
            let mut storage = RedbStorage::open(&path).unwrap();
            let ops = vec![
                PersistOp::Snapshot(mem.state().snapshot.clone().unwrap()),
                PersistOp::HardState(HardState {
                    term: Term(2),
                    vote: Some(NodeId(1)),
                    commit: LogIndex(1),
                }),
                PersistOp::Append(vec![entry(2, 1), entry(2, 2), entry(2, 3)]),
                PersistOp::Truncate { from: LogIndex(3) },
                PersistOp::Compact {
                    upto: LogId::new(Term(2), LogIndex(1)),
                },
            ];
            for op in &ops {
                mem.apply_op(op);
            }
            storage
                .persist(&PersistBatch {
                    seq: PersistSeq(1),
                    ops,
                })
                .unwrap();
        }
        let storage = RedbStorage::open(&path).unwrap();
        assert_eq!(&storage.recover().unwrap(), mem.state());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn records_are_versioned() {
        let bytes = encode(&HardState::default());
        assert_eq!(bytes[0], RECORD_VERSION);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(matches!(
            decode::<HardState>("hs", &bad),
            Err(StorageError::Version { version: 9, .. })
        ));
        assert!(matches!(
            decode::<HardState>("hs", &[]),
            Err(StorageError::Malformed { .. })
        ));
    }
}
