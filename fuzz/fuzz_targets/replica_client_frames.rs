//! Fuzz target: see `paloma_core::replica::fuzz::replica_client_frames` (arbitrary client and peer
//! frames to a replica that leads, before and after login).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    paloma_core::replica::fuzz::replica_client_frames(data);
});
