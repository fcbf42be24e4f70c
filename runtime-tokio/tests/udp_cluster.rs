//! The production driver for real: three nodes in one process on 127.0.0.1 (UDP, real time, redb
//! files in a temporary directory, the persistence task with group commit). A leader is elected, a
//! proposal applies and is read back linearizably through a follower; the leader is stopped, the
//! two others elect a new leader and keep committing; the stopped node restarts from its redb
//! files and catches up. The madsim scenarios run the same loop under faults; this test shows it
//! runs on tokio, sockets and disks as they are.
#![cfg(not(madsim))]

use paloma_core::raft::state_machine::SnapshotDecodeError;
use paloma_core::raft::storage::{PersistBatch, PersistOp, Recovered, Storage};
use paloma_core::raft::{ApplyContext, Config, RaftNode, StateMachine};
use paloma_core::{ClientId, NodeId, PersistSeq};
use paloma_runtime_tokio::driver::{self, ClientError, NodeHandle, Parts, TracingHooks};
use paloma_runtime_tokio::net::{MonotonicClock, UdpTransport};
use paloma_runtime_tokio::{RedbPersister, RedbStorage};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sums the bytes of every command.
#[derive(Debug, Default)]
struct Sum(u64);

impl StateMachine for Sum {
    fn apply(&mut self, _: &ApplyContext, command: &[u8]) -> Vec<u8> {
        self.0 += command.iter().map(|&b| u64::from(b)).sum::<u64>();
        self.0.to_le_bytes().to_vec()
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

fn config(id: NodeId) -> Config {
    Config {
        id,
        election_timeout: Duration::from_millis(300),
        heartbeat_interval: Duration::from_millis(50),
        ..Config::default()
    }
}

/// A scratch directory removed at the end of the test.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts node `id` from its redb file (bootstrapping `voters` on an empty one) and returns its
/// handle and task.
async fn start(
    id: NodeId,
    dir: &Path,
    voters: &[NodeId],
    udp: UdpTransport,
) -> (NodeHandle<Sum>, tokio::task::JoinHandle<String>) {
    let mut storage = RedbStorage::open(dir.join(format!("{id}.redb"))).expect("open redb");
    let mut recovered = storage.recover().expect("recover");
    if recovered == Recovered::default() {
        let boot = Recovered::bootstrap(voters.iter().copied());
        storage
            .persist(&PersistBatch {
                seq: PersistSeq(0),
                ops: vec![PersistOp::Snapshot(boot.snapshot.expect("snapshot"))],
            })
            .expect("bootstrap");
        recovered = storage.recover().expect("recover");
    }
    let clock = MonotonicClock::start();
    let node = RaftNode::new(
        config(id),
        recovered,
        Sum::default(),
        id.0,
        paloma_core::Instant::ZERO,
    )
    .expect("start");
    let parts = Parts {
        transport: udp,
        clock,
        persister: RedbPersister::new(storage),
        hooks: TracingHooks,
    };
    let (handle, running) = driver::start(node, parts);
    let task = tokio::spawn(async move { running.await.to_string() });
    (handle, task)
}

async fn bind_all(ids: &[NodeId]) -> (Vec<UdpTransport>, BTreeMap<NodeId, SocketAddr>) {
    let mut socks = Vec::new();
    let mut peers = BTreeMap::new();
    for &id in ids {
        let udp = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), BTreeMap::new())
            .await
            .expect("bind");
        peers.insert(id, udp.local_addr().expect("addr"));
        socks.push(udp);
    }
    for s in &mut socks {
        s.set_peers(peers.clone());
    }
    (socks, peers)
}

/// Proposes through every node in turn until one leads and applies it.
async fn propose_anywhere(
    handles: &BTreeMap<NodeId, NodeHandle<Sum>>,
    seq: u64,
    data: Vec<u8>,
) -> (NodeId, u64) {
    for _ in 0..100 {
        for (&id, h) in handles {
            match h
                .propose(ClientId(1), seq, data.clone(), Duration::from_secs(2))
                .await
            {
                Ok(resp) => {
                    return (id, u64::from_le_bytes(resp.try_into().expect("8 bytes")));
                }
                Err(ClientError::NotLeader(_) | ClientError::Timeout) => {}
                Err(e) => panic!("proposal {seq} on {id}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader applied proposal {seq} within the bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_commit_lose_the_leader_and_recover_from_redb() {
    let dir = std::env::temp_dir().join(format!("paloma-udp-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let _scratch = Scratch(dir.clone());
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let (socks, peers) = bind_all(&ids).await;
    let mut handles = BTreeMap::new();
    let mut tasks = BTreeMap::new();
    for (&id, udp) in ids.iter().zip(socks) {
        let (h, t) = start(id, &dir, &ids, udp).await;
        handles.insert(id, h);
        tasks.insert(id, t);
    }

    let (leader, sum) = propose_anywhere(&handles, 1, vec![1, 2, 3]).await;
    assert_eq!(sum, 6);
    // A linearizable read through a follower sees the write.
    let follower = *ids.iter().find(|&&id| id != leader).unwrap();
    let mut read = None;
    for _ in 0..50 {
        match handles[&follower]
            .read(|s: &Sum| s.0, Duration::from_secs(2))
            .await
        {
            Ok(v) => {
                read = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(read, Some(6), "ReadIndex through {follower}");

    // Stop the leader: the two others elect a new one and keep committing.
    tasks.remove(&leader).unwrap().abort();
    handles.remove(&leader);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (new_leader, sum) = propose_anywhere(&handles, 2, vec![10]).await;
    assert_ne!(new_leader, leader);
    assert_eq!(sum, 16);

    // The old leader restarts from its redb file, at its old address, and catches up.
    let mut udp = UdpTransport::bind(peers[&leader], peers.clone())
        .await
        .expect("rebind");
    udp.set_peers(peers.clone());
    let (h, t) = start(leader, &dir, &ids, udp).await;
    handles.insert(leader, h);
    tasks.insert(leader, t);
    let (_, sum) = propose_anywhere(&handles, 3, vec![100]).await;
    assert_eq!(sum, 116);
    let mut caught_up = false;
    for _ in 0..50 {
        if let Ok(v) = handles[&leader]
            .read(|s: &Sum| s.0, Duration::from_secs(2))
            .await
        {
            if v == 116 {
                caught_up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught_up, "the restarted node did not catch up");
    for t in tasks.values() {
        t.abort();
    }
}
