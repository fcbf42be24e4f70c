//! Per-node clock drift, which madsim lacks (it has one global clock).
//!
//! A node's monotonic clock runs at `1 + drift_ppm / 1e6` times the simulated global clock, from
//! the cluster's start. The node's `now` is what the core sees; sleeps for a core deadline are
//! converted back to global time, rounded up so the node never wakes before its deadline. Both
//! simulators use this clock: madsim's nodes through `SimClock`, the fast simulator directly.

use paloma_core::Instant;
use std::time::Duration;

/// Parts per million in one.
const PPM: i128 = 1_000_000;

/// The largest drift accepted: ±50% keeps both directions of the conversion positive.
pub const DRIFT_PPM_MAX: i32 = 500_000;

/// Milliseconds since the Unix epoch at simulated time zero: a leader stamps entries with this plus
/// its node's clock (both simulators use it, so wall-clock stamps read the same in either trace).
pub const UNIX_MS_EPOCH: u64 = 1_700_000_000_000;

/// A node's clock: runs at `1 + drift_ppm / 1e6` times the global simulated clock. The rate may
/// change during a run ([`DriftClock::set_drift`]); the clock stays continuous across the change
/// (it never jumps, and never goes back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftClock {
    drift_ppm: i32,
    /// (global, local) nanoseconds at the last rate change.
    base: (u64, u64),
}

impl DriftClock {
    /// A clock `drift_ppm` parts per million fast (negative: slow), reading zero at global zero.
    ///
    /// # Panics
    /// If `|drift_ppm| > DRIFT_PPM_MAX`.
    #[must_use]
    pub fn new(drift_ppm: i32) -> DriftClock {
        assert!(
            drift_ppm.abs() <= DRIFT_PPM_MAX,
            "drift of {drift_ppm} ppm is out of range"
        );
        DriftClock {
            drift_ppm,
            base: (0, 0),
        }
    }

    /// The drift in ppm.
    #[must_use]
    pub fn drift_ppm(self) -> i32 {
        self.drift_ppm
    }

    /// From global time `at_nanos` on, the clock runs at the new rate; it reads the same at
    /// `at_nanos` as before the change.
    ///
    /// # Panics
    /// If `|drift_ppm| > DRIFT_PPM_MAX`.
    pub fn set_drift(&mut self, at_nanos: u64, drift_ppm: i32) {
        assert!(
            drift_ppm.abs() <= DRIFT_PPM_MAX,
            "drift of {drift_ppm} ppm is out of range"
        );
        self.base = (at_nanos, self.local_nanos(at_nanos).as_nanos());
        self.drift_ppm = drift_ppm;
    }

    /// The node's time when the global clock reads `global_nanos`.
    #[must_use]
    pub fn local_nanos(self, global_nanos: u64) -> Instant {
        let (base_g, base_l) = self.base;
        let elapsed = i128::from(global_nanos.saturating_sub(base_g));
        let local = i128::from(base_l) + elapsed * (PPM + i128::from(self.drift_ppm)) / PPM;
        Instant::from_nanos(u64::try_from(local).unwrap_or(u64::MAX))
    }

    /// The earliest global time (nanoseconds) at which the node's clock reads at least `deadline`.
    #[must_use]
    pub fn global_nanos(self, deadline: Instant) -> u64 {
        let (base_g, base_l) = self.base;
        let l = i128::from(deadline.as_nanos()) - i128::from(base_l);
        if l <= 0 {
            return base_g;
        }
        let rate = PPM + i128::from(self.drift_ppm);
        let g = i128::from(base_g) + (l * PPM + rate - 1) / rate;
        u64::try_from(g).unwrap_or(u64::MAX)
    }

    /// The node's time when `global` has elapsed on the simulated clock.
    #[must_use]
    pub fn local(self, global: Duration) -> Instant {
        self.local_nanos(u64::try_from(global.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The global elapsed time at which the node's clock reaches `deadline` (rounded up).
    #[must_use]
    pub fn global(self, deadline: Instant) -> Duration {
        Duration::from_nanos(self.global_nanos(deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_never_wakes_early() {
        for ppm in [-500_000, -12_345, -1, 0, 1, 200, 99_999, 500_000] {
            let c = DriftClock::new(ppm);
            for d in [0u64, 1, 7, 999_999_937, 1_000_000_000, 123_456_789_012] {
                let deadline = Instant::from_nanos(d);
                let g = c.global(deadline);
                assert!(c.local(g) >= deadline, "ppm {ppm} deadline {d}");
                assert!(
                    g.as_nanos() == 0 || c.local(g - Duration::from_nanos(1)) < deadline || ppm > 0,
                    "ppm {ppm} deadline {d}: woke later than needed"
                );
            }
        }
        assert_eq!(
            DriftClock::new(100_000).local(Duration::from_secs(10)),
            Instant::from_millis(11_000)
        );
    }

    #[test]
    fn a_rate_change_keeps_the_clock_continuous() {
        let mut c = DriftClock::new(100_000);
        let at = 10_000_000_000; // 10 s global: 11 s local
        assert_eq!(c.local_nanos(at), Instant::from_millis(11_000));
        c.set_drift(at, -50_000);
        assert_eq!(c.local_nanos(at), Instant::from_millis(11_000), "no jump");
        // 10 s more at 0.95: 9.5 s more local.
        assert_eq!(c.local_nanos(2 * at), Instant::from_millis(20_500));
        // Deadlines before the change map to the change itself; after it, exactly back.
        assert_eq!(c.global_nanos(Instant::from_millis(5_000)), at);
        let g = c.global_nanos(Instant::from_millis(20_500));
        assert_eq!(g, 2 * at);
        assert!(c.local_nanos(g) >= Instant::from_millis(20_500));
    }
}
