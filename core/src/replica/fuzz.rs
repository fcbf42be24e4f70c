//! Fuzz entry points of the replica and the directory, shared by the cargo-fuzz targets in `fuzz/`
//! and the corpus-replay tests (`core/tests/replica_fuzz_corpus.rs`).

use super::protocol::{login, ClientFrame, ReplicaFrame};
use super::{Replica, ReplicaConfig, ReplicaInput, ReplicaOutput};
use crate::directory::{Directory, MailboxLimits, TOMBSTONES_MAX, USERS_MAX};
use crate::ids::{ClientId, ConnId, LogIndex, NodeId, Term};
use crate::raft::storage::Recovered;
use crate::raft::{ApplyContext, Config, StateMachine};
use crate::session::{Entropy, IdentityKeyPair};
use crate::time::{Instant, Now};
use std::time::Duration;

/// The identity the fuzz harness logs in with (seed corpora sign commands with it, so they get
/// past the signer check to the directory).
#[must_use]
pub fn fuzz_identity() -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut Fixed(3))
}

struct Fixed(u8);
impl Entropy for Fixed {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
    }
}

/// Feeds arbitrary client frames to a one-replica cluster that leads, on one connection; when
/// the first byte is odd the connection first logs in properly, so frames reach the request paths
/// (commands, lookups, subscriptions, deposits, mailbox fetches). The rest of the input is cut
/// into frames by one length byte each; every third frame also arrives as a peer frame from a
/// replica that is not a member. Invariants are checked after every step; nothing may panic.
/// Returns how many users the directory holds at the end (seed corpora check they reach it).
pub fn replica_client_frames(data: &[u8]) -> usize {
    replica_client_frames_reach(data).users
}

/// What a run of [`replica_client_frames`] left in the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuzzReach {
    /// Users registered.
    pub users: usize,
    /// Envelopes in all mailboxes.
    pub envelopes: u64,
    /// Envelopes acknowledged or purged: the highest last seq of the fuzz user's mailbox minus
    /// what it still holds.
    pub envelopes_gone: u64,
}

/// [`replica_client_frames`], reporting how far into the mailboxes the input got.
pub fn replica_client_frames_reach(data: &[u8]) -> FuzzReach {
    let cfg = ReplicaConfig {
        raft: Config {
            id: NodeId(1),
            ..Config::default()
        },
        ..ReplicaConfig::default()
    };
    let mut now = Now {
        instant: Instant::ZERO,
        unix_ms: 1_700_000_000_000,
    };
    let mut replica =
        Replica::new(cfg, Recovered::bootstrap([NodeId(1)]), 7, now).expect("valid bootstrap");
    // Elect: one node wins its own election after its timeout.
    for _ in 0..8 {
        tick(&mut now, Duration::from_millis(500));
        replica.handle(now, ReplicaInput::Timeout);
        drain(&mut replica, now);
    }
    let conn = ConnId(1);
    replica.handle(now, ReplicaInput::Connected(conn));
    let challenge = drain(&mut replica, now);
    let login_first = data.first().is_some_and(|b| b & 1 == 1);
    if login_first {
        if let Some(ReplicaFrame::Challenge { nonce, replica: id }) = challenge {
            let frame = login(&fuzz_identity(), &nonce, id).encode();
            replica.handle(now, ReplicaInput::Client { conn, frame });
            drain(&mut replica, now);
        }
    }
    let mut rest = data.get(1..).unwrap_or_default();
    let mut n = 0u32;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let frame = tail[..len].to_vec();
        rest = &tail[len..];
        n += 1;
        tick(&mut now, Duration::from_millis(3));
        if n % 3 == 0 {
            replica.handle(
                now,
                ReplicaInput::Peer {
                    from: NodeId(9),
                    frame: frame.clone(),
                },
            );
            drain(&mut replica, now);
        }
        replica.handle(now, ReplicaInput::Client { conn, frame });
        drain(&mut replica, now);
        replica.check_invariants();
    }
    // A whole-input frame too (covers frames longer than 255 bytes).
    replica.handle(
        now,
        ReplicaInput::Client {
            conn,
            frame: ClientFrame::decode(data).map_or_else(|_| data.to_vec(), |f| f.encode()),
        },
    );
    drain(&mut replica, now);
    // Let a proposal commit and apply.
    for _ in 0..4 {
        tick(&mut now, Duration::from_millis(100));
        replica.handle(now, ReplicaInput::Timeout);
        drain(&mut replica, now);
    }
    replica.handle(now, ReplicaInput::Disconnected(conn));
    drain(&mut replica, now);
    replica.check_invariants();
    let dir = replica.directory();
    let mailbox = dir.mailbox(&fuzz_identity().user_id());
    FuzzReach {
        users: dir.len(),
        envelopes: dir.mailbox_totals().0,
        envelopes_gone: mailbox.map_or(0, |m| m.last_seq().0 - m.len() as u64),
    }
}

/// The directory [`directory_entries`] drives: the production bounds, but mailboxes small
/// enough, and a TTL short enough (the entries' stamps advance 1 ms each), for arbitrary input
/// to reach the quotas, the global bounds and the purges.
fn fuzz_directory() -> Directory {
    let limits = MailboxLimits {
        envelope_bytes_max: 64,
        messages_max: 4,
        bytes_max: 128,
        total_messages_max: 8,
        total_bytes_max: 256,
        ttl_ms: 16,
        purge_per_apply_max: 2,
    };
    Directory::with_all_limits(USERS_MAX, TOMBSTONES_MAX, limits)
}

/// Applies arbitrary bytes as directory entries (malformed ones must be refused and counted in the
/// audit trail, never panic), with snapshot round trips in between. Mailboxes are small
/// ([`fuzz_directory`]) so deposits reach every refusal and purge.
pub fn directory_entries(data: &[u8]) {
    let mut dir = fuzz_directory();
    let mut rest = data;
    let mut index = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (usize::from(len) * 4).min(tail.len());
        index += 1;
        let ctx = ApplyContext {
            index: LogIndex(index),
            term: Term(1),
            unix_ms: 1_700_000_000_000 + index,
            client: ClientId(1),
        };
        dir.apply(&ctx, &tail[..len]);
        dir.check_invariants();
        rest = &tail[len..];
    }
    let snapshot = dir.snapshot();
    let mut other = fuzz_directory();
    other.restore(&snapshot).expect("a snapshot restores");
    assert_eq!(other.digest(), dir.digest(), "restore(snapshot(x)) == x");
    let mut scratch = fuzz_directory();
    let _ = scratch.restore(data);
    scratch.check_invariants();
}

fn tick(now: &mut Now, by: Duration) {
    now.instant = now.instant + by;
    now.unix_ms += u64::try_from(by.as_millis()).unwrap_or(0);
}

/// Drains outputs, acknowledging persists at once; returns the last client frame sent.
fn drain(replica: &mut Replica, now: Now) -> Option<ReplicaFrame> {
    let mut last = None;
    while let Some(out) = replica.poll_output() {
        match out {
            ReplicaOutput::Persist(batch) => {
                replica.handle(now, ReplicaInput::Persisted(batch.seq));
            }
            ReplicaOutput::Client { frame, .. } => {
                last = Some(ReplicaFrame::decode(&frame).expect("a replica's frames decode"));
            }
            _ => {}
        }
    }
    last
}
