//! The Raft paper, sentence by sentence: the cases of etcd raft's `raft_paper_test.go` (raft-rs
//! carries the same ones in `test_raft_paper.rs`), ported to our API. Each test is named after the
//! section of Ongaro & Ousterhout 2014 ("In Search of an Understandable Consensus Algorithm",
//! extended version) whose sentences it checks, and quotes or paraphrases them.
//!
//! etcd steps one `raft` struct with hand-made messages; here node 1 of a scripted cluster
//! (`support/`) is stepped the same way with [`msg`] envelopes, or the cluster runs for real. The
//! cluster-wide checkers (at most one leader per term, committed entries never change, equal state
//! at equal applied index, `check_invariants`) run after every step. Writes are made durable as soon
//! as they are emitted (`auto_persist`), so the replies that wait for `Persisted` (votes,
//! acknowledgements) come out at once unless a test holds them.
//!
//! Where the paper's plain algorithm is under test, pre-vote (thesis §9.6) and check-quorum (thesis
//! §6.2) with leader stickiness (thesis §4.2.3) are turned off ([`plain`]). `PAPER_TESTS.md` maps every etcd case
//! to its test here, or says why it does not apply.

mod support;

use paloma_core::raft::io::{Input, Role, TimerKind};
use paloma_core::raft::message::{
    AppendRequest, AppendResponse, Body, Envelope, HeartbeatRequest, HeartbeatResponse,
    VoteRequest, VoteResponse,
};
use paloma_core::raft::storage::{PersistOp, Recovered};
use paloma_core::raft::{Config, Entry, Payload};
use paloma_core::{ClientId, LogId, LogIndex, NodeId, Term};
use std::time::Duration;
use support::{campaign_only, msg, n, noop, recovered_with_log, Cluster, ET};

// ----- helpers -----------------------------------------------------------------------------------

/// The paper's algorithm: no pre-vote, no check-quorum (and so no leader stickiness).
fn plain(cfg: &mut Config) {
    cfg.pre_vote = false;
    cfg.check_quorum = false;
}

fn lid(term: u64, index: u64) -> LogId {
    LogId::new(Term(term), LogIndex(index))
}

/// A command entry of client 9 whose seq is its index (so commands apply in log order).
fn cmd(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        id: lid(term, index),
        unix_ms: 0,
        payload: Payload::Command {
            client: ClientId(9),
            seq: index,
            data: data.as_bytes().to_vec(),
        },
    }
}

fn append(prev: LogId, entries: Vec<Entry>, commit: u64) -> Body {
    Body::Append(AppendRequest {
        prev,
        entries,
        commit: LogIndex(commit),
    })
}

fn heartbeat(commit: u64) -> Body {
    Body::Heartbeat(HeartbeatRequest {
        commit: LogIndex(commit),
        round: 1,
    })
}

fn vote(last_log: LogId) -> Body {
    Body::Vote(VoteRequest {
        last_log,
        transfer: false,
    })
}

fn vote_resp(granted: bool) -> Body {
    Body::VoteResp(VoteResponse { granted })
}

fn accepted(match_index: u64) -> Body {
    Body::AppendResp(AppendResponse::Accepted {
        match_index: LogIndex(match_index),
    })
}

/// Takes every in-flight message sent by `id`, ordered by addressee (then send order).
fn sent_by(c: &mut Cluster, id: NodeId) -> Vec<Envelope> {
    let mut out = c.take_messages(|m| m.from == id);
    out.sort_by_key(|m| m.to);
    out
}

/// A cluster of voters `1..=size` that all recovered `terms` (index 1, 2, ...) at `term`.
fn cluster_with_log(size: u64, terms: &[u64], term: u64, tweak: fn(&mut Config)) -> Cluster {
    let voters: Vec<u64> = (1..=size).collect();
    let states = voters
        .iter()
        .map(|id| (n(*id), recovered_with_log(&voters, terms, term)))
        .collect();
    Cluster::from_states(states, tweak)
}

/// A three-node cluster (plain algorithm) where n1 is in `role` at term 1 and nothing is in flight.
/// A follower follows n2 (etcd `becomeFollower(1, 2)`).
fn n1_in_role(role: Role) -> Cluster {
    let mut c = Cluster::with_config(3, plain);
    match role {
        Role::Follower => {
            assert!(c.deliver_envelope(msg(2, 1, 1, heartbeat(0))));
        }
        Role::Candidate => {
            c.tick(n(1));
        }
        Role::Leader => campaign_only(&mut c, n(1)),
        Role::PreCandidate => unreachable!("the plain algorithm has no pre-candidates"),
    }
    c.net.clear();
    let st = c.status(n(1));
    assert_eq!((st.role, st.term), (role, Term(1)));
    c
}

/// The durable hard state of `id`.
fn durable_term_vote(c: &Cluster, id: NodeId) -> (Term, Option<NodeId>) {
    let hs = c.node(id).storage.state().hard_state;
    (hs.term, hs.vote)
}

// ----- §5.1 Raft basics ------------------------------------------------------------------------------

