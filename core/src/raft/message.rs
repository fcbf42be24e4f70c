//! Raft's wire messages and their versioned codec.
//!
//! A frame is one version byte followed by a postcard-encoded [`Envelope`]; postcard is not
//! self-describing, so the version byte is what lets a rolling upgrade read the previous format
//! (ARCHITECTURE.md, "Versioned formats"). Decoding never panics: malformed input is a typed error that the caller
//! counts and drops.

use crate::ids::{LogId, LogIndex, NodeId, ReadId, Term};
use crate::raft::types::{Entry, SnapshotMeta};
use serde::{Deserialize, Serialize};

/// The wire format version of Raft frames. Version 2: `Membership` carries the
/// `ReplicatedSettings`; a version-1 frame is refused as `DecodeError::Version(1)` (no release
/// ever spoke version 1).
pub const WIRE_VERSION: u8 = 2;

/// One Raft message between two replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender.
    pub from: NodeId,
    /// The addressee.
    pub to: NodeId,
    /// The sender's term (for `PreVote`, the term it would campaign in).
    pub term: Term,
    /// The message itself.
    pub body: Body,
}

/// The message kinds (Raft Figure 2, plus pre-vote (thesis §9.6), ReadIndex (§6.4), chunked
/// snapshots (§5 / Figure 13) and leadership transfer (§3.10)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// "Would you vote for me?" without changing anyone's term (thesis §9.6).
    PreVote(VoteRequest),
    /// Answer to `PreVote`.
    PreVoteResp(VoteResponse),
    /// RequestVote (Raft §5.2).
    Vote(VoteRequest),
    /// Answer to `Vote`.
    VoteResp(VoteResponse),
    /// AppendEntries carrying entries (Raft §5.3).
    Append(AppendRequest),
    /// Answer to `Append`.
    AppendResp(AppendResponse),
    /// Empty AppendEntries: liveness, commit propagation and ReadIndex rounds.
    Heartbeat(HeartbeatRequest),
    /// Answer to `Heartbeat`.
    HeartbeatResp(HeartbeatResponse),
    /// One chunk of InstallSnapshot.
    Snapshot(SnapshotChunk),
    /// Answer to a snapshot chunk: where to resume, or that it is installed.
    SnapshotResp(SnapshotAck),
    /// Leadership transfer: campaign now, skipping pre-vote (thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its caller (thesis §6.4).
    ReadIndex(ReadId),
    /// The leader's answer: the index to wait for, or `None` if it cannot serve reads now.
    ReadIndexResp(ReadId, Option<LogIndex>),
    /// The answer to a (pre-)vote from a node outside the sender's committed configuration
    /// entry `config`, an entry the candidate's log cannot hold: you were removed (thesis §4.2.2).
    /// Appended last so earlier variants keep their tags.
    Removed {
        /// The committed configuration entry that leaves the candidate out.
        config: LogId,
    },
}

/// One line per message for traces (the simulators' `PALOMA_TRACE` output and `paloma-sim watch`),
/// e.g. `Append prev=4@2 n=3 commit=4`: the fields that explain a run, never the payloads.
impl std::fmt::Display for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::PreVote(r) => write!(f, "PreVote last={:?}", r.last_log),
            Body::PreVoteResp(r) => write!(f, "PreVoteResp granted={}", r.granted),
            Body::Vote(r) => write!(
                f,
                "Vote last={:?}{}",
                r.last_log,
                if r.transfer { " transfer" } else { "" }
            ),
            Body::VoteResp(r) => write!(f, "VoteResp granted={}", r.granted),
            Body::Append(a) => write!(
                f,
                "Append prev={:?} n={} commit={}",
                a.prev,
                a.entries.len(),
                a.commit.0
            ),
            Body::AppendResp(AppendResponse::Accepted { match_index }) => {
                write!(f, "AppendResp ok match={}", match_index.0)
            }
            Body::AppendResp(AppendResponse::Rejected { rejected, hint }) => {
                write!(f, "AppendResp reject at={} hint={hint:?}", rejected.0)
            }
            Body::Heartbeat(h) => write!(f, "Heartbeat commit={} round={}", h.commit.0, h.round),
            Body::HeartbeatResp(h) => {
                write!(f, "HeartbeatResp round={} last={}", h.round, h.last_index.0)
            }
            Body::Snapshot(c) => write!(
                f,
                "Snapshot last={:?} offset={} len={} total={}",
                c.meta.last,
                c.offset,
                c.data.len(),
                c.total
            ),
            Body::SnapshotResp(a) => write!(
                f,
                "SnapshotResp last={:?} next={} done={}",
                a.last, a.next_offset, a.done
            ),
            Body::TimeoutNow => f.write_str("TimeoutNow"),
            Body::ReadIndex(id) => write!(f, "ReadIndex {id}"),
            Body::ReadIndexResp(id, idx) => write!(f, "ReadIndexResp {id} {idx:?}"),
            Body::Removed { config } => write!(f, "Removed config={config:?}"),
        }
    }
}

