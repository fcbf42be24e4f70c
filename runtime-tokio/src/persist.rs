//! The persistence task: makes the core's [`PersistBatch`]es durable off the driver's loop, so
//! messages, requests and timers keep flowing while an fsync is pending (ARCHITECTURE.md, "The
//! driving contract": batches are made durable in `seq` order, then reported).
//!
//! The driver hands every batch to the task through a bounded queue; the task takes whatever has
//! queued up (at most [`GROUP_BATCHES_MAX`] batches), makes the whole group durable with one
//! [`Persister::persist`] call (one redb transaction, one fsync: group commit), and publishes the
//! highest `seq` of the group on a `watch` channel. `Input::Persisted(seq)` acknowledges every
//! batch up to `seq` (the core treats it as cumulative), so the driver feeds only the latest value.
//! A `watch` never blocks its sender, so the task and the driver cannot wait on each other.
//!
//! A persist error ends the task with that error: after a failed fsync the only safe reaction is to
//! stop and recover from what is durable (PostgreSQL's "fsyncgate", 2018), never to retry and
//! acknowledge. The driver stops when the task ends.

use crate::storage::{RedbStorage, StorageError};
use paloma_core::raft::storage::PersistBatch;
use paloma_core::PersistSeq;
use std::future::Future;
use tokio::sync::{mpsc, watch};

/// Batches waiting for the persistence task before the driver waits (backpressure on input).
pub const QUEUE_BATCHES_MAX: usize = 256;
/// The most batches made durable by one `persist` call (one fsync).
pub const GROUP_BATCHES_MAX: usize = 64;

/// Durable storage as the driver uses it: a group of batches made durable together.
pub trait Persister: Send + 'static {
    /// Why a group could not be made durable; the node must stop.
    type Error: std::error::Error + Send + 'static;
    /// Applies every batch of `group`, in order, and makes them all durable before resolving.
    fn persist(
        &mut self,
        group: Vec<PersistBatch>,
    ) -> impl Future<Output = Result<Vec<PersistBatch>, Self::Error>> + Send;
}

/// The production persister: [`RedbStorage`] with the group written in one transaction on a
/// blocking thread (redb's commit blocks on fsync). Takes the group by value and hands it back, so
/// the blocking closure owns what it writes and the task reuses the allocation.
#[derive(Debug)]
pub struct RedbPersister {
    storage: Option<RedbStorage>,
}

impl RedbPersister {
    /// A persister writing to `storage`.
    #[must_use]
    pub fn new(storage: RedbStorage) -> RedbPersister {
        RedbPersister {
            storage: Some(storage),
        }
    }
}

impl Persister for RedbPersister {
    type Error = StorageError;

    async fn persist(
        &mut self,
        group: Vec<PersistBatch>,
    ) -> Result<Vec<PersistBatch>, StorageError> {
        let mut storage = self
            .storage
            .take()
            .ok_or(StorageError::Stopped("an earlier write did not return"))?;
        // madsim deprecates spawn_blocking (it runs the closure as an ordinary task there), which
        // is what the simulation wants: the same code path, deterministic.
        #[allow(deprecated)]
        let joined = tokio::task::spawn_blocking(move || {
            let result = storage.persist_group(&group);
            (storage, group, result)
        })
        .await;
        let (storage, group, result) =
            joined.map_err(|_| StorageError::Stopped("the write thread panicked"))?;
        self.storage = Some(storage);
        result.map(|()| group)
    }
}

/// Runs the persistence task until the queue closes (`Ok`) or a write fails (`Err`): takes the
/// queued batches in groups, makes each group durable, and publishes the last durable `seq`.
///
/// # Errors
/// The persister's error; nothing after the failed group is acknowledged.
pub async fn run<P: Persister>(
    mut persister: P,
    mut queue: mpsc::Receiver<PersistBatch>,
    durable: watch::Sender<PersistSeq>,
) -> Result<(), P::Error> {
    let mut group = Vec::with_capacity(GROUP_BATCHES_MAX);
    while let Some(first) = queue.recv().await {
        group.push(first);
        while group.len() < GROUP_BATCHES_MAX {
            match queue.try_recv() {
                Ok(batch) => group.push(batch),
                Err(_) => break,
            }
        }
        let last = group.last().map(|b| b.seq).expect("one batch at least");
        group = persister.persist(group).await?;
        assert!(
            *durable.borrow() < last,
            "batches are made durable in seq order"
        );
        durable.send_replace(last);
        group.clear();
    }
    Ok(())
}

#[cfg(all(test, not(madsim)))]
#[allow(clippy::disallowed_types)] // a test double shared with the task it observes
mod tests {
    use super::*;

    /// Records each group's seqs; fails on a chosen seq.
    struct Recorder {
        groups: std::sync::Arc<std::sync::Mutex<Vec<Vec<u64>>>>,
        fail_at: Option<u64>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("injected")]
    struct Injected;

    impl Persister for Recorder {
        type Error = Injected;
        async fn persist(
            &mut self,
            group: Vec<PersistBatch>,
        ) -> Result<Vec<PersistBatch>, Injected> {
            let seqs: Vec<u64> = group.iter().map(|b| b.seq.0).collect();
            if self.fail_at.is_some_and(|f| seqs.contains(&f)) {
                return Err(Injected);
            }
            self.groups.lock().unwrap().push(seqs);
            Ok(group)
        }
    }

    fn batch(seq: u64) -> PersistBatch {
        PersistBatch {
            seq: PersistSeq(seq),
            ops: vec![],
        }
    }

    #[tokio::test]
    async fn queued_batches_are_made_durable_together_and_reported_once() {
        let groups = std::sync::Arc::default();
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES_MAX);
        let (done_tx, mut done_rx) = watch::channel(PersistSeq(0));
        for seq in 1..=5 {
            tx.send(batch(seq)).await.unwrap();
        }
        let task = tokio::spawn(run(
            Recorder {
                groups: std::sync::Arc::clone(&groups),
                fail_at: None,
            },
            rx,
            done_tx,
        ));
        done_rx.changed().await.unwrap();
        assert_eq!(*done_rx.borrow_and_update(), PersistSeq(5));
        tx.send(batch(6)).await.unwrap();
        done_rx.changed().await.unwrap();
        assert_eq!(*done_rx.borrow(), PersistSeq(6));
        drop(tx);
        task.await.unwrap().unwrap();
        let seen = groups.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![vec![1, 2, 3, 4, 5], vec![6]],
            "one fsync per group"
        );
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_task_and_acknowledges_nothing_more() {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES_MAX);
        let (done_tx, done_rx) = watch::channel(PersistSeq(0));
        let task = tokio::spawn(run(
            Recorder {
                groups: std::sync::Arc::default(),
                fail_at: Some(2),
            },
            rx,
            done_tx,
        ));
        tx.send(batch(1)).await.unwrap();
        tokio::task::yield_now().await;
        tx.send(batch(2)).await.unwrap();
        assert!(task.await.unwrap().is_err());
        assert!(*done_rx.borrow() <= PersistSeq(1), "batch 2 never reported");
    }
}
