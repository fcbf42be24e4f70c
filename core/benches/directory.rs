//! The directory's figures on the in-memory 3-replica cluster (`replica::harness::LocalCluster`,
//! default `ReplicaConfig`): `cargo bench -p paloma-core --bench directory` (full sizes, a few
//! minutes on one core), `cargo bench -p paloma-core --bench directory -- --quick` (CI sizes).
//! Name parts to run only those: `-- memory`, `-- writes`, `-- presence` (combinable).
//!
//! Everything runs on this one thread: the three replicas, their in-memory disks (`MemStorage`)
//! and the clients. Wall-clock figures therefore include time other processes took from this
//! thread on a shared machine; each part also prints its thread CPU time to tell.
//!
//! 1. **memory**: live heap bytes per registered user in a `Directory` holding 1,000,000 users
//!    (`--quick`: 100,000): a 10-character username, one address, the signed prekey, and 0 or 10
//!    one-time prekeys. A counting global allocator (this binary's) sums the bytes requested and
//!    not yet freed; `bytes/user` = (live after − live before) / users. The `rss/user` column is
//!    the resident set growth (each row runs in its own process), which adds malloc's overhead.
//!    The Raft log, its de-duplication table and snapshots are not counted. The `signed, applied`
//!    rows (20,000 users; `--quick`: 5,000) generate keys, sign and apply each
//!    `DirectoryEntry::Signed(Register ..)` through `StateMachine::apply` as Raft does (two
//!    Ed25519 checks per user); that costs ~350 us per user here, ~6 minutes per million, so the
//!    million-user rows use `Directory::register_unverified` (a `testing`-only helper that stores
//!    the same record and audit record without the signature work, random key bytes). The two
//!    kinds of row at the same size show they agree. Design target: at most 1 KiB per user.
//! 2. **writes**: registrations/s and claims/s end to end through the client protocol. One
//!    logged-in connection per user, spread over the three replicas (so two thirds of the writes
//!    are forwarded to the leader), commands signed before the clock starts, `window` requests
//!    in flight: each round sends a request on every idle connection up to the window, then the
//!    cluster runs until quiet (a zero-latency network commits a round at once). The time ends
//!    when every replica applied every write. Registrations carry a full pool of 100 one-time
//!    prekeys (4.5 KiB entries); each claim pops one key from another user's pool. Every answer
//!    is checked to be a success. Each registration verifies two Ed25519 signatures on each of
//!    the 3 replicas (command and signed prekey), each claim one: the baseline row is the bare
//!    cost of `SignedCommand::verify()` and of the signed prekey's check in the same run, and the
//!    bound they put on the rate of three replicas sharing one core.
//! 3. **presence**: 100,000 clients (`--quick`: 10,000), each its own registered user logged in on
//!    one of the replicas (round robin), heartbeating every 10 s, staggered over 100 slots of
//!    100 ms. Setup (keys, logins, registrations through Raft, 256 in flight) is timed but not
//!    measured; it also registers the churn phase's reserve users, who then disconnect.
//!    - *burst*: from the first tick after setup until the leader's directory shows every
//!      connected client online: virtual seconds and Raft entries committed (presence batches
//!      commit at most 8 × 256 transitions per 1 s flush).
//!    - *steady state*: 60 s of virtual time (`--quick`: 30 s) in 100 ms steps with everyone
//!      online and nobody coming or going: Raft entries committed per virtual second (leader's
//!      commit index delta) and presence batches proposed; CPU per heartbeat (wall time in the
//!      `handle` + output routing of the heartbeat frames / heartbeats); and each replica's share
//!      of one core (wall time spent driving that replica, timers, peer traffic and its in-memory
//!      disk included / virtual time; `LocalCluster::meter`). Design targets: under 10 Raft
//!      entries/s and under 5 % of one core per replica.
//!    - *steady state with churn*: the same for as long again while, each second, 10 clients
//!      (`--quick`: 5) disconnect and as many reserve users log in (20 transitions/s to commit).
//!      At the end every replica's directory shows exactly the connected users online.
//!
//! Without `--bench` (as `cargo test --benches` runs it) every size is tiny: a smoke test.

// Wall-clock measurement is the point of a benchmark; the core itself never reads a clock.
#![allow(clippy::disallowed_methods)]
// The counting global allocator must implement `GlobalAlloc`, an unsafe trait; it only forwards
// to `System` and counts.
#![allow(unsafe_code)]

