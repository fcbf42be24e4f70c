//! Mailboxes: deposits, idempotence, quotas and global bounds, TTL purges, owner-only
//! acknowledgement, deregistration, fetch pages.

use super::*;
use crate::directory::mailbox::{MailboxLimits, MAILBOX_MESSAGE_OVERHEAD_BYTES_MAX};
use crate::ids::MailboxSeq;

fn deposited(seq: u64, at_unix_ms: u64, ttl_ms: u64) -> CommandResult {
    Ok(Outcome::Deposited {
        seq: MailboxSeq(seq),
        expires_unix_ms: at_unix_ms + ttl_ms,
    })
}

fn ack(upto: u64) -> CommandBody {
    CommandBody::AckMailbox {
        upto: MailboxSeq(upto),
    }
}

fn small() -> MailboxLimits {
    MailboxLimits {
        envelope_bytes_max: 8,
        messages_max: 2,
        bytes_max: 10,
        total_messages_max: 3,
        total_bytes_max: 14,
        ttl_ms: 1_000,
        purge_per_apply_max: 1,
    }
}

/// Alice and Bob registered in a directory with `limits`.
fn two_users(limits: MailboxLimits) -> (Harness, Client, UserId, Client, UserId) {
    let mut h = Harness::with(Directory::with_all_limits(
        USERS_MAX,
        TOMBSTONES_MAX,
        limits,
    ));
    let (mut alice, mut bob) = (Client::new(1), Client::new(2));
    let a = h.register(&mut alice, "alice", 0);
    let b = h.register(&mut bob, "bob", 0);
    (h, alice, a, bob, b)
}

/// Applies an empty (malformed) entry: it only moves the clock, and with it the purge.
fn tick(h: &mut Harness) {
    assert_eq!(h.apply_bytes(b""), Err(CommandError::Malformed));
}

fn seqs(h: &Harness, user: &UserId) -> Vec<u64> {
    h.dir
        .mailbox(user)
        .map(|m| m.messages().map(|m| m.seq.0).collect())
        .unwrap_or_default()
}

#[test]
fn deposits_get_rising_seqs_and_the_leader_stamped_time() {
    let ttl = MailboxLimits::default().ttl_ms;
    let (mut h, _, alice, _, _) = two_users(MailboxLimits::default());
    assert_eq!(
        h.apply_bytes(&deposit(alice, 1, b"one")),
        deposited(1, T0, ttl)
    );
    h.now_unix_ms = T0 + 5;
    assert_eq!(
        h.apply_bytes(&deposit(alice, 2, b"two")),
        deposited(2, T0 + 5, ttl)
    );
    // A leader whose clock is behind: directory time does not run back, and stamps use it.
    h.now_unix_ms = T0 - 1_000;
    assert_eq!(
        h.apply_bytes(&deposit(alice, 3, b"3")),
        deposited(3, T0 + 5, ttl)
    );
    let mailbox = h.dir.mailbox(&alice).expect("a mailbox");
    let held: Vec<_> = mailbox
        .messages()
        .map(|m| (m.seq.0, m.envelope.clone(), m.deposited_unix_ms))
        .collect();
    assert_eq!(
        held,
        vec![
            (1, b"one".to_vec(), T0),
            (2, b"two".to_vec(), T0 + 5),
            (3, b"3".to_vec(), T0 + 5)
        ]
    );
    assert_eq!(
        (mailbox.len(), mailbox.bytes(), mailbox.last_seq()),
        (3, 7, MailboxSeq(3))
    );
    assert_eq!(h.dir.mailbox_totals(), (3, 7));
    // The audit trail names no one for a deposit (it has no signer).
    let last = h.dir.audit().last().unwrap();
    assert_eq!((last.user, last.kind), (None, CommandKind::Deposit));
    // A deposit for no one is refused and changes nothing.
    h.refused(
        &deposit(numbered_user(9), 1, b"x"),
        CommandError::UnknownUser,
    );
}

#[test]
fn a_redeposit_answers_the_first_outcome_and_stores_nothing() {
    let ttl = MailboxLimits::default().ttl_ms;
    let (mut h, _, alice, _, _) = two_users(MailboxLimits::default());
    let first = h.apply_bytes(&deposit(alice, 1, b"hello"));
    assert_eq!(first, deposited(1, T0, ttl));
    let digest = h.dir.user_state_digest();
    h.now_unix_ms = T0 + 10;
    assert_eq!(
        h.apply_bytes(&deposit(alice, 1, b"hello")),
        first,
        "same seq, same expiry"
    );
    assert_eq!(h.dir.user_state_digest(), digest, "nothing stored");
    // Another envelope under a held id is a conflict, not a silent overwrite.
    h.refused(
        &deposit(alice, 1, b"other"),
        CommandError::MessageIdConflict,
    );
    assert_eq!(seqs(&h, &alice), vec![1]);
}

