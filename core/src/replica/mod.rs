//! The composed replica: a `RaftNode` driving the directory, presence and the client protocol.

pub mod protocol;
