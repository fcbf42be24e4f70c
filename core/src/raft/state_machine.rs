//! The replicated state machine interface, and the de-duplication table that wraps it.

use crate::ids::{ClientId, LogIndex, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What `apply` knows about the entry it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyContext {
    /// The entry's index.
    pub index: LogIndex,
    /// The entry's term.
    pub term: Term,
    /// The leader's wall clock stamped into the entry: the only wall time replicated state sees.
    pub unix_ms: u64,
    /// The client that proposed it.
    pub client: ClientId,
}

/// An application state machine driven by Raft. It must be deterministic: the same commands in the
/// same order give the same state and responses on every replica (Raft §5.4.3).
pub trait StateMachine {
    /// Applies one committed command and returns the response for the proposer.
    fn apply(&mut self, ctx: &ApplyContext, command: &[u8]) -> Vec<u8>;
    /// Encodes the whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a decoded snapshot; on error the state is unchanged.
    fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError>;
}

/// A snapshot could not be decoded: the envelope written by [`DedupTable::snapshot`], or the
/// application's part (a `StateMachine::restore` picks the variant that fits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotDecodeError {
    /// The bytes do not decode.
    #[error("snapshot does not decode: {0}")]
    Codec(#[from] postcard::Error),
    /// The snapshot is empty where something was expected.
    #[error("snapshot is empty")]
    Empty,
    /// An unknown version byte (ARCHITECTURE.md, "Versioned formats").
    #[error("unknown snapshot version {0}")]
    Version(u8),
    /// A fixed-size snapshot of the wrong size.
    #[error("snapshot of {len} bytes, expected {expected}")]
    Length {
        /// The size found.
        len: usize,
        /// The size expected.
        expected: usize,
    },
    /// More client sessions than the table may hold.
    #[error("{sessions} client sessions, more than the table's {max}")]
    TooManySessions {
        /// Sessions in the snapshot.
        sessions: usize,
        /// The table's bound.
        max: usize,
    },
    /// One client has two sessions.
    #[error("client {0:?} has two sessions")]
    DuplicateClient(ClientId),
    /// Two sessions claim the same last applied index.
    #[error("two client sessions last applied at {0:?}")]
    DuplicateIndex(LogIndex),
    /// The application's part decodes but describes a state that cannot exist (two users
    /// holding one name, a record filed under another user's id, more entries than a bound).
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// Version tag of the snapshot envelope (ARCHITECTURE.md, "Versioned formats").
const SNAPSHOT_VERSION: u8 = 1;

/// The outcome of applying one command through the de-duplication table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The command ran; here is its response.
    Fresh(Vec<u8>),
    /// A retry of the client's latest command: it did not run again; here is the cached response.
    Duplicate(Vec<u8>),
    /// A retry of an older command whose response is gone: it did not run.
    Stale,
    /// The client has no session: it was evicted, or the client never opened one (a session
    /// opens with sequence number 1). The command did not run: applying it could apply a retry
    /// twice (thesis §6.3, "the server responds with SESSION_EXPIRED").
    SessionExpired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    seq: u64,
    response: Vec<u8>,
    last_index: LogIndex,
}

/// The client session table of thesis §6.3: a retried `(client, seq)` applies once. It is part of
/// the replicated state, so it lives in every snapshot. Bounded by `clients_max`: the client idle the
/// longest (lowest last applied index, identical on every replica) is evicted first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DedupTable {
    clients: BTreeMap<ClientId, ClientRecord>,
    by_index: BTreeMap<LogIndex, ClientId>,
    clients_max: usize,
}

#[derive(Serialize, Deserialize)]
struct SnapshotEnvelope {
    version: u8,
    clients: Vec<(ClientId, u64, Vec<u8>, LogIndex)>,
    app: Vec<u8>,
}

impl DedupTable {
    /// An empty table holding at most `clients_max` sessions.
    #[must_use]
    pub fn new(clients_max: usize) -> DedupTable {
        assert!(clients_max > 0);
        DedupTable {
            clients: BTreeMap::new(),
            by_index: BTreeMap::new(),
            clients_max,
        }
    }

    /// Changes the bound (the replicated configuration in effect decides it). Sessions over a
    /// lower bound are evicted at the next fresh command, deterministically.
    pub fn set_clients_max(&mut self, clients_max: usize) {
        assert!(clients_max > 0);
        self.clients_max = clients_max;
    }

