//! Scripted Raft scenarios on the in-memory harness (`support/`), in the style of etcd raft's
//! interaction tests: each test names the paper section or the etcd test it reproduces, drives the
//! cluster message by message, and asserts concrete outcomes. The cluster-wide checkers (election
//! safety, committed entries immutable, state machine safety, linearizable reads, the node's own
//! `check_invariants`) run after every step of every test. A proptest over random schedules ends
//! the file.

mod support;

use paloma_core::raft::io::{Event, Role, TimerKind};
use paloma_core::raft::message::{AppendResponse, Body, Envelope, VoteResponse};
use paloma_core::raft::storage::{PersistOp, Recovered};
use paloma_core::raft::{
    Membership, MembershipChange, MembershipError, ProposeError, ReplicatedSettings, TransferError,
};
use paloma_core::{LogId, LogIndex, ReadId, Term};
use proptest::prelude::*;
use std::time::Duration;
use support::{
    campaign_only, is_truncate, kind, lagging_follower_behind_snapshot, n, recovered_with_log,
    Cluster, ET,
};

fn append_carries(m: &Envelope, index: u64) -> bool {
    matches!(&m.body, Body::Append(req) if req.entries.iter().any(|e| e.index() >= LogIndex(index)))
}

fn total_leaderships(c: &Cluster) -> u64 {
    c.nodes.values().map(|n| n.raft.stats().leaderships).sum()
}

fn total_campaigns(c: &Cluster) -> u64 {
    c.nodes.values().map(|n| n.raft.stats().campaigns).sum()
}

// ----- elections (Raft §5.2, thesis §9.6) ------------------------------------------------------------

fn initial_election_is_stable(size: u64) {
    let mut c = Cluster::new(size);
    c.run_for(3 * ET);
    let leader = c.leader().expect("a leader within three election timeouts");
    let st = c.status(leader);
    // Zero-latency network, randomized timeouts: the first to time out wins term 1 outright.
    assert_eq!(st.term, Term(1));
    assert_eq!(total_campaigns(&c), 1, "exactly one election");
    for id in c.ids() {
        let s = c.status(id);
        assert_eq!(
            (s.term, s.leader, s.commit),
            (Term(1), Some(leader), LogIndex(1)),
            "{id} follows the leader and committed its no-op"
        );
    }
    // Stable with no faults: nothing changes for ten election timeouts.
    c.run_for(10 * ET);
    assert_eq!(c.leader(), Some(leader));
    assert_eq!(c.status(leader).term, Term(1));
    assert_eq!(total_leaderships(&c), 1);
    assert_eq!(total_campaigns(&c), 1);
}

#[test]
fn election_3_nodes() {
    initial_election_is_stable(3);
}

#[test]
fn election_5_nodes() {
    initial_election_is_stable(5);
}

/// etcd `prevote.txt`, thesis §9.6: a partitioned follower's pre-votes fail, so its term never
/// rises, and it rejoins without a single leader change.
#[test]
fn prevote_partitioned_node_rejoins_without_disruption() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.status(n(1)).term;
    c.isolate(n(3));
    c.run_for(10 * ET);
    let st3 = c.status(n(3));
    assert_eq!(st3.term, term, "pre-vote keeps the partitioned node's term");
    assert!(
        c.raft(n(3)).stats().pre_campaigns >= 5,
        "it kept trying: {:?}",
        c.raft(n(3)).stats()
    );
    assert_eq!(c.raft(n(3)).stats().campaigns, 0, "it never won a pre-vote");
    assert_eq!(c.leader(), Some(n(1)));
    c.propose(n(1), 1, 1, b"while partitioned").unwrap();
    c.stabilize();
    c.heal();
    c.run_for(2 * ET);
    assert_eq!(c.leader(), Some(n(1)), "no leader change");
    assert_eq!(c.status(n(1)).term, term);
    assert_eq!(total_leaderships(&c), 1);
    assert_eq!(c.status(n(3)).leader, Some(n(1)));
    c.assert_converged(n(1));
}

/// Isolates leader n1 `cut_after` after its election; returns how long after the cut it stepped
/// down (observed every 10 ms), and the cluster.
fn isolated_leader_step_down(cut_after: Duration) -> (Duration, Cluster) {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.run_for(cut_after);
    let cut_at = c.now;
    c.isolate(n(1));
    for _ in 0..400 {
        c.run_for(Duration::from_millis(10));
        if c.status(n(1)).role != Role::Leader {
            return (c.now.saturating_duration_since(cut_at), c);
        }
    }
    panic!("the isolated leader never stepped down");
}

/// etcd `checkquorum.txt`, thesis §6.2: check-quorum runs once per election timeout and needs a
/// quorum heard from since the previous check, so an isolated leader steps down at the first check
/// that follows a whole interval without contact: between one and two election timeouts after the
/// cut (etcd has the same bound). Its writes are refused afterwards and it follows the new leader
/// on heal.
#[test]
fn checkquorum_isolated_leader_steps_down() {
    let tick = Duration::from_millis(10);
    // Cut just after the first check (at ET): the heartbeat round sent at that same instant was
    // acknowledged after the check, so the next check still passes; the one after fails: 2 ET.
    let (after, _) = isolated_leader_step_down(ET + Duration::from_millis(1));
    assert!(
        after >= 2 * ET - tick && after <= 2 * ET,
        "stepped down {after:?} after the cut"
    );
    // Cut half-way through the first interval: the first check passes, the second fails: 1.5 ET.
    let (after, mut c) = isolated_leader_step_down(ET / 2);
    assert!(
        after >= ET * 3 / 2 - tick && after <= ET * 3 / 2 + tick,
        "stepped down {after:?} after the cut"
    );
    c.run_for(2 * ET);
    let new = c.leader().expect("majority side has a leader");
    assert_ne!(new, n(1));
    assert!(matches!(
        c.propose(n(1), 1, 1, b"x"),
        Err(ProposeError::NotLeader { .. })
    ));
    c.heal();
    c.run_for(ET);
    assert_eq!(c.leader(), Some(new));
    assert_eq!(c.status(n(1)).leader, Some(new));
}

/// etcd `checkquorum.txt` (leader stickiness) / thesis §4.2.3: a node that cannot hear the leader
/// campaigns (pre-vote off here), but voters that heard from the live leader within an election
/// timeout ignore its vote requests and keep their term.
#[test]
fn leader_stickiness_ignores_votes_while_leader_is_live() {
    let mut c = Cluster::with_config(3, |cfg| cfg.pre_vote = cfg.id != n(3));
    c.elect(n(1));
    let term = c.status(n(1)).term;
    c.cut(n(1), n(3));
    c.run_for(4 * ET);
    assert!(c.status(n(3)).term > term, "n3 campaigned without pre-vote");
    assert!(c.raft(n(2)).stats().votes_ignored_in_lease > 0);
    assert_eq!(
        c.status(n(2)).term,
        term,
        "n2 neither voted nor adopted the term"
    );
    assert_eq!(c.sent_count(n(2), n(3), "VoteResp"), 0);
    assert_eq!(c.leader(), Some(n(1)));
    assert_eq!(total_leaderships(&c), 1);
}

