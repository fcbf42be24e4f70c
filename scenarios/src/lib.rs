//! Paloma's simulation test ring: the key-value workload, a linearizability checker and the fast
//! (madsim-free) cluster simulator with shrinking. The Raft safety checker lives in the core
//! (`paloma_core::raft::check`, behind its `testing` feature) so the core's proptest runs it too.
//! The madsim scenarios live in `tests/madsim_*.rs` and drive `paloma-runtime-sim`.

pub mod fastsim;
pub mod history;
pub mod kv;
pub mod sweep;