use paloma_core::directory::command::decode_result;
use paloma_core::directory::{
    CommandBody, Directory, DirectoryEntry, OneTimePrekey, Outcome, Presence, SignedCommand,
    SignedPrekey,
};
use paloma_core::raft::{ApplyContext, StateMachine};
use paloma_core::replica::harness::LocalCluster;
use paloma_core::replica::protocol::{login, ClientFrame, ReplicaFrame, Reply, Request};
use paloma_core::replica::{ReplicaConfig, ReplicaInput};
use paloma_core::session::{Entropy, IdentityKeyPair, PrekeyBundle, PrekeyId, SignedPrekeyPair};
use paloma_core::{ClientId, ConnId, LogIndex, NodeId, RequestId, Term, UserId};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant as Wall};

// ----- the counting allocator ------------------------------------------------------------------

/// Forwards to the system allocator and keeps the bytes requested and not yet freed.
#[derive(Debug)]
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the contract; the counter
// is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System.alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Resident set size (Linux `/proc/self/statm`), in bytes.
fn rss_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Nanoseconds this thread spent on a CPU (Linux `schedstat`).
fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Wall nanoseconds since the first call: the meter the cluster harness charges replicas with.
fn wall_ns() -> u64 {
    static EPOCH: OnceLock<Wall> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Wall::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Wall and thread-CPU time of a part.
struct Clock {
    wall: Wall,
    cpu: Option<u64>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Wall::now(),
            cpu: cpu_ns(),
        }
    }

    fn secs(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }

    /// "12.3 s wall, 12.1 s cpu".
    fn report(&self) -> String {
        let cpu = self.cpu.zip(cpu_ns()).map_or("n/a".into(), |(a, b)| {
            format!("{:.1}", (b - a) as f64 / 1e9)
        });
        format!("{:.1} s wall, {cpu} s cpu", self.secs())
    }
}

fn flush() {
    std::io::stdout().flush().expect("stdout");
}

// ----- users -----------------------------------------------------------------------------------

/// A fast seeded entropy (splitmix64): key generation is setup, not what is measured.
struct Seeded(u64);