    /// The number of client sessions held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Applies `data` for `(ctx.client, seq)` through `sm` unless it is a retry.
    pub fn apply<S: StateMachine>(
        &mut self,
        sm: &mut S,
        ctx: &ApplyContext,
        seq: u64,
        data: &[u8],
    ) -> Applied {
        // One lookup, and the client's record is updated in place (its response buffer reused):
        // this runs for every applied command.
        let response = match self.clients.get_mut(&ctx.client) {
            Some(rec) if seq == rec.seq => return Applied::Duplicate(rec.response.clone()),
            Some(rec) if seq < rec.seq => return Applied::Stale,
            Some(rec) => {
                let response = sm.apply(ctx, data);
                self.by_index.remove(&rec.last_index);
                rec.seq = seq;
                rec.response.clone_from(&response);
                rec.last_index = ctx.index;
                response
            }
            // Sessions open with sequence number 1. A higher number from an unknown client is
            // a retry (or a continuation) of an evicted session: it must not run again. A retry
            // of the *first* command of a session evicted meanwhile cannot be told apart from a
            // new session; that needs `clients_max` other clients to apply commands between
            // the attempts, and is why the table should be sized well above the client count.
            None if seq != 1 => return Applied::SessionExpired,
            None => {
                let response = sm.apply(ctx, data);
                self.clients.insert(
                    ctx.client,
                    ClientRecord {
                        seq,
                        response: response.clone(),
                        last_index: ctx.index,
                    },
                );
                response
            }
        };
        self.by_index.insert(ctx.index, ctx.client);
        while self.clients.len() > self.clients_max {
            let (_, victim) = self.by_index.pop_first().expect("by_index mirrors clients");
            self.clients.remove(&victim);
        }
        assert_eq!(
            self.clients.len(),
            self.by_index.len(),
            "by_index mirrors clients"
        );
        Applied::Fresh(response)
    }

    /// Encodes the table together with the application's snapshot.
    #[must_use]
    pub fn snapshot<S: StateMachine>(&self, sm: &S) -> Vec<u8> {
        let env = SnapshotEnvelope {
            version: SNAPSHOT_VERSION,
            clients: self
                .clients
                .iter()
                .map(|(c, r)| (*c, r.seq, r.response.clone(), r.last_index))
                .collect(),
            app: sm.snapshot(),
        };
        postcard::to_stdvec(&env).expect("encoding to a Vec cannot fail")
    }

