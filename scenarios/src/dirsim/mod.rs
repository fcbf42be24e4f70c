//! The directory simulator: the fast simulator's method (one seeded event queue, a virtual clock
//! per node that drifts, a network that drops, duplicates, delays, reorders and partitions, disks
//! that lose or tear unsynced writes) applied to the composed machines: N [`Replica`]s and many
//! [`Client`]s, each driven through its own sans-IO contract exactly as a runtime would.
//!
//! Every seed draws its own fault profile ([`Faults::swarm`]). The workload registers contended
//! usernames, looks users up (linearizable and local), claims bundles, publishes prekeys,
//! subscribes to presence, deregisters and re-registers, and takes clients offline and back; an
//! attacker sends forged, replayed, invalid and oversized requests and requests before login.
//! The checkers ([`checks`]) run after every step and at the end.

pub mod checks;
mod world;

pub use world::{DirConfig, DirReport, DirSim};

use crate::fastsim::Trace;

/// Runs one seed of the directory family: the report and the story trace.
#[must_use]
pub fn run(cfg: DirConfig) -> (DirReport, Trace) {
    DirSim::new(cfg).run()
}

/// Runs one seed, turning a panic (a broken assertion in a replica or a client) into a failure.
#[must_use]
pub fn run_one(cfg: DirConfig) -> DirReport {
    let seed = cfg.seed;
    crate::sweep::catch_panic(|| run(cfg).0).unwrap_or_else(|failure| DirReport {
        seed,
        failure: Some(failure),
        ..DirReport::default()
    })
}

/// The command that replays `seed` with its story.
#[must_use]
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p paloma-scenarios --bin paloma-sim -- dir --seed {seed}")
}

/// Runs `count` seeds from `first` on `jobs` threads; returns the reports of every seed, in seed
/// order (results do not depend on `jobs`).
#[must_use]
pub fn sweep(first: u64, count: u64, jobs: usize) -> Vec<DirReport> {
    let next = std::sync::atomic::AtomicU64::new(first);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            let tx = tx.clone();
            let next = &next;
            s.spawn(move || loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= first + count {
                    break;
                }
                tx.send(run_one(DirConfig::new(seed)))
                    .expect("the receiver outlives the workers");
            });
        }
    });
    drop(tx);
    let mut reports: Vec<DirReport> = rx.into_iter().collect();
    reports.sort_by_key(|r| r.seed);
    reports
}
