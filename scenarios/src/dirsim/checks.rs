//! What the directory family checks, from what clients and the attacker observed (the Raft
//! checker and identical applied state at equal index run after every replica step, in `world`):
//!
//! - **usernames**: no two users hold acknowledged registrations of one name at the same time
//!   (a tenure lasts from the acknowledgement until its holder *starts* deregistering); at the
//!   end, every acknowledged tenure not released is still in the directory;
//! - **linearizable lookups**: a linearizable lookup issued after a registration was
//!   acknowledged, and answered before its holder started deregistering, returns that holder;
//!   every answer names the user it was asked for, under a key that hashes to its id;
//! - **one-time prekeys**: none is handed out twice, and every one handed out was generated and
//!   published by its owner (checked in `world`, which holds the owners' private halves);
//! - **refusals**: a request before login, a bad login, garbage, a replayed command, a tampered
//!   signature, a command signed for another user, an invalid username and an oversized pool are
//!   each answered with their typed error (or a transient one under faults), never success.

use paloma_core::directory::{CommandError, Directory, Outcome, SignedCommand};
use paloma_core::raft::check::Violation;
use paloma_core::replica::protocol::{Consistency, LookupReply, Reply, RequestError};
use paloma_core::rng::DetRng;
use paloma_core::session::PrekeyId;
use paloma_core::UserId;
use std::collections::{BTreeMap, BTreeSet};

/// One holder's acknowledged registration of a name.
#[derive(Clone, Debug)]
struct Tenure {
    user: UserId,
    acked_at: u64,
    /// When its holder started deregistering (from then on the name may be free).
    released_from: Option<u64>,
}

/// What the run observed, and the counters the report prints.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Registrations acknowledged.
    pub registered: u64,
    /// Registrations refused because the name was taken.
    pub names_taken: u64,
    /// Bundles claimed, and how many came without a one-time prekey.
    pub claims: u64,
    /// Claims of an empty pool.
    pub claims_empty: u64,
    /// Lookups answered.
    pub lookups: u64,
    /// Linearizable lookups whose answer was checked against an acknowledged registration.
    pub lookups_checked: u64,
    /// Attacks sent, refused with the expected typed error, and answered only with a transient
    /// error (leader change, timeout: nothing to check).
    pub attacks_sent: u64,
    /// Attacks refused as expected.
    pub attacks_refused: u64,
    /// Attacks answered with a transient error.
    pub attacks_inconclusive: u64,
    /// The attacker's own registrations that applied (set-up, not attacks).
    pub attacker_successes: u64,
    /// Client calls refused before reaching the network (queue full and the like).
    pub refused_locally: u64,
    /// Operations failed after retries (by the client's report).
    pub failed: u64,
    /// Presence checks made at the end.
    pub presence_checked: u64,
    tenures: BTreeMap<String, Vec<Tenure>>,
    claimed: BTreeSet<(UserId, PrekeyId)>,
}

impl Observed {
    /// Users whose registration is acknowledged and not being released (claim and subscribe
    /// targets).
    pub fn holders(&self) -> Vec<UserId> {
        self.tenures
            .values()
            .flatten()
            .filter(|t| t.released_from.is_none())
            .map(|t| t.user)
            .collect()
    }

    /// A registration of `name` by `user` was acknowledged at `at`: fails if another user holds an
    /// acknowledged, unreleased registration of it (username uniqueness).
    pub fn on_registered(&mut self, name: &str, user: UserId, at: u64) -> Result<(), Violation> {
        self.registered += 1;
        let tenures = self.tenures.entry(name.to_string()).or_default();
        if let Some(other) = tenures
            .iter()
            .find(|t| t.released_from.is_none() && t.user != user)
        {
            return Err(Violation(format!(
                "@{name} acknowledged to {user:?} while {:?} holds it since {:.3}s (username uniqueness)",
                other.user,
                other.acked_at as f64 / 1e9
            )));
        }
        if !tenures
            .iter()
            .any(|t| t.user == user && t.released_from.is_none())
        {
            tenures.push(Tenure {
                user,
                acked_at: at,
                released_from: None,
            });
        }
        Ok(())
    }

