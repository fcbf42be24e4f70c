//! Raft core throughput and commit latency: `cargo bench -p paloma-core --bench raft`.
//!
//! An in-memory cluster of `RaftNode`s over `MemStorage`, driven by the documented loop (drain every
//! output after every input, acknowledge each persist batch once `MemStorage` holds it) on a
//! zero-latency virtual network: messages are handed over as `Envelope`s (or, in the "frames" rows,
//! encoded and decoded with the wire codec). Virtual time stands still once the leader is elected,
//! so no heartbeat or election timer interferes; what is measured is the CPU cost of the core.
//!
//! `P` proposers each keep one proposal outstanding: every proposer whose previous command was
//! applied proposes again, all of them between two polls of the leader, so the core batches them
//! into one append per follower. Latency is wall time from `propose` to `Event::Applied` on the
//! leader. Baselines in the same run: a single-node cluster (no replication) and the raw cost of
//! cloning, encoding and decoding the same entries as one AppendEntries frame.
//!
//! `RAFT_BENCH_SECS` sets the measuring time per row (default 1.5 s); `RAFT_BENCH_ROWS=<text>` runs
//! only the row named `<text>`, or else the rows whose name contains it (to profile one configuration).

// Wall-clock measurement is the point of a benchmark; the core itself never reads a clock.
#![allow(clippy::disallowed_methods)]

use paloma_core::raft::io::{Event, Input, Output, Role};
use paloma_core::raft::message::{AppendRequest, Body, Envelope};
use paloma_core::raft::state_machine::SnapshotDecodeError;
use paloma_core::raft::storage::{MemStorage, Recovered, Storage};
use paloma_core::raft::{ApplyContext, Config, Entry, Payload, RaftNode, StateMachine};
use paloma_core::{ClientId, LogId, LogIndex, NodeId, Term};
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant as Wall};

/// The command every proposer sends (a directory write is of this order).
const COMMAND_BYTES: usize = 64;

/// A state machine that sums the first byte of each command: cheap, so the core dominates.
#[derive(Debug, Default)]
struct Sum(u64);

impl StateMachine for Sum {
    fn apply(&mut self, _: &ApplyContext, command: &[u8]) -> Vec<u8> {
        self.0 += u64::from(command.first().copied().unwrap_or(0));
        Vec::new()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), SnapshotDecodeError> {
        let raw: [u8; 8] = data.try_into().map_err(|_| SnapshotDecodeError::Length {
            len: data.len(),
            expected: 8,
        })?;
        self.0 = u64::from_le_bytes(raw);
        Ok(())
    }
}

struct Bench {
    nodes: Vec<RaftNode<Sum>>,
    storages: Vec<MemStorage>,
    net: VecDeque<Envelope>,
    frames: bool,
    now: paloma_core::Instant,
    /// Per proposer: its next sequence number and when its outstanding proposal was made.
    outstanding: Vec<(u64, Option<Wall>)>,
    latencies_ns: Vec<u64>,
    commits: u64,
}

impl Bench {
    fn new(size: u64, proposers: usize, frames: bool) -> Bench {
        let voters: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let mut nodes = Vec::new();
        let mut storages = Vec::new();
        for id in &voters {
            let storage = MemStorage::new(Recovered::bootstrap(voters.iter().copied()));
            let cfg = Config {
                id: *id,
                ..Config::default()
            };
            let node = RaftNode::new(
                cfg,
                storage.recover().expect("in memory"),
                Sum::default(),
                id.0,
                paloma_core::Instant::ZERO,
            )
            .expect("start");
            nodes.push(node);
            storages.push(storage);
        }
        let mut bench = Bench {
            nodes,
            storages,
            net: VecDeque::new(),
            frames,
            now: paloma_core::Instant::ZERO,
            outstanding: vec![(1, None); proposers],
            latencies_ns: Vec::new(),
            commits: 0,
        };
        // Elect node 1: fire its election timer, then let the messages flow.
        let (deadline, _) = bench.nodes[0].poll_timeout().expect("election timer");
        bench.now = deadline;
        bench.nodes[0].handle(deadline, Input::Timeout);
        bench.pump(0);
        assert_eq!(bench.nodes[0].status().role, Role::Leader, "node 1 leads");
        bench
    }