// ----- replication and commitment (Raft §5.3, §5.4) -------------------------------------------------

/// The state after Figure 8 (c) on five nodes: n1 leads term 3 and has replicated its term-1
/// entry at index 2 to n2 and n3 (a majority holds it), its term-3 no-op at index 3 only to n2.
/// n5 (down) holds a term-2 entry at index 2. Returns the cluster; `x` is index 2's command.
fn figure8_c() -> Cluster {
    let mut c = Cluster::with_config(5, |cfg| cfg.append_entries_max = 1);
    // (a) n1 leads term 1 and replicates index 2 to n2 only.
    c.elect(n(1));
    for id in [3, 4, 5] {
        c.cut(n(1), n(id));
    }
    assert_eq!(c.propose(n(1), 1, 1, b"x"), Ok(LogIndex(2)));
    c.deliver_all();
    assert_eq!(c.log_terms(n(2)), [1, 1]);
    assert_eq!(c.status(n(1)).commit, LogIndex(1), "index 2 is on 2 of 5");
    // (b) n1 crashes; n5 wins term 2 with n3 and n4 and appends index 2 locally only.
    c.stop(n(1));
    c.heal();
    c.advance(3 * ET);
    campaign_only(&mut c, n(5));
    assert_eq!(c.status(n(5)).term, Term(2));
    c.drop_messages(|m| m.from == n(5));
    assert_eq!(c.log_terms(n(5)), [1, 2]);
    c.stop(n(5));
    // (c) n1 restarts and wins term 3 with n2 and n3 (n4 cut off); it replicates index 2 to n3 but
    // its own no-op at index 3 only to n2.
    c.restart(n(1));
    c.cut(n(1), n(4));
    c.advance(3 * ET);
    campaign_only(&mut c, n(1));
    assert_eq!(c.status(n(1)).term, Term(3));
    // The first probe to n3 (prev = index 2) is rejected; the repair brings index 2; the append of
    // index 3 that follows is lost.
    loop {
        let n3_has_2 = c.status(n(3)).last.index >= LogIndex(2);
        c.drop_messages(|m| m.to == n(3) && append_carries(m, 3) && n3_has_2);
        if c.net.is_empty() {
            break;
        }
        c.deliver_at(0);
    }
    assert_eq!(c.log_terms(n(1)), [1, 1, 3]);
    assert_eq!(c.log_terms(n(2)), [1, 1, 3]);
    assert_eq!(c.log_terms(n(3)), [1, 1]);
    c
}

/// Raft Figure 8 (c)-(d), §5.4.2: the term-1 entry at index 2 is on a majority (n1, n2, n3), yet
/// the term-3 leader must not commit it by counting replicas, because n5 can still be elected
/// (votes of n3, n4) and overwrite it, which it does.
#[test]
fn figure8_leader_does_not_commit_old_term_entry_by_counting() {
    let mut c = figure8_c();
    assert_eq!(
        c.status(n(1)).commit,
        LogIndex(1),
        "old-term entry on a majority is not committed"
    );
    assert!(c.applied(n(1)).is_empty(), "nothing reported to the client");
    // (d) n1 crashes; n5 restarts and wins with n3 and n4, then overwrites index 2 everywhere.
    c.stop(n(1));
    c.heal();
    c.restart(n(5));
    c.advance(3 * ET);
    c.elect(n(5));
    c.stabilize();
    for id in [2, 3, 4, 5] {
        assert_eq!(
            c.log_terms(n(id))[..2],
            [1, 2],
            "n{id}: index 2 overwritten by the term-2 entry"
        );
        assert_eq!(c.raft(n(id)).state_machine().count(b"x"), 0);
    }
    assert!(c.status(n(5)).commit >= LogIndex(3));
}

/// Raft Figure 8 (e): once the term-3 no-op reaches a majority, index 2 commits with it (indirectly);
/// the commit index jumps from 1 to 3 and never stops at 2. n5 can then never win.
#[test]
fn figure8_old_term_entry_commits_with_current_term_entry() {
    let mut c = figure8_c();
    let mut seen = vec![c.status(n(1)).commit];
    // Heartbeats make the leader resend the lost append of index 3 to n3.
    for _ in 0..10 {
        c.tick(n(1));
        while !c.net.is_empty() {
            c.deliver_at(0);
            seen.push(c.status(n(1)).commit);
        }
    }
    seen.dedup();
    assert_eq!(
        seen,
        [LogIndex(1), LogIndex(3)],
        "commit goes straight from 1 to 3"
    );
    assert_eq!(
        c.raft(n(1)).state_machine().commands,
        [b"x".to_vec()],
        "index 2 applied once it committed"
    );
    c.stop(n(1));
    c.heal();
    c.restart(n(5));
    c.run_for(5 * ET);
    let leader = c.leader().expect("a leader");
    assert_ne!(leader, n(5), "n5's log is behind the committed entry");
    c.stabilize();
    for id in [2, 3, 4, 5] {
        assert_eq!(
            c.raft(n(id)).state_machine().count(b"x"),
            1,
            "n{id} applied x once"
        );
    }
}

/// Raft Figure 7 / etcd `probe_and_replicate.txt`: a term-8 leader with log 1 1 1 4 4 5 5 6 6 6
/// repairs the six followers (a)-(f). Fast back-tracking bounds the work: at most two AppendEntries
/// per follower (one probe, one repair), whatever the length of the divergence.
#[test]
fn figure7_divergent_followers_repaired_with_fast_backtracking() {
    let voters = [1, 2, 3, 4, 5, 6, 7];
    let logs: [&[u64]; 7] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6],       // leader
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],          // (a) missing one entry
        &[1, 1, 1, 4],                         // (b) missing many
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],    // (c) one extra uncommitted entry
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7], // (d) extra entries of a later term
        &[1, 1, 1, 4, 4, 4, 4],                // (e) missing and extra
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],    // (f) a whole divergent history
    ];
    let states = voters
        .iter()
        .zip(logs)
        .map(|(id, terms)| (n(*id), recovered_with_log(&voters, terms, 7)))
        .collect();
    let mut c = Cluster::from_states(states, |_| {});
    c.elect(n(1));
    c.settle();
    assert_eq!(c.status(n(1)).term, Term(8));
    let expected = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 8];
    let mut appends = Vec::new();
    for id in 2..=7 {
        assert_eq!(c.log_terms(n(id)), expected, "follower n{id} repaired");
        appends.push(c.sent_count(n(1), n(id), "Append"));
    }
    // (a) probe + fill, (b) probe + fill, (c) one, (d) one, (e) probe + repair, (f) probe + repair.
    assert_eq!(
        appends,
        [2, 2, 1, 1, 2, 2],
        "AppendEntries per follower (a)-(f)"
    );
    c.assert_converged(n(1));
}

