//! Raft configuration: plain data, validated once (ARCHITECTURE.md, "Identifiers and configuration").

use crate::ids::NodeId;
use std::time::Duration;

/// How linearizable reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex (thesis §6.4): the leader confirms it is still leader with a heartbeat round before
    /// answering. Safe under any clock behaviour.
    ReadIndex,
    /// Leader leases (thesis §6.4.1): the leader answers without a round while a quorum acknowledged
    /// a heartbeat within `election_timeout`, shortened by `clock_drift_max_ppm`. **Unsafe** if
    /// clocks drift faster than that bound or a process pauses past the margin: the simulator's
    /// `lease_read_breaks_under_clock_drift` scenario shows a stale read. Needs `check_quorum`.
    LeaseBased,
}

/// Raft tunables. Build with `Config { id, ..Config::default() }` and call [`Config::validate`].
///
/// Everything here is local to one node: timing, batching, limits. A setting that decides what
/// `apply` produces must not live here, since nodes may be configured differently; it travels
/// in the replicated configuration (`ReplicatedSettings`).
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica.
    pub id: NodeId,
    /// The minimum election timeout; each wait is drawn uniformly from `[t, 2t)` (Raft §5.2).
    /// 1 s suits a LAN or one datacenter: about 10 heartbeats, so one or two lost heartbeats never
    /// start an election.
    pub election_timeout: Duration,
    /// How often a leader sends heartbeats. 100 ms: a tenth of the election timeout (Raft §5.6
    /// wants broadcast time well under the election timeout).
    pub heartbeat_interval: Duration,
    /// In-flight appends that have not been acknowledged for this long are presumed lost and the
    /// follower is probed again. 300 ms: three heartbeats.
    pub append_timeout: Duration,
    /// Pre-vote (thesis §9.6): a node that cannot win does not bump terms. On by default; together
    /// with `check_quorum` it keeps a leader stable under partial partitions (Howard 2020).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout steps down, and voters that
    /// heard from a leader within an election timeout refuse to vote (leader stickiness).
    pub check_quorum: bool,
    /// How reads are served.
    pub read_mode: ReadMode,
    /// The largest rate at which any two replicas' clocks may drift apart from real time, in parts
    /// per million, that lease reads must survive. A lease is shortened so that it ends before any
    /// voter, whose clock may run this much faster than real time while the leader's runs this
    /// much slower, stops refusing votes (thesis §6.4.1). 5% by default: far above what NTP-free
    /// commodity clocks drift, and it costs a lease only a tenth of its length.
    pub clock_drift_max_ppm: u32,
    /// Most entries in one AppendEntries message.
    pub append_entries_max: usize,
    /// Most entry bytes in one AppendEntries message (at least one entry is always sent).
    pub append_bytes_max: usize,
    /// Unacknowledged AppendEntries messages per follower (pipelining window).
    pub inflight_messages_max: usize,
    /// Proposals are refused with `Backpressure` while this many entries are uncommitted.
    pub uncommitted_entries_max: usize,
    /// Largest accepted command.
    pub command_bytes_max: usize,
    /// Largest accepted frame; bigger ones are dropped and counted.
    pub frame_bytes_max: usize,
    /// Outgoing messages buffered before the runtime drains them; more are dropped and counted.
    pub outbox_messages_max: usize,
    /// Reads waiting for a round or for apply, per node.
    pub pending_reads_max: usize,
    /// Locally proposed commands whose result is awaited.
    pub pending_proposals_max: usize,
    /// Take a snapshot once this many entries were applied since the last one.
    pub snapshot_threshold_entries: u64,
    /// Entries kept in the log behind a snapshot, so slightly slow followers need no snapshot.
    pub snapshot_trailing_entries: u64,
    /// Snapshot chunk size for InstallSnapshot.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot a follower accepts.
    pub snapshot_bytes_max: u64,
    /// A learner counts as caught up when it is at most this many entries behind.
    pub catch_up_lag_max: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: NodeId(0),
            election_timeout: Duration::from_millis(1000),
            heartbeat_interval: Duration::from_millis(100),
            append_timeout: Duration::from_millis(300),
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::ReadIndex,
            clock_drift_max_ppm: 50_000,
            append_entries_max: 512,
            append_bytes_max: 1 << 20,
            inflight_messages_max: 32,
            uncommitted_entries_max: 16_384,
            command_bytes_max: 64 << 10,
            frame_bytes_max: 4 << 20,
            outbox_messages_max: 65_536,
            pending_reads_max: 16_384,
            pending_proposals_max: 65_536,
            snapshot_threshold_entries: 10_000,
            snapshot_trailing_entries: 1_000,
            snapshot_chunk_bytes: 256 << 10,
            snapshot_bytes_max: 1 << 30,
            catch_up_lag_max: 64,
        }
    }
}

