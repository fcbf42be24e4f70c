//! The replica on a quiet in-memory cluster: forwarding, login, refusals, reads, presence.

use super::harness::LocalCluster;
use super::protocol::{
    login, ClientFrame, Consistency, LookupKey, ReplicaFrame, Reply, Request, RequestError,
};
use super::ReplicaConfig;
use crate::directory::{
    CommandBody, CommandError, OneTimePrekey, Outcome, Presence, SignedCommand, SignedPrekey,
    Visibility,
};
use crate::ids::{ConnId, NodeId, RequestId};
use crate::raft::io::Role;
use crate::session::{Entropy, IdentityKeyPair, PrekeyId, SignedPrekeyPair};
use std::time::Duration;

struct Seeded(u64);
impl Entropy for Seeded {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *b = (self.0 >> 56) as u8;
        }
    }
}

fn identity(seed: u64) -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut Seeded(seed))
}

fn register_body(id: &IdentityKeyPair, name: &str) -> CommandBody {
    let spk = SignedPrekeyPair::generate(id, PrekeyId(1), &mut Seeded(99));
    CommandBody::Register {
        username: name.into(),
        identity_dh: id.public().dh_key,
        signed_prekey: SignedPrekey {
            id: spk.id(),
            key: spk.public_key(),
            signature: spk.signature(),
        },
        one_time_prekeys: (0..3)
            .map(|i| OneTimePrekey {
                id: PrekeyId(10 + i),
                key: [i as u8 + 1; 32],
            })
            .collect(),
        addresses: vec!["10.0.0.1:7000".into()],
    }
}

fn quiet() -> ReplicaConfig {
    ReplicaConfig::default()
}

fn cluster() -> (LocalCluster, NodeId, NodeId) {
    let mut c = LocalCluster::new(3, &quiet());
    let leader = c
        .elect(Duration::from_secs(10))
        .expect("a leader within 10 s");
    let follower = c
        .replicas
        .keys()
        .copied()
        .find(|id| *id != leader)
        .expect("3 replicas");
    (c, leader, follower)
}

/// Connects to `node` and logs in as `id`.
fn logged_in(c: &mut LocalCluster, node: NodeId, id: &IdentityKeyPair) -> ConnId {
    let conn = c.connect(node);
    let Some(ReplicaFrame::Challenge { nonce, replica }) = c.take(conn).pop() else {
        panic!("a connection starts with a challenge");
    };
    assert_eq!(replica, node);
    c.send_and_settle(conn, login(id, &nonce, replica).encode());
    assert_eq!(
        c.take(conn),
        vec![ReplicaFrame::LoggedIn { user: id.user_id() }]
    );
    conn
}

fn request(
    c: &mut LocalCluster,
    conn: ConnId,
    id: u64,
    request: Request,
) -> Result<Reply, RequestError> {
    c.send_and_settle(
        conn,
        ClientFrame::Request {
            id: RequestId(id),
            request,
        }
        .encode(),
    );
    // Commit needs a heartbeat round or two.
    for _ in 0..50 {
        let frames = c.take(conn);
        for frame in frames {
            if let ReplicaFrame::Response { id: got, result } = frame {
                assert_eq!(got, RequestId(id));
                return result;
            }
        }
        c.advance(Duration::from_millis(20));
    }
    panic!("no response to request {id}");
}

fn command(
    c: &mut LocalCluster,
    conn: ConnId,
    rid: u64,
    seq: u64,
    cmd: SignedCommand,
) -> Result<Reply, RequestError> {
    request(
        c,
        conn,
        rid,
        Request::Command {
            session: 1,
            seq,
            command: cmd,
        },
    )
}

fn expires(c: &LocalCluster) -> u64 {
    c.now.unix_ms + 60_000
}

