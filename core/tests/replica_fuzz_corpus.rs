//! Replays the checked-in replica and directory fuzz corpora (`fuzz/corpus/replica_client_frames`,
//! `fuzz/corpus/directory_entries`) through the entry points the cargo-fuzz targets call, so
//! `cargo test` catches a regression without libFuzzer. Crashes found by fuzzing are added there.
//!
//! The seeds are written by `write_replica_seed_corpora` (ignored; run it with
//! `cargo test -p paloma-core --test replica_fuzz_corpus -- --ignored write_replica_seed_corpora`):
//! one valid frame of every client request kind signed by the harness's identity (so they pass
//! login and the signer check and reach the directory), a session that registers, deposits,
//! fetches and acknowledges (so the mailbox paths are reached), and directory entries of every
//! kind.

mod corpus;

use corpus::{corpus, corpus_dir};

use paloma_core::directory::{
    CommandBody, Deposit, DirectoryEntry, OneTimePrekey, PresenceBatch, PresenceChange,
    SignedCommand, SignedPrekey, Visibility,
};
use paloma_core::replica::fuzz::{
    directory_entries, fuzz_identity, replica_client_frames, replica_client_frames_reach,
};
use paloma_core::replica::protocol::{ClientFrame, Consistency, LookupKey, Request};
use paloma_core::session::{Entropy, IdentityKeyPair, PrekeyId, SignedPrekeyPair};
use paloma_core::{MailboxSeq, MessageId, RequestId, UserId};

struct Count(u8);
impl Entropy for Count {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_add(13);
            *b = self.0;
        }
    }
}

fn register(id: &IdentityKeyPair, name: &str, pool: u32) -> CommandBody {
    let spk = SignedPrekeyPair::generate(id, PrekeyId(1), &mut Count(5));
    CommandBody::Register {
        username: name.into(),
        identity_dh: id.public().dh_key,
        signed_prekey: SignedPrekey {
            id: spk.id(),
            key: spk.public_key(),
            signature: spk.signature(),
        },
        one_time_prekeys: (0..pool)
            .map(|i| OneTimePrekey {
                id: PrekeyId(100 + i),
                key: [i as u8; 32],
            })
            .collect(),
        addresses: vec!["127.0.0.1:7000".into()],
    }
}

/// Frames of every request kind, signed by the harness's identity.
fn client_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let id = fuzz_identity();
    let expires = 1_700_000_000_000 + 60_000;
    let command = |seq: u64, body: CommandBody| {
        ClientFrame::Request {
            id: RequestId(seq),
            request: Request::Command {
                session: 1,
                seq,
                command: SignedCommand::sign(&id, seq, expires, body),
            },
        }
        .encode()
    };
    vec![
        ("register", command(1, register(&id, "fuzzer", 2))),
        (
            "register-bad-name",
            command(1, register(&id, "Not Valid", 0)),
        ),
        (
            "publish",
            command(
                2,
                CommandBody::PublishOneTimePrekeys(vec![OneTimePrekey {
                    id: PrekeyId(9),
                    key: [1; 32],
                }]),
            ),
        ),
        (
            "claim",
            command(
                3,
                CommandBody::ClaimBundle {
                    target: id.user_id(),
                },
            ),
        ),
        (
            "addresses",
            command(4, CommandBody::UpdateAddresses(vec!["10.0.0.9:1".into()])),
        ),
        (
            "visibility",
            command(
                5,
                CommandBody::SetVisibility {
                    visibility: Visibility::Contacts,
                    contacts: vec![UserId([3; 32])],
                },
            ),
        ),
        ("deregister", command(6, CommandBody::Deregister)),
        (
            "lookup-linearizable",
            ClientFrame::Request {
                id: RequestId(7),
                request: Request::Lookup {
                    key: LookupKey::Name("fuzzer".into()),
                    consistency: Consistency::Linearizable,
                },
            }
            .encode(),
        ),
        (
            "lookup-local",
            ClientFrame::Request {
                id: RequestId(8),
                request: Request::Lookup {
                    key: LookupKey::Id(id.user_id()),
                    consistency: Consistency::Local,
                },
            }
            .encode(),
        ),
        (
            "subscribe",
            ClientFrame::Request {
                id: RequestId(9),
                request: Request::Subscribe(vec![id.user_id()]),
            }
            .encode(),
        ),
        ("heartbeat", ClientFrame::Heartbeat.encode()),
        ("deposit", deposit_frame(10, 2, 1)),
        ("fetch", fetch_frame(11)),
        (
            "ack",
            command(
                12,
                CommandBody::AckMailbox {
                    upto: MailboxSeq(1),
                },
            ),
        ),
        ("mailbox-session", mailbox_session(false)),
        ("mailbox-session-ack", mailbox_session(true)),
    ]
}

/// A deposit of a small envelope in the harness user's own mailbox.
fn deposit_frame(request: u64, seq: u64, id: u8) -> Vec<u8> {
    ClientFrame::Request {
        id: RequestId(request),
        request: Request::Deposit {
            session: 1,
            seq,
            to: fuzz_identity().user_id(),
            message_id: MessageId([id; 16]),
            envelope: vec![0xc1; 32],
        },
    }
    .encode()
}

fn fetch_frame(request: u64) -> Vec<u8> {
    ClientFrame::Request {
        id: RequestId(request),
        request: Request::FetchMailbox {
            after: MailboxSeq(0),
            max: 8,
        },
    }
    .encode()
}