    /// `user` started deregistering at `at`: from then on its name may be free.
    pub fn on_deregistering(&mut self, user: UserId, at: u64) {
        for t in self.tenures.values_mut().flatten() {
            if t.user == user && t.released_from.is_none() {
                t.released_from = Some(at);
            }
        }
    }

    /// `user`'s deregistration was acknowledged at `at`.
    pub fn on_deregistered(&mut self, user: UserId, at: u64) {
        self.on_deregistering(user, at);
    }

    /// A lookup of `name` issued at `issued` was answered at `completed`: the answer must name the
    /// user asked for under a key hashing to its id, and a linearizable one must see every
    /// registration acknowledged before it was issued and not released before it completed.
    pub fn on_lookup(
        &mut self,
        name: &str,
        consistency: Consistency,
        issued: u64,
        completed: u64,
        reply: &LookupReply,
    ) -> Result<(), Violation> {
        self.lookups += 1;
        if let Some(view) = &reply.user {
            if view.username.as_str() != name {
                return Err(Violation(format!(
                    "a lookup of @{name} answered @{}",
                    view.username
                )));
            }
            if view.identity.user_id() != view.user {
                return Err(Violation(format!(
                    "@{name}: the record's key does not hash to its user id"
                )));
            }
        }
        if consistency != Consistency::Linearizable {
            return Ok(());
        }
        if reply.possibly_stale {
            return Err(Violation(format!(
                "a linearizable lookup of @{name} was marked possibly stale"
            )));
        }
        let binding = self.tenures.get(name).and_then(|ts| {
            ts.iter()
                .find(|t| t.acked_at < issued && t.released_from.is_none_or(|r| r > completed))
        });
        if let Some(t) = binding {
            self.lookups_checked += 1;
            let got = reply.user.as_ref().map(|v| v.user);
            if got != Some(t.user) {
                return Err(Violation(format!(
                    "linearizable lookup of @{name} issued at {:.3}s returned {got:?}, but {:?} holds it since {:.3}s (stale read)",
                    issued as f64 / 1e9,
                    t.user,
                    t.acked_at as f64 / 1e9
                )));
            }
        }
        Ok(())
    }

