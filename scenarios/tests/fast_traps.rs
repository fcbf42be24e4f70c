//! The known Raft traps (etcd raft's interaction tests, the Raft paper's Figure 8, Jepsen's etcd analyses) as deterministic scenarios on the fast
//! simulator. Each drives the cluster into the trap, asserts what must (not) happen, then lets the
//! run finish so the safety checkers, the liveness phase and the linearizability check all apply.

use paloma_core::raft::io::Role;
use paloma_core::raft::{MembershipChange, ReadMode};
use paloma_core::{ClientId, NodeId, ReadId, Term};
use paloma_scenarios::fastsim::{Faults, Report, Sim, SimConfig};
use paloma_scenarios::history::KvOp;
use paloma_scenarios::kv::KvCommand;
use paloma_scenarios::sweep::replay_command;
use std::time::Duration;

const SEC: u64 = 1_000_000_000;

fn quiet(seed: u64, nodes: u64) -> SimConfig {
    SimConfig {
        nodes,
        faults: Faults::none(),
        chaos: Duration::from_secs(30),
        liveness: Duration::from_secs(8),
        ..SimConfig::chaos(seed)
    }
}

fn assert_passed(report: &Report) {
    assert!(report.failure.is_none(), "{}", report.summary());
    assert!(
        report.observations > 1000,
        "the checkers ran: {}",
        report.summary()
    );
}

fn term_of(sim: &Sim, id: NodeId) -> Term {
    sim.node(id).expect("live").status().term
}

fn wait_leader(sim: &mut Sim, within: u64) -> NodeId {
    let deadline = sim.now_nanos() + within;
    while sim.now_nanos() < deadline {
        let t = sim.now_nanos() + SEC / 20;
        sim.run_until(t).expect("safety");
        if let Some(l) = sim.leader() {
            return l;
        }
    }
    panic!("no leader within {}s", within / SEC);
}

/// Figure 8, crash version: leaders crash right after proposing, others restart at random, over
/// many seeds; committed entries must never change (checked after every step).
#[test]
fn figure_8_leader_crashes_after_propose() {
    for seed in 0..40 {
        let faults = Faults {
            partitions: false,
            interval_min: Duration::from_millis(200),
            interval_max: Duration::from_millis(900),
            ..Faults::none()
        };
        let faults = Faults {
            crashes: true,
            torn_writes: true,
            ..faults
        };
        let cfg = SimConfig {
            nodes: 5,
            faults,
            chaos: Duration::from_secs(15),
            liveness: Duration::from_secs(8),
            ..SimConfig::chaos(seed)
        };
        let (report, _) = Sim::new(cfg).run();
        assert!(
            report.failure.is_none(),
            "{}\nreplay: {}",
            report.summary(),
            replay_command(paloma_scenarios::sweep::Family::Chaos5, seed, None)
        );
        assert!(report.crashes.0 > 5, "{}", report.summary());
    }
}

/// Figure 8, unreliable version: 10% loss, duplication and reordering up to two election timeouts.
#[test]
fn figure_8_unreliable_network() {
    for seed in 100..130 {
        let faults = Faults {
            loss_ppm: 100_000,
            dup_ppm: 50_000,
            spike_ppm: 50_000,
            partitions: false,
            ..Faults::default()
        };
        let cfg = SimConfig {
            faults,
            chaos: Duration::from_secs(15),
            liveness: Duration::from_secs(10),
            ..SimConfig::chaos(seed)
        };
        let (report, _) = Sim::new(cfg).run();
        assert_passed(&report);
    }
}

/// A partitioned leader with a stale term: the majority elects a new leader, the old one steps down
/// (check-quorum) and serves no ReadIndex read; on heal it rejoins without another election.
#[test]
fn partitioned_leader_with_stale_term() {
    let mut sim = Sim::new(quiet(7, 5));
    let old = wait_leader(&mut sim, 5 * SEC);
    sim.run_until(sim.now_nanos() + 2 * SEC).unwrap();
    let old_term = term_of(&sim, old);
    let rest: Vec<NodeId> = (1..=5).map(NodeId).filter(|n| *n != old).collect();
    sim.partition(vec![vec![old], rest.clone()]).unwrap();
    // A read on the isolated leader: it must fail, never be served.
    sim.with_node(old, |n, now, _| n.read(now, ReadId(9_000_001)))
        .unwrap()
        .unwrap();
    sim.run_until(sim.now_nanos() + 5 * SEC).unwrap();
    let new = sim.leader().expect("the majority elected a leader");
    assert_ne!(new, old);
    assert!(term_of(&sim, new) > old_term);
    assert_ne!(
        sim.node(old).unwrap().status().role,
        Role::Leader,
        "check-quorum: the isolated leader stepped down"
    );
    let new_term = term_of(&sim, new);
    sim.heal();
    sim.run_until(sim.now_nanos() + 3 * SEC).unwrap();
    assert_eq!(sim.leader(), Some(new), "no election after heal");
    assert_eq!(term_of(&sim, new), new_term);
    assert_eq!(
        term_of(&sim, old),
        new_term,
        "the old leader learned the new term"
    );
    let (report, _) = sim.run();
    assert_passed(&report);
}

