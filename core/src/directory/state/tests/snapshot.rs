//! Snapshots: a round trip keeps state and behaviour; a bad snapshot is refused unapplied; the
//! previous version still restores.

use super::*;
use crate::directory::mailbox::{Mailbox, MailboxLimits};
use crate::ids::{MailboxSeq, MessageId};

/// A directory with a bit of everything: users, a drained pool, presence, visibility, a
/// tombstone, mailboxes (one partly acknowledged, one deleted with its owner), refusals in the
/// audit trail.
fn busy() -> (Harness, Vec<Client>) {
    let mut h = Harness::new();
    let mut clients: Vec<Client> = (1..=3).map(Client::new).collect();
    let ids: Vec<UserId> = ["alice", "bob", "carol"]
        .iter()
        .zip(clients.iter_mut())
        .map(|(n, c)| h.register(c, n, 2))
        .collect();
    let claim = CommandBody::ClaimBundle { target: ids[0] };
    assert!(h.run(&mut clients[1], claim).is_ok());
    let body = CommandBody::SetVisibility {
        visibility: Visibility::Contacts,
        contacts: vec![ids[1]],
    };
    assert!(h.run(&mut clients[0], body).is_ok());
    let online = PresenceBatch {
        changes: vec![(ids[0], PresenceChange::Online)],
    };
    assert!(h
        .apply_bytes(&DirectoryEntry::Presence(online).encode())
        .is_ok());
    for (to, id) in [(0, 1), (0, 2), (1, 3), (2, 4), (0, 5)] {
        h.now_unix_ms += 7;
        assert!(h.apply_bytes(&deposit(ids[to], id, &[id; 40])).is_ok());
    }
    let ack = CommandBody::AckMailbox {
        upto: MailboxSeq(1),
    };
    assert!(h.run(&mut clients[0], ack).is_ok());
    assert!(h.run(&mut clients[2], CommandBody::Deregister).is_ok());
    assert_eq!(h.apply_bytes(b"garbage"), Err(CommandError::Version(b'g')));
    (h, clients)
}

#[test]
fn a_snapshot_restores_the_same_state_and_behaviour() {
    let (mut h, mut clients) = busy();
    let snapshot = h.dir.snapshot();
    assert_eq!(snapshot[0], SNAPSHOT_VERSION);
    // Restoring replaces whatever the target held.
    let mut other = Harness::new();
    other.register(&mut Client::new(50), "someone", 0);
    other.dir.restore(&snapshot).expect("restores");
    other.dir.check_invariants();
    assert_eq!(other.dir, h.dir, "names and tombstone index rebuilt");
    assert_eq!(
        (other.dir.digest(), other.dir.snapshot()),
        (h.dir.digest(), snapshot)
    );
    other.index = h.index;
    // Both go on identically, including refusals that depend on remembered counters.
    let old = SignedCommand::sign(
        &clients[2].identity,
        1,
        h.expires(),
        CommandBody::Deregister,
    );
    let target = h.dir.lookup(&name("alice")).unwrap().user;
    let bodies = [
        encode(&clients[1].sign(h.expires(), CommandBody::ClaimBundle { target })),
        encode(&clients[1].sign(h.expires(), CommandBody::ClaimBundle { target })),
        encode(&old),
        deposit(target, 2, &[2; 40]),
        deposit(target, 9, b"new"),
        encode(&clients[0].sign(
            h.expires(),
            CommandBody::AckMailbox {
                upto: MailboxSeq(3),
            },
        )),
        deposit(target, 10, b"newer"),
        encode(&clients[0].sign(h.expires(), CommandBody::Deregister)),
    ];
    for bytes in bodies {
        assert_eq!(h.apply_bytes(&bytes), other.apply_bytes(&bytes));
        assert_eq!(h.dir.digest(), other.dir.digest());
    }
}