impl Entropy for Seeded {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Identity number `n` (distinct seeds per part keep the parts' users apart).
fn identity(n: u64) -> IdentityKeyPair {
    IdentityKeyPair::generate(&mut Seeded(n.wrapping_mul(0x0100_0000_01B3) ^ 0x5EED))
}

/// A realistic registration: a 10-character name, one address, the signed prekey and `prekeys`
/// one-time prekeys.
fn register_body(id: &IdentityKeyPair, n: u64, prekeys: u32) -> CommandBody {
    let mut rng = Seeded(n ^ 0xA5A5_A5A5);
    let spk = SignedPrekeyPair::generate(id, PrekeyId(1), &mut rng);
    let signed_prekey = SignedPrekey {
        id: spk.id(),
        key: spk.public_key(),
        signature: spk.signature(),
    };
    body_with(n, prekeys, id.public().dh_key, signed_prekey, &mut rng)
}

/// The directory time every part starts at (the harness's clock) and a command expiry within
/// the directory's 10-minute validity window from it.
const T0_UNIX_MS: u64 = 1_700_000_000_000;
const EXPIRES_UNIX_MS: u64 = T0_UNIX_MS + 9 * 60 * 1000;

// ----- sizes -----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Users of the directories built without signature work.
    memory_users: u64,
    /// Users of the directories built from signed entries through `apply`.
    memory_signed_users: u64,
    /// Registrations per write row (two rows: two windows).
    registrations: u64,
    /// Claims per claim row.
    claims: u64,
    presence_clients: u64,
    steady_secs: u64,
    /// Clients leaving and as many arriving per second in the churn phase.
    churn_per_sec: u64,
    crypto_iters: u32,
}

const FULL: Sizes = Sizes {
    memory_users: 1_000_000,
    memory_signed_users: 20_000,
    registrations: 5_000,
    claims: 20_000,
    presence_clients: 100_000,
    steady_secs: 60,
    churn_per_sec: 10,
    crypto_iters: 2_000,
};
const QUICK: Sizes = Sizes {
    memory_users: 100_000,
    memory_signed_users: 5_000,
    registrations: 1_000,
    claims: 4_000,
    presence_clients: 10_000,
    steady_secs: 30,
    churn_per_sec: 5,
    crypto_iters: 500,
};
const SMOKE: Sizes = Sizes {
    memory_users: 1_000,
    memory_signed_users: 200,
    registrations: 100,
    claims: 200,
    presence_clients: 600,
    steady_secs: 20,
    churn_per_sec: 2,
    crypto_iters: 20,
};

// ----- 1. memory per user ----------------------------------------------------------------------

/// A registration body of user `n` around the given keys.
fn body_with(
    n: u64,
    prekeys: u32,
    identity_dh: [u8; 32],
    signed_prekey: SignedPrekey,
    rng: &mut Seeded,
) -> CommandBody {
    CommandBody::Register {
        username: format!("user{:06}", n % 1_000_000),
        identity_dh,
        signed_prekey,
        one_time_prekeys: (0..prekeys)
            .map(|k| {
                let mut key = [0u8; 32];
                rng.fill(&mut key);
                OneTimePrekey {
                    id: PrekeyId(100 + k),
                    key,
                }
            })
            .collect(),
        addresses: vec![format!("198.51.100.{}:{}", n % 250, 40_000 + n % 20_000)],
    }
}

/// Builds a directory of `users` users with `prekeys` one-time prekeys each: `signed`, through
/// `StateMachine::apply` of signed and encoded `Register` entries (keys generated, two signatures
/// made and checked per user); otherwise through `Directory::register_unverified` with random
/// key bytes (the same record, no signature work). Returns (live bytes per user, resident bytes
/// per user, seconds).
fn memory_row(users: u64, prekeys: u32, signed: bool) -> (f64, Option<f64>, f64) {
    let clock = Clock::start();
    let live0 = live_bytes();
    let rss0 = rss_bytes();
    let mut dir = Directory::new();
    let seed = 1u64 << 40;
    for n in 0..users {
        let (user, result) = if signed {
            let id = identity(seed + n);
            let cmd = SignedCommand::sign(&id, 1, EXPIRES_UNIX_MS, register_body(&id, n, prekeys));
            let entry = DirectoryEntry::Signed(cmd).encode();
            let ctx = ApplyContext {
                index: LogIndex(n + 1),
                term: Term(1),
                unix_ms: T0_UNIX_MS,
                client: ClientId(n),
            };
            let response = dir.apply(&ctx, &entry);
            (
                id.user_id(),
                decode_result(&response).expect("a directory response decodes"),
            )
        } else {
            let mut rng = Seeded(seed + n);
            let mut signer = [0u8; 32];
            rng.fill(&mut signer);
            let mut identity_dh = [0u8; 32];
            rng.fill(&mut identity_dh);
            let mut signed_prekey = SignedPrekey {
                id: PrekeyId(1),
                key: [0; 32],
                signature: [0; 64],
            };
            rng.fill(&mut signed_prekey.key);
            rng.fill(&mut signed_prekey.signature);
            let body = body_with(n, prekeys, identity_dh, signed_prekey, &mut rng);
            let ctx = ApplyContext {
                index: LogIndex(n + 1),
                term: Term(1),
                unix_ms: T0_UNIX_MS,
                client: ClientId(n),
            };
            let result = dir.register_unverified(&ctx, signer, 1, &body);
            (UserId::from_signing_key(&signer), result)
        };
        assert!(
            matches!(result, Ok(Outcome::Registered { user: got, .. }) if got == user),
            "registration {n} failed: {result:?}"
        );
    }
    let secs = clock.secs();
    assert_eq!(dir.len() as u64, users);
    let live = live_bytes().saturating_sub(live0);
    let rss = rss0
        .zip(rss_bytes())
        .map(|(a, b)| b.saturating_sub(a) as f64 / users as f64);
    black_box(&dir);
    (live as f64 / users as f64, rss, secs)
}

/// Runs [`memory_row`] in a fresh process (so the resident-set growth is this row's alone),
/// falling back to this one.
fn memory_row_isolated(users: u64, prekeys: u32, signed: bool) -> (f64, Option<f64>, f64) {
    let mode = if signed { "signed" } else { "unverified" };
    let child = std::env::current_exe().ok().and_then(|exe| {
        std::process::Command::new(exe)
            .args([
                "--memory-row",
                &users.to_string(),
                &prekeys.to_string(),
                mode,
            ])
            .output()
            .ok()
    });
    let parsed = child.filter(|out| out.status.success()).and_then(|out| {
        let text = String::from_utf8(out.stdout).ok()?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("ROW "))?
            .to_string();
        let fields: Vec<f64> = line
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        match fields.as_slice() {
            &[live, rss, secs] => Some((live, (rss >= 0.0).then_some(rss), secs)),
            _ => None,
        }
    });
    parsed.unwrap_or_else(|| memory_row(users, prekeys, signed))
}

