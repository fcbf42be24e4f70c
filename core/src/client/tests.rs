//! The client driven end to end: the test plays the replica, decoding what the client sends and
//! answering with hand-built frames. Invariants are checked after every step.

use super::*;
use crate::directory::{CommandError, Outcome, SignedPrekey, Visibility};
use crate::ids::{LogIndex, RequestId};
use crate::replica::protocol::{
    verify_login, Consistency, LookupKey, Reply, Request, RequestError,
};
use crate::session::PrekeyBundle;
use proptest::prelude::*;
use std::time::Duration;

const REPLICA: NodeId = NodeId(1);
const NONCE: [u8; 32] = [5; 32];
const START_UNIX_MS: u64 = 1_800_000_000_000;

fn identity(seed: u64) -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut DetRng::fork(seed, "test-identity"))
}

/// The client and everything it said, as seen by the runtime.
struct Harness {
    client: Client,
    now: Now,
    sent: Vec<ClientFrame>,
    events: Vec<ClientEvent>,
    reconnects: usize,
}

impl Harness {
    fn new(config: ClientConfig) -> Harness {
        let now = Now {
            instant: Instant::ZERO,
            unix_ms: START_UNIX_MS,
        };
        let client = Client::new(config, identity(1), now).unwrap();
        let mut h = Harness {
            client,
            now,
            sent: vec![],
            events: vec![],
            reconnects: 0,
        };
        h.drain();
        h
    }

    fn logged_in() -> Harness {
        let mut h = Harness::new(ClientConfig {
            seed: 7,
            ..ClientConfig::default()
        });
        h.login();
        h.events();
        h
    }

    /// Logged in and registered (the registration's request answered).
    fn registered() -> Harness {
        let mut h = Harness::logged_in();
        h.client.register(h.now, "alice", vec![]).unwrap();
        h.drain();
        let (id, _) = h.only_request();
        h.respond(
            id,
            applied(Outcome::Registered {
                user: h.client.user(),
                registered_unix_ms: 1,
            }),
        );
        h.events();
        h
    }

    fn drain(&mut self) {
        self.client.check_invariants();
        while let Some(out) = self.client.poll_output() {
            match out {
                ClientOutput::Send(bytes) => {
                    self.sent
                        .push(ClientFrame::decode(&bytes).expect("the client sends valid frames"));
                }
                ClientOutput::Reconnect => self.reconnects += 1,
                ClientOutput::Event(e) => self.events.push(e),
            }
        }
    }

    fn input(&mut self, input: ClientInput) {
        self.client.handle(self.now, input);
        self.drain();
    }

    fn frame(&mut self, frame: ReplicaFrame) {
        self.input(ClientInput::Frame(frame.encode()));
    }

    fn login(&mut self) {
        self.input(ClientInput::Connected { replica: REPLICA });
        self.frame(ReplicaFrame::Challenge {
            nonce: NONCE,
            replica: REPLICA,
        });
        let user = self.client.user();
        self.frame(ReplicaFrame::LoggedIn { user });
    }

    fn advance(&mut self, by: Duration) {
        self.now.instant = self.now.instant + by;
        self.now.unix_ms += u64::try_from(by.as_millis()).unwrap();
    }

    /// Sleeps until the next deadline and reports it.
    fn fire(&mut self) -> ClientTimer {
        let (at, why) = self.client.poll_timeout().expect("a deadline is set");
        self.advance(at.saturating_duration_since(self.now.instant));
        self.input(ClientInput::Timeout);
        why
    }

    /// The requests sent since the last call (other frames are dropped).
    fn requests(&mut self) -> Vec<(RequestId, Request)> {
        std::mem::take(&mut self.sent)
            .into_iter()
            .filter_map(|f| match f {
                ClientFrame::Request { id, request } => Some((id, request)),
                _ => None,
            })
            .collect()
    }

    fn only_request(&mut self) -> (RequestId, Request) {
        let mut requests = self.requests();
        assert_eq!(requests.len(), 1, "one request expected: {requests:?}");
        requests.pop().unwrap()
    }

    fn respond(&mut self, id: RequestId, result: Result<Reply, RequestError>) {
        self.frame(ReplicaFrame::Response { id, result });
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.events)
    }
}

fn applied(outcome: Outcome) -> Result<Reply, RequestError> {
    Ok(Reply::Command(Ok(outcome)))
}

fn refused(error: CommandError) -> Result<Reply, RequestError> {
    Ok(Reply::Command(Err(error)))
}

fn command(request: &Request) -> (u64, u64, &SignedCommand) {
    match request {
        Request::Command {
            session,
            seq,
            command,
        } => (*session, *seq, command),
        other => panic!("a command expected, got {other:?}"),
    }
}

fn signed_prekey_of(id: &IdentityKeyPair) -> SignedPrekey {
    keys::published(&SignedPrekeyPair::generate(
        id,
        PrekeyId(1),
        &mut DetRng::fork(9, "test-spk"),
    ))
}

fn view_of(id: &IdentityKeyPair, name: &str) -> UserView {
    UserView {
        user: id.user_id(),
        username: Username::parse(name).unwrap(),
        identity: *id.public(),
        signed_prekey: signed_prekey_of(id),
        addresses: vec![],
        registered_unix_ms: 1,
        counter: 3,
        one_time_prekeys_left: 0,
    }
}