/// §5.1: "If one server's current term is smaller than the other's, then it updates its current
/// term to the larger value. If a candidate or leader discovers that its term is out of date, it
/// immediately reverts to follower state." etcd steps one AppendEntries; every kind of message with
/// a newer term does it here, and the new term is on disk (Figure 2: `currentTerm` is persistent).
fn update_term_from_message(role: Role) {
    let bodies = [
        append(LogId::default(), vec![], 0),
        heartbeat(0),
        vote(LogId::default()),
        vote_resp(false),
        accepted(0),
        Body::HeartbeatResp(HeartbeatResponse {
            round: 0,
            last_index: LogIndex(0),
        }),
    ];
    for body in bodies {
        let mut c = n1_in_role(role);
        let from_leader = matches!(body, Body::Append(_) | Body::Heartbeat(_));
        let what = format!("{role:?} stepping {body}");
        assert!(c.deliver_envelope(msg(2, 1, 2, body)));
        let st = c.status(n(1));
        assert_eq!(st.term, Term(2), "{what}");
        assert_eq!(st.role, Role::Follower, "{what}");
        let leader = if from_leader { Some(n(2)) } else { None };
        assert_eq!(st.leader, leader, "{what}");
        assert_eq!(
            durable_term_vote(&c, n(1)).0,
            Term(2),
            "{what}: term on disk"
        );
        assert!(
            c.net.iter().all(|m| m.term == Term(2)),
            "{what}: every answer carries the new term"
        );
    }
}

#[test]
fn s5_1_follower_update_term_from_message() {
    update_term_from_message(Role::Follower);
}

#[test]
fn s5_1_candidate_update_term_from_message() {
    update_term_from_message(Role::Candidate);
}

#[test]
fn s5_1_leader_update_term_from_message() {
    update_term_from_message(Role::Leader);
}

/// §5.1: "If a server receives a request with a stale term number, it rejects the request."
/// n1 (term 2, log 1@1) is sent a term-1 AppendEntries with an entry and a commit index, a term-1
/// heartbeat and a term-1 RequestVote. Nothing changes and nothing is written; each is answered
/// with the current term (Figure 2: "Reply false if term < currentTerm"): a vote denial, or for an
/// append an empty heartbeat answer that makes the stale leader step down. (etcd drops the request
/// instead.)
#[test]
fn s5_1_reject_stale_term_message() {
    let mut c = cluster_with_log(3, &[1], 2, plain);
    let before = c.status(n(1));
    c.take_batches(n(1));
    let stale = [
        append(lid(1, 1), vec![cmd(2, 1, "stale")], 2),
        heartbeat(1),
        vote(lid(1, 5)),
    ];
    for body in stale {
        let what = format!("{body}");
        let is_vote = matches!(body, Body::Vote(_));
        assert!(c.deliver_envelope(msg(2, 1, 1, body)));
        assert_eq!(c.status(n(1)), before, "{what}: state unchanged");
        assert!(c.take_batches(n(1)).is_empty(), "{what}: nothing written");
        let replies = sent_by(&mut c, n(1));
        assert_eq!(replies.len(), 1, "{what}: {replies:?}");
        let reply = &replies[0];
        assert_eq!((reply.to, reply.term), (n(2), Term(2)), "{what}");
        if is_vote {
            assert_eq!(reply.body, vote_resp(false), "{what}");
        } else {
            assert!(
                matches!(reply.body, Body::HeartbeatResp(_)),
                "{what}: not an acknowledgement: {reply:?}"
            );
        }
    }
    assert_eq!(c.raft(n(1)).stats().messages_stale, 3);
}

// ----- §5.2 Leader election --------------------------------------------------------------------------

/// §5.2: "When servers start up, they begin as followers." Also after a restart: a leader that
/// crashes comes back as a follower of its durable term, knowing no leader.
#[test]
fn s5_2_start_as_follower() {
    let mut c = Cluster::new(3);
    for id in c.ids() {
        let st = c.status(id);
        assert_eq!(
            (st.role, st.term, st.leader, st.vote),
            (Role::Follower, Term(0), None, None),
            "{id}"
        );
        let (_, why) = c.raft(id).poll_timeout().expect("a follower has a timer");
        assert_eq!(why, TimerKind::Election, "{id}");
    }
    c.elect(n(1));
    c.crash(n(1));
    let st = c.status(n(1));
    assert_eq!(
        (st.role, st.term, st.leader),
        (Role::Follower, Term(1), None)
    );
}

/// §5.2: "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log entries) to all
/// followers in order to maintain their authority." The leader has ten entries its followers lack
/// (their appends were lost); at every heartbeat interval it sends one heartbeat to each follower,
/// carrying no entries and a commit index no follower can overrun (min(commit, match)).
#[test]
fn s5_2_leader_bcast_beat() {
    let mut c = Cluster::new(3);
    c.elect(n(1));
    let commit = c.status(n(1)).commit;
    assert_eq!(commit, LogIndex(1), "the no-op");
    for seq in 1..=10 {
        c.propose(n(1), 1, seq, b"x").unwrap();
    }
    assert_eq!(
        c.drop_messages(|_| true),
        20,
        "the ten appends to each follower are lost"
    );
    let heartbeat_interval = c.raft(n(1)).config().heartbeat_interval;
    for _ in 0..2 {
        let before = c.now;
        assert_eq!(c.tick(n(1)), TimerKind::Heartbeat);
        assert_eq!(c.now, before + heartbeat_interval, "periodic");
        let sent = sent_by(&mut c, n(1));
        let to: Vec<NodeId> = sent.iter().map(|m| m.to).collect();
        assert_eq!(to, [n(2), n(3)], "one message per follower: {sent:?}");
        for m in sent {
            assert_eq!(m.term, Term(1));
            assert!(
                matches!(m.body, Body::Heartbeat(h) if h.commit == commit),
                "an empty AppendEntries: {m:?}"
            );
        }
    }
}

