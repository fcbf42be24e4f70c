//! The composed replica under madsim: three [`paloma_core::replica::Replica`]s, each run by the
//! **production** driver (`paloma_runtime_tokio::driver::ReplicaMachine` over the production UDP
//! transport and group-committing redb persister, on madsim's network and simulated disks), and
//! users, each a [`Client`] state machine on its own connection
//! (`paloma_runtime_tokio::driver::ClientConn`). The faults are the shared vocabulary's, drawn per
//! seed ([`super::swarm`], [`super::plan`]) and carried out by the shared [`Nemesis`]; the Raft
//! checker ([`Checker`]) watches every replica step and every message at the boundary; the
//! directory checks are the directory simulator's own ([`Observed`]): username uniqueness,
//! linearizable lookups, one-time prekeys handed out once, and at the end every acknowledged
//! registration present on every replica.
//!
//! What this scenario does not fault: the client connections are in-process channels (the
//! encrypted links of the runtime issue replace them), so partitions cut replicas from each other,
//! not clients from replicas; a crashed replica closes its clients' connections, and they
//! reconnect elsewhere. The directory simulator (`paloma-sim dir`) faults client links too.
//!
//! The users' loop drives a `Client` by its sans-IO contract; it is test code until the runtime
//! issue gives the client its production driver.

#![allow(clippy::disallowed_types)] // the observed history is shared with the user tasks

use super::{replay, Checker, Nemesis};
use crate::dirsim::checks::Observed;
use crate::fastsim::{FaultPlan, Faults};
use paloma_core::client::{Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, OpId};
use paloma_core::directory::CommandError;
use paloma_core::raft::check::Violation;
use paloma_core::replica::protocol::{Consistency, LookupKey};
use paloma_core::replica::{PresenceConfig, ReplicaConfig};
use paloma_core::rng::DetRng;
use paloma_core::session::IdentityKeyPair;
use paloma_core::time::Now;
use paloma_core::{Instant, UserId};
use paloma_runtime_sim::clock::UNIX_MS_EPOCH;
use paloma_runtime_sim::{ClientConn, ReplicaCluster, SimConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Replicas in the scenario.
pub const REPLICAS: u64 = 3;
/// Names the users compete for: fewer than users, so registrations collide.
const NAMES: [&str; 6] = ["ana", "bob", "cyd", "dee", "eli", "fay"];
/// How long a user waits to connect before trying another replica.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts the summary prints, beyond [`Observed`]'s.
#[derive(Debug, Default)]
struct Counts {
    connects: AtomicU64,
    disconnects: AtomicU64,
    logins: AtomicU64,
}

/// A running replica scenario.
pub struct ReplicaRun {
    /// The cluster.
    pub cluster: Arc<ReplicaCluster>,
    /// The Raft safety checker (every replica step, every message at the boundary).
    pub checker: Arc<Checker>,
    /// The faults.
    pub nemesis: Nemesis<paloma_runtime_sim::ReplicaMachine>,
    observed: Arc<Mutex<Observed>>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    users: Vec<madsim::task::JoinHandle<()>>,
    test: String,
}

impl std::fmt::Debug for ReplicaRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaRun")
            .field("test", &self.test)
            .finish_non_exhaustive()
    }
}

/// The replica settings of the scenario: the production defaults with presence shortened to the
/// scenario's time scale (the bound is checked by the directory simulator).
#[must_use]
pub fn replica_config() -> ReplicaConfig {
    ReplicaConfig {
        presence: PresenceConfig {
            lease: Duration::from_secs(3),
            report_interval: Duration::from_millis(300),
            full_report_interval: Duration::from_secs(2),
            flush_interval: Duration::from_millis(300),
            ..PresenceConfig::default()
        },
        request_timeout: Duration::from_secs(3),
        ..ReplicaConfig::default()
    }
}