fn lookup_reply(view: Option<UserView>) -> Result<Reply, RequestError> {
    Ok(Reply::Lookup(LookupReply {
        user: view,
        presence: None,
        index: LogIndex(4),
        possibly_stale: false,
    }))
}

#[test]
fn login_answers_the_challenge_with_a_verifying_signature() {
    let mut h = Harness::new(ClientConfig::default());
    assert_eq!(h.reconnects, 1, "a new client asks for a replica");
    assert_eq!(h.client.poll_timeout(), None);
    h.input(ClientInput::Connected { replica: REPLICA });
    assert_eq!(
        h.client.poll_timeout().map(|(_, why)| why),
        Some(ClientTimer::Login)
    );
    h.frame(ReplicaFrame::Challenge {
        nonce: NONCE,
        replica: REPLICA,
    });
    let Some(ClientFrame::Login { signer, signature }) = h.sent.pop() else {
        panic!("the challenge is answered with a login");
    };
    assert_eq!(
        verify_login(&signer, &signature, &NONCE, REPLICA),
        Some(h.client.user())
    );
    assert!(!h.client.is_logged_in());
    let user = h.client.user();
    h.frame(ReplicaFrame::LoggedIn { user });
    assert!(h.client.is_logged_in());
    assert_eq!(h.events(), vec![ClientEvent::LoggedIn { user }]);
}

#[test]
fn a_challenge_naming_another_replica_is_not_signed() {
    let mut h = Harness::new(ClientConfig::default());
    h.input(ClientInput::Connected { replica: REPLICA });
    h.frame(ReplicaFrame::Challenge {
        nonce: NONCE,
        replica: NodeId(2),
    });
    assert!(h.sent.is_empty(), "nothing signed");
    assert_eq!(h.reconnects, 2);
    assert_eq!(h.client.stats().unexpected_frames, 1);
    // A login for another user is refused the same way.
    h.input(ClientInput::Connected { replica: REPLICA });
    h.frame(ReplicaFrame::Challenge {
        nonce: NONCE,
        replica: REPLICA,
    });
    h.frame(ReplicaFrame::LoggedIn {
        user: UserId([9; 32]),
    });
    assert!(!h.client.is_logged_in());
    assert_eq!(h.reconnects, 3);
}

#[test]
fn requests_before_login_are_queued_then_sent() {
    let mut h = Harness::new(ClientConfig::default());
    let op = h
        .client
        .lookup(h.now, LookupKey::Name("Bob".into()), Consistency::Local)
        .unwrap();
    h.drain();
    assert!(h.sent.is_empty());
    h.login();
    let (id, request) = h.only_request();
    assert_eq!(
        request,
        Request::Lookup {
            key: LookupKey::Name("Bob".into()),
            consistency: Consistency::Local
        }
    );
    h.respond(id, lookup_reply(None));
    assert!(h.events().contains(&ClientEvent::LookedUp {
        op,
        reply: LookupReply {
            user: None,
            presence: None,
            index: LogIndex(4),
            possibly_stale: false
        }
    }));
}

#[test]
fn register_sends_a_verifying_command_and_keeps_the_private_keys() {
    let mut h = Harness::logged_in();
    assert_eq!(
        h.client.update_addresses(h.now, vec![]),
        Err(ClientError::NotRegistered)
    );
    assert!(matches!(
        h.client.register(h.now, "no way", vec![]),
        Err(ClientError::InvalidUsername(_))
    ));
    let op = h
        .client
        .register(h.now, "Alice", vec!["10.0.0.1:7000".into()])
        .unwrap();
    h.drain();
    assert_eq!(
        h.client.register(h.now, "alice", vec![]),
        Err(ClientError::AlreadyRegistered)
    );
    let (id, request) = h.only_request();
    let (_, seq, cmd) = command(&request);
    assert_eq!(seq, 1, "a session starts at 1");
    assert!(cmd.verify());
    assert_eq!(cmd.counter, 1);
    assert_eq!(
        cmd.expires_unix_ms,
        START_UNIX_MS + crate::directory::command::COMMAND_VALIDITY_MAX_MS / 2
    );
    let CommandBody::Register {
        username,
        identity_dh,
        signed_prekey,
        one_time_prekeys,
        addresses,
    } = &cmd.body
    else {
        panic!("a registration");
    };
    assert_eq!(username, "alice");
    assert_eq!(addresses, &vec!["10.0.0.1:7000".to_string()]);
    assert_eq!(one_time_prekeys.len(), REGISTER_ONE_TIME_PREKEYS);
    let own = *identity(1).public();
    assert_eq!(*identity_dh, own.dh_key);
    let bundle = PrekeyBundle {
        identity: own,
        signed_prekey_id: signed_prekey.id,
        signed_prekey: signed_prekey.key,
        signed_prekey_signature: signed_prekey.signature,
        one_time_prekey: None,
    };
    assert_eq!(bundle.verify(), Ok(()));
    for key in one_time_prekeys {
        assert_eq!(
            h.client.one_time_prekey(key.id).map(|k| k.public_key()),
            Some(key.key)
        );
    }
    assert!(
        h.client.signed_prekey().is_none(),
        "in use only once registered"
    );
    let user = h.client.user();
    h.respond(
        id,
        applied(Outcome::Registered {
            user,
            registered_unix_ms: 77,
        }),
    );
    assert_eq!(
        h.events(),
        vec![ClientEvent::Registered {
            op,
            user,
            registered_unix_ms: 77
        }]
    );
    assert!(h.client.is_registered());
    assert_eq!(
        h.client.signed_prekey().map(|k| k.public_key()),
        Some(signed_prekey.key)
    );
    assert_eq!(
        h.client.pinned(&Username::parse("alice").unwrap()),
        Some(&own)
    );
}