#[test]
fn quotas_and_global_bounds_refuse_with_typed_errors_and_change_nothing() {
    let limits = small();
    let (mut h, _, alice, _, bob) = two_users(limits);
    h.refused(
        &deposit(alice, 1, &[0; 9]),
        CommandError::EnvelopeTooLarge { len: 9, max: 8 },
    );
    assert!(h.apply_bytes(&deposit(alice, 1, &[0; 8])).is_ok());
    // Bytes quota: 8 held, 3 more would make 11 > 10.
    h.refused(
        &deposit(alice, 2, &[0; 3]),
        CommandError::MailboxFull {
            messages: 1,
            bytes: 8,
        },
    );
    assert!(h.apply_bytes(&deposit(alice, 2, &[0; 2])).is_ok());
    // Count quota: 2 held.
    h.refused(
        &deposit(alice, 3, &[]),
        CommandError::MailboxFull {
            messages: 2,
            bytes: 10,
        },
    );
    // Global bytes: 10 held, Bob's 5 would make 15 > 14.
    h.refused(&deposit(bob, 1, &[0; 5]), CommandError::MailboxesFull);
    assert!(h.apply_bytes(&deposit(bob, 1, &[0; 4])).is_ok());
    // Global count: 3 held.
    h.refused(&deposit(bob, 2, &[]), CommandError::MailboxesFull);
    assert_eq!(h.dir.mailbox_totals(), (3, 14));
    // An idempotent re-deposit still answers at the bounds: it needs no room.
    assert_eq!(
        h.apply_bytes(&deposit(bob, 1, &[0; 4])),
        deposited(1, T0, 1_000)
    );
}

#[test]
fn expired_envelopes_are_purged_once_the_replicated_clock_passes_expiry() {
    let limits = MailboxLimits {
        purge_per_apply_max: 2,
        ..small()
    };
    let (mut h, _, alice, _, bob) = two_users(limits);
    assert!(h.apply_bytes(&deposit(alice, 1, b"a")).is_ok());
    assert!(h.apply_bytes(&deposit(alice, 2, b"b")).is_ok());
    h.now_unix_ms = T0 + 500;
    assert!(h.apply_bytes(&deposit(bob, 1, b"c")).is_ok());
    // One millisecond before expiry: nothing goes, whatever the entry.
    h.now_unix_ms = T0 + 999;
    tick(&mut h);
    assert_eq!(h.dir.mailbox_totals(), (3, 3));
    assert_eq!(seqs(&h, &alice), vec![1, 2]);
    // A lagging leader's stamp cannot purge either: the clock is the max of the stamps.
    h.now_unix_ms = T0 + 1_000;
    tick(&mut h);
    assert_eq!(seqs(&h, &alice), Vec::<u64>::new(), "purged at expiry");
    assert_eq!(seqs(&h, &bob), vec![1]);
    assert_eq!(h.dir.mailbox_totals(), (1, 1));
    // The emptied mailbox keeps its last seq: seqs are never reused.
    assert_eq!(
        h.apply_bytes(&deposit(alice, 3, b"d")),
        deposited(3, T0 + 1_000, 1_000)
    );
    h.now_unix_ms = T0 + 1_500;
    tick(&mut h);
    assert_eq!(seqs(&h, &bob), Vec::<u64>::new());
}

#[test]
fn purging_is_bounded_per_apply_and_fetch_hides_what_waits() {
    let limits = MailboxLimits {
        messages_max: 4,
        bytes_max: 100,
        total_messages_max: 10,
        total_bytes_max: 100,
        ..small()
    };
    let (mut h, _, alice, _, _) = two_users(limits);
    for id in 1..=3 {
        assert!(h.apply_bytes(&deposit(alice, id, b"x")).is_ok());
    }
    h.now_unix_ms = T0 + 5_000;
    tick(&mut h);
    // One purged per apply (`purge_per_apply_max` = 1); the rest wait but are not served.
    assert_eq!(seqs(&h, &alice), vec![2, 3]);
    let page = h.dir.fetch_mailbox(&alice, MailboxSeq(0), 10, 1 << 20);
    assert_eq!(page, MailboxPage::default());
    tick(&mut h);
    tick(&mut h);
    assert_eq!(h.dir.mailbox_totals(), (0, 0));
}

