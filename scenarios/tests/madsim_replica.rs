//! The composed replica (directory, presence, client protocol) under madsim, through the
//! production driver: `cargo simtest -- --exact <name>`; a sweep:
//! `MADSIM_TEST_SEED=1 MADSIM_TEST_NUM=100 cargo simtest --release -- replica`.
//! See `paloma_scenarios::sim::replica` for what runs and what is checked.

#![cfg(madsim)]

use paloma_scenarios::fastsim::Faults;
use paloma_scenarios::sim::replica::replica_chaos;
use paloma_scenarios::sim::sim_config;
use std::time::Duration;

/// Three replicas and eight users under the seed's swarm profile: partitions, crashes with torn
/// writes, loss, duplication, reordering, clock drift.
#[madsim::test]
async fn replica_directory_under_chaos() {
    let summary = replica_chaos(
        "replica_directory_under_chaos",
        sim_config(),
        8,
        &Faults::default(),
        Duration::from_secs(12),
        3,
    )
    .await;
    println!("{summary}");
}

/// The same without faults: six users for six names, so every one of them must end up holding one.
#[madsim::test]
async fn replica_directory_quiet() {
    let summary = replica_chaos(
        "replica_directory_quiet",
        sim_config(),
        6,
        &Faults::none(),
        Duration::from_secs(3),
        6,
    )
    .await;
    println!("{summary}");
}