fn memory(sizes: Sizes) {
    println!("\n== 1. memory per registered user in one Directory (10-char name, 1 address, signed prekey)");
    println!(
        "{:<58} {:>10} {:>10} {:>9} {:>10}",
        "directory", "bytes/user", "rss/user", "build s", "users/s"
    );
    flush();
    let rows = [
        (sizes.memory_signed_users, true),
        (sizes.memory_signed_users, false),
        (sizes.memory_users, false),
    ];
    for prekeys in [0u32, 10] {
        for (users, signed) in rows {
            let (per_user, rss, secs) = memory_row_isolated(users, prekeys, signed);
            let rss = rss.map_or("n/a".into(), |r| format!("{r:.0}"));
            let how = if signed {
                "signed, applied"
            } else {
                "register_unverified"
            };
            println!(
                "{:<58} {:>10.0} {:>10} {:>9.1} {:>10.0}",
                format!("{users} users, {prekeys} one-time prekeys each, {how}"),
                per_user,
                rss,
                secs,
                users as f64 / secs
            );
            flush();
        }
    }
    println!("target: at most 1024 bytes/user. bytes/user counts bytes requested from the allocator; rss/user adds malloc's");
    println!("overhead. `signed, applied` rows generate keys, sign and apply each Register through StateMachine::apply (two");
    println!("Ed25519 checks per user); `register_unverified` stores the same record without the signature work.");
}

// ----- 2. writes through the client protocol ---------------------------------------------------

/// Bare costs of the signature checks every replica makes at apply, in nanoseconds: a full-pool
/// registration command's, its signed prekey's, and a claim command's.
fn crypto_baseline(iters: u32) -> (f64, f64, f64) {
    let id = identity(7);
    let reg = SignedCommand::sign(&id, 1, EXPIRES_UNIX_MS, register_body(&id, 7, 100));
    let claim = SignedCommand::sign(
        &id,
        2,
        EXPIRES_UNIX_MS,
        CommandBody::ClaimBundle {
            target: UserId([3; 32]),
        },
    );
    let CommandBody::Register { signed_prekey, .. } = &reg.body else {
        unreachable!("built above")
    };
    let bundle = PrekeyBundle {
        identity: *id.public(),
        signed_prekey_id: signed_prekey.id,
        signed_prekey: signed_prekey.key,
        signed_prekey_signature: signed_prekey.signature,
        one_time_prekey: None,
    };
    let time = |f: &dyn Fn() -> bool| {
        let start = Wall::now();
        for _ in 0..iters {
            assert!(black_box(f()));
        }
        start.elapsed().as_nanos() as f64 / f64::from(iters)
    };
    let reg_ns = time(&|| black_box(&reg).verify());
    let spk_ns = time(&|| black_box(&bundle).verify().is_ok());
    let claim_ns = time(&|| black_box(&claim).verify());
    (reg_ns, spk_ns, claim_ns)
}

/// A client: one logged-in connection with its requests, encoded in advance.
struct Client {
    conn: ConnId,
    /// (request id, encoded frame, expected answer) in order.
    requests: VecDeque<(RequestId, Vec<u8>, Expect)>,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    Registered(UserId),
    Bundle,
}

/// Connects to `node` and logs in as `id`.
fn log_in(c: &mut LocalCluster, node: NodeId, id: &IdentityKeyPair) -> ConnId {
    let conn = c.connect(node);
    let Some(ReplicaFrame::Challenge { nonce, replica }) = c.take(conn).pop() else {
        panic!("a connection starts with a challenge");
    };
    c.send(conn, login(id, &nonce, replica).encode());
    let frames = c.take(conn);
    assert!(
        matches!(frames.as_slice(), [ReplicaFrame::LoggedIn { user }] if *user == id.user_id()),
        "login failed: {frames:?}"
    );
    conn
}

fn command_frame(id: RequestId, session: u64, seq: u64, command: SignedCommand) -> Vec<u8> {
    ClientFrame::Request {
        id,
        request: Request::Command {
            session,
            seq,
            command,
        },
    }
    .encode()
}

/// Runs every client's requests with at most `window` in flight; returns the answers checked and
/// the rounds that made no progress (each advanced the clock 1 ms).
fn drive(c: &mut LocalCluster, clients: &mut [Client], window: usize) -> (u64, u64) {
    let mut ready: VecDeque<usize> = (0..clients.len())
        .filter(|&i| !clients[i].requests.is_empty())
        .collect();
    let mut flying: Vec<(usize, RequestId, Expect)> = Vec::with_capacity(window);
    let mut answered = 0u64;
    let mut stalls = 0u64;
    while !ready.is_empty() || !flying.is_empty() {
        while flying.len() < window {
            let Some(i) = ready.pop_front() else {
                break;
            };
            let (id, frame, expect) = clients[i].requests.pop_front().expect("ready has work");
            c.send(clients[i].conn, frame);
            flying.push((i, id, expect));
        }
        c.settle();
        let before = flying.len();
        flying.retain(|&(i, id, expect)| {
            let frames = c.take(clients[i].conn);
            let Some(frame) = frames.into_iter().next() else {
                return true;
            };
            let ReplicaFrame::Response { id: got, result } = frame else {
                panic!("unexpected frame {frame:?}");
            };
            assert_eq!(got, id, "answers come in order");
            match (expect, result) {
                (
                    Expect::Registered(user),
                    Ok(Reply::Command(Ok(Outcome::Registered { user: got, .. }))),
                ) => assert_eq!(got, user),
                (
                    Expect::Bundle,
                    Ok(Reply::Command(Ok(Outcome::Bundle {
                        bundle,
                        pool_empty: false,
                    }))),
                ) => assert!(bundle.one_time_prekey.is_some()),
                (expect, result) => panic!("request {id:?} expected {expect:?}, got {result:?}"),
            }
            if !clients[i].requests.is_empty() {
                ready.push_back(i);
            }
            false
        });
        answered += (before - flying.len()) as u64;
        if before == flying.len() {
            stalls += 1;
            assert!(stalls < 100_000, "the cluster stopped answering");
            c.advance(Duration::from_millis(1));
        }
    }
    (answered, stalls)
}

