//! Monotonic time as data. The core never reads a clock (ARCHITECTURE.md, "Determinism"): the
//! runtime passes `now` into every call, measured from an epoch of its choosing.

use std::ops::Add;
use std::time::Duration;

/// A point on the runtime's monotonic clock, in nanoseconds since the runtime's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The runtime's epoch.
    pub const ZERO: Instant = Instant(0);

    /// An instant `nanos` after the epoch.
    #[must_use]
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    /// An instant `millis` after the epoch.
    #[must_use]
    pub const fn from_millis(millis: u64) -> Instant {
        Instant(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the epoch.
    #[must_use]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The two clocks a composed machine (replica, client) needs, read once by the runtime and passed in together.
///
/// `instant` is monotonic and drives every timer (it never jumps, so a backoff or a request
/// deadline cannot be cut short or stretched by a clock step). `unix_ms` is the wall clock, used
/// only as data: a signed directory command carries an expiry in wall time, because the leader
/// judges it against its own wall clock (`directory::command::COMMAND_VALIDITY_MAX_MS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// The runtime's monotonic clock: timers.
    pub instant: Instant,
    /// Milliseconds since the Unix epoch: data only (command expiry, a leader's entry stamps).
    pub unix_ms: u64,
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the end of time rather than wrapping: a timer that far away never fires.
    fn add(self, rhs: Duration) -> Instant {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_saturates() {
        assert_eq!(
            Instant::from_nanos(u64::MAX - 1) + Duration::from_secs(1),
            Instant::from_nanos(u64::MAX)
        );
        assert_eq!(
            Instant::from_millis(5).saturating_duration_since(Instant::from_millis(7)),
            Duration::ZERO
        );
    }
}