/// §5.2: "If a follower receives no communication over a period of time called the election
/// timeout, then it assumes there is no viable leader and begins an election to choose a new
/// leader. To begin an election, a follower increments its current term and transitions to
/// candidate state. It then votes for itself and issues RequestVote RPCs in parallel to each of the
/// other servers in the cluster." And: "If [the candidate] neither wins nor loses the election ...
/// each candidate will time out and start a new election by incrementing its term and initiating
/// another round of RequestVote RPCs." The timeout is drawn in [t, 2t) from when the node last
/// heard from the leader, or started its campaign; nothing happens before it.
fn nonleader_start_election(role: Role) {
    let mut c = n1_in_role(role);
    let start = c.now;
    let (deadline, why) = c.raft(n(1)).poll_timeout().expect("a timer");
    assert_eq!(why, TimerKind::Election);
    assert!(deadline >= start + ET && deadline < start + 2 * ET);
    // Just before the deadline, a spurious wake-up changes nothing.
    c.advance(deadline.saturating_duration_since(start) - Duration::from_nanos(1));
    c.handle(n(1), Input::Timeout);
    assert_eq!((c.status(n(1)).role, c.status(n(1)).term), (role, Term(1)));
    assert!(c.net.is_empty());
    c.tick(n(1));
    assert_eq!(c.now, deadline);
    let st = c.status(n(1));
    assert_eq!(
        (st.role, st.term, st.vote),
        (Role::Candidate, Term(2), Some(n(1)))
    );
    assert_eq!(
        durable_term_vote(&c, n(1)),
        (Term(2), Some(n(1))),
        "term and self-vote on disk"
    );
    let sent = sent_by(&mut c, n(1));
    let expected: Vec<Envelope> = [2, 3]
        .into_iter()
        .map(|to| msg(1, to, 2, vote(LogId::default())))
        .collect();
    assert_eq!(sent, expected);
}

#[test]
fn s5_2_follower_start_election() {
    nonleader_start_election(Role::Follower);
}

#[test]
fn s5_2_candidate_start_new_election() {
    nonleader_start_election(Role::Candidate);
}