#[test]
fn a_write_on_a_follower_is_forwarded_and_answered_on_the_clients_connection() {
    let (mut c, _leader, follower) = cluster();
    let alice = identity(1);
    let conn = logged_in(&mut c, follower, &alice);
    let cmd = SignedCommand::sign(&alice, 1, expires(&c), register_body(&alice, "Alice"));
    let reply = command(&mut c, conn, 1, 1, cmd.clone());
    assert!(
        matches!(reply, Ok(Reply::Command(Ok(Outcome::Registered { user, .. }))) if user == alice.user_id()),
        "{reply:?}"
    );
    // Every replica applied it.
    for _ in 0..20 {
        c.advance(Duration::from_millis(50));
    }
    for r in c.replicas.values() {
        let name = crate::directory::Username::parse("alice").unwrap();
        assert_eq!(
            r.directory().lookup(&name).map(|u| u.user),
            Some(alice.user_id())
        );
    }
    // A retry with the same (session, seq) is answered from the de-duplication table, not
    // applied again (it would say Replayed).
    let again = command(&mut c, conn, 2, 1, cmd);
    assert_eq!(again, reply);
    c.check_invariants();
}

#[test]
fn requests_before_login_bad_logins_and_foreign_signatures_are_refused() {
    let (mut c, leader, _) = cluster();
    let alice = identity(1);
    let conn = c.connect(leader);
    let Some(ReplicaFrame::Challenge { nonce, replica }) = c.take(conn).pop() else {
        panic!("challenge");
    };
    let lookup = Request::Lookup {
        key: LookupKey::Name("alice".into()),
        consistency: Consistency::Local,
    };
    assert_eq!(
        request(&mut c, conn, 1, lookup),
        Err(RequestError::NotLoggedIn)
    );
    // A signature over another replica's challenge does not log in here.
    c.send_and_settle(conn, login(&alice, &nonce, NodeId(replica.0 + 7)).encode());
    assert_eq!(c.take(conn), vec![ReplicaFrame::LoginFailed]);
    c.send_and_settle(conn, login(&alice, &nonce, replica).encode());
    assert_eq!(
        c.take(conn),
        vec![ReplicaFrame::LoggedIn {
            user: alice.user_id()
        }]
    );
    // Bob's command on Alice's connection.
    let bob = identity(2);
    let cmd = SignedCommand::sign(&bob, 1, expires(&c), register_body(&bob, "bob"));
    assert_eq!(
        command(&mut c, conn, 2, 1, cmd),
        Err(RequestError::WrongSigner)
    );
    // An invalid username never reaches Raft.
    let cmd = SignedCommand::sign(&alice, 1, expires(&c), register_body(&alice, "no way"));
    assert!(matches!(
        command(&mut c, conn, 3, 1, cmd),
        Err(RequestError::InvalidUsername(_))
    ));
    // Garbage is answered and counted, and the connection keeps working.
    c.send_and_settle(conn, vec![1, 2, 3]);
    assert_eq!(c.take(conn), vec![ReplicaFrame::Malformed]);
    assert_eq!(c.replicas[&leader].stats().client_frames_malformed, 1);
    let before = c.replicas[&leader].node().commit();
    c.advance(Duration::from_millis(100));
    assert!(c.replicas[&leader].node().commit() >= before);
    assert!(
        c.replicas[&leader].directory().is_empty(),
        "nothing was registered"
    );
}

#[test]
fn a_replayed_or_tampered_command_is_refused_at_apply() {
    let (mut c, leader, _) = cluster();
    let alice = identity(1);
    let conn = logged_in(&mut c, leader, &alice);
    let cmd = SignedCommand::sign(&alice, 1, expires(&c), register_body(&alice, "alice"));
    assert!(matches!(
        command(&mut c, conn, 1, 1, cmd.clone()),
        Ok(Reply::Command(Ok(_)))
    ));
    // The same signed command in a new de-duplication session: the counter says replay.
    let replay = request(
        &mut c,
        conn,
        2,
        Request::Command {
            session: 2,
            seq: 1,
            command: cmd,
        },
    );
    assert!(
        matches!(
            replay,
            Ok(Reply::Command(Err(CommandError::Replayed {
                counter: 1,
                last: 1
            })))
        ),
        "{replay:?}"
    );
    let mut tampered = SignedCommand::sign(
        &alice,
        2,
        expires(&c),
        CommandBody::UpdateAddresses(vec!["a:1".into()]),
    );
    tampered.body = CommandBody::UpdateAddresses(vec!["b:2".into()]);
    let answer = request(
        &mut c,
        conn,
        3,
        Request::Command {
            session: 3,
            seq: 1,
            command: tampered,
        },
    );
    assert_eq!(answer, Ok(Reply::Command(Err(CommandError::BadSignature))));
    let record = c.replicas[&leader]
        .directory()
        .user(&alice.user_id())
        .unwrap()
        .clone();
    assert_eq!(
        (record.counter, record.addresses.clone()),
        (1, vec!["10.0.0.1:7000".to_string()])
    );
}

