//! Snapshots: a round trip keeps state and behaviour; a bad snapshot is refused unapplied.

use super::*;

/// A directory with a bit of everything: users, a drained pool, presence, visibility, a
/// tombstone, refusals in the audit trail.
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
    version[0] = 2;
    use SnapshotDecodeError::{Empty, Inconsistent, Version};
    let cases = [
        (Vec::new(), Some(Empty)),
        (version, Some(Version(2))),
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
    for (bytes, expected) in cases {
        let err = target.dir.restore(&bytes).expect_err("a bad snapshot");
        match expected {
            Some(expected) => assert_eq!(err, expected),
            None => assert!(matches!(err, SnapshotDecodeError::Codec(_)), "{err:?}"),
        }
        assert_eq!(target.dir, before, "a refused restore changes nothing");
    }
}