/// A configuration value is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `heartbeat_interval` is zero.
    #[error("heartbeat_interval must be positive")]
    HeartbeatZero,
    /// `election_timeout` is under two heartbeat intervals.
    #[error("election_timeout must be at least two heartbeat intervals")]
    ElectionTimeoutTooShort,
    /// `append_timeout` is under one heartbeat interval.
    #[error("append_timeout must be at least one heartbeat interval")]
    AppendTimeoutTooShort,
    /// A batch, window or chunk size is zero.
    #[error("batch, window and chunk sizes must be positive")]
    SizeZero,
    /// `frame_bytes_max` cannot hold a whole command or snapshot chunk.
    #[error("frame_bytes_max must hold a whole command and a snapshot chunk")]
    FrameTooSmall,
    /// `snapshot_threshold_entries` is zero.
    #[error("snapshot_threshold_entries must be positive")]
    ThresholdZero,
    /// `ReadMode::LeaseBased` without `check_quorum`.
    #[error("lease reads need check_quorum")]
    LeaseWithoutCheckQuorum,
    /// `clock_drift_max_ppm` is 50% or more.
    #[error("clock_drift_max_ppm must be below 50%")]
    DriftTooLarge,
    /// A queue limit is zero (or the outbox holds fewer than 16 messages).
    #[error("queue limits must be positive")]
    QueueLimitZero,
}

impl Config {
    /// Checks the relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::HeartbeatZero);
        }
        if self.election_timeout < self.heartbeat_interval * 2 {
            return Err(ConfigError::ElectionTimeoutTooShort);
        }
        if self.append_timeout < self.heartbeat_interval {
            return Err(ConfigError::AppendTimeoutTooShort);
        }
        if self.append_entries_max == 0
            || self.inflight_messages_max == 0
            || self.snapshot_chunk_bytes == 0
        {
            return Err(ConfigError::SizeZero);
        }
        if self.command_bytes_max + 1024 > self.frame_bytes_max
            || self.snapshot_chunk_bytes + 4096 > self.frame_bytes_max
        {
            return Err(ConfigError::FrameTooSmall);
        }
        if self.snapshot_threshold_entries == 0 {
            return Err(ConfigError::ThresholdZero);
        }
        if self.read_mode == ReadMode::LeaseBased && !self.check_quorum {
            // Without check-quorum a deposed leader keeps believing it leads, and voters grant
            // votes without waiting out the lease: nothing bounds a lease (etcd refuses the same
            // combination: "CheckQuorum must be enabled when ReadOnlyOption is ReadOnlyLeaseBased").
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        if self.clock_drift_max_ppm >= 500_000 {
            return Err(ConfigError::DriftTooLarge);
        }
        if self.outbox_messages_max < 16
            || self.pending_reads_max == 0
            || self.pending_proposals_max == 0
            || self.uncommitted_entries_max == 0
        {
            return Err(ConfigError::QueueLimitZero);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_refused() {
        Config::default().validate().unwrap();
        let bad = Config {
            election_timeout: Duration::from_millis(150),
            ..Config::default()
        };
        assert!(bad.validate().is_err());
        let bad = Config {
            snapshot_chunk_bytes: 0,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
        let bad = Config {
            read_mode: ReadMode::LeaseBased,
            check_quorum: false,
            ..Config::default()
        };
        assert_eq!(bad.validate(), Err(ConfigError::LeaseWithoutCheckQuorum));
    }
}
