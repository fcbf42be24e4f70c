//! Model checking of the production Raft core with `stateright`.
//!
//! The model's state is three real `RaftNode`s (the code that ships, not a re-implementation), each
//! node's durable `MemStorage`, each node's persist batches not yet durable, and the network as a
//! bounded multiset of in-flight envelopes. Every nondeterministic choice a runtime could make is an
//! action, and stateright's breadth-first search tries all of them in every state:
//!
//! - deliver any in-flight message (in any order: the network reorders freely), and, a bounded
//!   number of times, duplicate one or drop one;
//! - fire one node's timer: its clock jumps to its own `poll_timeout` deadline and it gets
//!   `Input::Timeout`. Each node has its own clock that moves only then, so how far time runs on
//!   each node, relative to message delivery, is itself a nondeterministic choice;
//! - complete one node's oldest pending persist batch (apply it to `MemStorage`, then feed
//!   `Input::Persisted(seq)`), in `seq` order as the driving contract requires;
//! - crash a node (at most `crashes_max` times): its unpersisted batches are lost and it restarts
//!   with `RaftNode::new` from what its `MemStorage` recovers;
//! - propose a command on a leader (at most `proposals_max` in all).
//!
//! After every step the model checks the safety properties of Raft's Figure 3: election safety
//! (§5.2), log matching (§5.3), leader completeness (§5.4), state machine safety (§5.4.3), plus
//! `check_invariants()` and every assertion inside the core (a panic in a step is caught and turns
//! into a violation, reported with the path that led to it).
//!
//! Two initial states: a brand-new cluster (elections from scratch), and a cluster whose leader n1
//! committed two entries on n1 and n2 while n3 voted but missed every append (a run scripted
//! through the same actions, `RaftModel::leader_with_lagging_follower`). The second puts the
//! interesting part of the state space, a new election over logs that differ around a committed
//! entry (Raft §5.4.1), within the reach of an exhaustive search.
//!
//! Commands: `cargo test -p paloma-core --test raft_model -- --nocapture` (the bounded check, part
//! of every `cargo test`); `cargo test --release -p paloma-core --test raft_model -- --ignored
//! --nocapture` (the deeper one, ten minutes). `RAFT_MODEL_EXAMPLES=1` also prints a shortest path
//! to each `sometimes` property.
//!
//! The checker bites: with either of two bugs planted in the core, the bounded check reports a
//! leader completeness violation and its shortest path. Granting pre-votes and votes without the
//! log comparison of Raft §5.4.1: 8 steps from the lagging-follower state (n1 crashes, n3 with an
//! empty log wins its vote). A follower acknowledging an append before it is durable (Figure 2,
//! "respond after persisting"): 12 steps (n2 acks, n1 commits, n2 crashes and loses the entry, then
//! wins term 2 with n3's vote).
//!
//! # How a `RaftNode` lives in a stateright state
//!
//! Stateright wants states that are `Clone + Hash + Eq`. `RaftNode` is none of these (it is `Debug`
//! only), and this test does not change the core to make it so. Two devices fill the gap:
//!
//! - **Cloning by replay.** A node is deterministic given its inputs (crate docs: "the same inputs
//!   at the same instants give the same outputs"). Each replica keeps what it booted from (the
//!   recovered storage image, seed and instant) and the inputs fed since (a persistent linked list
//!   shared with the states before it), plus a small view of the node for the actions and the
//!   properties. A step rebuilds an owned node by replaying that list, feeds the new input, drains
//!   the outputs into the state, and keeps a new view. Keeping views rather than nodes keeps a
//!   state near a kilobyte: a breadth-first frontier holds millions.
//! - **Hashing by fingerprint.** Two states are equal when their canonical fingerprints are. A
//!   node's fingerprint is the blake3 of its full `Debug` rendering (every field of the node: role,
//!   term, vote, log, commit, leader progress, held-back messages, persist sequence numbers,
//!   timers...), with two normalisations: the `stats` counters are dropped (they never influence
//!   behaviour), and every `Instant` is rewritten relative to the node's own `now`: the core only
//!   compares instants and adds durations to them, so its behaviour is invariant under a shift of
//!   its clock. The state's fingerprint adds the durable storage, the pending persist batches, the
//!   in-flight messages (as a sorted multiset), the bound counters and the checkers' history.
//!
//! Soundness trade-off of the fingerprint: states that hash equal are explored once, so anything
//! that influences future behaviour but is not in the fingerprint could hide behaviours (it cannot
//! invent one: every state explored is reached by a real run of the real code, and every reported
//! path replays). Everything is in it except (a) the position of the node's random stream, which
//! `Debug` does not show (`ChaCha8Rng { ... }`). It only draws the jitter of future election
//! deadlines, and in this model a node's clock moves only when its own timer fires; an election
//! deadline is drawn in `[t, 2t)` after the last leader contact (Raft §5.2), so when it fires the
//! leader-stickiness lease (thesis §9.6) has expired whatever the jitter, and nothing else here
//! compares against it (no reads, no leases). Merged states therefore decide alike, though their
//! later deadlines differ in value: on several threads, which of two merged states is kept varies,
//! and so do the counts of later states, by a few in a million. (b) 128-bit hash collisions
//! (stateright itself keys states by a 64-bit hash).
//!
//! What the bounds cut: terms above `term_max` (a node at that term never starts an election), more
//! than `timeouts_max` timer firings in all (a leader's heartbeats would otherwise be an unbounded
//! counter), more messages in flight than `in_flight_max` (a send to a full network is lost, which
//! Raft must tolerate anyway), and, where a check says so, paths longer than a depth limit per
//! initial state. Within them the search is exhaustive.

use paloma_core::raft::io::{Input, Output, Role, TimerKind};
use paloma_core::raft::state_machine::SnapshotDecodeError;
use paloma_core::raft::storage::{MemStorage, PersistBatch, Recovered, Storage};
use paloma_core::raft::{
    ApplyContext, Body, Config, Entry, Envelope, Payload, RaftNode, StateMachine,
};
use paloma_core::{ClientId, Instant, LogId, NodeId};
use stateright::report::{ReportData, ReportDiscovery, Reporter};
use stateright::{Checker, HasDiscoveries, Model, Property};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Replicas in the model.
const N: usize = 3;