#[test]
fn linearizable_lookups_on_a_follower_see_the_latest_write_and_local_ones_say_stale() {
    let (mut c, leader, follower) = cluster();
    let alice = identity(1);
    let writer = logged_in(&mut c, leader, &alice);
    let bob = identity(2);
    let reader = logged_in(&mut c, follower, &bob);
    let cmd = SignedCommand::sign(&alice, 1, expires(&c), register_body(&alice, "alice"));
    assert!(matches!(
        command(&mut c, writer, 1, 1, cmd),
        Ok(Reply::Command(Ok(_)))
    ));
    let lin = request(
        &mut c,
        reader,
        1,
        Request::Lookup {
            key: LookupKey::Name("ALICE".into()),
            consistency: Consistency::Linearizable,
        },
    );
    let Ok(Reply::Lookup(reply)) = lin else {
        panic!("{lin:?}");
    };
    assert_eq!(reply.user.map(|u| u.user), Some(alice.user_id()));
    assert!(!reply.possibly_stale);
    let local = request(
        &mut c,
        reader,
        2,
        Request::Lookup {
            key: LookupKey::Id(alice.user_id()),
            consistency: Consistency::Local,
        },
    );
    let Ok(Reply::Lookup(reply)) = local else {
        panic!("{local:?}");
    };
    assert!(reply.possibly_stale);
    assert_eq!(reply.user.map(|u| u.one_time_prekeys_left), Some(3));
}

/// Registers `id` as `name` through `conn`.
fn register(c: &mut LocalCluster, conn: ConnId, id: &IdentityKeyPair, name: &str) {
    let cmd = SignedCommand::sign(id, 1, expires(c), register_body(id, name));
    let r = command(c, conn, 100, 1, cmd);
    assert!(matches!(r, Ok(Reply::Command(Ok(_)))), "{r:?}");
}

fn presence(c: &LocalCluster, node: NodeId, id: &IdentityKeyPair) -> Presence {
    c.replicas[&node]
        .directory()
        .user(&id.user_id())
        .expect("registered")
        .presence
}

#[test]
fn presence_goes_online_with_heartbeats_and_offline_within_the_bound() {
    let (mut c, leader, follower) = cluster();
    let alice = identity(1);
    let conn = logged_in(&mut c, follower, &alice);
    register(&mut c, conn, &alice, "alice");
    for _ in 0..40 {
        c.advance(Duration::from_millis(100));
    }
    assert!(matches!(
        presence(&c, leader, &alice),
        Presence::Online { .. }
    ));
    // Heartbeats keep the lease for a minute.
    for _ in 0..6 {
        c.send(conn, ClientFrame::Heartbeat.encode());
        for _ in 0..100 {
            c.advance(Duration::from_millis(100));
        }
        assert!(matches!(
            presence(&c, leader, &alice),
            Presence::Online { .. }
        ));
    }
    // Silence: offline within lease + report + flush (+ grace after a leader change; none here).
    let bound = quiet().presence.offline_bound();
    let mut waited = Duration::ZERO;
    while matches!(presence(&c, leader, &alice), Presence::Online { .. }) {
        c.advance(Duration::from_millis(100));
        waited += Duration::from_millis(100);
        assert!(
            waited <= bound,
            "still online {waited:?} after the last heartbeat"
        );
    }
    // Followers learn the commit with the next heartbeat.
    for _ in 0..5 {
        c.advance(Duration::from_millis(100));
    }
    let Presence::Offline { last_seen_unix_ms } = presence(&c, follower, &alice) else {
        panic!("offline on every replica");
    };
    assert!(last_seen_unix_ms.is_some());
    c.check_invariants();
}

