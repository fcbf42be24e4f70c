//! Scripted tests for Raft traps that were otherwise exercised only by random schedules: the RPC
//! budget (MIT 6.5840 `TestCount3B`), stale snapshots (etcd `TestRestoreIgnoreSnapshot`), restart
//! from a snapshot (MIT 6.5840 `TestSnapshotInit3D`), a bounded log (MIT 6.5840 `MAXLOGSIZE`), a
//! learner that catches up through a snapshot (etcd `TestLearnerReceiveSnapshot`), the
//! async-storage ABA race (etcd `async_storage_writes_append_aba_race.txt`) and a split vote (etcd
//! `TestDuelingCandidates`). Same harness as `raft_scripted.rs`: the cluster-wide checkers run
//! after every step of every test.

mod support;

use paloma_core::raft::io::{Role, TimerKind};
use paloma_core::raft::message::{AppendResponse, Body, Envelope};
use paloma_core::raft::storage::{PersistBatch, PersistOp};
use paloma_core::raft::{Membership, MembershipChange};
use paloma_core::{LogId, LogIndex, NodeId, Term};
use std::collections::BTreeSet;
use support::{
    is_election, is_truncate, kind, lagging_follower_behind_snapshot, n, snapshot_cluster,
    snapshot_config, Cluster, ET,
};

fn installed(c: &Cluster, id: NodeId) -> u64 {
    c.raft(id).stats().snapshots_installed
}

/// n1's traffic: [Heartbeats to n2, to n3, Appends to n2, to n3, acks from n2, from n3, every
/// message of any node].
fn traffic(c: &Cluster) -> [u64; 7] {
    let s = |from, to, kind| c.sent_count(n(from), n(to), kind);
    [
        s(1, 2, "Heartbeat"),
        s(1, 3, "Heartbeat"),
        s(1, 2, "Append"),
        s(1, 3, "Append"),
        s(2, 1, "AppendAccepted"),
        s(3, 1, "AppendAccepted"),
        c.sent.values().sum(),
    ]
}

fn since(before: [u64; 7], c: &Cluster) -> [u64; 7] {
    let now = traffic(c);
    std::array::from_fn(|i| now[i] - before[i])
}

/// RPC budget (MIT 6.5840 `TestCount3B` and `TestRPCBytes3B`). An idle leader sends one heartbeat
/// per peer per `heartbeat_interval` and nothing else; in steady state each entry costs one Append
/// and one acknowledgement per peer. A leader that re-sent its log on every tick, or heartbeated on
/// every input, would burn bandwidth in proportion to time or to load and starve the network long
/// before Raft's safety is at stake.
#[test]
fn idle_heartbeat_and_steady_state_rpc_budget() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.stabilize();
    let t0 = traffic(&c);
    c.run_for(10 * ET);
    let [hb2, hb3, ap2, ap3, acc2, acc3, all] = since(t0, &c);
    // 10 s at one round per 100 ms.
    assert!(
        (99..=101).contains(&hb2) && hb3 == hb2,
        "{hb2} and {hb3} heartbeats"
    );
    assert_eq!([ap2, ap3, acc2, acc3], [0; 4], "idle: no Append");
    assert_eq!(
        all,
        2 * (hb2 + hb3),
        "idle: heartbeats and their answers only"
    );
    // Steady state: 20 entries, each replicated before the next; no time passes.
    let (t0, entries0) = (traffic(&c), c.raft(n(1)).stats().entries_sent);
    for seq in 1..=20 {
        c.propose(n(1), 1, seq, b"v").unwrap();
        c.stabilize();
    }
    assert_eq!(
        since(t0, &c),
        [0, 0, 20, 20, 20, 20, 80],
        "per entry and peer: one Append and one ack, nothing else"
    );
    let entries = c.raft(n(1)).stats().entries_sent - entries0;
    assert_eq!(entries, 40, "each entry sent once per peer");
    c.settle();
    c.assert_converged(n(1));
}