/// etcd `TestLogReplicationWithReorderedMessage`, openraft fix 9540c904: a duplicated, stale
/// AppendEntries arriving after newer ones must not truncate the entries it does not mention, and a
/// stale rejection arriving after a success must not send the leader back to probing.
#[test]
fn stale_reordered_append_does_not_truncate() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.cut(n(1), n(3));
    for (seq, cmd) in [(1, b"a"), (2, b"b"), (3, b"c")] {
        c.propose(n(1), 1, seq, cmd).unwrap();
    }
    // Three appends to n2, each carrying one entry: m1 [2], m2 [3], m3 [4].
    let mut appends = c.take_messages(|m| m.to == n(2) && kind(&m.body) == "Append");
    assert_eq!(appends.len(), 3);
    let (m1, m2, m3) = (appends.remove(0), appends.remove(0), appends.remove(0));
    c.take_batches(n(2));
    // Reordered: m1, m3 (rejected: gap), m2, m3 again; then stale duplicates of m1 and m2.
    for m in [&m1, &m3, &m2, &m3] {
        c.deliver_envelope(m.clone());
    }
    assert_eq!(c.status(n(2)).last.index, LogIndex(4));
    assert_eq!(
        c.status(n(2)).commit,
        LogIndex(1),
        "n2 does not know entries 2-4 are committed"
    );
    c.deliver_envelope(m1.clone());
    c.deliver_envelope(m2.clone());
    assert_eq!(
        c.status(n(2)).last.index,
        LogIndex(4),
        "the stale appends did not truncate"
    );
    assert!(c
        .take_batches(n(2))
        .iter()
        .all(|b| !b.ops.iter().any(is_truncate)));
    // Responses reach the leader newest first: accepted(4), rejected(4) (stale), accepted(3)...
    let mut resps = c.take_messages(|m| m.from == n(2));
    resps.reverse();
    let appends_before = c.sent_count(n(1), n(2), "Append");
    for r in resps {
        c.deliver_envelope(r);
    }
    assert_eq!(
        c.sent_count(n(1), n(2), "Append"),
        appends_before,
        "a stale rejection sends nothing again"
    );
    assert_eq!(c.status(n(1)).commit, LogIndex(4));
    c.heal();
    c.run_for(ET);
    c.assert_converged(n(1));
}

// ----- persistence ordering (Raft Figure 2; openraft io_ordering; etcd #14370) ----------------------

/// Raft Figure 2 "respond after persisting" / openraft io_ordering: a follower's append ack is not
/// released before the batch holding the entries is durable, and the leader does not count its own
/// non-durable entry toward the quorum.
#[test]
fn append_ack_waits_for_persist() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.auto_persist = false;
    c.cut(n(1), n(3));
    c.propose(n(1), 1, 1, b"x").unwrap();
    assert_eq!(c.node(n(1)).unpersisted.len(), 1);
    assert!(c.deliver(n(1), n(2)));
    assert_eq!(
        c.node(n(2)).unpersisted.len(),
        1,
        "follower got a persist batch"
    );
    assert_eq!(
        c.in_flight(|m| m.from == n(2)),
        0,
        "no ack before Persisted"
    );
    c.persist(n(2));
    assert_eq!(
        c.in_flight(|m| m.from == n(2) && kind(&m.body) == "AppendAccepted"),
        1,
        "ack released by Persisted"
    );
    c.deliver_all();
    assert_eq!(
        c.status(n(1)).commit,
        LogIndex(1),
        "the leader's own copy is not durable yet: 1 of 3"
    );
    assert!(c.applied(n(1)).is_empty());
    c.persist(n(1));
    assert_eq!(c.status(n(1)).commit, LogIndex(2));
    assert_eq!(c.applied(n(1)).len(), 1);
}

/// Raft Figure 2 (persist before responding): a candidate's vote requests (new term) and a voter's
/// grant wait for the hard state.
#[test]
fn vote_request_and_grant_wait_for_persist() {
    let mut c = Cluster::new(3);
    c.auto_persist = false;
    c.tick(n(1));
    assert_eq!(c.status(n(1)).role, Role::PreCandidate);
    assert!(
        c.node(n(1)).unpersisted.is_empty(),
        "a pre-vote changes nothing durable"
    );
    assert_eq!(
        c.in_flight(|m| kind(&m.body) == "PreVote"),
        2,
        "pre-votes go out at once"
    );
    c.deliver_all();
    assert_eq!(c.status(n(1)).role, Role::Candidate);
    assert_eq!(c.node(n(1)).unpersisted.len(), 1);
    assert_eq!(
        c.in_flight(|m| kind(&m.body) == "Vote"),
        0,
        "no vote request before the new term is durable"
    );
    c.persist(n(1));
    assert_eq!(c.in_flight(|m| kind(&m.body) == "Vote"), 2);
    c.deliver(n(1), n(2));
    assert_eq!(c.status(n(2)).vote, Some(n(1)));
    assert_eq!(
        c.in_flight(|m| m.from == n(2)),
        0,
        "no grant before the vote is durable"
    );
    c.persist(n(2));
    assert_eq!(
        c.in_flight(|m| m.from == n(2) && kind(&m.body) == "VoteResp"),
        1
    );
}

/// etcd #14370 / `single_node.txt`: a single voter reports an entry committed only once its own
/// write is durable; a crash before that loses the entry but nothing was promised, and a crash after
/// it loses nothing.
#[test]
fn single_node_crash_after_propose_loses_no_committed_entry() {
    let mut c = Cluster::new(1);
    c.elect(n(1));
    c.auto_persist = false;
    let idx = c.propose(n(1), 1, 1, b"lost").unwrap();
    assert_eq!(idx, LogIndex(2));
    assert_eq!(
        c.status(n(1)).commit,
        LogIndex(1),
        "not committed before the write is durable"
    );
    assert!(
        c.applied(n(1)).is_empty(),
        "not reported before the write is durable"
    );
    c.crash(n(1));
    assert_eq!(
        c.status(n(1)).last.index,
        LogIndex(1),
        "the unpersisted entry is gone, unreported"
    );
    c.auto_persist = true;
    c.elect(n(1));
    // The client retries its lost first command (a session opens with seq 1).
    let idx = c.propose(n(1), 1, 1, b"kept").unwrap();
    let applied = c.applied(n(1));
    assert_eq!(
        applied.last().map(|a| a.0),
        Some(idx),
        "reported once durable"
    );
    c.crash(n(1));
    assert!(
        c.raft(n(1)).log().entry(idx).is_some(),
        "the reported entry survived the crash"
    );
    c.elect(n(1));
    c.stabilize();
    assert_eq!(c.raft(n(1)).state_machine().commands, [b"kept".to_vec()]);
}

