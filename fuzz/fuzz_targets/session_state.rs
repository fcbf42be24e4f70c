//! Fuzz target: see `paloma_core::session::fuzz::fuzz_session_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paloma_core::session::fuzz::fuzz_session_state(data));
