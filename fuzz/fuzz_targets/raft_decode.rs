//! Fuzz target: see `paloma_core::raft::fuzz::raft_decode` (frame decoding and the encode round trip).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paloma_core::raft::fuzz::raft_decode(data));
