//! Simulation speed of both simulators: simulated seconds per wall second for 5-node chaos runs,
//! beside a fault-free 5-node run of the same simulator measured in the same process (the
//! baseline: what the faults, the checkers and crash recovery cost on top of plain replication).
//!
//! ```sh
//! cargo bench -p paloma-scenarios --bench simspeed    # the fast simulator (scenarios/src/fastsim)
//! cargo simbench                                      # both: the fast simulator and madsim
//! SIMSPEED_SEEDS=50 cargo simbench                    # more seeds per row
//! ```
//!
//! `cargo simbench` is the alias in `.cargo/config.toml` that builds this bench with `--cfg madsim`
//! in `target/sim`, where the madsim rows exist.

// A bench measures wall time: that is its purpose (clippy.toml bans clock reads for the core).
#![allow(clippy::disallowed_methods)]

use paloma_scenarios::fastsim::{Faults, SimConfig};
use paloma_scenarios::sweep::run_one;
use std::time::{Duration, Instant};

fn seeds() -> u64 {
    std::env::var("SIMSPEED_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

struct Row {
    simulator: &'static str,
    scenario: &'static str,
    runs: u64,
    simulated: Duration,
    wall: Duration,
}

impl Row {
    fn print(&self) {
        let speed = self.simulated.as_secs_f64() / self.wall.as_secs_f64().max(1e-9);
        println!(
            "{:<8} {:<44} {:>5} {:>12.1} {:>9.2} {:>8.0}x",
            self.simulator,
            self.scenario,
            self.runs,
            self.simulated.as_secs_f64(),
            self.wall.as_secs_f64(),
            speed
        );
    }
}

/// Runs `cfg(seed)` for every seed and adds up simulated and wall time; a failing run aborts
/// the bench (a speed figure of a broken run means nothing).
fn fast_row(scenario: &'static str, cfg: impl Fn(u64) -> SimConfig) -> Row {
    let mut row = Row {
        simulator: "fast",
        scenario,
        runs: 0,
        simulated: Duration::ZERO,
        wall: Duration::ZERO,
    };
    for seed in 1..=seeds() {
        let start = Instant::now();
        let (report, _) = run_one(cfg(seed));
        row.wall += start.elapsed();
        assert_eq!(report.failure, None, "{}", report.summary());
        row.simulated += report.sim_time;
        row.runs += 1;
    }
    row
}

#[cfg(madsim)]
fn madsim_row(scenario: &'static str, all_faults: bool) -> Row {
    use paloma_scenarios::sim::{chaos, sim_config};
    use paloma_scenarios::workload::Workload;
    let mut row = Row {
        simulator: "madsim",
        scenario,
        runs: 0,
        simulated: Duration::ZERO,
        wall: Duration::ZERO,
    };
    for seed in 1..=seeds() {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        let start = Instant::now();
        // The settings of `five_nodes_all_faults` in tests/madsim_chaos.rs; the baseline runs the
        // same phases with no faults and no drift.
        let simulated = rt.block_on(async move {
            let cfg = sim_config();
            let workload = Workload {
                clients: 6,
                keys: 6,
                ..Workload::default()
            };
            let faults = if all_faults {
                Faults {
                    transfers: true,
                    drift_ppm_max: 100_000,
                    ..Faults::default()
                }
            } else {
                Faults::none()
            };
            chaos(
                scenario,
                5,
                cfg,
                workload,
                &faults,
                Duration::from_secs(30),
                50,
            )
            .await
            .1
        });
        row.wall += start.elapsed();
        row.simulated += simulated;
        row.runs += 1;
    }
    row
}

fn main() {
    println!(
        "paloma simulation speed: 5-node runs, {} seeds per row, simulated seconds per wall second",
        seeds()
    );
    println!(
        "{:<8} {:<44} {:>5} {:>12} {:>9} {:>9}",
        "sim", "scenario", "runs", "simulated s", "wall s", "speed"
    );
    fast_row("5 nodes, no faults (baseline)", |seed| SimConfig {
        faults: Faults::none(),
        ..SimConfig::chaos(seed)
    })
    .print();
    fast_row("chaos5: all faults, uniform mix", SimConfig::chaos).print();
    fast_row("chaos5 family: swarm profiles", |seed| {
        paloma_scenarios::sweep::Family::Chaos5.config(seed)
    })
    .print();
    #[cfg(madsim)]
    {
        madsim_row("5 nodes, no faults (baseline)", false).print();
        madsim_row("five_nodes_all_faults", true).print();
    }
    #[cfg(not(madsim))]
    println!("madsim rows: run `cargo simbench` (this bench built with --cfg madsim)");
}