    /// Drains node `i`, then delivers every message (and what it causes) until the network is idle.
    fn pump(&mut self, i: usize) {
        self.drain(i);
        while let Some(env) = self.net.pop_front() {
            let to = usize::try_from(env.to.0 - 1).expect("small ids");
            if self.frames {
                let frame = env.encode();
                self.nodes[to].handle_frame(self.now, &frame);
            } else {
                self.nodes[to].handle(self.now, Input::Message(env));
            }
            self.drain(to);
        }
    }

    fn drain(&mut self, i: usize) {
        let now = self.now;
        while let Some(out) = self.nodes[i].poll_output() {
            match out {
                Output::Persist(batch) => {
                    self.storages[i].persist(&batch).expect("in memory");
                    self.nodes[i].handle(now, Input::Persisted(batch.seq));
                }
                Output::Send(env) => self.net.push_back(env),
                Output::Event(Event::Applied { client, seq, .. }) => {
                    let slot = &mut self.outstanding[usize::try_from(client.0).expect("small ids")];
                    if let Some(start) = slot.1.take() {
                        assert_eq!(slot.0, seq, "applied the outstanding proposal");
                        self.latencies_ns
                            .push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
                        slot.0 += 1;
                        self.commits += 1;
                    }
                }
                Output::Event(_) => {}
            }
        }
    }

    /// One round: every idle proposer proposes (batched between two polls), then the cluster runs
    /// until the network is idle, which with a zero-latency network commits and applies them all.
    fn round(&mut self, command: &[u8]) {
        for p in 0..self.outstanding.len() {
            if self.outstanding[p].1.is_none() {
                let seq = self.outstanding[p].0;
                let start = Wall::now();
                self.nodes[0]
                    .propose(
                        self.now,
                        1_700_000_000_000,
                        ClientId(p as u64),
                        seq,
                        command.to_vec(),
                    )
                    .expect("leader accepts");
                self.outstanding[p].1 = Some(start);
            }
        }
        self.pump(0);
    }
}

struct Row {
    commits: u64,
    secs: f64,
    cpu_secs: Option<f64>,
    preemptions: Option<u64>,
    p50_us: f64,
    p99_us: f64,
}

/// Nanoseconds this thread spent on a CPU (Linux `schedstat`), to tell the core's cost from time
/// lost to other processes on a shared machine.
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// How many times this process was preempted (Linux `nonvoluntary_ctxt_switches`); each one can
/// put a scheduler slice (~4 ms here) into a latency sample.
fn preemptions() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("nonvoluntary_ctxt_switches:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn measure(size: u64, proposers: usize, frames: bool, secs: f64) -> Row {
    let mut bench = Bench::new(size, proposers, frames);
    let command = vec![7u8; COMMAND_BYTES];
    // Warm-up: caches, allocator, the first snapshots.
    let warm = Wall::now();
    while warm.elapsed() < Duration::from_secs_f64(secs / 5.0) {
        bench.round(&command);
    }
    bench.latencies_ns.clear();
    bench.commits = 0;
    let (cpu0, pre0) = (cpu_ns(), preemptions());
    let start = Wall::now();
    let budget = Duration::from_secs_f64(secs);
    while start.elapsed() < budget {
        bench.round(&command);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_secs = cpu0.zip(cpu_ns()).map(|(a, b)| (b - a) as f64 / 1e9);
    let preemptions = pre0.zip(preemptions()).map(|(a, b)| b - a);
    let leader = bench.nodes[0].status();
    for node in &bench.nodes {
        node.check_invariants();
        assert_eq!(node.status().last, leader.last, "followers kept up");
    }
    let mut lat = std::mem::take(&mut bench.latencies_ns);
    lat.sort_unstable();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |ns| *ns as f64 / 1000.0)
    };
    Row {
        commits: bench.commits,
        secs: elapsed,
        cpu_secs,
        preemptions,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
    }
}

