//! Client histories of the key-value workload and a linearizability checker for them.
//!
//! The checker is Wing & Gong's search with Lowe's memoisation (WGL, as in Porcupine and Knossos),
//! made tractable by P-compositionality: operations on different keys commute, so each key's
//! sub-history is checked on its own as a register with put / compare-and-set / get.

use std::collections::{BTreeMap, HashSet};

/// An operation a client invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Write `value`; returns the previous value.
    Put {
        /// Key.
        key: u8,
        /// Value.
        value: u64,
    },
    /// Write `new` if the value is `expected`; returns the previous value.
    Cas {
        /// Key.
        key: u8,
        /// Expected value.
        expected: Option<u64>,
        /// New value.
        new: u64,
    },
    /// Read; returns the value.
    Get {
        /// Key.
        key: u8,
    },
}

impl KvOp {
    /// The key the operation touches.
    #[must_use]
    pub fn key(&self) -> u8 {
        match *self {
            KvOp::Put { key, .. } | KvOp::Cas { key, .. } | KvOp::Get { key } => key,
        }
    }

    /// Runs the operation on a register holding `state`: the new state and the result.
    fn step(&self, state: Option<u64>) -> (Option<u64>, Option<u64>) {
        match *self {
            KvOp::Put { value, .. } => (Some(value), state),
            KvOp::Cas { expected, new, .. } => {
                (if state == expected { Some(new) } else { state }, state)
            }
            KvOp::Get { .. } => (state, state),
        }
    }
}

/// A handle to an invoked operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpId(usize);

#[derive(Clone, Debug)]
struct Record {
    client: u64,
    op: KvOp,
    call: u64,
    /// Return time and result; `None` while pending (it may or may not have taken effect).
    ret: Option<(u64, Option<u64>)>,
}

/// A recorded history: invocations and completions with their (simulated) times.
#[derive(Clone, Debug, Default)]
pub struct History {
    records: Vec<Record>,
}

/// Why a history is not known to be linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinearizabilityError {
    /// No linearization exists for this key.
    Violation {
        /// The key.
        key: u8,
        /// The key's operations, for the report.
        ops: String,
    },
    /// The search exceeded its budget (reported, never silently passed).
    Inconclusive {
        /// The key.
        key: u8,
    },
}

impl std::fmt::Display for LinearizabilityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinearizabilityError::Violation { key, ops } => {
                write!(f, "not linearizable on key {key}:\n{ops}")
            }
            LinearizabilityError::Inconclusive { key } => {
                write!(f, "linearizability search budget exhausted on key {key}")
            }
        }
    }
}

/// Search steps allowed per key before giving up as inconclusive.
const SEARCH_STEPS_MAX: u64 = 2_000_000;

impl History {
    /// Records an invocation at time `at`.
    pub fn invoke(&mut self, client: u64, op: KvOp, at: u64) -> OpId {
        self.records.push(Record {
            client,
            op,
            call: at,
            ret: None,
        });
        OpId(self.records.len() - 1)
    }

    /// Records the completion of `id` at time `at` with `result`.
    pub fn complete(&mut self, id: OpId, result: Option<u64>, at: u64) {
        let rec = &mut self.records[id.0];
        assert!(rec.ret.is_none(), "operation completed twice");
        assert!(at >= rec.call, "completion before invocation");
        rec.ret = Some((at, result));
    }

    /// Operations recorded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Operations that completed.
    #[must_use]
    pub fn completed(&self) -> usize {
        self.records.iter().filter(|r| r.ret.is_some()).count()
    }

    /// Completed reads.
    #[must_use]
    pub fn completed_reads(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.ret.is_some() && matches!(r.op, KvOp::Get { .. }))
            .count()
    }

    /// Checks the whole history, key by key.
    pub fn check_linearizable(&self) -> Result<(), LinearizabilityError> {
        let mut by_key: BTreeMap<u8, Vec<&Record>> = BTreeMap::new();
        for r in &self.records {
            by_key.entry(r.op.key()).or_default().push(r);
        }
        for (key, ops) in by_key {
            check_register(key, &ops)?;
        }
        Ok(())
    }
}