/// Advances the clock until every replica applied what the leader committed.
fn catch_up(c: &mut LocalCluster) {
    let leader = c.leader().expect("a leader");
    let commit = c.replicas[&leader].node().commit();
    let mut waited = 0;
    while c.replicas.values().any(|r| r.node().applied() < commit) {
        c.advance(Duration::from_millis(10));
        waited += 1;
        assert!(waited < 1_000, "followers never caught up");
    }
}

fn new_cluster() -> (LocalCluster, NodeId, Vec<NodeId>) {
    let mut c = LocalCluster::new(3, &ReplicaConfig::default());
    let leader = c
        .elect(Duration::from_secs(10))
        .expect("a leader within 10 s");
    let nodes = c.replicas.keys().copied().collect();
    (c, leader, nodes)
}

fn writes(sizes: Sizes) {
    println!("\n== 2. writes through the client protocol, 3 replicas on one thread, one connection per user spread over the replicas");
    let (reg_ns, spk_ns, claim_ns) = crypto_baseline(sizes.crypto_iters);
    println!(
        "baseline: SignedCommand::verify() {:.1} us (registration with 100 prekeys), {:.1} us (claim); signed prekey check {:.1} us",
        reg_ns / 1e3,
        claim_ns / 1e3,
        spk_ns / 1e3
    );
    let reg_bound = 1e9 / (3.0 * (reg_ns + spk_ns));
    let claim_bound = 1e9 / (3.0 * claim_ns);
    println!(
        "          3 replicas on one core verify at most {reg_bound:.0} registrations/s (2 signatures each, x3) and {claim_bound:.0} claims/s (1 each, x3)"
    );
    let setup = Clock::start();
    let (mut c, leader, nodes) = new_cluster();
    let windows = [64usize, 256];
    let users = sizes.registrations * windows.len() as u64;
    let ids: Vec<IdentityKeyPair> = (0..users).map(|n| identity((3 << 40) + n)).collect();
    let conns: Vec<ConnId> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| log_in(&mut c, nodes[i % nodes.len()], id))
        .collect();
    let forwarded = conns
        .iter()
        .enumerate()
        .filter(|(i, _)| nodes[i % nodes.len()] != leader)
        .count();
    println!(
        "setup: {users} users logged in ({forwarded} on followers: their writes are forwarded), {}",
        setup.report()
    );
    println!(
        "{:<40} {:>8} {:>7} {:>9} {:>10} {:>8} {:>15} {:>10}",
        "row", "ops", "window", "secs", "ops/s", "cpu-s", "share of bound", "snapshots"
    );
    flush();
    let snapshots = |c: &LocalCluster| -> u64 {
        c.replicas
            .values()
            .map(|r| r.node().stats().snapshots_taken)
            .sum()
    };
    let row = |name: &str, ops: u64, window: usize, clock: &Clock, bound: f64, snaps: u64| {
        let secs = clock.secs();
        let cpu = clock.cpu.zip(cpu_ns()).map_or("n/a".into(), |(a, b)| {
            format!("{:.2}", (b - a) as f64 / 1e9)
        });
        let rate = ops as f64 / secs;
        println!(
            "{name:<40} {ops:>8} {window:>7} {secs:>9.2} {rate:>10.0} {cpu:>8} {:>14.0}% {snaps:>10}",
            100.0 * rate / bound
        );
        flush();
    };
    // Registrations: each user registers once (full pool), half the users per window size.
    let per_row = usize::try_from(sizes.registrations).expect("small");
    for (r, &window) in windows.iter().enumerate() {
        let range = r * per_row..(r + 1) * per_row;
        let mut clients: Vec<Client> = range
            .map(|i| {
                let n = (3u64 << 40) + i as u64;
                let id = &ids[i];
                let cmd = SignedCommand::sign(id, 1, EXPIRES_UNIX_MS, register_body(id, n, 100));
                let frame = command_frame(RequestId(1), 1, 1, cmd);
                Client {
                    conn: conns[i],
                    requests: VecDeque::from([(
                        RequestId(1),
                        frame,
                        Expect::Registered(id.user_id()),
                    )]),
                }
            })
            .collect();
        let snaps0 = snapshots(&c);
        let clock = Clock::start();
        let (answered, _) = drive(&mut c, &mut clients, window);
        catch_up(&mut c);
        row(
            "registrations (100-prekey pool)",
            answered,
            window,
            &clock,
            reg_bound,
            snapshots(&c) - snaps0,
        );
    }
    // Claims: user i claims from users i+1, i+2, ... (spread so no pool runs dry).
    let claims_per_row = usize::try_from(sizes.claims).expect("small");
    let users_n = ids.len();
    let mut counter = vec![1u64; users_n];
    for &window in &windows {
        let mut clients: Vec<Client> = (0..users_n)
            .map(|i| Client {
                conn: conns[i],
                requests: VecDeque::new(),
            })
            .collect();
        for k in 0..claims_per_row {
            let i = k % users_n;
            let target = ids[(i + 1 + k / users_n) % users_n].user_id();
            counter[i] += 1;
            let seq = counter[i];
            let cmd = SignedCommand::sign(
                &ids[i],
                seq,
                EXPIRES_UNIX_MS,
                CommandBody::ClaimBundle { target },
            );
            let id = RequestId(seq);
            clients[i]
                .requests
                .push_back((id, command_frame(id, 1, seq, cmd), Expect::Bundle));
        }
        let snaps0 = snapshots(&c);
        let clock = Clock::start();
        let (answered, _) = drive(&mut c, &mut clients, window);
        catch_up(&mut c);
        row(
            "claims (each pops a one-time prekey)",
            answered,
            window,
            &clock,
            claim_bound,
            snapshots(&c) - snaps0,
        );
    }
    c.check_invariants();
    let digest = c.replicas[&leader].directory().digest();
    assert!(
        c.replicas
            .values()
            .all(|r| r.directory().digest() == digest),
        "replicas agree"
    );
    let snapshot_bytes = c.replicas[&leader].directory().snapshot().len();
    println!("share of bound: ops/s over the rate the Ed25519 checks alone would allow on one core. snapshots: taken by");
    println!(
        "the three replicas during the row (every 10,000 entries each); the directory's snapshot is now {:.1} MiB.",
        snapshot_bytes as f64 / (1024.0 * 1024.0)
    );
}

