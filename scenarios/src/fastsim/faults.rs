//! The fault vocabulary of the fast simulator: a per-seed fault *profile* (swarm testing: each seed
//! draws its own mix, Groce et al., "Swarm Testing", ISSTA 2012) and the *plan*, a list of timed
//! faults drawn from the seed before the run starts, so that a failing run can be shrunk by removing
//! faults one by one and replayed with a mask.
//!
//! Besides faults at random moments, the plan holds *targeted* faults in the style of
//! FoundationDB's `BUGGIFY`: they arm a trigger and strike at the dangerous moment (a crash while a
//! vote, a term or an append is written but not yet durable; old messages delivered right after a
//! leader change; a partition right after the leader replicated to a minority).

use paloma_core::raft::{Config, ReadMode};
use paloma_core::rng::DetRng;
use paloma_core::NodeId;
use std::time::Duration;

/// Fault rates and kinds for a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Probability (parts per million) that a message is lost.
    pub loss_ppm: u32,
    /// Probability that a message is delivered twice.
    pub dup_ppm: u32,
    /// Probability of a latency spike (up to `spike_max`: long reordering, past election timeouts).
    pub spike_ppm: u32,
    /// Longest latency spike.
    pub spike_max: Duration,
    /// Minimum one-way latency.
    pub delay_min: Duration,
    /// Maximum one-way latency (latencies are independent, so messages reorder).
    pub delay_max: Duration,
    /// Shortest fsync.
    pub disk_latency_min: Duration,
    /// Longest ordinary fsync.
    pub disk_latency_max: Duration,
    /// Probability that an fsync stalls (during the chaos phase).
    pub disk_stall_ppm: u32,
    /// Longest stall.
    pub disk_stall_max: Duration,
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
    /// Plan leadership transfers.
    pub transfers: bool,
    /// Plan targeted faults (crash while unsynced, stale replay, partition after a minority append).
    pub targeted: bool,
    /// Plan lease attacks ([`LeaseAttack`]): a partition, crash or transfer at the moment a lease
    /// is most exposed, with worst-case clock pairs and reads pinned to the old leader.
    pub lease_attacks: bool,
    /// Plan configuration splits ([`Fault::SplitConfig`], Ongaro's single-server change bug).
    pub config_splits: bool,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            loss_ppm: 50_000,
            dup_ppm: 20_000,
            spike_ppm: 5_000,
            spike_max: Duration::from_secs(2),
            delay_min: Duration::from_micros(500),
            delay_max: Duration::from_millis(8),
            disk_latency_min: Duration::from_micros(50),
            // 50 µs plus up to 2 ms (the draw of the first sweeps, kept so old seeds replay).
            disk_latency_max: Duration::from_micros(2050),
            disk_stall_ppm: 0,
            disk_stall_max: Duration::ZERO,
            interval_min: Duration::from_millis(300),
            interval_max: Duration::from_millis(2500),
            partitions: true,
            crashes: true,
            torn_writes: true,
            drift_ppm_max: 100_000,
            membership: false,
            transfers: false,
            targeted: true,
            lease_attacks: false,
            config_splits: false,
        }
    }
}

/// Picks one of `options` (uniformly).
fn pick<T: Copy>(rng: &mut DetRng, options: &[T]) -> T {
    options[rng.below(options.len() as u64) as usize]
}