impl ReplicaRun {
    /// Starts the replicas and `users` users.
    #[must_use]
    pub fn start(test: &str, cfg: SimConfig, users: usize) -> ReplicaRun {
        let checker = Arc::new(Checker::new(test));
        let cluster = Arc::new(ReplicaCluster::start(
            REPLICAS,
            cfg,
            replica_config(),
            checker.clone(),
        ));
        let seed = madsim::runtime::Handle::current().seed();
        cluster.note(format_args!(
            "scenario {test} seed={seed} replicas={REPLICAS} users={users}"
        ));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Keys from the seed: every identity of a seed is the same at each replay.
        let mut keys = DetRng::fork(seed, "replica-users");
        let users = (0..users)
            .map(|i| {
                let identity = IdentityKeyPair::generate(&mut keys);
                let config = ClientConfig {
                    seed: seed ^ ((i as u64 + 1) << 40),
                    heartbeat_interval: Duration::from_millis(500),
                    request_timeout: Duration::from_secs(3),
                    ..ClientConfig::default()
                };
                let user = User {
                    index: i,
                    me: identity.user_id(),
                    client: Client::new(config, identity, Now::default())
                        .expect("a valid client configuration"),
                    cluster: cluster.clone(),
                    observed: observed.clone(),
                    counts: counts.clone(),
                    stop: stop.clone(),
                    test: test.to_string(),
                    rng: DetRng::fork(seed, &format!("replica-user-{i}")),
                    ops: BTreeMap::new(),
                    name: None,
                    registering: false,
                    taken: std::collections::BTreeSet::new(),
                };
                madsim::task::spawn(user.run())
            })
            .collect();
        ReplicaRun {
            nemesis: Nemesis::new(cluster.clone(), test),
            cluster,
            checker,
            observed,
            counts,
            stop,
            users,
            test: test.to_string(),
        }
    }

    /// Registrations acknowledged so far.
    #[must_use]
    pub fn registered(&self) -> u64 {
        lock(&self.observed).registered
    }

    /// Stops the users after their current step.
    pub async fn stop_users(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for u in self.users.drain(..) {
            u.await.expect("user task");
        }
    }

    /// After the faults healed and the replicas converged: every replica's directory keeps its
    /// invariants and holds every acknowledged registration that was not released.
    pub async fn check_directories(&self) {
        let observed = lock(&self.observed).clone();
        for id in self.cluster.ids() {
            let observed = observed.clone();
            let result = self
                .cluster
                .query(
                    id,
                    move |r| observed.check_final(r.directory()),
                    Duration::from_secs(5),
                )
                .await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(v)) => panic!("replica {id}: {v}\nreplay: {}", replay(&self.test)),
                Err(e) => panic!(
                    "replica {id} cannot be inspected after the faults healed ({e})\nreplay: {}",
                    replay(&self.test)
                ),
            }
        }
    }

    /// A one-line summary for the test output.
    #[must_use]
    pub fn summary(&self) -> String {
        let o = lock(&self.observed);
        format!(
            "{}: t={:.1}s registered={} taken={} lookups={} (checked {}) claims={} (empty {}) failed={} refused={} logins={} connects={} disconnects={} steps={} boundary={} terms={} commit={} faults={} crashes={}",
            self.test,
            self.cluster.now_nanos() as f64 / 1e9,
            o.registered,
            o.names_taken,
            o.lookups,
            o.lookups_checked,
            o.claims,
            o.claims_empty,
            o.failed,
            o.refused_locally,
            self.counts.logins.load(Ordering::Relaxed),
            self.counts.connects.load(Ordering::Relaxed),
            self.counts.disconnects.load(Ordering::Relaxed),
            self.checker.observations(),
            self.checker.boundary_checks(),
            self.checker.terms_with_leader(),
            self.checker.committed(),
            self.nemesis.counts.faults.load(Ordering::Relaxed),
            self.cluster.crash_reports().len(),
        )
    }

    /// Ends the run (last call of a scenario).
    pub async fn shutdown(mut self) {
        for u in self.users.drain(..) {
            u.abort();
        }
        self.cluster.shutdown().await;
    }
}

#[derive(Clone, Debug)]
enum Op {
    Register(String),
    Lookup(String, Consistency),
    Claim(UserId),
    Other,
}

/// One person: a `Client` machine, its connection, and the workload.
struct User {
    index: usize,
    me: UserId,
    client: Client,
    cluster: Arc<ReplicaCluster>,
    observed: Arc<Mutex<Observed>>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    test: String,
    rng: DetRng,
    ops: BTreeMap<OpId, (Op, u64)>,
    name: Option<String>,
    registering: bool,
    /// Names this user was told are taken: it tries the others first (so with as many names as
    /// users, everyone ends up with one).
    taken: std::collections::BTreeSet<String>,
}

impl User {
    fn now(&self) -> Now {
        let t = self.cluster.now_nanos();
        Now {
            instant: Instant::from_nanos(t),
            unix_ms: UNIX_MS_EPOCH + t / 1_000_000,
        }
    }

    fn fail(&self, v: &Violation) -> ! {
        panic!("user {}: {v}\nreplay: {}", self.index, replay(&self.test));
    }

