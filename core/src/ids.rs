//! Identifier newtypes: ids are never bare integers (ARCHITECTURE.md, "Identifiers and
//! configuration").

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

id_newtype!(
    /// A Raft replica. Never reused after removal (etcd README: a removed id that returns with an
    /// empty disk would be counted as the old member).
    NodeId,
    "n"
);
id_newtype!(
    /// A Raft term (Raft §5.1).
    Term,
    "t"
);
id_newtype!(
    /// A position in the replicated log; the first entry has index 1 (Raft §5.3).
    LogIndex,
    "i"
);
id_newtype!(
    /// A client session for request de-duplication (Raft thesis §6.3).
    ClientId,
    "c"
);
id_newtype!(
    /// A read request's id, chosen by the caller, echoed in `ReadReady`/`ReadFailed`.
    ReadId,
    "r"
);
id_newtype!(
    /// The sequence number of a persistence batch handed to the runtime.
    PersistSeq,
    "p"
);

id_newtype!(
    /// A client connection on one replica, chosen by the runtime (never reused while it lives).
    ConnId,
    "conn"
);
id_newtype!(
    /// A request on one client connection, chosen by the client and echoed in the response.
    RequestId,
    "req"
);

impl Term {
    /// The next term.
    #[must_use]
    pub fn next(self) -> Term {
        Term(self.0.checked_add(1).expect("term overflow"))
    }
}

impl LogIndex {
    /// The index after this one.
    #[must_use]
    pub fn next(self) -> LogIndex {
        LogIndex(self.0.checked_add(1).expect("log index overflow"))
    }

    /// The index before this one, saturating at 0.
    #[must_use]
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

/// A user, named by the BLAKE3 hash of their identity Ed25519 public key (README,
/// "Constructions"). It lives here with the other identifiers (ARCHITECTURE.md, "Identifiers and
/// configuration") although only the session layer uses it today.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub [u8; 32]);

impl UserId {
    /// `BLAKE3(identity Ed25519 public key)`.
    pub fn from_signing_key(signing_key: &[u8; 32]) -> Self {
        Self(*blake3::hash(signing_key).as_bytes())
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

/// A message's id, 128 bits chosen at random by its sender (ARCHITECTURE.md, "Mailboxes": the recipient
/// de-duplicates by it, and a mailbox stores one envelope per id).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "msg-")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

id_newtype!(
    /// An envelope's place in its recipient's mailbox, assigned at apply: strictly increasing
    /// within a mailbox and never reused while the recipient stays registered (ARCHITECTURE.md,
    /// "Mailboxes"). The first envelope of a mailbox is 1; 0 means "before the first".
    MailboxSeq,
    "m"
);

/// An entry's position and term. Log freshness compares `(term, index)` lexicographically
/// (Raft §5.4.1; openraft fix a48a3282), which the derived `Ord` does because `term` comes first.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogId {
    /// The term of the entry.
    pub term: Term,
    /// The index of the entry.
    pub index: LogIndex,
}

impl LogId {
    /// Builds a log id.
    #[must_use]
    pub fn new(term: Term, index: LogIndex) -> LogId {
        LogId { term, index }
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.index.0, self.term.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_id_orders_by_term_first() {
        let a = LogId::new(Term(2), LogIndex(1));
        let b = LogId::new(Term(1), LogIndex(100));
        assert!(a > b, "a higher term wins whatever the index (Raft §5.4.1)");
        assert!(LogId::new(Term(2), LogIndex(2)) > a);
    }
}