#[test]
fn a_connected_user_who_registers_again_is_shown_online_again() {
    // The leader compares only the users whose presence may have changed: a registration must
    // count as such a change, or a connected user would stay offline until the next full pass.
    let (mut c, leader, follower) = cluster();
    let alice = identity(1);
    let conn = logged_in(&mut c, follower, &alice);
    register(&mut c, conn, &alice, "alice");
    for _ in 0..30 {
        c.advance(Duration::from_millis(100));
    }
    assert!(matches!(
        presence(&c, leader, &alice),
        Presence::Online { .. }
    ));
    let leave = SignedCommand::sign(&alice, 2, expires(&c), CommandBody::Deregister);
    assert!(matches!(
        command(&mut c, conn, 2, 2, leave),
        Ok(Reply::Command(Ok(Outcome::Done)))
    ));
    let again = SignedCommand::sign(&alice, 3, expires(&c), register_body(&alice, "alice"));
    assert!(matches!(
        command(&mut c, conn, 3, 3, again),
        Ok(Reply::Command(Ok(Outcome::Registered { .. })))
    ));
    for _ in 0..30 {
        c.advance(Duration::from_millis(100));
    }
    assert!(
        matches!(presence(&c, leader, &alice), Presence::Online { .. }),
        "online again within a few flushes"
    );
    c.check_invariants();
}

#[test]
fn a_leader_change_does_not_flip_everyone_offline() {
    let (mut c, leader, _) = cluster();
    let users: Vec<IdentityKeyPair> = (1..=4).map(identity).collect();
    let others: Vec<NodeId> = c
        .replicas
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    let mut conns = Vec::new();
    for (i, id) in users.iter().enumerate() {
        let node = others[i % 2];
        let conn = logged_in(&mut c, node, id);
        register(&mut c, conn, id, &format!("user{i}"));
        conns.push(conn);
    }
    for _ in 0..30 {
        c.advance(Duration::from_millis(100));
    }
    for id in &users {
        assert!(matches!(
            presence(&c, others[0], id),
            Presence::Online { .. }
        ));
    }
    // The leader dies; its peers elect another.
    c.replicas.remove(&leader);
    let mut elapsed = Duration::ZERO;
    while elapsed < Duration::from_secs(25) {
        if elapsed.as_millis() % 5_000 == 0 {
            for conn in &conns {
                c.send(*conn, ClientFrame::Heartbeat.encode());
            }
        }
        c.advance(Duration::from_millis(100));
        elapsed += Duration::from_millis(100);
        for node in &others {
            for id in &users {
                assert!(
                    matches!(presence(&c, *node, id), Presence::Online { .. }),
                    "{:?} shown offline on {node} {elapsed:?} after the leader died",
                    id.user_id()
                );
            }
        }
    }
    assert!(
        c.replicas.values().any(|r| r.node().role() == Role::Leader),
        "a new leader"
    );
}

#[test]
fn subscribers_see_presence_changes_only_when_visible() {
    let (mut c, leader, follower) = cluster();
    let alice = identity(1);
    let bob = identity(2);
    let a = logged_in(&mut c, leader, &alice);
    register(&mut c, a, &alice, "alice");
    let b = logged_in(&mut c, follower, &bob);
    register(&mut c, b, &bob, "bob");
    assert_eq!(
        request(&mut c, a, 5, Request::Subscribe(vec![bob.user_id()])),
        Ok(Reply::Subscribed)
    );
    for _ in 0..30 {
        c.advance(Duration::from_millis(100));
    }
    let pushes: Vec<Presence> = c
        .take(a)
        .into_iter()
        .filter_map(|f| match f {
            ReplicaFrame::PresencePush { user, presence } if user == bob.user_id() => {
                Some(presence)
            }
            _ => None,
        })
        .collect();
    assert!(
        pushes.iter().any(|p| matches!(p, Presence::Online { .. })),
        "{pushes:?}"
    );
    // Bob hides; then goes away: Alice hears nothing more.
    let hide = SignedCommand::sign(
        &bob,
        2,
        expires(&c),
        CommandBody::SetVisibility {
            visibility: Visibility::Nobody,
            contacts: vec![],
        },
    );
    assert!(matches!(
        command(&mut c, b, 6, 2, hide),
        Ok(Reply::Command(Ok(Outcome::Done)))
    ));
    c.input(follower, super::ReplicaInput::Disconnected(b));
    for _ in 0..100 {
        c.advance(Duration::from_millis(100));
    }
    assert!(matches!(
        presence(&c, leader, &bob),
        Presence::Offline { .. }
    ));
    let late: Vec<ReplicaFrame> = c
        .take(a)
        .into_iter()
        .filter(|f| matches!(f, ReplicaFrame::PresencePush { .. }))
        .collect();
    assert!(late.is_empty(), "pushed despite Nobody: {late:?}");
    // Too many subscriptions: a typed refusal.
    let many = vec![bob.user_id(); quiet().subscriptions_max + 1];
    assert_eq!(
        request(&mut c, a, 7, Request::Subscribe(many)),
        Err(RequestError::TooManySubscriptions {
            max: quiet().subscriptions_max
        })
    );
}

