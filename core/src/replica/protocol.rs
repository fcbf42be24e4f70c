//! The client protocol (client ↔ any replica) and the peer protocol (replica ↔ replica): versioned
//! postcard frames. postcard is not self-describing, so each frame starts with a version byte and
//! a decoder refuses what it does not know (ARCHITECTURE.md, "Versioned formats").

use crate::directory::command::DEPOSIT_OVERHEAD_BYTES_MAX;
use crate::directory::mailbox::{ENVELOPE_BYTES_MAX, MAILBOX_MESSAGE_OVERHEAD_BYTES_MAX};
use crate::directory::{
    CommandResult, MailboxPage, Presence, SignedCommand, UserView, UsernameError,
};
use crate::ids::{LogIndex, MailboxSeq, MessageId, NodeId, RequestId, UserId};
use crate::raft::message::Envelope;
use crate::session::IdentityKeyPair;
use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

/// Version byte of client frames (both directions).
pub const CLIENT_PROTOCOL_VERSION: u8 = 1;
/// Version byte of peer frames. The Raft envelope inside keeps its own version (`WIRE_VERSION`).
pub const PEER_PROTOCOL_VERSION: u8 = 1;
/// The largest client frame a replica accepts or sends: a registration with a full prekey pool is
/// under 5 KiB; a lookup reply under 1 KiB.
pub const CLIENT_FRAME_BYTES_MAX: usize = 16 * 1024;
/// Domain separation of the login signature.
pub const LOGIN_DOMAIN: &[u8] = b"Paloma login v1\0";
/// The most envelopes one mailbox fetch returns.
pub const FETCH_MESSAGES_MAX: u32 = 64;
/// Room in a client frame for everything of a fetch reply but its messages: version, frame tag,
/// varint request id, result and reply tags, the message count, `more`, the index (generous).
const FETCH_REPLY_OVERHEAD_BYTES_MAX: usize = 64;
/// Encoded bytes of the messages one fetch reply carries at most (beyond the first, which always
/// fits): what is left of a client frame.
pub const FETCH_REPLY_BYTES_MAX: usize = CLIENT_FRAME_BYTES_MAX - FETCH_REPLY_OVERHEAD_BYTES_MAX;
// The largest envelope fits in a fetch reply...
const _: () =
    assert!(MAILBOX_MESSAGE_OVERHEAD_BYTES_MAX + ENVELOPE_BYTES_MAX <= FETCH_REPLY_BYTES_MAX);
// ...and in a deposit request (frame version and tag, request id, request tag, session, seq: 33
// bytes at most besides the deposit's own fields).
const _: () =
    assert!(33 + DEPOSIT_OVERHEAD_BYTES_MAX + ENVELOPE_BYTES_MAX <= CLIENT_FRAME_BYTES_MAX);

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable: served after a ReadIndex round (Raft thesis §6.4).
    Linearizable,
    /// Served from this replica's applied state at once; the reply says it may be stale.
    Local,
}

/// Whom to look up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupKey {
    /// By username (validated and case-folded by the replica).
    Name(String),
    /// By user id.
    Id(UserId),
}

/// A request, answered by exactly one [`ReplicaFrame::Response`] with the same id.
// Frames are decoded, handled and dropped one at a time: boxing the large variant would add an
// allocation per frame and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A signed directory command. `(session, seq)` de-duplicates retries (thesis §6.3): a session
    /// starts at `seq` 1 and a retry reuses its `seq`; the replica scopes `session` to the
    /// logged-in user, so no one can disturb another user's retries.
    Command {
        /// The client's de-duplication session, chosen at random by the client.
        session: u64,
        /// The request's sequence number in the session.
        seq: u64,
        /// The command; its signer must be the logged-in user.
        command: SignedCommand,
    },
    /// Look a user up.
    Lookup {
        /// Whom.
        key: LookupKey,
        /// How fresh.
        consistency: Consistency,
    },
    /// Push presence changes of these users to this connection (replaces the previous set).
    Subscribe(Vec<UserId>),
    /// Deposit an envelope in `to`'s mailbox (ARCHITECTURE.md, "Mailboxes", rule 3). Proposed through the leader like
    /// a command and de-duplicated by the same `(session, seq)`; answered by `Reply::Command`
    /// with `Outcome::Deposited` once committed and applied, or a typed refusal
    /// (`MailboxFull`, `UnknownUser`, ...). The depositor is the logged-in user, and nothing of
    /// them enters the replicated entry. (Mailbox requests appended last: the variant index is
    /// part of the encoding.)
    Deposit {
        /// The client's de-duplication session (as for `Command`).
        session: u64,
        /// The request's sequence number in the session.
        seq: u64,
        /// The recipient.
        to: UserId,
        /// The sender's id for the message (a mailbox holds one envelope per id).
        message_id: MessageId,
        /// The ciphertext, at most `ENVELOPE_BYTES_MAX` bytes.
        envelope: Vec<u8>,
    },
    /// Read the logged-in user's own mailbox after `after`: at most `max` envelopes (and at most
    /// [`FETCH_MESSAGES_MAX`], and what fits in one frame). Linearizable (a ReadIndex round):
    /// every deposit acknowledged before the request is seen. Acknowledging is a signed
    /// `Command` (`CommandBody::AckMailbox`), like every other change of a user's state.
    FetchMailbox {
        /// The cursor: envelopes with a higher seq.
        after: MailboxSeq,
        /// The most envelopes wanted.
        max: u32,
    },
}

