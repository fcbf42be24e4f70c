//! The simulated world of the directory family: replicas with disks and drifting clocks, clients
//! on connections, the network, the fault plan and the workload.

use super::checks::{Attack, AttackKind, Observed, ENVELOPE_MARKER};
use crate::fastsim::{dur_nanos, Fault, FaultPlan, Faults, Trace};
use paloma_core::client::{
    Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, OpError, OpId,
};
use paloma_core::directory::mailbox::ENVELOPE_BYTES_MAX;
use paloma_core::directory::{
    CommandBody, CommandError, Directory, MailboxLimits, Presence, SignedCommand,
};
use paloma_core::raft::check::{SafetyChecker, Violation};
use paloma_core::raft::state_machine::StateMachine;
use paloma_core::raft::storage::{apply_op, PersistBatch, Recovered};
use paloma_core::raft::types::Payload;
use paloma_core::raft::{Config, Envelope};
use paloma_core::replica::protocol::{
    ClientFrame, Consistency, LookupKey, PeerFrame, ReplicaFrame, Request,
};
use paloma_core::replica::{PresenceConfig, Replica, ReplicaConfig, ReplicaInput, ReplicaOutput};
use paloma_core::rng::DetRng;
use paloma_core::session::{Entropy, IdentityKeyPair};
use paloma_core::time::Now;
use paloma_core::{ConnId, Instant, MailboxSeq, MessageId, NodeId, RequestId, UserId};
use paloma_runtime_sim::clock::{DriftClock, UNIX_MS_EPOCH};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

/// Everything that defines a run of the directory family.
#[derive(Clone, Debug)]
pub struct DirConfig {
    /// The seed.
    pub seed: u64,
    /// Replicas (voters 1..=replicas).
    pub replicas: u64,
    /// Clients.
    pub clients: usize,
    /// Length of the chaos phase.
    pub chaos: Duration,
    /// Length of the healed phase at the end (must exceed the presence bound).
    pub liveness: Duration,
    /// Fault rates and kinds (with `swarm`, the seed's own profile is drawn on top).
    pub faults: Faults,
    /// Raft settings template.
    pub raft: Config,
    /// Presence timing (short, so runs stay short; the bound scales with it).
    pub presence: PresenceConfig,
    /// Client heartbeat interval.
    pub heartbeat: Duration,
    /// Draw this seed's fault profile.
    pub swarm: bool,
    /// Send the attacker's forged, replayed, invalid and oversized requests.
    pub attacker: bool,
    /// Record the story trace.
    pub trace: bool,
    /// The directory's mailbox limits (with `swarm`, some seeds draw small quotas, a short TTL
    /// or a slow purge, so the bounds are reached within a run).
    pub mailbox: MailboxLimits,
    /// The final drain's longest span: every client online, no new deposits, until every
    /// mailbox is fetched and acknowledged.
    pub drain: Duration,
}

impl DirConfig {
    /// The family's default for `seed`: 3 replicas, 10 clients, 20 s of chaos, 20 s healed.
    #[must_use]
    pub fn new(seed: u64) -> DirConfig {
        DirConfig {
            seed,
            replicas: 3,
            clients: 10,
            chaos: Duration::from_secs(20),
            liveness: Duration::from_secs(20),
            faults: Faults {
                // Membership, transfers and the Raft-specific targeted faults have their own
                // families; here the replica and the client protocol are under attack.
                membership: false,
                transfers: false,
                targeted: false,
                lease_attacks: false,
                config_splits: false,
                ..Faults::default()
            },
            raft: Config {
                snapshot_threshold_entries: 64,
                snapshot_trailing_entries: 8,
                snapshot_chunk_bytes: 1024,
                ..Config::default()
            },
            presence: PresenceConfig {
                lease: Duration::from_secs(3),
                report_interval: Duration::from_millis(250),
                full_report_interval: Duration::from_secs(2),
                flush_interval: Duration::from_millis(250),
                view_stale: Duration::from_millis(1500),
                leader_grace: Duration::from_secs(3),
                leases_max: 10_000,
            },
            heartbeat: Duration::from_secs(1),
            swarm: true,
            attacker: true,
            trace: false,
            mailbox: MailboxLimits::default(),
            drain: Duration::from_secs(20),
        }
    }

    fn resolved(&self) -> DirConfig {
        let mut cfg = self.clone();
        if cfg.swarm {
            let mut rng = DetRng::fork(cfg.seed, "swarm");
            cfg.faults = self.faults.swarm(&mut cfg.raft, &mut rng);
            // The swarm's chunk sizes suit the key-value family's tiny state; a directory of a few
            // users with full prekey pools is tens of KiB, and 64-byte chunks would spend the run
            // on one snapshot transfer. Chunk resumption is still exercised (several chunks).
            cfg.raft.snapshot_chunk_bytes = cfg.raft.snapshot_chunk_bytes.max(4096);
            // The family's kinds stay as set (swarm keeps what the family fixed).
            cfg.faults.membership = false;
            cfg.faults.transfers = false;
            cfg.faults.targeted = false;
            cfg.faults.lease_attacks = false;
            cfg.faults.config_splits = false;
            // Its own fork, so the mailbox draw does not move the fault profile.
            let mut m = DetRng::fork(cfg.seed, "mailbox-limits");
            if m.below(3) == 0 {
                cfg.mailbox.messages_max = 2 + m.below(6) as usize;
                cfg.mailbox.bytes_max = 512 + m.below(4096);
            }
            if m.below(4) == 0 {
                cfg.mailbox.ttl_ms = 3_000 + m.below(12_000);
            }
            if m.below(4) == 0 {
                cfg.mailbox.purge_per_apply_max = 1 + m.below(2) as usize;
            }
            cfg.swarm = false;
        }
        cfg
    }
}

/// What a run did and saw.
#[derive(Clone, Debug, Default)]
pub struct DirReport {
    /// The seed.
    pub seed: u64,
    /// Simulated time at the end.
    pub sim_time: Duration,
    /// Events processed.
    pub events: u64,
    /// Peer messages sent / dropped / duplicated.
    pub messages: (u64, u64, u64),
    /// Replica crashes.
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// What the clients and the attacker saw (registrations, claims, lookups, attacks).
    pub observed: Observed,
    /// Presence batches committed by leaders (sum over replicas' counters at the end).
    pub presence_batches: u64,
    /// Safety observations.
    pub observations: u64,
    /// The fault profile.
    pub profile: String,
    /// The first failure.
    pub failure: Option<String>,
}