    /// Restores the table and the application from `data`; on error neither changes.
    pub fn restore<S: StateMachine>(
        &mut self,
        sm: &mut S,
        data: &[u8],
    ) -> Result<(), SnapshotDecodeError> {
        let env: SnapshotEnvelope = postcard::from_bytes(data)?;
        if env.version != SNAPSHOT_VERSION {
            return Err(SnapshotDecodeError::Version(env.version));
        }
        if env.clients.len() > self.clients_max {
            return Err(SnapshotDecodeError::TooManySessions {
                sessions: env.clients.len(),
                max: self.clients_max,
            });
        }
        let mut clients = BTreeMap::new();
        let mut by_index = BTreeMap::new();
        for (c, seq, response, last_index) in env.clients {
            if by_index.insert(last_index, c).is_some() {
                return Err(SnapshotDecodeError::DuplicateIndex(last_index));
            }
            let record = ClientRecord {
                seq,
                response,
                last_index,
            };
            if clients.insert(c, record).is_some() {
                return Err(SnapshotDecodeError::DuplicateClient(c));
            }
        }
        sm.restore(&env.app)?;
        self.clients = clients;
        self.by_index = by_index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counter(u64);
    impl StateMachine for Counter {
        fn apply(&mut self, _: &ApplyContext, _: &[u8]) -> Vec<u8> {
            self.0 += 1;
            self.0.to_le_bytes().to_vec()
        }
        fn snapshot(&self) -> Vec<u8> {
            self.0.to_le_bytes().to_vec()
        }
        fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError> {
            let b: [u8; 8] = data.try_into().map_err(|_| SnapshotDecodeError::Length {
                len: data.len(),
                expected: 8,
            })?;
            self.0 = u64::from_le_bytes(b);
            Ok(())
        }
    }

    fn ctx(client: u64, index: u64) -> ApplyContext {
        ApplyContext {
            index: LogIndex(index),
            term: Term(1),
            unix_ms: 0,
            client: ClientId(client),
        }
    }

    #[test]
    fn retry_applies_once_and_evicts_oldest() {
        let mut sm = Counter::default();
        let mut t = DedupTable::new(2);
        assert_eq!(
            t.apply(&mut sm, &ctx(1, 1), 1, b""),
            Applied::Fresh(1u64.to_le_bytes().to_vec())
        );
        assert_eq!(
            t.apply(&mut sm, &ctx(1, 2), 1, b""),
            Applied::Duplicate(1u64.to_le_bytes().to_vec())
        );
        assert_eq!(t.apply(&mut sm, &ctx(1, 3), 0, b""), Applied::Stale);
        assert_eq!(sm.0, 1);
        t.apply(&mut sm, &ctx(2, 4), 1, b"");
        t.apply(&mut sm, &ctx(3, 5), 1, b"");
        assert_eq!(t.len(), 2, "client 1 (idle longest) was evicted");
        let snap = t.snapshot(&sm);
        let mut sm2 = Counter::default();
        let mut t2 = DedupTable::new(2);
        t2.restore(&mut sm2, &snap).unwrap();
        assert_eq!(t2, t);
        assert_eq!(sm2.0, 3);
        assert!(t2.restore(&mut sm2, b"\xff\xff").is_err());
        assert_eq!(t2, t, "a failed restore changes nothing");
    }

    #[test]
    fn an_evicted_client_is_refused_not_applied_again() {
        let mut sm = Counter::default();
        let mut t = DedupTable::new(1);
        t.apply(&mut sm, &ctx(1, 1), 1, b"");
        t.apply(&mut sm, &ctx(1, 2), 2, b"");
        t.apply(&mut sm, &ctx(2, 3), 1, b"");
        assert_eq!(t.len(), 1, "client 1 was evicted");
        // Client 1 retries seq 2 (its answer was lost): it must not run a second time.
        assert_eq!(
            t.apply(&mut sm, &ctx(1, 4), 2, b""),
            Applied::SessionExpired
        );
        assert_eq!(
            t.apply(&mut sm, &ctx(1, 5), 3, b""),
            Applied::SessionExpired
        );
        assert_eq!(sm.0, 3, "nothing ran after the eviction");
        // A session that never opened with seq 1 is refused the same way.
        assert_eq!(
            t.apply(&mut sm, &ctx(9, 6), 4, b""),
            Applied::SessionExpired
        );
    }

    /// The table against a plain model: a list of (client, seq, response, last index), the
    /// lowest last index evicted first. Covers the in-place update of a known client.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Default)]
        struct Model {
            records: Vec<(u64, u64, Vec<u8>, u64)>,
        }

        impl Model {
            fn apply(
                &mut self,
                sm: &mut Counter,
                client: u64,
                seq: u64,
                index: u64,
                max: usize,
            ) -> Applied {
                if let Some(r) = self.records.iter().find(|r| r.0 == client) {
                    if seq == r.1 {
                        return Applied::Duplicate(r.2.clone());
                    }
                    if seq < r.1 {
                        return Applied::Stale;
                    }
                } else if seq != 1 {
                    return Applied::SessionExpired;
                }
                let response = sm.apply(&ctx(client, index), b"");
                self.records.retain(|r| r.0 != client);
                self.records.push((client, seq, response.clone(), index));
                while self.records.len() > max {
                    let oldest = (0..self.records.len())
                        .min_by_key(|&i| self.records[i].3)
                        .expect("non-empty");
                    self.records.remove(oldest);
                }
                Applied::Fresh(response)
            }
        }

        proptest! {
            #[test]
            fn matches_the_model(
                max in 1usize..5,
                ops in proptest::collection::vec((0u64..6, 1u64..5), 1..200),
            ) {
                let (mut sm, mut model_sm) = (Counter::default(), Counter::default());
                let mut table = DedupTable::new(max);
                let mut model = Model::default();
                for (i, (client, seq)) in ops.into_iter().enumerate() {
                    let index = i as u64 + 1;
                    let got = table.apply(&mut sm, &ctx(client, index), seq, b"");
                    let want = model.apply(&mut model_sm, client, seq, index, max);
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(table.len(), model.records.len());
                }
                prop_assert_eq!(sm.0, model_sm.0);
            }
        }
    }
}
