//! Chaos scenarios in madsim: 3- and 5-node clusters running the production driver
//! (`paloma_runtime_tokio::driver`) and the shared KV workload (concurrent clients, puts,
//! compare-and-sets and ReadIndex reads with retries). Each seed draws its own fault profile and
//! plan from the fast simulator's vocabulary (`Faults::swarm`, `FaultPlan::generate`); each
//! scenario says which kinds of faults it wants. During the run the Raft safety checker observes
//! every node after every step; after the faults heal, a liveness phase requires a stable leader, a
//! new write and a read within a bound; then the nodes must converge and the client history must be
//! linearizable.
//!
//! Run with `cargo simtest` (one seed each) or sweep: `MADSIM_TEST_NUM=1000 cargo simtest`.
#![cfg(madsim)]

use paloma_scenarios::fastsim::Faults;
use paloma_scenarios::sim::{chaos, sim_config};
use paloma_scenarios::workload::Workload;
use std::time::Duration;

/// Partitions of every shape (minority, majority, bridge, one-way) and loss; no crashes.
fn partitions() -> Faults {
    Faults {
        crashes: false,
        ..Faults::default()
    }
}

#[madsim::test]
async fn three_nodes_partitions_and_loss() {
    let (summary, _) = chaos(
        "three_nodes_partitions_and_loss",
        3,
        sim_config(),
        Workload::default(),
        &partitions(),
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn five_nodes_partitions_and_bridges() {
    let (summary, _) = chaos(
        "five_nodes_partitions_and_bridges",
        5,
        sim_config(),
        Workload::default(),
        &partitions(),
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn kill_restart_with_torn_writes() {
    // Crashes only, torn writes and targeted crashes while writes are in flight.
    let base = Faults {
        partitions: false,
        ..Faults::default()
    };
    let (summary, _) = chaos(
        "kill_restart_with_torn_writes",
        3,
        sim_config(),
        Workload::default(),
        &base,
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn leadership_transfers_under_faults() {
    let base = Faults {
        transfers: true,
        ..Faults::default()
    };
    let (summary, _) = chaos(
        "leadership_transfers_under_faults",
        3,
        sim_config(),
        Workload::default(),
        &base,
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn five_nodes_all_faults() {
    let base = Faults {
        transfers: true,
        drift_ppm_max: 100_000,
        ..Faults::default()
    };
    let workload = Workload {
        clients: 6,
        keys: 6,
        ..Workload::default()
    };
    let (summary, _) = chaos(
        "five_nodes_all_faults",
        5,
        sim_config(),
        workload,
        &base,
        Duration::from_secs(30),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn loss_duplication_and_clock_drift() {
    // No partitions or crashes: the network alone (loss, duplication, reordering) and clocks up to 10% fast or slow. ReadIndex reads must stay linearizable whatever the clocks.
    let base = Faults {
        partitions: false,
        crashes: false,
        drift_ppm_max: 100_000,
        ..Faults::default()
    };
    let (summary, _) = chaos(
        "loss_duplication_and_clock_drift",
        3,
        sim_config(),
        Workload::default(),
        &base,
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}
