//! A unit-level Raft harness in the style of etcd raft's interaction tests (`rafttest/`): an N-node
//! in-memory cluster of `RaftNode<TestSm>` over `MemStorage`, one virtual clock, and a network that
//! does nothing unless told to. A test decides which message is delivered, dropped, duplicated or
//! re-injected, which node's timer fires, when a node's writes become durable and when it crashes.
//!
//! Every step is followed by the cluster-wide checkers, so a scripted test or a random schedule
//! that breaks one of them panics at the step that broke it: the simulators' `SafetyChecker`
//! (`paloma_core::raft::check`: election safety, committed entries never change, leader
//! completeness, state machine safety at equal applied index, monotonic term/commit/applied,
//! durable votes never regress, `check_invariants` on every live node; and at the boundary, from
//! the `MemStorage` disks: every message's promise durable before it leaves, every leader commit
//! durable on a quorum), plus the read guarantee of thesis §6.4 (linearizable ReadIndex answers).
//!
//! Conventions:
//! - time moves only through [`Cluster::tick`], [`Cluster::advance`] and [`Cluster::run_for`];
//!   every input is given at the cluster's `now`;
//! - outputs are drained after every input (the driving contract); `Send`s go into the in-flight
//!   queue, `Event`s into the node's event list, `Persist` batches either straight to `MemStorage`
//!   (`auto_persist`) or into the node's unpersisted queue until [`Cluster::persist`];
//! - a crash loses exactly the unpersisted batches (optionally applying a torn prefix of the first).

// Each test binary that includes this module uses a different subset of it.
#![allow(dead_code)]

use paloma_core::raft::check::SafetyChecker;
use paloma_core::raft::io::{Event, Input, Output, Role, TimerKind};
use paloma_core::raft::message::{AppendResponse, Body, Envelope};
use paloma_core::raft::state_machine::SnapshotDecodeError;
use paloma_core::raft::storage::{MemStorage, PersistBatch, PersistOp, Recovered, Storage};
use paloma_core::raft::{
    ApplyContext, Config, Entry, HardState, MembershipChange, MembershipError, Payload,
    ProposeError, RaftNode, ReadError, StateMachine, Status, TransferError,
};
use paloma_core::{ClientId, Instant, LogId, LogIndex, NodeId, ReadId, Term};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Upper bound on messages delivered by one `deliver_all`/`stabilize`: a livelock fails loudly.
const DELIVERIES_MAX: usize = 1_000_000;

/// The replicated state machine of the tests: the list of commands applied, in order. Its response
/// is the number of commands applied so far (little endian), so a duplicate is easy to spot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestSm {
    /// Every command applied, in order.
    pub commands: Vec<Vec<u8>>,
}

impl TestSm {
    /// A digest of the whole state (compared across replicas at equal applied index).
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.snapshot()).as_bytes()
    }

    /// How many times `command` was applied.
    pub fn count(&self, command: &[u8]) -> usize {
        self.commands
            .iter()
            .filter(|c| c.as_slice() == command)
            .count()
    }
}

impl StateMachine for TestSm {
    fn apply(&mut self, _: &ApplyContext, command: &[u8]) -> Vec<u8> {
        self.commands.push(command.to_vec());
        (self.commands.len() as u64).to_le_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.commands).expect("encoding to a Vec cannot fail")
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError> {
        self.commands = postcard::from_bytes(data)?;
        Ok(())
    }
}

/// One replica with its storage, its not-yet-durable writes and everything it reported.
#[derive(Debug)]
pub struct SimNode {
    /// The replica's id.
    pub id: NodeId,
    /// Its configuration (reused on restart).
    pub cfg: Config,
    /// The core under test.
    pub raft: RaftNode<TestSm>,
    /// What survived so far: every batch acknowledged with `Persisted`.
    pub storage: MemStorage,
    /// Batches handed out by the core but not yet durable, oldest first.
    pub unpersisted: VecDeque<PersistBatch>,
    /// Every event since the last `take_events`, in order.
    pub events: Vec<Event>,
    /// Every persist batch emitted since the last `take_batches` (durable or not).
    pub batches: Vec<PersistBatch>,
    /// Whether the process is running.
    pub up: bool,
    /// Restarts so far (feeds the restart seed).
    pub restarts: u64,
}

