//! Paloma's simulation test ring: the key-value workload, Raft safety checkers, a linearizability
//! checker, and the fast (madsim-free) cluster simulator with shrinking. The madsim scenarios live
//! in `tests/madsim_*.rs` and drive `paloma-runtime-sim`.

pub mod check;
pub mod fastsim;
pub mod history;
pub mod kv;
pub mod sweep;
