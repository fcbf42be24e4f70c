//! Random histories from three identities (plus an unknown user), applied to two directories,
//! the second replaced midway by a restore of its own snapshot. Mailboxes have small bounds and
//! a short TTL, so histories reach the quotas and the purges.

use super::*;
use crate::directory::command::Deposit;
use crate::directory::mailbox::MailboxLimits;
use crate::ids::{MailboxSeq, MessageId};
use proptest::prelude::*;

/// Small mailbox bounds, and a TTL the clock steps cross in a few steps.
fn limits() -> MailboxLimits {
    MailboxLimits {
        envelope_bytes_max: 16,
        messages_max: 3,
        bytes_max: 24,
        total_messages_max: 5,
        total_bytes_max: 40,
        ttl_ms: 5 * 60 * 1000,
        purge_per_apply_max: 2,
    }
}

const NAMES: [&str; 5] = ["alice", "Alice", "bob", "carol", "x"];

#[derive(Clone, Debug)]
enum Op {
    Register {
        who: usize,
        name: usize,
        prekeys: usize,
    },
    Rotate {
        who: usize,
        forged: bool,
    },
    Publish {
        who: usize,
        count: usize,
    },
    Claim {
        who: usize,
        target: usize,
    },
    Addresses {
        who: usize,
        count: usize,
    },
    Visibility {
        who: usize,
        visibility: u8,
        contacts: u8,
    },
    Deregister {
        who: usize,
    },
    Presence {
        changes: Vec<(usize, Option<u64>)>,
    },
    Clock {
        delta_ms: i64,
    },
    Replay {
        back: usize,
    },
    Expired {
        who: usize,
    },
    Deposit {
        to: usize,
        id: u8,
        len: usize,
    },
    Ack {
        who: usize,
        upto: u64,
    },
    Garbage(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..3usize;
    let prekeys = prop_oneof![4 => 0..4usize, 1 => Just(ONE_TIME_PREKEYS_MAX)];
    prop_oneof![
        4 => (who.clone(), 0..NAMES.len(), prekeys.clone())
            .prop_map(|(who, name, prekeys)| Op::Register { who, name, prekeys }),
        1 => (who.clone(), any::<bool>()).prop_map(|(who, forged)| Op::Rotate { who, forged }),
        2 => (who.clone(), prekeys).prop_map(|(who, count)| Op::Publish { who, count }),
        3 => (who.clone(), 0..4usize).prop_map(|(who, target)| Op::Claim { who, target }),
        1 => (who.clone(), 0..=ADDRESSES_MAX + 1)
            .prop_map(|(who, count)| Op::Addresses { who, count }),
        1 => (who.clone(), 0..3u8, any::<u8>()).prop_map(|(who, visibility, contacts)| {
            Op::Visibility { who, visibility, contacts }
        }),
        2 => who.clone().prop_map(|who| Op::Deregister { who }),
        2 => proptest::collection::vec((0..4usize, proptest::option::of(0..T0 + 1)), 0..5)
            .prop_map(|changes| Op::Presence { changes }),
        2 => (-120_000i64..=COMMAND_VALIDITY_MAX_MS as i64 + 60_000)
            .prop_map(|delta_ms| Op::Clock { delta_ms }),
        2 => any::<usize>().prop_map(|back| Op::Replay { back }),
        1 => who.clone().prop_map(|who| Op::Expired { who }),
        6 => (0..4usize, 0..6u8, 0..=17usize).prop_map(|(to, id, len)| Op::Deposit { to, id, len }),
        3 => (who, 0..8u64).prop_map(|(who, upto)| Op::Ack { who, upto }),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Op::Garbage),
    ]
}

struct World {
    clients: Vec<Client>,
    history: Vec<Vec<u8>>,
    now_unix_ms: u64,
}

impl World {
    fn id(&self, who: usize) -> UserId {
        self.clients
            .get(who)
            .map_or(UserId([0xee; 32]), Client::user)
    }