#[test]
fn fuzz_entry_points_survive_simple_inputs() {
    assert_eq!(
        super::fuzz::replica_client_frames(&[1, 3, 1, 2, 3, 0, 255]),
        0
    );
    assert_eq!(super::fuzz::replica_client_frames(&[0; 64]), 0);
    super::fuzz::directory_entries(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 9]);
}

// ----- mailboxes --------------------------------------------------------------------------

fn deposit_request(
    session: u64,
    seq: u64,
    to: &IdentityKeyPair,
    id: u8,
    envelope: Vec<u8>,
) -> Request {
    Request::Deposit {
        session,
        seq,
        to: to.user_id(),
        message_id: crate::ids::MessageId([id; 16]),
        envelope,
    }
}

fn fetch(
    c: &mut LocalCluster,
    conn: ConnId,
    rid: u64,
    after: u64,
) -> super::protocol::MailboxReply {
    let read = Request::FetchMailbox {
        after: crate::ids::MailboxSeq(after),
        max: 64,
    };
    match request(c, conn, rid, read) {
        Ok(Reply::Mailbox(reply)) => reply,
        other => panic!("a mailbox page expected: {other:?}"),
    }
}

#[test]
fn a_deposit_on_a_follower_commits_and_is_fetched_and_acknowledged_on_another_replica() {
    use crate::ids::MailboxSeq;
    let (mut c, leader, follower) = cluster();
    let third = c
        .replicas
        .keys()
        .copied()
        .find(|id| *id != leader && *id != follower)
        .expect("3 replicas");
    let (alice, bob) = (identity(1), identity(2));
    let a = logged_in(&mut c, third, &alice);
    register(&mut c, a, &alice, "alice");
    // Bob need not be registered: the connection's login is what authenticates a depositor.
    let b = logged_in(&mut c, follower, &bob);
    let deposit = deposit_request(7, 1, &alice, 1, b"ciphertext".to_vec());
    let stored = request(&mut c, b, 1, deposit.clone());
    let Ok(Reply::Command(Ok(Outcome::Deposited {
        seq,
        expires_unix_ms,
    }))) = stored
    else {
        panic!("a deposit is answered once committed: {stored:?}");
    };
    assert_eq!(seq, MailboxSeq(1));
    let clock = c.replicas[&leader].directory().clock_unix_ms();
    assert!(
        expires_unix_ms > clock,
        "stamped with directory time plus the TTL"
    );
    // A retry with the same (session, seq) is answered, not applied again.
    assert_eq!(request(&mut c, b, 2, deposit), stored);
    // Alice fetches on the third replica (a linearizable read through the leader).
    let page = fetch(&mut c, a, 2, 0).page;
    assert_eq!(page.messages.len(), 1, "{page:?}");
    assert_eq!(
        (
            page.messages[0].seq,
            page.messages[0].envelope.as_slice(),
            page.more
        ),
        (MailboxSeq(1), &b"ciphertext"[..], false)
    );
    // Bob's fetch reads Bob's own mailbox: there is no way to name Alice's.
    assert!(fetch(&mut c, b, 3, 0).page.messages.is_empty());
    // Alice acknowledges with her signed command; it deletes on every replica.
    let ack = SignedCommand::sign(
        &alice,
        2,
        expires(&c),
        CommandBody::AckMailbox { upto: seq },
    );
    assert_eq!(
        command(&mut c, a, 4, 2, ack),
        Ok(Reply::Command(Ok(Outcome::Acked { removed: 1 })))
    );
    assert!(fetch(&mut c, a, 5, 0).page.messages.is_empty());
    for _ in 0..10 {
        c.advance(Duration::from_millis(50));
    }
    for r in c.replicas.values() {
        let mailbox = r
            .directory()
            .mailbox(&alice.user_id())
            .expect("kept for its seqs");
        assert_eq!((mailbox.len(), mailbox.last_seq()), (0, MailboxSeq(1)));
    }
    c.check_invariants();
}