/// The wall clock stamped into proposals (a constant: entries then differ only by what matters).
const UNIX_MS: u64 = 1_700_000_000_000;

// ----- the state machine ------------------------------------------------------------------------

/// The replicated state machine: the commands applied, concatenated (each command is one byte).
#[derive(Debug, Default)]
struct Bytes(Vec<u8>);

impl StateMachine for Bytes {
    fn apply(&mut self, _: &ApplyContext, cmd: &[u8]) -> Vec<u8> {
        self.0.extend_from_slice(cmd);
        vec![u8::try_from(self.0.len()).unwrap_or(u8::MAX)]
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.clone()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError> {
        self.0 = data.to_vec();
        Ok(())
    }
}

type Node = RaftNode<Bytes>;

// ----- bounds -----------------------------------------------------------------------------------

/// What keeps the state space finite.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// No node campaigns for a term above this (so no term exceeds it).
    term_max: u64,
    /// Commands proposed in all.
    proposals_max: u8,
    /// Crashes in all.
    crashes_max: u8,
    /// Timer firings in all (elections, heartbeats, check-quorum).
    timeouts_max: u8,
    /// Messages in flight at once; a send to a full network is lost.
    in_flight_max: usize,
    /// Messages duplicated in all.
    duplicates_max: u8,
    /// Messages dropped in all (besides sends to a full network).
    drops_max: u8,
}

// ----- fingerprints -----------------------------------------------------------------------------

/// A `fmt::Write` that feeds blake3 (fingerprints without building strings).
struct HashWriter(blake3::Hasher);

impl std::fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

impl HashWriter {
    fn new() -> HashWriter {
        HashWriter(blake3::Hasher::new())
    }

    fn finish(&self) -> u128 {
        let mut out = [0u8; 16];
        out.copy_from_slice(&self.0.finalize().as_bytes()[..16]);
        u128::from_le_bytes(out)
    }
}

fn digest_debug(value: &impl std::fmt::Debug) -> u128 {
    let mut w = HashWriter::new();
    let _ = write!(w, "{value:?}");
    w.finish()
}

thread_local! {
    /// The `Debug` rendering of the node being fingerprinted (reused: it is a few kilobytes).
    static RENDERING: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The canonical fingerprint of a node (module docs): its `Debug` rendering without the `stats`
/// counters and with every instant relative to the node's `now`.
fn node_fingerprint(node: &Node) -> u128 {
    RENDERING.with_borrow_mut(|text| {
        text.clear();
        let _ = write!(text, "{node:?}");
        let (text, _stats) = text
            .rsplit_once(", stats: Stats {")
            .expect("RaftNode's Debug ends with its stats");
        let now = i128::from(node.now().as_nanos());
        let mut w = HashWriter::new();
        let mut rest = text;
        while let Some(at) = rest.find("Instant(") {
            let (head, tail) = rest.split_at(at + "Instant(".len());
            w.0.update(head.as_bytes());
            let end = tail.find(')').expect("Instant(n) is closed");
            let nanos: i128 = tail[..end].parse().expect("Instant holds an integer");
            w.0.update(&(nanos - now).to_le_bytes());
            rest = &tail[end..];
        }
        w.0.update(rest.as_bytes());
        w.finish()
    })
}

// ----- replicas: a view of the node plus how to rebuild it ---------------------------------------

/// One input fed to a node since it booted.
#[derive(Debug)]
enum Step {
    Input(Instant, Input),
    /// `propose(now, UNIX_MS, client 1, seq, [cmd])`.
    Propose(Instant, u64, u8),
}

/// Feeds one step to a node; `false` if it was a proposal the node refused (nothing changed).
fn feed(node: &mut Node, step: &Step) -> bool {
    match step {
        Step::Input(now, input) => {
            node.handle(*now, input.clone());
            true
        }
        Step::Propose(now, seq, cmd) => node
            .propose(*now, UNIX_MS, ClientId(1), *seq, vec![*cmd])
            .is_ok(),
    }
}

/// A persistent list of steps, newest first (shared between a state and its successors).
#[derive(Debug)]
struct Trace {
    step: Step,
    prev: Option<Arc<Trace>>,
}

/// What the actions, the properties and the reports need of a node.
#[derive(Debug)]
struct View {
    role: Role,
    term: u64,
    vote: Option<u64>,
    commit: u64,
    applied: u64,
    last: LogId,
    now: Instant,
    timer: Option<(Instant, TimerKind)>,
    /// The index before `entries` and the entries held in memory.
    base: u64,
    entries: Vec<Entry>,
    /// The state machine: the commands applied.
    sm: Vec<u8>,
}

impl View {
    fn of(node: &Node) -> View {
        let status = node.status();
        View {
            role: status.role,
            term: status.term.0,
            vote: status.vote.map(|v| v.0),
            commit: status.commit.0,
            applied: status.applied.0,
            last: status.last,
            now: node.now(),
            timer: node.poll_timeout(),
            base: node.log().base().index.0,
            entries: node.log().entries().cloned().collect(),
            sm: node.state_machine().0.clone(),
        }
    }

    fn entry(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.base + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }
}

/// A replica: a view of its node, and what rebuilds it.
#[derive(Clone, Debug)]
struct Replica {
    view: Arc<View>,
    boot: Arc<Recovered>,
    boot_at: Instant,
    seed: u64,
    trace: Option<Arc<Trace>>,
    fp: u128,
}

/// Drains a node's outputs and forgets them (replay: they are already in the state).
fn drain_discard(node: &mut Node) {
    while node.poll_output().is_some() {}
}

impl Replica {
    /// An owned node, rebuilt by replaying the inputs since boot.
    fn materialize(&self, cfg: &Config) -> Node {
        let mut node = Node::new(
            cfg.clone(),
            (*self.boot).clone(),
            Bytes::default(),
            self.seed,
            self.boot_at,
        )
        .expect("booted once already");
        drain_discard(&mut node);
        let mut steps = Vec::new();
        let mut link = self.trace.as_deref();
        while let Some(t) = link {
            steps.push(&t.step);
            link = t.prev.as_deref();
        }
        for step in steps.into_iter().rev() {
            feed(&mut node, step);
            drain_discard(&mut node);
        }
        node
    }
}

// ----- the model state --------------------------------------------------------------------------

/// One message in flight, with its fingerprint (the network is kept sorted by it).
#[derive(Clone, Debug)]
struct Msg {
    fp: u128,
    env: Arc<Envelope>,
}

/// What the checkers remember of the whole run (safety properties are about histories).
#[derive(Clone, Debug, Default)]
struct History {
    /// Every (term, leader) observed.
    leaders: BTreeSet<(u64, u64)>,
    /// Every entry observed committed, (index, entry term) -> the lowest term of a node that saw
    /// it committed: the term it was committed in, since its leader sees it first (Raft §5.4.2).
    committed: BTreeMap<(u64, u64), u64>,
    /// Every entry applied by any node: (index, entry term, digest of the entry).
    applied: BTreeSet<(u64, u64, u128)>,
}

/// The whole system plus the checkers' memory.
#[derive(Clone, Debug)]
struct State {
    replicas: [Replica; N],
    storage: [Arc<MemStorage>; N],
    storage_fp: [u128; N],
    /// Batches handed out by each node and not yet durable, oldest first.
    unpersisted: [Arc<Vec<PersistBatch>>; N],
    unpersisted_fp: [u128; N],
    /// In-flight messages, sorted by fingerprint (a multiset).
    network: Vec<Msg>,
    proposals: u8,
    /// Commands proposed since the fresh cluster (numbers them: `(client 1, seq)` must be new).
    proposed: u8,
    /// `proposed` at this state's initial state.
    proposed_before: u8,
    crashes: u8,
    timeouts: u8,
    duplicates: u8,
    drops: u8,
    history: Arc<History>,
    history_fp: u128,
    /// A panic of the core (an assertion, `check_invariants`) in the step that led here.
    violation: Option<Arc<str>>,
    /// The canonical fingerprint (module docs), computed once per state.
    fp: u128,
    /// How this state was first reached, and in how many steps from its initial state: for the
    /// report, not part of the state (states equal but for their paths are the same state).
    path: Option<Arc<PathLink>>,
    depth: usize,
    /// Which initial state this one descends from (0: fresh, 1: leader with a lagging follower).
    root: usize,
}

/// A persistent list of the actions that led to a state, newest first.
#[derive(Debug)]
struct PathLink {
    action: Action,
    prev: Option<Arc<PathLink>>,
}

impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.fp.hash(h);
    }
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.fp == other.fp
    }
}

