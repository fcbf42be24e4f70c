//! A one-line-per-event trace a newcomer can read, and that the determinism check compares.

use paloma_core::raft::message::Envelope;
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