/// Raft Figure 2, §5.2 (vote durability: one vote per term): a voter that crashes after its vote
/// became durable, before the grant was sent, still refuses a second candidate in that term; one
/// whose vote was not durable never sent the grant.
#[test]
fn vote_survives_crash_no_double_vote() {
    let mut c = Cluster::with_config(3, |cfg| cfg.pre_vote = false);
    c.auto_persist = false;
    c.tick(n(1));
    c.persist(n(1));
    assert_eq!(c.status(n(1)).term, Term(1));
    c.drop_messages(|m| m.to == n(3));
    c.deliver(n(1), n(2));
    c.persist(n(2));
    assert_eq!(
        c.drop_messages(|m| m.from == n(2)),
        1,
        "the grant is lost with the crash"
    );
    c.crash(n(2));
    assert_eq!(c.status(n(2)).vote, Some(n(1)), "the vote was durable");
    // n3 campaigns in the same term 1.
    c.tick(n(3));
    c.persist(n(3));
    assert_eq!(c.status(n(3)).term, Term(1));
    c.drop_messages(|m| m.to == n(1));
    c.deliver(n(3), n(2));
    c.persist(n(2));
    let resp = c.take_messages(|m| m.from == n(2));
    assert_eq!(resp.len(), 1);
    assert_eq!(
        resp[0].body,
        Body::VoteResp(VoteResponse { granted: false }),
        "no second vote in term 1"
    );

    // Not durable: the vote is forgotten, but the grant never left.
    let mut c = Cluster::with_config(3, |cfg| cfg.pre_vote = false);
    c.auto_persist = false;
    c.tick(n(1));
    c.persist(n(1));
    c.deliver(n(1), n(2));
    c.crash(n(2));
    assert_eq!(c.sent_count(n(2), n(1), "VoteResp"), 0);
    assert_eq!(c.status(n(2)).vote, None);
}

// ----- reads (thesis §6.4) ---------------------------------------------------------------------------

/// etcd `TestReadOnlyForNewLeader`, thesis §6.4: index 2 is committed (and reported) by n1 while
/// n2 only knows commit 1. n2 becomes leader; a ReadIndex on it waits until its no-op commits, then
/// answers with an index that includes entry 2.
#[test]
fn readindex_on_new_leader_waits_for_noop_commit() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.cut(n(1), n(3));
    c.propose(n(1), 1, 1, b"w").unwrap();
    c.deliver(n(1), n(2));
    c.deliver(n(2), n(1));
    assert_eq!(c.status(n(1)).commit, LogIndex(2));
    assert_eq!(c.applied(n(1)).len(), 1, "the write was acknowledged");
    assert_eq!(c.status(n(2)).commit, LogIndex(1), "n2 does not know yet");
    c.net.clear();
    c.stop(n(1));
    c.heal();
    c.advance(3 * ET);
    campaign_only(&mut c, n(2));
    c.read(n(2), 7).unwrap();
    assert!(
        c.reads_ready(n(2)).is_empty(),
        "no read before the no-op commits"
    );
    c.tick(n(2));
    c.deliver_matching(|m| kind(&m.body).starts_with("Heartbeat"));
    assert!(
        c.reads_ready(n(2)).is_empty(),
        "a heartbeat round alone is not enough"
    );
    c.stabilize();
    let ready = c.reads_ready(n(2));
    assert_eq!(ready.len(), 1);
    assert!(
        ready[0].1 >= LogIndex(3),
        "read index {:?} covers the no-op and the acknowledged write",
        ready[0].1
    );
    assert_eq!(c.raft(n(2)).state_machine().count(b"w"), 1);
}

/// Jepsen, "etcd and Consul" (2014), thesis §6.4: a ReadIndex on a leader cut off from the majority
/// never succeeds: with check-quorum it fails when the leader steps down; without, it waits until
/// the partition heals and then fails. The majority meanwhile commits new writes.
#[test]
fn readindex_on_partitioned_ex_leader_never_returns() {
    for check_quorum in [true, false] {
        let mut c = Cluster::with_config(3, |cfg| cfg.check_quorum = check_quorum);
        c.elect(n(1));
        c.isolate(n(1));
        c.read(n(1), 1).unwrap();
        c.run_for(5 * ET);
        let new = c
            .ids()
            .into_iter()
            .find(|id| *id != n(1) && c.status(*id).role == Role::Leader)
            .expect("majority elects");
        c.propose(new, 9, 1, b"newer").unwrap();
        c.stabilize();
        assert!(
            c.reads_ready(n(1)).is_empty(),
            "check_quorum={check_quorum}: no stale read"
        );
        assert_eq!(
            c.reads_failed(n(1)).is_empty(),
            !check_quorum,
            "check_quorum={check_quorum}: fails on step-down"
        );
        c.heal();
        c.run_for(ET);
        assert!(c.reads_ready(n(1)).is_empty());
        assert_eq!(
            c.reads_failed(n(1)),
            [ReadId(1)],
            "check_quorum={check_quorum}: failed exactly once"
        );
        assert_eq!(c.status(n(1)).leader, Some(new));
    }
}

/// Thesis §6.4 follower reads: the follower asks the leader for a read index and answers only once
/// it has applied that far, so it observes a write acknowledged before the read began.
#[test]
fn follower_read_through_leader() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.propose(n(1), 1, 1, b"w").unwrap();
    // n3 never gets the append (for now); n1 and n2 commit it.
    c.drop_messages(|m| m.to == n(3));
    c.deliver_all();
    assert_eq!(c.applied(n(1)).len(), 1);
    c.read(n(3), 5).unwrap();
    let held = c.take_messages(|m| m.to == n(3) && kind(&m.body) == "Append");
    assert!(held.is_empty());
    loop {
        c.drop_messages(|m| m.to == n(3) && kind(&m.body) == "Append");
        if c.deliver_all() == 0 {
            break;
        }
    }
    assert!(
        c.sent_count(n(1), n(3), "ReadIndexResp") >= 1,
        "the leader answered"
    );
    assert!(
        c.reads_ready(n(3)).is_empty(),
        "not before n3 applied the read index"
    );
    c.run_for(ET);
    let ready = c.reads_ready(n(3));
    assert_eq!(ready, [(ReadId(5), LogIndex(2))]);
    assert_eq!(c.raft(n(3)).state_machine().count(b"w"), 1);
}

// ----- snapshots (Raft §7, Figure 13) ------------------------------------------------------------------

fn is_chunk_at(m: &Envelope, offset: u64) -> bool {
    matches!(&m.body, Body::Snapshot(ch) if ch.offset == offset)
}

