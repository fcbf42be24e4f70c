//! An in-memory cluster of replicas for tests and benchmarks (compiled only for tests and the
//! `testing` feature): a perfect network delivered in rounds, disks that persist at once, one
//! clock. The chaos lives in the simulators (`scenarios`); this is the quiet bench.

use super::protocol::ReplicaFrame;
use super::{Replica, ReplicaConfig, ReplicaInput, ReplicaOutput};
use crate::ids::{ConnId, NodeId};
use crate::raft::io::Role;
use crate::raft::storage::{MemStorage, Recovered, Storage};
use crate::raft::Config;
use crate::time::{Instant, Now};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// A cluster of replicas on a perfect network.
#[derive(Debug)]
pub struct LocalCluster {
    /// The replicas, by id.
    pub replicas: BTreeMap<NodeId, Replica>,
    disks: BTreeMap<NodeId, MemStorage>,
    peer_queue: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    /// Frames each connection received, in order.
    pub received: BTreeMap<ConnId, VecDeque<ReplicaFrame>>,
    conn_node: BTreeMap<ConnId, NodeId>,
    next_conn: u64,
    /// The shared clock.
    pub now: Now,
    /// A clock in nanoseconds supplied by a benchmark (the core never reads one): when set, the
    /// time spent in each replica's [`LocalCluster::input`] (its handling and the routing of its
    /// outputs, persists included) is added to `busy_ns`.
    pub meter: Option<fn() -> u64>,
    /// Nanoseconds by `meter` spent driving each replica.
    pub busy_ns: BTreeMap<NodeId, u64>,
}

impl LocalCluster {
    /// `n` replicas bootstrapped together with `cfg` (its `raft.id` is set per replica).
    #[must_use]
    pub fn new(n: u64, cfg: &ReplicaConfig) -> LocalCluster {
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let now = Now {
            instant: Instant::ZERO,
            unix_ms: 1_700_000_000_000,
        };
        let mut replicas = BTreeMap::new();
        let mut disks = BTreeMap::new();
        for &id in &ids {
            let disk = MemStorage::new(Recovered::bootstrap(ids.iter().copied()));
            let c = ReplicaConfig {
                raft: Config {
                    id,
                    ..cfg.raft.clone()
                },
                ..cfg.clone()
            };
            let recovered = disk.recover().expect("bootstrap recovers");
            replicas.insert(
                id,
                Replica::new(c, recovered, id.0, now).expect("valid config"),
            );
            disks.insert(id, disk);
        }
        LocalCluster {
            replicas,
            disks,
            peer_queue: VecDeque::new(),
            received: BTreeMap::new(),
            conn_node: BTreeMap::new(),
            next_conn: 1,
            now,
            meter: None,
            busy_ns: BTreeMap::new(),
        }
    }

    /// Advances the clock by `by` and fires every due timer, then delivers until quiet.
    pub fn advance(&mut self, by: Duration) {
        self.now.instant = self.now.instant + by;
        self.now.unix_ms += u64::try_from(by.as_millis()).unwrap_or(0);
        let ids: Vec<NodeId> = self.replicas.keys().copied().collect();
        for id in ids {
            let due = self.replicas[&id]
                .poll_timeout()
                .is_some_and(|(at, _)| at <= self.now.instant);
            if due {
                self.input(id, ReplicaInput::Timeout);
            }
        }
        self.settle();
    }

    /// Runs time forward in 10 ms steps until a leader is elected (at most `max`).
    pub fn elect(&mut self, max: Duration) -> Option<NodeId> {
        let mut waited = Duration::ZERO;
        while waited < max {
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            self.advance(Duration::from_millis(10));
            waited += Duration::from_millis(10);
        }
        self.leader()
    }

    /// The replica that leads, if any.
    #[must_use]
    pub fn leader(&self) -> Option<NodeId> {
        self.replicas
            .iter()
            .find(|(_, r)| r.node().role() == Role::Leader)
            .map(|(id, _)| *id)
    }

    /// Opens a client connection to `node`; its challenge lands in `received`.
    pub fn connect(&mut self, node: NodeId) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conn_node.insert(conn, node);
        self.received.insert(conn, VecDeque::new());
        self.input(node, ReplicaInput::Connected(conn));
        self.settle();
        conn
    }

    /// Sends an encoded client frame on `conn` (delivered at once; call `settle` to let the
    /// cluster work, or use [`LocalCluster::send_and_settle`]).
    pub fn send(&mut self, conn: ConnId, frame: Vec<u8>) {
        let node = self.conn_node[&conn];
        self.input(node, ReplicaInput::Client { conn, frame });
    }

    /// Sends and delivers until quiet.
    pub fn send_and_settle(&mut self, conn: ConnId, frame: Vec<u8>) {
        self.send(conn, frame);
        self.settle();
    }

    /// Takes the frames `conn` received so far.
    pub fn take(&mut self, conn: ConnId) -> Vec<ReplicaFrame> {
        self.received
            .get_mut(&conn)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// Feeds one input to `node` and routes its outputs (peer frames are queued).
    pub fn input(&mut self, node: NodeId, input: ReplicaInput) {
        let start = self.meter.map(|clock| clock());
        let now = self.now;
        let replica = self.replicas.get_mut(&node).expect("replica");
        replica.handle(now, input);
        self.drain(node);
        if let (Some(clock), Some(start)) = (self.meter, start) {
            *self.busy_ns.entry(node).or_default() += clock().saturating_sub(start);
        }
    }

    fn drain(&mut self, node: NodeId) {
        let now = self.now;
        loop {
            let replica = self.replicas.get_mut(&node).expect("replica");
            let Some(out) = replica.poll_output() else {
                break;
            };
            match out {
                ReplicaOutput::Persist(batch) => {
                    self.disks
                        .get_mut(&node)
                        .expect("disk")
                        .persist(&batch)
                        .expect("memory never fails");
                    let replica = self.replicas.get_mut(&node).expect("replica");
                    replica.handle(now, ReplicaInput::Persisted(batch.seq));
                }
                ReplicaOutput::Peer { to, frame } => self.peer_queue.push_back((node, to, frame)),
                ReplicaOutput::Client { conn, frame } => {
                    let frame = ReplicaFrame::decode(&frame).expect("a replica's frames decode");
                    self.received.entry(conn).or_default().push_back(frame);
                }
                ReplicaOutput::Close(conn) => {
                    self.conn_node.remove(&conn);
                }
                ReplicaOutput::Event(_) => {}
            }
        }
    }

    /// Delivers peer frames until none is left (bounded: a livelock would be a bug).
    pub fn settle(&mut self) {
        let mut rounds = 0u64;
        while let Some((from, to, frame)) = self.peer_queue.pop_front() {
            rounds += 1;
            assert!(rounds < 10_000_000, "the cluster never went quiet");
            if self.replicas.contains_key(&to) {
                self.input(to, ReplicaInput::Peer { from, frame });
            }
        }
    }

    /// Asserts every replica's invariants.
    pub fn check_invariants(&self) {
        for r in self.replicas.values() {
            r.check_invariants();
        }
    }
}