impl DirReport {
    /// One line for sweeps.
    #[must_use]
    pub fn summary(&self) -> String {
        let o = &self.observed;
        format!(
            "seed {}: {:.1}s simulated, {} events, {} msgs ({} dropped, {} dup), {} crashes, {} partitions, {} registered ({} taken), {} claims ({} empty), {} lookups ({} linearizable checked), {} attacks ({} refused as expected), {} presence checks, {} presence batches, {} safety checks, mailbox: {} deposits ({} acknowledged, {} delivered, {} excused, {} full), {} fetches, {} acks, {} pushes, {} stored copies verified{}",
            self.seed,
            self.sim_time.as_secs_f64(),
            self.events,
            self.messages.0,
            self.messages.1,
            self.messages.2,
            self.crashes,
            self.partitions,
            o.registered,
            o.names_taken,
            o.claims,
            o.claims_empty,
            o.lookups,
            o.lookups_checked,
            o.attacks_sent,
            o.attacks_refused,
            o.presence_checked,
            self.presence_batches,
            self.observations,
            o.mailbox.sent,
            o.mailbox.acked,
            o.mailbox.fetched,
            o.mailbox.excused,
            o.mailbox.full,
            o.mailbox.fetches,
            o.mailbox.acks,
            o.mailbox.pushes,
            o.mailbox.stored_copies,
            self.failure
                .as_ref()
                .map_or(String::new(), |f| format!(" -- FAILED: {f}\n  profile: {}", self.profile))
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Peer {
        to: NodeId,
        frame: Vec<u8>,
    },
    ToReplica {
        node: NodeId,
        conn: ConnId,
        frame: Vec<u8>,
    },
    ToClient {
        conn: ConnId,
        frame: Vec<u8>,
    },
    Open {
        conn: ConnId,
    },
    Close {
        conn: ConnId,
    },
    NodeTimer {
        node: NodeId,
        generation: u64,
    },
    ClientTimer {
        client: usize,
        generation: u64,
    },
    DiskDone {
        node: NodeId,
        incarnation: u64,
    },
    Fault(usize),
    Restart {
        node: NodeId,
    },
    EndChaos,
    Act {
        client: usize,
    },
    Toggle {
        client: usize,
    },
    Reconnect {
        client: usize,
    },
    Attack,
}

struct Node {
    replica: Option<Replica>,
    disk: Recovered,
    queue: VecDeque<PersistBatch>,
    busy_until: u64,
    incarnation: u64,
    timer_generation: u64,
    /// When the live timer event fires.
    timer_at: Option<u64>,
    clock: DriftClock,
}

/// Who holds the client end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Client(usize),
    Attacker,
}

#[derive(Clone, Copy, Debug)]
struct Link {
    node: NodeId,
    end: End,
    /// Per-direction ordering (TCP): nothing overtakes what was sent before it.
    to_replica_at: u64,
    to_client_at: u64,
}

struct SimClient {
    client: Client,
    user: UserId,
    conn: Option<ConnId>,
    wants_link: bool,
    online: bool,
    /// Since when the client has been continuously logged in, and since when offline.
    logged_in_since: Option<u64>,
    offline_since: Option<u64>,
    /// The client's current username, once the cluster acknowledged it, and since when.
    name: Option<String>,
    registered_at: Option<u64>,
    /// A registration or deregistration is in flight.
    busy: Option<OpId>,
    timer_generation: u64,
    /// Ops in flight: what they were, when issued.
    ops: BTreeMap<OpId, (Op, u64)>,
    /// The client's side of its mailbox.
    mbx: Mbx,
    /// Deposits this client sent (the per-sender counter in the envelope).
    deposits_sent: u32,
    /// Its last few deposits `(id, recipient, recipient's epoch, envelope)`, to resend.
    sent_log: VecDeque<(MessageId, UserId, u64, Vec<u8>)>,
}

/// A client's mailbox draining: fetch after the cursor (on a push, on login, on `more`), record
/// what arrived with the checker ("persist"), then acknowledge up to the cursor (ARCHITECTURE.md, "Mailboxes", rule 4).
/// One fetch or acknowledgement at a time.
#[derive(Clone, Copy, Debug, Default)]
struct Mbx {
    /// Registrations of this client acknowledged so far (seqs start again with each).
    epoch: u64,
    /// Registered (acknowledged) and not deregistering: fetches and acknowledgements may go.
    open: bool,
    /// The highest seq fetched and recorded.
    cursor: MailboxSeq,
    /// The highest acknowledgement applied.
    acked_upto: MailboxSeq,
    fetch: Option<OpId>,
    ack: Option<OpId>,
    want_fetch: bool,
    /// The next fetch starts from 0, as a client that lost its cursor would (so a fetch can
    /// show what an applied acknowledgement failed to delete).
    from_zero: bool,
}

#[derive(Clone, Debug)]
pub(super) enum Op {
    Register(String),
    Deregister,
    Lookup(String, Consistency),
    Claim(UserId),
    Deposit {
        id: MessageId,
        to: UserId,
        len: usize,
    },
    Fetch {
        after: MailboxSeq,
        acked_upto: MailboxSeq,
        epoch: u64,
    },
    Ack {
        epoch: u64,
    },
    Other,
}

struct Attacker {
    identity: IdentityKeyPair,
    conn: Option<ConnId>,
    counter: u64,
    session: u64,
    /// The attacker's own registration, once applied: replayed later.
    registered: Option<SignedCommand>,
    /// The counters of every registration it sent (one of them may have applied).
    register_counters: Vec<u64>,
    pending: Option<(RequestId, AttackKind)>,
    next_request: u64,
    /// A client's acknowledgement seen on the wire (presented later on the attacker's login).
    sniffed_ack: Option<SignedCommand>,
    /// The attacker's own applied acknowledgement: replayed later.
    acked: Option<SignedCommand>,
    /// The counters of every acknowledgement it sent (one of them may have applied).
    ack_counters: Vec<u64>,
}

/// A run of the directory family.
pub struct DirSim {
    cfg: DirConfig,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    queue_seq: u64,
    nodes: BTreeMap<NodeId, Node>,
    clients: Vec<SimClient>,
    attacker: Attacker,
    links: BTreeMap<ConnId, Link>,
    next_conn: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    plan: FaultPlan,
    chaos_over: bool,
    net_rng: DetRng,
    disk_rng: DetRng,
    work_rng: DetRng,
    checker: SafetyChecker,
    observed: Observed,
    report: DirReport,
    trace: Trace,
    names: Vec<String>,
    /// Every one-time prekey a client ever generated: `(owner, id) → public key`.
    generated: BTreeMap<(UserId, paloma_core::session::PrekeyId), [u8; 32]>,
    /// The final drain is on: no new deposits, only mailbox draining.
    draining: bool,
    /// The highest directory clock any replica applied (for the TTL excuse).
    dir_clock_max: u64,
    /// Client index by user.
    user_index: BTreeMap<UserId, usize>,
}

impl std::fmt::Debug for DirSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirSim")
            .field("seed", &self.cfg.seed)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// Entropy from a forked seed, for identities.
struct SeedEntropy(DetRng);
impl Entropy for SeedEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill(buf);
    }
}

const MS: u64 = 1_000_000;

impl DirSim {
    /// Builds the world at time zero.
    #[must_use]
    pub fn new(cfg: DirConfig) -> DirSim {
        let cfg = cfg.resolved();
        let voters: Vec<NodeId> = (1..=cfg.replicas).map(NodeId).collect();
        let mut fault_rng = DetRng::fork(cfg.seed, "faults");
        let plan = FaultPlan::generate(&cfg.faults, &voters, cfg.chaos, &mut fault_rng);
        let mut drift_rng = DetRng::fork(cfg.seed, "drift");
        let mut nodes = BTreeMap::new();
        for &id in &voters {
            let max = u64::from(cfg.faults.drift_ppm_max);
            let drift = if max == 0 {
                0
            } else {
                drift_rng.below(2 * max + 1) as i64 - max as i64
            };
            nodes.insert(
                id,
                Node {
                    replica: None,
                    disk: Recovered::bootstrap(voters.iter().copied()),
                    queue: VecDeque::new(),
                    busy_until: 0,
                    incarnation: 0,
                    timer_generation: 0,
                    timer_at: None,
                    clock: DriftClock::new(i32::try_from(drift).expect("bounded drift")),
                },
            );
        }
        let mut key_rng = SeedEntropy(DetRng::fork(cfg.seed, "identities"));
        let client_cfg = ClientConfig {
            heartbeat_interval: cfg.heartbeat,
            request_timeout: Duration::from_secs(3),
            ..ClientConfig::default()
        };
        let clients: Vec<SimClient> = (0..cfg.clients)
            .map(|i| {
                let identity = IdentityKeyPair::generate(&mut key_rng);
                let user = identity.user_id();
                let config = ClientConfig {
                    seed: cfg.seed ^ ((i as u64 + 1) << 40),
                    ..client_cfg.clone()
                };
                SimClient {
                    client: Client::new(config, identity, Now::default())
                        .expect("a valid client configuration"),
                    user,
                    conn: None,
                    wants_link: true,
                    online: true,
                    logged_in_since: None,
                    offline_since: None,
                    name: None,
                    registered_at: None,
                    busy: None,
                    timer_generation: 0,
                    ops: BTreeMap::new(),
                    mbx: Mbx::default(),
                    deposits_sent: 0,
                    sent_log: VecDeque::new(),
                }
            })
            .collect();
        // Fewer names than clients: registrations contend.
        let names = (0..cfg.clients.div_ceil(2).max(2))
            .map(|i| format!("user{i}"))
            .collect();
        let attacker = Attacker {
            identity: IdentityKeyPair::generate(&mut key_rng),
            conn: None,
            counter: 0,
            session: 1,
            registered: None,
            register_counters: Vec::new(),
            pending: None,
            next_request: 1,
            sniffed_ack: None,
            acked: None,
            ack_counters: Vec::new(),
        };
        let user_index = clients
            .iter()
            .enumerate()
            .map(|(i, c): (usize, &SimClient)| (c.user, i))
            .collect();
        let mut sim = DirSim {
            net_rng: DetRng::fork(cfg.seed, "net"),
            disk_rng: DetRng::fork(cfg.seed, "disk"),
            work_rng: DetRng::fork(cfg.seed, "workload"),
            trace: Trace::story(cfg.trace, false),
            report: DirReport {
                seed: cfg.seed,
                profile: format!(
                    "{}; mailbox limits {:?}",
                    cfg.faults.describe(&cfg.raft),
                    cfg.mailbox
                ),
                ..DirReport::default()
            },
            cfg,
            now: 0,
            queue: BinaryHeap::new(),
            queue_seq: 0,
            nodes,
            clients,
            attacker,
            links: BTreeMap::new(),
            next_conn: 1,
            blocked: BTreeSet::new(),
            plan,
            chaos_over: false,
            checker: SafetyChecker::new(),
            observed: Observed::default(),
            names,
            generated: BTreeMap::new(),
            draining: false,
            dir_clock_max: 0,
            user_index,
        };
        for id in voters {
            sim.start_node(id);
        }
        for (i, (at, _)) in sim.plan.events.clone().iter().enumerate() {
            sim.schedule(*at, Ev::Fault(i));
        }
        sim.schedule(dur_nanos(sim.cfg.chaos), Ev::EndChaos);
        for c in 0..sim.clients.len() {
            let at = 100 * MS + sim.work_rng.below(400 * MS);
            sim.schedule(at, Ev::Act { client: c });
            let toggle = 2_000 * MS + sim.work_rng.below(8_000 * MS);
            sim.schedule(toggle, Ev::Toggle { client: c });
            sim.connect_client(c, at);
        }
        if sim.cfg.attacker {
            sim.schedule(1_000 * MS, Ev::Attack);
        }
        sim
    }

