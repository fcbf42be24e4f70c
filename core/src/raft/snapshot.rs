//! Snapshots: taking them and compacting the log (Raft §7), and chunked InstallSnapshot that
//! resumes from the last acknowledged offset after a lost chunk.

use crate::ids::{LogId, NodeId, Term};
use crate::raft::io::Event;
use crate::raft::message::{Body, SnapshotAck, SnapshotChunk};
use crate::raft::node::RaftNode;
use crate::raft::progress::ProgressState;
use crate::raft::state_machine::{DedupTable, StateMachine};
use crate::raft::storage::PersistOp;
use crate::raft::types::{Snapshot, SnapshotMeta};

/// A snapshot being received chunk by chunk.
#[derive(Debug)]
pub(crate) struct IncomingSnapshot {
    pub term: Term,
    pub meta: SnapshotMeta,
    pub total: u64,
    pub data: Vec<u8>,
}

impl<S: StateMachine> RaftNode<S> {
    /// Takes a snapshot once enough entries were applied since the last one, then compacts the log
    /// behind it, keeping `snapshot_trailing_entries` for slightly slow followers.
    pub(crate) fn maybe_snapshot(&mut self) {
        let snap_index = self.log.snapshot().meta.last.index;
        if self.applied.0 - snap_index.0 < self.cfg.snapshot_threshold_entries {
            return;
        }
        let last = LogId::new(
            self.log.term(self.applied).expect("applied entry is held"),
            self.applied,
        );
        // Only applied (hence committed) state goes into a snapshot (Raft §7).
        assert!(
            snap_index < self.applied && self.applied <= self.commit,
            "{}: snapshot at {:?} past commit {:?}",
            self.id,
            self.applied,
            self.commit
        );
        let data = self.dedup.snapshot(&self.sm);
        let meta = SnapshotMeta {
            last,
            membership: self.log.membership_at(self.applied).clone(),
            data_hash: *blake3::hash(&data).as_bytes(),
        };
        let snapshot = Snapshot { meta, data };
        self.log.set_snapshot(snapshot.clone());
        self.outbox.stage(PersistOp::Snapshot(snapshot));
        let upto_index = crate::ids::LogIndex(
            self.applied
                .0
                .saturating_sub(self.cfg.snapshot_trailing_entries),
        );
        if upto_index > self.log.base().index {
            let upto = LogId::new(self.log.term(upto_index).expect("held"), upto_index);
            self.log.compact(upto_index);
            self.outbox.stage(PersistOp::Compact { upto });
        }
        self.stats.snapshots_taken += 1;
        self.emit(Event::SnapshotTaken {
            index: self.applied,
        });
    }

    /// Leader: switches `to` to snapshot replication.
    pub(crate) fn start_snapshot(&mut self, to: NodeId) {
        let last = self.current_snapshot().meta.last;
        let now = self.now;
        let Some(pr) = self.lead.as_mut().and_then(|l| l.progress.get_mut(&to)) else {
            return;
        };
        pr.state = ProgressState::Snapshot {
            last,
            offset: 0,
            sent_at: now,
        };
        pr.inflight.clear();
        self.send_snapshot_chunk(to);
    }

    /// Leader: sends the chunk at the follower's acknowledged offset. If a newer snapshot was taken
    /// meanwhile, the transfer restarts with it (the follower resets on a different `meta`).
    pub(crate) fn send_snapshot_chunk(&mut self, to: NodeId) {
        let now = self.now;
        let snapshot = self.log.snapshot();
        let total = snapshot.data.len() as u64;
        let Some(pr) = self.lead.as_mut().and_then(|l| l.progress.get_mut(&to)) else {
            return;
        };
        let ProgressState::Snapshot { last, offset, .. } = pr.state else {
            return;
        };
        let offset = if last == snapshot.meta.last {
            offset.min(total)
        } else {
            0
        };
        pr.state = ProgressState::Snapshot {
            last: snapshot.meta.last,
            offset,
            sent_at: now,
        };
        let start = usize::try_from(offset).expect("snapshot fits in memory");
        let end = (start + self.cfg.snapshot_chunk_bytes).min(snapshot.data.len());
        assert!(start <= end, "{}: chunk offset past the snapshot", self.id);
        let chunk = SnapshotChunk {
            meta: snapshot.meta.clone(),
            offset,
            total,
            data: snapshot.data[start..end].to_vec(),
        };
        self.stats.snapshot_chunks_sent += 1;
        self.send(to, Body::Snapshot(chunk));
    }