/// A client → replica frame.
// Frames are decoded, handled and dropped one at a time: boxing the large variant would add an
// allocation per frame and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Proves the identity key by signing the replica's challenge ([`login_message`]).
    Login {
        /// The Ed25519 identity key.
        signer: [u8; 32],
        /// The signature over [`login_message`].
        #[serde(with = "crate::directory::command::sig_bytes")]
        signature: [u8; 64],
    },
    /// A request.
    Request {
        /// Echoed in the response.
        id: RequestId,
        /// What.
        request: Request,
    },
    /// Keeps the user's presence lease on this replica alive.
    Heartbeat,
}

/// A lookup's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReply {
    /// The user, if they exist.
    pub user: Option<UserView>,
    /// Their presence, if the subject's visibility lets the asker see it.
    pub presence: Option<Presence>,
    /// The replica's applied index the answer reflects.
    pub index: LogIndex,
    /// `true` for a `Local` read: a later write may not be reflected.
    pub possibly_stale: bool,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The directory's answer to a command (a refusal is an `Err` inside, and changed nothing).
    Command(CommandResult),
    /// A lookup's answer.
    Lookup(LookupReply),
    /// The subscription was replaced; the current presence of each visible subject follows as
    /// pushes.
    Subscribed,
    /// A page of the logged-in user's mailbox. (Appended last.)
    Mailbox(MailboxReply),
}

/// A mailbox fetch's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxReply {
    /// The envelopes and whether more follow.
    pub page: MailboxPage,
    /// The replica's applied index the answer reflects.
    pub index: LogIndex,
}

/// Why a request failed. Variants marked *outcome unknown* may have been applied: retry with the
/// same `(session, seq)` and de-duplication answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    /// The connection has not logged in.
    #[error("log in first")]
    NotLoggedIn,
    /// The command's signer is not the logged-in user.
    #[error("the command is signed by another user than the one logged in")]
    WrongSigner,
    /// An invalid username (nothing was proposed).
    #[error("invalid username: {0}")]
    InvalidUsername(UsernameError),
    /// The request is larger than the replica accepts.
    #[error("the request is too large")]
    TooLarge,
    /// The replica has too many requests pending; retry later.
    #[error("the replica is busy; retry later")]
    Busy,
    /// No leader is known (an election is under way, or this replica is cut off); nothing was
    /// proposed. Retry later or on another replica.
    #[error("no leader is known; retry later")]
    NoLeader,
    /// Leadership changed while the request was in flight. *Outcome unknown.*
    #[error(
        "the leader changed while the request was in flight; retry with the same sequence number"
    )]
    LeaderChanged,
    /// The request did not finish in time. *Outcome unknown* for commands.
    #[error("the request timed out; retry with the same sequence number")]
    Timeout,
    /// The de-duplication session expired (or did not start at 1): the command did not run.
    #[error("the de-duplication session expired; start a new one")]
    SessionExpired,
    /// A retry of an older command whose response is gone: it did not run again.
    #[error("a retry of an old command; its response is gone")]
    Stale,
    /// A linearizable read could not be served (leadership lost); retry.
    #[error("the read could not be confirmed; retry")]
    ReadFailed,
    /// More subscriptions than a connection may hold.
    #[error("at most {max} subscriptions per connection")]
    TooManySubscriptions {
        /// The bound.
        max: usize,
    },
}