impl State {
    fn view(&self, i: usize) -> &View {
        &self.replicas[i].view
    }

    fn refingerprint(&mut self) {
        let mut h = blake3::Hasher::new();
        for i in 0..N {
            h.update(&self.replicas[i].fp.to_le_bytes());
            h.update(&self.storage_fp[i].to_le_bytes());
            h.update(&self.unpersisted_fp[i].to_le_bytes());
        }
        h.update(&self.network.len().to_le_bytes());
        for m in &self.network {
            h.update(&m.fp.to_le_bytes());
        }
        h.update(&[
            self.proposals,
            self.proposed,
            self.crashes,
            self.timeouts,
            self.duplicates,
            self.drops,
        ]);
        h.update(&self.history_fp.to_le_bytes());
        if let Some(v) = &self.violation {
            h.update(v.as_bytes());
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        self.fp = u128::from_le_bytes(out);
    }

    /// Files a message sent by a node: into the network, or lost if it is full.
    fn send(&mut self, env: Envelope, in_flight_max: usize) {
        if self.network.len() >= in_flight_max {
            return;
        }
        let fp = digest_debug(&env);
        let at = self.network.partition_point(|m| m.fp < fp);
        self.network.insert(
            at,
            Msg {
                fp,
                env: Arc::new(env),
            },
        );
    }

    /// Takes every output of node `i` into the state (the driving contract's step 2).
    fn drain(&mut self, i: usize, node: &mut Node, in_flight_max: usize) {
        while let Some(out) = node.poll_output() {
            match out {
                Output::Persist(batch) => {
                    Arc::make_mut(&mut self.unpersisted[i]).push(batch);
                    self.unpersisted_fp[i] = digest_debug(&self.unpersisted[i]);
                }
                Output::Send(env) => self.send(env, in_flight_max),
                Output::Event(_) => {}
            }
        }
    }

    /// Records what node `i` shows now in the checkers' history.
    fn observe(&mut self, i: usize) {
        let view = &self.replicas[i].view;
        let mut leaders = Vec::new();
        let mut committed = Vec::new();
        let mut applied = Vec::new();
        if view.role == Role::Leader {
            leaders.push((view.term, i as u64 + 1));
        }
        for index in 1..=view.commit {
            if let Some(e) = view.entry(index) {
                let key = (index, e.term().0);
                if self
                    .history
                    .committed
                    .get(&key)
                    .is_none_or(|&t| t > view.term)
                {
                    committed.push(key);
                }
            }
        }
        for index in 1..=view.applied {
            if let Some(e) = view.entry(index) {
                let term = e.term().0;
                // An entry is identified by its index and term (Raft §5.3: two entries that share
                // them but differ break log matching, checked on its own); the digest of its first
                // application is kept for the report.
                let seen = self
                    .history
                    .applied
                    .range((index, term, 0)..=(index, term, u128::MAX))
                    .next()
                    .is_some();
                if !seen {
                    applied.push((index, term, digest_debug(e)));
                }
            }
        }
        leaders.retain(|l| !self.history.leaders.contains(l));
        if leaders.is_empty() && committed.is_empty() && applied.is_empty() {
            return;
        }
        let term = view.term;
        let history = Arc::make_mut(&mut self.history);
        history.leaders.extend(leaders);
        for key in committed {
            let seen = history.committed.entry(key).or_insert(term);
            *seen = (*seen).min(term);
        }
        history.applied.extend(applied);
        self.history_fp = digest_debug(history);
    }
}

// ----- actions ----------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    /// Deliver the in-flight message at this position.
    Deliver(usize),
    /// Put a second copy of this message in flight.
    Duplicate(usize),
    /// Lose this message.
    Drop(usize),
    /// Fire this node's timer at its deadline.
    Timeout(usize),
    /// Make this node's oldest pending batch durable and report it.
    Persist(usize),
    /// Crash this node and restart it from its storage.
    Crash(usize),
    /// Propose a command on this node (a leader).
    Propose(usize),
}