/// A node partitioned for many election timeouts rejoins. With pre-vote and check-quorum its term
/// does not rise and the leader is undisturbed; without them it disrupts the cluster (the contrast
/// shows the test can fail).
#[test]
fn rejoin_after_long_partition_prevote() {
    for (pre_vote, expect_disruption) in [(true, false), (false, true)] {
        let mut cfg = quiet(11, 5);
        cfg.raft.pre_vote = pre_vote;
        cfg.raft.check_quorum = pre_vote;
        let mut sim = Sim::new(cfg);
        let leader = wait_leader(&mut sim, 5 * SEC);
        let term = term_of(&sim, leader);
        let follower = (1..=5).map(NodeId).find(|n| *n != leader).unwrap();
        let rest: Vec<NodeId> = (1..=5).map(NodeId).filter(|n| *n != follower).collect();
        sim.partition(vec![vec![follower], rest]).unwrap();
        sim.run_until(sim.now_nanos() + 20 * SEC).unwrap();
        assert_eq!(sim.leader(), Some(leader));
        if pre_vote {
            assert_eq!(
                term_of(&sim, follower),
                term,
                "pre-vote kept the isolated node's term"
            );
        } else {
            assert!(
                term_of(&sim, follower).0 > term.0 + 3,
                "without pre-vote the isolated node's term runs away"
            );
        }
        sim.heal();
        sim.run_until(sim.now_nanos() + 5 * SEC).unwrap();
        let disrupted = term_of(&sim, sim.leader().expect("leader after heal")) != term;
        assert_eq!(disrupted, expect_disruption, "pre_vote={pre_vote}");
        let (report, _) = sim.run();
        assert_passed(&report);
    }
}

/// The 5-node bridge of Howard 2020: two halves that see only the bridge node. With pre-vote and
/// check-quorum a leader emerges and stays.
#[test]
fn bridge_partition_keeps_a_stable_leader() {
    let mut sim = Sim::new(quiet(13, 5));
    wait_leader(&mut sim, 5 * SEC);
    let bridge = NodeId(3);
    let faults_bridge = paloma_scenarios::fastsim::Fault::Bridge {
        bridge,
        left: vec![NodeId(1), NodeId(2)],
        right: vec![NodeId(4), NodeId(5)],
    };
    sim.inject_fault(faults_bridge).unwrap();
    sim.run_until(sim.now_nanos() + 8 * SEC).unwrap();
    let leader = sim.leader().expect("a leader under the bridge partition");
    let term = term_of(&sim, leader);
    sim.run_until(sim.now_nanos() + 10 * SEC).unwrap();
    assert_eq!(
        sim.leader(),
        Some(leader),
        "stable for 10 election timeouts"
    );
    assert_eq!(term_of(&sim, leader), term);
    let (report, _) = sim.run();
    assert_passed(&report);
}

