//! The client workload both simulators run: what each operation is (the mix of puts,
//! compare-and-sets and reads over a few keys), drawn from the simulator's own seeded randomness.
//! How an operation is carried out (events in the fast simulator, tasks in madsim) is the
//! simulator's business; what is asked, and how it is recorded in the [`crate::history::History`],
//! is written once here.

use crate::history::KvOp;
use crate::kv::KvCommand;
use std::ops::Range;
use std::time::Duration;

/// What the clients do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Concurrent clients.
    pub clients: u64,
    /// Keys `0..keys` (fewer keys, more contention).
    pub keys: u8,
    /// Percent of operations that are reads.
    pub read_percent: u8,
    /// Percent that are compare-and-sets (the rest are puts).
    pub cas_percent: u8,
    /// Pause between a client's operations.
    pub think: Range<Duration>,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            clients: 4,
            keys: 4,
            read_percent: 30,
            cas_percent: 30,
            think: Duration::from_millis(5)..Duration::from_millis(80),
        }
    }
}

/// One operation and, for a write, the command and its de-duplication sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// What the history records.
    pub op: KvOp,
    /// `(seq, command)` for a write; `None` for a read.
    pub write: Option<(u64, KvCommand)>,
}

/// One client's operation generator: sequence numbers for its writes (thesis §6.3 sessions), and
/// values unique per client and sequence, so a read identifies the write it saw.
#[derive(Clone, Debug)]
pub struct OpGen {
    client: u64,
    seq: u64,
    last_seen: Option<u64>,
}

impl OpGen {
    /// The generator of client `client` (ids from 1).
    #[must_use]
    pub fn new(client: u64) -> OpGen {
        OpGen {
            client,
            seq: 0,
            last_seen: None,
        }
    }

    /// The client's id.
    #[must_use]
    pub fn client(&self) -> u64 {
        self.client
    }

    /// Remembers the value the client's last completed operation returned: a later
    /// compare-and-set may expect it (a CAS that can succeed, not only fail).
    pub fn saw(&mut self, value: Option<u64>) {
        self.last_seen = value;
    }

    /// The next operation; `below(n)` draws uniformly from `0..n` with the simulator's RNG.
    pub fn next(&mut self, w: &Workload, below: &mut dyn FnMut(u64) -> u64) -> Op {
        let key = below(u64::from(w.keys.max(1))) as u8;
        let roll = below(100);
        if roll < u64::from(w.read_percent) {
            return Op {
                op: KvOp::Get { key },
                write: None,
            };
        }
        self.seq += 1;
        let value = self.client * 1_000_000 + self.seq;
        let (op, cmd) = if roll < u64::from(w.read_percent) + u64::from(w.cas_percent) {
            // Most CASes expect what the client last saw; the rest expect an absent key.
            let expected = if below(10) < 7 { self.last_seen } else { None };
            (
                KvOp::Cas {
                    key,
                    expected,
                    new: value,
                },
                KvCommand::Cas {
                    key,
                    expected,
                    new: value,
                },
            )
        } else {
            (KvOp::Put { key, value }, KvCommand::Put { key, value })
        };
        Op {
            op,
            write: Some((self.seq, cmd)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_follows_the_percentages_and_writes_are_numbered() {
        let w = Workload {
            read_percent: 50,
            cas_percent: 25,
            ..Workload::default()
        };
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut below = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut g = OpGen::new(3);
        let (mut reads, mut cas, mut puts) = (0, 0, 0);
        let mut last_seq = 0;
        for _ in 0..10_000 {
            let op = g.next(&w, &mut below);
            match (op.op, op.write) {
                (KvOp::Get { key }, None) => {
                    assert!(key < w.keys);
                    reads += 1;
                }
                (KvOp::Cas { new, .. }, Some((seq, _))) => {
                    assert_eq!(seq, last_seq + 1);
                    assert_eq!(new, 3_000_000 + seq);
                    last_seq = seq;
                    cas += 1;
                }
                (KvOp::Put { value, .. }, Some((seq, _))) => {
                    assert_eq!(seq, last_seq + 1);
                    assert_eq!(value, 3_000_000 + seq);
                    last_seq = seq;
                    puts += 1;
                }
                other => panic!("op and command disagree: {other:?}"),
            }
        }
        assert!((4_500..5_500).contains(&reads), "reads {reads}");
        assert!((2_000..3_000).contains(&cas), "cas {cas}");
        assert!((2_000..3_000).contains(&puts), "puts {puts}");
    }
}
