//! The leader's view of one follower (etcd raft's `Progress`, thesis §3.5 / §10.2).

use crate::ids::{LogId, LogIndex};
use crate::time::Instant;
use std::collections::VecDeque;

/// How the leader currently replicates to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The match point is unknown: one append at a time until one is accepted.
    Probe {
        /// When the outstanding probe was sent; another is sent once `append_timeout` passes.
        sent_at: Option<Instant>,
    },
    /// Steady state: appends are pipelined up to the in-flight window.
    Replicate,
    /// The follower needs a snapshot; chunks go one at a time and resume from the acked offset.
    Snapshot {
        /// The snapshot being sent.
        last: LogId,
        /// Bytes the follower has acknowledged.
        offset: u64,
        /// When the outstanding chunk was sent.
        sent_at: Instant,
    },
}

/// Replication progress of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Replication state.
    pub state: ProgressState,
    /// The last index carried by each unacknowledged append, oldest first (bounded by the window).
    pub inflight: VecDeque<LogIndex>,
    /// When the follower last acknowledged an append.
    pub last_ack_at: Instant,
    /// Heard from since the last check-quorum.
    pub recent_active: bool,
    /// The highest heartbeat round the follower acknowledged.
    pub acked_round: u64,
    /// TimeoutNow was already sent for the current transfer.
    pub timeout_now_sent: bool,
}

impl Progress {
    /// A fresh progress for a leader whose last index is `last`.
    #[must_use]
    pub fn new(last: LogIndex, now: Instant) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index: last.next(),
            state: ProgressState::Probe { sent_at: None },
            inflight: VecDeque::new(),
            last_ack_at: now,
            recent_active: true,
            acked_round: 0,
            timeout_now_sent: false,
        }
    }

    /// Back to probing from just after the match point, forgetting in-flight appends.
    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe { sent_at: None };
        self.next_index = self.match_index.next();
        self.inflight.clear();
        assert!(self.next_index > self.match_index);
    }

    /// Records an acknowledged match; returns whether it advanced.
    pub fn on_match(&mut self, match_index: LogIndex, now: Instant) -> bool {
        self.last_ack_at = now;
        while self.inflight.front().is_some_and(|&i| i <= match_index) {
            self.inflight.pop_front();
        }
        if match_index <= self.match_index {
            return false;
        }
        self.match_index = match_index;
        if self.next_index <= match_index {
            self.next_index = match_index.next();
        }
        // The next append always starts past what the follower is known to hold.
        assert!(self.next_index > self.match_index);
        true
    }
}
