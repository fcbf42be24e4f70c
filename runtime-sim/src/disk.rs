//! `SimDisk`: a simulated disk under redb that loses or tears what was not synced when the node
//! crashes.
//!
//! madsim's `kill` is not a power cut (madsim 0.2.34; ARCHITECTURE.md, `runtime-sim/`): the killed
//! node's Drop code still runs, and `madsim::fs` keeps unsynced data. So the scenario owns each
//! node's disk, and the node's redb sees it through a [`SimDiskBackend`] tied to one *incarnation*:
//!
//! - every write lands in the image reads see, and in a list of *pending* operations;
//! - `sync_data` only records a barrier: the sync is in flight until the driver, after the
//!   simulated fsync latency, calls [`SimDisk::settle`], which makes everything before the last
//!   barrier durable. The driver reports `Input::Persisted` only after `settle`, so a crash during
//!   the latency is exactly a power cut during fsync;
//! - [`SimDisk::crash`] picks a cut point among the pending operations (deterministically from a
//!   seed) and keeps what a real disk may hold at that point ([`CrashMode`]), then bumps the
//!   incarnation: the dead incarnation's backend, still owned by redb objects that madsim drops
//!   later, gets an error for every call and can no longer touch the disk (fencing).
//!
//! Nothing here uses madsim: the disk is tested under plain `cargo test`, with redb on top.

// redb's `StorageBackend` takes `&self` and must be `Send + Sync`, so the disk needs a lock; in the
// single-threaded simulator it is never contended (the `clippy.toml` ban is for `core`'s sake:
// ARCHITECTURE.md, "Determinism").
#![allow(clippy::disallowed_types)]

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Disk sectors are written atomically; a torn write keeps a whole number of them.
pub const SECTOR_BYTES: usize = 512;

/// What survives of the writes that were not synced when the power went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// All unsynced writes are lost.
    LoseUnsynced,
    /// The writes reached the disk in order up to a random cut point; the write at the cut is
    /// torn at a sector boundary.
    TornPrefix,
    /// Up to a random cut point, writes since the last completed barrier survive or not
    /// independently (the disk reorders unsynced writes); the write at the cut is torn.
    TornScrambled,
}

impl CrashMode {
    /// All modes, for random choice.
    pub const ALL: [CrashMode; 3] = [
        CrashMode::LoseUnsynced,
        CrashMode::TornPrefix,
        CrashMode::TornScrambled,
    ];
}

/// What a crash did, for the trace and for tests that want tearing to have happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Pending (unsynced or in-flight) operations at the crash.
    pub pending: usize,
    /// Operations kept whole.
    pub kept: usize,
    /// Whether one write was kept partially.
    pub torn: bool,
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kept {}/{} unsynced ops{}",
            self.kept,
            self.pending,
            if self.torn { ", one torn" } else { "" }
        )
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Writes issued.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Sync barriers issued.
    pub syncs: u64,
    /// Crashes.
    pub crashes: u64,
    /// Crashes that kept part of the unsynced writes (torn or scrambled).
    pub crashes_torn: u64,
    /// Calls refused because they came from a dead incarnation.
    pub fenced_calls: u64,
    /// Fsyncs that failed on purpose ([`SimDisk::fail_syncs`]).
    pub failed_syncs: u64,
}

#[derive(Clone, Debug)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Sync,
}

#[derive(Debug, Default)]
struct DiskState {
    /// What reads see: durable plus every pending operation.
    image: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Operations since the last `settle`, in issue order.
    pending: Vec<PendingOp>,
    incarnation: u64,
    opened: bool,
    /// While set, every fsync fails (see [`SimDisk::fail_syncs`]).
    failing_syncs: bool,
    stats: DiskStats,
}

/// One node's simulated disk. Cheap to clone: clones share the disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

impl SimDisk {
    /// An empty disk.
    #[must_use]
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A backend for redb, bound to the current incarnation. One per incarnation: a second open
    /// before a crash would be two processes writing one file.
    ///
    /// # Panics
    /// If the current incarnation already has a backend.
    #[must_use]
    pub fn open(&self) -> SimDiskBackend {
        let mut st = self.lock();
        assert!(
            !st.opened,
            "SimDisk opened twice in incarnation {}",
            st.incarnation
        );
        st.opened = true;
        SimDiskBackend {
            disk: self.clone(),
            incarnation: st.incarnation,
        }
    }

    /// The in-flight syncs complete: everything up to the last sync barrier becomes durable.
    /// Writes after it stay pending (they were never synced).
    pub fn settle(&self) {
        let mut st = self.lock();
        let Some(last_sync) = st
            .pending
            .iter()
            .rposition(|op| matches!(op, PendingOp::Sync))
        else {
            return;
        };
        let settled: Vec<PendingOp> = st.pending.drain(..=last_sync).collect();
        for op in &settled {
            apply(&mut st.durable, op);
        }
    }