#[test]
fn mailbox_requests_are_refused_before_login_for_foreign_acks_and_when_oversized() {
    use crate::directory::mailbox::ENVELOPE_BYTES_MAX;
    use crate::ids::MailboxSeq;
    let (mut c, leader, follower) = cluster();
    let (alice, bob) = (identity(1), identity(2));
    let a = logged_in(&mut c, leader, &alice);
    register(&mut c, a, &alice, "alice");
    let anonymous = c.connect(follower);
    c.take(anonymous);
    let fetch_request = Request::FetchMailbox {
        after: MailboxSeq(0),
        max: 1,
    };
    assert_eq!(
        request(&mut c, anonymous, 1, fetch_request),
        Err(RequestError::NotLoggedIn)
    );
    let deposit = deposit_request(1, 1, &alice, 1, vec![1]);
    assert_eq!(
        request(&mut c, anonymous, 2, deposit),
        Err(RequestError::NotLoggedIn)
    );
    let b = logged_in(&mut c, follower, &bob);
    // An ack Alice signed, sent by Bob (say, captured): refused before it reaches Raft.
    let ack = SignedCommand::sign(
        &alice,
        2,
        expires(&c),
        CommandBody::AckMailbox {
            upto: MailboxSeq(0),
        },
    );
    assert_eq!(
        command(&mut c, b, 3, 1, ack),
        Err(RequestError::WrongSigner)
    );
    let big = deposit_request(1, 1, &alice, 1, vec![0; ENVELOPE_BYTES_MAX + 1]);
    assert_eq!(request(&mut c, b, 4, big), Err(RequestError::TooLarge));
    assert_eq!(
        request(&mut c, b, 5, deposit_request(1, 1, &bob, 1, vec![1])),
        Ok(Reply::Command(Err(CommandError::UnknownUser))),
        "Bob is not registered: he has no mailbox"
    );
    assert!(c.replicas[&leader]
        .directory()
        .mailbox(&alice.user_id())
        .is_none());
    c.check_invariants();
}

#[test]
fn a_page_of_the_largest_envelopes_fits_in_one_client_frame() {
    use super::protocol::CLIENT_FRAME_BYTES_MAX;
    use crate::directory::mailbox::ENVELOPE_BYTES_MAX;
    let (mut c, leader, _) = cluster();
    let (alice, bob) = (identity(1), identity(2));
    let a = logged_in(&mut c, leader, &alice);
    register(&mut c, a, &alice, "alice");
    let b = logged_in(&mut c, leader, &bob);
    for seq in 1..=3u8 {
        let deposit = deposit_request(
            1,
            u64::from(seq),
            &alice,
            seq,
            vec![seq; ENVELOPE_BYTES_MAX],
        );
        let r = request(&mut c, b, u64::from(seq), deposit);
        assert!(matches!(r, Ok(Reply::Command(Ok(_)))), "{r:?}");
    }
    // `fetch` goes through the harness, which decodes every frame under the client frame limit.
    let reply = fetch(&mut c, a, 9, 0);
    assert_eq!((reply.page.messages.len(), reply.page.more), (1, true));
    let frame = super::protocol::ReplicaFrame::Response {
        id: RequestId(u64::MAX),
        result: Ok(Reply::Mailbox(reply)),
    };
    assert!(frame.encode().len() <= CLIENT_FRAME_BYTES_MAX);
    let rest = fetch(&mut c, a, 10, 1);
    assert_eq!(rest.page.messages.len(), 1);
    c.check_invariants();
}