/// WGL on one register. An operation may be linearized next if it was invoked before every
/// not-yet-linearized completed operation returned. Pending operations may take effect at any point
/// after their invocation, or never; their results are unconstrained.
///
/// As in Lowe's implementation, the candidates are found by walking the time-ordered list of call
/// and return events from the first one whose operation is not yet linearized, collecting calls
/// until the first return: O(concurrency) per step instead of O(history).
fn check_register(key: u8, ops: &[&Record]) -> Result<(), LinearizabilityError> {
    let n = ops.len();
    let words = n.div_ceil(64);
    let completed_total = ops.iter().filter(|r| r.ret.is_some()).count();
    // (time, is_return, op): calls sort before returns at the same instant, so an operation that
    // returned at t is concurrent with one invoked at t.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, r) in ops.iter().enumerate() {
        events.push((r.call, false, i));
        if let Some((t, _)) = r.ret {
            events.push((t, true, i));
        }
    }
    events.sort_unstable();
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // Depth-first search over (linearized set, register state, completed count, first live event).
    let mut stack: Vec<(Vec<u64>, Option<u64>, usize, usize)> = vec![(vec![0; words], None, 0, 0)];
    let mut steps = 0u64;
    while let Some((done, state, completed, mut head)) = stack.pop() {
        if completed == completed_total {
            return Ok(());
        }
        steps += 1;
        if steps > SEARCH_STEPS_MAX {
            return Err(LinearizabilityError::Inconclusive { key });
        }
        while head < events.len() && is_done(&done, events[head].2) {
            head += 1;
        }
        for &(_, is_return, i) in &events[head..] {
            if is_done(&done, i) {
                continue;
            }
            if is_return {
                break;
            }
            let (next_state, result) = ops[i].op.step(state);
            if ops[i].ret.is_some_and(|(_, observed)| observed != result) {
                continue;
            }
            let mut next_done = done.clone();
            next_done[i / 64] |= 1 << (i % 64);
            let next_completed = completed + usize::from(ops[i].ret.is_some());
            if seen.insert((next_done.clone(), next_state)) {
                stack.push((next_done, next_state, next_completed, head));
            }
        }
    }
    let mut lines = String::new();
    let mut sorted: Vec<&&Record> = ops.iter().collect();
    sorted.sort_by_key(|r| r.call);
    for r in sorted {
        let ret = r.ret.map_or("pending".to_string(), |(t, v)| {
            format!("ret {:.3}s -> {v:?}", t as f64 / 1e9)
        });
        lines.push_str(&format!(
            "  client {} call {:.3}s {:?} {ret}\n",
            r.client,
            r.call as f64 / 1e9,
            r.op
        ));
    }
    Err(LinearizabilityError::Violation { key, ops: lines })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_history_passes_and_stale_read_fails() {
        let mut h = History::default();
        let a = h.invoke(1, KvOp::Put { key: 1, value: 10 }, 0);
        h.complete(a, None, 5);
        let b = h.invoke(2, KvOp::Get { key: 1 }, 6);
        h.complete(b, Some(10), 8);
        assert_eq!(h.check_linearizable(), Ok(()));

        let c = h.invoke(1, KvOp::Put { key: 1, value: 11 }, 10);
        h.complete(c, Some(10), 12);
        // A read that starts after the second put returned must not see the first value.
        let d = h.invoke(2, KvOp::Get { key: 1 }, 13);
        h.complete(d, Some(10), 14);
        assert!(matches!(
            h.check_linearizable(),
            Err(LinearizabilityError::Violation { key: 1, .. })
        ));
    }

    #[test]
    fn concurrent_and_pending_operations() {
        let mut h = History::default();
        // Two overlapping puts, a read that sees the one that "lost": fine if it is ordered first.
        let a = h.invoke(1, KvOp::Put { key: 0, value: 1 }, 0);
        let b = h.invoke(2, KvOp::Put { key: 0, value: 2 }, 1);
        h.complete(a, Some(2), 10);
        h.complete(b, None, 11);
        let c = h.invoke(3, KvOp::Get { key: 0 }, 12);
        h.complete(c, Some(1), 13);
        assert_eq!(h.check_linearizable(), Ok(()));
        // A pending write may have taken effect...
        let mut h = History::default();
        let _p = h.invoke(1, KvOp::Put { key: 0, value: 7 }, 0);
        let r = h.invoke(2, KvOp::Get { key: 0 }, 5);
        h.complete(r, Some(7), 6);
        assert_eq!(h.check_linearizable(), Ok(()));
        // ...or not.
        let r2 = h.invoke(2, KvOp::Get { key: 0 }, 7);
        h.complete(r2, Some(7), 8);
        assert_eq!(h.check_linearizable(), Ok(()));
        // But a value nobody wrote is a violation.
        let r3 = h.invoke(2, KvOp::Get { key: 0 }, 9);
        h.complete(r3, Some(99), 10);
        assert!(h.check_linearizable().is_err());
    }

    #[test]
    fn cas_first_writer_wins() {
        let mut h = History::default();
        let a = h.invoke(
            1,
            KvOp::Cas {
                key: 3,
                expected: None,
                new: 1,
            },
            0,
        );
        let b = h.invoke(
            2,
            KvOp::Cas {
                key: 3,
                expected: None,
                new: 2,
            },
            0,
        );
        h.complete(a, None, 5);
        h.complete(b, None, 5);
        // Both claimed success (both saw "absent"): impossible.
        assert!(h.check_linearizable().is_err());
    }
}
