//! The identity directory: the replicated state machine the Raft log drives (who exists, which
//! keys they own, where they can be reached, whether they are online, what waits in their
//! offline mailbox), and the vocabulary of signed commands and deposits that change it. Every
//! replica applies the same entries to the same state (Raft §5.4.3); the only wall time it sees
//! is the leader's stamp in each entry.

pub mod command;
pub mod mailbox;
mod state;

pub use command::{
    Bundle, CommandBody, CommandError, CommandKind, CommandResult, Deposit, DirectoryEntry,
    OneTimePrekey, Outcome, PresenceBatch, PresenceChange, SignedCommand, SignedPrekey, Username,
    UsernameError, Visibility,
};
pub use mailbox::{Mailbox, MailboxLimits, MailboxMessage, MailboxPage};
pub use state::{
    AuditRecord, Directory, Presence, UserRecord, UserView, AUDIT_RECORDS_MAX, DEPOSIT_LOG_MAX,
    PRESENCE_LOG_MAX, SNAPSHOT_VERSION, TOMBSTONES_MAX, USERS_MAX,
};
