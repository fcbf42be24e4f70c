//! Seed sweeps, shrinking of failing runs, and the replay command line a failure prints.

use crate::fastsim::{Faults, Report, Sim, SimConfig, Trace};
use paloma_core::raft::{Config, ReadMode};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static PANIC_LOCATION: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Which scenario family a seed runs. Every family draws each seed's own fault profile and Raft
/// settings (swarm testing, [`crate::fastsim::Faults::swarm`]); the family fixes the cluster shape
/// and which operations the nemesis performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// 5 nodes, all faults ([`SimConfig::chaos`]).
    Chaos5,
    /// 3 nodes, all faults.
    Chaos3,
    /// 3 voters and 3 spares, all faults plus membership changes (add, promote, remove); learners
    /// catch up through snapshots sent in many small chunks.
    Membership,
    /// 5 nodes, all faults plus leadership transfers.
    Transfer,
    /// 3 nodes, lease-based reads, clocks drifting within the configured bound.
    Lease,
    /// `Lease` plus leadership transfers and lease attacks: a leader cut off right after a round,
    /// a supporting voter crashed and restarted right after its acknowledgement, a leader cut off
    /// right after its TimeoutNow, worst-case clock pairs; reads pinned to the old leader.
    LeaseAttack,
    /// 4 voters and 2 spares, membership changes plus configuration splits (Ongaro 2015): a change
    /// proposed by a leader the moment it wins, while an old leader holds a different uncommitted
    /// change on the other side of a partition.
    Membership4,
}

impl Family {
    /// Every family, in sweep order.
    pub const ALL: [Family; 7] = [
        Family::Chaos5,
        Family::Chaos3,
        Family::Membership,
        Family::Transfer,
        Family::Lease,
        Family::LeaseAttack,
        Family::Membership4,
    ];

    /// The configuration of `seed` in this family.
    #[must_use]
    pub fn config(self, seed: u64) -> SimConfig {
        let base = SimConfig {
            swarm: true,
            ..SimConfig::chaos(seed)
        };
        match self {
            Family::Chaos5 => base,
            Family::Chaos3 => SimConfig {
                nodes: 3,
                clients: 3,
                ..base
            },
            Family::Membership => SimConfig {
                nodes: 3,
                spares: 3,
                clients: 3,
                faults: Faults {
                    membership: true,
                    ..base.faults.clone()
                },
                ..base
            },
            Family::Transfer => SimConfig {
                faults: Faults {
                    transfers: true,
                    ..base.faults.clone()
                },
                ..base
            },
            Family::Lease => SimConfig {
                nodes: 3,
                clients: 3,
                read_pct: 50,
                raft: Config {
                    read_mode: ReadMode::LeaseBased,
                    check_quorum: true,
                    ..base.raft.clone()
                },
                ..base
            },
            Family::LeaseAttack => {
                let lease = Family::Lease.config(seed);
                SimConfig {
                    faults: Faults {
                        transfers: true,
                        lease_attacks: true,
                        ..lease.faults.clone()
                    },
                    ..lease
                }
            }
            Family::Membership4 => SimConfig {
                nodes: 4,
                spares: 2,
                clients: 3,
                faults: Faults {
                    membership: true,
                    config_splits: true,
                    ..base.faults.clone()
                },
                ..base
            },
        }
    }

    /// The name used on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Family::Chaos5 => "chaos5",
            Family::Chaos3 => "chaos3",
            Family::Membership => "membership",
            Family::Transfer => "transfer",
            Family::Lease => "lease",
            Family::LeaseAttack => "lease-attack",
            Family::Membership4 => "membership4",
        }
    }

    /// Parses a family name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// The first seed of a sweep that `cargo test` runs: `PALOMA_SWEEP_FIRST` if set, otherwise
/// derived from the commit being tested (`git rev-parse HEAD`), so every commit explores seeds no
/// earlier run saw, and the printed number replays them. Falls back to 1 outside a git checkout.
#[must_use]
pub fn fresh_first_seed() -> u64 {
    if let Some(first) = std::env::var("PALOMA_SWEEP_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return first;
    }
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    head.and_then(|h| u64::from_str_radix(h.get(..12)?, 16).ok())
        // Past the fixed ranges of the documented sweeps, and small enough to type.
        .map_or(1, |x| 1_000_000 + x % 1_000_000_000)
}