/// A replica → client frame.
// Frames are decoded, handled and dropped one at a time: boxing the large variant would add an
// allocation per frame and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaFrame {
    /// Sent on connect: sign it to log in.
    Challenge {
        /// Fresh random bytes from the replica's seed.
        nonce: [u8; 32],
        /// The replica, also covered by the signature.
        replica: NodeId,
    },
    /// The login succeeded: the connection is bound to this user until it closes.
    LoggedIn {
        /// The user.
        user: UserId,
    },
    /// The login signature did not verify; the connection stays logged out.
    LoginFailed,
    /// The answer to request `id`.
    Response {
        /// The request.
        id: RequestId,
        /// The answer.
        result: Result<Reply, RequestError>,
    },
    /// A subscribed user's presence changed (or is being reported after a subscription).
    PresencePush {
        /// Whose.
        user: UserId,
        /// The new presence.
        presence: Presence,
    },
    /// A frame from the client did not decode; it was dropped and counted.
    Malformed,
    /// Deposits applied to the logged-in user's mailbox (ARCHITECTURE.md, "Mailboxes", rule 4: the owner drains
    /// without polling). At most one per connection per batch of applied entries, however many
    /// deposits the batch held, so a burst costs one frame; `last_seq` is the mailbox's last
    /// seq when it was sent: fetch after the cursor until `more` is false. A hint only: a lost
    /// push is made up by the fetch every client does on login. (Appended last: the variant
    /// index is part of the encoding, so older clients count it as malformed and carry on.)
    MailboxChanged {
        /// The mailbox's last seq.
        last_seq: MailboxSeq,
    },
}

/// The bytes a login signature covers: domain ‖ nonce ‖ replica id (little-endian), so a
/// signature for one replica's challenge cannot log in elsewhere.
#[must_use]
pub fn login_message(nonce: &[u8; 32], replica: NodeId) -> Vec<u8> {
    [LOGIN_DOMAIN, nonce, &replica.0.to_le_bytes()].concat()
}

/// Signs a challenge: the client side of login.
#[must_use]
pub fn login(identity: &IdentityKeyPair, nonce: &[u8; 32], replica: NodeId) -> ClientFrame {
    ClientFrame::Login {
        signer: identity.public().signing_key,
        signature: identity.sign(&login_message(nonce, replica)),
    }
}

/// Verifies a login: the user it proves, or `None`.
#[must_use]
pub fn verify_login(
    signer: &[u8; 32],
    signature: &[u8; 64],
    nonce: &[u8; 32],
    replica: NodeId,
) -> Option<UserId> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(signer).ok()?;
    key.verify_strict(
        &login_message(nonce, replica),
        &Signature::from_bytes(signature),
    )
    .ok()?;
    Some(UserId::from_signing_key(signer))
}

/// Why a frame did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Larger than the limit.
    #[error("frame of {len} bytes exceeds {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Empty.
    #[error("empty frame")]
    Empty,
    /// Unknown version.
    #[error("unknown protocol version {0}")]
    Version(u8),
    /// The body does not decode (or has trailing bytes).
    #[error("frame does not decode")]
    Malformed,
}

fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    postcard::to_io(value, &mut out).expect("encoding to a Vec cannot fail");
    out
}

fn decode_versioned<'a, T: Deserialize<'a>>(
    version: u8,
    bytes: &'a [u8],
    max: usize,
) -> Result<T, FrameError> {
    if bytes.len() > max {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    match bytes.split_first() {
        None => Err(FrameError::Empty),
        Some((&v, rest)) if v == version => {
            let (value, tail) =
                postcard::take_from_bytes(rest).map_err(|_| FrameError::Malformed)?;
            if tail.is_empty() {
                Ok(value)
            } else {
                Err(FrameError::Malformed)
            }
        }
        Some((&v, _)) => Err(FrameError::Version(v)),
    }
}

impl ClientFrame {
    /// Versioned encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(CLIENT_PROTOCOL_VERSION, self)
    }

    /// Decodes [`ClientFrame::encode`], refusing frames over [`CLIENT_FRAME_BYTES_MAX`].
    pub fn decode(bytes: &[u8]) -> Result<ClientFrame, FrameError> {
        decode_versioned(CLIENT_PROTOCOL_VERSION, bytes, CLIENT_FRAME_BYTES_MAX)
    }
}

