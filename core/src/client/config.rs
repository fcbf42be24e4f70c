//! The client's tunables: plain data, validated once (ARCHITECTURE.md, "Identifiers and
//! configuration").

use std::time::Duration;

/// Client tunables. Build with `ClientConfig { seed, ..ClientConfig::default() }` and call
/// [`ClientConfig::validate`] (the client does so in `Client::new`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The only randomness the client sees; forked per purpose (keys, de-duplication sessions,
    /// retry jitter) so an extra draw in one does not shift the others. The runtime draws it from
    /// the OS in production: the private prekeys come from it.
    pub seed: u64,
    /// How often a logged-in client sends `Heartbeat`. 10 s: a replica's presence lease is a few
    /// heartbeats long, so one lost heartbeat does not show the user offline.
    pub heartbeat_interval: Duration,
    /// How long a request (or the login) may go unanswered before the link is presumed dead and
    /// another replica is asked for. 10 s: above a replica's own request deadline, which answers
    /// `Timeout` itself when the cluster is merely slow.
    pub request_timeout: Duration,
    /// The first retry's backoff. 200 ms: about an election's worth of waiting on a LAN, so a
    /// retry after `NoLeader` usually finds the new leader.
    pub retry_backoff_initial: Duration,
    /// The backoff doubles up to this. 5 s: a client backing off longer looks dead to its user.
    pub retry_backoff_max: Duration,
    /// Retries of one operation (after its first attempt) before it fails. 8: with the defaults
    /// about half a minute of backoff, well inside a command's validity.
    pub retries_max: u32,
    /// Operations accepted and not yet finished (queued, waiting to retry or in flight). 64: an
    /// interactive client rarely has more than a handful; more means the cluster is unreachable.
    pub queue_max: usize,
    /// Users kept in the directory cache; the oldest fetched is evicted first. 4096 views of
    /// about 300 bytes each: about 1 MiB.
    pub cache_entries_max: usize,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            seed: 0,
            heartbeat_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            retry_backoff_initial: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(5),
            retries_max: 8,
            queue_max: 64,
            cache_entries_max: 4096,
        }
    }
}

/// A configuration value is out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    /// A duration is zero.
    #[error("heartbeat_interval, request_timeout and retry_backoff_initial must be positive")]
    DurationZero,
    /// `retry_backoff_max` is below `retry_backoff_initial`.
    #[error("retry_backoff_max must be at least retry_backoff_initial")]
    BackoffMaxTooSmall,
    /// `queue_max` or `cache_entries_max` is zero.
    #[error("queue_max and cache_entries_max must be positive")]
    LimitZero,
}

impl ClientConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ClientConfigError> {
        if self.heartbeat_interval.is_zero()
            || self.request_timeout.is_zero()
            || self.retry_backoff_initial.is_zero()
        {
            return Err(ClientConfigError::DurationZero);
        }
        if self.retry_backoff_max < self.retry_backoff_initial {
            return Err(ClientConfigError::BackoffMaxTooSmall);
        }
        if self.queue_max == 0 || self.cache_entries_max == 0 {
            return Err(ClientConfigError::LimitZero);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert_eq!(ClientConfig::default().validate(), Ok(()));
        let zero = ClientConfig {
            request_timeout: Duration::ZERO,
            ..ClientConfig::default()
        };
        assert_eq!(zero.validate(), Err(ClientConfigError::DurationZero));
        let inverted = ClientConfig {
            retry_backoff_max: Duration::from_millis(100),
            ..ClientConfig::default()
        };
        assert_eq!(
            inverted.validate(),
            Err(ClientConfigError::BackoffMaxTooSmall)
        );
        let empty = ClientConfig {
            queue_max: 0,
            ..ClientConfig::default()
        };
        assert_eq!(empty.validate(), Err(ClientConfigError::LimitZero));
    }
}
