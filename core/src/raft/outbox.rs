//! The outbox: everything a node hands to its runtime, and the persistence ordering that decides
//! when a message may leave (ARCHITECTURE.md, "The driving contract").
//!
//! Writes are *staged* while a node steps and *issued* as one [`PersistBatch`] per flush; the
//! runtime makes batches durable in `seq` order and reports them with `Input::Persisted(seq)`.
//! A message whose promise needs a write (a granted vote, an append acknowledgement, anything in a
//! new term) *waits* until the batch holding that write is durable (Raft Figure 2: "respond to
//! RPCs" only after updating stable storage; openraft's io_ordering).
//!
//! Invariants (checked by [`Outbox::check_invariants`] and the unit tests below):
//! 1. `durable <= issued`; batches are numbered 1, 2, 3, ... with no gap, and `pending` holds
//!    exactly the issued batches not yet durable, in strictly increasing `seq` order.
//! 2. A message leaves `waiting` only when the batch it needs is durable, and in FIFO order: no
//!    message overtakes an earlier one that still waits (so a node's messages to a peer stay in
//!    the order it sent them, as the core assumed when it sent them).
//! 3. Every waiting message needs at most the next batch to be issued (`issued + 1`), and only if
//!    something is staged: a message never waits for a batch that will never come.
//! 4. The batch that records the current term (`term_seq`) is at most `issued + 1`; if it is
//!    `issued + 1`, the hard state is staged (it will be in that batch).
//! 5. `Persisted` for a batch never issued, or already reported, changes nothing and is counted
//!    by the caller (ARCHITECTURE.md, "Errors": hostile or broken input is dropped and counted).
//! 6. `durable_match`, the last index durable on the local disk, only rises to an index whose
//!    term the log still holds (the ABA guard of etcd's
//!    `async_storage_writes_append_aba_race.txt`: a write of an entry later truncated and
//!    replaced must not count for the replacement), and never exceeds the log's last index.
//! 7. A message released by `Persisted` leaves only if it belongs to the node's current term.
//!    One made in an earlier term (an append acknowledgement, a granted vote) is dropped: its
//!    promise may no longer hold on disk. With group commit a batch that writes entries and the
//!    next batch that truncates them for a new leader can become durable together, and an
//!    acknowledgement of the truncated entries would then leave with nothing on disk behind it
//!    (found by the madsim boundary check, seed 200057 of `five_nodes_all_faults`). Dropping is
//!    always safe: the network may lose any message, and the addressee is a leader or candidate of
//!    a term the node has left.

use crate::ids::{LogId, LogIndex, PersistSeq, Term};
use crate::raft::io::{Event, Output};
use crate::raft::log::RaftLog;
use crate::raft::message::Envelope;
use crate::raft::storage::{PersistBatch, PersistOp};
use crate::raft::types::HardState;
use std::collections::VecDeque;

/// What a message needs on disk before it may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Nothing (a pre-vote, or a leader message whose term is already durable).
    Nothing,
    /// The batch that records the current term (a leader's messages: thesis §10.2.1 lets a
    /// leader send entries before its own write, but never a term it has not written).
    Term,
    /// Everything staged so far (a follower's or candidate's answer promises its state).
    Staged,
}

/// What `on_persisted` did with an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Persisted {
    /// A batch never issued or already durable: ignored.
    Unknown,
    /// Batches up to `seq` are durable now; `stale` released messages of an earlier term were
    /// dropped instead of sent (invariant 7).
    Durable {
        /// Messages dropped because the node has moved to a later term since they were made.
        stale: u64,
    },
}