    async fn run(mut self) {
        let ids = self.cluster.ids();
        let mut conn: Option<ClientConn> = None;
        let mut next_act = self.cluster.now_nanos() + self.rng.below(300_000_000);
        while !self.stop.load(Ordering::Relaxed) {
            let Some(link) = conn.as_mut() else {
                let target = ids[usize::try_from(self.rng.below(ids.len() as u64)).unwrap_or(0)];
                match self.cluster.connect(target, CONNECT_TIMEOUT).await {
                    Ok(c) => {
                        self.cluster
                            .note(format_args!("user {} connects to {target}", self.index));
                        self.counts.connects.fetch_add(1, Ordering::Relaxed);
                        conn = Some(c);
                        self.step(ClientInput::Connected { replica: target });
                    }
                    Err(_) => madsim::time::sleep(Duration::from_millis(100)).await,
                }
                self.flush(&mut conn).await;
                continue;
            };
            let timer = self.client.poll_timeout().map(|(at, _)| at.as_nanos());
            let wake = timer.map_or(next_act, |t| t.min(next_act));
            let now = self.cluster.now_nanos();
            let sleep = madsim::time::sleep(Duration::from_nanos(wake.saturating_sub(now)));
            tokio::select! {
                biased;
                frame = link.recv() => match frame {
                    Some(frame) => self.step(ClientInput::Frame(frame)),
                    None => {
                        conn = None;
                        self.counts.disconnects.fetch_add(1, Ordering::Relaxed);
                        self.step(ClientInput::Disconnected);
                    }
                },
                () = sleep => {
                    let now = self.cluster.now_nanos();
                    if timer.is_some_and(|t| t <= now) {
                        self.step(ClientInput::Timeout);
                    }
                    if next_act <= now {
                        next_act = now + 150_000_000 + self.rng.below(450_000_000);
                        self.act();
                    }
                }
            }
            self.flush(&mut conn).await;
        }
    }

    /// Feeds one input and handles the events; the frames to send stay queued for [`Self::flush`].
    fn step(&mut self, input: ClientInput) {
        let now = self.now();

        self.client.handle(now, input);
    }

    /// Drains the client's outputs: frames go out on the connection, events to the checks.
    async fn flush(&mut self, conn: &mut Option<ClientConn>) {
        while let Some(out) = self.client.poll_output() {
            match out {
                ClientOutput::Send(frame) => {
                    let sent = match conn.as_ref() {
                        Some(c) => c.send(frame).await.is_ok(),
                        None => true,
                    };
                    if !sent {
                        *conn = None;
                        self.counts.disconnects.fetch_add(1, Ordering::Relaxed);
                        let now = self.now();
                        self.client.handle(now, ClientInput::Disconnected);
                    }
                }
                ClientOutput::Reconnect => {
                    if conn.take().is_some() {
                        let now = self.now();
                        self.client.handle(now, ClientInput::Disconnected);
                    }
                }
                ClientOutput::Event(event) => {
                    if let Err(v) = self.on_event(event) {
                        self.fail(&v);
                    }
                }
            }
        }
        self.client.check_invariants();
    }

    fn on_event(&mut self, event: ClientEvent) -> Result<(), Violation> {
        let now = self.cluster.now_nanos();
        let mut observed = lock(&self.observed);
        match event {
            ClientEvent::LoggedIn { user } => {
                if user != self.me {
                    return Err(Violation(format!("logged in as {user:?}, not itself")));
                }
                self.counts.logins.fetch_add(1, Ordering::Relaxed);
            }
            ClientEvent::Registered { op, user, .. } => {
                let Some((Op::Register(name), _)) = self.ops.remove(&op) else {
                    return Err(Violation(
                        "Registered for an op that was no registration".into(),
                    ));
                };
                if user != self.me {
                    return Err(Violation("registered as someone else".into()));
                }
                observed.on_registered(&name, user, now)?;
                self.cluster
                    .note(format_args!("user {} registered @{name}", self.index));
                self.name = Some(name);
                self.registering = false;
            }
            ClientEvent::LookedUp { op, reply } => {
                if let Some((Op::Lookup(name, consistency), issued)) = self.ops.remove(&op) {
                    observed.on_lookup(&name, consistency, issued, now, &reply)?;
                }
            }
            ClientEvent::BundleClaimed {
                op,
                bundle,
                pool_empty,
            } => {
                if let Some((Op::Claim(target), _)) = self.ops.remove(&op) {
                    observed.on_claim(target, bundle.one_time_prekey.map(|k| k.id), pool_empty)?;
                }
            }
            ClientEvent::Failed { op, error } => {
                let kind = self.ops.remove(&op);
                self.cluster.note(format_args!(
                    "user {} op {kind:?} failed: {error}",
                    self.index
                ));
                match (&kind, &error) {
                    (
                        Some((Op::Register(name), _)),
                        paloma_core::client::OpError::Command(CommandError::UsernameTaken),
                    ) => {
                        self.taken.insert(name.clone());
                        observed.on_taken();
                    }
                    _ => observed.on_failed(),
                }
                if let Some((Op::Register(_), _)) = kind {
                    self.registering = false;
                }
            }
            ClientEvent::Done { op } => {
                self.ops.remove(&op);
            }
            _ => {}
        }
        Ok(())
    }