/// §5.2, the three outcomes of one round of RequestVote: "(a) it wins the election, (b) another
/// server establishes itself as leader, or (c) a period of time goes by with no winner." "A
/// candidate wins an election if it receives votes from a majority of the servers in the full
/// cluster for the same term." Like etcd, a candidate denied by a majority returns to follower
/// state (it cannot win this term); otherwise it stays a candidate.
#[test]
fn s5_2_leader_election_in_one_round_rpc() {
    use Role::{Candidate, Follower, Leader};
    // (cluster size, the answers n1 receives as (voter, granted), n1's role afterwards)
    type Case = (u64, &'static [(u64, bool)], Role);
    let cases: [Case; 13] = [
        // A majority of votes wins.
        (1, &[], Leader),
        (3, &[(2, true), (3, true)], Leader),
        (3, &[(2, true)], Leader),
        (5, &[(2, true), (3, true), (4, true), (5, true)], Leader),
        (5, &[(2, true), (3, true), (4, true)], Leader),
        (5, &[(2, true), (3, true)], Leader),
        // A majority of denials: back to follower.
        (3, &[(2, false), (3, false)], Follower),
        (
            5,
            &[(2, false), (3, false), (4, false), (5, false)],
            Follower,
        ),
        (
            5,
            &[(2, true), (3, false), (4, false), (5, false)],
            Follower,
        ),
        // Neither: still a candidate.
        (3, &[], Candidate),
        (5, &[(2, true)], Candidate),
        (5, &[(2, false), (3, false)], Candidate),
        (5, &[], Candidate),
    ];
    for (i, (size, votes, role)) in cases.into_iter().enumerate() {
        let mut c = Cluster::with_config(size, plain);
        c.tick(n(1));
        let requests = sent_by(&mut c, n(1));
        assert_eq!(
            requests.len() as u64,
            size - 1,
            "#{i}: a request to every other server"
        );
        for (from, granted) in votes {
            assert!(c.deliver_envelope(msg(*from, 1, 1, vote_resp(*granted))));
        }
        let st = c.status(n(1));
        assert_eq!(
            (st.role, st.term),
            (role, Term(1)),
            "#{i}: {size} nodes, {votes:?}"
        );
    }
}

/// §5.2: "Each server will vote for at most one candidate in a given term, on a first-come-
/// first-served basis." n1 at term 1, having voted for `voted` (or nobody), is asked by `asker`.
/// Then in sequence: the first asker gets the vote, the second does not, the first asking again
/// gets it again (a retransmission), and the vote was on disk before the grant went out.
#[test]
fn s5_2_follower_vote() {
    let cases = [
        (None, 2, true),
        (None, 3, true),
        (Some(2), 2, true),
        (Some(3), 3, true),
        (Some(2), 3, false),
        (Some(3), 2, false),
    ];
    for (voted, asker, granted) in cases {
        let mut rec = recovered_with_log(&[1, 2, 3], &[], 1);
        rec.hard_state.vote = voted.map(NodeId);
        let states = vec![
            (n(1), rec),
            (n(2), Recovered::bootstrap([n(1), n(2), n(3)])),
            (n(3), Recovered::bootstrap([n(1), n(2), n(3)])),
        ];
        let mut c = Cluster::from_states(states, plain);
        assert!(c.deliver_envelope(msg(asker, 1, 1, vote(LogId::default()))));
        let sent = sent_by(&mut c, n(1));
        assert_eq!(
            sent,
            [msg(1, asker, 1, vote_resp(granted))],
            "voted for {voted:?}, asked by n{asker}"
        );
    }
    let mut c = Cluster::with_config(3, plain);
    c.hold_persist(n(1));
    assert!(c.deliver_envelope(msg(2, 1, 1, vote(LogId::default()))));
    assert!(
        c.net.is_empty(),
        "the grant waits for the vote to be durable"
    );
    c.persist(n(1));
    assert_eq!(durable_term_vote(&c, n(1)), (Term(1), Some(n(2))));
    assert_eq!(sent_by(&mut c, n(1)), [msg(1, 2, 1, vote_resp(true))]);
    for (asker, granted) in [(3, false), (2, true), (3, false)] {
        assert!(c.deliver_envelope(msg(asker, 1, 1, vote(LogId::default()))));
        assert_eq!(
            sent_by(&mut c, n(1)),
            [msg(1, asker, 1, vote_resp(granted))],
            "n{asker} after n2 got the vote"
        );
    }
    assert!(
        c.node(n(1)).unpersisted.is_empty(),
        "the vote was written once"
    );
}

/// §5.2: "While waiting for votes, a candidate may receive an AppendEntries RPC from another server
/// claiming to be leader. If the leader's term (included in its RPC) is at least as large as the
/// candidate's current term, then the candidate recognizes the leader as legitimate and returns to
/// follower state. If the term in the RPC is smaller than the candidate's current term, then the
/// candidate rejects the RPC and continues in candidate state."
#[test]
fn s5_2_candidate_fallback() {
    for term in [1, 2] {
        let mut c = n1_in_role(Role::Candidate);
        assert!(c.deliver_envelope(msg(2, 1, term, append(LogId::default(), vec![], 0))));
        let st = c.status(n(1));
        assert_eq!(
            (st.role, st.term, st.leader),
            (Role::Follower, Term(term), Some(n(2))),
            "AppendEntries of term {term}"
        );
        assert_eq!(sent_by(&mut c, n(1)), [msg(1, 2, term, accepted(0))]);
    }
    // A stale leader does not stop the campaign.
    let mut c = n1_in_role(Role::Candidate);
    c.tick(n(1));
    c.net.clear();
    assert_eq!(c.status(n(1)).term, Term(2));
    assert!(c.deliver_envelope(msg(2, 1, 1, append(LogId::default(), vec![], 0))));
    let st = c.status(n(1));
    assert_eq!(
        (st.role, st.term, st.leader),
        (Role::Candidate, Term(2), None)
    );
    let refusal = Body::HeartbeatResp(HeartbeatResponse {
        round: 0,
        last_index: LogIndex(0),
    });
    assert_eq!(
        sent_by(&mut c, n(1)),
        [msg(1, 2, 2, refusal)],
        "the stale append is refused with the candidate's term"
    );
}

/// The bucket (tenths of the election timeout, etcd's ticks) of a wait in [ET, 2 ET).
fn tenth_of_timeout(waited: Duration) -> usize {
    assert!(
        waited >= ET && waited < 2 * ET,
        "election timeout {waited:?} outside [t, 2t)"
    );
    usize::try_from((waited - ET).as_nanos() * 10 / ET.as_nanos()).expect("below 10")
}

/// §5.2: "Raft uses randomized election timeouts ... election timeouts are chosen randomly from a
/// fixed interval (e.g., 150–300ms)." n1 becomes a follower (of n2, in a new term) or starts a new
/// campaign 500 times; each time, the wait until it campaigns lies in [t, 2t), and every tenth of
/// that interval (etcd's ticks) is hit a fair share of the time.
fn nonleader_election_timeout_randomized(role: Role) {
    let mut c = n1_in_role(role);
    let mut tenths = [0u32; 10];
    for _ in 0..500 {
        if role == Role::Follower {
            let term = c.status(n(1)).term.0 + 1;
            assert!(c.deliver_envelope(msg(2, 1, term, heartbeat(0))));
            assert_eq!(c.status(n(1)).role, Role::Follower);
        }
        c.net.clear();
        let start = c.now;
        let term = c.status(n(1)).term;
        assert_eq!(c.tick(n(1)), TimerKind::Election);
        let st = c.status(n(1));
        assert_eq!(
            (st.role, st.term),
            (Role::Candidate, term.next()),
            "it campaigned"
        );
        tenths[tenth_of_timeout(c.now.saturating_duration_since(start))] += 1;
    }
    assert!(
        tenths.iter().all(|&k| k >= 20),
        "timeouts spread over [t, 2t): {tenths:?}"
    );
}

#[test]
fn s5_2_follower_election_timeout_randomized() {
    nonleader_election_timeout_randomized(Role::Follower);
}

#[test]
fn s5_2_candidate_election_timeout_randomized() {
    nonleader_election_timeout_randomized(Role::Candidate);
}

/// §5.2: randomized timeouts spread out the servers "so that in most cases only a single server
/// will time out; it wins the election and sends heartbeats before any other servers time out."
/// Five nodes become followers (a candidate with a stale log announces a new term) or candidates
/// (all their timers fire) at the same instant, 1000 times. etcd counts a conflict when two nodes
/// time out in the same tick and allows 30%; with ticks of a tenth of the timeout the expected
/// rate is 23%. Our clock is continuous, so we also count the rounds where the second node times out
/// within a broadcast time (§5.6; here a hundredth of the timeout, 10 ms) of the first, which
/// should happen about 5% of the time.
fn nonleaders_election_timeout_nonconflict(role: Role) {
    let size = 5;
    let mut c = cluster_with_log(size, &[1], 1, plain);
    let (mut same_tick, mut within_broadcast) = (0, 0);
    let rounds = 1000;
    for _ in 0..rounds {
        match role {
            Role::Follower => {
                let term = c.status(n(1)).term.0 + 1;
                for id in 1..=size {
                    let from = id % size + 1;
                    assert!(c.deliver_envelope(msg(from, id, term, vote(LogId::default()))));
                }
            }
            Role::Candidate => {
                c.advance(2 * ET);
                for id in 1..=size {
                    c.handle(n(id), Input::Timeout);
                }
            }
            _ => unreachable!(),
        }
        c.net.clear();
        let mut waits: Vec<Duration> = (1..=size)
            .map(|id| {
                assert_eq!(c.status(n(id)).role, role);
                let (at, _) = c.raft(n(id)).poll_timeout().expect("a timer");
                at.saturating_duration_since(c.now)
            })
            .collect();
        waits.sort();
        if tenth_of_timeout(waits[0]) == tenth_of_timeout(waits[1]) {
            same_tick += 1;
        }
        if waits[1] - waits[0] < ET / 100 {
            within_broadcast += 1;
        }
    }
    let rate = |k: u32| f64::from(k) / f64::from(rounds);
    assert!(
        rate(same_tick) <= 0.3,
        "{same_tick} of {rounds} rounds conflict"
    );
    assert!(
        rate(within_broadcast) <= 0.1,
        "{within_broadcast} of {rounds} rounds within 10 ms"
    );
}

#[test]
fn s5_2_followers_election_timeout_nonconflict() {
    nonleaders_election_timeout_nonconflict(Role::Follower);
}

#[test]
fn s5_2_candidates_election_timeout_nonconflict() {
    nonleaders_election_timeout_nonconflict(Role::Candidate);
}

// ----- §5.3 Log replication --------------------------------------------------------------------------

/// A cluster of `size` voters whose leader n1 committed its no-op at index 1 (followers hold it too).
fn leader_with_noop(size: u64) -> Cluster {
    let mut c = Cluster::new(size);
    c.elect(n(1));
    let st = c.status(n(1));
    assert_eq!(
        (st.term, st.commit, st.last),
        (Term(1), LogIndex(1), lid(1, 1))
    );
    c
}

/// §5.3: "The leader appends the command to its log as a new entry, then issues AppendEntries RPCs
/// in parallel to each of the other servers to replicate the entry." "When sending an
/// AppendEntries RPC, the leader includes the index and term of the entry in its log that
/// immediately precedes the new entries." And the entry goes to stable storage (Figure 2). Our
/// leader sends the appends in parallel with its own write (thesis §10.2.1): they are out while the
/// write is still pending.
#[test]
fn s5_3_leader_start_replication() {
    let mut c = leader_with_noop(3);
    c.take_batches(n(1));
    c.hold_persist(n(1));
    let li = c.status(n(1)).last.index;
    let index = c.propose(n(1), 1, 1, b"some data").unwrap();
    assert_eq!(index, li.next());
    let st = c.status(n(1));
    assert_eq!((st.last, st.commit), (lid(1, index.0), li));
    let entry = c.raft(n(1)).log().entry(index).cloned().expect("appended");
    assert_eq!(
        entry.payload,
        Payload::Command {
            client: ClientId(1),
            seq: 1,
            data: b"some data".to_vec()
        }
    );
    let expected: Vec<Envelope> = [2, 3]
        .into_iter()
        .map(|to| msg(1, to, 1, append(lid(1, li.0), vec![entry.clone()], li.0)))
        .collect();
    assert_eq!(sent_by(&mut c, n(1)), expected);
    let batches = c.take_batches(n(1));
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].ops, [PersistOp::Append(vec![entry.clone()])]);
    assert_eq!(
        c.node(n(1)).unpersisted.len(),
        1,
        "the write is still pending"
    );
    c.persist(n(1));
    assert_eq!(c.node(n(1)).storage.state().entries.last(), Some(&entry));
}