/// Membership changes while the network is partitioned: add two learners, promote one, remove a
/// voter; a change needs a quorum of the old config and a minority side cannot make one.
#[test]
fn membership_change_under_partition() {
    let mut cfg = quiet(17, 3);
    cfg.spares = 2;
    let mut sim = Sim::new(cfg);
    let leader = wait_leader(&mut sim, 5 * SEC);
    sim.run_until(sim.now_nanos() + SEC).unwrap();
    for change in [
        MembershipChange::AddLearner(NodeId(4)),
        MembershipChange::AddLearner(NodeId(5)),
    ] {
        let leader = sim.leader().unwrap();
        sim.with_node(leader, |n, now, unix| {
            n.change_membership(now, unix, change)
        })
        .unwrap()
        .expect("change accepted");
        sim.run_until(sim.now_nanos() + SEC).unwrap();
    }
    // Isolate the leader with one learner: it cannot promote there (no quorum of voters).
    let minority = vec![leader, NodeId(4)];
    let majority: Vec<NodeId> = [1, 2, 3, 5]
        .map(NodeId)
        .into_iter()
        .filter(|n| *n != leader)
        .collect();
    sim.partition(vec![minority, majority.clone()]).unwrap();
    let promoted = sim
        .with_node(leader, |n, now, unix| {
            n.change_membership(now, unix, MembershipChange::Promote(NodeId(4)))
        })
        .unwrap();
    sim.run_until(sim.now_nanos() + 6 * SEC).unwrap();
    let new_leader = sim.leader().expect("majority side leads");
    assert!(majority.contains(&new_leader));
    // The minority's promotion never committed: the new leader's membership does not have n4 voting.
    let m = sim.node(new_leader).unwrap().status().membership;
    assert!(
        !m.is_voter(NodeId(4)),
        "uncommitted promotion on the minority side rolled back ({promoted:?})"
    );
    sim.with_node(new_leader, |n, now, unix| {
        n.change_membership(now, unix, MembershipChange::Promote(NodeId(5)))
    })
    .unwrap()
    .expect("promote n5");
    sim.run_until(sim.now_nanos() + 2 * SEC).unwrap();
    sim.heal();
    sim.run_until(sim.now_nanos() + 3 * SEC).unwrap();
    let leader = sim.leader().unwrap();
    let removed = (1..=3).map(NodeId).find(|n| *n != leader).unwrap();
    sim.with_node(leader, |n, now, unix| {
        n.change_membership(now, unix, MembershipChange::Remove(removed))
    })
    .unwrap()
    .expect("remove");
    sim.run_until(sim.now_nanos() + 3 * SEC).unwrap();
    for id in (1..=5).map(NodeId).filter(|n| *n != removed) {
        let m = sim.node(id).unwrap().status().membership;
        assert!(
            m.is_voter(NodeId(5)) && !m.contains(removed),
            "{id} sees {m:?}"
        );
    }
    let (report, _) = sim.run();
    assert_passed(&report);
}

/// The leader crashes right after appending a membership change; whatever the outcome, every
/// node converges on one membership and safety holds.
#[test]
fn leader_crash_during_membership_change() {
    for seed in 0..10 {
        let mut cfg = quiet(200 + seed, 3);
        cfg.spares = 1;
        let mut sim = Sim::new(cfg);
        let leader = wait_leader(&mut sim, 5 * SEC);
        sim.run_until(sim.now_nanos() + SEC).unwrap();
        sim.with_node(leader, |n, now, unix| {
            n.change_membership(now, unix, MembershipChange::AddLearner(NodeId(4)))
        })
        .unwrap()
        .unwrap();
        // Let the entry travel for a seed-dependent moment, then crash the leader.
        sim.run_until(sim.now_nanos() + seed * 1_000_000).unwrap();
        sim.crash(leader);
        sim.run_until(sim.now_nanos() + 4 * SEC).unwrap();
        sim.restart(leader).unwrap();
        sim.run_until(sim.now_nanos() + 4 * SEC).unwrap();
        let views: Vec<_> = (1..=3)
            .map(|i| sim.node(NodeId(i)).unwrap().status().membership)
            .collect();
        assert!(
            views.windows(2).all(|w| w[0] == w[1]),
            "seed {seed}: memberships diverge: {views:?}"
        );
        let (report, _) = sim.run();
        assert_passed(&report);
    }
}

/// A follower down long enough that the leader compacts past it catches up through a chunked
/// snapshot while new appends keep arriving; lossy links make chunks go missing and resume.
#[test]
fn snapshot_install_races_new_appends() {
    let mut cfg = quiet(23, 3);
    cfg.faults.loss_ppm = 50_000;
    cfg.faults.dup_ppm = 20_000;
    let mut sim = Sim::new(cfg);
    let leader = wait_leader(&mut sim, 5 * SEC);
    let lagging = (1..=3).map(NodeId).find(|n| *n != leader).unwrap();
    sim.crash(lagging);
    sim.run_until(sim.now_nanos() + 6 * SEC).unwrap();
    let leader_snap = sim.node(leader).unwrap().log().snapshot().meta.last.index;
    assert!(
        leader_snap.0 > 200,
        "leader compacted while the follower was down"
    );
    sim.restart(lagging).unwrap();
    sim.run_until(sim.now_nanos() + 6 * SEC).unwrap();
    let node = sim.node(lagging).unwrap();
    assert!(
        node.stats().snapshots_installed >= 1,
        "caught up through a snapshot"
    );
    let lead_commit = sim.node(sim.leader().unwrap()).unwrap().status().commit;
    assert!(
        node.status().commit.0 + 64 >= lead_commit.0,
        "caught up: {:?} vs {:?}",
        node.status().commit,
        lead_commit
    );
    let (report, _) = sim.run();
    assert_passed(&report);
}

