//! The simulated disks: one queue of persist batches per node, completed in order after a drawn
//! fsync latency (with stalls); a crash loses what was not reported durable, or tears the first
//! pending batch; targeted crashes strike while a chosen kind of write is in flight.

use super::{dur_nanos, Ev, Sim, Unsynced};
use crate::kv::Kv;
use paloma_core::raft::check::Violation;
use paloma_core::raft::io::{Input, Role};
use paloma_core::raft::storage::{PersistBatch, PersistOp};
use paloma_core::raft::{Config, RaftNode};
use paloma_core::NodeId;

impl Sim {
    pub(super) fn submit_disk(&mut self, id: NodeId, batch: PersistBatch) {
        let f = &self.cfg.faults;
        let (lo, hi) = (dur_nanos(f.disk_latency_min), dur_nanos(f.disk_latency_max));
        let mut latency = lo + self.disk_rng.below(hi.saturating_sub(lo).max(1));
        if f.disk_stall_ppm > 0
            && !self.chaos_over
            && self.disk_rng.below(1_000_000) < u64::from(f.disk_stall_ppm)
        {
            // A stalled fsync (a busy or failing device): everything queued behind it waits too.
            latency += self.disk_rng.below(dur_nanos(f.disk_stall_max).max(1));
        }
        let strike = self
            .armed_unsynced
            .filter(|(what, _)| self.writes(id, &batch, *what));
        let n = self.nodes.get_mut(&id).expect("node");
        n.disk_queue.push_back(batch);
        // Writes complete in order (one fsync after another).
        let done = (self.now + latency).max(n.disk_busy_until);
        n.disk_busy_until = done;
        let incarnation = n.incarnation;
        self.schedule(
            done,
            Ev::DiskDone {
                node: id,
                incarnation,
            },
        );
        if let Some((what, down_for)) = strike {
            // Targeted crash: somewhere while this write is still in flight.
            self.armed_unsynced = None;
            let at = self.now
                + 1
                + self
                    .disk_rng
                    .below((done - self.now).saturating_sub(1).max(1));
            self.trace.line(
                self.now,
                format_args!(
                    "{id} has an unsynced {what:?} in flight: it will crash before it is durable"
                ),
            );
            self.schedule(
                at,
                Ev::CrashNow {
                    node: id,
                    incarnation,
                    down_for,
                },
            );
        }
    }

    /// Whether `batch` writes `what` for node `id` beyond what its disk already holds.
    fn writes(&self, id: NodeId, batch: &PersistBatch, what: Unsynced) -> bool {
        let durable = self.nodes[&id].disk.state().hard_state;
        batch.ops.iter().any(|op| match (what, op) {
            (Unsynced::Vote, PersistOp::HardState(hs)) => {
                hs.vote.is_some() && (hs.term, hs.vote) != (durable.term, durable.vote)
            }
            (Unsynced::Term, PersistOp::HardState(hs)) => hs.term > durable.term,
            (Unsynced::Append, PersistOp::Append(_)) => true,
            (Unsynced::Snapshot, PersistOp::Snapshot(_)) => true,
            _ => false,
        })
    }

    pub(super) fn on_disk_done(&mut self, id: NodeId, incarnation: u64) -> Result<(), Violation> {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.incarnation != incarnation || n.raft.is_none() {
            return Ok(());
        }
        let Some(batch) = n.disk_queue.pop_front() else {
            return Ok(());
        };
        for op in &batch.ops {
            n.disk.apply_op(op);
        }
        let hs = n.disk.state().hard_state;
        self.checker.observe_durable(id, hs.term, hs.vote)?;
        self.step_node(id, |raft, now| {
            raft.handle(now, Input::Persisted(batch.seq))
        })
    }

    /// Crashes `id`: its memory is gone, and so is every write not yet durable; with torn writes
    /// enabled, a prefix of the first pending batch may have reached the disk.
    pub fn crash(&mut self, id: NodeId) {
        let torn = self.cfg.faults.torn_writes;
        let n = self.nodes.get_mut(&id).expect("node");
        if n.raft.is_none() {
            return;
        }
        n.raft = None;
        n.incarnation += 1;
        n.disk_busy_until = 0;
        self.report.crashes.0 += 1;
        if let Some(first) = n.disk_queue.front() {
            if torn && !first.ops.is_empty() {
                let keep = self.disk_rng.below(first.ops.len() as u64 + 1) as usize;
                if keep > 0 {
                    self.report.crashes.1 += 1;
                }
                for op in &first.ops[..keep] {
                    n.disk.apply_op(op);
                }
            }
        }
        n.disk_queue.clear();
        self.checker.on_restart(id);
        self.trace.line(
            self.now,
            format_args!("FAULT crash {id} (unsynced writes lost)"),
        );
    }

    /// Restarts `id` from its durable state (no-op if it is running).
    pub fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        if self.nodes[&id].raft.is_some() {
            return Ok(());
        }
        self.start_node(id);
        self.trace
            .line(self.now, format_args!("FAULT restart {id}"));
        let before = (
            Role::Follower,
            self.nodes[&id]
                .raft
                .as_ref()
                .expect("started")
                .status()
                .term,
        );
        self.after_step(id, before)
    }

    pub(super) fn start_node(&mut self, id: NodeId) {
        let now = self.local_now(id);
        let n = self.nodes.get_mut(&id).expect("node");
        let recovered = n.disk.state().clone();
        let cfg = Config {
            id,
            ..self.cfg.raft.clone()
        };
        let seed = self.cfg.seed ^ (id.0 << 48) ^ (n.incarnation << 32);
        let raft = RaftNode::new(cfg, recovered, Kv::default(), seed, now)
            .expect("recovered state is valid");
        n.raft = Some(raft);
        self.arm_timer(id);
    }
}
