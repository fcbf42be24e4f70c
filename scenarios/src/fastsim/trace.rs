//! A one-line-per-event trace a newcomer can read, and that the determinism check compares.

use paloma_core::raft::message::{AppendResponse, Body, Envelope};
use std::fmt::Write as _;

/// The trace of a run (empty when disabled).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    enabled: bool,
    lines: Vec<String>,
}

impl Trace {
    /// A trace that records only if `enabled`.
    #[must_use]
    pub fn new(enabled: bool) -> Trace {
        Trace {
            enabled,
            lines: Vec::new(),
        }
    }

    /// Records a free-form line at `now` nanoseconds.
    pub fn line(&mut self, now: u64, args: std::fmt::Arguments<'_>) {
        if self.enabled {
            let mut s = String::new();
            let _ = write!(s, "[{:>9.6}s] {args}", now as f64 / 1e9);
            self.lines.push(s);
        }
    }

    /// Records a message.
    pub fn message(&mut self, now: u64, what: &str, env: &Envelope) {
        if !self.enabled || what != "send" {
            return;
        }
        let body = describe(&env.body);
        self.line(
            now,
            format_args!("{} -> {} {} {body}", env.from, env.to, env.term),
        );
    }

    /// The lines.
    #[must_use]
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The whole trace as text.
    #[must_use]
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

fn describe(body: &Body) -> String {
    match body {
        Body::PreVote(r) => format!("PreVote last={:?}", r.last_log),
        Body::PreVoteResp(r) => format!("PreVoteResp granted={}", r.granted),
        Body::Vote(r) => format!(
            "Vote last={:?}{}",
            r.last_log,
            if r.transfer { " (transfer)" } else { "" }
        ),
        Body::VoteResp(r) => format!("VoteResp granted={}", r.granted),
        Body::Append(a) => format!(
            "Append prev={:?} n={} commit={}",
            a.prev,
            a.entries.len(),
            a.commit.0
        ),
        Body::AppendResp(AppendResponse::Accepted { match_index }) => {
            format!("AppendResp ok match={}", match_index.0)
        }
        Body::AppendResp(AppendResponse::Rejected { rejected, hint }) => {
            format!("AppendResp reject at={} hint={hint:?}", rejected.0)
        }
        Body::Heartbeat(h) => format!("Heartbeat commit={} round={}", h.commit.0, h.round),
        Body::HeartbeatResp(h) => {
            format!("HeartbeatResp round={} last={}", h.round, h.last_index.0)
        }
        Body::Snapshot(c) => format!(
            "Snapshot last={:?} offset={} len={} total={}",
            c.meta.last,
            c.offset,
            c.data.len(),
            c.total
        ),
        Body::SnapshotResp(a) => format!("SnapshotResp next={} done={}", a.next_offset, a.done),
        Body::TimeoutNow => "TimeoutNow".to_string(),
        Body::ReadIndex(id) => format!("ReadIndex {id}"),
        Body::ReadIndexResp(id, idx) => format!("ReadIndexResp {id} {idx:?}"),
    }
}
