//! The replicated key-value workload the chaos scenarios run on Raft, and its command encoding.
//! Simple on purpose: its job is to make linearizability violations visible.

use paloma_core::raft::state_machine::SnapshotDecodeError;
use paloma_core::raft::{ApplyContext, StateMachine};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A key-value command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: u8,
        /// Value.
        value: u64,
    },
    /// Set `key` to `new` if it currently holds `expected` (`None` = absent): first-writer-wins
    /// claims like username registration.
    Cas {
        /// Key.
        key: u8,
        /// Expected current value.
        expected: Option<u64>,
        /// New value.
        new: u64,
    },
}

impl KvCommand {
    /// Encodes the command (version byte first).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend(postcard::to_stdvec(self).expect("encode"));
        out
    }

    /// Decodes a command.
    #[must_use]
    pub fn decode(data: &[u8]) -> Option<KvCommand> {
        let (&v, body) = data.split_first()?;
        if v != 1 {
            return None;
        }
        postcard::from_bytes(body).ok()
    }
}

/// The response to a command: the value before it ran (CAS succeeded iff it equals `expected`).
pub fn decode_response(data: &[u8]) -> Option<Option<u64>> {
    postcard::from_bytes(data).ok()
}

/// The key-value state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    map: BTreeMap<u8, u64>,
    /// Commands applied (including no-op failures of CAS), to compare replicas.
    pub applied_commands: u64,
}

impl Kv {
    /// The current value of `key`.
    #[must_use]
    pub fn get(&self, key: u8) -> Option<u64> {
        self.map.get(&key).copied()
    }

    /// A digest of the whole state, for state-machine-safety checks.
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.snapshot()).as_bytes()
    }
}

impl StateMachine for Kv {
    fn apply(&mut self, _ctx: &ApplyContext, command: &[u8]) -> Vec<u8> {
        self.applied_commands += 1;
        let before = match KvCommand::decode(command) {
            Some(KvCommand::Put { key, value }) => self.map.insert(key, value),
            Some(KvCommand::Cas { key, expected, new }) => {
                let cur = self.map.get(&key).copied();
                if cur == expected {
                    self.map.insert(key, new);
                }
                cur
            }
            None => None,
        };
        postcard::to_stdvec(&before).expect("encode")
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend(postcard::to_stdvec(&(&self.map, self.applied_commands)).expect("encode"));
        out
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError> {
        let (&v, body) = data.split_first().ok_or(SnapshotDecodeError::Empty)?;
        if v != 1 {
            return Err(SnapshotDecodeError::Version(v));
        }
        let (map, applied): (BTreeMap<u8, u64>, u64) = postcard::from_bytes(body)?;
        self.map = map;
        self.applied_commands = applied;
        Ok(())
    }
}