#[test]
fn a_refused_registration_drops_its_keys() {
    let mut h = Harness::logged_in();
    let op = h.client.register(h.now, "alice", vec![]).unwrap();
    h.drain();
    let (id, request) = h.only_request();
    let CommandBody::Register {
        one_time_prekeys, ..
    } = &command(&request).2.body
    else {
        panic!("a registration");
    };
    let first = one_time_prekeys[0].id;
    h.respond(id, refused(CommandError::UsernameTaken));
    assert_eq!(
        h.events(),
        vec![ClientEvent::Failed {
            op,
            error: OpError::Command(CommandError::UsernameTaken)
        }]
    );
    assert!(h.client.one_time_prekey(first).is_none());
    assert!(!h.client.is_registered());
    assert!(
        h.client.register(h.now, "alice2", vec![]).is_ok(),
        "free to try another name"
    );
}

#[test]
fn only_one_command_is_in_flight() {
    let mut h = Harness::registered();
    let first = h
        .client
        .update_addresses(h.now, vec!["a:1".into()])
        .unwrap();
    let second = h
        .client
        .set_visibility(h.now, Visibility::Nobody, vec![])
        .unwrap();
    let read = h
        .client
        .lookup(
            h.now,
            LookupKey::Id(UserId([3; 32])),
            Consistency::Linearizable,
        )
        .unwrap();
    h.drain();
    let requests = h.requests();
    assert_eq!(
        requests.len(),
        2,
        "the first command and the read: {requests:?}"
    );
    let (first_id, first_req) = &requests[0];
    let (_, seq, cmd) = command(first_req);
    assert_eq!((seq, cmd.counter), (2, 2));
    assert!(matches!(requests[1].1, Request::Lookup { .. }));
    h.respond(*first_id, applied(Outcome::Done));
    let (second_id, second_req) = h.only_request();
    let (_, seq, cmd) = command(&second_req);
    assert_eq!((seq, cmd.counter), (3, 3));
    assert!(matches!(cmd.body, CommandBody::SetVisibility { .. }));
    h.respond(second_id, applied(Outcome::Done));
    assert_eq!(
        h.events(),
        vec![
            ClientEvent::Done { op: first },
            ClientEvent::Done { op: second }
        ]
    );
    let _ = read;
}

#[test]
fn leader_changed_retry_reuses_session_seq_and_command() {
    let mut h = Harness::registered();
    h.client.claim_bundle(h.now, UserId([3; 32])).unwrap();
    h.drain();
    let (id, original) = h.only_request();
    h.respond(id, Err(RequestError::LeaderChanged));
    assert!(h.sent.is_empty(), "the retry waits for its backoff");
    let (at, why) = h.client.poll_timeout().unwrap();
    assert_eq!(why, ClientTimer::Retry);
    let wait = at.saturating_duration_since(h.now.instant);
    assert!(
        wait >= Duration::from_millis(100) && wait <= Duration::from_millis(200),
        "{wait:?}"
    );
    assert_eq!(h.fire(), ClientTimer::Retry);
    let (retry_id, retried) = h.only_request();
    assert_ne!(retry_id, id, "a new request id");
    assert_eq!(retried, original, "the identical (session, seq, command)");
    assert_eq!(h.client.stats().retries, 1);
    // The late answer to the first attempt is a stranger now.
    h.respond(id, applied(Outcome::Done));
    assert_eq!(h.client.stats().unknown_responses, 1);
}

#[test]
fn replayed_resigns_with_last_plus_one() {
    let mut h = Harness::registered();
    let op = h.client.update_addresses(h.now, vec![]).unwrap();
    h.drain();
    let (id, request) = h.only_request();
    let (session, seq, cmd) = command(&request);
    h.respond(
        id,
        refused(CommandError::Replayed {
            counter: cmd.counter,
            last: 41,
        }),
    );
    let (id, request) = h.only_request();
    let (new_session, new_seq, new_cmd) = command(&request);
    assert_eq!(new_cmd.counter, 42);
    assert!(new_cmd.verify());
    assert_eq!(new_cmd.body, cmd.body);
    assert_eq!(
        (new_session, new_seq),
        (session, seq + 1),
        "a fresh seq in the same session"
    );
    assert_eq!(h.client.stats().resigned, 1);
    h.respond(id, applied(Outcome::Done));
    assert_eq!(h.events(), vec![ClientEvent::Done { op }]);
    assert_eq!(h.client.counter(), 42);
}