/// §5.3: "When the entry has been safely replicated ..., the leader applies the entry to its state
/// machine and returns the result of that execution to the client." "The leader keeps track of the
/// highest index it knows to be committed, and it includes that index in future AppendEntries RPCs
/// (including heartbeats) so that the other servers eventually find out."
#[test]
fn s5_3_leader_commit_entry() {
    let mut c = leader_with_noop(3);
    let li = c.status(n(1)).last.index;
    let index = c.propose(n(1), 1, 1, b"some data").unwrap();
    c.stabilize();
    assert_eq!(c.status(n(1)).commit, li.next());
    assert_eq!(c.status(n(1)).applied, index);
    assert_eq!(
        c.applied(n(1)),
        [(index, 1u64.to_le_bytes().to_vec())],
        "the client's answer"
    );
    assert_eq!(
        c.raft(n(1)).state_machine().commands,
        [b"some data".to_vec()]
    );
    // The next heartbeats carry the new commit index...
    assert_eq!(c.tick(n(1)), TimerKind::Heartbeat);
    let heartbeats = sent_by(&mut c, n(1));
    assert_eq!(heartbeats.len(), 2);
    for m in heartbeats {
        assert!(
            matches!(m.body, Body::Heartbeat(h) if h.commit == index),
            "{m:?}"
        );
    }
    // ... and so do the next appends.
    c.propose(n(1), 1, 2, b"more").unwrap();
    let appends = sent_by(&mut c, n(1));
    assert_eq!(appends.len(), 2);
    for m in appends {
        assert!(
            matches!(&m.body, Body::Append(a) if a.commit == index),
            "{m:?}"
        );
        c.deliver_envelope(m);
    }
    for id in [n(2), n(3)] {
        assert_eq!(c.status(id).commit, index, "{id} found out");
        assert_eq!(
            c.raft(id).state_machine().commands,
            [b"some data".to_vec()],
            "{id}"
        );
    }
}