/// The persistence queue and output funnel of one node.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Operations for the next batch.
    staged: Vec<PersistOp>,
    /// The next batch ends with the hard state.
    hard_state_dirty: bool,
    /// The last batch handed out.
    issued: PersistSeq,
    /// The last batch reported durable.
    durable: PersistSeq,
    /// Issued batches not yet durable, with the last log entry each one leaves on disk.
    pending: VecDeque<(PersistSeq, LogId)>,
    /// The batch that records the current term.
    term_seq: PersistSeq,
    /// Outputs ready for `poll_output`, in order.
    ready: VecDeque<Output>,
    /// Messages held until the batch they need (`PersistSeq`) is durable, in send order.
    waiting: VecDeque<(PersistSeq, Envelope)>,
    /// The last index known durable locally and still in the log (the leader's own vote in the
    /// commit count: etcd #14370).
    durable_match: LogIndex,
    /// Messages buffered (ready or waiting) at most; more are dropped.
    messages_max: usize,
}

impl Outbox {
    /// An empty outbox for a node whose log up to `durable_match` was recovered from disk.
    pub(crate) fn new(durable_match: LogIndex, messages_max: usize) -> Outbox {
        assert!(messages_max > 0, "an outbox holds at least one message");
        Outbox {
            staged: Vec::new(),
            hard_state_dirty: false,
            issued: PersistSeq(0),
            durable: PersistSeq(0),
            pending: VecDeque::new(),
            term_seq: PersistSeq(0),
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            durable_match,
            messages_max,
        }
    }

    // ----- writes ----------------------------------------------------------------------------

    /// Stages one write for the next batch. Consecutive appends merge into one operation (one
    /// write for a burst of proposals).
    pub(crate) fn stage(&mut self, op: PersistOp) {
        match (op, self.staged.last_mut()) {
            (PersistOp::Append(new), Some(PersistOp::Append(prev))) => prev.extend(new),
            (op, _) => self.staged.push(op),
        }
    }

    /// The hard state (term, vote or commit) changed: the next batch records it.
    pub(crate) fn mark_hard_state(&mut self) {
        self.hard_state_dirty = true;
    }

    /// The term changed: the next batch records it, and leader messages wait for that batch.
    pub(crate) fn mark_term_changed(&mut self) {
        self.hard_state_dirty = true;
        self.term_seq = self.next_seq();
    }

    fn next_seq(&self) -> PersistSeq {
        PersistSeq(self.issued.0.checked_add(1).expect("persist seq overflow"))
    }

    fn has_staged(&self) -> bool {
        !self.staged.is_empty() || self.hard_state_dirty
    }

    /// Issues the staged writes as one batch, if any; `hard_state` is appended last when it
    /// changed, and `last` is the last log entry the batch leaves on disk.
    pub(crate) fn issue(&mut self, hard_state: HardState, last: LogId) {
        if !self.has_staged() {
            return;
        }
        let mut ops = std::mem::take(&mut self.staged);
        if std::mem::take(&mut self.hard_state_dirty) {
            // Hard state last: its commit index may cover entries this very batch truncates or
            // appends, and a torn batch must never leave a commit index over entries that were not
            // written (found by the torn-write proptest). Entries of a term newer than the durable
            // hard state are harmless: `RaftNode::new` takes the term from the log, and a vote lost
            // with the hard state was never sent (votes wait for `Persisted`).
            ops.push(PersistOp::HardState(hard_state));
        }
        self.issued = self.next_seq();
        self.pending.push_back((self.issued, last));
        self.ready.push_back(Output::Persist(PersistBatch {
            seq: self.issued,
            ops,
        }));
        // Messages that waited on this batch stay in `waiting` until `Persisted`.
    }

