//! Tests of the directory state machine, and the harness they share: deterministic clients
//! (keys from a seed) and a directory whose invariants are checked after every entry.

use super::*;
use crate::directory::command::{
    decode_result, CommandBody, CommandResult, OneTimePrekey, Outcome, PresenceBatch,
    PresenceChange, SignedCommand, UsernameError, COMMAND_VALIDITY_MAX_MS,
    DIRECTORY_FORMAT_VERSION, PRESENCE_BATCH_MAX,
};
use crate::ids::{ClientId, Term};
use crate::session::{Entropy, IdentityKeyPair, OneTimePrekeyPair, SignedPrekeyPair};

/// Deterministic key material: BLAKE3's output stream over a seed.
struct Seeded(blake3::OutputReader);

impl Seeded {
    fn new(seed: u64) -> Seeded {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"paloma directory tests");
        hasher.update(&seed.to_le_bytes());
        Seeded(hasher.finalize_xof())
    }
}

impl Entropy for Seeded {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill(buf);
    }
}

/// A user's client: an identity, its command counter, fresh prekeys on demand.
struct Client {
    identity: IdentityKeyPair,
    entropy: Seeded,
    counter: u64,
    next_prekey: u32,
}

impl Client {
    fn new(seed: u64) -> Client {
        let mut entropy = Seeded::new(seed);
        let identity = IdentityKeyPair::generate(&mut entropy);
        Client {
            identity,
            entropy,
            counter: 0,
            next_prekey: 1,
        }
    }

    fn user(&self) -> UserId {
        self.identity.user_id()
    }

    fn sign(&mut self, expires_unix_ms: u64, body: CommandBody) -> SignedCommand {
        self.counter += 1;
        SignedCommand::sign(&self.identity, self.counter, expires_unix_ms, body)
    }

    fn prekey_id(&mut self) -> PrekeyId {
        self.next_prekey += 1;
        PrekeyId(self.next_prekey - 1)
    }

    fn signed_prekey(&mut self) -> SignedPrekey {
        let id = self.prekey_id();
        let pair = SignedPrekeyPair::generate(&self.identity, id, &mut self.entropy);
        SignedPrekey {
            id: pair.id(),
            key: pair.public_key(),
            signature: pair.signature(),
        }
    }

    fn one_time_prekeys(&mut self, n: usize) -> Vec<OneTimePrekey> {
        (0..n)
            .map(|_| {
                let id = self.prekey_id();
                let key = OneTimePrekeyPair::generate(id, &mut self.entropy).public_key();
                OneTimePrekey { id, key }
            })
            .collect()
    }

    fn register(&mut self, name: &str, prekeys: usize) -> CommandBody {
        CommandBody::Register {
            username: name.to_string(),
            identity_dh: self.identity.public().dh_key,
            signed_prekey: self.signed_prekey(),
            one_time_prekeys: self.one_time_prekeys(prekeys),
            addresses: vec!["192.0.2.1:4433".to_string()],
        }
    }
}

const T0: u64 = 1_700_000_000_000;
const VALID_MS: u64 = 60_000;

fn encode(cmd: &SignedCommand) -> Vec<u8> {
    DirectoryEntry::Signed(cmd.clone()).encode()
}

fn ctx(index: u64, unix_ms: u64) -> ApplyContext {
    ApplyContext {
        index: LogIndex(index),
        term: Term(1),
        unix_ms,
        client: ClientId(1),
    }
}

/// A directory fed entries at consecutive indexes, its invariants checked after every one.
struct Harness {
    dir: Directory,
    index: u64,
    now_unix_ms: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(Directory::new())
    }

    fn with(dir: Directory) -> Harness {
        Harness {
            dir,
            index: 0,
            now_unix_ms: T0,
        }
    }

    fn expires(&self) -> u64 {
        self.dir.clock_unix_ms().max(self.now_unix_ms) + VALID_MS
    }

    fn apply_bytes(&mut self, bytes: &[u8]) -> CommandResult {
        self.index += 1;
        let response = self.dir.apply(&ctx(self.index, self.now_unix_ms), bytes);
        self.dir.check_invariants();
        decode_result(&response).expect("responses decode")
    }

    fn run(&mut self, client: &mut Client, body: CommandBody) -> CommandResult {
        let cmd = client.sign(self.expires(), body);
        self.apply_bytes(&encode(&cmd))
    }

    fn register(&mut self, client: &mut Client, name: &str, prekeys: usize) -> UserId {
        let body = client.register(name, prekeys);
        self.register_body(client, body)
    }

    fn register_body(&mut self, client: &mut Client, body: CommandBody) -> UserId {
        match self.run(client, body) {
            Ok(Outcome::Registered {
                user,
                registered_unix_ms,
            }) => {
                assert_eq!(user, client.user());
                assert_eq!(registered_unix_ms, self.dir.clock_unix_ms());
                user
            }
            other => panic!("registering: {other:?}"),
        }
    }

    /// Applies an entry that must be refused with `expected`; proves it changed no user state
    /// and left one audit record saying why.
    fn refused(&mut self, bytes: &[u8], expected: CommandError) {
        let before = self.dir.user_state_digest();
        let audit_before = self.dir.audit().count();
        assert_eq!(self.apply_bytes(bytes), Err(expected.clone()));
        assert_eq!(
            self.dir.user_state_digest(),
            before,
            "{expected:?} changed user state"
        );
        assert_eq!(self.dir.audit().count(), audit_before + 1);
        let last = self.dir.audit().last().expect("an audit record");
        assert_eq!(
            (last.index, &last.outcome),
            (LogIndex(self.index), &Err(expected))
        );
    }

    /// Signs `body` for `client` and expects `expected`. The client then reuses the counter:
    /// its next command succeeding proves a refusal does not advance the counter.
    fn refuse(&mut self, client: &mut Client, body: CommandBody, expected: CommandError) {
        let cmd = client.sign(self.expires(), body);
        client.counter -= 1;
        self.refused(&encode(&cmd), expected);
    }
}

/// A distinct (unregistered) user id per number.
/// An encoded deposit of `envelope` for `to` under message id `[id; 16]`.
fn deposit(to: UserId, id: u8, envelope: &[u8]) -> Vec<u8> {
    DirectoryEntry::Deposit(crate::directory::command::Deposit {
        recipient: to,
        message_id: crate::ids::MessageId([id; 16]),
        envelope: envelope.to_vec(),
    })
    .encode()
}

fn numbered_user(n: usize) -> UserId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(n as u64).to_le_bytes());
    UserId(id)
}

fn name(raw: &str) -> Username {
    Username::parse(raw).expect("a valid name")
}

mod commands;
mod history;
mod mailbox;
mod snapshot;
