//! Sending operations and acting on the answers: retries, re-signing, outcomes, and what the
//! answers teach the cache, the pins and the key ring.

use super::cache::Sighting;
use super::ops::{Op, OpKind, PendingCommand, Signed};
use super::{Client, ClientEvent, ClientStats, Dedup, OpError, OpId, Registration};
use crate::directory::{Bundle, CommandBody, CommandError, CommandResult, Outcome, Username};
use crate::ids::{RequestId, UserId};
use crate::replica::protocol::{
    ClientFrame, LookupKey, LookupReply, MailboxReply, Reply, Request, RequestError,
};
use crate::session::{IdentityKeyPair, IdentityPublic, SafetyNumber};
use crate::time::Now;

impl Client {
    /// Sends every due operation, if logged in.
    pub(super) fn pump(&mut self, now: Now) {
        if !self.is_logged_in() {
            return;
        }
        for id in self.ops.due(now.instant) {
            self.send_op(now, id);
        }
    }

    fn send_op(&mut self, now: Now, id: OpId) {
        let margin_ms = u64::try_from(self.config.request_timeout.as_millis()).unwrap_or(u64::MAX);
        let op = self.ops.get_mut(id).expect("a due operation exists");
        let request = match &mut op.kind {
            OpKind::Lookup { key, consistency } => Request::Lookup {
                key: key.clone(),
                consistency: *consistency,
            },
            OpKind::Subscribe { users, .. } => Request::Subscribe(users.clone()),
            OpKind::FetchMailbox { after, max } => Request::FetchMailbox {
                after: *after,
                max: *max,
            },
            OpKind::Deposit(deposit) => {
                let (session, seq) = *deposit.slot.get_or_insert_with(|| {
                    let seq = self.dedup.next_seq();
                    (self.dedup.session, seq)
                });
                Request::Deposit {
                    session,
                    seq,
                    to: deposit.to,
                    message_id: deposit.message_id,
                    envelope: deposit.envelope.clone(),
                }
            }
            OpKind::Command(command) => {
                let (identity, dedup, stats) = (&self.identity, &mut self.dedup, &mut self.stats);
                let signed = prepare(command, identity, dedup, stats, now.unix_ms, margin_ms);
                Request::Command {
                    session: signed.session,
                    seq: signed.seq,
                    command: signed.command,
                }
            }
        };
        let request_id = self.ops.sent(id, now.instant + self.config.request_timeout);
        self.send(&ClientFrame::Request {
            id: request_id,
            request,
        });
    }

    pub(super) fn on_response(
        &mut self,
        now: Now,
        request: RequestId,
        result: Result<Reply, RequestError>,
    ) {
        let Some(id) = self.ops.by_request(request) else {
            self.stats.unknown_responses += 1;
            return;
        };
        let op = self
            .ops
            .get(id)
            .expect("the request index names live operations");
        let fits = match (&op.kind, &result) {
            (_, Err(_))
            | (OpKind::Lookup { .. }, Ok(Reply::Lookup(_)))
            | (OpKind::Subscribe { .. }, Ok(Reply::Subscribed))
            | (OpKind::FetchMailbox { .. }, Ok(Reply::Mailbox(_)))
            | (OpKind::Deposit(_), Ok(Reply::Command(Ok(Outcome::Deposited { .. }) | Err(_)))) => {
                true
            }
            (OpKind::Command(command), Ok(Reply::Command(answer))) => {
                outcome_fits(&command.body, answer)
            }
            _ => false,
        };
        if !fits {
            // A reply of the wrong kind says nothing about our request: leave it in flight, and
            // its deadline moves us to another replica.
            self.stats.mismatched_replies += 1;
            return;
        }
        match result {
            Err(error) => self.on_request_error(now, id, error),
            Ok(Reply::Lookup(reply)) => self.on_looked_up(now, id, reply),
            Ok(Reply::Subscribed) => {
                if let OpKind::Subscribe { renewal: false, .. } = self.ops.remove(id).kind {
                    self.emit(ClientEvent::Done { op: id });
                }
            }
            Ok(Reply::Mailbox(reply)) => self.on_fetched(id, reply),
            Ok(Reply::Command(answer)) if matches!(op.kind, OpKind::Deposit(_)) => {
                self.on_deposit_result(id, answer);
            }
            Ok(Reply::Command(answer)) => self.on_command_result(now, id, answer),
        }
    }