// ----- 3. presence at scale --------------------------------------------------------------------

/// Heartbeat slots: client `k` heartbeats in the step where `step % SLOTS == k % SLOTS`.
const SLOTS: u64 = 100;
const STEP: Duration = Duration::from_millis(100);

/// Sends the heartbeats due in `step`; returns (heartbeats, wall ns spent in their handling).
fn heartbeats(c: &mut LocalCluster, conns: &[ConnId], step: u64) -> (u64, u64) {
    let slot = usize::try_from(step % SLOTS).expect("small");
    let due: Vec<ConnId> = conns
        .iter()
        .skip(slot)
        .step_by(SLOTS as usize)
        .copied()
        .collect();
    let mut frames: Vec<Vec<u8>> = vec![ClientFrame::Heartbeat.encode(); due.len()];
    let start = wall_ns();
    for (conn, frame) in due.iter().zip(frames.drain(..)) {
        c.send(*conn, frame);
    }
    let ns = wall_ns() - start;
    c.settle();
    (due.len() as u64, ns)
}

fn online(c: &LocalCluster, node: NodeId) -> usize {
    c.replicas[&node].directory().online_users().count()
}

fn presence(sizes: Sizes) {
    let n = sizes.presence_clients;
    println!(
        "\n== 3. presence: {n} clients heartbeating every 10 s (staggered), 3 replicas, default PresenceConfig"
    );
    flush();
    let setup = Clock::start();
    let (mut c, leader, nodes) = new_cluster();
    // `reserve` more users register too, then disconnect: the churn phase logs them in.
    let reserve = sizes.churn_per_sec * sizes.steady_secs;
    let ids: Vec<IdentityKeyPair> = (0..n + reserve).map(|k| identity((4 << 40) + k)).collect();
    let keys_secs = setup.secs();
    let mut conns: Vec<ConnId> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| log_in(&mut c, nodes[i % nodes.len()], id))
        .collect();
    let login_secs = setup.secs() - keys_secs;
    let mut clients: Vec<Client> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let cmd = SignedCommand::sign(
                id,
                1,
                EXPIRES_UNIX_MS,
                register_body(id, (4 << 40) + i as u64, 10),
            );
            Client {
                conn: conns[i],
                requests: VecDeque::from([(
                    RequestId(1),
                    command_frame(RequestId(1), 1, 1, cmd),
                    Expect::Registered(id.user_id()),
                )]),
            }
        })
        .collect();
    let reg_clock = Clock::start();
    drive(&mut c, &mut clients, 256);
    catch_up(&mut c);
    drop(clients);
    let users = n + reserve;
    println!(
        "setup: keys {keys_secs:.1} s, {users} logins {login_secs:.1} s, {users} registrations through Raft (256 in flight) {}; total {}",
        reg_clock.report(),
        setup.report()
    );
    assert_eq!(c.replicas[&leader].directory().len() as u64, users);
    let n_conns = usize::try_from(n).expect("small");
    for (i, conn) in conns.drain(n_conns..).enumerate() {
        let node = nodes[(n_conns + i) % nodes.len()];
        c.input(node, ReplicaInput::Disconnected(conn));
    }
    assert_eq!(c.leader(), Some(leader), "no election during setup");
    let leases: usize = c.replicas.values().map(|r| r.leases()).sum();
    assert_eq!(leases as u64, n, "one lease per client");
    c.meter = Some(wall_ns);
    // The connected clients shown online by the leader (the reserve users may be shown online
    // for a while: a report reached the leader before they disconnected).
    let connected_online = |c: &LocalCluster| -> usize {
        let dir = c.replicas[&leader].directory();
        let reserve_online = ids[n_conns..]
            .iter()
            .filter(|id| dir.is_online(&id.user_id()))
            .count();
        online(c, leader) - reserve_online
    };
    let batches = |c: &LocalCluster| -> u64 {
        c.replicas
            .values()
            .map(|r| r.stats().presence_batches)
            .sum()
    };

    // The burst: everyone comes online.
    let burst = Clock::start();
    let commit0 = c.replicas[&leader].node().commit();
    let batches0 = batches(&c);
    let mut step = 0u64;
    loop {
        c.advance(STEP);
        heartbeats(&mut c, &conns, step);
        step += 1;
        if step % 10 == 0 && connected_online(&c) == n_conns {
            break;
        }
        assert!(
            step < 3_000,
            "not everyone online after 300 s: {} of {n}",
            connected_online(&c)
        );
    }
    let burst_virtual = step as f64 * STEP.as_secs_f64();
    let entries = c.replicas[&leader].node().commit().0 - commit0.0;
    println!(
        "burst: all {n} online on the leader after {burst_virtual:.0} s virtual (checked every 1 s): {entries} Raft entries, {} presence batches ({:.0} clients/entry); {}",
        batches(&c) - batches0,
        n as f64 / (batches(&c) - batches0).max(1) as f64,
        burst.report()
    );
    // Let followers catch up and one full-report round pass before measuring, and the reserve
    // users be shown offline (a new leader takes no one offline during its grace period).
    let mut settled = 0;
    while settled < SLOTS || online(&c, leader) != n_conns {
        c.advance(STEP);
        heartbeats(&mut c, &conns, step);
        step += 1;
        settled += 1;
        assert!(settled < 1_000, "the reserve users never went offline");
    }
    assert_eq!(c.leader(), Some(leader), "no election");

    // Steady state: heartbeats only, then with churn.
    let ctx = Phase {
        leader,
        nodes: &nodes,
        ids: &ids,
        secs: sizes.steady_secs,
    };
    steady(&mut c, &ctx, &mut conns, &mut step, 0, "steady state");
    steady(
        &mut c,
        &ctx,
        &mut conns,
        &mut step,
        sizes.churn_per_sec,
        "steady state with churn",
    );
    // Let the last transitions commit, then check everyone's state on every replica.
    for _ in 0..30 {
        c.advance(STEP);
        heartbeats(&mut c, &conns, step);
        step += 1;
    }
    c.check_invariants();
    // The churn replaced the clients of the first `reserve` slots it visited with the reserve
    // users, in order: those clients are offline, everyone else online, on every replica.
    let churned = usize::try_from(reserve).expect("small");
    let gone: std::collections::BTreeSet<usize> =
        (0..churned).map(|k| (k * CHURN_STRIDE) % n_conns).collect();
    assert_eq!(gone.len(), churned, "no slot churned twice");
    for (k, id) in ids.iter().enumerate() {
        let expect_online = !gone.contains(&k) || k >= n_conns;
        for r in c.replicas.values() {
            let online = r
                .directory()
                .user(&id.user_id())
                .is_some_and(|u| matches!(u.presence, Presence::Online { .. }));
            assert_eq!(
                online,
                expect_online,
                "user {k} on replica {}",
                r.node().id()
            );
        }
    }
    assert_eq!(online(&c, leader), n_conns, "as many online as connected");
}