/// `true` with probability `pct` percent.
fn chance(rng: &mut DetRng, pct: u64) -> bool {
    rng.below(100) < pct
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
            targeted: false,
            ..Faults::default()
        }
    }

    /// Swarm testing: draws this seed's own fault profile on top of `self` (which says which kinds
    /// the family wants: membership and transfers stay as the family set them), and the Raft
    /// settings the faults run against. Rare combinations (very slow fsyncs with frequent crashes,
    /// long delays with leader changes, no pre-vote with heavy loss) then occur in some seeds
    /// instead of never.
    pub fn swarm(&self, raft: &mut Config, rng: &mut DetRng) -> Faults {
        let mut f = self.clone();
        f.loss_ppm = pick(rng, &[0, 10_000, 50_000, 200_000]);
        f.dup_ppm = pick(rng, &[0, 20_000, 100_000]);
        f.spike_ppm = pick(rng, &[0, 5_000, 50_000]);
        let et = raft.election_timeout;
        f.spike_max = pick(rng, &[et / 2, et * 2, et * 4]);
        (f.delay_min, f.delay_max) = pick(
            rng,
            &[
                (Duration::from_micros(100), Duration::from_millis(2)),
                (Duration::from_micros(500), Duration::from_millis(8)),
                (Duration::from_millis(5), Duration::from_millis(60)),
            ],
        );
        (f.disk_latency_min, f.disk_latency_max) = pick(
            rng,
            &[
                (Duration::from_micros(5), Duration::from_micros(100)),
                (Duration::from_micros(50), Duration::from_millis(2)),
                (Duration::from_millis(1), Duration::from_millis(20)),
                (Duration::from_millis(10), Duration::from_millis(300)),
            ],
        );
        (f.disk_stall_ppm, f.disk_stall_max) = pick(
            rng,
            &[
                (0, Duration::ZERO),
                (2_000, Duration::from_millis(500)),
                (20_000, Duration::from_millis(1500)),
            ],
        );
        (f.interval_min, f.interval_max) = pick(
            rng,
            &[
                (Duration::from_millis(100), Duration::from_millis(800)),
                (Duration::from_millis(300), Duration::from_millis(2500)),
                (Duration::from_millis(1000), Duration::from_millis(6000)),
            ],
        );
        f.partitions = chance(rng, 85);
        f.crashes = chance(rng, 85);
        f.torn_writes = chance(rng, 60);
        f.targeted = chance(rng, 70);
        if raft.read_mode == ReadMode::LeaseBased {
            if f.lease_attacks {
                // The configured bound itself varies: the lease's drift margin is 2δ of an election
                // timeout, which a wide bound makes wide enough for a new leader to win inside it.
                raft.clock_drift_max_ppm = pick(rng, &[10_000, 50_000, 200_000]);
            }
            // Lease reads are safe only while clocks drift within the configured bound.
            f.drift_ppm_max = raft.clock_drift_max_ppm;
        } else {
            f.drift_ppm_max = pick(rng, &[0, 10_000, 100_000]);
            raft.check_quorum = chance(rng, 70);
        }
        raft.pre_vote = chance(rng, 70);
        if f.config_splits && !raft.check_quorum {
            // A split can leave a removed voter that no replica tells it was removed (the notice
            // rule's limit, scenarios/MUTATION_RESULTS.md); with neither pre-vote nor check-quorum
            // its ever-higher terms depose every leader (thesis §4.2.3), a known liveness failure.
            raft.pre_vote = true;
        }
        raft.snapshot_chunk_bytes = if f.membership {
            // Joining learners catch up through snapshots in many chunks (chunk resumption).
            pick(rng, &[32, 64, 128])
        } else {
            pick(rng, &[64, 256, 4096])
        };
        raft.snapshot_threshold_entries = pick(rng, &[16, 64, 512]);
        raft.snapshot_trailing_entries = pick(rng, &[0, 8, 64]);
        // Caps small enough that catching up takes many appends, yet not so small that a 60 ms
        // network with one append in flight cannot catch a follower up within the liveness phase.
        raft.append_entries_max = pick(rng, &[4, 16, 512]);
        raft.inflight_messages_max = pick(rng, &[1, 4, 32]);
        f
    }

    /// One line naming the profile (printed with every failure, so a reader sees the mix).
    #[must_use]
    pub fn describe(&self, raft: &Config) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "loss {}% dup {}% spikes {}% (<= {:.0} ms), delay {:.1}-{:.1} ms, fsync {:.3}-{:.1} ms (stalls {}% <= {:.0} ms), faults every {:.1}-{:.1} s{}{}{}{}{}{}{}{}, drift <= {}%; pre-vote {}, check-quorum {}, {:?}, chunk {} B, snapshot every {} (+{} kept), append <= {} x {} in flight",
            self.loss_ppm / 10_000,
            self.dup_ppm / 10_000,
            f64::from(self.spike_ppm) / 10_000.0,
            ms(self.spike_max),
            ms(self.delay_min),
            ms(self.delay_max),
            ms(self.disk_latency_min),
            ms(self.disk_latency_max),
            f64::from(self.disk_stall_ppm) / 10_000.0,
            ms(self.disk_stall_max),
            self.interval_min.as_secs_f64(),
            self.interval_max.as_secs_f64(),
            if self.partitions { ", partitions" } else { "" },
            if self.crashes { ", crashes" } else { "" },
            if self.crashes && self.torn_writes { " (torn)" } else { "" },
            if self.targeted { ", targeted" } else { "" },
            if self.membership { ", membership" } else { "" },
            if self.transfers { ", transfers" } else { "" },
            if self.lease_attacks { ", lease attacks" } else { "" },
            if self.config_splits { ", config splits" } else { "" },
            f64::from(self.drift_ppm_max) / 10_000.0,
            on(raft.pre_vote),
            on(raft.check_quorum),
            raft.read_mode,
            raft.snapshot_chunk_bytes,
            raft.snapshot_threshold_entries,
            raft.snapshot_trailing_entries,
            raft.append_entries_max,
            raft.inflight_messages_max,
        )
    }
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// What a targeted crash waits for: a node with this kind of write handed to its disk and not yet
/// durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsynced {
    /// A vote (the hard state names a candidate it did not name on disk).
    Vote,
    /// A new term.
    Term,
    /// Log entries.
    Append,
    /// An installed snapshot.
    Snapshot,
}

