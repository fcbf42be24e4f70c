//! Fuzz target: see `paloma_core::replica::fuzz::directory_entries` (arbitrary directory entries
//! applied, snapshot round trip, arbitrary snapshot bytes restored).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paloma_core::replica::fuzz::directory_entries(data));