// ----- the properties ---------------------------------------------------------------------------

/// Whether a property must always hold or must hold somewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Always,
    Sometimes,
}

/// A property: its name, its kind, and whether it holds in a state.
type Prop = (&'static str, Kind, fn(&State) -> bool);

/// The checked properties (Raft Figure 3, with the paper's names), and examples that show the
/// search reaches interesting states.
const PROPERTIES: [Prop; 10] = [
    (
        "no core assertion or check_invariants fails",
        Kind::Always,
        |s| s.violation.is_none(),
    ),
    ("election safety (§5.2)", Kind::Always, election_safety),
    ("log matching (§5.3)", Kind::Always, log_matching),
    (
        "leader completeness (§5.4)",
        Kind::Always,
        leader_completeness,
    ),
    (
        "committed entries never change (§5.4)",
        Kind::Always,
        |s| {
            let indexes: Vec<u64> = s.history.committed.keys().map(|k| k.0).collect();
            indexes.windows(2).all(|w| w[0] != w[1])
        },
    ),
    ("state machine safety (§5.4.3)", Kind::Always, |s| {
        let indexes: Vec<u64> = s.history.applied.iter().map(|k| k.0).collect();
        indexes.windows(2).all(|w| w[0] != w[1])
    }),
    (
        "a leader is elected in a fresh cluster",
        Kind::Sometimes,
        |s| s.proposed_before == 0 && !s.history.leaders.is_empty(),
    ),
    ("a new leader is elected in term 2", Kind::Sometimes, |s| {
        s.history.leaders.iter().any(|l| l.0 == 2)
    }),
    (
        "a command proposed in the search is committed",
        Kind::Sometimes,
        |s| {
            (0..N).any(|i| {
            let v = s.view(i);
            (v.base + 1..=v.commit).filter_map(|k| v.entry(k)).any(|e| {
                matches!(e.payload, Payload::Command { seq, .. } if seq > u64::from(s.proposed_before))
            })
        })
        },
    ),
    (
        "a restarted node applies what was committed",
        Kind::Sometimes,
        |s| (0..N).any(|i| s.replicas[i].seed > 100 && !s.view(i).sm.is_empty()),
    ),
];

/// Election safety (Raft §5.2, Figure 3): at most one leader per term, over the whole history.
fn election_safety(s: &State) -> bool {
    let leaders = &s.history.leaders;
    leaders
        .iter()
        .zip(leaders.iter().skip(1))
        .all(|(a, b)| a.0 != b.0)
}

/// A log seen by index: `base` is the index before the first entry.
struct LogView<'a> {
    base: u64,
    entries: &'a [Entry],
}

impl LogView<'_> {
    fn at(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.base + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    fn last(&self) -> u64 {
        self.base + self.entries.len() as u64
    }
}

/// Log matching (Raft §5.3, Figure 3): if two logs hold an entry with the same index and term, the
/// logs are identical up to that index. Checked over every pair among the nodes' logs and their
/// durable logs.
fn log_matching(s: &State) -> bool {
    let mut logs: Vec<LogView<'_>> = Vec::with_capacity(2 * N);
    for i in 0..N {
        let view = s.view(i);
        logs.push(LogView {
            base: view.base,
            entries: &view.entries,
        });
        let durable = s.storage[i].state();
        logs.push(LogView {
            base: durable.base.index.0,
            entries: &durable.entries,
        });
    }
    for (a_at, a) in logs.iter().enumerate() {
        for b in &logs[a_at + 1..] {
            let low = a.base.max(b.base) + 1;
            let high = a.last().min(b.last());
            let same_id = |k: u64| a.at(k).map(|e| e.id) == b.at(k).map(|e| e.id);
            let Some(top) = (low..=high).rev().find(|&k| same_id(k)) else {
                continue;
            };
            if (low..=top).any(|k| a.at(k) != b.at(k)) {
                return false;
            }
        }
    }
    true
}

/// Leader completeness (Raft §5.4, Figure 3): an entry committed in term `t` is in the log of every
/// leader of a term above `t`.
fn leader_completeness(s: &State) -> bool {
    (0..N).all(|i| {
        let view = s.view(i);
        view.role != Role::Leader
            || s.history
                .committed
                .iter()
                .all(|(&(index, term), &committed_in)| {
                    committed_in >= view.term
                        || index <= view.base
                        || view.entry(index).is_some_and(|e| e.term().0 == term)
                })
    })
}

// ----- the model --------------------------------------------------------------------------------

struct RaftModel {
    bounds: Bounds,
    /// Per initial state, the longest paths explored from it (`usize::MAX`: no limit).
    depth_max: [usize; 2],
    cfgs: [Config; N],
    /// The initial states: a fresh cluster, and a leader with a lagging follower.
    inits: Vec<State>,
    /// Per property of `PROPERTIES`: the shallowest state that discovered it (a counterexample of
    /// an `always`, an example of a `sometimes`). Stateright keeps the *last* discovery it
    /// evaluates, not the first, so the model keeps its own.
    found: Vec<Found>,
}

/// The shallowest discovery of one property so far.
struct Found {
    depth: AtomicUsize,
    // Written by the checker threads, read once they are done (for the report only).
    #[allow(clippy::disallowed_types)]
    state: std::sync::Mutex<Option<State>>,
}

fn id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

fn index_of(node: NodeId) -> usize {
    usize::try_from(node.0 - 1).expect("small ids")
}