/// A snapshot older than what the follower applied is ignored (etcd
/// `TestRestoreIgnoreSnapshot`; Raft §7). Once n3 installed a snapshot and committed past it, every
/// chunk of that snapshot is re-delivered (a duplicated or very late message). Installing it would
/// roll n3's state machine and commit index back, i.e. un-apply committed entries; the follower
/// must answer "done at my commit" and change nothing, and the leader must not restart a transfer.
#[test]
fn stale_snapshot_after_install_is_ignored() {
    let mut c = lagging_follower_behind_snapshot();
    let mut chunks: Vec<Envelope> = Vec::new();
    for _ in 0..50 {
        c.tick(n(1));
        while !c.net.is_empty() {
            if matches!(c.net[0].body, Body::Snapshot(_)) {
                chunks.push(c.net[0].clone());
            }
            c.deliver_at(0);
        }
        if installed(&c, n(3)) > 0 {
            break;
        }
    }
    assert_eq!(installed(&c, n(3)), 1);
    assert!(chunks.len() > 4, "a chunked transfer");
    let snap = c.raft(n(3)).log().snapshot().meta.last.index;
    c.settle();
    for seq in 31..=40 {
        c.propose(n(1), 1, seq, b"after the snapshot").unwrap();
        c.stabilize();
    }
    let state = |c: &Cluster| (c.status(n(3)), c.raft(n(3)).state_machine().clone());
    let before = state(&c);
    assert!(before.0.applied > snap, "n3 applied past the snapshot");
    c.take_batches(n(3));
    let snaps0 = c.sent_count(n(1), n(3), "Snapshot");
    for env in chunks.clone() {
        assert!(c.deliver_envelope(env));
    }
    assert_eq!(
        installed(&c, n(3)),
        1,
        "the stale snapshot was not installed"
    );
    assert_eq!(
        state(&c),
        before,
        "commit, applied, log and state unchanged"
    );
    let ops: Vec<PersistOp> = c
        .take_batches(n(3))
        .into_iter()
        .flat_map(|b| b.ops)
        .collect();
    assert!(
        !ops.iter()
            .any(|op| matches!(op, PersistOp::Snapshot(_) | PersistOp::Truncate { .. })),
        "nothing about the log was written: {ops:?}"
    );
    // Each chunk is answered "done at my commit", which the leader, replicating, ignores.
    let answers = c.take_messages(|m| m.from == n(3));
    assert_eq!(answers.len(), chunks.len());
    for a in answers {
        let commit = before.0.commit;
        assert!(
            matches!(a.body, Body::SnapshotResp(ack) if ack.done && ack.last.index == commit),
            "{a:?}"
        );
        c.deliver_envelope(a);
    }
    c.settle();
    assert_eq!(
        c.sent_count(n(1), n(3), "Snapshot"),
        snaps0,
        "no new transfer"
    );
    c.assert_converged(n(1));
}

/// The snapshot carries the membership and the client-session table; a restart from
/// snapshot plus log tail restores both (MIT 6.5840 `TestSnapshotInit3D`; openraft 447dc11c,
/// thesis §6.3). The whole cluster restarts after the config entry and the first apply of
/// (client 7, seq 1) were compacted away, so they survive only in the snapshot. If the membership
/// were rebuilt from the log, the learner would be forgotten; if the session table were not in the
/// snapshot, the client's retry after the restart would apply a second time.
#[test]
fn restart_from_snapshot_keeps_membership_and_sessions() {
    let mut c = snapshot_cluster();
    c.elect(n(1));
    c.add_empty_node(n(4), snapshot_config);
    let cfg_idx = c
        .change_membership(n(1), MembershipChange::AddLearner(n(4)))
        .unwrap();
    c.stabilize();
    let x = c.propose(n(1), 7, 1, b"x").unwrap();
    c.stabilize();
    let answer = c.applied(n(1)).last().cloned().expect("x applied");
    assert_eq!(answer.0, x);
    for seq in 1..=10 {
        c.propose(n(1), 1, seq, b"filler").unwrap();
        c.stabilize();
    }
    let expected = Membership {
        voters: BTreeSet::from([n(1), n(2), n(3)]),
        learners: BTreeSet::from([n(4)]),
        ..Membership::default()
    };
    for id in c.ids() {
        c.crash(id);
        let log = c.raft(id).log();
        assert!(
            log.base().index > cfg_idx.max(x),
            "{id}: config and x compacted away"
        );
        assert_eq!(log.snapshot().meta.membership, expected, "{id}");
        assert_eq!(
            c.status(id).membership,
            expected,
            "{id}: membership from the snapshot"
        );
        assert_eq!(c.raft(id).state_machine().count(b"x"), 1, "{id}");
    }
    assert!(
        c.raft(n(4)).poll_timeout().is_none(),
        "the learner is still a learner"
    );
    c.elect(n(2));
    c.take_events(n(2));
    let retry = c.propose(n(2), 7, 1, b"x").unwrap();
    c.settle();
    // The retry is answered with the response of the first application (1: the first command).
    assert_eq!(c.applied(n(2)), [(retry, answer.1)]);
    for id in c.ids() {
        assert_eq!(
            c.raft(id).state_machine().count(b"x"),
            1,
            "{id} applied x once"
        );
    }
    c.assert_converged(n(2));
    assert_eq!(
        c.status(n(4)).last.index,
        retry,
        "the new leader replicates to the learner"
    );
}

