//! Fuzz target: see `paloma_core::session::fuzz::fuzz_decrypt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| paloma_core::session::fuzz::fuzz_decrypt(data));