#[test]
fn replayed_after_an_unknown_outcome_fails_instead_of_resigning() {
    let mut h = Harness::registered();
    let op = h.client.update_addresses(h.now, vec![]).unwrap();
    h.drain();
    let (id, request) = h.only_request();
    let counter = command(&request).2.counter;
    // The first attempt may have applied; its session is then forgotten by the cluster.
    h.respond(id, Err(RequestError::Timeout));
    h.fire();
    let (id, _) = h.only_request();
    h.respond(id, Err(RequestError::SessionExpired));
    let (id, request) = h.only_request();
    let (_, seq, cmd) = command(&request);
    assert_eq!(
        (seq, cmd.counter),
        (1, counter),
        "same command, new session at seq 1"
    );
    h.respond(
        id,
        refused(CommandError::Replayed {
            counter,
            last: counter,
        }),
    );
    assert!(
        h.sent.is_empty(),
        "not signed again: the first attempt may be what applied"
    );
    let error = OpError::Command(CommandError::Replayed {
        counter,
        last: counter,
    });
    assert_eq!(h.events(), vec![ClientEvent::Failed { op, error }]);
}

#[test]
fn retries_stop_at_retries_max_with_failed() {
    let mut h = Harness::new(ClientConfig {
        retries_max: 3,
        ..ClientConfig::default()
    });
    h.login();
    h.events();
    let op = h
        .client
        .lookup(
            h.now,
            LookupKey::Id(UserId([1; 32])),
            Consistency::Linearizable,
        )
        .unwrap();
    h.drain();
    for attempt in 0..=3 {
        let (id, _) = h.only_request();
        h.respond(id, Err(RequestError::NoLeader));
        if attempt < 3 {
            assert_eq!(h.fire(), ClientTimer::Retry);
        }
    }
    assert_eq!(
        h.events(),
        vec![ClientEvent::Failed {
            op,
            error: OpError::Request(RequestError::NoLeader)
        }]
    );
    assert_eq!(h.client.stats().retries, 3);
    assert_eq!(
        h.client.poll_timeout().map(|(_, why)| why),
        Some(ClientTimer::Heartbeat)
    );
}

#[test]
fn disconnect_resends_the_same_command_after_the_next_login() {
    let mut h = Harness::registered();
    h.client.deregister(h.now).unwrap();
    let read = h
        .client
        .lookup(h.now, LookupKey::Name("bob".into()), Consistency::Local)
        .unwrap();
    h.drain();
    let before = h.requests();
    assert_eq!(before.len(), 2);
    h.input(ClientInput::Disconnected);
    assert_eq!(h.events(), vec![ClientEvent::Disconnected]);
    assert_eq!(h.reconnects, 2);
    h.input(ClientInput::Disconnected);
    assert_eq!(h.reconnects, 2, "one reconnect request stands");
    h.login();
    let after = h.requests();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].1, before[0].1, "the identical command");
    assert_eq!(after[1].1, before[1].1, "the read again");
    h.respond(after[0].0, applied(Outcome::Done));
    assert!(!h.client.is_registered());
    assert!(
        h.client.signed_prekey().is_none(),
        "keys forgotten with the record"
    );
    let _ = read;
}

#[test]
fn an_unanswered_request_moves_to_another_replica() {
    let mut h = Harness::logged_in();
    h.client
        .lookup(h.now, LookupKey::Id(UserId([1; 32])), Consistency::Local)
        .unwrap();
    h.drain();
    h.requests();
    // Heartbeat and request deadline coincide at 10 s; the request wins.
    assert_eq!(h.fire(), ClientTimer::Heartbeat);
    assert_eq!(h.client.stats().timeouts, 1);
    assert_eq!(h.reconnects, 2);
    assert!(!h.client.is_logged_in());
    h.login();
    assert_eq!(h.requests().len(), 1, "resent on the new link");
}

#[test]
fn session_expired_moves_the_command_to_a_new_session() {
    let mut h = Harness::registered();
    h.client.publish_one_time_prekeys(h.now, 5).unwrap();
    h.drain();
    let (id, request) = h.only_request();
    let (session, _, cmd) = command(&request);
    let cmd = cmd.clone();
    h.respond(id, Err(RequestError::SessionExpired));
    let (_, request) = h.only_request();
    let (new_session, seq, same) = command(&request);
    assert_ne!(new_session, session);
    assert_eq!(seq, 1);
    assert_eq!(same, &cmd, "not signed again");
}

#[test]
fn a_command_near_expiry_is_resigned_only_if_no_attempt_can_have_run() {
    for (answer, resigned) in [
        (RequestError::Busy, true),
        (RequestError::LeaderChanged, false),
    ] {
        let mut h = Harness::registered();
        h.client.update_addresses(h.now, vec![]).unwrap();
        h.drain();
        let (id, request) = h.only_request();
        let (session, seq, cmd) = command(&request);
        let cmd = cmd.clone();
        h.respond(id, Err(answer));
        // The link is down for longer than the command is valid.
        h.input(ClientInput::Disconnected);
        h.advance(Duration::from_millis(COMMAND_VALIDITY_MAX_MS));
        h.login();
        let (_, request) = h.only_request();
        let (new_session, new_seq, new_cmd) = command(&request);
        assert_eq!(
            (new_session, new_seq),
            (session, seq),
            "the same de-duplication slot"
        );
        if resigned {
            assert_eq!(new_cmd.counter, cmd.counter + 1);
            assert!(new_cmd.expires_unix_ms > h.now.unix_ms && new_cmd.verify());
        } else {
            assert_eq!(
                new_cmd, &cmd,
                "it may have applied: only de-duplication may answer"
            );
        }
    }
}