/// What the steady phases share.
struct Phase<'a> {
    leader: NodeId,
    nodes: &'a [NodeId],
    ids: &'a [IdentityKeyPair],
    secs: u64,
}

/// Churn replaces the client of slot `k * CHURN_STRIDE mod n` at its `k`-th replacement (a
/// stride coprime with the sizes used, so no slot is replaced twice).
const CHURN_STRIDE: usize = 7_919;

/// Runs `ctx.secs` of virtual time in 100 ms steps, every client heartbeating in its slot; with
/// `churn` > 0, each second `churn` clients disconnect and as many registered users not yet
/// connected log in in their slots. Prints the phase's figures.
fn steady(
    c: &mut LocalCluster,
    ctx: &Phase<'_>,
    conns: &mut [ConnId],
    step: &mut u64,
    churn: u64,
    name: &str,
) {
    let leader = ctx.leader;
    let n = conns.len();
    let clock = Clock::start();
    let commit0 = c.replicas[&leader].node().commit();
    let batches = |c: &LocalCluster| -> u64 {
        c.replicas
            .values()
            .map(|r| r.stats().presence_batches)
            .sum()
    };
    let batches0 = batches(c);
    let busy0 = c.busy_ns.clone();
    let (mut beats, mut beat_ns, mut churned) = (0u64, 0u64, 0usize);
    let steps = ctx.secs * 1000 / u64::try_from(STEP.as_millis()).expect("small");
    for s in 0..steps {
        c.advance(STEP);
        if s % 10 == 0 {
            for _ in 0..churn {
                let slot = (churned * CHURN_STRIDE) % n;
                let node = ctx.nodes[slot % ctx.nodes.len()];
                c.input(node, ReplicaInput::Disconnected(conns[slot]));
                conns[slot] = log_in(c, node, &ctx.ids[n + churned]);
                churned += 1;
            }
        }
        let (k, ns) = heartbeats(c, conns, *step);
        beats += k;
        beat_ns += ns;
        *step += 1;
    }
    let virtual_ns = steps as f64 * STEP.as_nanos() as f64;
    let entries = c.replicas[&leader].node().commit().0 - commit0.0;
    let secs = ctx.secs as f64;
    println!("{name}, {secs:.0} s virtual ({}):", clock.report());
    if churn > 0 {
        println!(
            "  churn: {churn} disconnects and {churn} logins per second ({} transitions/s to commit)",
            2 * churn
        );
    }
    println!(
        "  Raft entries committed: {:.2}/s ({entries} entries; {} presence batches)   target: under 10/s",
        entries as f64 / secs,
        batches(c) - batches0
    );
    println!(
        "  heartbeats: {beats} ({:.0}/s), {:.2} us each (handle + output routing)",
        beats as f64 / secs,
        beat_ns as f64 / beats.max(1) as f64 / 1e3
    );
    for (id, r) in &c.replicas {
        let busy = c.busy_ns.get(id).copied().unwrap_or(0) - busy0.get(id).copied().unwrap_or(0);
        let role = if *id == leader { "leader" } else { "follower" };
        println!(
            "  replica {} ({role:<8}, {:>6} leases): {:>6.2} % of one core   target: under 5 %",
            id.0,
            r.leases(),
            100.0 * busy as f64 / virtual_ns
        );
    }
    flush();
    assert_eq!(c.leader(), Some(leader), "no election");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A memory row in its own process (see `memory_row_isolated`).
    if let Some(at) = args.iter().position(|a| a == "--memory-row") {
        let arg = |k: usize| {
            args.get(at + k)
                .expect("--memory-row USERS PREKEYS signed|unverified")
        };
        let users = arg(1).parse().expect("users");
        let prekeys = arg(2).parse().expect("prekeys");
        let (live, rss, secs) = memory_row(users, prekeys, arg(3) == "signed");
        println!("ROW {live} {} {secs}", rss.unwrap_or(-1.0));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs the binary without it.
    let sizes = if !args.iter().any(|a| a == "--bench") {
        SMOKE
    } else if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    let parts: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| ["memory", "writes", "presence"].contains(a))
        .collect();
    let run = |part: &str| parts.is_empty() || parts.contains(&part);
    let total = Clock::start();
    println!("paloma-core directory bench: {sizes:?}");
    // Memory first: the resident-set figure is cleanest in a fresh process.
    if run("memory") {
        memory(sizes);
    }
    if run("writes") {
        writes(sizes);
    }
    if run("presence") {
        presence(sizes);
    }
    println!("\ntotal: {}", total.report());
}