#[test]
fn a_deposit_pushes_one_mailbox_changed_to_each_of_the_owners_connections_only() {
    use crate::ids::MailboxSeq;
    let (mut c, leader, follower) = cluster();
    let (alice, bob, carol) = (identity(1), identity(2), identity(3));
    let a = logged_in(&mut c, leader, &alice);
    register(&mut c, a, &alice, "alice");
    let b = logged_in(&mut c, follower, &bob);
    register(&mut c, b, &bob, "bob");
    // Alice's second device, on another replica, and a third user who receives nothing.
    let a2 = logged_in(&mut c, follower, &alice);
    let k = logged_in(&mut c, leader, &carol);
    for conn in [a, a2, b, k] {
        c.take(conn);
    }
    // A burst: three deposits for Alice proposed back to back, so they apply in one round.
    for seq in 1..=3u8 {
        c.send_and_settle(
            b,
            ClientFrame::Request {
                id: RequestId(10 + u64::from(seq)),
                request: deposit_request(5, u64::from(seq), &alice, seq, vec![seq; 8]),
            }
            .encode(),
        );
    }
    let mut pushes = std::collections::BTreeMap::new();
    for _ in 0..20 {
        c.advance(Duration::from_millis(20));
        for conn in [a, a2, b, k] {
            for frame in c.take(conn) {
                if let ReplicaFrame::MailboxChanged { last_seq } = frame {
                    pushes.entry(conn).or_insert_with(Vec::new).push(last_seq);
                }
            }
        }
    }
    // Both of Alice's connections hear of it, Bob (the depositor) and Carol do not.
    for conn in [a, a2] {
        let seen = pushes
            .get(&conn)
            .expect("the owner's connection is pushed to");
        assert_eq!(seen.last(), Some(&MailboxSeq(3)), "{seen:?}");
        assert!(
            seen.len() <= 3 && seen.windows(2).all(|w| w[0] < w[1]),
            "at most one push per applied batch, seqs rising: {seen:?}"
        );
    }
    assert!(
        !pushes.contains_key(&b) && !pushes.contains_key(&k),
        "{pushes:?}"
    );
    // Coalesced: a batch of deposits applied by one input is one push per connection.
    let total: u64 = c.replicas.values().map(|r| r.stats().mailbox_pushes).sum();
    assert_eq!(total, pushes.values().map(|v| v.len() as u64).sum::<u64>());
    c.check_invariants();
}

#[test]
fn a_burst_of_deposits_applied_by_one_input_is_one_push() {
    use crate::ids::MailboxSeq;
    let (mut c, leader, follower) = cluster();
    let (alice, bob) = (identity(1), identity(2));
    // Alice on a follower: it learns the commit of all five from one message of the leader, so
    // one input applies them all.
    let a = logged_in(&mut c, follower, &alice);
    register(&mut c, a, &alice, "alice");
    let b = logged_in(&mut c, leader, &bob);
    c.take(a);
    // Five deposits sent in one go to the leader, before any follower acknowledged one.
    for seq in 1..=5u8 {
        c.send(
            b,
            ClientFrame::Request {
                id: RequestId(u64::from(seq)),
                request: deposit_request(9, u64::from(seq), &alice, seq, vec![seq; 4]),
            }
            .encode(),
        );
    }
    c.settle();
    for _ in 0..10 {
        c.advance(Duration::from_millis(20));
    }
    let pushes: Vec<MailboxSeq> = c
        .take(a)
        .into_iter()
        .filter_map(|f| match f {
            ReplicaFrame::MailboxChanged { last_seq } => Some(last_seq),
            _ => None,
        })
        .collect();
    assert_eq!(pushes.last(), Some(&MailboxSeq(5)), "{pushes:?}");
    assert_eq!(pushes.len(), 1, "coalesced: {pushes:?}");
}