/// §5.3: "A log entry is committed once the leader that created the entry has replicated it on a
/// majority of the servers." Only the followers in `acceptors` receive the append (the others'
/// are lost); the leader's own copy counts once it is durable. A leader whose write is still
/// pending commits on two followers' acknowledgements alone (thesis §10.2.1), but not on one.
#[test]
fn s5_3_leader_acknowledge_commit() {
    let cases: [(u64, &[u64], bool); 9] = [
        (1, &[], true),
        (3, &[], false),
        (3, &[2], true),
        (3, &[2, 3], true),
        (5, &[], false),
        (5, &[2], false),
        (5, &[2, 3], true),
        (5, &[2, 3, 4], true),
        (5, &[2, 3, 4, 5], true),
    ];
    for (size, acceptors, committed) in cases {
        let mut c = leader_with_noop(size);
        let li = c.status(n(1)).last.index;
        let index = c.propose(n(1), 1, 1, b"some data").unwrap();
        c.drop_messages(|m| !acceptors.contains(&m.to.0));
        c.deliver_all();
        let what = format!("{size} nodes, accepted by {acceptors:?}");
        assert_eq!(c.status(n(1)).commit > li, committed, "{what}");
        assert_eq!(
            c.applied(n(1)).iter().any(|(i, _)| *i == index),
            committed,
            "{what}: the client hears back only once committed"
        );
    }
    for (acceptors, committed) in [(&[2][..], false), (&[2, 3][..], true)] {
        let mut c = leader_with_noop(3);
        c.hold_persist(n(1));
        c.propose(n(1), 1, 1, b"some data").unwrap();
        c.drop_messages(|m| !acceptors.contains(&m.to.0));
        c.deliver_all();
        let durable_last = c.node(n(1)).storage.state().entries.last().map(|e| e.id);
        assert_eq!(
            durable_last,
            Some(lid(1, 1)),
            "{acceptors:?}: the leader's write is pending"
        );
        let commit = c.status(n(1)).commit;
        assert_eq!(
            commit == LogIndex(2),
            committed,
            "accepted by {acceptors:?}"
        );
    }
}

/// §5.3: "This also commits all preceding entries in the leader's log, including entries created by
/// previous leaders." And (§5.3) each server applies committed entries "to its state machine (in
/// log order)". n1 holds entries of terms 1 and 2 that its followers never saw, wins term 3, and
/// commits its no-op and a new command: the old commands apply first, in order.
#[test]
fn s5_3_leader_commit_preceding_entries() {
    let cases: [&[u64]; 4] = [&[], &[2], &[1, 2], &[1]];
    for terms in cases {
        let old: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, t)| cmd(i as u64 + 1, *t, &format!("old {i}")))
            .collect();
        let mut rec = recovered_with_log(&[1, 2, 3], &[], 2);
        rec.entries = old.clone();
        let mut states = vec![(n(1), rec)];
        for id in [2, 3] {
            states.push((n(id), recovered_with_log(&[1, 2, 3], &[], 2)));
        }
        let mut c = Cluster::from_states(states, |_| {});
        c.elect(n(1));
        assert_eq!(c.status(n(1)).term, Term(3));
        c.propose(n(1), 1, 1, b"some data").unwrap();
        c.stabilize();
        let li = terms.len() as u64;
        let mut expected_log = old.iter().map(|e| e.id).collect::<Vec<_>>();
        expected_log.extend([lid(3, li + 1), lid(3, li + 2)]);
        let log: Vec<LogId> = c.raft(n(1)).log().entries().map(|e| e.id).collect();
        assert_eq!(log, expected_log, "{terms:?}");
        let st = c.status(n(1));
        assert_eq!(
            (st.commit, st.applied),
            (LogIndex(li + 2), LogIndex(li + 2)),
            "{terms:?}"
        );
        let mut expected: Vec<Vec<u8>> = (0..terms.len())
            .map(|i| format!("old {i}").into_bytes())
            .collect();
        expected.push(b"some data".to_vec());
        assert_eq!(c.raft(n(1)).state_machine().commands, expected, "{terms:?}");
        c.settle();
        c.assert_converged(n(1));
    }
}

/// §5.3: "Once a follower learns that a log entry is committed, it applies the entry to its local
/// state machine (in log order)." A follower appends two commands and learns a commit index of 1
/// or 2.
#[test]
fn s5_3_follower_commit_entry() {
    let cases: [(&[&str], u64); 4] = [
        (&["some data"], 1),
        (&["some data", "some data2"], 2),
        (&["some data2", "some data"], 2),
        (&["some data", "some data2"], 1),
    ];
    for (datas, commit) in cases {
        let mut c = cluster_with_log(3, &[], 1, plain);
        let entries: Vec<Entry> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| cmd(i as u64 + 1, 1, d))
            .collect();
        let len = entries.len() as u64;
        assert!(c.deliver_envelope(msg(2, 1, 1, append(LogId::default(), entries, commit))));
        let st = c.status(n(1));
        assert_eq!(
            (st.commit, st.applied),
            (LogIndex(commit), LogIndex(commit))
        );
        let applied: Vec<Vec<u8>> = datas[..commit as usize]
            .iter()
            .map(|d| d.as_bytes().to_vec())
            .collect();
        assert_eq!(
            c.raft(n(1)).state_machine().commands,
            applied,
            "{datas:?} commit {commit}"
        );
        assert_eq!(sent_by(&mut c, n(1)), [msg(1, 2, 1, accepted(len))]);
    }
}

