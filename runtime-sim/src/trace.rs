//! The one-line-per-event trace of a simulated run.
//!
//! `PALOMA_TRACE=1` prints every line as it happens; tests can also record the lines to compare
//! two runs of one seed (the determinism check). Lines look like
//!
//! ```text
//! t=1.234567s n2 -> n3 Append prev=4@2 n=3 commit=4
//! t=1.240001s n1 becomes Leader term=3
//! t=2.000000s crash n2 (kept 3/7 unsynced ops, one torn)
//! ```
//!
//! Times are simulated seconds since the cluster started (the global clock, not a node's drifted
//! one). Nothing here uses madsim: both simulators write this one format (the fast simulator's
//! *story* is the same trace with message lines off).

#![allow(clippy::disallowed_types)] // a shared sink for every node task; see disk.rs for why a Mutex.

use paloma_core::raft::message::Envelope;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};

/// The environment variable that prints the trace.
pub const TRACE_ENV: &str = "PALOMA_TRACE";

#[derive(Debug, Default)]
struct TraceState {
    print: bool,
    record: bool,
    /// Whether message lines are kept (off: the story only).
    messages: bool,
    lines: Vec<String>,
}

/// A trace sink shared by the cluster and its node tasks. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    state: Arc<Mutex<TraceState>>,
}

impl Trace {
    /// A trace that prints if `PALOMA_TRACE=1` and records if `record`.
    #[must_use]
    pub fn from_env(record: bool) -> Trace {
        let print = std::env::var(TRACE_ENV).is_ok_and(|v| v == "1");
        Trace::new(print, record)
    }

    /// A trace that prints and/or records.
    #[must_use]
    pub fn new(print: bool, record: bool) -> Trace {
        Trace {
            state: Arc::new(Mutex::new(TraceState {
                print,
                record,
                messages: true,
                lines: Vec::new(),
            })),
        }
    }

    /// A recorded trace (nothing printed) for the fast simulator: the story if `enabled`, message
    /// lines too if `messages`.
    #[must_use]
    pub fn story(enabled: bool, messages: bool) -> Trace {
        let trace = Trace::new(false, enabled);
        trace.lock().messages = enabled && messages;
        trace
    }

    /// Whether message lines are kept.
    #[must_use]
    pub fn messages(&self) -> bool {
        let st = self.lock();
        (st.print || st.record) && st.messages
    }

    /// The recorded lines.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Whether lines go anywhere (callers skip formatting otherwise).
    #[must_use]
    pub fn enabled(&self) -> bool {
        let st = self.lock();
        st.print || st.record
    }

    /// Adds a line at `t_nanos` simulated nanoseconds.
    pub fn line(&self, t_nanos: u64, args: fmt::Arguments<'_>) {
        let mut st = self.lock();
        if !(st.print || st.record) {
            return;
        }
        let mut s = String::with_capacity(64);
        let _ = write!(
            s,
            "t={}.{:06}s {args}",
            t_nanos / 1_000_000_000,
            (t_nanos % 1_000_000_000) / 1_000
        );
        if st.print {
            println!("{s}");
        }
        if st.record {
            st.lines.push(s);
        }
    }

    /// Records a message sent (`arrow` is `->`, or `=>` for a duplicate our fault layer added).
    pub fn message(&self, t_nanos: u64, env: &Envelope, arrow: &str) {
        if self.messages() {
            self.line(
                t_nanos,
                format_args!("{} {arrow} {} {} {}", env.from, env.to, env.term, env.body),
            );
        }
    }

    /// The recorded lines, joined.
    #[must_use]
    pub fn text(&self) -> String {
        self.lock().lines.join("\n")
    }

    /// How many lines were recorded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// Whether nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, TraceState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paloma_core::raft::message::{AppendRequest, Body};
    use paloma_core::{LogId, LogIndex, NodeId, Term};

    #[test]
    fn lines_read_like_the_docs() {
        let trace = Trace::new(false, true);
        let env = Envelope {
            from: NodeId(2),
            to: NodeId(3),
            term: Term(2),
            body: Body::Append(AppendRequest {
                prev: LogId::new(Term(2), LogIndex(4)),
                entries: vec![],
                commit: LogIndex(4),
            }),
        };
        trace.message(1_234_567_890, &env, "->");
        assert_eq!(
            trace.text(),
            "t=1.234567s n2 -> n3 t2 Append prev=4@2 n=0 commit=4"
        );
        let off = Trace::new(false, false);
        off.message(0, &env, "->");
        assert!(off.is_empty());
    }
}
