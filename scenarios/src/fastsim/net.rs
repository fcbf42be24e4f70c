//! The network emulator: loss, duplication, latency with spikes (so messages reorder, some past
//! election timeouts), cut links; every message is checked at the boundary before it leaves; and
//! the two network-shaped targeted faults (old messages replayed after a leader change, a leader
//! cut off right after it replicated to a minority).

use super::{dur_nanos, Ev, Sim};
use paloma_core::raft::check::Violation;
use paloma_core::raft::io::Role;
use paloma_core::raft::{Body, Envelope};
use paloma_core::NodeId;
use std::collections::BTreeSet;

/// Old frames kept for stale replays (bounded, like everything).
const OLD_FRAMES_MAX: usize = 512;

impl Sim {
    pub(super) fn send(&mut self, env: Envelope) -> Result<(), Violation> {
        let timeout_now_cut = self.lease_armed.is_some() && self.is_armed_timeout_now(&env);
        self.route(env)?;
        if timeout_now_cut {
            self.after_timeout_now()?;
        }
        Ok(())
    }

    fn route(&mut self, env: Envelope) -> Result<(), Violation> {
        self.report.messages.0 += 1;
        self.trace.message(self.now, &env, "->");
        // The boundary: what the message promises must already be on the sender's disk.
        self.checker
            .observe_send(&env, self.nodes[&env.from].disk.state())?;
        if self.armed_minority_append {
            self.maybe_cut_after_minority_append(&env)?;
        }
        if self.split.is_some() {
            self.split_on_new_leader(&env)?;
        }
        if self.blocked.contains(&(env.from, env.to)) || !self.nodes.contains_key(&env.to) {
            self.report.messages.1 += 1;
            return Ok(());
        }
        let f = &self.cfg.faults;
        if self.lossy && self.net_rng.below(1_000_000) < u64::from(f.loss_ppm) {
            self.report.messages.1 += 1;
            return Ok(());
        }
        let copies = if self.lossy && self.net_rng.below(1_000_000) < u64::from(f.dup_ppm) {
            2
        } else {
            1
        };
        self.report.messages.2 += copies - 1;
        let frame = env.encode();
        if f.targeted && self.net_rng.below(8) == 0 {
            if self.old_frames.len() == OLD_FRAMES_MAX {
                self.old_frames.pop_front();
            }
            self.old_frames.push_back((env.to, frame.clone()));
        }
        let (lo, hi) = (dur_nanos(f.delay_min), dur_nanos(f.delay_max));
        let (spike_ppm, spike_max) = (u64::from(f.spike_ppm), dur_nanos(f.spike_max));
        for _ in 0..copies {
            let mut delay = lo + self.net_rng.below(hi.saturating_sub(lo).max(1));
            if self.lossy && self.net_rng.below(1_000_000) < spike_ppm {
                // A latency spike long enough to reorder across heartbeats and elections.
                delay += self.net_rng.below(spike_max.max(1));
            }
            self.schedule(
                self.now + delay,
                Ev::Deliver {
                    to: env.to,
                    frame: frame.clone(),
                },
            );
        }
        Ok(())
    }

    /// Delivers `count` frames sent long ago (armed by `Fault::StaleReplay`, fired at the next
    /// leader change).
    pub(super) fn replay_old_frames(&mut self, count: u8) {
        let mut replayed = 0;
        for _ in 0..count {
            if self.old_frames.is_empty() {
                break;
            }
            let i = self.net_rng.below(self.old_frames.len() as u64) as usize;
            let (to, frame) = self.old_frames[i].clone();
            let delay = self
                .net_rng
                .below(dur_nanos(self.cfg.faults.delay_max).max(1));
            self.schedule(self.now + delay, Ev::Deliver { to, frame });
            replayed += 1;
        }
        self.trace.line(
            self.now,
            format_args!("FAULT leader changed: {replayed} old messages delivered again"),
        );
    }

    /// `Fault::PartitionAfterMinorityAppend`: the first append with entries from a leader cuts the
    /// leader off together with a minority that gets the entries (a lone leader in 3 nodes).
    fn maybe_cut_after_minority_append(&mut self, env: &Envelope) -> Result<(), Violation> {
        let Body::Append(req) = &env.body else {
            return Ok(());
        };
        let Some(st) = self.node(env.from).map(paloma_core::raft::RaftNode::status) else {
            return Ok(());
        };
        if req.entries.is_empty() || st.role != Role::Leader {
            return Ok(());
        }
        self.armed_minority_append = false;
        let voters = st.membership.voters;
        let minority = (voters.len() - 1) / 2;
        let mut side: BTreeSet<NodeId> = BTreeSet::from([env.from]);
        if minority >= 2 {
            side.insert(env.to);
        }
        for v in &voters {
            if side.len() >= minority.max(1) {
                break;
            }
            side.insert(*v);
        }
        let rest = self.all_but(|id| side.contains(id));
        self.inject_fault(super::Fault::Partition {
            groups: vec![side.into_iter().collect(), rest],
        })
    }
}