/// Runs one configuration, turning a panic (a broken assertion inside the core) into a failure.
pub fn run_one(cfg: SimConfig) -> (Report, Trace) {
    let previous = std::panic::take_hook();
    install_quiet_hook();
    let result = run_caught(cfg);
    std::panic::set_hook(previous);
    result
}

/// Replaces the panic hook with one that only records where the panic happened (per thread).
fn install_quiet_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        PANIC_LOCATION.with(|p| *p.borrow_mut() = location);
    }));
}

fn run_caught(cfg: SimConfig) -> (Report, Trace) {
    let seed = cfg.seed;
    catch_panic(|| Sim::new(cfg).run()).unwrap_or_else(|failure| {
        (
            Report {
                seed,
                failure: Some(failure),
                ..Report::default()
            },
            Trace::default(),
        )
    })
}

/// Runs `f`, turning a panic (a broken assertion inside the core) into a failure line: the
/// message, and where it happened when the quiet hook of [`run_one`] recorded it.
pub fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "panic".into());
        let location = PANIC_LOCATION.with(|p| p.borrow().clone());
        format!("panic{location}: {msg}")
    })
}

/// The command that replays `seed` (with an optional fault mask) and prints its trace.
#[must_use]
pub fn replay_command(family: Family, seed: u64, mask: Option<&BTreeSet<usize>>) -> String {
    let faults = mask.map_or(String::new(), |m| {
        format!(
            " --faults {}",
            m.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    });
    format!("cargo run --release -p paloma-scenarios --bin paloma-sim -- replay --family {} --seed {seed}{faults}", family.name())
}

/// Shrinks a failing run by removing planned faults one at a time while it still fails
/// (greedy delta debugging). Returns the smallest failing mask found.
pub fn shrink(family: Family, seed: u64) -> BTreeSet<usize> {
    let planned = Sim::new(family.config(seed)).planned_faults();
    let mut mask: BTreeSet<usize> = (0..planned).collect();
    let fails = |mask: &BTreeSet<usize>| {
        let cfg = SimConfig {
            fault_mask: Some(mask.clone()),
            ..family.config(seed)
        };
        run_one(cfg).0.failure.is_some()
    };
    if !fails(&mask) {
        return mask;
    }
    let mut changed = true;
    while changed {
        changed = false;
        for i in mask.clone() {
            let mut smaller = mask.clone();
            smaller.remove(&i);
            if fails(&smaller) {
                mask = smaller;
                changed = true;
            }
        }
    }
    mask
}

/// The outcome of a sweep.
#[derive(Clone, Debug, Default)]
pub struct SweepResult {
    /// Seeds that passed.
    pub passed: u64,
    /// Failing seeds with their reports.
    pub failed: Vec<Report>,
    /// Simulated seconds in total.
    pub simulated_secs: f64,
}

/// Runs `count` seeds from `first` on `jobs` threads, calling `progress` after each seed (from the
/// thread that ran it). Results do not depend on `jobs`: every seed is its own world.
pub fn sweep(
    family: Family,
    first: u64,
    count: u64,
    jobs: usize,
    progress: impl Fn(u64, &Report) + Sync,
) -> SweepResult {
    let previous = std::panic::take_hook();
    install_quiet_hook();
    let jobs = jobs.max(1) as u64;
    let per_thread: Vec<SweepResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|k| {
                let progress = &progress;
                scope.spawn(move || {
                    let mut out = SweepResult::default();
                    let mut seed = first + k;
                    while seed < first + count {
                        let (report, _) = run_caught(family.config(seed));
                        out.simulated_secs += report.sim_time.as_secs_f64();
                        progress(seed, &report);
                        if report.failure.is_some() {
                            out.failed.push(report);
                        } else {
                            out.passed += 1;
                        }
                        seed += jobs;
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sweep thread"))
            .collect()
    });
    std::panic::set_hook(previous);
    let mut out = SweepResult::default();
    for r in per_thread {
        out.passed += r.passed;
        out.failed.extend(r.failed);
        out.simulated_secs += r.simulated_secs;
    }
    out.failed.sort_by_key(|r| r.seed);
    out
}
