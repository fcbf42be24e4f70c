//! Per-node clock drift, which madsim lacks (it has one global clock).
//!
//! A node's monotonic clock runs at `1 + drift_ppm / 1e6` times the simulated global clock, from
//! the cluster's start. The node's `now` is what the core sees; sleeps for a core deadline are
//! converted back to global time, rounded up so the node never wakes before its deadline.

use paloma_core::Instant;
use std::time::Duration;

/// Parts per million in one.
const PPM: i128 = 1_000_000;

/// The largest drift accepted: ±50% keeps both directions of the conversion positive.
pub const DRIFT_PPM_MAX: i32 = 500_000;

/// A clock running at a fixed rate relative to the global simulated clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftClock {
    drift_ppm: i32,
}

impl DriftClock {
    /// A clock `drift_ppm` parts per million fast (negative: slow).
    ///
    /// # Panics
    /// If `|drift_ppm| > DRIFT_PPM_MAX`.
    #[must_use]
    pub fn new(drift_ppm: i32) -> DriftClock {
        assert!(
            drift_ppm.abs() <= DRIFT_PPM_MAX,
            "drift of {drift_ppm} ppm is out of range"
        );
        DriftClock { drift_ppm }
    }

    /// The drift in ppm.
    #[must_use]
    pub fn drift_ppm(self) -> i32 {
        self.drift_ppm
    }

    /// The node's time when `global` has elapsed on the simulated clock.
    #[must_use]
    pub fn local(self, global: Duration) -> Instant {
        let g = i128::try_from(global.as_nanos()).unwrap_or(i128::MAX / PPM / 2);
        let local = g * (PPM + i128::from(self.drift_ppm)) / PPM;
        Instant::from_nanos(u64::try_from(local).unwrap_or(u64::MAX))
    }

    /// The global elapsed time at which the node's clock reaches `deadline` (rounded up).
    #[must_use]
    pub fn global(self, deadline: Instant) -> Duration {
        let d = i128::from(deadline.as_nanos());
        let rate = PPM + i128::from(self.drift_ppm);
        let g = (d * PPM + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(g).unwrap_or(u64::MAX))
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
}