    /// A claim of `target`'s bundle answered: no one-time prekey is handed out twice.
    pub fn on_claim(
        &mut self,
        target: UserId,
        one_time: Option<PrekeyId>,
        pool_empty: bool,
    ) -> Result<(), Violation> {
        self.claims += 1;
        if pool_empty != one_time.is_none() {
            return Err(Violation(format!(
                "a claim of {target:?} said pool_empty={pool_empty} with one-time prekey {one_time:?}"
            )));
        }
        match one_time {
            None => self.claims_empty += 1,
            Some(id) => {
                if !self.claimed.insert((target, id)) {
                    return Err(Violation(format!(
                        "one-time prekey {id:?} of {target:?} was handed out twice"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A registration was refused because the name was taken.
    pub fn on_taken(&mut self) {
        self.names_taken += 1;
    }

    /// An operation failed after the client's retries.
    pub fn on_failed(&mut self) {
        self.failed += 1;
    }

    /// At the end, on a replica's directory: its invariants hold, and every acknowledged registration
    /// not released is still there.
    pub fn check_final(&self, dir: &Directory) -> Result<(), Violation> {
        dir.check_invariants();
        for (name, tenures) in &self.tenures {
            for t in tenures.iter().filter(|t| t.released_from.is_none()) {
                let parsed = paloma_core::directory::Username::parse(name)
                    .expect("workload names are valid");
                let holder = dir.lookup(&parsed).map(|r| r.user);
                if holder != Some(t.user) {
                    return Err(Violation(format!(
                        "@{name} was acknowledged to {:?} and never released, but the directory holds it for {holder:?}",
                        t.user
                    )));
                }
            }
        }
        Ok(())
    }

    pub(super) fn on_attack_result(
        &mut self,
        kind: &AttackKind,
        result: &Result<Reply, RequestError>,
    ) -> Result<(), Violation> {
        let transient = matches!(
            result,
            Err(RequestError::NoLeader
                | RequestError::LeaderChanged
                | RequestError::Timeout
                | RequestError::Busy)
        );
        if transient {
            self.attacks_inconclusive += 1;
            return Ok(());
        }
        let expected = match kind {
            AttackKind::BeforeLogin => matches!(result, Err(RequestError::NotLoggedIn)),
            AttackKind::Replay => matches!(
                result,
                Ok(Reply::Command(Err(CommandError::Replayed { .. })))
            ),
            AttackKind::Tampered => {
                matches!(result, Ok(Reply::Command(Err(CommandError::BadSignature))))
            }
            AttackKind::OtherSigner => matches!(result, Err(RequestError::WrongSigner)),
            AttackKind::InvalidName => matches!(result, Err(RequestError::InvalidUsername(_))),
            // A registration whose first attempt's answer was lost may have applied: then the
            // oversized one meets `AlreadyRegistered` first (still a refusal that changes nothing,
            // which the end check of the attacker's counter confirms).
            AttackKind::Oversized => matches!(
                result,
                Ok(Reply::Command(Err(
                    CommandError::TooManyPrekeys { .. } | CommandError::AlreadyRegistered
                ))) | Err(RequestError::TooLarge)
            ),
            _ => false,
        };
        if !expected {
            return Err(Violation(format!(
                "attack {kind:?} was answered {result:?}"
            )));
        }
        if matches!(
            result,
            Ok(Reply::Command(Ok(
                Outcome::Done | Outcome::Registered { .. }
            )))
        ) {
            return Err(Violation(format!("attack {kind:?} succeeded")));
        }
        self.attacks_refused += 1;
        Ok(())
    }
}

/// What the attacker does on its next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attack {
    /// A request before logging in.
    BeforeLogin,
    /// A login whose signature covers another replica.
    BadLogin,
    /// A 20 KiB frame of junk.
    Garbage,
    /// Log in properly, then this.
    LoggedIn(LoggedInAttack),
}

/// The attacks that need a login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LoggedInAttack {
    /// Set-up: the attacker registers itself (its command is replayed later).
    RegisterSelf,
    /// Its applied registration, sent again in a new de-duplication session.
    Replay,
    /// A command whose body was changed after signing.
    Tampered,
    /// A command whose signer is not the logged-in user.
    OtherSigner,
    /// A registration of an invalid username.
    InvalidName,
    /// More one-time prekeys than a pool holds.
    Oversized,
}

impl Attack {
    pub(super) fn pick(rng: &mut DetRng, registered: bool) -> Attack {
        use LoggedInAttack as L;
        if !registered && rng.below(2) == 0 {
            return Attack::LoggedIn(L::RegisterSelf);
        }
        match rng.below(8) {
            0 => Attack::BeforeLogin,
            1 => Attack::BadLogin,
            2 => Attack::Garbage,
            3 if registered => Attack::LoggedIn(L::Replay),
            4 => Attack::LoggedIn(L::OtherSigner),
            5 => Attack::LoggedIn(L::InvalidName),
            6 => Attack::LoggedIn(L::Oversized),
            _ => Attack::LoggedIn(L::Tampered),
        }
    }
}

/// What the attacker is waiting for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum AttackKind {
    BeforeLogin,
    BadLogin,
    Garbage,
    Login(Attack),
    Register(Box<SignedCommand>),
    Replay,
    Tampered,
    OtherSigner,
    InvalidName,
    Oversized,
}