/// Lagging follower behind the compaction point (etcd `slow_follower_after_compaction.txt`): the
/// leader switches it to a chunked InstallSnapshot; a lost chunk is resent from the acknowledged
/// offset (not from zero) after `append_timeout`; the follower installs it and catches up.
#[test]
fn snapshot_chunked_install_resumes_after_lost_chunk() {
    let mut c = lagging_follower_behind_snapshot();
    let total = c.raft(n(1)).log().snapshot().data.len();
    let (mut dropped, mut first_chunks, mut stalls) = (0, 0, 0);
    for _ in 0..50 {
        c.tick(n(1));
        loop {
            if dropped == 0 {
                dropped += c.drop_messages(|m| is_chunk_at(m, 64));
            }
            if c.net.is_empty() {
                break;
            }
            first_chunks += usize::from(is_chunk_at(&c.net[0], 0));
            c.deliver_at(0);
        }
        if c.raft(n(3)).stats().snapshots_installed > 0 {
            break;
        }
        stalls += usize::from(dropped == 1);
    }
    assert_eq!(dropped, 1, "a chunk was lost");
    assert!(stalls >= 1, "the transfer stalled on the lost chunk");
    assert_eq!(
        first_chunks, 1,
        "the transfer resumed: it never restarted from offset 0"
    );
    assert_eq!(c.raft(n(3)).stats().snapshots_installed, 1);
    let chunks = c.raft(n(1)).stats().snapshot_chunks_sent;
    assert_eq!(
        chunks,
        total.div_ceil(64) as u64 + 1,
        "every chunk once, plus the lost one again"
    );
    c.settle();
    c.assert_converged(n(1));
    assert_eq!(c.raft(n(3)).state_machine().commands.len(), 30);
}

/// The sorcerer's apprentice syndrome (RFC 1123 §4.2.3.1): the follower answers a duplicated
/// chunk with where it stands, and a leader that sent the next chunk for every such answer ran one
/// more stream of chunks per duplicate (found by the madsim replica scenario, seed 31: a 30 KB
/// snapshot in 64 B chunks never completed). Only an acknowledgement that moves the transfer may
/// send a chunk.
#[test]
fn snapshot_duplicated_chunks_do_not_start_more_streams() {
    let mut c = lagging_follower_behind_snapshot();
    let total = c.raft(n(1)).log().snapshot().data.len();
    let mut duplicated = 0;
    for _ in 0..50 {
        c.tick(n(1));
        while !c.net.is_empty() {
            if matches!(c.net[0].body, Body::Snapshot(_)) && duplicated < 5 {
                let copy = c.net[0].clone();
                c.net.push_back(copy);
                duplicated += 1;
            }
            c.deliver_at(0);
        }
        if c.raft(n(3)).stats().snapshots_installed > 0 {
            break;
        }
    }
    assert_eq!(duplicated, 5, "five chunks were duplicated");
    assert_eq!(c.raft(n(3)).stats().snapshots_installed, 1);
    let chunks = c.raft(n(1)).stats().snapshot_chunks_sent;
    assert_eq!(
        chunks,
        total.div_ceil(64) as u64,
        "every chunk exactly once: a duplicate starts no second stream"
    );
    c.settle();
    c.assert_converged(n(1));
}

/// MIT 3D install-and-crash / etcd `TestSnapshotAbort`: a follower that crashes halfway through a
/// chunked transfer asks the leader to restart it from offset zero, and still installs it.
#[test]
fn snapshot_transfer_restarts_after_follower_crash() {
    let mut c = lagging_follower_behind_snapshot();
    let (mut delivered, mut first_chunks) = (0, 0);
    'outer: for _ in 0..50 {
        c.tick(n(1));
        while !c.net.is_empty() {
            if matches!(c.net[0].body, Body::Snapshot(_)) {
                first_chunks += usize::from(is_chunk_at(&c.net[0], 0));
                delivered += 1;
                if delivered == 4 {
                    c.crash(n(3));
                    break 'outer;
                }
            }
            c.deliver_at(0);
        }
    }
    assert_eq!(c.raft(n(3)).stats().snapshots_installed, 0);
    for _ in 0..50 {
        c.tick(n(1));
        while !c.net.is_empty() {
            first_chunks += usize::from(is_chunk_at(&c.net[0], 0));
            c.deliver_at(0);
        }
    }
    assert_eq!(c.raft(n(3)).stats().snapshots_installed, 1);
    // The stale in-flight chunk and the leader's retransmission each make the restarted follower
    // ask for offset 0, so chunk 0 goes out two or three times, never more.
    assert!(
        (2..=3).contains(&first_chunks),
        "restarted from offset 0: chunk 0 sent {first_chunks} times"
    );
    c.assert_converged(n(1));
}

// ----- membership (thesis §4) ----------------------------------------------------------------------------

/// Thesis §4.2.1: add a learner, let it catch up, promote it. The learner never campaigns and does
/// not count toward the commit quorum; a lagging learner cannot be promoted.
#[test]
fn membership_add_learner_catch_up_promote() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    for seq in 1..=5 {
        c.propose(n(1), 1, seq, b"before").unwrap();
    }
    c.stabilize();
    c.add_empty_node(n(4), |_| {});
    assert!(
        c.raft(n(4)).poll_timeout().is_none(),
        "a non-member never campaigns"
    );
    c.change_membership(n(1), MembershipChange::AddLearner(n(4)))
        .unwrap();
    c.stabilize();
    c.run_for(ET);
    assert!(c.status(n(4)).membership.learners.contains(&n(4)));
    assert!(
        c.raft(n(4)).poll_timeout().is_none(),
        "a learner never campaigns"
    );
    c.assert_converged(n(1));
    // The learner does not count: with both voting followers cut off, nothing commits.
    c.cut(n(1), n(2));
    c.cut(n(1), n(3));
    let commit = c.status(n(1)).commit;
    let idx = c.propose(n(1), 1, 6, b"needs a voter").unwrap();
    c.stabilize();
    assert_eq!(c.status(n(4)).last.index, idx, "the learner has it");
    assert_eq!(
        c.status(n(1)).commit,
        commit,
        "leader + learner is not a quorum"
    );
    c.heal();
    c.settle();
    assert_eq!(c.status(n(1)).commit, idx);
    // Promote.
    c.change_membership(n(1), MembershipChange::Promote(n(4)))
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
    // Now 3 of 4 are needed: n1 + n4 are not enough.
    c.cut(n(1), n(2));
    c.cut(n(1), n(3));
    let commit = c.status(n(1)).commit;
    c.propose(n(1), 1, 7, b"x").unwrap();
    c.stabilize();
    assert_eq!(c.status(n(1)).commit, commit);
    c.heal();
    c.stabilize();
    // A learner that is far behind is not promoted.
    c.add_empty_node(n(5), |_| {});
    c.isolate(n(5));
    c.change_membership(n(1), MembershipChange::AddLearner(n(5)))
        .unwrap();
    c.stabilize();
    for seq in 8..80 {
        c.propose(n(1), 1, seq, b"more").unwrap();
    }
    c.stabilize();
    assert_eq!(
        c.change_membership(n(1), MembershipChange::Promote(n(5))),
        Err(MembershipError::NotCaughtUp)
    );
}