/// The checkers' memory of what the cluster has promised.
#[derive(Debug, Default)]
pub struct History {
    /// The simulators' safety checker (leaders per term, committed entries, state digests).
    pub checker: SafetyChecker,
    /// The highest commit index ever observed on any node.
    pub commit_max: LogIndex,
    /// Reads in progress: id -> (node, the commit index a linearizable answer must reach).
    pub reads: BTreeMap<ReadId, (NodeId, LogIndex)>,
    /// A test delivered a message no node sent (`deliver_envelope`): acknowledgements may be
    /// fabricated, so a leader's commit need not be durable on a quorum, and that boundary check
    /// is off from then on.
    pub fabricated: bool,
}

/// The cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The replicas.
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// The virtual clock.
    pub now: Instant,
    /// Messages in flight, in send order.
    pub net: VecDeque<Envelope>,
    /// Acknowledge every persist batch as soon as it is emitted.
    pub auto_persist: bool,
    /// Run the checkers after every step.
    pub checking: bool,
    /// Directed links that lose everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose batches wait for an explicit `persist` even under `auto_persist`.
    held: BTreeSet<NodeId>,
    /// Messages sent, by (from, to, kind), partitioned or not.
    pub sent: BTreeMap<(NodeId, NodeId, &'static str), u64>,
    /// What the checkers remember.
    pub history: History,
}

/// The name of a message kind, for counting and filtering.
pub fn kind(body: &Body) -> &'static str {
    match body {
        Body::PreVote(_) => "PreVote",
        Body::PreVoteResp(_) => "PreVoteResp",
        Body::Vote(_) => "Vote",
        Body::VoteResp(_) => "VoteResp",
        Body::Append(_) => "Append",
        Body::AppendResp(AppendResponse::Accepted { .. }) => "AppendAccepted",
        Body::AppendResp(AppendResponse::Rejected { .. }) => "AppendRejected",
        Body::Heartbeat(_) => "Heartbeat",
        Body::HeartbeatResp(_) => "HeartbeatResp",
        Body::Snapshot(_) => "Snapshot",
        Body::SnapshotResp(_) => "SnapshotResp",
        Body::TimeoutNow => "TimeoutNow",
        Body::ReadIndex(_) => "ReadIndex",
        Body::ReadIndexResp(..) => "ReadIndexResp",
        Body::Removed { .. } => "Removed",
    }
}

/// Shorthand for `NodeId(n)`.
pub fn n(id: u64) -> NodeId {
    NodeId(id)
}

/// The default test configuration for `id` (1 s election timeout, 100 ms heartbeats).
pub fn config(id: NodeId) -> Config {
    Config {
        id,
        ..Config::default()
    }
}

/// A log entry with a no-op payload, for building divergent logs by hand.
pub fn noop(index: u64, term: u64) -> Entry {
    Entry {
        id: LogId::new(Term(term), LogIndex(index)),
        unix_ms: 0,
        payload: Payload::Noop,
    }
}