#[test]
fn key_change_raises_key_changed_and_keeps_the_old_pin() {
    let mut h = Harness::logged_in();
    let bob = Username::parse("bob").unwrap();
    let (old, new) = (identity(20), identity(21));
    h.client
        .lookup(
            h.now,
            LookupKey::Name("bob".into()),
            Consistency::Linearizable,
        )
        .unwrap();
    h.drain();
    let (id, _) = h.only_request();
    h.respond(id, lookup_reply(Some(view_of(&old, "bob"))));
    assert_eq!(h.client.pinned(&bob), Some(old.public()));
    assert_eq!(h.client.cached(&bob).map(|v| v.user), Some(old.user_id()));
    assert_eq!(
        h.client.safety_number(&bob),
        Some(SafetyNumber::of(identity(1).public(), old.public()))
    );
    h.events();
    let op = h
        .client
        .lookup(
            h.now,
            LookupKey::Name("bob".into()),
            Consistency::Linearizable,
        )
        .unwrap();
    h.drain();
    let (id, _) = h.only_request();
    h.respond(id, lookup_reply(Some(view_of(&new, "bob"))));
    let events = h.events();
    assert_eq!(
        events[0],
        ClientEvent::KeyChanged {
            username: bob.clone(),
            old: *old.public(),
            new: *new.public(),
            safety_number: SafetyNumber::of(identity(1).public(), new.public()),
        }
    );
    assert!(matches!(events[1], ClientEvent::LookedUp { op: o, .. } if o == op));
    assert_eq!(h.client.pinned(&bob), Some(old.public()), "the pin stays");
    // A claim of the new key's bundle is not used either.
    let mut h2 = h;
    h2.client.registration = Registration::Registered;
    let claim = h2.client.claim_bundle(h2.now, new.user_id()).unwrap();
    h2.drain();
    let (id, _) = h2.only_request();
    let bundle = Bundle {
        identity: *new.public(),
        signed_prekey: signed_prekey_of(&new),
        one_time_prekey: None,
    };
    h2.respond(
        id,
        applied(Outcome::Bundle {
            bundle,
            pool_empty: true,
        }),
    );
    assert!(h2.events().contains(&ClientEvent::Failed {
        op: claim,
        error: OpError::KeyNotTrusted
    }));
    assert_eq!(h2.client.accept_key_change(&bob), Ok(*new.public()));
    assert_eq!(h2.client.pinned(&bob), Some(new.public()));
    assert_eq!(
        h2.client.accept_key_change(&bob),
        Err(ClientError::NoKeyChange)
    );
}

#[test]
fn claimed_bundles_are_verified() {
    let mut h = Harness::registered();
    let carol = identity(30);
    let good = Bundle {
        identity: *carol.public(),
        signed_prekey: signed_prekey_of(&carol),
        one_time_prekey: None,
    };
    let mut forged = good.clone();
    forged.signed_prekey.key[0] ^= 1;
    let cases = [
        (good.clone(), None),
        (
            forged,
            Some(OpError::BadBundle(
                crate::session::InitiateError::BadSignedPrekeySignature,
            )),
        ),
    ];
    for (bundle, error) in cases {
        let op = h.client.claim_bundle(h.now, carol.user_id()).unwrap();
        h.drain();
        let (id, _) = h.only_request();
        h.respond(
            id,
            applied(Outcome::Bundle {
                bundle: bundle.clone(),
                pool_empty: true,
            }),
        );
        let want = match error {
            None => ClientEvent::BundleClaimed {
                op,
                bundle,
                pool_empty: true,
            },
            Some(error) => ClientEvent::Failed { op, error },
        };
        assert_eq!(h.events(), vec![want]);
    }
    // A bundle for someone else than the target.
    let op = h.client.claim_bundle(h.now, UserId([4; 32])).unwrap();
    h.drain();
    let (id, _) = h.only_request();
    h.respond(
        id,
        applied(Outcome::Bundle {
            bundle: good,
            pool_empty: false,
        }),
    );
    assert_eq!(
        h.events(),
        vec![ClientEvent::Failed {
            op,
            error: OpError::BundleForWrongUser
        }]
    );
}

#[test]
fn own_lookup_restores_registration_and_counter() {
    let mut h = Harness::logged_in();
    let mut own = view_of(&identity(1), "alice");
    own.counter = 57;
    h.client
        .lookup(
            h.now,
            LookupKey::Id(h.client.user()),
            Consistency::Linearizable,
        )
        .unwrap();
    h.drain();
    let (id, _) = h.only_request();
    h.respond(id, lookup_reply(Some(own)));
    assert!(h.client.is_registered());
    assert_eq!(h.client.counter(), 57);
    h.client.update_addresses(h.now, vec![]).unwrap();
    h.drain();
    let (_, request) = h.only_request();
    assert_eq!(command(&request).2.counter, 58);
}

