//! Paloma's simulation test ring, one toolkit for both simulators: the key-value state machine
//! ([`kv`]), the client workload ([`workload`]) and its history with a linearizability checker
//! ([`history`]), the Raft safety checker (`paloma_core::raft::check`, in the core behind its
//! `testing` feature so the core's proptest runs it too), the fault vocabulary ([`fastsim::faults`]:
//! per-seed swarm profiles and fault plans), and the trace. On top: the fast
//! (madsim-free) cluster simulator with shrinking ([`fastsim`], [`sweep`]), and under
//! `--cfg madsim` the madsim scenario toolkit ([`sim`]) whose nodes run the production driver
//! through `paloma-runtime-sim`; the madsim scenarios themselves are `tests/madsim_*.rs`.

pub mod dirsim;
pub mod fastsim;
pub mod history;
pub mod kv;
#[cfg(madsim)]
pub mod sim;
pub mod sweep;
pub mod workload;
