//! Regression tests for hostile input: hostile extreme values are dropped and counted,
//! and a leader's messages wait until its term is durable.

use paloma_core::raft::fuzz::LastCommand;
use paloma_core::raft::io::{Input, Output, Role};
use paloma_core::raft::message::{
    AppendRequest, Body, Envelope, HeartbeatRequest, SnapshotChunk, VoteResponse,
};
use paloma_core::raft::storage::Recovered;
use paloma_core::raft::{Config, Entry, Membership, Payload, RaftNode, Snapshot, SnapshotMeta};
use paloma_core::{Instant, LogId, LogIndex, NodeId, Term};
use std::time::Duration;

fn follower() -> RaftNode<LastCommand> {
    let cfg = Config {
        id: NodeId(2),
        ..Config::default()
    };
    RaftNode::new(
        cfg,
        Recovered::bootstrap([NodeId(1), NodeId(2), NodeId(3)]),
        LastCommand::default(),
        1,
        Instant::ZERO,
    )
    .unwrap()
}

fn drain(node: &mut RaftNode<LastCommand>, now: Instant) {
    while let Some(out) = node.poll_output() {
        if let Output::Persist(b) = out {
            node.handle(now, Input::Persisted(b.seq));
        }
    }
}

#[test]
fn extreme_terms_and_indexes_are_dropped_not_panics() {
    let mut node = follower();
    let now = Instant::from_millis(1);
    let max = Term(u64::MAX);
    let hostile = [
        Envelope {
            from: NodeId(1),
            to: NodeId(2),
            term: max,
            body: Body::Heartbeat(HeartbeatRequest {
                commit: LogIndex(0),
                round: 0,
            }),
        },
        Envelope {
            from: NodeId(1),
            to: NodeId(2),
            term: max,
            body: Body::PreVoteResp(VoteResponse { granted: true }),
        },
        Envelope {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(0),
            body: Body::Append(AppendRequest {
                prev: LogId::new(Term(0), LogIndex(u64::MAX)),
                entries: vec![Entry {
                    id: LogId::new(Term(0), LogIndex(0)),
                    unix_ms: 0,
                    payload: Payload::Noop,
                }],
                commit: LogIndex(0),
            }),
        },
        Envelope {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(0),
            body: Body::Snapshot(SnapshotChunk {
                meta: SnapshotMeta {
                    last: LogId::new(Term(0), LogIndex(u64::MAX)),
                    membership: Membership::default(),
                    data_hash: [0; 32],
                },
                offset: 0,
                total: 0,
                data: vec![],
            }),
        },
    ];
    for env in hostile {
        node.handle(now, Input::Message(env));
        drain(&mut node, now);
        node.check_invariants();
    }
    assert_eq!(
        node.stats().messages_invalid,
        4,
        "every hostile message counted"
    );
    assert_eq!(node.status().term, Term(0), "no absurd term adopted");
    // The node still works: it campaigns at its election timeout without overflowing anything.
    let later = Instant::ZERO + Duration::from_secs(5);
    node.handle(later, Input::Timeout);
    drain(&mut node, later);
    node.check_invariants();
}

#[test]
fn single_voter_leader_sends_nothing_before_its_term_is_durable() {
    let membership = Membership {
        voters: [NodeId(1)].into(),
        learners: [NodeId(2)].into(),
        ..Membership::default()
    };
    let recovered = Recovered {
        snapshot: Some(Snapshot::bootstrap(membership, vec![])),
        ..Recovered::default()
    };
    let cfg = Config {
        id: NodeId(1),
        ..Config::default()
    };
    let mut node = RaftNode::new(cfg, recovered, LastCommand::default(), 3, Instant::ZERO).unwrap();
    let (deadline, _) = node.poll_timeout().unwrap();
    node.handle(deadline, Input::Timeout);
    assert_eq!(
        node.status().role,
        Role::Leader,
        "a single voter wins in the same step"
    );
    let mut batches = Vec::new();
    while let Some(out) = node.poll_output() {
        match out {
            Output::Persist(b) => batches.push(b.seq),
            Output::Send(env) => panic!("{env:?} sent before the new term was durable"),
            Output::Event(_) => {}
        }
    }
    assert!(!batches.is_empty());
    for seq in batches {
        node.handle(deadline, Input::Persisted(seq));
    }
    let mut sent = 0;
    while let Some(out) = node.poll_output() {
        if let Output::Send(env) = out {
            assert_eq!(env.to, NodeId(2));
            sent += 1;
        }
    }
    assert!(
        sent > 0,
        "the learner gets the new leader's entries once the term is durable"
    );
}