/// The log stays bounded under a sustained write load (MIT 6.5840 `MAXLOGSIZE` in
/// `TestSnapshotBasic3D`). With a snapshot every 5 applied entries and 2 trailing, no node may ever
/// hold more than 5 + 2 + 1 entries in memory or on disk, even while a follower is cut off for half
/// the run (the leader compacts past it and catches it up with a snapshot). Without compaction, or
/// with compaction only in memory, the log grows with the history and a restart replays it all.
#[test]
fn log_stays_bounded_under_sustained_writes() {
    const BOUND: usize = 5 + 2 + 1;
    let mut c = snapshot_cluster();
    c.elect(n(1));
    let mut held_max = 0;
    for seq in 1..=200u64 {
        if seq == 50 {
            c.isolate(n(3));
        }
        if seq == 150 {
            c.heal();
        }
        c.propose(n(1), 1, seq, &[seq as u8; 32]).unwrap();
        c.stabilize();
        for id in c.ids() {
            let held = c.raft(id).log().entries().count();
            let durable = c.node(id).storage.state().entries.len();
            held_max = held_max.max(held).max(durable);
            assert!(
                held <= BOUND && durable <= BOUND,
                "{id} after {seq} writes: {held} entries in memory, {durable} on disk"
            );
        }
    }
    c.settle();
    c.assert_converged(n(1));
    assert!(held_max >= 5, "the bound is not trivially met: {held_max}");
    assert!(c.raft(n(1)).stats().snapshots_taken >= 35);
    assert!(installed(&c, n(3)) >= 1, "n3 caught up through a snapshot");
    assert_eq!(c.raft(n(3)).state_machine().commands.len(), 200);
}

/// A learner catches up through a snapshot plus the log, is promoted, and never
/// counts toward a commit quorum or an election before that (thesis §4.2.1; etcd
/// `TestLearnerReceiveSnapshot`, `TestLearnerPromotion`, `TestLearnerElectionTimeout`). Counting a
/// learner would let a leader commit, or a candidate win, with a minority of the real voters.
#[test]
fn learner_catches_up_via_snapshot_then_promoted() {
    let mut c = snapshot_cluster();
    c.elect(n(1));
    for seq in 1..=30 {
        c.propose(n(1), 1, seq, b"before").unwrap();
        c.stabilize();
    }
    assert!(c.raft(n(1)).log().base().index > LogIndex(2), "compacted");
    c.add_empty_node(n(4), snapshot_config);
    c.change_membership(n(1), MembershipChange::AddLearner(n(4)))
        .unwrap();
    c.settle();
    assert_eq!(installed(&c, n(4)), 1, "the empty learner got a snapshot");
    assert_eq!(c.raft(n(4)).state_machine().commands.len(), 30);
    c.assert_converged(n(1));
    // Elections: n1 cut off, n2 and n3 cut from each other; n2 reaches only the learner, whose log
    // equals n2's and whose lease expired, so a learner's grant would elect n2.
    c.isolate(n(1));
    c.cut(n(2), n(3));
    c.advance(3 * ET);
    let term = c.status(n(2)).term;
    for _ in 0..5 {
        c.tick(n(2));
        c.stabilize();
        assert_ne!(c.status(n(2)).role, Role::Leader, "elected by a learner");
    }
    assert_eq!(c.status(n(2)).term, term, "pre-vote never passed");
    assert!(c.raft(n(2)).stats().pre_campaigns >= 5, "n2 did try");
    c.heal();
    c.run_for(3 * ET);
    let lead = c.leader().expect("a leader after healing");
    // Commits: the leader and the learner alone are not a quorum.
    for voter in [n(1), n(2), n(3)].into_iter().filter(|v| *v != lead) {
        c.cut(lead, voter);
    }
    let commit = c.status(lead).commit;
    let idx = c.propose(lead, 1, 31, b"needs a voter").unwrap();
    c.stabilize();
    assert_eq!(c.status(n(4)).last.index, idx, "the learner holds it");
    assert_eq!(
        c.status(lead).commit,
        commit,
        "leader + learner is not a quorum"
    );
    c.heal();
    c.settle();
    assert_eq!(c.status(lead).commit, idx);
    c.change_membership(lead, MembershipChange::Promote(n(4)))
        .unwrap();
    c.stabilize();
    for id in c.ids() {
        assert_eq!(
            c.status(id).membership,
            Membership::with_voters([n(1), n(2), n(3), n(4)]),
            "{id}"
        );
    }
    assert!(matches!(
        c.raft(n(4)).poll_timeout(),
        Some((_, TimerKind::Election))
    ));
    c.settle();
    c.assert_converged(lead);
}