    /// From now on every fsync fails (`on`) or works again (`!on`): the fsync error of a dying
    /// disk or a full thin-provisioned volume. A failed fsync records no barrier, so the writes
    /// before it stay unsynced and a later crash may lose or tear them. After a failed fsync the
    /// kernel may already have dropped the dirty pages (PostgreSQL's "fsyncgate", 2018): the only
    /// safe reaction is to stop and recover from what is durable, never to retry and acknowledge.
    pub fn fail_syncs(&self, on: bool) {
        self.lock().failing_syncs = on;
    }

    /// Whether a crash now would have anything to lose or tear.
    #[must_use]
    pub fn has_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// The power goes: keeps what `mode` allows of the pending operations (choices drawn from
    /// `seed`), and fences the current incarnation's backend.
    pub fn crash(&self, mode: CrashMode, seed: u64) -> CrashReport {
        let mut st = self.lock();
        let mut rng = SplitMix(seed);
        let pending = std::mem::take(&mut st.pending);
        let mut report = CrashReport {
            pending: pending.len(),
            ..CrashReport::default()
        };
        if mode != CrashMode::LoseUnsynced && !pending.is_empty() {
            // The cut: operations before it were issued to the disk, the one at it is mid-write.
            let cut = rng.below(pending.len() as u64 + 1) as usize;
            // A barrier before the cut completed: everything before it is durable whatever the mode.
            let barrier = pending[..cut]
                .iter()
                .rposition(|op| matches!(op, PendingOp::Sync))
                .map_or(0, |i| i + 1);
            for (i, op) in pending[..cut].iter().enumerate() {
                let keep = i < barrier || mode == CrashMode::TornPrefix || rng.below(2) == 0;
                if keep {
                    apply(&mut st.durable, op);
                    report.kept += 1;
                }
            }
            if let Some(PendingOp::Write { offset, data }) = pending.get(cut) {
                let sectors = data.len().div_ceil(SECTOR_BYTES) as u64;
                let keep_bytes = (rng.below(sectors + 1) as usize * SECTOR_BYTES).min(data.len());
                if keep_bytes > 0 {
                    apply(
                        &mut st.durable,
                        &PendingOp::Write {
                            offset: *offset,
                            data: data[..keep_bytes].to_vec(),
                        },
                    );
                    report.torn = true;
                }
            }
        }
        st.image = st.durable.clone();
        st.incarnation += 1;
        st.opened = false;
        st.stats.crashes += 1;
        if report.kept > 0 || report.torn {
            st.stats.crashes_torn += 1;
        }
        report
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// The durable size in bytes.
    #[must_use]
    pub fn durable_len(&self) -> usize {
        self.lock().durable.len()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic elsewhere in the simulation poisons nothing we rely on: the state is plain data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn apply(bytes: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { offset, data } => {
            let start = usize::try_from(*offset).expect("offset fits in memory");
            let end = start + data.len();
            if bytes.len() < end {
                // A write past the end extends the file (its set_len may have been lost).
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
        PendingOp::SetLen(len) => {
            bytes.resize(usize::try_from(*len).expect("length fits in memory"), 0)
        }
        PendingOp::Sync => {}
    }
}

/// The [`redb::StorageBackend`] one incarnation of a node sees.
#[derive(Debug)]
pub struct SimDiskBackend {
    disk: SimDisk,
    incarnation: u64,
}

impl SimDiskBackend {
    /// The disk, fenced: an error if this incarnation crashed.
    fn live(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let mut st = self.disk.lock();
        if st.incarnation != self.incarnation {
            st.stats.fenced_calls += 1;
            return Err(io::Error::other(format!(
                "SimDisk: incarnation {} crashed (now {})",
                self.incarnation, st.incarnation
            )));
        }
        Ok(st)
    }
}

impl redb::StorageBackend for SimDiskBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.live()?.image.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let st = self.live()?;
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let src = st.image.get(start..start + out.len()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the SimDisk",
            )
        })?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.live()?;
        let op = PendingOp::SetLen(len);
        apply(&mut st.image, &op);
        st.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.live()?;
        if st.failing_syncs {
            st.stats.failed_syncs += 1;
            return Err(io::Error::other("SimDisk: fsync failed (injected)"));
        }
        st.stats.syncs += 1;
        st.pending.push(PendingOp::Sync);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.live()?;
        let op = PendingOp::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut st.image, &op);
        st.pending.push(op);
        st.stats.writes += 1;
        st.stats.bytes_written += data.len() as u64;
        Ok(())
    }
}