    /// Runs the chaos and healed phases and the end checks.
    pub fn run(mut self) -> (super::DirReport, Trace) {
        let end = dur_nanos(self.cfg.chaos + self.cfg.liveness);
        let result = self
            .run_until(end)
            .and_then(|()| self.check_end())
            .and_then(|()| self.drain_and_check(end));
        if let Err(v) = result {
            self.trace.line(self.now, format_args!("FAILED: {}", v.0));
            self.report.failure = Some(v.0);
        }
        self.report.sim_time = Duration::from_nanos(self.now);
        self.report.observations = self.checker.observations;
        self.report.presence_batches = self
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.stats().presence_batches)
            .sum();
        self.report.observed = self.observed.clone();
        (self.report, self.trace)
    }

    fn run_until(&mut self, until: u64) -> Result<(), Violation> {
        let mut same_instant = 0u64;
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until {
                break;
            }
            let Reverse((at, _, ev)) = self.queue.pop().expect("peeked");
            // A machine whose deadline stays in the past after it was woken would spin here
            // forever: time must move.
            same_instant = if at == self.now { same_instant + 1 } else { 0 };
            if same_instant > 100_000 {
                let timers: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|(id, n)| {
                        Some(format!(
                            "{id}: {:?} (role {:?}, node now {:?}, local now {:?})",
                            n.replica.as_ref()?.poll_timeout(),
                            n.replica.as_ref()?.node().role(),
                            n.replica.as_ref()?.node().now(),
                            n.clock.local_nanos(at)
                        ))
                    })
                    .collect();
                return Err(Violation(format!(
                    "100,000 events at one instant {at} (last {ev:?}): a timer that never clears; timers {timers:?}"
                )));
            }
            self.now = at;
            self.report.events += 1;
            self.dispatch(ev)?;
        }
        self.now = self.now.max(until);
        Ok(())
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.queue_seq += 1;
        self.queue.push(Reverse((at, self.queue_seq, ev)));
    }

    fn dispatch(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Peer { to, frame } => {
                let from_frame = frame;
                self.step_replica(to, |r, now| {
                    // The sender is the first byte pair of the route (see `send_peer`).
                    let (from, frame) = split_from(&from_frame);
                    r.handle(
                        now,
                        ReplicaInput::Peer {
                            from,
                            frame: frame.to_vec(),
                        },
                    );
                })
            }
            Ev::ToReplica { node, conn, frame } => {
                if self.links.get(&conn).is_none_or(|l| l.node != node) {
                    return Ok(());
                }
                self.step_replica(node, |r, now| {
                    r.handle(now, ReplicaInput::Client { conn, frame })
                })
            }
            Ev::ToClient { conn, frame } => {
                let Some(link) = self.links.get(&conn).copied() else {
                    return Ok(());
                };
                match link.end {
                    End::Client(c) => {
                        self.step_client(c, |cl, now| cl.handle(now, ClientInput::Frame(frame)))
                    }
                    End::Attacker => self.attacker_frame(conn, &frame),
                }
            }
            Ev::Open { conn } => {
                let Some(link) = self.links.get(&conn).copied() else {
                    return Ok(());
                };
                if self.nodes[&link.node].replica.is_none() {
                    return self.close(conn);
                }
                self.step_replica(link.node, |r, now| {
                    r.handle(now, ReplicaInput::Connected(conn))
                })?;
                if let End::Client(c) = link.end {
                    let node = link.node;
                    self.step_client(c, |cl, now| {
                        cl.handle(now, ClientInput::Connected { replica: node })
                    })?;
                }
                Ok(())
            }
            Ev::Close { conn } => self.close(conn),
            Ev::NodeTimer { node, generation } => {
                let n = &self.nodes[&node];
                if n.replica.is_none() || n.timer_generation != generation {
                    return Ok(());
                }
                self.nodes.get_mut(&node).expect("node").timer_at = None;
                self.step_replica(node, |r, now| r.handle(now, ReplicaInput::Timeout))
            }
            Ev::ClientTimer { client, generation } => {
                if self.clients[client].timer_generation != generation {
                    return Ok(());
                }
                self.step_client(client, |cl, now| cl.handle(now, ClientInput::Timeout))
            }
            Ev::DiskDone { node, incarnation } => self.disk_done(node, incarnation),
            Ev::Fault(i) => {
                if self.chaos_over {
                    return Ok(());
                }
                let fault = self.plan.events[i].1.clone();
                self.inject(fault)
            }
            Ev::Restart { node } => self.restart(node),
            Ev::EndChaos => self.heal(),
            Ev::Act { client } => self.act(client),
            Ev::Toggle { client } => self.toggle(client),
            Ev::Reconnect { client } => {
                if self.clients[client].wants_link && self.clients[client].online {
                    self.connect_client(client, MS);
                }
                Ok(())
            }
            Ev::Attack => self.attack(),
        }
    }

    // ----- replicas ------------------------------------------------------------------------------

    fn local_now(&self, id: NodeId) -> Now {
        let instant = self.nodes[&id].clock.local_nanos(self.now);
        Now {
            instant,
            unix_ms: UNIX_MS_EPOCH + instant.as_nanos() / MS,
        }
    }

    fn client_now(&self) -> Now {
        Now {
            instant: Instant::from_nanos(self.now),
            unix_ms: UNIX_MS_EPOCH + self.now / MS,
        }
    }

    fn start_node(&mut self, id: NodeId) {
        let now = self.local_now(id);
        let n = self.nodes.get_mut(&id).expect("node");
        let cfg = ReplicaConfig {
            raft: Config {
                id,
                ..self.cfg.raft.clone()
            },
            presence: self.cfg.presence.clone(),
            request_timeout: Duration::from_secs(3),
            ..ReplicaConfig::default()
        };
        let seed = self.cfg.seed ^ (id.0 << 48) ^ (n.incarnation << 32);
        // Every replica gets the same limits, as the directory requires.
        let directory = Directory::with_mailbox_limits(self.cfg.mailbox);
        n.replica = Some(
            Replica::with_directory(cfg, n.disk.clone(), directory, seed, now)
                .expect("recovered state is valid"),
        );
        self.arm_node(id);
    }

    fn step_replica(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut Replica, Now),
    ) -> Result<(), Violation> {
        let now = self.local_now(id);
        let Some(replica) = self.nodes.get_mut(&id).expect("node").replica.as_mut() else {
            return Ok(());
        };
        f(replica, now);
        while let Some(out) = self
            .nodes
            .get_mut(&id)
            .expect("node")
            .replica
            .as_mut()
            .expect("live")
            .poll_output()
        {
            match out {
                ReplicaOutput::Persist(batch) => self.submit_disk(id, batch),
                ReplicaOutput::Peer { to, frame } => self.send_peer(id, to, frame)?,
                ReplicaOutput::Client { conn, frame } => self.send_to_client(conn, frame),
                ReplicaOutput::Close(conn) => {
                    let at = self.now + MS;
                    self.schedule(at, Ev::Close { conn });
                }
                ReplicaOutput::Event(_) => {}
            }
        }
        let replica = self.nodes[&id].replica.as_ref().expect("live");
        replica.check_invariants();
        self.dir_clock_max = self.dir_clock_max.max(replica.directory().clock_unix_ms());
        self.checker.observe(replica.node(), |d| d.digest())?;
        let nodes = &self.nodes;
        self.checker
            .observe_commit_durable(replica.node(), |n| nodes.get(&n).map(|x| &x.disk))?;
        self.arm_node(id);
        Ok(())
    }

    fn arm_node(&mut self, id: NodeId) {
        let Some((deadline, _)) = self.nodes[&id]
            .replica
            .as_ref()
            .and_then(Replica::poll_timeout)
        else {
            return;
        };
        let at = self.nodes[&id].clock.global_nanos(deadline).max(self.now);
        let n = self.nodes.get_mut(&id).expect("node");
        if n.timer_at == Some(at) {
            // Already armed for that instant: one event, not one per step.
            return;
        }
        n.timer_at = Some(at);
        n.timer_generation += 1;
        let generation = n.timer_generation;
        self.schedule(
            at,
            Ev::NodeTimer {
                node: id,
                generation,
            },
        );
    }

    fn send_peer(&mut self, from: NodeId, to: NodeId, frame: Vec<u8>) -> Result<(), Violation> {
        self.report.messages.0 += 1;
        // The boundary: what a Raft message promises must already be on the sender's disk.
        if let Ok(PeerFrame::Raft(bytes)) = PeerFrame::decode(&frame) {
            let env = Envelope::decode(&bytes, usize::MAX)
                .map_err(|e| Violation(format!("{from} sent an undecodable Raft frame: {e}")))?;
            self.checker.observe_send(&env, &self.nodes[&from].disk)?;
        }
        if self.blocked.contains(&(from, to)) || !self.nodes.contains_key(&to) {
            self.report.messages.1 += 1;
            return Ok(());
        }
        let f = self.cfg.faults.clone();
        let lossy = !self.chaos_over;
        if lossy && self.net_rng.below(1_000_000) < u64::from(f.loss_ppm) {
            self.report.messages.1 += 1;
            return Ok(());
        }
        let copies = if lossy && self.net_rng.below(1_000_000) < u64::from(f.dup_ppm) {
            2
        } else {
            1
        };
        self.report.messages.2 += copies - 1;
        let routed = with_from(from, &frame);
        for _ in 0..copies {
            let (lo, hi) = (dur_nanos(f.delay_min), dur_nanos(f.delay_max));
            let mut delay = lo + self.net_rng.below(hi.saturating_sub(lo).max(1));
            if lossy && self.net_rng.below(1_000_000) < u64::from(f.spike_ppm) {
                delay += self.net_rng.below(dur_nanos(f.spike_max).max(1));
            }
            let at = self.now + delay;
            self.schedule(
                at,
                Ev::Peer {
                    to,
                    frame: routed.clone(),
                },
            );
        }
        Ok(())
    }

    fn submit_disk(&mut self, id: NodeId, batch: PersistBatch) {
        let f = &self.cfg.faults;
        let (lo, hi) = (dur_nanos(f.disk_latency_min), dur_nanos(f.disk_latency_max));
        let mut latency = lo + self.disk_rng.below(hi.saturating_sub(lo).max(1));
        if f.disk_stall_ppm > 0
            && !self.chaos_over
            && self.disk_rng.below(1_000_000) < u64::from(f.disk_stall_ppm)
        {
            latency += self.disk_rng.below(dur_nanos(f.disk_stall_max).max(1));
        }
        let n = self.nodes.get_mut(&id).expect("node");
        n.queue.push_back(batch);
        let done = (self.now + latency).max(n.busy_until);
        n.busy_until = done;
        let incarnation = n.incarnation;
        self.schedule(
            done,
            Ev::DiskDone {
                node: id,
                incarnation,
            },
        );
    }

    fn disk_done(&mut self, id: NodeId, incarnation: u64) -> Result<(), Violation> {
        let n = self.nodes.get_mut(&id).expect("node");
        if n.incarnation != incarnation || n.replica.is_none() {
            return Ok(());
        }
        let Some(batch) = n.queue.pop_front() else {
            return Ok(());
        };
        for op in &batch.ops {
            apply_op(&mut n.disk, op);
        }
        let hs = n.disk.hard_state;
        self.checker.observe_durable(id, hs.term, hs.vote)?;
        self.step_replica(id, |r, now| {
            r.handle(now, ReplicaInput::Persisted(batch.seq))
        })
    }

    fn crash(&mut self, id: NodeId) -> Result<(), Violation> {
        let torn = self.cfg.faults.torn_writes;
        let n = self.nodes.get_mut(&id).expect("node");
        if n.replica.is_none() {
            return Ok(());
        }
        n.replica = None;
        n.incarnation += 1;
        n.busy_until = 0;
        n.timer_at = None;
        if let Some(first) = n.queue.front() {
            if torn && !first.ops.is_empty() {
                let keep = self.disk_rng.below(first.ops.len() as u64 + 1) as usize;
                for op in &first.ops[..keep] {
                    apply_op(&mut n.disk, op);
                }
            }
        }
        n.queue.clear();
        // What survives a power cut holds envelopes only as deposited.
        let disk = n.disk.clone();
        self.scan_disk(id, &disk)?;
        self.report.crashes += 1;
        self.checker.on_restart(id);
        self.trace.line(
            self.now,
            format_args!("FAULT crash {id} (unsynced writes lost)"),
        );
        // Its connections die with it.
        let conns: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.node == id)
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            self.close(conn)?;
        }
        Ok(())
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        if self.nodes[&id].replica.is_some() {
            return Ok(());
        }
        self.start_node(id);
        self.trace
            .line(self.now, format_args!("FAULT restart {id}"));
        self.step_replica(id, |_, _| {})
    }

    fn inject(&mut self, fault: Fault) -> Result<(), Violation> {
        self.trace.line(self.now, format_args!("FAULT {fault:?}"));
        match fault {
            Fault::Heal => self.blocked.clear(),
            Fault::Partition { groups } => {
                self.report.partitions += 1;
                self.blocked.clear();
                for a in &groups {
                    for b in &groups {
                        if a != b {
                            for x in a {
                                for y in b {
                                    self.blocked.insert((*x, *y));
                                }
                            }
                        }
                    }
                }
            }
            Fault::Bridge { left, right, .. } => {
                self.report.partitions += 1;
                self.blocked.clear();
                for x in &left {
                    for y in &right {
                        self.blocked.insert((*x, *y));
                        self.blocked.insert((*y, *x));
                    }
                }
            }
            Fault::OneWay { from, to } => {
                self.report.partitions += 1;
                self.blocked.insert((from, to));
            }
            Fault::CrashLeader { down_for } => {
                if let Some(leader) = self.leader() {
                    self.crash(leader)?;
                    self.schedule(self.now + dur_nanos(down_for), Ev::Restart { node: leader });
                }
            }
            Fault::Crash { node, down_for } => {
                self.crash(node)?;
                self.schedule(self.now + dur_nanos(down_for), Ev::Restart { node });
            }
            // Not planned in this family (see `DirConfig::new`).
            _ => {}
        }
        Ok(())
    }

    fn heal(&mut self) -> Result<(), Violation> {
        self.chaos_over = true;
        self.blocked.clear();
        self.trace.line(
            self.now,
            format_args!("chaos over: network healed, every replica up"),
        );
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.replica.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            self.restart(id)?;
        }
        // The presence check needs clients that stay put: half go offline for good now, the
        // others come (or stay) online.
        for c in 0..self.clients.len() {
            let online = c % 2 == 0;
            self.set_online(c, online)?;
        }
        Ok(())
    }

    /// The leader with the highest term among live replicas.
    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.replica.as_ref().map(|r| (*id, r.node())))
            .filter(|(_, node)| node.role() == paloma_core::raft::io::Role::Leader)
            .max_by_key(|(_, node)| node.term())
            .map(|(id, _)| id)
    }

    // ----- connections ---------------------------------------------------------------------------

    fn open_link(&mut self, end: End, after: u64) -> Option<ConnId> {
        let live: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.replica.is_some())
            .map(|(id, _)| *id)
            .collect();
        if live.is_empty() {
            return None;
        }
        let node = live[self.work_rng.below(live.len() as u64) as usize];
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.links.insert(
            conn,
            Link {
                node,
                end,
                to_replica_at: 0,
                to_client_at: 0,
            },
        );
        self.schedule(self.now + after, Ev::Open { conn });
        Some(conn)
    }

    fn connect_client(&mut self, c: usize, after: u64) {
        if self.clients[c].conn.is_some() || !self.clients[c].online {
            self.clients[c].wants_link = true;
            return;
        }
        self.clients[c].wants_link = false;
        let conn = self.open_link(End::Client(c), after);
        self.clients[c].conn = conn;
        if conn.is_none() {
            // Every replica is down: try again shortly.
            self.clients[c].wants_link = true;
            self.schedule(self.now + 200 * MS, Ev::Reconnect { client: c });
        }
    }

    fn link_delay(&mut self) -> u64 {
        let f = &self.cfg.faults;
        let (lo, hi) = (dur_nanos(f.delay_min), dur_nanos(f.delay_max));
        lo + self.net_rng.below(hi.saturating_sub(lo).max(1))
    }

    fn send_to_client(&mut self, conn: ConnId, frame: Vec<u8>) {
        let delay = self.link_delay();
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let at = (self.now + delay).max(link.to_client_at);
        link.to_client_at = at;
        self.schedule(at, Ev::ToClient { conn, frame });
    }

    fn send_to_replica(&mut self, conn: ConnId, frame: Vec<u8>) {
        let delay = self.link_delay();
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let at = (self.now + delay).max(link.to_replica_at);
        link.to_replica_at = at;
        let node = link.node;
        self.schedule(at, Ev::ToReplica { node, conn, frame });
    }

    fn close(&mut self, conn: ConnId) -> Result<(), Violation> {
        let Some(link) = self.links.remove(&conn) else {
            return Ok(());
        };
        self.step_replica(link.node, |r, now| {
            r.handle(now, ReplicaInput::Disconnected(conn))
        })?;
        match link.end {
            End::Client(c) => {
                self.clients[c].conn = None;
                self.clients[c].logged_in_since = None;
                self.step_client(c, |cl, now| cl.handle(now, ClientInput::Disconnected))?;
            }
            End::Attacker => {
                self.attacker.conn = None;
                self.attacker.pending = None;
            }
        }
        Ok(())
    }

    // ----- clients -------------------------------------------------------------------------------

    fn step_client(&mut self, c: usize, f: impl FnOnce(&mut Client, Now)) -> Result<(), Violation> {
        let now = self.client_now();
        f(&mut self.clients[c].client, now);
        while let Some(out) = self.clients[c].client.poll_output() {
            match out {
                ClientOutput::Send(frame) => {
                    // The attacker listens on the wire for an acknowledgement to present as its own.
                    if self.attacker.sniffed_ack.is_none() {
                        if let Ok(ClientFrame::Request {
                            request: Request::Command { command, .. },
                            ..
                        }) = ClientFrame::decode(&frame)
                        {
                            if matches!(command.body, CommandBody::AckMailbox { .. }) {
                                self.attacker.sniffed_ack = Some(command);
                            }
                        }
                    }
                    if let Some(conn) = self.clients[c].conn {
                        self.send_to_replica(conn, frame);
                    }
                }
                ClientOutput::Reconnect => {
                    if let Some(conn) = self.clients[c].conn {
                        self.close(conn)?;
                    }
                    let after = 50 * MS + self.work_rng.below(200 * MS);
                    self.connect_client(c, after);
                }
                ClientOutput::Event(event) => self.client_event(c, event)?,
            }
        }
        self.clients[c].client.check_invariants();
        if let Some((deadline, _)) = self.clients[c].client.poll_timeout() {
            let at = deadline.as_nanos().max(self.now);
            let sc = &mut self.clients[c];
            sc.timer_generation += 1;
            let generation = sc.timer_generation;
            self.schedule(
                at,
                Ev::ClientTimer {
                    client: c,
                    generation,
                },
            );
        }
        Ok(())
    }

    fn client_event(&mut self, c: usize, event: ClientEvent) -> Result<(), Violation> {
        let now = self.now;
        match event {
            ClientEvent::LoggedIn { user } => {
                self.trace
                    .line(now, format_args!("client {c} ({user:?}) logged in"));
                if user != self.clients[c].user {
                    return Err(Violation(format!(
                        "client {c} logged in as {user:?}, not itself"
                    )));
                }
                self.clients[c].logged_in_since = Some(now);
                // Drain on reconnect (a push is only a hint); now and then from 0.
                self.clients[c].mbx.want_fetch = true;
                self.clients[c].mbx.from_zero = self.work_rng.below(4) == 0;
                self.mailbox_step(c)?;
            }
            ClientEvent::Registered { op, user, .. } => {
                let Some((Op::Register(name), _)) = self.clients[c].ops.remove(&op) else {
                    return Err(Violation(format!(
                        "client {c}: Registered for an op that was no registration"
                    )));
                };
                if user != self.clients[c].user {
                    return Err(Violation(format!("client {c} registered as someone else")));
                }
                self.trace
                    .line(now, format_args!("client {c} registered @{name}"));
                self.observed.on_registered(&name, user, now)?;
                self.clients[c].name = Some(name);
                self.clients[c].registered_at = Some(now);
                self.clients[c].busy = None;
                // A new registration starts a new mailbox at seq 1.
                let epoch = self.clients[c].mbx.epoch + 1;
                self.clients[c].mbx = Mbx {
                    epoch,
                    open: true,
                    want_fetch: true,
                    ..Mbx::default()
                };
            }
            ClientEvent::Deposited {
                op,
                seq,
                expires_unix_ms,
            } => {
                let Some((Op::Deposit { id, .. }, _)) = self.clients[c].ops.remove(&op) else {
                    return Err(Violation(format!(
                        "client {c}: Deposited for an op that was no deposit"
                    )));
                };
                self.observed
                    .mailbox
                    .on_deposited(id, seq, expires_unix_ms, self.dir_clock_max)?;
            }
            ClientEvent::MailboxFetched { op, reply } => {
                let Some((
                    Op::Fetch {
                        after,
                        acked_upto,
                        epoch,
                    },
                    _,
                )) = self.clients[c].ops.remove(&op)
                else {
                    return Err(Violation(format!(
                        "client {c}: a mailbox page for an op that was no fetch"
                    )));
                };
                let user = self.clients[c].user;
                let mbx = &mut self.clients[c].mbx;
                mbx.fetch = None;
                if epoch == mbx.epoch {
                    self.observed.mailbox.on_fetched(
                        user,
                        epoch,
                        after,
                        acked_upto,
                        &reply.page,
                        self.dir_clock_max,
                    )?;
                    if let Some(last) = reply.page.messages.last() {
                        mbx.cursor = mbx.cursor.max(last.seq);
                    }
                    mbx.want_fetch |= reply.page.more;
                }
                self.mailbox_step(c)?;
            }
            ClientEvent::MailboxAcked { op, upto, .. } => {
                let Some((Op::Ack { epoch }, _)) = self.clients[c].ops.remove(&op) else {
                    return Err(Violation(format!(
                        "client {c}: MailboxAcked for an op that was no acknowledgement"
                    )));
                };
                self.observed.mailbox.acks += 1;
                let mbx = &mut self.clients[c].mbx;
                mbx.ack = None;
                if epoch == mbx.epoch {
                    mbx.acked_upto = mbx.acked_upto.max(upto);
                }
                self.mailbox_step(c)?;
            }
            ClientEvent::MailboxChanged { last_seq } => {
                self.observed.mailbox.pushes += 1;
                if last_seq > self.clients[c].mbx.cursor {
                    self.clients[c].mbx.want_fetch = true;
                    self.mailbox_step(c)?;
                }
            }
            ClientEvent::Done { op } => {
                if let Some((Op::Deregister, _)) = self.clients[c].ops.remove(&op) {
                    self.trace
                        .line(now, format_args!("client {c} deregistered"));
                    let user = self.clients[c].user;
                    self.observed.on_deregistered(user, now);
                    self.clients[c].name = None;
                    self.clients[c].busy = None;
                }
            }
            ClientEvent::LookedUp { op, reply } => {
                if let Some((Op::Lookup(name, consistency), issued)) =
                    self.clients[c].ops.remove(&op)
                {
                    self.observed
                        .on_lookup(&name, consistency, issued, now, &reply)?;
                }
            }
            ClientEvent::BundleClaimed {
                op,
                bundle,
                pool_empty,
            } => {
                let Some((Op::Claim(target), _)) = self.clients[c].ops.remove(&op) else {
                    return Err(Violation(format!(
                        "client {c}: a bundle for an op that was no claim"
                    )));
                };
                // The one-time prekey must be one its owner generated (the owner may have
                // dropped it since, after deregistering: `generated` remembers).
                if let Some(otk) = bundle.one_time_prekey {
                    if self.generated.get(&(target, otk.id)) != Some(&otk.key) {
                        return Err(Violation(format!(
                            "client {c} was handed one-time prekey {:?} of {target:?} that its owner never generated",
                            otk.id
                        )));
                    }
                }
                self.trace.line(
                    now,
                    format_args!(
                        "client {c} claimed {target:?}: {:?}",
                        bundle.one_time_prekey.map(|k| k.id)
                    ),
                );
                self.observed
                    .on_claim(target, bundle.one_time_prekey.map(|k| k.id), pool_empty)?;
            }
            ClientEvent::Failed { op, error } => {
                let op_kind = self.clients[c].ops.remove(&op);
                self.trace.line(
                    now,
                    format_args!("client {c} op {op_kind:?} failed: {error}"),
                );
                match (&op_kind, &error) {
                    (Some((Op::Register(_), _)), OpError::Command(CommandError::UsernameTaken)) => {
                        self.observed.on_taken();
                    }
                    (
                        Some((Op::Deposit { to, len, .. }, _)),
                        OpError::Command(CommandError::MailboxFull { messages, bytes }),
                    ) => {
                        let limits = self.cfg.mailbox;
                        self.observed
                            .mailbox
                            .on_full(*to, *messages, *bytes, *len, &limits)?;
                    }
                    (
                        Some((Op::Deposit { .. }, _)),
                        OpError::Command(
                            CommandError::EnvelopeTooLarge { .. } | CommandError::MessageIdConflict,
                        ),
                    )
                    | (
                        Some((Op::Ack { .. }, _)),
                        OpError::Command(CommandError::AckBeyondLast { .. }),
                    ) => {
                        return Err(Violation(format!(
                            "client {c}: {op_kind:?} refused with {error}, which the workload never provokes"
                        )));
                    }
                    _ => self.observed.on_failed(),
                }
                match &op_kind {
                    Some((Op::Fetch { .. }, _)) => {
                        self.clients[c].mbx.fetch = None;
                        self.clients[c].mbx.want_fetch = true;
                    }
                    Some((Op::Ack { .. }, _)) => self.clients[c].mbx.ack = None,
                    _ => {}
                }
                if let Some((Op::Register(_) | Op::Deregister, _)) = op_kind {
                    self.clients[c].busy = None;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// One workload step of client `c`.
    fn act(&mut self, c: usize) -> Result<(), Violation> {
        let next = 150 * MS + self.work_rng.below(450 * MS);
        self.schedule(self.now + next, Ev::Act { client: c });
        let sc = &self.clients[c];
        if !sc.online || sc.ops.len() >= 4 {
            return Ok(());
        }
        // Retries what a failure or a full queue left undone.
        self.mailbox_step(c)?;
        if self.draining {
            return self.step_client(c, |_, _| {});
        }
        let now = self.client_now();
        let registered: Vec<UserId> = self.observed.holders();
        let roll = self.work_rng.below(100);
        // A deposit for another holder, online or not (ARCHITECTURE.md, "Mailboxes", rule 3).
        let deposit = if (88..98).contains(&roll) && self.clients[c].name.is_some() {
            let me = self.clients[c].user;
            let targets: Vec<UserId> = registered.iter().copied().filter(|u| *u != me).collect();
            // Now and then the same envelope again under its id, as an outbox resending after a
            // crash would (to a recipient still in the registration it was sent to).
            let resend = if self.work_rng.below(4) == 0 {
                let log = &self.clients[c].sent_log;
                let pick = log.get(self.work_rng.below(log.len().max(1) as u64) as usize);
                pick.filter(|(_, to, epoch, _)| {
                    targets.contains(to) && self.clients[self.user_index[to]].mbx.epoch == *epoch
                })
                .cloned()
            } else {
                None
            };
            if let Some((id, to, _, envelope)) = resend {
                self.observed.mailbox.on_resent();
                Some((to, (id, envelope)))
            } else if targets.is_empty() {
                None
            } else {
                let to = targets[self.work_rng.below(targets.len() as u64) as usize];
                let (id, envelope, marker_at, counter) = self.envelope(c);
                // Holders are clients: the deposit belongs to the recipient's current registration.
                let epoch = self.clients[self.user_index[&to]].mbx.epoch;
                let marker = (u16::try_from(c).expect("few clients"), counter);
                let log = &mut self.clients[c].sent_log;
                if log.len() == 8 {
                    log.pop_front();
                }
                log.push_back((id, to, epoch, envelope.clone()));
                self.observed.mailbox.on_sent(
                    id,
                    marker,
                    to,
                    epoch,
                    envelope.clone(),
                    marker_at,
                    self.now,
                );
                Some((to, (id, envelope)))
            }
        } else {
            None
        };
        let sc = &mut self.clients[c];
        let (op, result) = if sc.name.is_none() {
            if sc.busy.is_some() {
                return Ok(());
            }
            let name = self.names[self.work_rng.below(self.names.len() as u64) as usize].clone();
            // Case folding: `User3` and `user3` are one name.
            let typed = if self.work_rng.below(4) == 0 {
                name.to_uppercase()
            } else {
                name.clone()
            };
            let r = sc
                .client
                .register(now, &typed, vec![format!("10.0.0.{c}:7000")]);
            (Op::Register(name), r)
        } else if roll < 40 {
            let name = self.names[self.work_rng.below(self.names.len() as u64) as usize].clone();
            let consistency = if self.work_rng.below(10) < 7 {
                Consistency::Linearizable
            } else {
                Consistency::Local
            };
            let r = sc
                .client
                .lookup(now, LookupKey::Name(name.clone()), consistency);
            (Op::Lookup(name, consistency), r)
        } else if roll < 65 && !registered.is_empty() {
            let target = registered[self.work_rng.below(registered.len() as u64) as usize];
            (Op::Claim(target), sc.client.claim_bundle(now, target))
        } else if roll < 75 {
            (Op::Other, sc.client.publish_one_time_prekeys(now, 3))
        } else if roll < 85 && !registered.is_empty() {
            let subjects: Vec<UserId> = registered.iter().take(4).copied().collect();
            (Op::Other, sc.client.subscribe(now, subjects))
        } else if roll < 88 && sc.busy.is_none() && sc.mbx.fetch.is_none() && sc.mbx.ack.is_none() {
            // Not while a fetch or an acknowledgement is out: their mailbox is this registration's.
            (Op::Deregister, sc.client.deregister(now))
        } else if let Some((to, (id, envelope))) = deposit {
            let len = envelope.len();
            (
                Op::Deposit { id, to, len },
                sc.client.deposit(now, to, id, envelope),
            )
        } else {
            return Ok(());
        };
        match result {
            Ok(id) => {
                if matches!(op, Op::Register(_) | Op::Deregister) {
                    self.clients[c].busy = Some(id);
                }
                if matches!(op, Op::Deregister) {
                    self.clients[c].registered_at = None;
                }
                if let Op::Deregister = op {
                    // From now on the name (and the mailbox) may go at any moment.
                    let user = self.clients[c].user;
                    self.observed.on_deregistering(user, self.now);
                    self.observed.mailbox.on_deregistering(user, self.now);
                    self.clients[c].mbx.open = false;
                }
                self.clients[c].ops.insert(id, (op, self.now));
            }
            Err(_) => self.observed.refused_locally += 1,
        }
        // Keys are generated when a registration or publication is asked for.
        let user = self.clients[c].user;
        for pair in self.clients[c].client.one_time_prekeys() {
            let key = pair.public_key();
            if *self.generated.entry((user, pair.id())).or_insert(key) != key {
                return Err(Violation(format!(
                    "client {c} reused one-time prekey id {:?}",
                    pair.id()
                )));
            }
        }
        self.step_client(c, |_, _| {})
    }

    /// A fresh envelope from client `c` with its id, the marker's offset and the counter: random
    /// bytes around the marker, the sender and its counter (`checks::ENVELOPE_MARKER`); now and
    /// then a large one, so byte quotas are reached too.
    fn envelope(&mut self, c: usize) -> (MessageId, Vec<u8>, usize, u32) {
        let counter = self.clients[c].deposits_sent;
        self.clients[c].deposits_sent += 1;
        let prefix = self.work_rng.below(24) as usize;
        let tail = if self.work_rng.below(20) == 0 {
            1_000 + self.work_rng.below(2_000) as usize
        } else {
            8 + self.work_rng.below(200) as usize
        };
        let mut envelope = vec![0u8; prefix];
        self.work_rng.fill(&mut envelope);
        envelope.extend_from_slice(&ENVELOPE_MARKER);
        let sender = u16::try_from(c).expect("few clients");
        envelope.extend_from_slice(&sender.to_le_bytes());
        envelope.extend_from_slice(&counter.to_le_bytes());
        let mut rest = vec![0u8; tail];
        self.work_rng.fill(&mut rest);
        envelope.extend_from_slice(&rest);
        let mut id = [0u8; 16];
        self.work_rng.fill(&mut id);
        (MessageId(id), envelope, prefix, counter)
    }

    /// Moves client `c`'s mailbox on: acknowledges what it fetched and recorded, else fetches if
    /// a push, a login or a `more` asked for it. Called from events (inside `step_client`, whose
    /// loop drains what this queues) and from `act`.
    fn mailbox_step(&mut self, c: usize) -> Result<(), Violation> {
        let now = self.client_now();
        let sc = &self.clients[c];
        let m = sc.mbx;
        if !sc.online || !m.open || m.fetch.is_some() || m.ack.is_some() || sc.ops.len() >= 6 {
            return Ok(());
        }
        let user = sc.user;
        if m.cursor > m.acked_upto {
            // Recorded by the checker when fetched: "persisted", so it may be acknowledged.
            self.observed
                .mailbox
                .on_ack_sent(user, m.epoch, m.cursor, self.dir_clock_max)?;
            let sc = &mut self.clients[c];
            match sc.client.ack_mailbox(now, m.cursor) {
                Ok(id) => {
                    sc.mbx.ack = Some(id);
                    sc.ops.insert(id, (Op::Ack { epoch: m.epoch }, self.now));
                }
                Err(_) => self.observed.refused_locally += 1,
            }
            return Ok(());
        }
        if !m.want_fetch {
            return Ok(());
        }
        let after = if m.from_zero { MailboxSeq(0) } else { m.cursor };
        let max = 1 + self.work_rng.below(8) as u32;
        let sc = &mut self.clients[c];
        match sc.client.fetch_mailbox(now, after, max) {
            Ok(id) => {
                sc.mbx.fetch = Some(id);
                sc.mbx.want_fetch = false;
                sc.mbx.from_zero = false;
                let op = Op::Fetch {
                    after,
                    acked_upto: m.acked_upto,
                    epoch: m.epoch,
                };
                sc.ops.insert(id, (op, self.now));
            }
            Err(_) => self.observed.refused_locally += 1,
        }
        Ok(())
    }

    /// The final drain: every client online, no new deposits, until every mailbox is fetched
    /// and acknowledged (or `cfg.drain` runs out); then the delivery check and the stored-bytes
    /// scan of every replica.
    fn drain_and_check(&mut self, end: u64) -> Result<(), Violation> {
        self.draining = true;
        self.trace
            .line(self.now, format_args!("final drain: every client online"));
        for c in 0..self.clients.len() {
            self.set_online(c, true)?;
            self.clients[c].mbx.want_fetch = true;
        }
        let limit = end + dur_nanos(self.cfg.drain);
        let mut t = end;
        while t < limit {
            t += 500 * MS;
            self.run_until(t)?;
            let quiet = self.clients.iter().all(|sc| {
                !sc.ops
                    .values()
                    .any(|(op, _)| matches!(op, Op::Deposit { .. }))
                    && (!sc.mbx.open
                        || (sc.mbx.fetch.is_none()
                            && sc.mbx.ack.is_none()
                            && !sc.mbx.want_fetch
                            && sc.mbx.cursor <= sc.mbx.acked_upto))
            });
            if quiet && t >= end + 3_000 * MS {
                break;
            }
        }
        self.observed.mailbox.check_final(self.dir_clock_max)?;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let disk = self.nodes[&id].disk.clone();
            self.scan_disk(id, &disk)?;
            if let Some(r) = &self.nodes[&id].replica {
                let snapshot = r.directory().snapshot();
                self.observed
                    .mailbox
                    .scan_stored(&format!("{id}'s directory"), &snapshot)?;
            }
        }
        Ok(())
    }

    /// Scans what `id`'s disk holds (snapshot, log entries) for envelopes.
    fn scan_disk(&mut self, id: NodeId, disk: &Recovered) -> Result<(), Violation> {
        if let Some(snapshot) = &disk.snapshot {
            self.observed
                .mailbox
                .scan_stored(&format!("{id}'s snapshot"), &snapshot.data)?;
        }
        for entry in &disk.entries {
            if let Payload::Command { data, .. } = &entry.payload {
                self.observed
                    .mailbox
                    .scan_stored(&format!("{id}'s log"), data)?;
            }
        }
        Ok(())
    }

    fn toggle(&mut self, c: usize) -> Result<(), Violation> {
        if self.chaos_over {
            return Ok(());
        }
        let online = !self.clients[c].online;
        self.set_online(c, online)?;
        let next = if online {
            3_000 * MS + self.work_rng.below(10_000 * MS)
        } else {
            1_000 * MS + self.work_rng.below(6_000 * MS)
        };
        self.schedule(self.now + next, Ev::Toggle { client: c });
        Ok(())
    }

    fn set_online(&mut self, c: usize, online: bool) -> Result<(), Violation> {
        if self.clients[c].online == online {
            return Ok(());
        }
        self.clients[c].online = online;
        if online {
            self.clients[c].offline_since = None;
            self.trace
                .line(self.now, format_args!("client {c} comes online"));
            self.connect_client(c, MS);
        } else {
            self.clients[c].offline_since = Some(self.now);
            self.trace
                .line(self.now, format_args!("client {c} goes offline"));
            if let Some(conn) = self.clients[c].conn {
                self.close(conn)?;
            }
        }
        Ok(())
    }

    // ----- the attacker --------------------------------------------------------------------------

    fn attack(&mut self) -> Result<(), Violation> {
        let next = 700 * MS + self.work_rng.below(1_500 * MS);
        self.schedule(self.now + next, Ev::Attack);
        if let Some(conn) = self.attacker.conn {
            self.close(conn)?;
        }
        self.attacker.conn = self.open_link(End::Attacker, MS);
        Ok(())
    }

    fn attacker_send(&mut self, frame: &ClientFrame) {
        if let Some(conn) = self.attacker.conn {
            self.send_to_replica(conn, frame.encode());
        }
    }

    fn attacker_request(&mut self, kind: AttackKind, request: Request) {
        let id = RequestId(self.attacker.next_request);
        self.attacker.next_request += 1;
        self.attacker.pending = Some((id, kind));
        self.observed.attacks_sent += 1;
        self.attacker_send(&ClientFrame::Request { id, request });
    }

    fn attacker_frame(&mut self, conn: ConnId, frame: &[u8]) -> Result<(), Violation> {
        if self.attacker.conn != Some(conn) {
            return Ok(());
        }
        let frame = ReplicaFrame::decode(frame)
            .map_err(|e| Violation(format!("replica sent an undecodable frame: {e}")))?;
        match frame {
            ReplicaFrame::Challenge { nonce, replica } => {
                let plan = Attack::pick(
                    &mut self.work_rng,
                    self.attacker.registered.is_some(),
                    self.attacker.acked.is_some(),
                );
                match plan {
                    Attack::FetchBeforeLogin => {
                        self.attacker_request(
                            AttackKind::FetchBeforeLogin,
                            Request::FetchMailbox {
                                after: MailboxSeq(0),
                                max: 8,
                            },
                        );
                    }
                    Attack::BeforeLogin => {
                        self.attacker_request(
                            AttackKind::BeforeLogin,
                            Request::Lookup {
                                key: LookupKey::Name("user0".into()),
                                consistency: Consistency::Local,
                            },
                        );
                    }
                    Attack::BadLogin => {
                        let mut login = paloma_core::replica::protocol::login(
                            &self.attacker.identity,
                            &nonce,
                            NodeId(replica.0 + 1),
                        );
                        if let ClientFrame::Login { signature, .. } = &mut login {
                            signature[0] ^= 1;
                        }
                        self.observed.attacks_sent += 1;
                        self.attacker.pending = Some((RequestId(0), AttackKind::BadLogin));
                        self.attacker_send(&login);
                    }
                    Attack::Garbage => {
                        self.observed.attacks_sent += 1;
                        self.attacker.pending = Some((RequestId(0), AttackKind::Garbage));
                        let junk = vec![0xA5u8; 20 * 1024];
                        if let Some(conn) = self.attacker.conn {
                            self.send_to_replica(conn, junk);
                        }
                    }
                    Attack::LoggedIn(_) => {
                        self.attacker.pending = Some((RequestId(0), AttackKind::Login(plan)));
                        let login = paloma_core::replica::protocol::login(
                            &self.attacker.identity,
                            &nonce,
                            replica,
                        );
                        self.attacker_send(&login);
                    }
                }
            }
            ReplicaFrame::LoggedIn { user } => {
                if user != self.attacker.identity.user_id() {
                    return Err(Violation("the attacker logged in as someone else".into()));
                }
                if let Some((_, AttackKind::Login(Attack::LoggedIn(what)))) = self.attacker.pending
                {
                    self.attacker_logged_in(what);
                } else if let Some((_, AttackKind::BadLogin)) = self.attacker.pending {
                    return Err(Violation("a login with a bad signature succeeded".into()));
                }
            }
            ReplicaFrame::LoginFailed => {
                if let Some((_, AttackKind::BadLogin)) = self.attacker.pending.take() {
                    self.observed.attacks_refused += 1;
                } else {
                    return Err(Violation("the attacker's valid login failed".into()));
                }
            }
            ReplicaFrame::Malformed => {
                if let Some((_, AttackKind::Garbage)) = self.attacker.pending.take() {
                    self.observed.attacks_refused += 1;
                }
            }
            ReplicaFrame::Response { id, result } => {
                if self.attacker.pending.as_ref().is_none_or(|(p, _)| *p != id) {
                    return Ok(());
                }
                let (_, kind) = self.attacker.pending.take().expect("checked");
                if let AttackKind::AckSelf(cmd) = &kind {
                    if let Ok(paloma_core::replica::protocol::Reply::Command(Ok(_))) = &result {
                        self.attacker.acked = Some((**cmd).clone());
                        self.observed.attacker_successes += 1;
                    }
                    return Ok(());
                }
                if let AttackKind::Register(cmd) = &kind {
                    if let Ok(paloma_core::replica::protocol::Reply::Command(Ok(_))) = &result {
                        self.attacker.registered = Some((**cmd).clone());
                        self.observed.attacker_successes += 1;
                    }
                    return Ok(());
                }
                self.observed.on_attack_result(&kind, &result)?;
            }
            ReplicaFrame::PresencePush { .. } | ReplicaFrame::MailboxChanged { .. } => {}
        }
        Ok(())
    }

    fn attacker_logged_in(&mut self, what: super::checks::LoggedInAttack) {
        use super::checks::LoggedInAttack as A;
        let unix_ms = UNIX_MS_EPOCH + self.now / MS;
        let expires = unix_ms + 60_000;
        let identity = &self.attacker.identity;
        let session = self.attacker.session;
        self.attacker.session += 1;
        match what {
            A::RegisterSelf => {
                self.attacker.counter += 1;
                let body = attacker_register_body(identity, "mallory", 2);
                let cmd = SignedCommand::sign(identity, self.attacker.counter, expires, body);
                self.attacker.register_counters.push(self.attacker.counter);
                self.attacker_request(
                    AttackKind::Register(Box::new(cmd.clone())),
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
                // Registration is set-up, not an attack.
                self.observed.attacks_sent -= 1;
            }
            A::AckSelf => {
                self.attacker.counter += 1;
                let body = CommandBody::AckMailbox {
                    upto: MailboxSeq(0),
                };
                let cmd = SignedCommand::sign(identity, self.attacker.counter, expires, body);
                self.attacker.ack_counters.push(self.attacker.counter);
                self.attacker_request(
                    AttackKind::AckSelf(Box::new(cmd.clone())),
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
                // Set-up, not an attack.
                self.observed.attacks_sent -= 1;
            }
            A::AckReplay => {
                let cmd = self
                    .attacker
                    .acked
                    .clone()
                    .expect("picked only once acknowledged");
                self.attacker_request(
                    AttackKind::AckReplay,
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
            }
            A::ForeignAck => {
                // A client's own acknowledgement if one was seen, else one signed by the attacker
                // and presented under another signer: refused before Raft either way.
                let cmd = self.attacker.sniffed_ack.clone().unwrap_or_else(|| {
                    let mut cmd = SignedCommand::sign(
                        identity,
                        self.attacker.counter + 1,
                        expires,
                        CommandBody::AckMailbox {
                            upto: MailboxSeq(1),
                        },
                    );
                    cmd.signer = [7u8; 32];
                    cmd
                });
                self.attacker_request(
                    AttackKind::ForeignAck,
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
            }
            A::DepositUnknown => {
                self.attacker_request(
                    AttackKind::DepositUnknown,
                    Request::Deposit {
                        session,
                        seq: 1,
                        to: UserId([0xEE; 32]),
                        message_id: MessageId([0xEE; 16]),
                        envelope: vec![1, 2, 3],
                    },
                );
            }
            A::DepositOversized => {
                self.attacker_request(
                    AttackKind::DepositOversized,
                    Request::Deposit {
                        session,
                        seq: 1,
                        to: self.clients[0].user,
                        message_id: MessageId([0xEF; 16]),
                        envelope: vec![0x5A; ENVELOPE_BYTES_MAX + 1],
                    },
                );
            }
            A::Replay => {
                let cmd = self
                    .attacker
                    .registered
                    .clone()
                    .expect("picked only once registered");
                self.attacker_request(
                    AttackKind::Replay,
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
            }
            A::Tampered => {
                self.attacker.counter += 1;
                let mut cmd = SignedCommand::sign(
                    identity,
                    self.attacker.counter,
                    expires,
                    CommandBody::UpdateAddresses(vec!["10.9.9.9:1".into()]),
                );
                cmd.body = CommandBody::UpdateAddresses(vec!["10.6.6.6:1".into()]);
                self.attacker_request(
                    AttackKind::Tampered,
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
            }
            A::OtherSigner => {
                // Signed by the attacker, presented as a victim's: the replica refuses it.
                self.attacker.counter += 1;
                let mut cmd = SignedCommand::sign(
                    identity,
                    self.attacker.counter,
                    expires,
                    CommandBody::Deregister,
                );
                cmd.signer = [7u8; 32];
                self.attacker_request(
                    AttackKind::OtherSigner,
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
            }
            A::InvalidName => {
                self.attacker.counter += 1;
                let body = attacker_register_body(identity, "No Way!", 1);
                let cmd = SignedCommand::sign(identity, self.attacker.counter, expires, body);
                self.attacker_request(
                    AttackKind::InvalidName,
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
            }
            A::Oversized => {
                // More one-time prekeys than a pool may hold: published when registered, in a
                // registration otherwise.
                self.attacker.counter += 1;
                let keys: Vec<paloma_core::directory::OneTimePrekey> = (0
                    ..=paloma_core::directory::command::ONE_TIME_PREKEYS_MAX as u32)
                    .map(|i| paloma_core::directory::OneTimePrekey {
                        id: paloma_core::session::PrekeyId(1000 + i),
                        key: [9; 32],
                    })
                    .collect();
                let body = if self.attacker.registered.is_some() {
                    CommandBody::PublishOneTimePrekeys(keys)
                } else {
                    let mut body = attacker_register_body(identity, "mallory", 3);
                    if let CommandBody::Register {
                        one_time_prekeys, ..
                    } = &mut body
                    {
                        *one_time_prekeys = keys;
                    }
                    body
                };
                let cmd = SignedCommand::sign(identity, self.attacker.counter, expires, body);
                self.attacker_request(
                    AttackKind::Oversized,
                    Request::Command {
                        session,
                        seq: 1,
                        command: cmd,
                    },
                );
            }
        }
    }

    // ----- the end -------------------------------------------------------------------------------

    fn check_end(&mut self) -> Result<(), Violation> {
        let leader = self
            .leader()
            .ok_or_else(|| Violation("no leader after the healed phase".into()))?;
        let dir = self.nodes[&leader]
            .replica
            .as_ref()
            .expect("live")
            .directory();
        self.observed.check_final(dir)?;
        // The attacker changed nothing beyond its own registration: its record's counter is the
        // one of a registration it sent, not of any refused command.
        let attacker = self.attacker.identity.user_id();
        if let Some(record) = dir.user(&attacker) {
            if !self.attacker.register_counters.contains(&record.counter)
                && !self.attacker.ack_counters.contains(&record.counter)
            {
                return Err(Violation(format!(
                    "the attacker's record reached counter {} (its registrations used {:?}, its acknowledgements {:?}): a refused command applied",
                    record.counter, self.attacker.register_counters, self.attacker.ack_counters
                )));
            }
        }
        // Presence within the bound once healed.
        let bound = dur_nanos(self.cfg.presence.offline_bound()) + 2_000 * MS;
        let end = self.now;
        for (c, sc) in self.clients.iter().enumerate() {
            let Some(record) = dir.user(&sc.user) else {
                continue;
            };
            let shown = record.presence;
            if let Some(since) = sc.offline_since {
                if end.saturating_sub(since) > bound && matches!(shown, Presence::Online { .. }) {
                    return Err(Violation(format!(
                        "client {c} has been offline for {:.1}s but is shown online (bound {:.1}s)",
                        (end - since) as f64 / 1e9,
                        bound as f64 / 1e9
                    )));
                }
                self.observed.presence_checked += 1;
            }
            // Online is owed once the user has been both registered and logged in for the bound.
            if let (Some(login), Some(registered)) = (sc.logged_in_since, sc.registered_at) {
                let since = login.max(registered);
                if end.saturating_sub(since) > bound && !matches!(shown, Presence::Online { .. }) {
                    return Err(Violation(format!(
                        "client {c} has been registered, logged in and heartbeating for {:.1}s but is shown {shown:?}",
                        (end - since) as f64 / 1e9
                    )));
                }
                self.observed.presence_checked += 1;
            }
        }
        // Progress: the healed cluster served the workload.
        if self.observed.registered == 0 {
            return Err(Violation("no registration succeeded".into()));
        }
        Ok(())
    }
}

fn attacker_register_body(identity: &IdentityKeyPair, name: &str, n: u32) -> CommandBody {
    let mut e = SeedEntropy(DetRng::fork(u64::from(n), "attacker-keys"));
    let spk = paloma_core::session::SignedPrekeyPair::generate(
        identity,
        paloma_core::session::PrekeyId(1),
        &mut e,
    );
    CommandBody::Register {
        username: name.into(),
        identity_dh: identity.public().dh_key,
        signed_prekey: paloma_core::directory::SignedPrekey {
            id: spk.id(),
            key: spk.public_key(),
            signature: spk.signature(),
        },
        one_time_prekeys: Vec::new(),
        addresses: Vec::new(),
    }
}

/// Prefixes a peer frame with its sender (the simulated transport's authentication).
fn with_from(from: NodeId, frame: &[u8]) -> Vec<u8> {
    let mut out = from.0.to_le_bytes().to_vec();
    out.extend_from_slice(frame);
    out
}

fn split_from(routed: &[u8]) -> (NodeId, &[u8]) {
    let (id, frame) = routed.split_at(8);
    (
        NodeId(u64::from_le_bytes(id.try_into().expect("8 bytes"))),
        frame,
    )
}