thread_local! {
    /// Set while the model runs the core: a panic there is a finding, reported with its path, not
    /// a crash of the test (the default hook would print every one).
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into its message.
fn quiet_catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

/// Whether position `k` of a sorted multiset starts a run of equal messages (identical copies
/// give identical successors: one action stands for all of them).
fn first_of_run(network: &[Msg], k: usize) -> bool {
    k == 0 || network[k - 1].fp != network[k].fp
}

impl RaftModel {
    fn new(bounds: Bounds, depth_max: [usize; 2]) -> RaftModel {
        // Timeouts as short as `Config::validate` allows relative to each other. Pre-vote on, as
        // shipped; check-quorum off: each node's clock moves only when its own timer fires, so a
        // node that has not fired yet is always "just started", and under check-quorum a node
        // ignores votes for an election timeout after it starts (a lease may count on it). Leader
        // stickiness only ever *withholds* votes, so without it the model explores a superset of
        // the vote interleavings that election safety and leader completeness depend on;
        // check-quorum's own behaviour is covered by the simulators and the scripted tests.
        let cfg = |i: usize| Config {
            id: id(i),
            election_timeout: Duration::from_millis(200),
            heartbeat_interval: Duration::from_millis(100),
            append_timeout: Duration::from_millis(100),
            check_quorum: false,
            ..Config::default()
        };
        let mut model = RaftModel {
            bounds,
            depth_max,
            cfgs: [cfg(0), cfg(1), cfg(2)],
            inits: Vec::new(),
            found: (0..PROPERTIES.len())
                .map(|_| Found {
                    depth: AtomicUsize::new(usize::MAX),
                    state: Default::default(),
                })
                .collect(),
        };
        let fresh = model.fresh();
        let lagging = model.leader_with_lagging_follower(&fresh);
        model.inits = vec![fresh, lagging];
        model
    }

    /// A brand-new cluster: three followers in term 0, nothing in flight.
    fn fresh(&self) -> State {
        let boot = Recovered::bootstrap((0..N).map(id));
        let mut nodes: Vec<Node> = (0..N)
            .map(|i| {
                let seed = i as u64 + 1;
                let cfg = self.cfgs[i].clone();
                Node::new(cfg, boot.clone(), Bytes::default(), seed, Instant::ZERO)
                    .expect("a bootstrap state starts")
            })
            .collect();
        let mut state = State {
            replicas: std::array::from_fn(|i| Replica {
                view: Arc::new(View::of(&nodes[i])),
                boot: Arc::new(boot.clone()),
                boot_at: Instant::ZERO,
                seed: i as u64 + 1,
                trace: None,
                fp: node_fingerprint(&nodes[i]),
            }),
            storage: std::array::from_fn(|_| Arc::new(MemStorage::new(boot.clone()))),
            storage_fp: std::array::from_fn(|_| digest_debug(&boot)),
            unpersisted: Default::default(),
            unpersisted_fp: [digest_debug(&Vec::<PersistBatch>::new()); N],
            network: Vec::new(),
            proposals: 0,
            proposed: 0,
            proposed_before: 0,
            crashes: 0,
            timeouts: 0,
            duplicates: 0,
            drops: 0,
            history: Arc::default(),
            history_fp: digest_debug(&History::default()),
            violation: None,
            fp: 0,
            path: None,
            depth: 0,
            root: 0,
        };
        for (i, node) in nodes.iter_mut().enumerate() {
            state.drain(i, node, self.bounds.in_flight_max);
        }
        state.refingerprint();
        state
    }

    /// The second initial state, reached from `fresh` by a scripted run through the model's own
    /// actions: n1 campaigns and wins term 1 (n3 votes), then n1's no-op and the command `a` are
    /// committed on n1 and n2 while every append to or from n3 is lost; everything is durable and
    /// nothing is in flight. From here a new election must respect the election restriction
    /// (Raft §5.4.1): n3's log lacks committed entries. The bound counters restart at zero.
    fn leader_with_lagging_follower(&self, fresh: &State) -> State {
        let n3 = id(2);
        let mut s = fresh.clone();
        let act = |s: &mut State, a: Action| {
            *s = self.next_state(s, a).expect("the scripted run runs");
            assert!(s.violation.is_none(), "the scripted run runs cleanly");
        };
        // Makes every write durable and delivers every message (dropping appends to and from n3),
        // until nothing moves.
        let quiesce = |s: &mut State| loop {
            if let Some(i) = (0..N).find(|&i| !s.unpersisted[i].is_empty()) {
                act(s, Action::Persist(i));
            } else if let Some(msg) = s.network.first() {
                let env = &msg.env;
                let replication = matches!(
                    env.body,
                    Body::Append(_)
                        | Body::AppendResp(_)
                        | Body::Heartbeat(_)
                        | Body::HeartbeatResp(_)
                );
                if replication && (env.to == n3 || env.from == n3) {
                    act(s, Action::Drop(0));
                } else {
                    act(s, Action::Deliver(0));
                }
            } else {
                break;
            }
        };
        act(&mut s, Action::Timeout(0)); // n1 campaigns
        quiesce(&mut s);
        act(&mut s, Action::Propose(0));
        quiesce(&mut s);
        act(&mut s, Action::Timeout(0)); // a heartbeat carries the commit index to n2
        quiesce(&mut s);
        let (v1, v2, v3) = (s.view(0), s.view(1), s.view(2));
        assert_eq!((v1.role, v1.term, v1.commit), (Role::Leader, 1, 2));
        assert_eq!((v2.term, v2.commit, v2.sm.as_slice()), (1, 2, &b"a"[..]));
        assert_eq!((v3.term, v3.vote, v3.last.index.0), (1, Some(1), 0));
        s.proposals = 0;
        s.proposed_before = s.proposed;
        s.crashes = 0;
        s.timeouts = 0;
        s.duplicates = 0;
        s.drops = 0;
        s.depth = 0;
        s.root = 1;
        s.refingerprint();
        s
    }

    /// Evaluates property `i` on `s` for the checker, remembering the shallowest discovery.
    fn verdict(&self, i: usize, s: &State) -> bool {
        let (_, kind, holds) = PROPERTIES[i];
        let value = holds(s);
        let discovered = match kind {
            Kind::Always => !value,
            Kind::Sometimes => value,
        };
        let found = &self.found[i];
        if discovered && s.depth < found.depth.load(Ordering::Relaxed) {
            let mut best = found.state.lock().unwrap_or_else(|e| e.into_inner());
            if best.as_ref().is_none_or(|b| s.depth < b.depth) {
                *best = Some(s.clone());
                found.depth.store(s.depth, Ordering::Relaxed);
            }
        }
        value
    }

    /// Rebuilds node `i`, lets `prepare` adjust the state (and hand back a freshly booted node
    /// instead, for a crash), feeds `step`, drains the outputs into the state, checks the node and
    /// keeps its new view. A panic in the core becomes the state's violation. `None` if the step
    /// changed nothing (a refused proposal).
    fn step_node(
        &self,
        state: &State,
        i: usize,
        step: Option<Step>,
        prepare: impl FnOnce(&mut State) -> Option<Node>,
    ) -> Option<State> {
        let mut next = state.clone();
        let result = quiet_catch(|| {
            let (mut node, mut trace) = match prepare(&mut next) {
                Some(booted) => (booted, None),
                None => (
                    state.replicas[i].materialize(&self.cfgs[i]),
                    state.replicas[i].trace.clone(),
                ),
            };
            if let Some(step) = step {
                if !feed(&mut node, &step) {
                    return None;
                }
                trace = Some(Arc::new(Trace { step, prev: trace }));
            }
            next.drain(i, &mut node, self.bounds.in_flight_max);
            node.check_invariants();
            Some((View::of(&node), node_fingerprint(&node), trace))
        });
        match result {
            Ok(None) => return None,
            Ok(Some((view, fp, trace))) => {
                let replica = &mut next.replicas[i];
                replica.view = Arc::new(view);
                replica.fp = fp;
                replica.trace = trace;
                next.observe(i);
            }
            Err(msg) => next.violation = Some(format!("{}: {msg}", id(i)).into()),
        }
        next.refingerprint();
        Some(next)
    }

    /// The successor of `state` by `action` (without the path bookkeeping of `next_state`).
    fn step(&self, state: &State, action: Action) -> Option<State> {
        match action {
            Action::Deliver(k) => {
                let env = (*state.network[k].env).clone();
                let i = index_of(env.to);
                let now = state.view(i).now;
                let step = Step::Input(now, Input::Message(env));
                self.step_node(state, i, Some(step), |s| {
                    s.network.remove(k);
                    None
                })
            }
            Action::Duplicate(k) => {
                let mut next = state.clone();
                let copy = next.network[k].clone();
                next.network.insert(k, copy);
                next.duplicates += 1;
                next.refingerprint();
                Some(next)
            }
            Action::Drop(k) => {
                let mut next = state.clone();
                next.network.remove(k);
                next.drops += 1;
                next.refingerprint();
                Some(next)
            }
            Action::Timeout(i) => {
                let (deadline, _why) = state.view(i).timer?;
                let step = Step::Input(deadline, Input::Timeout);
                self.step_node(state, i, Some(step), |s| {
                    s.timeouts += 1;
                    None
                })
            }
            Action::Persist(i) => {
                let seq = state.unpersisted[i].first()?.seq;
                let now = state.view(i).now;
                let step = Step::Input(now, Input::Persisted(seq));
                self.step_node(state, i, Some(step), |s| {
                    let batch = Arc::make_mut(&mut s.unpersisted[i]).remove(0);
                    s.unpersisted_fp[i] = digest_debug(&s.unpersisted[i]);
                    let storage = Arc::make_mut(&mut s.storage[i]);
                    storage.persist(&batch).expect("MemStorage never fails");
                    s.storage_fp[i] = digest_debug(storage.state());
                    None
                })
            }
            Action::Propose(i) => {
                let now = state.view(i).now;
                let seq = u64::from(state.proposed) + 1;
                let cmd = b'a' + state.proposed;
                self.step_node(state, i, Some(Step::Propose(now, seq, cmd)), |s| {
                    s.proposals += 1;
                    s.proposed += 1;
                    None
                })
            }
            Action::Crash(i) => self.step_node(state, i, None, |s| {
                s.crashes += 1;
                s.unpersisted[i] = Arc::default();
                s.unpersisted_fp[i] = digest_debug(&s.unpersisted[i]);
                let recovered = s.storage[i].recover().expect("MemStorage never fails");
                let replica = &mut s.replicas[i];
                replica.boot_at = replica.view.now;
                replica.boot = Arc::new(recovered.clone());
                // A restarted process draws a new seed, as a runtime would.
                replica.seed += 100;
                let cfg = self.cfgs[i].clone();
                let node = Node::new(
                    cfg,
                    recovered,
                    Bytes::default(),
                    replica.seed,
                    replica.boot_at,
                )
                .expect("durable state always recovers");
                Some(node)
            }),
        }
    }
}

impl Model for RaftModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        self.inits.clone()
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        if state.violation.is_some() || state.depth >= self.depth_max[state.root] {
            return;
        }
        let b = &self.bounds;
        for k in 0..state.network.len() {
            if first_of_run(&state.network, k) {
                actions.push(Action::Deliver(k));
            }
        }
        for i in 0..N {
            let view = state.view(i);
            let may_campaign = view.role == Role::Leader || view.term < b.term_max;
            if state.timeouts < b.timeouts_max && view.timer.is_some() && may_campaign {
                actions.push(Action::Timeout(i));
            }
            if !state.unpersisted[i].is_empty() {
                actions.push(Action::Persist(i));
            }
            if state.proposals < b.proposals_max && view.role == Role::Leader {
                actions.push(Action::Propose(i));
            }
        }
        if state.duplicates < b.duplicates_max && state.network.len() < b.in_flight_max {
            for k in 0..state.network.len() {
                if first_of_run(&state.network, k) {
                    actions.push(Action::Duplicate(k));
                }
            }
        }
        if state.drops < b.drops_max {
            for k in 0..state.network.len() {
                if first_of_run(&state.network, k) {
                    actions.push(Action::Drop(k));
                }
            }
        }
        if state.crashes < b.crashes_max {
            actions.extend((0..N).map(Action::Crash));
        }
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        let mut next = self.step(state, action.clone())?;
        next.depth = state.depth + 1;
        next.path = Some(Arc::new(PathLink {
            action,
            prev: state.path.clone(),
        }));
        Some(next)
    }

    fn properties(&self) -> Vec<Property<RaftModel>> {
        // A condition is a plain `fn`: one per entry of `PROPERTIES`, through `verdict`.
        macro_rules! property {
            ($i:literal) => {{
                let (name, kind, _) = PROPERTIES[$i];
                let condition: fn(&RaftModel, &State) -> bool = |m, s| m.verdict($i, s);
                match kind {
                    Kind::Always => Property::always(name, condition),
                    Kind::Sometimes => Property::sometimes(name, condition),
                }
            }};
        }
        vec![
            property!(0),
            property!(1),
            property!(2),
            property!(3),
            property!(4),
            property!(5),
            property!(6),
            property!(7),
            property!(8),
            property!(9),
        ]
    }
}