/// Several frames in the harness's input format: an odd first byte (log in), then each frame
/// after its length byte. Registers with a small record (so the frame fits in 255 bytes),
/// deposits twice, fetches, and (`ack`) acknowledges the first envelope.
fn mailbox_session(ack: bool) -> Vec<u8> {
    let id = fuzz_identity();
    let expires = 1_700_000_000_000 + 60_000;
    let mut body = register(&id, "fuzzer", 0);
    if let CommandBody::Register { addresses, .. } = &mut body {
        addresses.clear();
    }
    let command = |request: u64, seq: u64, counter: u64, body: CommandBody| {
        ClientFrame::Request {
            id: RequestId(request),
            request: Request::Command {
                session: 1,
                seq,
                command: SignedCommand::sign(&id, counter, expires, body),
            },
        }
        .encode()
    };
    let mut frames = vec![
        command(1, 1, 1, body),
        deposit_frame(2, 2, 1),
        deposit_frame(3, 3, 2),
        fetch_frame(4),
    ];
    if ack {
        frames.push(command(
            5,
            4,
            2,
            CommandBody::AckMailbox {
                upto: MailboxSeq(1),
            },
        ));
    }
    let mut out = vec![1];
    for frame in frames {
        out.push(u8::try_from(frame.len()).expect("a frame of at most 255 bytes"));
        out.extend_from_slice(&frame);
    }
    out
}

fn directory_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let id = fuzz_identity();
    let expires = 1_700_000_000_000 + 60_000;
    let entry = |e: DirectoryEntry| {
        let bytes = e.encode();
        // The entry point reads one length byte (×4) before each entry.
        let mut out = vec![u8::try_from(bytes.len().div_ceil(4)).expect("small entry")];
        out.extend_from_slice(&bytes);
        out.resize(1 + 4 * usize::from(out[0]), 0);
        out
    };
    let register = entry(DirectoryEntry::Signed(SignedCommand::sign(
        &id,
        1,
        expires,
        register(&id, "fuzzer", 3),
    )));
    let claim = entry(DirectoryEntry::Signed(SignedCommand::sign(
        &id,
        2,
        expires,
        CommandBody::ClaimBundle {
            target: id.user_id(),
        },
    )));
    let presence = entry(DirectoryEntry::Presence(PresenceBatch {
        changes: vec![
            (id.user_id(), PresenceChange::Online),
            (
                UserId([1; 32]),
                PresenceChange::Offline {
                    last_seen_unix_ms: 5,
                },
            ),
        ],
    }));
    let deposit = |n: u8| {
        entry(DirectoryEntry::Deposit(Deposit {
            recipient: id.user_id(),
            message_id: MessageId([n; 16]),
            envelope: vec![n; 40],
        }))
    };
    let ack = entry(DirectoryEntry::Signed(SignedCommand::sign(
        &id,
        2,
        expires,
        CommandBody::AckMailbox {
            upto: MailboxSeq(1),
        },
    )));
    vec![
        ("register", register.clone()),
        (
            "register-claim-presence",
            [register.clone(), claim, presence.clone()].concat(),
        ),
        (
            "register-deposits-ack",
            [
                register.clone(),
                deposit(1),
                deposit(2),
                deposit(1),
                deposit(3),
                ack,
                deposit(4),
                deposit(5),
            ]
            .concat(),
        ),
        ("presence", presence),
        (
            "garbage",
            vec![4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        ),
    ]
}

#[test]
fn replica_client_frames_corpus_replays() {
    let seeds = corpus("replica_client_frames");
    assert!(
        seeds.len() >= 11,
        "the seed corpus is missing: run write_replica_seed_corpora"
    );
    for (name, data) in seeds {
        eprintln!("replica_client_frames/{name}");
        let _users = replica_client_frames(&data);
    }
}

#[test]
fn directory_entries_corpus_replays() {
    let seeds = corpus("directory_entries");
    assert!(
        seeds.len() >= 4,
        "the seed corpus is missing: run write_replica_seed_corpora"
    );
    for (name, data) in seeds {
        eprintln!("directory_entries/{name}");
        directory_entries(&data);
    }
}

#[test]
fn the_seeds_reach_the_directory() {
    // A signed registration as the whole input logs in first (its version byte is odd) and
    // registers: the corpus reaches past login and the signer check.
    let seeds = client_seeds();
    let (_, register) = &seeds[0];
    assert_eq!(
        register[0] & 1,
        1,
        "the version byte makes the harness log in first"
    );
    assert_eq!(
        replica_client_frames(register),
        1,
        "the seed registers its user"
    );
    // Garbage registers no one.
    assert_eq!(replica_client_frames(&[1, 3, 1, 2, 3]), 0);
    // The mailbox sessions register, deposit twice, and acknowledge the first.
    let reach = |name: &str| {
        let (_, data) = seeds.iter().find(|(n, _)| *n == name).expect("a seed");
        replica_client_frames_reach(data)
    };
    let stored = reach("mailbox-session");
    assert_eq!(
        (stored.users, stored.envelopes, stored.envelopes_gone),
        (1, 2, 0)
    );
    let acked = reach("mailbox-session-ack");
    assert_eq!(
        (acked.users, acked.envelopes, acked.envelopes_gone),
        (1, 1, 1)
    );
}

#[test]
#[ignore = "writes the seed corpora into fuzz/corpus"]
fn write_replica_seed_corpora() {
    for (target, seeds) in [
        ("replica_client_frames", client_seeds()),
        ("directory_entries", directory_seeds()),
    ] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, data) in seeds {
            std::fs::write(dir.join(name), data).expect("write seed");
        }
    }
}
