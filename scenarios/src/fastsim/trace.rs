//! A one-line-per-event trace a newcomer can read, and that the determinism check compares.

use paloma_core::raft::message::Envelope;
use std::fmt::Write as _;

/// The trace of a run (empty when disabled). The *story* (faults, elections, progress each
/// simulated second, the verdict) is a screenful or two; with `messages` every message sent and
/// every role change is there too.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    enabled: bool,
    messages: bool,
    lines: Vec<String>,
}

impl Trace {
    /// A trace that records only if `enabled`, messages only if `messages` too.
    #[must_use]
    pub fn new(enabled: bool, messages: bool) -> Trace {
        Trace {
            enabled,
            messages: enabled && messages,
            lines: Vec::new(),
        }
    }

    /// Whether the full message trace is on.
    #[must_use]
    pub fn messages(&self) -> bool {
        self.messages
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
        if !self.messages || what != "send" {
            return;
        }
        self.line(
            now,
            format_args!("{} -> {} {} {}", env.from, env.to, env.term, env.body),
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