/// etcd `confchange_v1_remove_leader.txt`, thesis §4.2.2: the leader removes itself. Until the
/// config commits it does not count itself (n1 + n2 is not a quorum of {n2, n3}); once committed it
/// steps down and never campaigns; the remaining voters elect a leader.
#[test]
fn membership_remove_leader_steps_down_and_stays_quiet() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.cut(n(1), n(3));
    let idx = c
        .change_membership(n(1), MembershipChange::Remove(n(1)))
        .unwrap();
    c.stabilize();
    assert_eq!(c.status(n(2)).last.index, idx);
    assert!(
        c.status(n(1)).commit < idx,
        "the removed leader does not count itself"
    );
    assert_eq!(
        c.status(n(1)).role,
        Role::Leader,
        "still leading until the removal commits"
    );
    c.heal();
    c.settle();
    assert_eq!(c.status(n(1)).commit, idx);
    assert_eq!(
        c.status(n(1)).role,
        Role::Follower,
        "stepped down on commit"
    );
    assert!(
        c.raft(n(1)).poll_timeout().is_none(),
        "a removed node has no election timer"
    );
    let (pre, full) = (
        c.raft(n(1)).stats().pre_campaigns,
        c.raft(n(1)).stats().campaigns,
    );
    c.run_for(10 * ET);
    assert_eq!(
        (
            c.raft(n(1)).stats().pre_campaigns,
            c.raft(n(1)).stats().campaigns
        ),
        (pre, full)
    );
    let leader = c.leader().expect("n2 or n3 leads");
    assert!(leader == n(2) || leader == n(3));
    c.propose(leader, 1, 1, b"after removal").unwrap();
    c.settle();
    assert_eq!(c.raft(n(2)).state_machine().count(b"after removal"), 1);
}

/// Ongaro, raft-dev 2015, thesis §4.1: a new leader may not append a config entry before it has
/// committed an entry of its term; and only one uncommitted config at a time.
#[test]
fn membership_change_waits_for_noop_commit_and_one_at_a_time() {
    let mut c = Cluster::new(3);
    campaign_only(&mut c, n(1));
    assert_eq!(
        c.change_membership(n(1), MembershipChange::AddLearner(n(4))),
        Err(MembershipError::NotReady)
    );
    c.stabilize();
    c.isolate(n(1));
    c.change_membership(n(1), MembershipChange::AddLearner(n(4)))
        .unwrap();
    assert_eq!(
        c.change_membership(n(1), MembershipChange::AddLearner(n(5))),
        Err(MembershipError::NotReady)
    );
    c.heal();
    c.settle();
    assert!(c
        .change_membership(n(1), MembershipChange::AddLearner(n(5)))
        .is_ok());
}

/// Thesis §4.1 (the latest config in the log is in effect; openraft effective membership): a config
/// entry that a new leader overwrites is rolled back on the node that appended it.
#[test]
fn membership_truncated_config_entry_rolls_back() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.isolate(n(1));
    let idx = c
        .change_membership(n(1), MembershipChange::AddLearner(n(4)))
        .unwrap();
    assert!(
        c.status(n(1)).membership.learners.contains(&n(4)),
        "effective when appended"
    );
    c.advance(3 * ET);
    c.elect(n(2));
    c.propose(n(2), 1, 1, b"y").unwrap();
    c.stabilize();
    c.heal();
    c.run_for(2 * ET);
    let st1 = c.status(n(1));
    assert_eq!(st1.leader, Some(n(2)));
    assert_ne!(
        c.raft(n(1)).log().term(idx),
        Some(Term(1)),
        "the config entry was overwritten"
    );
    assert_eq!(
        st1.membership,
        Membership::with_voters([n(1), n(2), n(3)]),
        "membership rolled back"
    );
    c.assert_converged(n(2));
}

// ----- leadership transfer (thesis §3.10) -------------------------------------------------------------

#[test]
fn transfer_leadership_to_up_to_date_node() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.status(n(1)).term;
    c.transfer_leadership(n(1), n(2)).unwrap();
    assert_eq!(
        c.in_flight(|m| m.to == n(2) && m.body == Body::TimeoutNow),
        1,
        "already caught up: TimeoutNow at once"
    );
    c.stabilize();
    assert_eq!(c.leader(), Some(n(2)));
    assert_eq!(
        c.status(n(2)).term,
        term.next(),
        "one election, no pre-vote, despite n3's lease"
    );
    assert_eq!(c.status(n(1)).role, Role::Follower);
    c.propose(n(2), 1, 1, b"x").unwrap();
    c.settle();
    c.assert_converged(n(2));
}

#[test]
fn transfer_leadership_to_lagging_node_catches_it_up_first() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    c.cut(n(1), n(3));
    for seq in 1..=5 {
        c.propose(n(1), 1, seq, b"x").unwrap();
    }
    c.stabilize();
    let last = c.status(n(1)).last.index;
    assert!(c.status(n(3)).last.index < last);
    c.heal();
    c.transfer_leadership(n(1), n(3)).unwrap();
    assert_eq!(
        c.in_flight(|m| m.body == Body::TimeoutNow),
        0,
        "not before n3 caught up"
    );
    // The appends lost during the cut are resent after `append_timeout`, then TimeoutNow follows.
    c.run_for(ET / 2);
    assert_eq!(c.leader(), Some(n(3)));
    assert_eq!(c.status(n(3)).term, Term(2));
    assert_eq!(
        c.raft(n(3)).log().term(last),
        c.raft(n(1)).log().term(last),
        "n3 had everything"
    );
    c.settle();
    c.assert_converged(n(3));
}

/// Transfer to an unreachable node times out after an election timeout; proposals and membership
/// changes are refused meanwhile; the old leader keeps its term and resumes.
#[test]
fn transfer_leadership_timeout_and_proposals_refused_during_transfer() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let term = c.status(n(1)).term;
    assert_eq!(
        c.transfer_leadership(n(1), n(1)),
        Err(TransferError::InvalidTarget)
    );
    assert_eq!(
        c.transfer_leadership(n(1), n(9)),
        Err(TransferError::InvalidTarget)
    );
    assert_eq!(
        c.transfer_leadership(n(2), n(3)),
        Err(TransferError::NotLeader)
    );
    c.isolate(n(3));
    c.transfer_leadership(n(1), n(3)).unwrap();
    assert_eq!(
        c.transfer_leadership(n(1), n(2)),
        Err(TransferError::InProgress)
    );
    assert_eq!(
        c.propose(n(1), 1, 1, b"x"),
        Err(ProposeError::TransferInProgress)
    );
    assert_eq!(
        c.change_membership(n(1), MembershipChange::AddLearner(n(4))),
        Err(MembershipError::TransferInProgress)
    );
    c.run_for(ET / 2);
    assert_eq!(
        c.propose(n(1), 1, 1, b"x"),
        Err(ProposeError::TransferInProgress)
    );
    c.run_for(ET / 2 + Duration::from_millis(1));
    assert!(
        c.propose(n(1), 1, 1, b"x").is_ok(),
        "the transfer timed out"
    );
    c.stabilize();
    assert_eq!(c.leader(), Some(n(1)));
    assert_eq!(c.status(n(1)).term, term);
}

// ----- application-layer exactly-once and flow control ------------------------------------------------

