//! Seed sweep of the directory family under plain `cargo test`: replicas and clients under
//! swarm-drawn faults, an attacker, and the directory checkers (`paloma_scenarios::dirsim`). The
//! range is fresh for every commit (`fresh_first_seed`, printed); `PALOMA_SWEEP_FIRST` replays a
//! range and `PALOMA_SWEEP_SEEDS` runs more (`paloma-sim dir --seeds N` too).

use paloma_scenarios::dirsim::{replay_command, sweep};
use paloma_scenarios::sweep::fresh_first_seed;

#[test]
fn sweep_directory() {
    let count = std::env::var("PALOMA_SWEEP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let first = fresh_first_seed();
    println!(
        "directory: seeds {first}..{} (replay this range: PALOMA_SWEEP_FIRST={first} PALOMA_SWEEP_SEEDS={count} cargo test -p paloma-scenarios --test dir_sweep)",
        first + count
    );
    let reports = sweep(first, count, 1);
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.failure.is_some())
        .map(|r| format!("{}\n  replay: {}", r.summary(), replay_command(r.seed)))
        .collect();
    let o = reports.iter().fold((0, 0, 0, 0, 0, 0), |a, r| {
        (
            a.0 + r.observed.registered,
            a.1 + r.observed.claims,
            a.2 + r.observed.lookups_checked,
            a.3 + r.observed.attacks_refused,
            a.4 + r.observed.mailbox.fetched,
            a.5 + r.observed.mailbox.stored_copies,
        )
    });
    println!(
        "directory: {} passed, {} failed; {} registrations, {} claims, {} linearizable lookups checked, {} attacks refused, {} acknowledged deposits delivered and checked, {} stored envelope copies verified",
        reports.len() - failed.len(),
        failed.len(),
        o.0,
        o.1,
        o.2,
        o.3,
        o.4,
        o.5
    );
    assert!(
        failed.is_empty(),
        "{} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // The sweep must exercise what it checks, or it proves nothing.
    assert!(
        o.0 > 0 && o.1 > 0 && o.2 > 0 && o.3 > 0 && o.4 > 0 && o.5 > 0,
        "the workload did not reach every checker"
    );
}