/// A hand-made message from `from` to `to` in `term`, for stepping one node with a message no node
/// sent (deliver it with [`Cluster::deliver_envelope`]).
pub fn msg(from: u64, to: u64, term: u64, body: Body) -> Envelope {
    Envelope {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

/// The recovered state of a member of a cluster of `voters` whose log holds entries with `terms`
/// (index 1, 2, ...) and whose hard state is at `term`.
pub fn recovered_with_log(voters: &[u64], terms: &[u64], term: u64) -> Recovered {
    let mut rec = Recovered::bootstrap(voters.iter().map(|v| NodeId(*v)));
    rec.entries = terms
        .iter()
        .enumerate()
        .map(|(i, t)| noop(i as u64 + 1, *t))
        .collect();
    rec.hard_state = HardState {
        term: Term(term),
        vote: None,
        commit: LogIndex(0),
    };
    rec
}

impl Cluster {
    /// A fresh cluster of voters `1..=size` with the default configuration.
    pub fn new(size: u64) -> Cluster {
        Cluster::with_config(size, |_| {})
    }

    /// A fresh cluster of voters `1..=size`; `tweak` adjusts each node's configuration.
    pub fn with_config(size: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let states = voters
            .iter()
            .map(|id| (*id, Recovered::bootstrap(voters.iter().copied())))
            .collect();
        Cluster::from_states(states, tweak)
    }

    /// A cluster whose nodes start from the given durable states (a hand-built log, a joining
    /// node's empty state...).
    pub fn from_states(states: Vec<(NodeId, Recovered)>, tweak: impl Fn(&mut Config)) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            now: Instant::ZERO,
            net: VecDeque::new(),
            auto_persist: true,
            checking: true,
            cut: BTreeSet::new(),
            held: BTreeSet::new(),
            sent: BTreeMap::new(),
            history: History::default(),
        };
        for (id, state) in states {
            let mut cfg = config(id);
            tweak(&mut cfg);
            cluster.add_node_with(cfg, state);
        }
        cluster.check();
        cluster
    }

    /// Starts a new process `cfg.id` from `state` (a learner joins with `Recovered::default()`).
    pub fn add_node_with(&mut self, cfg: Config, state: Recovered) {
        let id = cfg.id;
        assert!(!self.nodes.contains_key(&id), "{id} already exists");
        let storage = MemStorage::new(state);
        let raft = RaftNode::new(
            cfg.clone(),
            storage.recover().expect("in memory"),
            TestSm::default(),
            id.0,
            self.now,
        )
        .expect("node starts");
        let node = SimNode {
            id,
            cfg,
            raft,
            storage,
            unpersisted: VecDeque::new(),
            events: Vec::new(),
            batches: Vec::new(),
            up: true,
            restarts: 0,
        };
        self.nodes.insert(id, node);
        self.drain(id);
    }

    /// Adds an empty node `id` with the default configuration adjusted by `tweak`.
    pub fn add_empty_node(&mut self, id: NodeId, tweak: impl Fn(&mut Config)) {
        let mut cfg = config(id);
        tweak(&mut cfg);
        self.add_node_with(cfg, Recovered::default());
    }

    // ----- inspection ---------------------------------------------------------------------------

    /// The replica `id`.
    pub fn node(&self, id: NodeId) -> &SimNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The core of replica `id`.
    pub fn raft(&self, id: NodeId) -> &RaftNode<TestSm> {
        &self.node(id).raft
    }

    /// The status of replica `id`.
    pub fn status(&self, id: NodeId) -> Status {
        self.raft(id).status()
    }

    /// The running leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.up && n.raft.status().role == Role::Leader)
            .max_by_key(|n| n.raft.status().term)
            .map(|n| n.id)
    }

    /// Ids of all nodes, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The terms of `id`'s held log entries, from its first held index.
    pub fn log_terms(&self, id: NodeId) -> Vec<u64> {
        self.raft(id).log().entries().map(|e| e.term().0).collect()
    }

    /// Takes `id`'s events.
    pub fn take_events(&mut self, id: NodeId) -> Vec<Event> {
        std::mem::take(&mut self.node_mut(id).events)
    }

    /// Takes `id`'s emitted persist batches.
    pub fn take_batches(&mut self, id: NodeId) -> Vec<PersistBatch> {
        std::mem::take(&mut self.node_mut(id).batches)
    }

    /// `(index, response)` of every `Applied` event `id` reported so far (not taken).
    pub fn applied(&self, id: NodeId) -> Vec<(LogIndex, Vec<u8>)> {
        self.node(id)
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Applied {
                    index, response, ..
                } => Some((*index, response.clone())),
                _ => None,
            })
            .collect()
    }

    /// Ids of every `ReadReady` event `id` reported so far (not taken), with their index.
    pub fn reads_ready(&self, id: NodeId) -> Vec<(ReadId, LogIndex)> {
        self.node(id)
            .events
            .iter()
            .filter_map(|e| match e {
                Event::ReadReady { id, index } => Some((*id, *index)),
                _ => None,
            })
            .collect()
    }

    /// Ids of every `ReadFailed` event `id` reported so far (not taken).
    pub fn reads_failed(&self, id: NodeId) -> Vec<ReadId> {
        self.node(id)
            .events
            .iter()
            .filter_map(|e| match e {
                Event::ReadFailed { id } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Messages sent from `from` to `to` of `kind` so far (including those later lost).
    pub fn sent_count(&self, from: NodeId, to: NodeId, kind: &str) -> u64 {
        self.sent
            .iter()
            .filter(|((f, t, k), _)| *f == from && *t == to && *k == kind)
            .map(|(_, c)| *c)
            .sum()
    }

    /// In-flight messages matching `filter`.
    pub fn in_flight(&self, filter: impl Fn(&Envelope) -> bool) -> usize {
        self.net.iter().filter(|m| filter(m)).count()
    }

    // ----- driving one node -----------------------------------------------------------------------

    /// Drains `id`'s outputs (the driving contract: after every input).
    fn drain(&mut self, id: NodeId) {
        let now = self.now;
        let auto_persist = self.auto_persist && !self.held.contains(&id);
        loop {
            let node = self.nodes.get_mut(&id).expect("exists");
            let Some(out) = node.raft.poll_output() else {
                break;
            };
            match out {
                Output::Persist(batch) => {
                    node.batches.push(batch.clone());
                    if auto_persist && node.unpersisted.is_empty() {
                        node.storage.persist(&batch).expect("in memory");
                        if self.checking {
                            let hs = node.storage.state().hard_state;
                            self.history
                                .checker
                                .observe_durable(id, hs.term, hs.vote)
                                .unwrap_or_else(|v| panic!("{v}"));
                        }
                        node.raft.handle(now, Input::Persisted(batch.seq));
                    } else {
                        node.unpersisted.push_back(batch);
                    }
                }
                Output::Send(env) => {
                    assert_eq!(env.from, id, "a node sends as itself");
                    if self.checking {
                        self.history
                            .checker
                            .observe_send(&env, node.storage.state())
                            .unwrap_or_else(|v| panic!("{v}"));
                    }
                    *self
                        .sent
                        .entry((env.from, env.to, kind(&env.body)))
                        .or_default() += 1;
                    if !self.cut.contains(&(env.from, env.to)) {
                        self.net.push_back(env);
                    }
                }
                Output::Event(ev) => {
                    if let Event::ReadReady { id: rid, index } = ev {
                        let applied = node.raft.status().applied;
                        assert!(applied >= index, "{id}: ReadReady({rid:?}) at {index:?} before applying it ({applied:?})");
                        if let Some((reader, floor)) = self.history.reads.remove(&rid) {
                            assert_eq!(reader, id, "read {rid:?} answered on another node");
                            assert!(
                                index >= floor,
                                "{id}: stale read {rid:?}: index {index:?} but {floor:?} was committed before the read began"
                            );
                        }
                    }
                    if let Event::ReadFailed { id: rid } = ev {
                        self.history.reads.remove(&rid);
                    }
                    node.events.push(ev);
                }
            }
        }
    }

    /// Feeds `input` to `id` at `now` and drains it.
    pub fn handle(&mut self, id: NodeId, input: Input) {
        let now = self.now;
        let node = self.node_mut(id);
        assert!(node.up, "{id} is down");
        node.raft.handle(now, input);
        self.drain(id);
        self.after_step();
    }

    /// Advances the clock to `id`'s next deadline (if it is in the future) and fires it.
    pub fn tick(&mut self, id: NodeId) -> TimerKind {
        let node = self.node(id);
        assert!(node.up, "{id} is down");
        let (deadline, why) = node
            .raft
            .poll_timeout()
            .unwrap_or_else(|| panic!("{id} has no timer"));
        if deadline > self.now {
            self.now = deadline;
        }
        self.handle(id, Input::Timeout);
        why
    }

    /// Ticks `id` until `pred` holds (at most `ticks_max` times); returns how many ticks it took.
    pub fn tick_until(
        &mut self,
        id: NodeId,
        ticks_max: usize,
        pred: impl Fn(&Cluster) -> bool,
    ) -> usize {
        for i in 0..ticks_max {
            if pred(self) {
                return i;
            }
            self.tick(id);
        }
        assert!(
            pred(self),
            "{id}: condition not reached after {ticks_max} ticks"
        );
        ticks_max
    }

    /// Moves the clock forward without firing anything.
    pub fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
    }

    /// Makes `id`'s oldest unpersisted batch durable and acknowledges it. Returns false if none.
    pub fn persist_one(&mut self, id: NodeId) -> bool {
        let now = self.now;
        let checking = self.checking;
        let node = self.nodes.get_mut(&id).expect("exists");
        let Some(batch) = node.unpersisted.pop_front() else {
            return false;
        };
        node.storage.persist(&batch).expect("in memory");
        if checking {
            let hs = node.storage.state().hard_state;
            self.history
                .checker
                .observe_durable(id, hs.term, hs.vote)
                .unwrap_or_else(|v| panic!("{v}"));
        }
        if node.up {
            node.raft.handle(now, Input::Persisted(batch.seq));
            self.drain(id);
        }
        self.after_step();
        true
    }

    /// Makes all of `id`'s batches durable, including those the acknowledgements produce.
    pub fn persist(&mut self, id: NodeId) {
        while self.persist_one(id) {}
    }

    /// Makes `id`'s writes wait for an explicit `persist` even under `auto_persist` (a slow disk).
    pub fn hold_persist(&mut self, id: NodeId) {
        self.held.insert(id);
    }

    /// Undoes `hold_persist`.
    pub fn release_persist(&mut self, id: NodeId) {
        self.held.remove(&id);
    }

    /// Persists everything on every running node whose writes are not held.
    pub fn persist_all(&mut self) {
        for id in self.ids() {
            if self.node(id).up && !self.held.contains(&id) {
                self.persist(id);
            }
        }
    }

    /// Crashes `id` (its unpersisted batches are lost) and restarts it from `MemStorage`.
    pub fn crash(&mut self, id: NodeId) {
        self.crash_torn(id, 0);
    }

    /// Crashes `id` after `ops_kept` operations of its oldest unpersisted batch reached the disk (a
    /// torn write; `usize::MAX`: the whole batch was durable but not yet acknowledged), and
    /// restarts it.
    pub fn crash_torn(&mut self, id: NodeId, ops_kept: usize) {
        self.stop_torn(id, ops_kept);
        self.restart(id);
    }

    /// Stops `id`, losing its unpersisted batches. Messages to it are lost while it is down.
    pub fn stop(&mut self, id: NodeId) {
        self.stop_torn(id, 0);
    }

    fn stop_torn(&mut self, id: NodeId, ops_kept: usize) {
        let node = self.node_mut(id);
        if let Some(first) = node.unpersisted.front() {
            for op in first.ops.iter().take(ops_kept) {
                node.storage.apply_op(op);
            }
        }
        node.unpersisted.clear();
        node.up = false;
    }

    /// Restarts a stopped `id` from what its storage holds.
    pub fn restart(&mut self, id: NodeId) {
        let now = self.now;
        let node = self.node_mut(id);
        assert!(!node.up, "{id} is running");
        node.restarts += 1;
        let seed = id.0.wrapping_mul(1_000_003).wrapping_add(node.restarts);
        let recovered = node.storage.recover().expect("in memory");
        node.raft = RaftNode::new(node.cfg.clone(), recovered, TestSm::default(), seed, now)
            .expect("restart from durable state");
        node.up = true;
        // A new incarnation starts its commit and applied indexes over from what is durable.
        self.history.checker.on_restart(id);
        self.drain(id);
        self.after_step();
    }

    // ----- application calls --------------------------------------------------------------------

    /// Proposes on `id` (unix time = the virtual clock in ms).
    pub fn propose(
        &mut self,
        id: NodeId,
        client: u64,
        seq: u64,
        data: &[u8],
    ) -> Result<LogIndex, ProposeError> {
        let now = self.now;
        let unix_ms = now.as_nanos() / 1_000_000;
        let res =
            self.node_mut(id)
                .raft
                .propose(now, unix_ms, ClientId(client), seq, data.to_vec());
        self.drain(id);
        self.after_step();
        res
    }

    /// Asks `id` for a linearizable read; the checker remembers what it must observe.
    pub fn read(&mut self, id: NodeId, rid: u64) -> Result<(), ReadError> {
        let now = self.now;
        let floor = self.history.commit_max.max(
            self.nodes
                .values()
                .map(|n| n.raft.status().commit)
                .max()
                .unwrap_or_default(),
        );
        self.history.reads.insert(ReadId(rid), (id, floor));
        let res = self.node_mut(id).raft.read(now, ReadId(rid));
        if res.is_err() {
            self.history.reads.remove(&ReadId(rid));
        }
        self.drain(id);
        self.after_step();
        res
    }

    /// Asks `id` to change membership.
    pub fn change_membership(
        &mut self,
        id: NodeId,
        change: MembershipChange,
    ) -> Result<LogIndex, MembershipError> {
        let now = self.now;
        let res = self
            .node_mut(id)
            .raft
            .change_membership(now, now.as_nanos() / 1_000_000, change);
        self.drain(id);
        self.after_step();
        res
    }

    /// Asks leader `id` to hand leadership to `to`.
    pub fn transfer_leadership(&mut self, id: NodeId, to: NodeId) -> Result<(), TransferError> {
        let now = self.now;
        let res = self.node_mut(id).raft.transfer_leadership(now, to);
        self.drain(id);
        self.after_step();
        res
    }

    // ----- the network ----------------------------------------------------------------------------

    /// Delivers the in-flight message at `pos`. Returns false if the link is cut or `to` is down
    /// (the message is lost).
    pub fn deliver_at(&mut self, pos: usize) -> bool {
        let env = self.net.remove(pos).expect("position in range");
        self.deliver_sent(env)
    }

    /// Delivers `env` now, as if it just arrived (re-injection of a stale or duplicated message,
    /// or one made by hand: the commit-durability boundary check is off from then on).
    pub fn deliver_envelope(&mut self, env: Envelope) -> bool {
        self.history.fabricated = true;
        self.deliver_sent(env)
    }

    /// Delivers again `env`, a copy of a message a node really sent (network duplication): unlike
    /// `deliver_envelope`, every checker stays on.
    pub fn redeliver(&mut self, env: Envelope) -> bool {
        self.deliver_sent(env)
    }

    /// Delivers `env`, which a node sent, unless its link is cut or its addressee is down.
    fn deliver_sent(&mut self, env: Envelope) -> bool {
        let to = env.to;
        if self.cut.contains(&(env.from, to)) || !self.nodes.get(&to).is_some_and(|n| n.up) {
            return false;
        }
        self.handle(to, Input::Message(env));
        true
    }

    /// Delivers the oldest in-flight message from `from` to `to`. Returns false if there is none.
    pub fn deliver(&mut self, from: NodeId, to: NodeId) -> bool {
        match self.net.iter().position(|m| m.from == from && m.to == to) {
            Some(pos) => {
                self.deliver_at(pos);
                true
            }
            None => false,
        }
    }

    /// Delivers the oldest in-flight message matching `filter` until none matches; others stay in
    /// flight. Returns how many were taken from the network.
    pub fn deliver_matching(&mut self, filter: impl Fn(&Envelope) -> bool) -> usize {
        let mut delivered = 0;
        while let Some(pos) = self.net.iter().position(&filter) {
            self.deliver_at(pos);
            delivered += 1;
            assert!(
                delivered < DELIVERIES_MAX,
                "deliver_matching does not terminate"
            );
        }
        delivered
    }

    /// Delivers every in-flight message, and those they cause, in send order.
    pub fn deliver_all(&mut self) -> usize {
        self.deliver_matching(|_| true)
    }

    /// Delivers and persists until nothing is left to do.
    pub fn stabilize(&mut self) {
        for _ in 0..DELIVERIES_MAX {
            self.persist_all();
            if self.net.is_empty()
                && self
                    .nodes
                    .values()
                    .all(|n| !n.up || n.unpersisted.is_empty() || self.held.contains(&n.id))
            {
                return;
            }
            self.deliver_all();
        }
        panic!("stabilize does not terminate");
    }

    /// Loses every in-flight message matching `filter`; returns how many.
    pub fn drop_messages(&mut self, filter: impl Fn(&Envelope) -> bool) -> usize {
        let before = self.net.len();
        self.net.retain(|m| !filter(m));
        before - self.net.len()
    }

    /// Removes and returns every in-flight message matching `filter` (to re-inject later).
    pub fn take_messages(&mut self, filter: impl Fn(&Envelope) -> bool) -> Vec<Envelope> {
        let (taken, kept): (Vec<Envelope>, Vec<Envelope>) =
            self.net.drain(..).partition(|m| filter(m));
        self.net = kept.into();
        taken
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Cuts only `from -> to`.
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    // ----- composite steps --------------------------------------------------------------------------

    /// Lets time pass for `span`: fires every node's timers in deadline order (ties by id) and
    /// stabilizes after each, as a healthy runtime with a zero-latency network would.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        loop {
            let next = self
                .nodes
                .values()
                .filter(|n| n.up)
                .filter_map(|n| n.raft.poll_timeout().map(|(at, _)| (at, n.id)))
                .min();
            match next {
                Some((at, id)) if at <= end => {
                    if at > self.now {
                        self.now = at;
                    }
                    self.handle(id, Input::Timeout);
                    self.stabilize();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Lets half an election timeout pass (several heartbeats): followers learn the commit index
    /// and appends presumed lost are resent.
    pub fn settle(&mut self) {
        self.run_for(Duration::from_millis(500));
    }

    /// Makes `id` campaign (firing its election timer) and runs the election to completion.
    pub fn elect(&mut self, id: NodeId) {
        for _ in 0..10 {
            self.tick(id);
            self.stabilize();
            if self.status(id).role == Role::Leader {
                return;
            }
        }
        panic!("{id} could not be elected: {:?}", self.status(id));
    }

    // ----- checkers -------------------------------------------------------------------------------

    fn after_step(&mut self) {
        if self.checking {
            self.check();
        }
    }

    /// Runs every cluster-wide checker on the running nodes: the `SafetyChecker` (which also runs
    /// `check_invariants`), and at the boundary, for each leader, that its commit index is durable
    /// on a quorum of the `MemStorage` disks.
    pub fn check(&mut self) {
        let fabricated = self.history.fabricated;
        for node in self.nodes.values().filter(|n| n.up) {
            let raft = &node.raft;
            self.history.commit_max = self.history.commit_max.max(raft.commit());
            let checker = &mut self.history.checker;
            checker
                .observe(raft, TestSm::digest)
                .unwrap_or_else(|v| panic!("{v}"));
            if !fabricated {
                let nodes = &self.nodes;
                checker
                    .observe_commit_durable(raft, |id| nodes.get(&id).map(|n| n.storage.state()))
                    .unwrap_or_else(|v| panic!("{v}"));
            }
        }
    }

    /// Asserts that every running node holds the same log suffix as `leader` and applied it all.
    pub fn assert_converged(&self, leader: NodeId) {
        let lead = self.status(leader);
        for node in self
            .nodes
            .values()
            .filter(|n| n.up && n.raft.status().membership.contains(n.id))
        {
            let st = node.raft.status();
            assert_eq!(
                st.last, lead.last,
                "{} last entry differs from the leader's",
                node.id
            );
            assert_eq!(
                st.commit, lead.commit,
                "{} commit differs from the leader's",
                node.id
            );
            assert_eq!(
                st.applied, lead.commit,
                "{} has not applied everything",
                node.id
            );
            assert_eq!(
                node.raft.state_machine(),
                self.raft(leader).state_machine(),
                "{} state differs",
                node.id
            );
        }
    }
}

/// Whether `op` is a truncation.
pub fn is_truncate(op: &PersistOp) -> bool {
    matches!(op, PersistOp::Truncate { .. })
}

// ----- shared scenario builders ---------------------------------------------------------------

/// The election timeout of the default configuration, the unit the scripted tests count in.
pub const ET: Duration = Duration::from_millis(1000);

/// Makes `id` campaign and delivers only election traffic, so the new leader's first appends stay
/// in flight for the test to schedule.
pub fn campaign_only(c: &mut Cluster, id: NodeId) {
    for _ in 0..5 {
        c.tick(id);
        c.deliver_matching(is_election);
        if c.status(id).role == Role::Leader {
            return;
        }
    }
    panic!("{id} could not win an election: {:?}", c.status(id));
}

/// Election traffic: pre-votes, votes and their answers.
pub fn is_election(m: &Envelope) -> bool {
    matches!(
        m.body,
        Body::PreVote(_) | Body::PreVoteResp(_) | Body::Vote(_) | Body::VoteResp(_)
    )
}

/// Snapshot every 5 applied entries, keep 2 behind, 64-byte chunks.
pub fn snapshot_config(cfg: &mut Config) {
    cfg.snapshot_threshold_entries = 5;
    cfg.snapshot_trailing_entries = 2;
    cfg.snapshot_chunk_bytes = 64;
}

/// Three nodes with `snapshot_config`.
pub fn snapshot_cluster() -> Cluster {
    Cluster::with_config(3, snapshot_config)
}

/// Makes n1 snapshot and compact past n3 while n3 is cut off, then heals.
pub fn lagging_follower_behind_snapshot() -> Cluster {
    let mut c = snapshot_cluster();
    c.elect(n(1));
    c.isolate(n(3));
    for seq in 1..=30 {
        c.propose(n(1), 1, seq, format!("command number {seq:04}").as_bytes())
            .unwrap();
        c.stabilize();
    }
    let lead = c.raft(n(1));
    assert!(lead.stats().snapshots_taken >= 5);
    assert!(
        lead.log().base().index > LogIndex(1),
        "compacted past n3's log"
    );
    assert!(lead.log().snapshot().data.len() > 4 * 64, "several chunks");
    c.heal();
    c
}