// ----- running ------------------------------------------------------------------------------------

/// One line per node: role, term, vote, last entry, commit, pending writes, durable state.
fn describe(s: &State) -> String {
    let mut out = String::new();
    for i in 0..N {
        let v = s.view(i);
        let durable = s.storage[i].state();
        let _ = write!(
            out,
            "{} {:?} t{} vote={:?} last={}@{} commit={} sm={:?} unpersisted={} \
             durable(t{} vote={:?} entries={}) | ",
            id(i),
            v.role,
            v.term,
            v.vote,
            v.last.index.0,
            v.last.term.0,
            v.commit,
            String::from_utf8_lossy(&v.sm),
            s.unpersisted[i].len(),
            durable.hard_state.term.0,
            durable.hard_state.vote.map(|v| v.0),
            durable.entries.len(),
        );
    }
    let _ = write!(out, "{} in flight", s.network.len());
    out
}

fn describe_action(s: &State, a: &Action) -> String {
    let msg = |k: usize| {
        let env = &s.network[k].env;
        format!("{}->{} t{} {}", env.from, env.to, env.term.0, env.body)
    };
    match a {
        Action::Deliver(k) => format!("deliver {}", msg(*k)),
        Action::Duplicate(k) => format!("duplicate {}", msg(*k)),
        Action::Drop(k) => format!("drop {}", msg(*k)),
        Action::Timeout(i) => format!(
            "{} timer fires ({:?})",
            id(*i),
            s.view(*i).timer.map(|(_, why)| why)
        ),
        Action::Persist(i) => format!(
            "{} persists batch {}",
            id(*i),
            s.unpersisted[*i].first().map_or(0, |b| b.seq.0)
        ),
        Action::Crash(i) => format!("{} crashes, restarts from its storage", id(*i)),
        Action::Propose(i) => format!("propose on {}", id(*i)),
    }
}

