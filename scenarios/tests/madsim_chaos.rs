//! Chaos scenarios in madsim: 3- and 5-node clusters running the KV workload (concurrent clients,
//! puts, compare-and-sets and ReadIndex reads with retries) under partitions, crashes with torn
//! writes, loss, duplication and clock drift. During the run the Raft safety checker observes every
//! node after every step; after the faults heal, a liveness phase requires a stable leader, a new
//! write and a read within a bound; then the nodes must converge and the client history must be
//! linearizable.
//!
//! Run with `cargo simtest` (one seed each) or sweep: `MADSIM_TEST_NUM=1000 cargo simtest`.
#![cfg(madsim)]

mod madsim_support;

use madsim_support::{chaos, sim_config, Fault, Workload};
use paloma_runtime_sim::SimConfig;
use std::time::Duration;

#[madsim::test]
async fn three_nodes_minority_partitions_and_loss() {
    let (summary, _) = chaos(
        "three_nodes_minority_partitions_and_loss",
        3,
        sim_config(),
        Workload::default(),
        &[
            Fault::MinorityPartition,
            Fault::LeaderInMinority,
            Fault::Loss,
        ],
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn five_nodes_majority_no_quorum_and_bridge() {
    let (summary, _) = chaos(
        "five_nodes_majority_no_quorum_and_bridge",
        5,
        sim_config(),
        Workload::default(),
        &[Fault::LeaderInMinority, Fault::NoQuorum, Fault::Bridge],
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn one_way_partitions() {
    let (summary, _) = chaos(
        "one_way_partitions",
        5,
        sim_config(),
        Workload::default(),
        &[Fault::OneWay],
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn kill_restart_with_torn_writes() {
    let (summary, _) = chaos(
        "kill_restart_with_torn_writes",
        3,
        sim_config(),
        Workload::default(),
        &[Fault::Kill, Fault::KillLeaderTorn],
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn duplication_and_clock_drift() {
    // Clocks up to 10% fast or slow: ReadIndex reads must stay linearizable whatever the clocks.
    let cfg = SimConfig {
        drift_ppm_max: 100_000,
        ..sim_config()
    };
    let (summary, _) = chaos(
        "duplication_and_clock_drift",
        3,
        cfg,
        Workload::default(),
        &[Fault::Duplication, Fault::Loss, Fault::LeaderInMinority],
        Duration::from_secs(20),
        50,
    )
    .await;
    println!("{summary}");
}

#[madsim::test]
async fn five_nodes_all_faults() {
    let cfg = SimConfig {
        drift_ppm_max: 20_000,
        ..sim_config()
    };
    let workload = Workload {
        clients: 6,
        keys: 6,
        ..Workload::default()
    };
    let (summary, _) = chaos(
        "five_nodes_all_faults",
        5,
        cfg,
        workload,
        &Fault::ALL,
        Duration::from_secs(30),
        50,
    )
    .await;
    println!("{summary}");
}