/// A (pre-)vote request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The candidate's last log entry (Raft §5.4.1 up-to-date check).
    pub last_log: LogId,
    /// Set by a transfer target: voters ignore leader stickiness for it (thesis §3.10).
    pub transfer: bool,
}

/// A (pre-)vote answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// Whether the vote is granted.
    pub granted: bool,
}

/// AppendEntries with entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    /// The entry just before `entries`.
    pub prev: LogId,
    /// Consecutive entries starting at `prev.index + 1`.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub commit: LogIndex,
}

/// The answer to AppendEntries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResponse {
    /// The follower's log matches the leader's up to `match_index`.
    Accepted {
        /// The last index known to match.
        match_index: LogIndex,
    },
    /// `prev` did not match. `hint` is the follower's best guess of a matching point: its last
    /// entry, or the last entry at or before `prev` whose term is at most `prev.term`, so the leader
    /// can skip a whole divergent term per round trip (fast back-tracking, Raft §5.3 end).
    Rejected {
        /// The `prev.index` that was rejected (stale rejections are ignored by the leader).
        rejected: LogIndex,
        /// The follower's hint.
        hint: LogId,
    },
}

/// A heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// `min(leader commit, follower match)`: never past what the follower is known to hold.
    pub commit: LogIndex,
    /// The leader's heartbeat round, echoed back; ReadIndex and leases count acknowledgements by it.
    pub round: u64,
}

/// A heartbeat answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The round being acknowledged.
    pub round: u64,
    /// The follower's last log index, so the leader notices a lagging follower.
    pub last_index: LogIndex,
}

/// One chunk of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The snapshot being sent; a different `meta` restarts the transfer.
    pub meta: SnapshotMeta,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    /// Total snapshot size in bytes.
    pub total: u64,
    /// The chunk.
    pub data: Vec<u8>,
}

/// The answer to a snapshot chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAck {
    /// The snapshot's last index.
    pub last: LogId,
    /// How many bytes the follower holds: the offset of the next chunk to send.
    pub next_offset: u64,
    /// The snapshot is installed (or the follower already had everything it covers).
    pub done: bool,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is empty.
    #[error("empty frame")]
    Empty,
    /// The frame is larger than the configured limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Unknown wire version.
    #[error("unknown wire version {0}")]
    Version(u8),
    /// The body did not decode.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// Bytes follow the envelope.
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
}

impl Envelope {
    /// Encodes the envelope as a versioned frame.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        postcard::to_io(self, &mut out).expect("encoding to a Vec cannot fail");
        out
    }

    /// Decodes a versioned frame of at most `frame_bytes_max` bytes.
    pub fn decode(frame: &[u8], frame_bytes_max: usize) -> Result<Envelope, DecodeError> {
        if frame.len() > frame_bytes_max {
            return Err(DecodeError::TooLarge {
                len: frame.len(),
                max: frame_bytes_max,
            });
        }
        let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
        if version != WIRE_VERSION {
            return Err(DecodeError::Version(version));
        }
        let (env, rest) = postcard::take_from_bytes::<Envelope>(body)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Payload;

    #[test]
    fn round_trip_and_rejects() {
        let env = Envelope {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: Body::Append(AppendRequest {
                prev: LogId::new(Term(2), LogIndex(4)),
                entries: vec![Entry {
                    id: LogId::new(Term(3), LogIndex(5)),
                    unix_ms: 9,
                    payload: Payload::Noop,
                }],
                commit: LogIndex(4),
            }),
        };
        let bytes = env.encode();
        assert_eq!(Envelope::decode(&bytes, 1 << 20).unwrap(), env);
        assert_eq!(Envelope::decode(&[], 10), Err(DecodeError::Empty));
        assert!(matches!(
            Envelope::decode(&bytes, 3),
            Err(DecodeError::TooLarge { .. })
        ));
        // Version 1 (before the configuration carried `ReplicatedSettings`) and unknown versions
        // fail clearly.
        for version in [1, WIRE_VERSION + 1] {
            let mut other = bytes.clone();
            other[0] = version;
            assert_eq!(
                Envelope::decode(&other, 1 << 20),
                Err(DecodeError::Version(version))
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            Envelope::decode(&trailing, 1 << 20),
            Err(DecodeError::TrailingBytes(1))
        );
        for cut in 1..bytes.len() {
            assert!(Envelope::decode(&bytes[..cut], 1 << 20).is_err());
        }
    }
}