#[test]
fn heartbeats_every_interval() {
    let mut h = Harness::new(ClientConfig::default());
    h.login();
    h.sent.clear();
    for n in 1..=3u64 {
        assert_eq!(
            h.client.poll_timeout(),
            Some((Instant::from_millis(10_000 * n), ClientTimer::Heartbeat))
        );
        assert_eq!(h.fire(), ClientTimer::Heartbeat);
        assert_eq!(h.sent, vec![ClientFrame::Heartbeat]);
        h.sent.clear();
    }
    h.input(ClientInput::Disconnected);
    assert_eq!(h.client.poll_timeout(), None, "no heartbeat without a link");
}

#[test]
fn garbage_frames_are_counted_not_fatal() {
    let mut h = Harness::logged_in();
    h.sent.clear();
    let mut bad_version = ReplicaFrame::LoginFailed.encode();
    bad_version[0] = 99;
    let frames = [
        vec![],
        vec![1],
        vec![1, 200, 200, 200],
        bad_version,
        vec![1; 20_000],
    ];
    for bytes in &frames {
        h.input(ClientInput::Frame(bytes.clone()));
    }
    assert_eq!(h.client.stats().malformed_frames, frames.len() as u64);
    assert!(h.sent.is_empty() && h.events.is_empty());
    // Valid frames at the wrong time are counted too.
    h.frame(ReplicaFrame::Challenge {
        nonce: NONCE,
        replica: REPLICA,
    });
    h.frame(ReplicaFrame::Malformed);
    assert_eq!(h.client.stats().unexpected_frames, 1);
    assert_eq!(h.client.stats().refused_frames, 1);
    assert!(h.client.is_logged_in());
}

#[test]
fn unknown_and_mismatched_responses_are_counted() {
    let mut h = Harness::logged_in();
    h.respond(RequestId(999), lookup_reply(None));
    assert_eq!(h.client.stats().unknown_responses, 1);
    h.client
        .lookup(h.now, LookupKey::Id(UserId([1; 32])), Consistency::Local)
        .unwrap();
    h.drain();
    let (id, _) = h.only_request();
    h.respond(id, Ok(Reply::Subscribed));
    assert_eq!(h.client.stats().mismatched_replies, 1);
    assert!(h.events().is_empty(), "still waiting for a fitting answer");
    h.respond(id, lookup_reply(None));
    assert_eq!(h.events().len(), 1);
}

#[test]
fn presence_pushes_and_subscription_renewal() {
    let mut h = Harness::logged_in();
    let op = h.client.subscribe(h.now, vec![UserId([2; 32])]).unwrap();
    h.drain();
    let (id, _) = h.only_request();
    h.respond(id, Ok(Reply::Subscribed));
    let presence = Presence::Online { since_unix_ms: 5 };
    h.frame(ReplicaFrame::PresencePush {
        user: UserId([2; 32]),
        presence,
    });
    assert_eq!(
        h.events(),
        vec![
            ClientEvent::Done { op },
            ClientEvent::PresenceChanged {
                user: UserId([2; 32]),
                presence
            }
        ]
    );
    h.input(ClientInput::Disconnected);
    h.login();
    let (id, request) = h.only_request();
    assert_eq!(request, Request::Subscribe(vec![UserId([2; 32])]));
    h.events();
    h.respond(id, Ok(Reply::Subscribed));
    assert!(h.events().is_empty(), "a renewal ends silently");
}

#[test]
fn limits_are_typed_errors() {
    let mut h = Harness::new(ClientConfig {
        queue_max: 2,
        ..ClientConfig::default()
    });
    let key = || LookupKey::Id(UserId([1; 32]));
    h.client.lookup(h.now, key(), Consistency::Local).unwrap();
    h.client.lookup(h.now, key(), Consistency::Local).unwrap();
    assert_eq!(
        h.client.lookup(h.now, key(), Consistency::Local),
        Err(ClientError::QueueFull { max: 2 })
    );
    assert!(matches!(
        h.client.subscribe(h.now, vec![UserId([0; 32]); 1000]),
        Err(ClientError::TooLarge { .. })
    ));
    let mut h = Harness::registered();
    assert_eq!(
        h.client.publish_one_time_prekeys(h.now, 0),
        Err(ClientError::PrekeyCount {
            requested: 0,
            max: 100
        })
    );
    h.client.publish_one_time_prekeys(h.now, 100).unwrap();
    assert_eq!(
        h.client.publish_one_time_prekeys(h.now, 1),
        Err(ClientError::TooManyPrekeysHeld {
            max: ONE_TIME_PREKEYS_HELD_MAX
        })
    );
    assert_eq!(
        h.client.update_addresses(h.now, vec!["x".into(); 5]),
        Err(ClientError::BadAddresses)
    );
    assert_eq!(
        h.client
            .set_visibility(h.now, Visibility::Contacts, vec![UserId([0; 32]); 257]),
        Err(ClientError::TooManyContacts)
    );
}