    pub(crate) fn on_snapshot_ack(&mut self, from: NodeId, term: Term, ack: SnapshotAck) {
        // Dispatch (`step`) settled the term: this message is from another node, in ours.
        assert!(
            from != self.id && term == self.term,
            "{}: misrouted {from} {term}",
            self.id
        );
        let Some(pr) = self.lead.as_mut().and_then(|l| l.progress.get_mut(&from)) else {
            self.stats.messages_stale += 1;
            return;
        };
        pr.recent_active = true;
        let ProgressState::Snapshot { last, .. } = pr.state else {
            self.stats.messages_stale += 1;
            return;
        };
        if ack.done && ack.last.index < last.index {
            // A duplicated acknowledgement of an older transfer (the network duplicates and reorders).
            self.stats.messages_stale += 1;
            return;
        }
        if ack.done {
            // Installed, or the follower already committed past it: it holds everything up to there.
            if ack.last.index <= self.log.last_index()
                && self
                    .log
                    .term(ack.last.index)
                    .is_none_or(|t| t == ack.last.term)
            {
                let now = self.now;
                pr.on_match(ack.last.index, now);
                pr.become_probe();
                self.maybe_commit();
                self.send_append(from);
            } else {
                self.stats.messages_invalid += 1;
            }
            return;
        }
        if ack.last != last {
            self.stats.messages_stale += 1;
            return;
        }
        let ProgressState::Snapshot { offset, .. } = &mut pr.state else {
            unreachable!("matched above");
        };
        // Only an acknowledgement that moves the transfer sends the next chunk: forward progress,
        // or the follower's request to restart (it lost its partial copy). A duplicated or stale
        // one (the follower also answers a duplicated chunk with where it stands) would otherwise
        // start a second stream of chunks, and every later duplicate another: the sorcerer's
        // apprentice syndrome of TFTP (RFC 1123 §4.2.3.1), seen here as a 30 KB snapshot in 64 B
        // chunks never completing (madsim `replica_directory_under_chaos`, seed 31). A lost chunk
        // is re-sent by the heartbeat after `append_timeout` (`replication.rs`).
        let moves = ack.next_offset > *offset || (ack.next_offset == 0 && *offset != 0);
        if !moves {
            self.stats.messages_stale += 1;
            return;
        }
        *offset = ack.next_offset;
        self.send_snapshot_chunk(from);
    }