    fn on_fetched(&mut self, id: OpId, reply: MailboxReply) {
        self.ops.remove(id);
        self.emit(ClientEvent::MailboxFetched { op: id, reply });
    }

    /// A deposit's answer: stored, or a definite refusal that stored nothing (a full mailbox is
    /// shown to the sender, never dropped silently: ARCHITECTURE.md, "Mailboxes", rule 3).
    fn on_deposit_result(&mut self, id: OpId, answer: CommandResult) {
        self.ops.remove(id);
        let event = match answer {
            Ok(Outcome::Deposited {
                seq,
                expires_unix_ms,
            }) => ClientEvent::Deposited {
                op: id,
                seq,
                expires_unix_ms,
            },
            Ok(_) => unreachable!("only `Deposited` fits a deposit"),
            Err(error) => ClientEvent::Failed {
                op: id,
                error: OpError::Command(error),
            },
        };
        self.emit(event);
    }

    fn on_request_error(&mut self, now: Now, id: OpId, error: RequestError) {
        let failed = OpError::Request(error.clone());
        match error {
            RequestError::LeaderChanged | RequestError::Timeout => {
                self.attempt_failed(now, id, true, false, failed)
            }
            RequestError::NoLeader | RequestError::Busy | RequestError::ReadFailed => {
                self.attempt_failed(now, id, false, false, failed);
            }
            RequestError::SessionExpired => {
                if let Some(OpKind::Deposit(deposit)) = self.ops.get_mut(id).map(|op| &mut op.kind)
                {
                    // Did not run; a new session starts at 1. Even if an earlier attempt applied,
                    // the re-deposit of the same message id answers its first outcome.
                    self.dedup.renew();
                    deposit.slot = Some((self.dedup.session, self.dedup.next_seq()));
                    return self.attempt_failed(now, id, false, true, failed);
                }
                let Some(command) = self.ops.get_mut(id).and_then(Op::command) else {
                    return self.fail(id, failed);
                };
                // This attempt did not run. The command keeps its signature (an earlier attempt
                // may have applied; the directory's counter check then refuses it as `Replayed`
                // rather than running it twice) and moves to a new session, which starts at 1.
                self.dedup.renew();
                let signed = command
                    .signed
                    .as_mut()
                    .expect("a command in flight is signed");
                signed.session = self.dedup.session;
                signed.seq = self.dedup.next_seq();
                self.attempt_failed(now, id, false, true, failed);
            }
            RequestError::Stale => {
                // An older attempt's response is gone: it may have run.
                if let Some(command) = self.ops.get_mut(id).and_then(Op::command) {
                    command.maybe_applied = true;
                }
                self.fail(id, failed);
            }
            _ => self.fail(id, failed),
        }
    }

    /// An attempt ended without a final answer. `unknown`: it may have applied. `immediate`:
    /// resend at the next chance rather than after a backoff. Fails the operation when its
    /// retries are spent.
    pub(super) fn attempt_failed(
        &mut self,
        now: Now,
        id: OpId,
        unknown: bool,
        immediate: bool,
        error: OpError,
    ) {
        if unknown {
            if let Some(command) = self.ops.get_mut(id).and_then(Op::command) {
                command.maybe_applied = true;
            }
        }
        if self.ops.retry(id, now.instant, immediate, &self.config) {
            self.stats.retries += 1;
        } else {
            self.fail(id, error);
        }
    }

    /// Ends `id` with `error`.
    fn fail(&mut self, id: OpId, error: OpError) {
        match self.ops.remove(id).kind {
            OpKind::Command(command) => {
                let maybe_applied = command.maybe_applied;
                self.settle(id, *command, maybe_applied);
                match &error {
                    OpError::Command(CommandError::AlreadyRegistered) => {
                        self.registration = Registration::Registered
                    }
                    OpError::Command(CommandError::NotRegistered)
                        if self.registration == Registration::Registered =>
                    {
                        // Deregistered elsewhere (another device with this identity).
                        self.registration = Registration::Unregistered;
                    }
                    _ => {}
                }
            }
            OpKind::Subscribe { renewal: true, .. } => return,
            _ => {}
        }
        self.emit(ClientEvent::Failed { op: id, error });
    }