    /// The runtime made batches up to `seq` durable. Raises `durable_match` (through the ABA
    /// guard against `log`) and releases the messages whose batch is now durable, dropping those
    /// of a term before `term` (invariant 7).
    pub(crate) fn on_persisted(&mut self, seq: PersistSeq, log: &RaftLog, term: Term) -> Persisted {
        if seq > self.issued || seq <= self.durable {
            return Persisted::Unknown;
        }
        self.durable = seq;
        while self.pending.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, last) = self.pending.pop_front().expect("checked");
            // ABA guard (etcd async_storage_writes_append_aba_race): the write only counts if the
            // log still holds the same entry at that index.
            if log.term(last.index) == Some(last.term) && last.index > self.durable_match {
                self.durable_match = last.index;
            }
        }
        let mut stale = 0;
        while self.waiting.front().is_some_and(|(needs, _)| *needs <= seq) {
            let (_, env) = self.waiting.pop_front().expect("checked");
            if env.term < term {
                stale += 1;
            } else {
                self.ready.push_back(Output::Send(env));
            }
        }
        assert!(self.durable <= self.issued, "durable batch never issued");
        Persisted::Durable { stale }
    }

    // ----- messages and events ---------------------------------------------------------------

    /// Queues `env`, held until what it `needs` is durable. Returns false (and drops it) when the
    /// outbox is full.
    pub(crate) fn send(&mut self, env: Envelope, needs: Needs) -> bool {
        if self.ready.len() + self.waiting.len() >= self.messages_max {
            return false;
        }
        let needs = match needs {
            Needs::Nothing => PersistSeq(0),
            Needs::Term if self.term_seq > self.durable => self.term_seq,
            Needs::Term => PersistSeq(0),
            Needs::Staged if self.has_staged() => self.next_seq(),
            Needs::Staged => self.issued,
        };
        if needs <= self.durable && self.waiting.is_empty() {
            self.ready.push_back(Output::Send(env));
        } else {
            self.waiting.push_back((needs, env));
        }
        true
    }

    /// Queues an event for the application.
    pub(crate) fn emit(&mut self, event: Event) {
        self.ready.push_back(Output::Event(event));
    }

    /// The next output, oldest first.
    pub(crate) fn pop(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    // ----- the local durable log ---------------------------------------------------------------

    /// The last index durable on the local disk and still in the log.
    pub(crate) fn durable_match(&self) -> LogIndex {
        self.durable_match
    }

    /// The log lost everything from `from` on (truncation): those writes no longer count.
    pub(crate) fn truncated(&mut self, from: LogIndex) {
        self.durable_match = self.durable_match.min(from.prev());
    }

    /// The log now ends at `last` (a snapshot replaced or trimmed it): nothing past it counts.
    pub(crate) fn clamp_durable_match(&mut self, last: LogIndex) {
        self.durable_match = self.durable_match.min(last);
    }

    // ----- checks ------------------------------------------------------------------------------

    /// Asserts the invariants listed in the module docs, against a log ending at `log_last`.
    pub(crate) fn check_invariants(&self, log_last: LogIndex) {
        assert!(self.durable <= self.issued, "durable batch never issued");
        assert!(
            self.durable_match <= log_last,
            "durable match {:?} past the log's last index {:?}",
            self.durable_match,
            log_last
        );
        assert!(
            self.term_seq <= self.next_seq(),
            "the term waits for a batch past the next one"
        );
        assert!(
            self.term_seq != self.next_seq() || self.hard_state_dirty,
            "the term's batch is not staged"
        );
        let mut prev = self.durable;
        for (seq, _) in &self.pending {
            assert!(*seq > prev, "pending batches out of order");
            prev = *seq;
        }
        assert_eq!(prev, self.issued, "pending batches end at the last issued");
        let limit = if self.has_staged() {
            self.next_seq()
        } else {
            self.issued
        };
        for (needs, _) in &self.waiting {
            assert!(
                *needs <= limit,
                "a message waits for a batch that will never come"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{NodeId, Term};
    use crate::raft::message::Body;
    use crate::raft::types::{Entry, Payload, Snapshot};

    fn env(to: u64) -> Envelope {
        Envelope {
            from: NodeId(1),
            to: NodeId(to),
            term: Term(1),
            body: Body::TimeoutNow,
        }
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            id: LogId::new(Term(term), LogIndex(index)),
            unix_ms: 0,
            payload: Payload::Noop,
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, t)| entry(i as u64 + 1, *t))
            .collect();
        RaftLog::new(Snapshot::default(), LogId::default(), entries)
    }

    /// Drains every output, returning the persist seqs and the message destinations in order.
    fn drain(o: &mut Outbox) -> (Vec<u64>, Vec<u64>) {
        let (mut seqs, mut sends) = (Vec::new(), Vec::new());
        while let Some(out) = o.pop() {
            match out {
                Output::Persist(b) => seqs.push(b.seq.0),
                Output::Send(e) => sends.push(e.to.0),
                Output::Event(_) => {}
            }
        }
        (seqs, sends)
    }

    #[test]
    fn batches_are_numbered_in_order_and_only_when_something_is_staged() {
        let mut o = Outbox::new(LogIndex(0), 16);
        let hs = HardState::default();
        o.issue(hs, LogId::default());
        assert_eq!(
            drain(&mut o).0,
            Vec::<u64>::new(),
            "nothing staged, no batch"
        );
        o.stage(PersistOp::Append(vec![entry(1, 1)]));
        o.stage(PersistOp::Append(vec![entry(2, 1)]));
        o.mark_hard_state();
        o.issue(hs, LogId::new(Term(1), LogIndex(2)));
        o.stage(PersistOp::Truncate { from: LogIndex(2) });
        o.issue(hs, LogId::new(Term(1), LogIndex(1)));
        o.check_invariants(LogIndex(2));
        let mut seqs = Vec::new();
        while let Some(out) = o.pop() {
            if let Output::Persist(b) = out {
                if b.seq == PersistSeq(1) {
                    assert_eq!(b.ops.len(), 2, "appends merged, hard state last");
                    assert!(matches!(b.ops[1], PersistOp::HardState(_)));
                }
                seqs.push(b.seq.0);
            }
        }
        assert_eq!(seqs, vec![1, 2]);
    }

    #[test]
    fn a_message_leaves_only_once_the_batch_it_needs_is_durable() {
        let log = log_with(&[1]);
        let mut o = Outbox::new(LogIndex(0), 16);
        o.stage(PersistOp::Append(vec![entry(1, 1)]));
        assert!(
            o.send(env(2), Needs::Staged),
            "an acknowledgement of the append"
        );
        assert!(
            o.send(env(3), Needs::Nothing),
            "a pre-vote: but it must not overtake"
        );
        o.issue(HardState::default(), LogId::new(Term(1), LogIndex(1)));
        o.check_invariants(LogIndex(1));
        assert_eq!(drain(&mut o), (vec![1], vec![]), "both wait for batch 1");
        assert_eq!(
            o.on_persisted(PersistSeq(1), &log, Term(1)),
            Persisted::Durable { stale: 0 }
        );
        assert_eq!(
            drain(&mut o),
            (vec![], vec![2, 3]),
            "released in send order"
        );
        assert_eq!(o.durable_match(), LogIndex(1));
        assert!(
            o.send(env(4), Needs::Staged),
            "nothing staged: needs what is durable"
        );
        assert_eq!(drain(&mut o), (vec![], vec![4]));
        o.check_invariants(LogIndex(1));
    }

    #[test]
    fn a_leader_message_waits_only_for_its_term() {
        let mut o = Outbox::new(LogIndex(0), 16);
        o.mark_term_changed();
        o.check_invariants(LogIndex(0));
        assert!(o.send(env(2), Needs::Term));
        o.issue(HardState::default(), LogId::default());
        // A later batch (an append) is not needed by the next leader message.
        o.stage(PersistOp::Append(vec![entry(1, 1)]));
        o.issue(HardState::default(), LogId::new(Term(1), LogIndex(1)));
        assert_eq!(drain(&mut o), (vec![1, 2], vec![]));
        let log = log_with(&[1]);
        o.on_persisted(PersistSeq(1), &log, Term(1));
        assert!(o.send(env(3), Needs::Term));
        assert_eq!(drain(&mut o), (vec![], vec![2, 3]), "term durable: both go");
        assert_eq!(o.durable_match(), LogIndex(0), "batch 2 is not durable yet");
    }

    #[test]
    fn unknown_and_old_acknowledgements_change_nothing() {
        let log = log_with(&[1]);
        let mut o = Outbox::new(LogIndex(0), 16);
        assert_eq!(
            o.on_persisted(PersistSeq(1), &log, Term(1)),
            Persisted::Unknown
        );
        o.stage(PersistOp::Append(vec![entry(1, 1)]));
        assert!(o.send(env(2), Needs::Staged));
        o.issue(HardState::default(), LogId::new(Term(1), LogIndex(1)));
        assert_eq!(
            o.on_persisted(PersistSeq(2), &log, Term(1)),
            Persisted::Unknown
        );
        assert_eq!(
            o.on_persisted(PersistSeq(0), &log, Term(1)),
            Persisted::Unknown
        );
        assert_eq!(drain(&mut o), (vec![1], vec![]), "nothing released");
        assert_eq!(o.durable_match(), LogIndex(0));
        assert_eq!(
            o.on_persisted(PersistSeq(1), &log, Term(1)),
            Persisted::Durable { stale: 0 }
        );
        assert_eq!(
            o.on_persisted(PersistSeq(1), &log, Term(1)),
            Persisted::Unknown,
            "reported twice"
        );
        assert_eq!(drain(&mut o), (vec![], vec![2]));
        o.check_invariants(LogIndex(1));
    }

    #[test]
    fn a_write_of_a_replaced_entry_does_not_count() {
        // Batch 1 writes 1@1; before it is durable the entry is truncated and 1@2 appended
        // (batch 2). Batch 1's completion must not count index 1 as durable (ABA guard).
        let mut o = Outbox::new(LogIndex(0), 16);
        o.stage(PersistOp::Append(vec![entry(1, 1)]));
        o.issue(HardState::default(), LogId::new(Term(1), LogIndex(1)));
        o.truncated(LogIndex(1));
        o.stage(PersistOp::Truncate { from: LogIndex(1) });
        o.stage(PersistOp::Append(vec![entry(1, 2)]));
        o.issue(HardState::default(), LogId::new(Term(2), LogIndex(1)));
        let log = log_with(&[2]);
        o.on_persisted(PersistSeq(1), &log, Term(1));
        assert_eq!(
            o.durable_match(),
            LogIndex(0),
            "1@1 is gone: its write proves nothing"
        );
        o.on_persisted(PersistSeq(2), &log, Term(1));
        assert_eq!(o.durable_match(), LogIndex(1));
        o.check_invariants(LogIndex(1));
    }

    #[test]
    fn a_full_outbox_drops_messages_but_not_writes() {
        let mut o = Outbox::new(LogIndex(0), 2);
        assert!(o.send(env(2), Needs::Nothing));
        assert!(o.send(env(3), Needs::Nothing));
        assert!(!o.send(env(4), Needs::Nothing), "full");
        o.stage(PersistOp::Compact {
            upto: LogId::default(),
        });
        o.issue(HardState::default(), LogId::default());
        assert_eq!(drain(&mut o), (vec![1], vec![2, 3]));
    }

    #[test]
    fn a_released_message_of_an_earlier_term_is_dropped() {
        let log = log_with(&[1]);
        let mut o = Outbox::new(LogIndex(0), 16);
        o.stage(PersistOp::Append(vec![entry(1, 1)]));
        assert!(
            o.send(env(2), Needs::Staged),
            "an acknowledgement in term 1"
        );
        o.issue(HardState::default(), LogId::new(Term(1), LogIndex(1)));
        assert_eq!(drain(&mut o), (vec![1], vec![]));
        // The node moved to term 2 before the write became durable.
        assert_eq!(
            o.on_persisted(PersistSeq(1), &log, Term(2)),
            Persisted::Durable { stale: 1 }
        );
        assert_eq!(
            drain(&mut o),
            (vec![], vec![]),
            "the term-1 ack never leaves"
        );
        o.check_invariants(LogIndex(1));
    }
}