impl ReplicaFrame {
    /// Versioned encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(CLIENT_PROTOCOL_VERSION, self)
    }

    /// Decodes [`ReplicaFrame::encode`].
    pub fn decode(bytes: &[u8]) -> Result<ReplicaFrame, FrameError> {
        decode_versioned(CLIENT_PROTOCOL_VERSION, bytes, CLIENT_FRAME_BYTES_MAX)
    }
}

/// A forwarded command's answer from the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardResult {
    /// Applied: the directory's encoded response (`directory::command::encode_result`).
    Applied(Vec<u8>),
    /// Not applied, or outcome unknown: the error to give the client.
    Failed(RequestError),
}

/// A replica → replica frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// A Raft message (its own versioned encoding inside).
    Raft(Vec<u8>),
    /// A client's command, forwarded to the replica believed to lead.
    Forward {
        /// The forwarding replica's token for the request.
        token: u64,
        /// The de-duplication client id (already scoped to the user by the forwarding replica).
        client: u64,
        /// The sequence number.
        seq: u64,
        /// The encoded `DirectoryEntry`.
        entry: Vec<u8>,
    },
    /// The leader's answer to a `Forward`.
    ForwardReply {
        /// The forwarding replica's token.
        token: u64,
        /// The answer.
        result: ForwardResult,
    },
    /// A replica's view of who is connected to it (presence, `presence.rs`). `full` replaces the
    /// leader's view of this replica; otherwise `online`/`offline` are changes since the last
    /// report.
    Presence {
        /// The replacing kind of report.
        full: bool,
        /// The report's number; the leader ignores reports older than the last it took.
        number: u64,
        /// Users with a live lease here.
        online: Vec<UserId>,
        /// Users whose lease here ended, with the wall time they were last heard from.
        offline: Vec<(UserId, u64)>,
    },
    /// The leader asks for a full presence report (it is new, or it lost track).
    PresenceResync,
}

/// The largest peer frame (a Raft append of a full batch, a full presence report chunk).
pub const PEER_FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

impl PeerFrame {
    /// Wraps a Raft envelope.
    #[must_use]
    pub fn raft(envelope: &Envelope) -> PeerFrame {
        PeerFrame::Raft(envelope.encode())
    }

    /// Versioned encoding.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(PEER_PROTOCOL_VERSION, self)
    }

    /// Decodes [`PeerFrame::encode`].
    pub fn decode(bytes: &[u8]) -> Result<PeerFrame, FrameError> {
        decode_versioned(PEER_PROTOCOL_VERSION, bytes, PEER_FRAME_BYTES_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Entropy;

    struct Counter(u8);
    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_add(3);
                *b = self.0;
            }
        }
    }

    #[test]
    fn login_binds_nonce_and_replica() {
        let id = IdentityKeyPair::generate(&mut Counter(1));
        let nonce = [9u8; 32];
        let ClientFrame::Login { signer, signature } = login(&id, &nonce, NodeId(2)) else {
            panic!("login builds a Login frame");
        };
        assert_eq!(
            verify_login(&signer, &signature, &nonce, NodeId(2)),
            Some(id.user_id())
        );
        assert_eq!(verify_login(&signer, &signature, &nonce, NodeId(3)), None);
        assert_eq!(
            verify_login(&signer, &signature, &[8u8; 32], NodeId(2)),
            None
        );
    }

    #[test]
    fn frames_round_trip_and_refuse_the_unknown() {
        let frame = ClientFrame::Request {
            id: RequestId(4),
            request: Request::Lookup {
                key: LookupKey::Name("alice".into()),
                consistency: Consistency::Linearizable,
            },
        };
        let bytes = frame.encode();
        assert_eq!(ClientFrame::decode(&bytes), Ok(frame));
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert_eq!(ClientFrame::decode(&bad), Err(FrameError::Version(2)));
        assert_eq!(ClientFrame::decode(&[]), Err(FrameError::Empty));
        let mut long = bytes;
        long.push(1);
        assert_eq!(ClientFrame::decode(&long), Err(FrameError::Malformed));
        let huge = vec![CLIENT_PROTOCOL_VERSION; CLIENT_FRAME_BYTES_MAX + 1];
        assert!(matches!(
            ClientFrame::decode(&huge),
            Err(FrameError::TooLarge { .. })
        ));
        let peer = PeerFrame::Presence {
            full: true,
            number: 3,
            online: vec![UserId([1; 32])],
            offline: vec![(UserId([2; 32]), 77)],
        };
        assert_eq!(PeerFrame::decode(&peer.encode()), Ok(peer));
    }
}