/// The terms of the entries on `id`'s disk.
fn durable_terms(c: &Cluster, id: NodeId) -> Vec<u64> {
    let state = c.node(id).storage.state();
    state.entries.iter().map(|e| e.term().0).collect()
}

/// Takes every in-flight `AppendAccepted` from `from` to `to` (any node if `None`).
fn take_acks(c: &mut Cluster, from: NodeId, to: Option<NodeId>) -> Vec<Envelope> {
    c.take_messages(|m| {
        m.from == from && to.is_none_or(|t| m.to == t) && kind(&m.body) == "AppendAccepted"
    })
}

/// Whether `batch` appends the entry `id`.
fn appends(batch: &PersistBatch, id: LogId) -> bool {
    let holds =
        |op: &PersistOp| matches!(op, PersistOp::Append(es) if es.iter().any(|e| e.id == id));
    batch.ops.iter().any(holds)
}

/// Async persistence ABA (etcd `async_storage_writes_append_aba_race.txt`). n2's slow
/// disk is still writing the old leader's uncommitted 2@1 and 3@1 when a newer leader (n3, term 2)
/// overwrites index 2 with 2@2. When the old write completes, n2 must not take it for the
/// durability of what its log holds now: no acknowledgement reaches n3 before the batch that
/// truncates is durable, and the `on_persisted` guard must not record index 3 (gone) or 2 (now
/// 2@2) as durable, or `check_invariants` (run after every step) sees a durable match past the log.
/// Nothing of the old leader is ever applied.
#[test]
fn async_append_aba_guard() {
    let at2 = |term| LogId::new(Term(term), LogIndex(2));
    let (old, new) = (at2(1), at2(2));
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.settle();
    // n1 sends 2@1 and 3@1 to n2 only; neither disk finishes writing them.
    c.hold_persist(n(1));
    c.hold_persist(n(2));
    c.cut(n(1), n(3));
    c.propose(n(1), 1, 1, b"old a").unwrap();
    c.propose(n(1), 1, 2, b"old b").unwrap();
    while c.deliver(n(1), n(2)) {}
    assert_eq!(c.log_terms(n(2)), [1, 1, 1]);
    assert_eq!(
        durable_terms(&c, n(2)),
        [1],
        "2@1 and 3@1 not durable on n2"
    );
    c.net.clear();
    c.crash(n(1));
    c.release_persist(n(1));
    assert_eq!(c.log_terms(n(1)), [1], "n1 lost its copy");
    // n3 wins term 2 with n1's vote (n2's longer log refuses) and sends its no-op 2@2 to n2 only.
    c.heal();
    c.advance(3 * ET);
    c.tick(n(3));
    c.deliver_matching(is_election);
    assert_eq!(c.leader(), Some(n(3)));
    assert_eq!(c.status(n(3)).term, Term(2));
    c.drop_messages(|m| m.to == n(1));
    let queue = |c: &Cluster| c.node(n(2)).unpersisted.clone();
    let held_at = queue(&c).iter().position(|b| appends(b, old));
    assert_eq!(c.deliver_matching(|m| kind(&m.body) == "Append"), 1);
    assert_eq!(c.log_terms(n(2)), [1, 2], "2@1 overwritten in memory");
    let truncating = |b: &PersistBatch| b.ops.iter().any(is_truncate) && appends(b, new);
    let trunc_at = queue(&c).iter().position(truncating);
    assert!(held_at.is_some() && trunc_at.is_some() && held_at < trunc_at);
    // The old write (and the term-2 hard state) completes; the overwrite is still in flight.
    while !truncating(&queue(&c)[0]) {
        c.persist_one(n(2));
    }
    assert_eq!(durable_terms(&c, n(2)), [1, 1, 1], "old write done");
    let early = take_acks(&mut c, n(2), Some(n(3)));
    assert!(early.is_empty(), "2@1's write acked as 2@2: {early:?}");
    // Its term-1 acknowledgements to n1 are not sent: n2 is in term 2 now (outbox invariant 7).
    let stale = take_acks(&mut c, n(2), None);
    assert!(stale.is_empty(), "stale acks left: {stale:?}");
    assert!(c.raft(n(2)).stats().stale_released_dropped >= 2);
    assert_eq!(c.status(n(3)).commit, LogIndex(1));
    // The overwrite becomes durable: now n2 acknowledges index 2 to n3, which commits 2@2.
    c.persist_one(n(2));
    let ack = take_acks(&mut c, n(2), Some(n(3)));
    let accepted = AppendResponse::Accepted {
        match_index: LogIndex(2),
    };
    let body = Body::AppendResp(accepted);
    assert!(matches!(&ack[..], [m] if m.term == Term(2) && m.body == body));
    c.deliver_envelope(ack[0].clone());
    assert_eq!(c.status(n(3)).commit, LogIndex(2));
    c.release_persist(n(2));
    c.settle();
    c.assert_converged(n(3));
    for id in c.ids() {
        let sm = c.raft(id).state_machine();
        assert_eq!((sm.count(b"old a"), sm.count(b"old b")), (0, 0), "{id}");
        assert_eq!(c.node(id).storage.state().entries[1].id, new, "{id}");
    }
}