    /// One workload step: register until a name is held, then look up, claim and publish.
    fn act(&mut self) {
        if self.ops.len() >= 4 {
            return;
        }
        let now = self.now();
        let pick =
            |rng: &mut DetRng| NAMES[usize::try_from(rng.below(NAMES.len() as u64)).unwrap_or(0)];
        let (op, result) = if self.name.is_none() {
            if self.registering {
                return;
            }
            let untried: Vec<&str> = NAMES
                .iter()
                .copied()
                .filter(|n| !self.taken.contains(*n))
                .collect();
            if untried.is_empty() {
                self.taken.clear(); // names are released too: try them all again
            }
            let name = if untried.is_empty() {
                pick(&mut self.rng).to_string()
            } else {
                untried[usize::try_from(self.rng.below(untried.len() as u64)).unwrap_or(0)]
                    .to_string()
            };
            // Case folding: `ANA` and `ana` are one name.
            let typed = if self.rng.below(4) == 0 {
                name.to_uppercase()
            } else {
                name.clone()
            };
            let r = self.client.register(now, &typed, Vec::new());
            if r.is_ok() {
                self.registering = true;
            }
            (Op::Register(name), r)
        } else {
            let roll = self.rng.below(100);
            let holders = lock(&self.observed).holders();
            if roll < 50 {
                let name = pick(&mut self.rng).to_string();
                let consistency = if self.rng.below(10) < 7 {
                    Consistency::Linearizable
                } else {
                    Consistency::Local
                };
                let r = self
                    .client
                    .lookup(now, LookupKey::Name(name.clone()), consistency);
                (Op::Lookup(name, consistency), r)
            } else if roll < 85 && !holders.is_empty() {
                let target =
                    holders[usize::try_from(self.rng.below(holders.len() as u64)).unwrap_or(0)];
                (Op::Claim(target), self.client.claim_bundle(now, target))
            } else {
                (Op::Other, self.client.publish_one_time_prekeys(now, 3))
            }
        };
        match result {
            Ok(id) => {
                self.ops.insert(id, (op, self.cluster.now_nanos()));
            }
            Err(e) => {
                self.cluster
                    .note(format_args!("user {} refused locally: {e}", self.index));
                lock(&self.observed).refused_locally += 1;
            }
        }
    }
}

/// A whole replica scenario: the seed's swarm profile on top of `base`, warm-up, `fault_time` of
/// the seed's planned faults, healing, then convergence and the directory checks. Requires at
/// least `registered_min` acknowledged registrations. Returns the run's one-line summary.
pub async fn replica_chaos(
    test: &str,
    cfg: SimConfig,
    users: usize,
    base: &Faults,
    fault_time: Duration,
    registered_min: u64,
) -> String {
    let quiet = *base == Faults::none();
    let (cfg, faults, profile) = if quiet {
        (cfg, Faults::none(), "no faults".to_string())
    } else {
        super::swarm(cfg, base)
    };
    // The replica has no transfer request yet (`SimMachine::transfer` answers false): a planned
    // transfer would silently do nothing, which no scenario may pass with.
    assert!(
        !faults.transfers,
        "the replica scenarios cannot carry out leadership transfers"
    );
    let plan = if quiet {
        FaultPlan::default()
    } else {
        super::plan(&faults, REPLICAS, fault_time)
    };
    let mut run = ReplicaRun::start(test, cfg, users);
    run.cluster.note(format_args!("fault profile: {profile}"));
    run.nemesis.wait_for_leader().await;
    run.nemesis.run_plan(&faults, &plan, fault_time).await;
    // Heal, restart whatever is down, and give the users time to finish under a quiet network.
    run.nemesis.heal_all();
    run.nemesis.wait_for_leader().await;
    madsim::time::sleep(Duration::from_secs(8)).await;
    run.stop_users().await;
    run.nemesis.converge(Duration::from_secs(10)).await;
    run.check_directories().await;
    let registered = run.registered();
    assert!(
        registered >= registered_min,
        "only {registered} registrations acknowledged (want {registered_min}): {} [{profile}]\nreplay: {}",
        run.summary(),
        replay(test)
    );
    let summary = format!("{} [{profile}]", run.summary());
    run.shutdown().await;
    summary
}