#[test]
fn only_the_owner_acknowledges_and_an_ack_deletes_and_frees_quota() {
    let (mut h, mut alice_c, alice, mut bob_c, bob) = two_users(small());
    assert!(h.apply_bytes(&deposit(alice, 1, b"12345")).is_ok());
    assert!(h.apply_bytes(&deposit(alice, 2, b"12345")).is_ok());
    assert!(matches!(
        h.apply_bytes(&deposit(alice, 3, b"1")),
        Err(CommandError::MailboxFull { .. })
    ));
    // Bob's signed ack can only name Bob's own (empty) mailbox: it cannot touch Alice's.
    h.refuse(
        &mut bob_c,
        ack(2),
        CommandError::AckBeyondLast {
            upto: MailboxSeq(2),
            last: MailboxSeq(0),
        },
    );
    // Alice's key as the signer with Bob's signature does not verify.
    let mut forged = bob_c.sign(h.expires(), ack(2));
    bob_c.counter -= 1;
    forged.signer = alice_c.identity.public().signing_key;
    h.refused(&encode(&forged), CommandError::BadSignature);
    // Beyond the last seq assigned: refused, and the counter does not move.
    h.refuse(
        &mut alice_c,
        ack(3),
        CommandError::AckBeyondLast {
            upto: MailboxSeq(3),
            last: MailboxSeq(2),
        },
    );
    assert_eq!(seqs(&h, &alice), vec![1, 2]);
    let signed = alice_c.sign(h.expires(), ack(1));
    assert_eq!(
        h.apply_bytes(&encode(&signed)),
        Ok(Outcome::Acked { removed: 1 })
    );
    assert_eq!(seqs(&h, &alice), vec![2]);
    assert_eq!(h.dir.user(&alice).unwrap().counter, alice_c.counter);
    // The same signed ack again: the counter refuses it.
    h.refused(
        &encode(&signed),
        CommandError::Replayed {
            counter: alice_c.counter,
            last: alice_c.counter,
        },
    );
    // The freed room takes a new deposit; a repeated ack deletes nothing more.
    assert_eq!(
        h.apply_bytes(&deposit(alice, 3, b"1")),
        deposited(3, T0, 1_000)
    );
    assert_eq!(
        h.run(&mut alice_c, ack(1)),
        Ok(Outcome::Acked { removed: 0 })
    );
    assert_eq!(
        h.run(&mut alice_c, ack(3)),
        Ok(Outcome::Acked { removed: 2 })
    );
    assert_eq!(h.dir.mailbox_totals(), (0, 0));
    let _ = bob;
}

#[test]
fn deregistering_deletes_the_mailbox() {
    let (mut h, mut alice_c, alice, _, bob) = two_users(MailboxLimits::default());
    assert!(h.apply_bytes(&deposit(alice, 1, b"for alice")).is_ok());
    assert!(h.apply_bytes(&deposit(bob, 1, b"bob")).is_ok());
    assert_eq!(
        h.run(&mut alice_c, CommandBody::Deregister),
        Ok(Outcome::Done)
    );
    assert!(h.dir.mailbox(&alice).is_none());
    assert_eq!(h.dir.mailbox_totals(), (1, 3));
    h.refused(&deposit(alice, 2, b"x"), CommandError::UnknownUser);
    // A new registration of the same key starts a new, empty mailbox.
    let body = alice_c.register("alice", 0);
    h.register_body(&mut alice_c, body);
    assert!(h.dir.mailbox(&alice).is_none());
    let ttl = MailboxLimits::default().ttl_ms;
    assert_eq!(
        h.apply_bytes(&deposit(alice, 1, b"again")),
        deposited(1, T0, ttl)
    );
}

#[test]
fn fetch_pages_from_a_cursor_within_count_and_bytes() {
    let (mut h, _, alice, _, bob) = two_users(MailboxLimits::default());
    for id in 1..=5u8 {
        assert!(h.apply_bytes(&deposit(alice, id, &[id; 100])).is_ok());
    }
    let all: Vec<u64> = (1..=5).collect();
    let page = |h: &Harness, after: u64, max: usize, bytes: usize| {
        let p = h.dir.fetch_mailbox(&alice, MailboxSeq(after), max, bytes);
        (
            p.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
            p.more,
        )
    };
    let roomy = 1 << 20;
    assert_eq!(page(&h, 0, 10, roomy), (all, false));
    assert_eq!(page(&h, 2, 2, roomy), (vec![3, 4], true));
    assert_eq!(page(&h, 5, 10, roomy), (vec![], false));
    assert_eq!(page(&h, u64::MAX, 10, roomy), (vec![], false));
    // The smallest budget a fetch may have holds the largest envelope; of 4,000-byte envelopes
    // it holds two.
    for id in 6..=8u8 {
        assert!(h.apply_bytes(&deposit(alice, id, &[id; 4_000])).is_ok());
    }
    let budget = MAILBOX_MESSAGE_OVERHEAD_BYTES_MAX + crate::directory::mailbox::ENVELOPE_BYTES_MAX;
    assert_eq!(page(&h, 5, 10, budget), (vec![6, 7], true));
    assert_eq!(page(&h, 7, 10, budget), (vec![8], false));
    // No one else's mailbox is reachable by its owner's id but theirs.
    assert_eq!(
        h.dir.fetch_mailbox(&bob, MailboxSeq(0), 10, roomy),
        MailboxPage::default()
    );
}