/// Leases are unsafe under clock drift: the leader's clock runs slow, the others' fast; cut off,
/// the old leader still believes in its lease while a new leader commits a write, and serves a stale
/// read. The linearizability checker must catch it. The same schedule with ReadIndex stays safe.
#[test]
fn lease_read_breaks_under_clock_drift() {
    for mode in [ReadMode::LeaseBased, ReadMode::ReadIndex] {
        let mut cfg = quiet(29, 3);
        cfg.raft.read_mode = mode;
        cfg.clients = 0;
        let mut sim = Sim::new(cfg);
        let old = wait_leader(&mut sim, 5 * SEC);
        for id in (1..=3).map(NodeId) {
            sim.set_drift(id, if id == old { -500_000 } else { 500_000 });
        }
        // A committed write of 1, then heartbeats renew the lease.
        let put = |value: u64| KvCommand::Put { key: 0, value }.encode();
        let op = {
            let t = sim.now_nanos();
            sim.history_mut()
                .invoke(1, KvOp::Put { key: 0, value: 1 }, t)
        };
        sim.with_node(old, |n, now, unix| {
            n.propose(now, unix, ClientId(1), 1, put(1))
        })
        .unwrap()
        .unwrap();
        sim.run_until(sim.now_nanos() + SEC / 2).unwrap();
        let prev = None;
        {
            let t = sim.now_nanos();
            sim.history_mut().complete(op, prev, t)
        };
        let rest: Vec<NodeId> = (1..=3).map(NodeId).filter(|n| *n != old).collect();
        sim.partition(vec![vec![old], rest.clone()]).unwrap();
        let new = loop {
            sim.run_until(sim.now_nanos() + SEC / 50).unwrap();
            if let Some(l) = rest
                .iter()
                .copied()
                .find(|id| sim.node(*id).unwrap().status().role == Role::Leader)
            {
                break l;
            }
            assert!(sim.now_nanos() < 60 * SEC, "no new leader");
        };
        let op = {
            let t = sim.now_nanos();
            sim.history_mut()
                .invoke(2, KvOp::Put { key: 0, value: 2 }, t)
        };
        sim.with_node(new, |n, now, unix| {
            n.propose(now, unix, ClientId(2), 1, put(2))
        })
        .unwrap()
        .unwrap();
        while sim.node(new).unwrap().state_machine().get(0) != Some(2) {
            sim.run_until(sim.now_nanos() + 1_000_000).unwrap();
        }
        {
            let t = sim.now_nanos();
            sim.history_mut().complete(op, Some(1), t)
        };
        // Now, strictly after the write returned, read on the old leader.
        sim.run_until(sim.now_nanos() + 1_000_000).unwrap();
        let read_at = sim.now_nanos();
        let read = sim.history_mut().invoke(3, KvOp::Get { key: 0 }, read_at);
        let served = sim.with_node(old, |n, now, _| {
            n.read(now, ReadId(1)).unwrap();
            n.state_machine().get(0)
        });
        sim.run_until(sim.now_nanos() + 1_000_000).unwrap();
        let lease_still_held = sim.node(old).unwrap().status().role == Role::Leader;
        let was_served = sim
            .reads_served()
            .iter()
            .any(|(n, id, _)| *n == old && *id == ReadId(1));
        match mode {
            ReadMode::LeaseBased => {
                assert!(
                    lease_still_held,
                    "the drifting leader still believes it leads"
                );
                assert!(was_served, "the lease read was answered at once");
                {
                    let t = sim.now_nanos();
                    sim.history_mut().complete(read, served.unwrap(), t)
                };
                let verdict = sim.history().check_linearizable();
                assert!(
                    verdict.is_err(),
                    "the checker must catch the stale lease read"
                );
            }
            ReadMode::ReadIndex => {
                // ReadIndex needs a heartbeat round acknowledged by a quorum: it is never served.
                sim.run_until(sim.now_nanos() + 3 * SEC).unwrap();
                let was_served = sim
                    .reads_served()
                    .iter()
                    .any(|(n, id, _)| *n == old && *id == ReadId(1));
                assert!(!was_served, "ReadIndex on a cut-off leader is never served");
                assert!(sim.history().check_linearizable().is_ok());
            }
        }
    }
}

/// Same seed twice: the same trace, line for line.
#[test]
fn determinism_same_seed_same_trace() {
    let run = |seed| {
        let cfg = SimConfig {
            trace: true,
            trace_messages: true,
            chaos: Duration::from_secs(6),
            liveness: Duration::from_secs(4),
            ..SimConfig::chaos(seed)
        };
        Sim::new(cfg).run()
    };
    let (r1, t1) = run(42);
    let (r2, t2) = run(42);
    assert!(t1.lines().len() > 1000, "trace recorded");
    assert_eq!(t1.text(), t2.text());
    assert_eq!(r1.summary(), r2.summary());
    let (_, t3) = run(43);
    assert_ne!(t1.text(), t3.text(), "another seed, another run");
}
