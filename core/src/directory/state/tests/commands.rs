//! Each command and its refusals, replay, claims, expiry, visibility, presence and the audit
//! trail.

use super::*;

#[test]
fn registers_and_finds_users_by_folded_name() {
    let mut h = Harness::new();
    let mut alice = Client::new(1);
    assert!(h.dir.is_empty());
    let user = h.register(&mut alice, "Alice", 3);
    let record = h.dir.lookup(&name("ALICE")).expect("found by any case");
    assert_eq!(h.dir.user(&user), Some(record));
    assert_eq!(record.username.as_str(), "alice");
    assert_eq!(record.identity, *alice.identity.public());
    assert_eq!(record.registered_unix_ms, T0);
    assert_eq!(record.counter, 1);
    assert_eq!(
        record.presence,
        Presence::Offline {
            last_seen_unix_ms: None
        }
    );
    assert_eq!(record.visibility, Visibility::Everyone);
    let view = record.view();
    assert_eq!(
        (view.user, view.one_time_prekeys_left, view.counter),
        (user, 3, 1)
    );
    assert_eq!(view.addresses, record.addresses);
    assert_eq!((h.dir.len(), h.dir.clock_unix_ms()), (1, T0));
}

#[test]
fn usernames_are_unique_across_case() {
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = (Client::new(1), Client::new(2), Client::new(3));
    h.register(&mut alice, "Alice", 0);
    for taken in ["alice", "ALICE", "aLiCe"] {
        let body = bob.register(taken, 0);
        h.refuse(&mut bob, body, CommandError::UsernameTaken);
    }
    h.register(&mut bob, "bob", 0);
    assert_eq!(
        h.run(&mut alice, CommandBody::Deregister),
        Ok(Outcome::Done)
    );
    assert!(
        h.dir.lookup(&name("alice")).is_none(),
        "deregistering releases the name"
    );
    let carol_id = h.register(&mut carol, "ALICE", 0);
    assert_eq!(h.dir.lookup(&name("alice")).map(|r| r.user), Some(carol_id));
}

