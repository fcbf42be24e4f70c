//! Placeholder until the directory state machine lands (branch `dir-state`).

/// The directory (placeholder).
#[derive(Debug, Default)]
pub struct Directory;
/// An audit record (placeholder).
#[derive(Debug)]
pub struct AuditRecord;
/// A user record (placeholder).
#[derive(Debug)]
pub struct UserRecord;