    /// Keeps or drops the private keys a finished command published: kept if it applied or may
    /// have (a peer may claim them), dropped if the directory definitely refused it.
    fn settle(&mut self, id: OpId, command: PendingCommand, applied: bool) {
        if self.registration == Registration::Pending(id) {
            self.registration = Registration::Unregistered;
        }
        if applied {
            if let Some(pair) = command.signed_prekey {
                self.keys.install_signed(pair);
            }
        } else {
            self.keys.discard(&command.one_time);
        }
    }

    fn on_command_result(&mut self, now: Now, id: OpId, answer: CommandResult) {
        let error = match answer {
            Ok(outcome) => return self.on_applied(id, outcome),
            Err(error) => error,
        };
        if let CommandError::Replayed { last, .. } = error {
            self.dedup.counter = self.dedup.counter.max(last);
        }
        let command = self
            .ops
            .get_mut(id)
            .and_then(Op::command)
            .expect("a command answered");
        if matches!(
            error,
            CommandError::Replayed { .. } | CommandError::Expired { .. }
        ) && !command.maybe_applied
        {
            // Nothing of this operation ran, and this signature never will: sign it again under
            // the next counter, in a fresh slot (the de-duplication table recorded this refusal
            // under the old one).
            command.signed = None;
            self.stats.resigned += 1;
            self.attempt_failed(now, id, false, true, OpError::Command(error));
        } else {
            self.fail(id, OpError::Command(error));
        }
    }

    fn on_applied(&mut self, id: OpId, outcome: Outcome) {
        let OpKind::Command(command) = self.ops.remove(id).kind else {
            unreachable!("on_command_result is called for commands only");
        };
        let body = command.body.clone();
        self.settle(id, *command, true);
        let event = match (body, outcome) {
            (
                CommandBody::Register { username, .. },
                Outcome::Registered {
                    user,
                    registered_unix_ms,
                },
            ) => {
                self.registration = Registration::Registered;
                if let Ok(name) = Username::parse(&username) {
                    self.see_key(&name, *self.identity.public());
                }
                ClientEvent::Registered {
                    op: id,
                    user,
                    registered_unix_ms,
                }
            }
            (CommandBody::ClaimBundle { target }, Outcome::Bundle { bundle, pool_empty }) => {
                match self.check_bundle(target, &bundle) {
                    Ok(()) => ClientEvent::BundleClaimed {
                        op: id,
                        bundle,
                        pool_empty,
                    },
                    Err(error) => ClientEvent::Failed { op: id, error },
                }
            }
            (CommandBody::Deregister, _) => {
                self.registration = Registration::Unregistered;
                self.keys.clear();
                ClientEvent::Done { op: id }
            }
            (CommandBody::AckMailbox { upto }, Outcome::Acked { removed }) => {
                ClientEvent::MailboxAcked {
                    op: id,
                    upto,
                    removed,
                }
            }
            _ => ClientEvent::Done { op: id },
        };
        self.emit(event);
    }

    /// A claimed bundle is used only if it is the target's, its signed prekey verifies under
    /// its identity key (X3DH §3.3), and that key is the pinned one, if the client knows a name
    /// for the target.
    fn check_bundle(&mut self, target: UserId, bundle: &Bundle) -> Result<(), OpError> {
        if bundle.identity.user_id() != target {
            return Err(OpError::BundleForWrongUser);
        }
        bundle
            .to_prekey_bundle()
            .verify()
            .map_err(OpError::BadBundle)?;
        let name = (self.pins.name_of(target))
            .or_else(|| self.cache.by_user(target).map(|view| &view.username))
            .cloned();
        match name {
            Some(name) if !self.see_key(&name, bundle.identity) => Err(OpError::KeyNotTrusted),
            _ => Ok(()),
        }
    }