/// §5.3: "If the follower does not find an entry in its log with the same index and term [as the
/// one that precedes the new entries], then it refuses the new entries." Otherwise it accepts. The
/// follower holds 1@1 (committed) and 2@2; the leader (term 2) probes with no entries. A refusal
/// carries the follower's hint for fast back-tracking (§5.3, end).
#[test]
fn s5_3_follower_check_msg_app() {
    let mut rec = recovered_with_log(&[1, 2, 3], &[1, 2], 2);
    rec.hard_state.commit = LogIndex(1);
    let rejected = |at: u64, hint: LogId| {
        Body::AppendResp(AppendResponse::Rejected {
            rejected: LogIndex(at),
            hint,
        })
    };
    let cases = [
        // Match with the committed entry (or before it). A match is acknowledged up to what the
        // message proves, prev plus its entries (etcd answers its commit index, 1, for prev 0@0).
        (lid(0, 0), accepted(0)),
        (lid(1, 1), accepted(1)),
        // Match with the uncommitted entry.
        (lid(2, 2), accepted(2)),
        // An entry at that index with another term.
        (lid(1, 2), rejected(2, lid(1, 1))),
        // No entry at that index.
        (lid(2, 3), rejected(3, lid(2, 2))),
    ];
    for (prev, answer) in cases {
        let states = (1..=3).map(|id| (n(id), rec.clone())).collect();
        let mut c = Cluster::from_states(states, plain);
        assert!(c.deliver_envelope(msg(2, 1, 2, append(prev, vec![], 0))));
        assert_eq!(
            sent_by(&mut c, n(1)),
            [msg(1, 2, 2, answer)],
            "prev {prev:?}"
        );
        assert_eq!(c.log_terms(n(1)), [1, 2], "prev {prev:?}: log unchanged");
    }
    // etcd's last case, prev 3@3 from a term-2 leader, cannot come from a correct leader (no entry
    // of a term above the leader's own exists): it is dropped as invalid and not answered.
    let states = (1..=3).map(|id| (n(id), rec.clone())).collect();
    let mut c = Cluster::from_states(states, plain);
    assert!(c.deliver_envelope(msg(2, 1, 2, append(lid(3, 3), vec![], 0))));
    assert!(sent_by(&mut c, n(1)).is_empty());
    assert_eq!(c.raft(n(1)).stats().messages_invalid, 1);
}