#[test]
fn every_refusal_changes_no_user_state() {
    use CommandError as E;
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = (Client::new(1), Client::new(2), Client::new(3));
    let alice_id = h.register(&mut alice, "alice", 2);
    h.register(&mut bob, "bob", 0);

    h.refused(&[], E::Malformed);
    h.refused(&[DIRECTORY_FORMAT_VERSION, 0xff, 0xff], E::Malformed);
    h.refused(&[9, 0], E::Version(9));
    let presence = PresenceBatch {
        changes: vec![(alice_id, PresenceChange::Online); PRESENCE_BATCH_MAX + 1],
    };
    let changes = PRESENCE_BATCH_MAX + 1;
    h.refused(
        &DirectoryEntry::Presence(presence).encode(),
        E::PresenceBatchTooLarge { changes },
    );

    let mut forged = alice.sign(h.expires(), CommandBody::UpdateAddresses(vec![]));
    alice.counter -= 1;
    forged.signature[0] ^= 1;
    h.refused(&encode(&forged), E::BadSignature);
    assert_eq!(
        h.dir.audit().last().map(|r| r.user),
        Some(None),
        "unverified: no user"
    );
    let expired = alice.sign(T0 - 1, CommandBody::Deregister);
    alice.counter -= 1;
    let (expires_unix_ms, now_unix_ms) = (T0 - 1, T0);
    h.refused(
        &encode(&expired),
        E::Expired {
            expires_unix_ms,
            now_unix_ms,
        },
    );
    let far = alice.sign(T0 + COMMAND_VALIDITY_MAX_MS + 1, CommandBody::Deregister);
    alice.counter -= 1;
    h.refused(&encode(&far), E::ExpiryTooFar);
    let stale = SignedCommand::sign(&alice.identity, 1, h.expires(), CommandBody::Deregister);
    h.refused(
        &encode(&stale),
        E::Replayed {
            counter: 1,
            last: 1,
        },
    );

    let body = carol.register("no way", 0);
    let invalid = E::InvalidUsername(UsernameError::InvalidChar { found: ' ', at: 2 });
    h.refuse(&mut carol, body, invalid);
    let body = carol.register("Alice", 0);
    h.refuse(&mut carol, body, E::UsernameTaken);
    let body = alice.register("alice2", 0);
    h.refuse(&mut alice, body, E::AlreadyRegistered);
    let mut body = carol.register("carol", 0);
    if let CommandBody::Register { signed_prekey, .. } = &mut body {
        *signed_prekey = bob.signed_prekey();
    }
    h.refuse(&mut carol, body, E::BadSignedPrekey);
    let mut body = carol.register("carol", 0);
    if let CommandBody::Register { identity_dh, .. } = &mut body {
        *identity_dh = bob.identity.public().dh_key;
    }
    h.refuse(&mut carol, body, E::BadSignedPrekey);
    let body = carol.register("carol", ONE_TIME_PREKEYS_MAX + 1);
    h.refuse(
        &mut carol,
        body,
        E::TooManyPrekeys {
            max: ONE_TIME_PREKEYS_MAX,
        },
    );
    let mut body = carol.register("carol", 2);
    if let CommandBody::Register {
        one_time_prekeys, ..
    } = &mut body
    {
        one_time_prekeys[1].id = one_time_prekeys[0].id;
    }
    let repeated = match &body {
        CommandBody::Register {
            one_time_prekeys, ..
        } => one_time_prekeys[0].id,
        _ => unreachable!(),
    };
    h.refuse(&mut carol, body, E::DuplicatePrekey(repeated));
    let mut body = carol.register("carol", 0);
    if let CommandBody::Register { addresses, .. } = &mut body {
        *addresses = vec!["a".into(); ADDRESSES_MAX + 1];
    }
    h.refuse(&mut carol, body, E::BadAddresses);

    let carol_bodies = [
        CommandBody::RotateSignedPrekey(carol.signed_prekey()),
        CommandBody::PublishOneTimePrekeys(carol.one_time_prekeys(1)),
        CommandBody::ClaimBundle { target: alice_id },
        CommandBody::UpdateAddresses(vec![]),
        CommandBody::SetVisibility {
            visibility: Visibility::Nobody,
            contacts: vec![],
        },
        CommandBody::Deregister,
    ];
    for body in carol_bodies {
        h.refuse(&mut carol, body, E::NotRegistered);
    }
    let unknown = CommandBody::ClaimBundle {
        target: UserId([7; 32]),
    };
    h.refuse(&mut alice, unknown, E::UnknownUser);
    let body = CommandBody::RotateSignedPrekey(bob.signed_prekey());
    h.refuse(&mut alice, body, E::BadSignedPrekey);
    let body = CommandBody::PublishOneTimePrekeys(alice.one_time_prekeys(ONE_TIME_PREKEYS_MAX - 1));
    h.refuse(
        &mut alice,
        body,
        E::TooManyPrekeys {
            max: ONE_TIME_PREKEYS_MAX,
        },
    );
    let pooled = *h
        .dir
        .user(&alice_id)
        .unwrap()
        .one_time_prekeys
        .keys()
        .next()
        .unwrap();
    let reused = vec![OneTimePrekey {
        id: pooled,
        key: [1; 32],
    }];
    h.refuse(
        &mut alice,
        CommandBody::PublishOneTimePrekeys(reused),
        E::DuplicatePrekey(pooled),
    );
    let mut twice = alice.one_time_prekeys(2);
    twice[1].id = twice[0].id;
    let id = twice[0].id;
    h.refuse(
        &mut alice,
        CommandBody::PublishOneTimePrekeys(twice),
        E::DuplicatePrekey(id),
    );
    let long = vec!["a".repeat(ADDRESS_BYTES_MAX + 1)];
    h.refuse(
        &mut alice,
        CommandBody::UpdateAddresses(long),
        E::BadAddresses,
    );
    let contacts = (0..=CONTACTS_MAX).map(numbered_user).collect();
    let body = CommandBody::SetVisibility {
        visibility: Visibility::Contacts,
        contacts,
    };
    h.refuse(&mut alice, body, E::TooManyContacts);

    // Nothing above advanced a counter: the next command of each client reuses the last one.
    assert_eq!(h.dir.user(&alice_id).unwrap().counter, 1);
    assert_eq!(
        h.run(&mut alice, CommandBody::UpdateAddresses(vec![])),
        Ok(Outcome::Done)
    );
    assert_eq!(alice.counter, 2);
    let body = carol.register("carol", 0);
    assert!(matches!(
        h.run(&mut carol, body),
        Ok(Outcome::Registered { .. })
    ));
    assert_eq!(carol.counter, 1);
}