/// Thesis §6.3: the same (client, seq) proposed twice, on one leader and again on the next after a
/// leader change, applies once; the retry gets the cached response.
/// The de-duplication bound is replicated state (thesis §6.3): it is fixed at bootstrap, travels
/// in the configuration, and a learner that joins from an empty disk and replays the log from
/// index 1 applies with the cluster's bound, not a default of its own. With a bound of 1, client
/// 1's session is evicted by client 2's command, so client 1's next command is refused; a replica
/// applying with a larger bound would run it and diverge.
#[test]
fn dedup_bound_travels_with_the_configuration() {
    let settings = ReplicatedSettings {
        dedup_clients_max: 1,
    };
    let voters = [n(1), n(2), n(3)];
    let states = voters
        .iter()
        .map(|id| (*id, Recovered::bootstrap_with(voters, settings)))
        .collect();
    let mut c = Cluster::from_states(states, |_| {});
    c.elect(n(1));
    for (client, seq, data) in [(1, 1, b"a"), (2, 1, b"b"), (1, 2, b"c")] {
        c.propose(n(1), client, seq, data).unwrap();
        c.stabilize();
    }
    assert_eq!(
        c.raft(n(1)).state_machine().count(b"c"),
        0,
        "client 1 was evicted"
    );
    assert!(c.take_events(n(1)).iter().any(|e| matches!(
        e,
        Event::ProposalDropped {
            reason: paloma_core::raft::io::DropReason::SessionExpired,
            ..
        }
    )));
    c.add_empty_node(n(4), |_| {});
    c.change_membership(n(1), MembershipChange::AddLearner(n(4)))
        .unwrap();
    c.stabilize();
    c.settle();
    let learner = c.raft(n(4));
    assert_eq!(learner.status().membership.settings, settings);
    assert_eq!(learner.status().applied, c.status(n(1)).commit);
    assert_eq!(learner.state_machine(), c.raft(n(1)).state_machine());
    assert_eq!(learner.state_machine().count(b"c"), 0);
}

#[test]
fn client_dedup_same_seq_applies_once() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let a = c.propose(n(1), 7, 1, b"x").unwrap();
    let b = c.propose(n(1), 7, 1, b"x").unwrap();
    assert_ne!(a, b, "both appended");
    c.settle();
    for id in c.ids() {
        assert_eq!(
            c.raft(id).state_machine().count(b"x"),
            1,
            "{id} applied once"
        );
    }
    // Each proposal is answered (the proposer of the retry may be a new connection), and both
    // answers are the response of the one application.
    assert_eq!(
        c.applied(n(1)),
        [
            (a, 1u64.to_le_bytes().to_vec()),
            (b, 1u64.to_le_bytes().to_vec())
        ],
        "the retry gets the cached answer"
    );
    c.propose(n(1), 7, 2, b"y").unwrap();
    c.stabilize();
    let first = c.applied(n(1)).last().cloned().unwrap();
    c.advance(3 * ET);
    c.elect(n(2));
    c.propose(n(2), 7, 2, b"y").unwrap();
    c.settle();
    let retry = c.applied(n(2));
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].1, first.1, "the cached response");
    for id in c.ids() {
        assert_eq!(
            c.raft(id).state_machine().count(b"y"),
            1,
            "{id} applied the retry once"
        );
    }
}

/// etcd `MaxUncommittedEntriesSize`: with quorum lost, proposals are refused with `Backpressure` at
/// the limit instead of growing the log without bound.
#[test]
fn backpressure_at_uncommitted_entries_max() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.uncommitted_entries_max = 4;
        cfg.command_bytes_max = 16;
    });
    c.elect(n(1));
    assert_eq!(
        c.propose(n(1), 1, 1, &[0; 17]),
        Err(ProposeError::TooLarge { len: 17, max: 16 })
    );
    c.isolate(n(1));
    for seq in 1..=4 {
        c.propose(n(1), 1, seq, b"x").unwrap();
    }
    assert_eq!(c.propose(n(1), 1, 5, b"x"), Err(ProposeError::Backpressure));
    c.heal();
    c.settle();
    assert!(c.propose(n(1), 1, 5, b"x").is_ok());
}

/// Found by `random_schedules_with_torn_writes_keep_raft_safe` (seed 1). A follower holds an
/// uncommitted entry 2@1; the new leader's append makes it truncate index 2, append 2@2 and learn
/// commit 2, all in one batch whose ops are `[HardState { commit: 2 }, Truncate { from: 2 },
/// Append([2@2])]`. If the crash tears the batch after its first op, the restarted node believes
/// index 2 is committed while its log still holds the never-committed 2@1, and applies it: state
/// machine safety is broken. Writing the HardState after the log ops (or the commit index in a
/// second HardState at the end of the batch) closes the window.
#[test]
fn torn_batch_commit_index_before_entries() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    // n1 sends 2@1 to n3 only, then crashes before its own copy is durable.
    c.hold_persist(n(1));
    c.cut(n(1), n(2));
    c.propose(n(1), 1, 1, b"never committed").unwrap();
    c.deliver(n(1), n(3));
    c.net.clear();
    c.crash(n(1));
    c.release_persist(n(1));
    assert_eq!(c.log_terms(n(3)), [1, 1]);
    assert_eq!(c.log_terms(n(1)), [1]);
    // n2 wins term 2 with n1's vote while n3 is cut off, and commits its no-op 2@2 with n1.
    c.heal();
    c.cut(n(2), n(3));
    c.advance(3 * ET);
    c.elect(n(2));
    c.stabilize();
    assert_eq!(c.status(n(2)).commit, LogIndex(2));
    // n3 rejoins with a slow disk: persist its batches until the one that truncates.
    c.heal();
    c.hold_persist(n(3));
    for _ in 0..20 {
        let truncating = c
            .node(n(3))
            .unpersisted
            .front()
            .is_some_and(|b| b.ops.iter().any(is_truncate));
        if truncating {
            break;
        }
        if !c.persist_one(n(3)) {
            c.tick(n(2));
        }
        c.deliver_all();
    }
    let batch = c
        .node(n(3))
        .unpersisted
        .front()
        .expect("a truncating batch")
        .clone();
    let truncate_at = batch.ops.iter().position(is_truncate).unwrap();
    // Tear the batch right before its Truncate: everything written before it survives.
    c.crash_torn(n(3), truncate_at);
    c.release_persist(n(3));
    c.settle();
    c.assert_converged(n(2));
    assert_eq!(c.raft(n(3)).state_machine().count(b"never committed"), 0);
}

// ----- random schedules --------------------------------------------------------------------------------

