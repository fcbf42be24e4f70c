//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by the corpus-replay tests,
//! so the code a fuzzer exercises and the code `cargo test` replays are the same.

use crate::raft::io::Input;
use crate::raft::state_machine::SnapshotDecodeError;
use crate::raft::storage::Recovered;
use crate::raft::{ApplyContext, Config, Envelope, RaftNode, StateMachine};
use crate::{Instant, NodeId};

/// A trivial state machine for fuzzing: remembers the last command.
#[derive(Debug, Default)]
pub struct LastCommand(Vec<u8>);

impl StateMachine for LastCommand {
    fn apply(&mut self, _: &ApplyContext, command: &[u8]) -> Vec<u8> {
        self.0 = command.to_vec();
        Vec::new()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError> {
        self.0 = data.to_vec();
        Ok(())
    }
}

/// Decodes `data` as a sequence of length-prefixed Raft frames (one byte of length per frame;
/// a whole-input frame if that fails) and steps a follower of a three-node cluster with them,
/// acknowledging every persist, checking invariants after each step. Must never panic.
pub fn raft_frames(data: &[u8]) {
    let cfg = Config {
        id: NodeId(2),
        // A voter that just started ignores votes for an election timeout under check-quorum
        // (a lease may still count on it); frames come 7 ms apart, so keep it off to let
        // sequences reach the voting paths.
        check_quorum: false,
        ..Config::default()
    };
    let mut node = RaftNode::new(
        cfg,
        Recovered::bootstrap([NodeId(1), NodeId(2), NodeId(3)]),
        LastCommand::default(),
        0,
        Instant::ZERO,
    )
    .expect("valid bootstrap");
    let mut now = Instant::ZERO;
    let mut rest = data;
    let mut frames = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        frames.push(&tail[..len]);
        rest = &tail[len..];
    }
    frames.push(data);
    for frame in frames {
        now = now + std::time::Duration::from_millis(7);
        node.handle_frame(now, frame);
        drain(&mut node, now);
        node.handle(now, Input::Timeout);
        drain(&mut node, now);
        node.check_invariants();
    }
}

/// Decodes `data` as one frame; if it is a valid envelope, re-encodes it and checks the round trip.
pub fn raft_decode(data: &[u8]) {
    if let Ok(env) = Envelope::decode(data, 1 << 20) {
        let again = Envelope::decode(&env.encode(), 1 << 20).expect("re-encoded frame decodes");
        assert_eq!(again, env, "decode(encode(x)) == x");
    }
}

fn drain(node: &mut RaftNode<LastCommand>, now: Instant) {
    while let Some(out) = node.poll_output() {
        if let crate::raft::io::Output::Persist(batch) = out {
            node.handle(now, Input::Persisted(batch.seq));
        }
    }
}