#[test]
fn the_directory_refuses_users_and_tombstones_beyond_its_bounds() {
    let mut h = Harness::with(Directory::with_limits(2, 1));
    let (mut a, mut b, mut c) = (Client::new(1), Client::new(2), Client::new(3));
    h.register(&mut a, "aaa", 0);
    h.register(&mut b, "bbb", 0);
    let body = c.register("ccc", 0);
    h.refuse(&mut c, body, CommandError::DirectoryFull);
    assert_eq!(h.run(&mut a, CommandBody::Deregister), Ok(Outcome::Done));
    h.register(&mut c, "ccc", 0);
    h.refuse(&mut b, CommandBody::Deregister, CommandError::DirectoryFull);
    // Once a's tombstone has expired it is pruned, and there is room again.
    h.now_unix_ms += COMMAND_VALIDITY_MAX_MS + 1;
    assert_eq!(h.run(&mut b, CommandBody::Deregister), Ok(Outcome::Done));
    assert_eq!(h.dir.tombstones.keys().collect::<Vec<_>>(), vec![&b.user()]);
}

#[test]
fn a_command_applied_twice_is_refused_as_replayed() {
    let mut h = Harness::new();
    let mut alice = Client::new(1);
    let body = alice.register("alice", 1);
    let register = alice.sign(h.expires(), body);
    assert!(matches!(
        h.apply_bytes(&encode(&register)),
        Ok(Outcome::Registered { .. })
    ));
    let update = alice.sign(
        h.expires(),
        CommandBody::UpdateAddresses(vec!["x:1".into()]),
    );
    assert_eq!(h.apply_bytes(&encode(&update)), Ok(Outcome::Done));
    h.refused(
        &encode(&update),
        CommandError::Replayed {
            counter: 2,
            last: 2,
        },
    );
    h.refused(
        &encode(&register),
        CommandError::Replayed {
            counter: 1,
            last: 2,
        },
    );
    // A stale retry arriving after a newer command is refused the same way.
    let third = alice.sign(h.expires(), CommandBody::UpdateAddresses(vec![]));
    let fourth = alice.sign(
        h.expires(),
        CommandBody::UpdateAddresses(vec!["y:2".into()]),
    );
    assert_eq!(h.apply_bytes(&encode(&fourth)), Ok(Outcome::Done));
    h.refused(
        &encode(&third),
        CommandError::Replayed {
            counter: 3,
            last: 4,
        },
    );
    assert_eq!(
        h.dir.user(&alice.user()).unwrap().addresses,
        vec!["y:2".to_string()]
    );
}

