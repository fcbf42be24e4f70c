//! Fuzz target: see `paloma_core::raft::fuzz::raft_frames` (length-prefixed frames stepping a follower).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paloma_core::raft::fuzz::raft_frames(data));
