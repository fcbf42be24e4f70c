//! Fuzz target: see `paloma_core::session::fuzz::fuzz_initial_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paloma_core::session::fuzz::fuzz_initial_message(data));