/// One step of a random schedule.
#[derive(Clone, Debug)]
enum Op {
    Deliver(usize),
    Drop(usize),
    Duplicate(usize),
    Tick(u8),
    Persist(u8),
    PersistAll(u8),
    Stabilize,
    /// Crash and restart a node: 0 loses its unpersisted batches, 3 keeps the first one whole
    /// (durable, not yet acknowledged), 1 and 2 keep that many of its operations (torn write)
    /// when torn writes are modelled, else the whole batch.
    Crash(u8, u8),
    Propose(u8, u8),
    Read(u8),
    /// The current leader (if any) hands leadership to this node.
    Transfer(u8),
    Isolate(u8),
    Heal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => any::<usize>().prop_map(Op::Deliver),
        3 => any::<usize>().prop_map(Op::Drop),
        3 => any::<usize>().prop_map(Op::Duplicate),
        8 => (0..3u8).prop_map(Op::Tick),
        4 => (0..3u8).prop_map(Op::Persist),
        12 => (0..3u8).prop_map(Op::PersistAll),
        4 => Just(Op::Stabilize),
        1 => (0..3u8, 0..4u8).prop_map(|(n, k)| Op::Crash(n, k)),
        10 => (0..3u8, any::<u8>()).prop_map(|(n, v)| Op::Propose(n, v)),
        3 => (0..3u8).prop_map(Op::Read),
        1 => (0..3u8).prop_map(Op::Transfer),
        1 => (0..3u8).prop_map(Op::Isolate),
        2 => Just(Op::Heal),
    ]
}

/// `RAFT_SCHEDULE_CASES` and `RAFT_SCHEDULE_SEED` widen the search (README); the defaults keep
/// `cargo test` deterministic and around a second.
fn schedule_config() -> ProptestConfig {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    ProptestConfig {
        cases: env("RAFT_SCHEDULE_CASES").map_or(2048, |c| u32::try_from(c).unwrap_or(u32::MAX)),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(
            env("RAFT_SCHEDULE_SEED").unwrap_or(0x7061_6c6f_6d61),
        ),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(schedule_config())]

    /// Random delivery order, loss, duplication, timer firings, durable writes, crashes (some with a
    /// torn batch), partitions, proposals and reads on 3 nodes. The checkers run after every step
    /// (at most one leader per term, committed prefixes never change, equal state at equal applied
    /// index, reads never stale, `check_invariants`). Then the faults stop and the cluster must elect
    /// a leader and commit a new write (liveness).
    #[test]
    fn random_schedules_keep_raft_safe(ops in prop::collection::vec(op(), 1..500)) {
        run_schedule(&ops, false, false);
    }

    /// The same with torn batches: a crash may leave any prefix of the batch being written.
    #[test]
    fn random_schedules_with_torn_writes_keep_raft_safe(ops in prop::collection::vec(op(), 1..500)) {
        run_schedule(&ops, true, false);
    }
}

/// Runs one schedule (printing each step and the nodes' state if `trace`), then the liveness
/// phase. Panics on the first broken invariant.
fn run_schedule(ops: &[Op], torn: bool, trace: bool) {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.snapshot_threshold_entries = 4;
        cfg.snapshot_trailing_entries = 1;
        cfg.snapshot_chunk_bytes = 32;
    });
    c.auto_persist = false;
    let mut seq = 0u64;
    let mut rid = 0u64;
    let id = |k: u8| n(u64::from(k) + 1);
    for (step, op) in ops.iter().enumerate() {
        if trace {
            let next = match op {
                Op::Deliver(i) | Op::Drop(i) | Op::Duplicate(i) if !c.net.is_empty() => {
                    Some(c.net[i % c.net.len()].clone())
                }
                _ => None,
            };
            eprintln!("step {step}: {op:?} {next:?}");
        }
        match *op {
            Op::Deliver(i) if !c.net.is_empty() => {
                c.deliver_at(i % c.net.len());
            }
            Op::Drop(i) if !c.net.is_empty() => {
                c.net.remove(i % c.net.len());
            }
            Op::Duplicate(i) if !c.net.is_empty() => {
                let env = c.net[i % c.net.len()].clone();
                c.redeliver(env);
            }
            Op::Tick(k) => {
                c.tick(id(k));
            }
            Op::Persist(k) => {
                c.persist_one(id(k));
            }
            Op::PersistAll(k) => c.persist(id(k)),
            Op::Stabilize => c.stabilize(),
            Op::Crash(k, mode) => {
                let kept = match mode {
                    0 => 0,
                    1 | 2 if torn => usize::from(mode),
                    _ => usize::MAX,
                };
                c.crash_torn(id(k), kept);
            }
            Op::Propose(k, v) => {
                seq += 1;
                let _ = c.propose(id(k), 1, seq, &[v]);
            }
            Op::Read(k) => {
                rid += 1;
                let _ = c.read(id(k), rid);
            }
            Op::Transfer(k) => {
                if let Some(leader) = c.leader() {
                    let _ = c.transfer_leadership(leader, id(k));
                }
            }
            Op::Isolate(k) => c.isolate(id(k)),
            Op::Heal => c.heal(),
            _ => {}
        }
        if trace {
            for node in c.nodes.values() {
                let st = node.raft.status();
                let log: Vec<String> = node
                    .raft
                    .log()
                    .entries()
                    .map(|e| format!("{:?}", e.id))
                    .collect();
                let pending: Vec<&PersistOp> =
                    node.unpersisted.iter().flat_map(|b| &b.ops).collect();
                eprintln!(
                    "    {} {:?} t{} vote={:?} commit={} log={log:?} durable={:?} unpersisted={pending:?}",
                    st.id, st.role, st.term.0, st.vote, st.commit.0, node.storage.state()
                );
            }
        }
    }
    // Liveness: the faults stop.
    c.heal();
    c.auto_persist = true;
    c.stabilize();
    c.run_for(6 * ET);
    let leader = c.leader().unwrap_or_else(|| {
        panic!(
            "no leader after the faults stopped: {:?}",
            c.ids().iter().map(|i| c.status(*i)).collect::<Vec<_>>()
        )
    });
    let idx = c
        .propose(leader, 2, 1, b"final")
        .expect("the leader accepts");
    c.stabilize();
    c.run_for(ET);
    assert!(
        c.applied(leader).iter().any(|(i, _)| *i == idx),
        "the final write was applied on the leader"
    );
    c.assert_converged(leader);
    // The shared checker ran, at the boundary too (the final write's commit at least).
    assert!(
        !c.history.fabricated && c.history.checker.boundary_checks > 0,
        "boundary checks did not run"
    );
}

#[test]
fn harness_counts_messages_and_rejections() {
    // Guards the harness itself: kinds are told apart and counted per link.
    let mut c = Cluster::new(3);
    c.elect(n(1));
    assert!(c.sent_count(n(1), n(2), "PreVote") == 1 && c.sent_count(n(1), n(2), "Vote") == 1);
    assert_eq!(c.sent_count(n(2), n(1), "AppendAccepted"), 1);
    let rejected = AppendResponse::Rejected {
        rejected: LogIndex(1),
        hint: LogId::default(),
    };
    assert_eq!(kind(&Body::AppendResp(rejected)), "AppendRejected");
    assert!(c.take_events(n(1)).iter().any(|e| matches!(
        e,
        Event::RoleChanged {
            role: Role::Leader,
            ..
        }
    )));
    assert!(c
        .take_batches(n(1))
        .iter()
        .any(|b| b.ops.iter().any(|op| matches!(op, PersistOp::HardState(_)))));
}