/// Dueling candidates and a split vote resolved by randomized election timeouts
/// (Raft §5.2; etcd `TestDuelingCandidates`, here without a partition). Four voters, no pre-vote:
/// n1 and n3 time out at the same instant and each gets one grant before the other's request
/// lands, so term 1 ends with two candidates holding 2 of the 3 votes needed. Both stay
/// candidates (2 rejections are not a quorum either). Each redraws its deadline in `[ET, 2 ET)`,
/// so the node whose timer fires first campaigns alone in term 2 and wins outright. Identical
/// timeouts would split again forever.
#[test]
fn split_vote_resolves_by_randomized_timeouts() {
    let mut c = Cluster::with_config(4, |cfg| cfg.pre_vote = false);
    c.advance(2 * ET);
    c.tick(n(1));
    c.tick(n(3));
    assert!(c.deliver(n(1), n(2)) && c.deliver(n(3), n(4)));
    c.deliver_all();
    for (id, voted_for) in [(1, 1), (2, 1), (3, 3), (4, 3)] {
        let st = c.status(n(id));
        assert_eq!((st.term, st.vote), (Term(1), Some(n(voted_for))), "n{id}");
    }
    for id in [n(1), n(3)] {
        assert_eq!(
            c.status(id).role,
            Role::Candidate,
            "{id} is still campaigning"
        );
        assert_eq!(c.raft(id).stats().campaigns, 1, "{id}");
    }
    assert_eq!(c.leader(), None, "split vote: nobody won term 1");
    // Every node now has a fresh, randomized deadline; the earliest decides term 2.
    let deadlines: BTreeSet<_> = c
        .ids()
        .into_iter()
        .map(|id| c.raft(id).poll_timeout().expect("a voter has a timer").0)
        .collect();
    assert_eq!(deadlines.len(), 4, "randomized: no two deadlines equal");
    let (first_at, first) = c
        .ids()
        .into_iter()
        .map(|id| (c.raft(id).poll_timeout().unwrap().0, id))
        .min()
        .unwrap();
    assert!(first_at >= c.now + ET && first_at < c.now + 2 * ET);
    c.run_for(5 * ET);
    let leader = c.leader().expect("the split is resolved");
    assert_eq!(leader, first, "the first timer to fire wins");
    assert_eq!(c.status(leader).term, Term(2), "resolved in the next term");
    let campaigns: u64 = c.nodes.values().map(|x| x.raft.stats().campaigns).sum();
    assert_eq!(campaigns, 3, "two in term 1, one in term 2");
    assert_eq!(c.history.checker.leaders().len(), 1);
    for id in c.ids() {
        assert_eq!(c.status(id).leader, Some(leader), "{id}");
    }
    c.assert_converged(leader);
}
