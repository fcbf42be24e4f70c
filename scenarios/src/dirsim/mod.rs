//! The directory simulator: the fast simulator's method (one seeded event queue, a virtual clock
//! per node that drifts, a network that drops, duplicates, delays, reorders and partitions, disks
//! that lose or tear unsynced writes) applied to the composed machines: N [`Replica`]s and many
//! [`Client`]s, each driven through its own sans-IO contract exactly as a runtime would.
//!
//! Every seed draws its own fault profile ([`Faults::swarm`]). The workload registers contended
//! usernames, looks users up (linearizable and local), claims bundles, publishes prekeys,
//! subscribes to presence, deregisters and re-registers, and takes clients offline and back; an
//! attacker sends forged, replayed, invalid and oversized requests and requests before login.
//! The checkers ([`checks`]) run after every step and at the end.

mod checks;
mod world;

pub use world::{DirConfig, DirReport, DirSim};

use crate::fastsim::Trace;

/// Runs one seed of the directory family: the report and the story trace.
#[must_use]
pub fn run(cfg: DirConfig) -> (DirReport, Trace) {
    DirSim::new(cfg).run()
}