/// SplitMix64: the crash choices only need a small deterministic stream from one seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        // The tiny modulo bias is irrelevant for fault choices.
        self.next() % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paloma_core::raft::storage::{MemStorage, PersistBatch, PersistOp, Recovered, Storage};
    use paloma_core::raft::types::{Entry, HardState, Payload};
    use paloma_core::{ClientId, LogId, LogIndex, NodeId, PersistSeq, Term};
    use paloma_runtime_tokio::RedbStorage;
    use redb::StorageBackend as _;

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_kept() {
        let disk = SimDisk::new();
        let b = disk.open();
        b.set_len(1024).unwrap();
        b.write(0, &[1; 512]).unwrap();
        b.sync_data().unwrap();
        disk.settle();
        b.write(512, &[2; 512]).unwrap();
        let report = disk.crash(CrashMode::LoseUnsynced, 1);
        assert_eq!(
            report,
            CrashReport {
                pending: 1,
                kept: 0,
                torn: false
            }
        );
        assert!(b.write(0, &[3]).is_err(), "the dead incarnation is fenced");
        assert_eq!(disk.stats().fenced_calls, 1);
        let b2 = disk.open();
        let mut out = [0u8; 1024];
        b2.read(0, &mut out).unwrap();
        assert!(out[..512].iter().all(|&x| x == 1));
        assert!(out[512..].iter().all(|&x| x == 0));
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable() {
        let disk = SimDisk::new();
        let b = disk.open();
        b.write(0, b"kept").unwrap();
        b.sync_data().unwrap();
        disk.settle();
        disk.fail_syncs(true);
        b.write(0, b"lost").unwrap();
        assert!(b.sync_data().is_err());
        disk.settle();
        assert_eq!(disk.stats().failed_syncs, 1);
        disk.fail_syncs(false);
        disk.crash(CrashMode::LoseUnsynced, 1);
        let b = disk.open();
        let mut out = [0u8; 4];
        b.read(0, &mut out).unwrap();
        assert_eq!(&out, b"kept");
    }

    #[test]
    fn an_unsettled_sync_is_in_flight() {
        let disk = SimDisk::new();
        let b = disk.open();
        b.write(0, &[9; 2048]).unwrap();
        b.sync_data().unwrap();
        // No settle: the fsync had not returned when the power went; some seed tears the write.
        let torn = (0..64).any(|seed| {
            let d = SimDisk::new();
            let b = d.open();
            b.write(0, &[9; 2048]).unwrap();
            b.sync_data().unwrap();
            let r = d.crash(CrashMode::TornPrefix, seed);
            let len = d.durable_len();
            r.torn && len > 0 && len < 2048
        });
        assert!(torn);
        disk.crash(CrashMode::LoseUnsynced, 0);
        assert_eq!(disk.durable_len(), 0);
    }

    fn batch(seq: u64, term: u64, from: u64, n: u64) -> PersistBatch {
        let entries = (from..from + n)
            .map(|i| Entry {
                id: LogId::new(Term(term), LogIndex(i)),
                unix_ms: i,
                payload: Payload::Command {
                    client: ClientId(1),
                    seq: i,
                    data: vec![i as u8; 300],
                },
            })
            .collect();
        PersistBatch {
            seq: PersistSeq(seq),
            ops: vec![
                PersistOp::HardState(HardState {
                    term: Term(term),
                    vote: Some(NodeId(1)),
                    commit: LogIndex(from.saturating_sub(1)),
                }),
                PersistOp::Append(entries),
            ],
        }
    }

    /// redb on a SimDisk, crashed during the fsync of a random batch in every mode: every settled
    /// batch survives, and the in-flight one survives whole or not at all (commits are atomic).
    #[test]
    fn redb_commits_survive_torn_crashes_atomically() {
        let mut torn_crashes = 0;
        for seed in 0..60u64 {
            let disk = SimDisk::new();
            let mut storage = RedbStorage::with_backend(disk.open()).unwrap();
            disk.settle();
            let mut model = MemStorage::new(Recovered::default());
            let mut next = 1;
            let rounds = 3 + seed % 4;
            for round in 0..rounds {
                let seq = round + 1;
                let n = 1 + (seed + round) % 7;
                let b = batch(seq, 1 + round, next, n);
                next += n;
                storage.persist(&b).unwrap();
                let before = model.clone();
                for op in &b.ops {
                    model.apply_op(op);
                }
                if round + 1 == rounds {
                    // Crash with this batch's fsync in flight.
                    let mode = CrashMode::ALL[(seed % 3) as usize];
                    let report = disk.crash(mode, seed);
                    torn_crashes += usize::from(report.kept > 0 || report.torn);
                    drop(storage);
                    let reopened = RedbStorage::with_backend(disk.open()).unwrap();
                    let got = reopened.recover().unwrap();
                    assert!(
                        got == *model.state() || got == *before.state(),
                        "seed {seed}: recovered a state that is neither before nor after the batch"
                    );
                    break;
                }
                disk.settle();
            }
        }
        assert!(
            torn_crashes > 10,
            "tearing happened in {torn_crashes} crashes"
        );
    }
}