/// A targeted attack on leader leases (thesis §6.4.1): each strikes when a lease is most exposed,
/// and pins reads to the old leader for two election timeouts while writes go to whoever leads
/// elsewhere, so a read served past the true end of the lease is caught by linearizability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAttack {
    /// The leader is cut off alone right after it receives a heartbeat acknowledgement (a round it
    /// counts for its lease; the voters' vote refusal runs from when they heard it).
    CutAfterRound,
    /// A bridge (the leader reaches only `choice`'s voter) until the far voters have been without
    /// the leader for an election timeout; then, right after the bridge voter acknowledges a round,
    /// it crashes and restarts after `down_for` while the leader is cut off: a restarted voter must
    /// still refuse votes for the lease it supported.
    CrashAfterRound {
        /// Downtime of the bridge voter.
        down_for: std::time::Duration,
    },
    /// The leader transfers leadership (thesis §3.10) and is cut off right after its TimeoutNow:
    /// the target campaigns past the voters' stickiness, so the lease must end there.
    TransferThenCut,
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
    /// The leader, if any, transfers leadership to another voter (thesis §3.10).
    Transfer {
        /// Picks the target.
        choice: u64,
    },
    /// `node` crashes and restarts after `down_for`.
    Crash {
        /// The node.
        node: NodeId,
        /// Downtime.
        down_for: Duration,
    },
    /// Targeted: the next node that hands its disk a write of this kind crashes before the write
    /// is durable, and restarts after `down_for`.
    CrashWhileUnsynced {
        /// What must be in flight.
        what: Unsynced,
        /// Downtime.
        down_for: Duration,
    },
    /// Targeted: at the next leader change, `count` messages sent long ago are delivered again.
    StaleReplay {
        /// How many old messages.
        count: u8,
    },
    /// Targeted: as soon as the leader sends new entries, it is cut off with a minority that
    /// received them.
    PartitionAfterMinorityAppend,
    /// Targeted lease attack (see [`LeaseAttack`]).
    Lease {
        /// What strikes.
        attack: LeaseAttack,
        /// First set the clocks to the worst case the configuration allows: the leader's slow by
        /// the full drift bound, every other node's fast by it.
        worst_clocks: bool,
        /// Picks the voter the attack uses (bridge voter, transfer target).
        choice: u64,
    },
    /// Targeted, Ongaro's single-server membership bug (raft-dev, 2015): the leader of an even
    /// number of voters is cut off alone (with the learner it promotes, if so) and appends a
    /// configuration change only it holds; the first append of the next leader elsewhere cuts the
    /// network again so that the old leader's side holds a quorum of the old leader's new
    /// configuration and the new leader's side a quorum of a change the new leader proposes at
    /// once, before its first entry commits. Safe only if the new leader refuses to change the
    /// configuration until an entry of its term is committed.
    SplitConfig {
        /// Picks the two changes.
        choice: u64,
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
        if voters.len() < 2 || (!f.partitions && !f.crashes && !f.transfers && !f.membership) {
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
            // Drawn only by the families that ask for them (the other families' plans are as before).
            if f.config_splits && rng.below(100) < 25 {
                events.push((
                    t,
                    Fault::SplitConfig {
                        choice: rng.next_u64(),
                    },
                ));
                continue;
            }
            if f.lease_attacks && rng.below(100) < 50 {
                let attack = match rng.below(10) {
                    0..=4 => LeaseAttack::CutAfterRound,
                    5..=7 if f.crashes => LeaseAttack::CrashAfterRound {
                        down_for: Duration::from_millis(1 + rng.below(60)),
                    },
                    5..=7 => LeaseAttack::CutAfterRound,
                    _ => LeaseAttack::TransferThenCut,
                };
                events.push((
                    t,
                    Fault::Lease {
                        attack,
                        worst_clocks: chance(rng, 75),
                        choice: rng.next_u64(),
                    },
                ));
                continue;
            }
            if f.membership && rng.below(100) < 30 {
                events.push((
                    t,
                    Fault::Reconfigure {
                        choice: rng.next_u64(),
                    },
                ));
                continue;
            }
            if f.transfers && rng.below(100) < 30 {
                events.push((
                    t,
                    Fault::Transfer {
                        choice: rng.next_u64(),
                    },
                ));
                continue;
            }
            if f.targeted && rng.below(100) < 25 {
                let fault = match rng.below(6) {
                    0 | 1 if f.crashes => Fault::CrashWhileUnsynced {
                        what: pick(
                            rng,
                            &[
                                Unsynced::Vote,
                                Unsynced::Term,
                                Unsynced::Append,
                                Unsynced::Snapshot,
                            ],
                        ),
                        down_for: Duration::from_millis(50 + rng.below(2000)),
                    },
                    2 | 3 => Fault::StaleReplay {
                        count: 1 + rng.below(16) as u8,
                    },
                    _ if f.partitions => Fault::PartitionAfterMinorityAppend,
                    _ => Fault::StaleReplay {
                        count: 1 + rng.below(16) as u8,
                    },
                };
                events.push((t, fault));
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