/// Prints how `s` was reached: each action (described in the state it was taken in), then the
/// final state and the core's panic, if any.
fn print_path(model: &RaftModel, s: &State) {
    let mut actions = Vec::new();
    let mut link = s.path.as_deref();
    while let Some(l) = link {
        actions.push(l.action.clone());
        link = l.prev.as_deref();
    }
    // Replayed from the fresh cluster: a state explored from the second initial state has that
    // state's scripted run at the start of its path, summarised rather than listed.
    let prefix = actions.len() - s.depth;
    if prefix > 0 {
        println!(
            "    from `n1 leads term 1, n3 lags` ({prefix} scripted steps from a fresh cluster):"
        );
    } else {
        println!("    from a fresh cluster:");
    }
    let mut at = model.fresh();
    for (n, action) in actions.into_iter().rev().enumerate() {
        if n >= prefix {
            println!(
                "    {:>2}. {}",
                n + 1 - prefix,
                describe_action(&at, &action)
            );
        }
        at = model.step(&at, action).expect("a recorded path replays");
    }
    println!("    final: {}", describe(&at));
    if let Some(v) = &at.violation {
        println!("    core panicked: {v}");
    }
}

/// Prints the checker's progress every ten seconds.
struct Progress;

impl Reporter<RaftModel> for Progress {
    fn report_checking(&mut self, data: ReportData) {
        if !data.done && data.duration.as_millis() % 10_000 < 200 && data.duration.as_secs() > 0 {
            println!(
                "  ... {} s: {} states, {} unique, depth {}",
                data.duration.as_secs(),
                data.total_states,
                data.unique_states,
                data.max_depth.saturating_sub(1)
            );
        }
    }

    fn report_discoveries(
        &mut self,
        _: &RaftModel,
        _: BTreeMap<&'static str, ReportDiscovery<RaftModel>>,
    ) {
        // `check` prints them, with shortest paths.
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(200)
    }
}

/// How far one check goes.
#[derive(Clone, Copy, Debug)]
struct Limits {
    threads: usize,
    /// Explore paths of at most this many steps from the fresh cluster and from the cluster with a
    /// lagging follower (`0`: only check that initial state; `usize::MAX`: no limit).
    depth_max: [usize; 2],
    timeout: Option<Duration>,
    /// For the re-check of a counterexample: no path longer than this.
    rerun_depth: Option<usize>,
}

/// What one run of the checker reached.
struct Outcome {
    states: usize,
    unique: usize,
    max_depth: usize,
    elapsed: Duration,
    timed_out: bool,
    /// Per property of `PROPERTIES`, its shallowest discovery.
    found: Vec<Option<State>>,
}