    /// The entry `op` stands for, or `None` for a clock change.
    fn entry(&mut self, op: &Op, clock_unix_ms: u64) -> Option<Vec<u8>> {
        let expires = clock_unix_ms.max(self.now_unix_ms) + VALID_MS;
        let body = match *op {
            Op::Register { who, name, prekeys } => {
                (who, self.clients[who].register(NAMES[name], prekeys))
            }
            Op::Rotate { who, forged } => {
                let signer = if forged { (who + 1) % 3 } else { who };
                (
                    who,
                    CommandBody::RotateSignedPrekey(self.clients[signer].signed_prekey()),
                )
            }
            Op::Publish { who, count } => (
                who,
                CommandBody::PublishOneTimePrekeys(self.clients[who].one_time_prekeys(count)),
            ),
            Op::Claim { who, target } => (
                who,
                CommandBody::ClaimBundle {
                    target: self.id(target),
                },
            ),
            Op::Addresses { who, count } => {
                (who, CommandBody::UpdateAddresses(vec!["h:1".into(); count]))
            }
            Op::Visibility {
                who,
                visibility,
                contacts,
            } => {
                let visibility = [
                    Visibility::Everyone,
                    Visibility::Contacts,
                    Visibility::Nobody,
                ][visibility as usize];
                let contacts = (0..4)
                    .filter(|i| contacts & (1 << i) != 0)
                    .map(|i| self.id(i))
                    .collect();
                (
                    who,
                    CommandBody::SetVisibility {
                        visibility,
                        contacts,
                    },
                )
            }
            Op::Deregister { who } => (who, CommandBody::Deregister),
            Op::Ack { who, upto } => (
                who,
                CommandBody::AckMailbox {
                    upto: MailboxSeq(upto),
                },
            ),
            Op::Deposit { to, id, len } => {
                // The same id mostly carries the same bytes (a retry), sometimes not (a conflict).
                let byte = id.wrapping_add(u8::from(len % 5 == 0));
                let deposit = Deposit {
                    recipient: self.id(to),
                    message_id: MessageId([id; 16]),
                    envelope: vec![byte; len],
                };
                return Some(DirectoryEntry::Deposit(deposit).encode());
            }
            Op::Expired { who } => {
                let cmd = self.clients[who]
                    .sign(clock_unix_ms.saturating_sub(1), CommandBody::Deregister);
                return Some(encode(&cmd));
            }
            Op::Presence { ref changes } => {
                let changes = changes
                    .iter()
                    .map(|&(who, seen)| {
                        let change = seen.map_or(PresenceChange::Online, |last_seen_unix_ms| {
                            PresenceChange::Offline { last_seen_unix_ms }
                        });
                        (self.id(who), change)
                    })
                    .collect();
                return Some(DirectoryEntry::Presence(PresenceBatch { changes }).encode());
            }
            Op::Clock { delta_ms } => {
                self.now_unix_ms = self.now_unix_ms.saturating_add_signed(delta_ms);
                return None;
            }
            Op::Replay { back } if !self.history.is_empty() => {
                let len = self.history.len();
                return Some(self.history[len - 1 - back % len].clone());
            }
            Op::Replay { .. } => return None,
            Op::Garbage(ref bytes) => return Some(bytes.clone()),
        };
        let (who, body) = body;
        Some(encode(&self.clients[who].sign(expires, body)))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_histories_agree_across_a_snapshot(ops in proptest::collection::vec(op(), 1..48)) {
        let mut world = World {
            clients: (0..3).map(|i| Client::new(100 + i)).collect(),
            history: Vec::new(),
            now_unix_ms: T0,
        };
        // Small bounds, so histories reach them.
        let new = || Directory::with_all_limits(2, 1, limits());
        let (mut a, mut b) = (new(), new());
        let mut handed_out = BTreeSet::new();
        // Two users from the start, so most commands have someone to act on.
        let prelude = [
            Op::Register { who: 0, name: 0, prekeys: 3 },
            Op::Register { who: 1, name: 2, prekeys: 3 },
        ];
        let ops: Vec<Op> = prelude.into_iter().chain(ops).collect();
        for (step, op) in ops.iter().enumerate() {
            if step == ops.len() / 2 {
                let mut restored = new();
                restored.restore(&b.snapshot()).expect("restores");
                b = restored;
                prop_assert_eq!(a.digest(), b.digest());
            }
            let Some(bytes) = world.entry(op, a.clock_unix_ms()) else { continue };
            let users_before = a.users.clone();
            let mailboxes_before = a.mailboxes.clone();
            let context = ctx(step as u64 + 1, world.now_unix_ms);
            let response = a.apply(&context, &bytes);
            prop_assert_eq!(&response, &b.apply(&context, &bytes));
            a.check_invariants();
            b.check_invariants();
            prop_assert_eq!(a.digest(), b.digest());
            match decode_result(&response).expect("responses decode") {
                Err(_) => {
                    prop_assert_eq!(&a.users, &users_before, "a refusal changed records");
                    // Only the purge of expired envelopes may have changed a mailbox.
                    let mut purged = mailboxes_before;
                    purged.purge_expired(a.clock_unix_ms());
                    prop_assert_eq!(&a.mailboxes, &purged, "a refusal changed a mailbox");
                }
                Ok(Outcome::Deposited { seq, .. }) => {
                    let Ok(DirectoryEntry::Deposit(d)) = DirectoryEntry::decode(&bytes) else {
                        panic!("only deposits are answered `Deposited`");
                    };
                    let held = a.mailbox(&d.recipient).and_then(|m| m.messages().find(|m| m.seq == seq));
                    prop_assert_eq!(held.map(|m| (&m.envelope, m.message_id)), Some((&d.envelope, d.message_id)));
                }
                Ok(Outcome::Bundle { bundle, pool_empty }) => {
                    prop_assert_eq!(pool_empty, bundle.one_time_prekey.is_none());
                    if let Some(key) = bundle.one_time_prekey {
                        let fresh = handed_out.insert(key.key);
                        prop_assert!(fresh, "a one-time prekey handed out twice");
                    }
                }
                Ok(_) => {}
            }
            world.history.push(bytes);
        }
    }
}