    fn on_looked_up(&mut self, now: Now, id: OpId, reply: LookupReply) {
        let OpKind::Lookup { key, .. } = self.ops.remove(id).kind else {
            unreachable!("a lookup reply fits only a lookup");
        };
        match &reply.user {
            Some(view) => {
                if view.user == self.user() {
                    // Our own record: resume above its counter (a client that lost its state
                    // would otherwise be `Replayed` once per lost command).
                    self.dedup.counter = self.dedup.counter.max(view.counter);
                    if self.registration == Registration::Unregistered {
                        self.registration = Registration::Registered;
                    }
                }
                self.see_key(&view.username, view.identity);
                if self.cache.insert(view.clone(), now.instant) {
                    self.stats.cache_evictions += 1;
                }
            }
            None => {
                if let LookupKey::Name(raw) = &key {
                    if let Ok(name) = Username::parse(raw) {
                        self.cache.remove(&name);
                    }
                }
            }
        }
        self.emit(ClientEvent::LookedUp { op: id, reply });
    }

    /// Checks `key` against the pin of `name` (pinning it if new); raises `KeyChanged` and
    /// returns `false` if it differs.
    fn see_key(&mut self, name: &Username, key: IdentityPublic) -> bool {
        match self.pins.see(name, key) {
            Sighting::Trusted => true,
            Sighting::Refused => {
                self.stats.pins_refused += 1;
                true
            }
            Sighting::Changed { old } => {
                let safety_number = SafetyNumber::of(self.identity.public(), &key);
                self.emit(ClientEvent::KeyChanged {
                    username: name.clone(),
                    old,
                    new: key,
                    safety_number,
                });
                false
            }
        }
    }

    /// Subscriptions belong to a connection: a new login renews the last one asked for, unless
    /// a subscription is queued anyway (or the queue is full: the application's next
    /// `subscribe` restores it).
    pub(super) fn renew_subscription(&mut self) {
        if self.subscription.is_empty()
            || self.ops.has_subscribe()
            || self.ops.len() >= self.config.queue_max
        {
            return;
        }
        let users = self.subscription.clone();
        self.ops.push(OpKind::Subscribe {
            users,
            renewal: true,
        });
    }
}

/// The signed form to send: signed at the first send; re-signed in the same slot when it nears
/// its expiry and no attempt can have applied.
fn prepare(
    command: &mut PendingCommand,
    identity: &IdentityKeyPair,
    dedup: &mut Dedup,
    stats: &mut ClientStats,
    unix_ms: u64,
    margin_ms: u64,
) -> Signed {
    match &mut command.signed {
        None => {
            let signed = dedup.sign(identity, unix_ms, command.body.clone());
            command.signed = Some(dedup.slot(signed));
        }
        Some(slot)
            if !command.maybe_applied
                && unix_ms.saturating_add(margin_ms) >= slot.command.expires_unix_ms =>
        {
            // Every attempt in this slot was refused before it ran (`NoLeader`, `Busy`,
            // `SessionExpired`), so the de-duplication table holds nothing under it and the slot
            // may carry the new signature. Keeping it also keeps a session that never recorded
            // anything starting at seq 1.
            slot.command = dedup.sign(identity, unix_ms, command.body.clone());
            stats.resigned += 1;
        }
        Some(_) => {}
    }
    command.signed.clone().expect("signed above")
}

/// Whether a command answer is of the kind its body produces.
fn outcome_fits(body: &CommandBody, answer: &CommandResult) -> bool {
    match answer {
        Err(_) => true,
        Ok(Outcome::Registered { .. }) => matches!(body, CommandBody::Register { .. }),
        Ok(Outcome::Bundle { .. }) => matches!(body, CommandBody::ClaimBundle { .. }),
        Ok(Outcome::Done) => !matches!(
            body,
            CommandBody::Register { .. }
                | CommandBody::ClaimBundle { .. }
                | CommandBody::AckMailbox { .. }
        ),
        Ok(Outcome::Acked { .. }) => matches!(body, CommandBody::AckMailbox { .. }),
        // Deposits are not signed commands (their answers are matched in `on_response`).
        Ok(Outcome::Presence { .. } | Outcome::Deposited { .. }) => false,
    }
}