/// The raw cost, per entry, of what replication must do at least once per follower: clone the
/// entries out of the log, encode them as one AppendEntries frame and decode it.
fn clone_encode_decode_ns_per_entry(entries_per_append: usize, secs: f64) -> f64 {
    let entries: Vec<Entry> = (1..=entries_per_append as u64)
        .map(|i| Entry {
            id: LogId::new(Term(1), LogIndex(i)),
            unix_ms: 1_700_000_000_000,
            payload: Payload::Command {
                client: ClientId(i),
                seq: i,
                data: vec![7u8; COMMAND_BYTES],
            },
        })
        .collect();
    let start = Wall::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        for _ in 0..100 {
            let env = Envelope {
                from: NodeId(1),
                to: NodeId(2),
                term: Term(1),
                body: Body::Append(AppendRequest {
                    prev: LogId::default(),
                    entries: entries.clone(),
                    commit: LogIndex(0),
                }),
            };
            let frame = env.encode();
            black_box(Envelope::decode(black_box(&frame), 1 << 24).expect("round trip"));
            n += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / (n as f64 * entries_per_append as f64)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs the binary with no such flag:
    // keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("RAFT_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 0.05 } else { 1.5 });
    println!("paloma-core raft bench: in-memory MemStorage, zero-latency virtual network, {COMMAND_BYTES}-byte commands, {secs} s per row");
    println!(
        "{:<44} {:>9} {:>10} {:>12} {:>8} {:>8} {:>7}",
        "cluster", "commits", "commits/s", "commits/cpu-s", "p50 us", "p99 us", "preempt"
    );
    let rows: [(&str, u64, usize, bool); 8] = [
        ("1 node, 1 proposer (baseline: no replication)", 1, 1, false),
        ("1 node, 64 proposers (baseline)", 1, 64, false),
        ("3 nodes, 1 proposer", 3, 1, false),
        ("3 nodes, 64 proposers", 3, 64, false),
        ("5 nodes, 1 proposer", 5, 1, false),
        ("5 nodes, 64 proposers", 5, 64, false),
        ("3 nodes, 64 proposers, encoded frames", 3, 64, true),
        ("5 nodes, 64 proposers, encoded frames", 5, 64, true),
    ];
    let only = std::env::var("RAFT_BENCH_ROWS").unwrap_or_default();
    let exact = rows.iter().any(|r| r.0 == only);
    for (name, size, proposers, frames) in rows {
        if (exact && name != only) || !name.contains(only.as_str()) {
            continue;
        }
        let row = measure(size, proposers, frames, secs);
        let rate = row.commits as f64 / row.secs;
        let cpu_rate = row.cpu_secs.map_or("n/a".to_string(), |cpu| {
            format!("{:.0}", row.commits as f64 / cpu)
        });
        let pre = row.preemptions.map_or("n/a".to_string(), |p| p.to_string());
        println!(
            "{name:<44} {:>9} {:>10.0} {:>12} {:>8.1} {:>8.1} {:>7}",
            row.commits, rate, cpu_rate, row.p50_us, row.p99_us, pre
        );
    }
    if !only.is_empty() && !"baseline: clone + encode + decode".contains(only.as_str()) {
        return;
    }
    let ns = clone_encode_decode_ns_per_entry(64, secs / 2.0);
    println!(
        "baseline: clone + encode + decode of a 64-entry AppendEntries: {ns:.0} ns/entry ({:.0} entries/s on one core)",
        1e9 / ns
    );
    println!("commits/s is wall time; commits/cpu-s excludes time this thread was not running; `preempt` counts");
    println!("involuntary context switches during the row (each can add a scheduler slice to a latency sample).");
}
