//! Injected, forkable randomness (ARCHITECTURE.md, "Determinism").
//!
//! The runtime supplies one 64-bit seed; each subsystem forks its own stream by label, so an extra
//! draw in one subsystem never shifts another's. ChaCha8 is used for its quality and portability
//! (the stream is identical on every platform, which the simulator's replay needs).

use chacha20::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// A deterministic random stream.
#[derive(Debug)]
pub struct DetRng {
    inner: ChaCha8Rng,
}

impl DetRng {
    /// A stream for `subsystem` derived from the node's injected `seed`.
    #[must_use]
    pub fn fork(seed: u64, subsystem: &str) -> DetRng {
        let mut hasher = blake3::Hasher::new_derive_key("paloma 2026-11 rng fork v1");
        hasher.update(&seed.to_le_bytes());
        hasher.update(subsystem.as_bytes());
        DetRng {
            inner: ChaCha8Rng::from_seed(*hasher.finalize().as_bytes()),
        }
    }

    /// A uniformly distributed `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// A value in `[0, bound)`; `bound` must be non-zero. Uses rejection so there is no modulo bias.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "DetRng::below needs a non-zero bound");
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let v = self.inner.next_u64();
            if v < zone {
                return v % bound;
            }
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        self.inner.fill_bytes(buf);
    }
}

/// Key material comes from the injected seed too (ARCHITECTURE.md, "Determinism"): a runtime seeds
/// each machine from the operating system's generator, a simulator from the run's seed, so one seed
/// replays a run bit for bit, keys included.
impl crate::session::Entropy for DetRng {
    fn fill(&mut self, dest: &mut [u8]) {
        DetRng::fill(self, dest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_are_independent_and_reproducible() {
        let mut a = DetRng::fork(7, "raft");
        let mut b = DetRng::fork(7, "raft");
        let mut c = DetRng::fork(7, "session");
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        for _ in 0..1000 {
            assert!(a.below(3) < 3);
        }
    }
}