/// §5.3: the follower deletes "any entries in the follower's log after [the point where the two logs
/// agree]" and receives the leader's; in Figure 2's words (AppendEntries receiver, steps 3-4): "If
/// an existing entry conflicts with a new one (same index but different terms), delete the existing
/// entry and all that follow it. Append any new entries not already in the log." The new entries
/// go to stable storage (Figure 2: `log[]` is persistent state). The
/// follower holds 1@1 2@2; the leader is of term 4 (etcd's term-2 leader sends term-3 and term-4
/// entries, which our follower would drop as impossible).
#[test]
fn s5_3_follower_append_entries() {
    let e = |index, term| noop(index, term);
    // (prev, entries, the follower's log terms afterwards, the log writes)
    type Case = (LogId, Vec<Entry>, &'static [u64], Vec<PersistOp>);
    let cases: [Case; 4] = [
        (
            lid(2, 2),
            vec![e(3, 3)],
            &[1, 2, 3],
            vec![PersistOp::Append(vec![e(3, 3)])],
        ),
        (
            lid(1, 1),
            vec![e(2, 3), e(3, 4)],
            &[1, 3, 4],
            vec![
                PersistOp::Truncate { from: LogIndex(2) },
                PersistOp::Append(vec![e(2, 3), e(3, 4)]),
            ],
        ),
        (lid(0, 0), vec![e(1, 1)], &[1, 2], vec![]),
        (
            lid(0, 0),
            vec![e(1, 3)],
            &[3],
            vec![
                PersistOp::Truncate { from: LogIndex(1) },
                PersistOp::Append(vec![e(1, 3)]),
            ],
        ),
    ];
    for (prev, entries, terms, ops) in cases {
        let mut c = cluster_with_log(3, &[1, 2], 2, plain);
        c.take_batches(n(1));
        let what = format!("prev {prev:?}, {} entries", entries.len());
        assert!(c.deliver_envelope(msg(2, 1, 4, append(prev, entries, 0))));
        assert_eq!(c.log_terms(n(1)), terms, "{what}");
        let log_ops: Vec<PersistOp> = c
            .take_batches(n(1))
            .into_iter()
            .flat_map(|b| b.ops)
            .filter(|op| matches!(op, PersistOp::Append(_) | PersistOp::Truncate { .. }))
            .collect();
        assert_eq!(log_ops, ops, "{what}");
        let durable: Vec<u64> = c
            .node(n(1))
            .storage
            .state()
            .entries
            .iter()
            .map(|e| e.term().0)
            .collect();
        assert_eq!(durable, terms, "{what}: on disk");
    }
}

/// §5.3 and Figure 7: "the leader handles inconsistencies by forcing the followers' logs to
/// duplicate its own." The term-8 leader's log is 1 1 1 4 4 5 5 6 6 6; the follower holds one of
/// Figure 7's logs (a)-(f) and the third node the leader's log, so the leader can win term 9 even
/// where the follower's log is more up-to-date. After one new entry, the follower's log is the
/// leader's, entry for entry. (`raft_scripted.rs` runs all six followers at once and counts the
/// messages fast back-tracking needs.)
#[test]
fn s5_3_leader_sync_follower_log() {
    let leader: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    let voters = [1, 2, 3];
    for follower in followers {
        let states = vec![
            (n(1), recovered_with_log(&voters, leader, 8)),
            (n(2), recovered_with_log(&voters, follower, 7)),
            (n(3), recovered_with_log(&voters, leader, 7)),
        ];
        let mut c = Cluster::from_states(states, |_| {});
        c.elect(n(1));
        assert_eq!(c.status(n(1)).term, Term(9));
        c.propose(n(1), 1, 1, b"").unwrap();
        c.stabilize();
        let log = |id| c.raft(n(id)).log().entries().cloned().collect::<Vec<_>>();
        assert_eq!(log(2), log(1), "follower {follower:?}");
        assert_eq!(c.log_terms(n(1)), [leader, &[9, 9]].concat());
    }
}

// ----- §5.4 Safety -----------------------------------------------------------------------------------

/// §5.4.1: "The RequestVote RPC implements this restriction: the RPC includes information about the
/// candidate's log", its last entry's index and term (Figure 2: lastLogIndex, lastLogTerm), and is
/// sent to every other server. With pre-vote (our default) the pre-vote request carries the same.
#[test]
fn s5_4_1_vote_request() {
    let cases: [(&[u64], u64); 2] = [(&[1], 2), (&[1, 2], 3)];
    for pre_vote in [false, true] {
        for (terms, campaign_term) in cases {
            let mut c = Cluster::with_config(3, |cfg| {
                plain(cfg);
                cfg.pre_vote = pre_vote;
            });
            let entries: Vec<Entry> = terms
                .iter()
                .enumerate()
                .map(|(i, t)| noop(i as u64 + 1, *t))
                .collect();
            let last = entries.last().expect("non-empty").id;
            let leader_term = campaign_term - 1;
            assert!(c.deliver_envelope(msg(
                2,
                1,
                leader_term,
                append(LogId::default(), entries, 0)
            )));
            c.net.clear();
            c.tick(n(1));
            let sent = sent_by(&mut c, n(1));
            let to: Vec<NodeId> = sent.iter().map(|m| m.to).collect();
            assert_eq!(to, [n(2), n(3)]);
            for m in sent {
                assert_eq!(m.term, Term(campaign_term), "{m:?}");
                let req = VoteRequest {
                    last_log: last,
                    transfer: false,
                };
                let body = if pre_vote {
                    Body::PreVote(req)
                } else {
                    Body::Vote(req)
                };
                assert_eq!(m.body, body);
            }
        }
    }
}

/// §5.4.1: "The voter denies its vote if its own log is more up-to-date than that of the
/// candidate." "If the logs have last entries with different terms, then the log with the later
/// term is more up-to-date. If the logs end with the same term, then whichever log is longer is
/// more up-to-date."
#[test]
fn s5_4_1_voter() {
    let cases: [(&[u64], LogId, bool); 10] = [
        // Same last term.
        (&[1], lid(1, 1), true),
        (&[1], lid(1, 2), true),
        (&[1, 1], lid(1, 1), false),
        // The candidate's last term is higher.
        (&[1], lid(2, 1), true),
        (&[1], lid(2, 2), true),
        (&[1, 1], lid(2, 1), true),
        // The voter's last term is higher.
        (&[2], lid(1, 1), false),
        (&[2], lid(1, 2), false),
        (&[2, 2], lid(1, 1), false),
        (&[1, 1], lid(1, 1), false),
    ];
    for (terms, candidate_last, granted) in cases {
        let voters = [1, 2];
        let last_term = terms.last().copied().unwrap_or(0);
        let states = vec![
            (n(1), recovered_with_log(&voters, terms, last_term)),
            (n(2), recovered_with_log(&voters, &[], 0)),
        ];
        // The plain algorithm: with check-quorum a node that just started ignores votes for an
        // election timeout (it cannot know whether a leader's lease still counts on it).
        let mut c = Cluster::from_states(states, |cfg| cfg.check_quorum = false);
        assert!(c.deliver_envelope(msg(2, 1, 3, vote(candidate_last))));
        let what = format!("voter {terms:?}, candidate's last {candidate_last:?}");
        assert_eq!(
            sent_by(&mut c, n(1)),
            [msg(1, 2, 3, vote_resp(granted))],
            "{what}"
        );
        let vote = granted.then_some(n(2));
        assert_eq!(c.status(n(1)).vote, vote, "{what}");
    }
}

/// §5.4.2: "Raft never commits log entries from previous terms by counting replicas. Only log
/// entries from the leader's current term are committed by counting replicas." n1 holds 1@1 2@2 and
/// leads term 3 with its no-op at 3 and a command at 4, in a two-node cluster: n2 acknowledging
/// index 1 or 2 commits nothing; acknowledging index 3 commits 3 (and 1, 2 with it). (Figure 8 is
/// played out in `raft_scripted.rs`.)
#[test]
fn s5_4_2_leader_only_commits_log_from_current_term() {
    for (acked, commit) in [(1, 0), (2, 0), (3, 3)] {
        let voters = [1, 2];
        let states = vec![
            (n(1), recovered_with_log(&voters, &[1, 2], 2)),
            (n(2), recovered_with_log(&voters, &[], 2)),
        ];
        let mut c = Cluster::from_states(states, |_| {});
        campaign_only(&mut c, n(1));
        assert_eq!(c.status(n(1)).term, Term(3));
        c.propose(n(1), 1, 1, b"x").unwrap();
        c.net.clear();
        assert_eq!(c.log_terms(n(1)), [1, 2, 3, 3]);
        assert!(c.deliver_envelope(msg(2, 1, 3, accepted(acked))));
        let st = c.status(n(1));
        assert_eq!(
            (st.commit, st.applied),
            (LogIndex(commit), LogIndex(commit)),
            "n2 holds up to {acked}"
        );
    }
}