fn deposit_slot(request: &Request) -> (u64, u64) {
    match request {
        Request::Deposit { session, seq, .. } => (*session, *seq),
        other => panic!("a deposit expected, got {other:?}"),
    }
}

#[test]
fn a_deposit_waits_behind_a_command_and_retries_in_its_slot() {
    let mut h = Harness::registered();
    let bob = identity(2).user_id();
    let ack = h.client.ack_mailbox(h.now, MailboxSeq(0)).unwrap();
    let message_id = crate::ids::MessageId([7; 16]);
    let op = h
        .client
        .deposit(h.now, bob, message_id, vec![1, 2, 3])
        .unwrap();
    h.drain();
    // Writes go one at a time: the deposit shares the de-duplication session.
    let (ack_id, ack_request) = h.only_request();
    let (session, ack_seq, _) = command(&ack_request);
    h.respond(ack_id, applied(Outcome::Acked { removed: 0 }));
    assert_eq!(
        h.events(),
        vec![ClientEvent::MailboxAcked {
            op: ack,
            upto: MailboxSeq(0),
            removed: 0
        }]
    );
    let (id, request) = h.only_request();
    assert_eq!(deposit_slot(&request), (session, ack_seq + 1));
    let Request::Deposit {
        to,
        message_id: sent_id,
        envelope,
        ..
    } = &request
    else {
        unreachable!()
    };
    assert_eq!(
        (*to, *sent_id, envelope.as_slice()),
        (bob, message_id, &[1, 2, 3][..])
    );
    // An unknown outcome: the retry resends the identical request.
    h.respond(id, Err(RequestError::LeaderChanged));
    h.fire();
    let (id, retry) = h.only_request();
    assert_eq!(retry, request, "same (session, seq, deposit)");
    h.respond(
        id,
        applied(Outcome::Deposited {
            seq: MailboxSeq(4),
            expires_unix_ms: 99,
        }),
    );
    assert_eq!(
        h.events(),
        vec![ClientEvent::Deposited {
            op,
            seq: MailboxSeq(4),
            expires_unix_ms: 99
        }]
    );
}

#[test]
fn a_full_mailbox_fails_the_deposit_with_the_typed_error() {
    let mut h = Harness::logged_in();
    let op = h
        .client
        .deposit(
            h.now,
            identity(2).user_id(),
            crate::ids::MessageId([1; 16]),
            vec![0; 10],
        )
        .unwrap();
    h.drain();
    let (id, _) = h.only_request();
    let full = CommandError::MailboxFull {
        messages: 1000,
        bytes: 5,
    };
    h.respond(id, refused(full.clone()));
    assert_eq!(
        h.events(),
        vec![ClientEvent::Failed {
            op,
            error: OpError::Command(full)
        }]
    );
    assert!(h.requests().is_empty(), "a refusal is not retried");
    let too_big = vec![0; crate::directory::mailbox::ENVELOPE_BYTES_MAX + 1];
    assert_eq!(
        h.client.deposit(
            h.now,
            identity(2).user_id(),
            crate::ids::MessageId([2; 16]),
            too_big
        ),
        Err(ClientError::EnvelopeTooLarge {
            len: crate::directory::mailbox::ENVELOPE_BYTES_MAX + 1,
            max: crate::directory::mailbox::ENVELOPE_BYTES_MAX
        })
    );
}

#[test]
fn fetch_is_a_read_and_its_reply_is_an_event() {
    let mut h = Harness::registered();
    let fetch = h.client.fetch_mailbox(h.now, MailboxSeq(2), 5).unwrap();
    h.drain();
    let (id, request) = h.only_request();
    assert_eq!(
        request,
        Request::FetchMailbox {
            after: MailboxSeq(2),
            max: 5
        }
    );
    // A reply of the wrong kind leaves it in flight.
    h.respond(id, applied(Outcome::Done));
    assert_eq!(h.client.stats().mismatched_replies, 1);
    let reply = MailboxReply {
        page: crate::directory::MailboxPage::default(),
        index: LogIndex(8),
    };
    h.respond(id, Ok(Reply::Mailbox(reply.clone())));
    assert_eq!(
        h.events(),
        vec![ClientEvent::MailboxFetched { op: fetch, reply }]
    );
}

#[test]
fn same_seed_same_outputs() {
    let run = || {
        let mut h = Harness::registered();
        h.client.rotate_signed_prekey(h.now).unwrap();
        h.drain();
        let (id, _) = h.only_request();
        h.respond(id, Err(RequestError::Busy));
        h.fire();
        h.sent.clone()
    };
    assert_eq!(run(), run());
}

/// One step of the random driver.
#[derive(Clone, Debug)]
enum Step {
    Bytes(Vec<u8>),
    Connect,
    Disconnect,
    Wait(u64),
    /// Answer the `n`-th request seen so far with answer number `answer`.
    Answer {
        n: usize,
        answer: u8,
    },
    Push,
    Call(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Step::Bytes),
        2 => Just(Step::Connect),
        1 => Just(Step::Disconnect),
        2 => prop_oneof![0u64..3_000, 0u64..15_000].prop_map(Step::Wait),
        8 => (0usize..32, 0u8..14).prop_map(|(n, answer)| Step::Answer { n, answer }),
        1 => Just(Step::Push),
        5 => any::<u8>().prop_map(Step::Call),
    ]
}

