//! Replays the checked-in seed corpora of the session fuzz targets (`fuzz/corpus/session_*`)
//! under plain `cargo test`, so every seed stays panic-free without libFuzzer.
//!
//! `PALOMA_BLESS=1` rewrites the generated seeds (valid messages and states produced by
//! `paloma_core::session::fuzz::seed_corpora`, plus a few malformed ones); other files in the
//! directories, such as crashes minimised by the fuzzer, are kept and replayed too.

use std::path::PathBuf;

use paloma_core::session::fuzz;

/// A fuzz entry point.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("session_decrypt", fuzz::fuzz_decrypt),
    ("session_initial", fuzz::fuzz_initial_message),
    ("session_state", fuzz::fuzz_session_state),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn bless() {
    for (target, valid) in fuzz::seed_corpora() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, input) in valid.iter().enumerate() {
            std::fs::write(dir.join(format!("valid-{i}")), input).unwrap();
            // The same input with one byte flipped in the middle and truncated by one byte.
            let mut flipped = input.clone();
            let middle = flipped.len() / 2;
            flipped[middle] ^= 0x20;
            std::fs::write(dir.join(format!("flipped-{i}")), flipped).unwrap();
            std::fs::write(
                dir.join(format!("truncated-{i}")),
                &input[..input.len() - 1],
            )
            .unwrap();
        }
        std::fs::write(dir.join("empty"), b"").unwrap();
        std::fs::write(dir.join("bad-version"), [0x7F, 0, 0, 0]).unwrap();
    }
}

#[test]
fn seed_corpora_replay_without_panics() {
    if std::env::var("PALOMA_BLESS").is_ok_and(|v| v == "1") {
        bless();
    }
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir:?}: {e}; run with PALOMA_BLESS=1"))
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        assert!(
            entries.len() >= 5,
            "{target}: expected a seed corpus, found {} files",
            entries.len()
        );
        for path in entries {
            let input = std::fs::read(&path).unwrap();
            run(&input);
        }
    }
}

/// The checked-in valid seeds equal freshly generated ones, so a change to the message or the
/// session state encoding (which would strand persisted sessions) fails here too.
#[test]
fn checked_in_valid_seeds_match_generated_ones() {
    if std::env::var("PALOMA_BLESS").is_ok_and(|v| v == "1") {
        return;
    }
    for (target, valid) in fuzz::seed_corpora() {
        for (i, input) in valid.iter().enumerate() {
            let path = corpus_dir(target).join(format!("valid-{i}"));
            let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert!(
                stored == *input,
                "{path:?} differs from the generated seed: encoding changed? (PALOMA_BLESS=1)"
            );
        }
    }
}

/// Valid seeds decode as session states.
#[test]
fn generated_state_seeds_decode() {
    use paloma_core::session::Session;
    for (target, valid) in fuzz::seed_corpora() {
        if target == "session_state" {
            for input in &valid {
                Session::from_bytes(input).unwrap();
            }
        }
    }
}