/// Runs stateright's BFS over the model, stopping at the first counterexample or at the limits.
fn run(bounds: Bounds, limits: Limits) -> Outcome {
    install_quiet_panic_hook();
    // Wall time of the check, for the report only (the model itself never reads a clock).
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let mut builder = RaftModel::new(bounds, limits.depth_max)
        .checker()
        .threads(limits.threads)
        .finish_when(HasDiscoveries::AnyFailures);
    if let Some(timeout) = limits.timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(depth) = limits.rerun_depth {
        // Stateright counts the initial state as depth 1 and expands states below the target.
        builder = builder.target_max_depth(depth + 2);
    }
    let checker = builder.spawn_bfs().join_and_report(&mut Progress);
    let elapsed = started.elapsed();
    Outcome {
        states: checker.state_count(),
        unique: checker.unique_state_count(),
        max_depth: checker.max_depth().saturating_sub(1),
        elapsed,
        timed_out: limits.timeout.is_some_and(|t| elapsed >= t),
        found: checker
            .model()
            .found
            .iter()
            .map(|f| f.state.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect(),
    }
}

/// Checks the model, prints its reach, the depth of each example and a shortest path to each
/// counterexample, and returns whether every `always` property held.
fn check(name: &str, bounds: Bounds, limits: Limits) -> bool {
    let depth = |d: usize| match d {
        0 => "not explored".to_string(),
        usize::MAX => "no depth limit".to_string(),
        d => format!("up to {d} steps"),
    };
    println!(
        "raft model check, {name}: {bounds:?}; from a fresh cluster: {}, from the lagging \
         follower: {}; {} threads{}",
        depth(limits.depth_max[0]),
        depth(limits.depth_max[1]),
        limits.threads,
        limits
            .timeout
            .map_or(String::new(), |t| format!(", time limit {} s", t.as_secs())),
    );
    let mut outcome = run(bounds, limits);
    let failed = PROPERTIES
        .iter()
        .zip(&outcome.found)
        .any(|((_, kind, _), found)| *kind == Kind::Always && found.is_some());
    let cut = if failed {
        "stopped at the first counterexample".to_string()
    } else if outcome.timed_out {
        // Breadth-first: the levels above the deepest one reached were completed.
        format!(
            "stopped by the time limit: breadth-first, every path of up to {} steps explored",
            outcome.max_depth.saturating_sub(1)
        )
    } else if limits.depth_max.iter().any(|&d| d > 0 && d < usize::MAX) {
        "exhaustive within the bounds and the depth limits".to_string()
    } else {
        "exhaustive within the bounds".to_string()
    };
    println!(
        "states explored: {}, unique: {}, max depth: {} steps, wall time: {:.1} s ({cut})",
        outcome.states,
        outcome.unique,
        outcome.max_depth,
        outcome.elapsed.as_secs_f64(),
    );
    let violated_at = PROPERTIES
        .iter()
        .zip(&outcome.found)
        .filter(|((_, kind, _), _)| *kind == Kind::Always)
        .filter_map(|(_, found)| found.as_ref().map(|s| s.depth))
        .min();
    if let (Some(depth), true) = (violated_at, limits.threads > 1) {
        // Threads share the frontier, so a state's first visit may not be by a shortest path; on
        // one thread the search is a strict BFS.
        println!("counterexample at depth {depth}: re-checking up to it on one thread");
        let rerun = run(
            bounds,
            Limits {
                threads: 1,
                rerun_depth: Some(depth),
                ..limits
            },
        );
        println!(
            "  re-check: {} states, {} unique, {:.1} s",
            rerun.states,
            rerun.unique,
            rerun.elapsed.as_secs_f64()
        );
        for (i, (_, kind, _)) in PROPERTIES.iter().enumerate() {
            if *kind == Kind::Always && rerun.found[i].is_some() {
                outcome.found[i] = rerun.found[i].clone();
            }
        }
    }
    let model = RaftModel::new(bounds, limits.depth_max);
    let mut ok = true;
    for ((name, kind, _), found) in PROPERTIES.iter().zip(&outcome.found) {
        match (kind, found) {
            (Kind::Always, None) => println!("  always `{name}`: holds"),
            (Kind::Always, Some(s)) => {
                ok = false;
                println!(
                    "  always `{name}`: VIOLATED, shortest path ({} steps):",
                    s.depth
                );
                print_path(&model, s);
            }
            (Kind::Sometimes, None) => println!("  sometimes `{name}`: not reached"),
            (Kind::Sometimes, Some(s)) => {
                println!("  sometimes `{name}`: reached in {} steps", s.depth);
                if std::env::var_os("RAFT_MODEL_EXAMPLES").is_some() {
                    print_path(&model, s);
                }
            }
        }
    }
    ok
}

/// The check that runs with every `cargo test`, exhaustive within its bounds and depth limits.
#[test]
fn raft_model_bounded() {
    let general = Bounds {
        term_max: 3,
        proposals_max: 1,
        crashes_max: 1,
        timeouts_max: 2,
        in_flight_max: 4,
        duplicates_max: 0,
        drops_max: 0,
    };
    let both = Limits {
        threads: 2,
        depth_max: [11, 9],
        timeout: None,
        rerun_depth: None,
    };
    let lagging = Limits {
        depth_max: [0, 14],
        ..both
    };
    let one_timer = Bounds {
        timeouts_max: 1,
        ..general
    };
    let ok = [
        check("both initial states, two timer firings", general, both),
        check("lagging follower, one timer firing", one_timer, lagging),
    ];
    assert!(
        ok.iter().all(|&ok| ok),
        "a Raft safety property was violated"
    );
}

/// The deeper check, about ten minutes on two cores:
/// `cargo test --release -p paloma-core --test raft_model -- --ignored --nocapture`.
/// The first two checks explore every state within their bounds (no depth limit); the third, with
/// duplication, loss, a second proposal and a second timer firing, goes as deep as five minutes of
/// breadth-first search allow.
#[test]
#[ignore = "ten minutes: cargo test --release -p paloma-core --test raft_model -- --ignored --nocapture"]
fn raft_model_deep() {
    let one_timer = Bounds {
        term_max: 3,
        proposals_max: 1,
        crashes_max: 1,
        timeouts_max: 1,
        in_flight_max: 4,
        duplicates_max: 0,
        drops_max: 0,
    };
    let larger = Bounds {
        proposals_max: 2,
        timeouts_max: 2,
        in_flight_max: 5,
        duplicates_max: 1,
        drops_max: 1,
        ..one_timer
    };
    let all = Limits {
        threads: 2,
        depth_max: [usize::MAX, 0],
        timeout: None,
        rerun_depth: None,
    };
    let lagging = Limits {
        depth_max: [0, usize::MAX],
        ..all
    };
    let timed = Limits {
        timeout: Some(Duration::from_secs(300)),
        ..lagging
    };
    let ok = [
        check("fresh cluster, one timer firing", one_timer, all),
        check("lagging follower, one timer firing", one_timer, lagging),
        check("lagging follower, larger bounds", larger, timed),
    ];
    assert!(
        ok.iter().all(|&ok| ok),
        "a Raft safety property was violated"
    );
}

/// The fingerprint's normalisation: `RaftNode`'s `Debug` still ends with its stats, shifting a
/// node's clock does not change its fingerprint, and a different election deadline does.
#[test]
fn node_fingerprint_ignores_stats_and_clock_shifts() {
    let cfg = Config {
        id: id(0),
        ..Config::default()
    };
    let boot = Recovered::bootstrap((0..N).map(id));
    let node = |seed, at| Node::new(cfg.clone(), boot.clone(), Bytes::default(), seed, at).unwrap();
    let a = node(1, Instant::ZERO);
    let b = node(1, Instant::from_millis(5_000));
    assert_eq!(node_fingerprint(&a), node_fingerprint(&b));
    let c = node(2, Instant::ZERO);
    assert_ne!(
        node_fingerprint(&a),
        node_fingerprint(&c),
        "the jitter shows"
    );
}