fn answer(h: &Harness, n: u8, request: &Request) -> Result<Reply, RequestError> {
    let user = identity(40);
    match n {
        0 => Err(RequestError::LeaderChanged),
        1 => Err(RequestError::NoLeader),
        2 => Err(RequestError::SessionExpired),
        3 => Err(RequestError::Stale),
        4 => refused(CommandError::Replayed {
            counter: 1,
            last: 9,
        }),
        5 => refused(CommandError::Expired {
            expires_unix_ms: 0,
            now_unix_ms: 1,
        }),
        6 => refused(CommandError::NotRegistered),
        // Bob under two keys: the second seen raises `KeyChanged`.
        7 | 12 => lookup_reply(Some(view_of(&identity(33 + u64::from(n)), "bob"))),
        8 => Ok(Reply::Subscribed),
        _ => match request {
            Request::Command { command, .. } => match command.body {
                CommandBody::Register { .. } => applied(Outcome::Registered {
                    user: h.client.user(),
                    registered_unix_ms: 1,
                }),
                CommandBody::ClaimBundle { .. } => applied(Outcome::Bundle {
                    bundle: Bundle {
                        identity: *user.public(),
                        signed_prekey: signed_prekey_of(&user),
                        one_time_prekey: None,
                    },
                    pool_empty: n == 10,
                }),
                CommandBody::AckMailbox { upto } => applied(Outcome::Acked {
                    removed: u32::try_from(upto.0 % 7).unwrap(),
                }),
                _ => applied(Outcome::Done),
            },
            Request::Lookup { .. } => lookup_reply(Some(view_of(&identity(1), "alice"))),
            Request::Subscribe(_) => Ok(Reply::Subscribed),
            Request::Deposit { .. } if n == 13 => refused(CommandError::MailboxFull {
                messages: 3,
                bytes: 10,
            }),
            Request::Deposit { seq, .. } => applied(Outcome::Deposited {
                seq: MailboxSeq(*seq),
                expires_unix_ms: 9,
            }),
            Request::FetchMailbox { .. } => Ok(Reply::Mailbox(MailboxReply {
                page: crate::directory::MailboxPage::default(),
                index: LogIndex(3),
            })),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn random_frames_and_calls_never_panic_and_keep_invariants(steps in proptest::collection::vec(step(), 1..200)) {
        let mut h = Harness::new(ClientConfig { seed: 3, retries_max: 2, queue_max: 8, cache_entries_max: 2, ..ClientConfig::default() });
        let mut seen: Vec<(RequestId, Request)> = Vec::new();
        for step in steps {
            match step {
                Step::Bytes(bytes) => h.input(ClientInput::Frame(bytes)),
                // Mostly when the link is down; now and then over a live one (a replaced link).
                Step::Connect => {
                    if !h.client.is_logged_in() || h.now.unix_ms % 5 == 0 {
                        h.login();
                    }
                }
                Step::Disconnect => h.input(ClientInput::Disconnected),
                Step::Wait(ms) => {
                    h.advance(Duration::from_millis(ms));
                    h.input(ClientInput::Timeout);
                }
                Step::Answer { n, answer: a } => {
                    // Mostly the latest requests; older ones are stale or unknown by now.
                    let back = if n < 24 { n % 3 } else { n };
                    if let Some((id, request)) = seen.iter().rev().nth(back % seen.len().max(1)).cloned() {
                        let result = answer(&h, a, &request);
                        h.respond(id, result);
                    }
                }
                Step::Push => h.frame(ReplicaFrame::PresencePush { user: UserId([1; 32]), presence: Presence::Offline { last_seen_unix_ms: None } }),
                Step::Call(c) => {
                    let now = h.now;
                    let c_ = &mut h.client;
                    let _ = match c % 13 {
                        0 => c_.register(now, "alice", vec![]),
                        1 => c_.lookup(now, LookupKey::Name("bob".into()), Consistency::Local),
                        2 => c_.claim_bundle(now, identity(40).user_id()),
                        3 => c_.publish_one_time_prekeys(now, usize::from(c % 7) * 20),
                        4 => c_.rotate_signed_prekey(now),
                        5 => c_.update_addresses(now, vec![]),
                        6 => c_.set_visibility(now, Visibility::Everyone, vec![]),
                        7 => c_.deregister(now),
                        8 => c_.subscribe(now, vec![UserId([1; 32])]),
                        9 => c_.deposit(now, UserId([2; 32]), crate::ids::MessageId([c; 16]), vec![c; usize::from(c)]),
                        10 => c_.fetch_mailbox(now, MailboxSeq(u64::from(c)), 8),
                        11 => c_.ack_mailbox(now, MailboxSeq(u64::from(c))),
                        _ => c_.accept_key_change(&Username::parse("bob").unwrap()).map(|_| OpId(0)),
                    };
                    h.drain();
                }
            }
            seen.extend(h.requests());
            if seen.len() > 64 {
                seen.drain(..32);
            }
        }
    }
}