#[test]
fn old_commands_stay_dead_after_deregistration() {
    let mut h = Harness::new();
    let mut alice = Client::new(1);
    let body = alice.register("alice", 1);
    let register = alice.sign(h.expires(), body);
    assert!(h.apply_bytes(&encode(&register)).is_ok());
    let update = alice.sign(h.expires(), CommandBody::UpdateAddresses(vec![]));
    assert!(h.apply_bytes(&encode(&update)).is_ok());
    assert_eq!(
        h.run(&mut alice, CommandBody::Deregister),
        Ok(Outcome::Done)
    );
    assert!(h.dir.user(&alice.user()).is_none());
    // The tombstone remembers counter 3, so neither old command applies again.
    h.refused(
        &encode(&register),
        CommandError::Replayed {
            counter: 1,
            last: 3,
        },
    );
    h.refused(
        &encode(&update),
        CommandError::Replayed {
            counter: 2,
            last: 3,
        },
    );
    // Re-registering takes the tombstone's place, with a higher counter still.
    let again = alice.register("alice", 0);
    assert!(h.run(&mut alice, again).is_ok());
    assert!(h.dir.tombstones.is_empty() && h.dir.tombstones_by_expiry.is_empty());
    h.refused(
        &encode(&register),
        CommandError::Replayed {
            counter: 1,
            last: 4,
        },
    );
    // After the validity window the tombstone goes, and old commands have expired by then.
    assert_eq!(
        h.run(&mut alice, CommandBody::Deregister),
        Ok(Outcome::Done)
    );
    h.now_unix_ms = h.dir.clock_unix_ms() + COMMAND_VALIDITY_MAX_MS + 1;
    let tick = h.apply_bytes(b"any entry moves the clock");
    assert!(matches!(tick, Err(CommandError::Version(_))));
    assert!(
        h.dir.tombstones.is_empty(),
        "pruned once every old command has expired"
    );
    let (expires_unix_ms, now_unix_ms) = (register.expires_unix_ms, h.now_unix_ms);
    h.refused(
        &encode(&register),
        CommandError::Expired {
            expires_unix_ms,
            now_unix_ms,
        },
    );
}

#[test]
fn claims_hand_out_each_one_time_prekey_once() {
    let mut h = Harness::new();
    let (mut alice, mut bob) = (Client::new(1), Client::new(2));
    let body = alice.register("alice", 3);
    let CommandBody::Register {
        one_time_prekeys: published,
        ..
    } = body.clone()
    else {
        unreachable!()
    };
    let alice_id = h.register_body(&mut alice, body);
    h.register(&mut bob, "bob", 0);
    let claim = CommandBody::ClaimBundle { target: alice_id };
    for (n, expected) in published.iter().enumerate() {
        let Ok(Outcome::Bundle { bundle, pool_empty }) = h.run(&mut bob, claim.clone()) else {
            panic!("claim {n} failed")
        };
        assert!(!pool_empty);
        assert_eq!(
            bundle.one_time_prekey,
            Some(*expected),
            "lowest id first, each once"
        );
        assert_eq!(bundle.to_prekey_bundle().verify(), Ok(()));
        let left = h.dir.user(&alice_id).unwrap().view().one_time_prekeys_left;
        assert_eq!(left as usize, published.len() - n - 1);
    }
    let Ok(Outcome::Bundle { bundle, pool_empty }) = h.run(&mut bob, claim.clone()) else {
        panic!("claim on an empty pool failed")
    };
    assert!(pool_empty && bundle.one_time_prekey.is_none());
    assert_eq!(
        bundle.to_prekey_bundle().verify(),
        Ok(()),
        "the signed prekey still serves"
    );
    assert_eq!(
        bob.counter,
        h.dir.user(&bob.user()).unwrap().counter,
        "claims use the claimer's counter"
    );
    let more = alice.one_time_prekeys(2);
    assert!(h
        .run(&mut alice, CommandBody::PublishOneTimePrekeys(more.clone()))
        .is_ok());
    let Ok(Outcome::Bundle { bundle, .. }) = h.run(&mut bob, claim) else {
        panic!()
    };
    assert_eq!(bundle.one_time_prekey, Some(more[0]));
}