#[test]
fn a_bad_snapshot_is_refused_and_changes_nothing() {
    let (h, _) = busy();
    let mut target = Harness::new();
    target.register(&mut Client::new(50), "someone", 0);
    let before = target.dir.clone();
    let good = h.dir.snapshot();
    let (alice, bob) = (
        h.dir.lookup(&name("alice")).unwrap().user,
        h.dir.lookup(&name("bob")).unwrap().user,
    );
    let mut same_name = h.dir.clone();
    same_name.users.get_mut(&bob).unwrap().username = name("alice");
    let mut misfiled = h.dir.clone();
    misfiled.users.get_mut(&alice).unwrap().user = bob;
    let mut tombstoned = h.dir.clone();
    let tombstone = Tombstone {
        counter: 1,
        until_unix_ms: 0,
    };
    tombstoned.tombstones.insert(alice, tombstone);
    let mut from_the_future = h.dir.clone();
    from_the_future
        .users
        .get_mut(&bob)
        .unwrap()
        .registered_unix_ms = u64::MAX;
    let mut trailing = good.clone();
    trailing.push(0);
    let mut version = good.clone();
    version[0] = 3;
    // Each spoils Alice's mailbox in one way and names the refusal.
    type Spoil = fn(&mut Mailbox);
    let mailbox_cases: [(Spoil, &str); 6] = [
        (
            |m| *m.parts_mut().0 = MailboxSeq(1),
            "an envelope seq outside 1..=last seq",
        ),
        (
            |m| {
                m.parts_mut()
                    .1
                    .values_mut()
                    .for_each(|e| e.expires_unix_ms += 1)
            },
            "an envelope's expiry is not its deposit plus the TTL",
        ),
        (
            |m| {
                m.parts_mut()
                    .1
                    .values_mut()
                    .for_each(|e| e.deposited_unix_ms = u64::MAX)
            },
            "an envelope deposited after the directory's time",
        ),
        (
            |m| {
                (m.parts_mut().1.values_mut()).for_each(|e| e.message_id = MessageId([0; 16]));
            },
            "a message id twice in one mailbox",
        ),
        (
            |m| {
                m.parts_mut()
                    .1
                    .values_mut()
                    .for_each(|e| e.seq = MailboxSeq(77))
            },
            "an envelope filed under another seq",
        ),
        (
            |m| {
                let last = m.parts_mut().1.values_mut().last().unwrap();
                last.deposited_unix_ms = T0;
                last.expires_unix_ms = T0 + MailboxLimits::default().ttl_ms;
            },
            "envelopes deposited out of seq order",
        ),
    ];
    let mut bad_mailboxes: Vec<(Vec<u8>, &str)> = mailbox_cases
        .into_iter()
        .map(|(spoil, why)| {
            let mut dir = h.dir.clone();
            spoil(dir.mailboxes.boxes_mut().get_mut(&alice).unwrap());
            (dir.snapshot(), why)
        })
        .collect();
    let mut orphan = h.dir.clone();
    let alices = orphan.mailboxes.boxes_mut()[&alice].clone();
    orphan
        .mailboxes
        .boxes_mut()
        .insert(numbered_user(7), alices);
    bad_mailboxes.push((orphan.snapshot(), "a mailbox of an unregistered user"));
    use SnapshotDecodeError::{Empty, Inconsistent, Version};
    let cases = [
        (Vec::new(), Some(Empty)),
        (version, Some(Version(3))),
        (good[..good.len() / 2].to_vec(), None),
        (trailing, Some(Inconsistent("trailing bytes"))),
        (
            same_name.snapshot(),
            Some(Inconsistent("two users hold one username")),
        ),
        (
            misfiled.snapshot(),
            Some(Inconsistent("a record filed under another user's id")),
        ),
        (
            from_the_future.snapshot(),
            Some(Inconsistent("a user registered after the snapshot's time")),
        ),
        (
            tombstoned.snapshot(),
            Some(Inconsistent("a live user has a tombstone")),
        ),
    ];
    let cases = cases.into_iter().chain(
        bad_mailboxes
            .into_iter()
            .map(|(bytes, why)| (bytes, Some(Inconsistent(why)))),
    );
    for (bytes, expected) in cases {
        let err = target.dir.restore(&bytes).expect_err("a bad snapshot");
        match expected {
            Some(expected) => assert_eq!(err, expected),
            None => assert!(matches!(err, SnapshotDecodeError::Codec(_)), "{err:?}"),
        }
        assert_eq!(target.dir, before, "a refused restore changes nothing");
    }
}

#[test]
fn a_snapshot_over_the_restoring_directorys_mailbox_bounds_is_refused() {
    let (h, _) = busy();
    let good = h.dir.snapshot();
    let alice = h.dir.lookup(&name("alice")).unwrap().user;
    assert_eq!(h.dir.mailbox(&alice).map(Mailbox::len), Some(2));
    let tight =
        |limits: MailboxLimits| Directory::with_all_limits(USERS_MAX, TOMBSTONES_MAX, limits);
    let mut quota = tight(MailboxLimits {
        messages_max: 1,
        ..MailboxLimits::default()
    });
    assert_eq!(
        quota.restore(&good),
        Err(SnapshotDecodeError::Inconsistent(
            "a mailbox over its quota"
        ))
    );
    let mut global = tight(MailboxLimits {
        total_bytes_max: 80,
        ..MailboxLimits::default()
    });
    assert_eq!(
        global.restore(&good),
        Err(SnapshotDecodeError::Inconsistent(
            "mailboxes over the global bounds"
        ))
    );
    let mut envelope = tight(MailboxLimits {
        envelope_bytes_max: 39,
        ..MailboxLimits::default()
    });
    assert_eq!(
        envelope.restore(&good),
        Err(SnapshotDecodeError::Inconsistent(
            "an envelope over its bound"
        ))
    );
}

#[test]
fn a_version_1_snapshot_still_restores_with_empty_mailboxes() {
    let mut h = Harness::new();
    let mut alice = Client::new(1);
    h.register(&mut alice, "alice", 2);
    let v2 = h.dir.snapshot();
    // Version 1 is version 2 without the mailbox list: here the list is empty, one zero byte.
    assert_eq!(v2.last(), Some(&0));
    let mut v1 = v2[..v2.len() - 1].to_vec();
    v1[0] = 1;
    let mut restored = Directory::new();
    restored.restore(&v1).expect("version 1 restores");
    assert_eq!(restored.digest(), h.dir.digest());
    // The same bytes labelled version 2 are one field short.
    v1[0] = 2;
    assert!(matches!(
        Directory::new().restore(&v1),
        Err(SnapshotDecodeError::Codec(_))
    ));
}