    /// Follower: accumulates chunks; installs the snapshot when complete and intact.
    pub(crate) fn on_snapshot_chunk(&mut self, from: NodeId, term: Term, chunk: SnapshotChunk) {
        self.assert_following(from, term);
        let last = chunk.meta.last;
        if last.index <= self.commit {
            // Already have everything it covers (etcd TestRestoreIgnoreSnapshot).
            let ack = SnapshotAck {
                last: LogId::new(self.log.term(self.commit).unwrap_or(last.term), self.commit),
                next_offset: chunk.total,
                done: true,
            };
            self.send(from, Body::SnapshotResp(ack));
            return;
        }
        if chunk.total > self.cfg.snapshot_bytes_max
            || chunk.offset.saturating_add(chunk.data.len() as u64) > chunk.total
            || last.term > self.term
        {
            self.stats.messages_invalid += 1;
            return;
        }
        let same = self
            .incoming_snapshot
            .as_ref()
            .is_some_and(|s| s.term == self.term && s.meta == chunk.meta && s.total == chunk.total);
        if !same {
            if chunk.offset != 0 {
                // A different transfer is in progress on the leader's side: ask it to restart.
                self.send(
                    from,
                    Body::SnapshotResp(SnapshotAck {
                        last,
                        next_offset: 0,
                        done: false,
                    }),
                );
                return;
            }
            let capacity = usize::try_from(chunk.total.min(1 << 20)).unwrap_or(0);
            self.incoming_snapshot = Some(IncomingSnapshot {
                term: self.term,
                meta: chunk.meta.clone(),
                total: chunk.total,
                data: Vec::with_capacity(capacity),
            });
        }
        let incoming = self.incoming_snapshot.as_mut().expect("set above");
        if chunk.offset != incoming.data.len() as u64 {
            // A lost or duplicated chunk: tell the leader where to resume.
            let next_offset = incoming.data.len() as u64;
            self.send(
                from,
                Body::SnapshotResp(SnapshotAck {
                    last,
                    next_offset,
                    done: false,
                }),
            );
            return;
        }
        incoming.data.extend_from_slice(&chunk.data);
        if (incoming.data.len() as u64) < incoming.total {
            let next_offset = incoming.data.len() as u64;
            self.send(
                from,
                Body::SnapshotResp(SnapshotAck {
                    last,
                    next_offset,
                    done: false,
                }),
            );
            return;
        }
        let incoming = self.incoming_snapshot.take().expect("set above");
        assert_eq!(
            incoming.data.len() as u64,
            incoming.total,
            "{}: short snapshot",
            self.id
        );
        if *blake3::hash(&incoming.data).as_bytes() != incoming.meta.data_hash {
            self.stats.messages_invalid += 1;
            self.send(
                from,
                Body::SnapshotResp(SnapshotAck {
                    last,
                    next_offset: 0,
                    done: false,
                }),
            );
            return;
        }
        let snapshot = Snapshot {
            meta: incoming.meta,
            data: incoming.data,
        };
        // The snapshot's configuration carries the table's bound (`ReplicatedSettings`); the
        // snapshot replaces the whole table, so a fresh one restores it (and on a decoding error
        // the old one stays).
        let mut dedup = DedupTable::new(snapshot.meta.membership.settings.dedup_bound());
        if let Err(err) = dedup.restore(&mut self.sm, &snapshot.data) {
            self.stats.messages_invalid += 1;
            tracing::warn!(node = %self.id, %err, "snapshot from leader does not decode");
            return;
        }
        self.dedup = dedup;
        self.install_snapshot(snapshot);
        self.send(
            from,
            Body::SnapshotResp(SnapshotAck {
                last,
                next_offset: 0,
                done: true,
            }),
        );
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let last = snapshot.meta.last;
        let membership_changed = self.log.membership() != &snapshot.meta.membership
            || self.log.membership_index() > last.index;
        self.log.install_snapshot(snapshot.clone());
        self.outbox.stage(PersistOp::Snapshot(snapshot));
        self.outbox.clamp_durable_match(self.log.last_index());
        if self.log.base() == last {
            // The log was replaced: nothing after the snapshot is durable yet, and what was
            // proposed after it is gone with the old entries.
            self.outbox.clamp_durable_match(last.index);
            let wiped = self.local_proposals.split_off(&last.index.next());
            self.drop_proposals(wiped, crate::raft::io::DropReason::Truncated);
        }
        self.commit = self.commit.max(last.index);
        self.applied = last.index;
        // Proposals covered by the snapshot were never applied here: their outcome is unknown
        // to this node, so say so (the client retries; de-duplication answers).
        let kept = self.local_proposals.split_off(&last.index.next());
        let covered = std::mem::replace(&mut self.local_proposals, kept);
        self.drop_proposals(covered, crate::raft::io::DropReason::SnapshotInstalled);
        // Postconditions: the snapshot is the log's base of truth, and the node applied it.
        assert_eq!(
            self.log.snapshot().meta.last,
            last,
            "{}: snapshot not installed",
            self.id
        );
        assert!(
            self.applied == last.index && self.applied <= self.commit,
            "{}: applied {:?} after installing {last:?} (commit {:?})",
            self.id,
            self.applied,
            self.commit
        );
        self.outbox.mark_hard_state();
        self.stats.snapshots_installed += 1;
        if membership_changed {
            self.on_membership_changed();
        }
        self.apply_committed();
    }
}