#[test]
fn expiry_follows_the_replicated_clock() {
    let mut h = Harness::new();
    let mut alice = Client::new(1);
    h.now_unix_ms = T0 + 1_000;
    h.register(&mut alice, "alice", 0);
    // A new leader whose clock is behind: directory time does not go back.
    h.now_unix_ms = T0;
    let late = alice.sign(T0 + 999, CommandBody::UpdateAddresses(vec![]));
    alice.counter -= 1;
    let (expires_unix_ms, now_unix_ms) = (T0 + 999, T0 + 1_000);
    h.refused(
        &encode(&late),
        CommandError::Expired {
            expires_unix_ms,
            now_unix_ms,
        },
    );
    assert_eq!(h.dir.clock_unix_ms(), T0 + 1_000);
    let now = h.dir.clock_unix_ms();
    for expires in [now, now + COMMAND_VALIDITY_MAX_MS] {
        let cmd = alice.sign(expires, CommandBody::UpdateAddresses(vec![]));
        assert_eq!(
            h.apply_bytes(&encode(&cmd)),
            Ok(Outcome::Done),
            "bounds are inclusive"
        );
    }
    let far = alice.sign(now + COMMAND_VALIDITY_MAX_MS + 1, CommandBody::Deregister);
    h.refused(&encode(&far), CommandError::ExpiryTooFar);
}

#[test]
fn presence_is_shown_as_the_subject_chose() {
    let mut h = Harness::new();
    let (mut alice, mut bob, mut carol) = (Client::new(1), Client::new(2), Client::new(3));
    let (a, b, c) = (
        h.register(&mut alice, "alice", 0),
        h.register(&mut bob, "bob", 0),
        h.register(&mut carol, "carol", 0),
    );
    let stranger = UserId([9; 32]);
    let online = PresenceBatch {
        changes: vec![(a, PresenceChange::Online)],
    };
    assert!(h
        .apply_bytes(&DirectoryEntry::Presence(online).encode())
        .is_ok());
    let shown = Some(Presence::Online { since_unix_ms: T0 });
    for viewer in [a, b, c, stranger] {
        assert_eq!(
            h.dir.presence_visible_to(&a, &viewer),
            shown,
            "Everyone: anyone"
        );
    }
    let contacts = vec![b, b, b];
    let body = CommandBody::SetVisibility {
        visibility: Visibility::Contacts,
        contacts,
    };
    assert_eq!(h.run(&mut alice, body), Ok(Outcome::Done));
    assert_eq!(
        h.dir.user(&a).unwrap().contacts,
        BTreeSet::from([b]),
        "deduplicated"
    );
    let seen = |h: &Harness, viewer| h.dir.presence_visible_to(&a, &viewer).is_some();
    assert_eq!(
        [a, b, c, stranger].map(|v| seen(&h, v)),
        [true, true, false, false]
    );
    let body = CommandBody::SetVisibility {
        visibility: Visibility::Nobody,
        contacts: vec![b],
    };
    assert_eq!(h.run(&mut alice, body), Ok(Outcome::Done));
    assert_eq!(
        [a, b, c, stranger].map(|v| seen(&h, v)),
        [true, false, false, false]
    );
    assert_eq!(
        h.dir.presence_visible_to(&stranger, &a),
        None,
        "unknown subject"
    );
}

