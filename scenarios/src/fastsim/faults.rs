//! The fault plan: a list of timed faults drawn from the seed before the run starts, so a failing
//! run can be shrunk by removing faults one by one and replayed with a mask.

use paloma_core::rng::DetRng;
use paloma_core::NodeId;
use std::time::Duration;

/// Fault rates and kinds for a run.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability (parts per million) that a message is lost.
    pub loss_ppm: u32,
    /// Probability that a message is delivered twice.
    pub dup_ppm: u32,
    /// Probability of a latency spike (up to two election timeouts: long reordering).
    pub spike_ppm: u32,
    /// Minimum one-way latency.
    pub delay_min: Duration,
    /// Maximum one-way latency (latencies are independent, so messages reorder).
    pub delay_max: Duration,
    /// Longest fsync.
    pub disk_latency_max: Duration,
    /// Time between two planned faults, at least.
    pub interval_min: Duration,
    /// And at most.
    pub interval_max: Duration,
    /// Plan partitions (minority, majority, bridge, one-way).
    pub partitions: bool,
    /// Plan crashes and restarts.
    pub crashes: bool,
    /// Crashes tear the first unsynced batch (a prefix of its writes survives).
    pub torn_writes: bool,
    /// Largest clock drift of a node, either way, in parts per million.
    pub drift_ppm_max: u32,
    /// Plan membership changes (needs spare nodes to add).
    pub membership: bool,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            loss_ppm: 50_000,
            dup_ppm: 20_000,
            spike_ppm: 5_000,
            delay_min: Duration::from_micros(500),
            delay_max: Duration::from_millis(8),
            disk_latency_max: Duration::from_millis(2),
            interval_min: Duration::from_millis(300),
            interval_max: Duration::from_millis(2500),
            partitions: true,
            crashes: true,
            torn_writes: true,
            drift_ppm_max: 100_000,
            membership: false,
        }
    }
}

impl Faults {
    /// No faults at all: a perfect network and no crashes.
    #[must_use]
    pub fn none() -> Faults {
        Faults {
            loss_ppm: 0,
            dup_ppm: 0,
            spike_ppm: 0,
            partitions: false,
            crashes: false,
            drift_ppm_max: 0,
            ..Faults::default()
        }
    }
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every link works again.
    Heal,
    /// Nodes in different groups cannot talk (a group of one is an isolated node).
    Partition {
        /// The groups.
        groups: Vec<Vec<NodeId>>,
    },
    /// `left` and `right` cannot talk to each other, `bridge` talks to both (Howard 2020).
    Bridge {
        /// The node in the middle.
        bridge: NodeId,
        /// One side.
        left: Vec<NodeId>,
        /// The other side.
        right: Vec<NodeId>,
    },
    /// Messages from `from` to `to` are lost; the other direction works.
    OneWay {
        /// Sender whose messages are lost.
        from: NodeId,
        /// Receiver.
        to: NodeId,
    },
    /// Whoever leads at that moment crashes (right after proposals: Figure 8's crash version) and
    /// restarts after `down_for`.
    CrashLeader {
        /// Downtime.
        down_for: Duration,
    },
    /// The leader, if any, makes the next single-server membership change it can: add a spare as a
    /// learner, promote a caught-up learner, or remove a voter while more than three remain.
    Reconfigure {
        /// Picks among the possible changes.
        choice: u64,
    },
    /// `node` crashes and restarts after `down_for`.
    Crash {
        /// The node.
        node: NodeId,
        /// Downtime.
        down_for: Duration,
    },
}

/// The planned faults of a run, in time order.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// `(time in nanoseconds, fault)`.
    pub events: Vec<(u64, Fault)>,
}

impl FaultPlan {
    /// Draws a plan over `chaos` for `nodes`.
    #[must_use]
    pub fn generate(f: &Faults, nodes: &[NodeId], chaos: Duration, rng: &mut DetRng) -> FaultPlan {
        let voters = nodes;
        let mut events = Vec::new();
        let end = u64::try_from(chaos.as_nanos()).unwrap_or(u64::MAX);
        let (lo, hi) = (
            f.interval_min.as_nanos() as u64,
            f.interval_max.as_nanos() as u64,
        );
        let mut t = 500_000_000u64;
        if voters.len() < 2 || (!f.partitions && !f.crashes) {
            return FaultPlan { events };
        }
        loop {
            t += lo + rng.below(hi.saturating_sub(lo).max(1));
            if t >= end {
                break;
            }
            let mut shuffled = voters.to_vec();
            for i in (1..shuffled.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                shuffled.swap(i, j);
            }
            let roll = rng.below(100);
            if f.membership && rng.below(100) < 30 {
                events.push((
                    t,
                    Fault::Reconfigure {
                        choice: rng.next_u64(),
                    },
                ));
                continue;
            }
            let fault = if f.partitions && roll < 20 {
                Fault::Heal
            } else if f.partitions && roll < 35 {
                // Isolate one node (a minority partition).
                let (one, rest) = shuffled.split_at(1);
                Fault::Partition {
                    groups: vec![one.to_vec(), rest.to_vec()],
                }
            } else if f.partitions && roll < 50 {
                // Split into a majority and a minority of more than one node where possible.
                let cut = (voters.len() - 1) / 2;
                let (minority, majority) = shuffled.split_at(cut.max(1));
                Fault::Partition {
                    groups: vec![minority.to_vec(), majority.to_vec()],
                }
            } else if f.partitions && roll < 60 && voters.len() >= 3 {
                let bridge = shuffled[0];
                let half = (shuffled.len() - 1) / 2;
                Fault::Bridge {
                    bridge,
                    left: shuffled[1..1 + half].to_vec(),
                    right: shuffled[1 + half..].to_vec(),
                }
            } else if f.partitions && roll < 70 {
                Fault::OneWay {
                    from: shuffled[0],
                    to: shuffled[1],
                }
            } else if f.crashes && roll < 85 {
                let down_for = Duration::from_millis(100 + rng.below(3000));
                Fault::Crash {
                    node: shuffled[0],
                    down_for,
                }
            } else if f.crashes {
                Fault::CrashLeader {
                    down_for: Duration::from_millis(100 + rng.below(2000)),
                }
            } else {
                Fault::Heal
            };
            events.push((t, fault));
        }
        FaultPlan { events }
    }
}