#[test]
fn presence_batches_change_known_users_and_skip_unknown_ones() {
    let mut h = Harness::new();
    let (mut alice, mut bob) = (Client::new(1), Client::new(2));
    let (a, b) = (
        h.register(&mut alice, "alice", 0),
        h.register(&mut bob, "bob", 0),
    );
    let batch = |changes| DirectoryEntry::Presence(PresenceBatch { changes }).encode();
    let changes = vec![
        (a, PresenceChange::Online),
        (UserId([9; 32]), PresenceChange::Online),
        (
            b,
            PresenceChange::Offline {
                last_seen_unix_ms: T0 - 5,
            },
        ),
    ];
    assert_eq!(
        h.apply_bytes(&batch(changes)),
        Ok(Outcome::Presence { changed: 2 })
    );
    let last = h.dir.audit().last().unwrap().clone();
    assert_eq!(
        (last.user, last.kind, last.outcome),
        (None, CommandKind::Presence, Ok(()))
    );
    assert_eq!(
        h.dir.user(&b).unwrap().presence,
        Presence::Offline {
            last_seen_unix_ms: Some(T0 - 5)
        }
    );
    h.now_unix_ms += 10;
    let again = vec![(a, PresenceChange::Online)];
    assert_eq!(
        h.apply_bytes(&batch(again)),
        Ok(Outcome::Presence { changed: 0 })
    );
    assert_eq!(
        h.dir.user(&a).unwrap().presence,
        Presence::Online { since_unix_ms: T0 }
    );
    assert_eq!(h.dir.online_users().collect::<Vec<_>>(), vec![a]);
    let off = vec![(
        a,
        PresenceChange::Offline {
            last_seen_unix_ms: T0 + 7,
        },
    )];
    assert_eq!(
        h.apply_bytes(&batch(off)),
        Ok(Outcome::Presence { changed: 1 })
    );
    assert_eq!(
        h.dir.user(&a).unwrap().presence,
        Presence::Offline {
            last_seen_unix_ms: Some(T0 + 7)
        }
    );
    assert_eq!(h.dir.online_users().count(), 0);
}

#[test]
fn the_audit_trail_is_bounded_and_names_only_the_user_id() {
    let mut h = Harness::new();
    let mut alice = Client::new(1);
    let a = h.register(&mut alice, "alice", 1);
    let record = h.dir.audit().last().unwrap().clone();
    let expected = AuditRecord {
        index: LogIndex(1),
        unix_ms: T0,
        user: Some(a),
        kind: CommandKind::Register,
        outcome: Ok(()),
    };
    assert_eq!(record, expected);
    let bytes = postcard::to_stdvec(&record).unwrap();
    let holds = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!holds(&alice.identity.public().signing_key) && !holds(b"alice"));
    for _ in 0..AUDIT_RECORDS_MAX + 5 {
        assert_eq!(h.apply_bytes(&[0xff]), Err(CommandError::Version(0xff)));
    }
    assert_eq!(h.dir.audit().count(), AUDIT_RECORDS_MAX);
    let first = h.dir.audit().next().unwrap();
    assert_eq!(
        first.index,
        LogIndex(h.index - AUDIT_RECORDS_MAX as u64 + 1),
        "oldest dropped"
    );
    assert!(h
        .dir
        .audit()
        .all(|r| r.kind == CommandKind::Malformed && r.user.is_none()));
}

#[test]
fn an_unverified_registration_stores_the_record_a_signed_one_would() {
    // The benchmark helper must build the same record (its memory figures rest on it) and keep
    // every check but the signatures.
    let mut h = Harness::new();
    let mut alice = Client::new(1);
    let body = alice.register("Alice", 10);
    let cmd = alice.sign(h.expires(), body.clone());
    assert!(matches!(
        h.apply_bytes(&encode(&cmd)),
        Ok(Outcome::Registered { .. })
    ));
    let mut dir = Directory::new();
    let signer = alice.identity.public().signing_key;
    let outcome = dir.register_unverified(&ctx(1, T0), signer, 1, &body);
    assert_eq!(
        outcome,
        Ok(Outcome::Registered {
            user: alice.user(),
            registered_unix_ms: T0
        })
    );
    assert_eq!(dir.user(&alice.user()), h.dir.user(&alice.user()));
    assert_eq!(
        dir.digest(),
        h.dir.digest(),
        "the same state, audit trail included"
    );
    dir.check_invariants();
    assert_eq!(
        dir.register_unverified(&ctx(1, T0), signer, 2, &body),
        Err(CommandError::AlreadyRegistered)
    );
    assert_eq!(
        dir.register_unverified(&ctx(1, T0), [7; 32], 1, &body),
        Err(CommandError::UsernameTaken)
    );
    assert_eq!(
        dir.register_unverified(&ctx(1, T0), [7; 32], 1, &CommandBody::Deregister),
        Err(CommandError::Malformed)
    );
}
