//! The client workload: a few clients run puts, compare-and-sets and ReadIndex reads against the
//! replicas, retrying elsewhere on refusal, and record every operation in the history that the
//! linearizability checker reads.

use super::{Ev, Sim};
use crate::history::{KvOp, OpId};
use crate::kv::decode_response;
use crate::workload::{OpGen, Workload};
use paloma_core::raft::check::Violation;
use paloma_core::raft::io::{DropReason, Event, Proposal};
use paloma_core::raft::ProposeError;
use paloma_core::{ClientId, NodeId, ReadId};
use std::time::Duration;

#[derive(Debug)]
pub(super) struct Client {
    pub id: ClientId,
    /// The shared operation generator (`crate::workload`): sequence numbers and values.
    pub gen: OpGen,
    pub target: NodeId,
    pub pending: Option<(OpId, Attempt)>,
    pub generation: u64,
    pub kind: ClientKind,
}

/// What a client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientKind {
    /// The random workload.
    Workload,
    /// While a lease attack probes: reads only, pinned to the old leader.
    ProbeReader,
    /// While a lease attack probes: writes only, never at the old leader.
    ProbeWriter,
}

#[derive(Debug, Clone)]
pub(super) enum Attempt {
    Write { seq: u64, cmd: Vec<u8> },
    Read { read: ReadId, key: u8 },
}

impl Sim {
    pub(super) fn schedule_client(&mut self, c: usize, at: u64) {
        self.clients[c].generation += 1;
        let generation = self.clients[c].generation;
        self.schedule(
            at,
            Ev::Client {
                client: c,
                generation,
            },
        );
    }

    pub(super) fn client_act(&mut self, c: usize) -> Result<(), Violation> {
        if self.clients[c].pending.is_none() {
            let idle = match self.clients[c].kind {
                ClientKind::Workload => self.workload_paused,
                ClientKind::ProbeReader | ClientKind::ProbeWriter => !self.probing(),
            };
            if !self.workload || idle {
                return Ok(());
            }
            self.new_op(c);
        }
        self.attempt(c)
    }

    fn new_op(&mut self, c: usize) {
        let read_percent = match self.clients[c].kind {
            ClientKind::Workload => self.cfg.read_pct,
            ClientKind::ProbeReader => 100,
            ClientKind::ProbeWriter => 0,
        };
        // The operation mix both simulators share (`crate::workload`); a third of the writes are
        // compare-and-sets.
        let workload = Workload {
            clients: self.cfg.clients as u64,
            keys: self.cfg.keys,
            read_percent,
            cas_percent: (100 - read_percent) / 3,
            think: Duration::ZERO..Duration::ZERO,
        };
        let rng = &mut self.client_rng;
        let client = &mut self.clients[c];
        let op = client.gen.next(&workload, &mut |n| rng.below(n));
        let attempt = match op.write {
            None => {
                self.next_read += 1;
                let KvOp::Get { key } = op.op else {
                    unreachable!("a read is a get")
                };
                Attempt::Read {
                    read: ReadId(self.next_read),
                    key,
                }
            }
            Some((seq, cmd)) => Attempt::Write {
                seq,
                cmd: cmd.encode(),
            },
        };
        let id = self.history.invoke(client.id.0, op.op, self.now);
        self.clients[c].pending = Some((id, attempt));
    }

    /// Tries the pending operation on the client's current target; on refusal, picks another
    /// replica and backs off; otherwise waits for the outcome with a timeout.
    fn attempt(&mut self, c: usize) -> Result<(), Violation> {
        let target = self.clients[c].target;
        let generation = self.clients[c].generation;
        let (_, attempt) = self.clients[c].pending.clone().expect("pending");
        if self.nodes[&target].raft.is_none() {
            return self.retry_elsewhere(c, None);
        }
        let client_id = self.clients[c].id;
        let outcome = match attempt {
            Attempt::Write { seq, cmd } => self.with_node(target, |n, now, unix_ms| {
                match n.propose(now, unix_ms, client_id, seq, cmd) {
                    Ok(_) => Ok(()),
                    Err(ProposeError::NotLeader { leader }) => Err(leader),
                    Err(_) => Err(None),
                }
            })?,
            Attempt::Read { read, .. } => {
                // A fresh read id per attempt: an answer to an older attempt must not count.
                self.next_read += 1;
                let new_read = ReadId(self.next_read);
                if let Some((_, Attempt::Read { read: r, .. })) = &mut self.clients[c].pending {
                    *r = new_read;
                }
                let _ = read;
                self.with_node(target, |n, now, _| {
                    n.read(now, new_read).map_err(|_| n.status().leader)
                })?
            }
        };
        match outcome {
            // Answered within the call (a lease read): the next operation is already scheduled,
            // and a timeout here would silently stall this client for two seconds.
            Ok(()) if self.clients[c].generation != generation => Ok(()),
            Ok(()) => {
                let at = self.now + 2_000_000_000;
                self.schedule_client(c, at);
                Ok(())
            }
            Err(hint) => self.retry_elsewhere(c, hint),
        }
    }

    fn retry_elsewhere(&mut self, c: usize, hint: Option<NodeId>) -> Result<(), Violation> {
        let nodes = self.cfg.nodes + self.cfg.spares;
        let mut next = match hint {
            Some(l) if l != self.clients[c].target => l,
            _ => NodeId(1 + self.client_rng.below(nodes)),
        };
        let mut backoff = 20_000_000 + self.client_rng.below(30_000_000);
        if let Some(old) = self
            .probe
            .as_ref()
            .filter(|_| self.probing())
            .map(|p| p.old)
        {
            // The probes retry at once; the writer goes to whoever leads elsewhere (it knows, as
            // the simulator does: the point is a write completed as early as possible).
            match self.clients[c].kind {
                ClientKind::Workload => {}
                ClientKind::ProbeReader => {
                    next = old;
                    backoff = 1_000_000;
                }
                ClientKind::ProbeWriter => {
                    next = match self.leader() {
                        Some(l) if l != old => l,
                        _ if next == old => NodeId(1 + next.0 % nodes),
                        _ => next,
                    };
                    backoff = 1_000_000;
                }
            }
        }
        self.clients[c].target = next;
        let at = self.now + backoff;
        self.schedule_client(c, at);
        Ok(())
    }

    pub(super) fn on_event(&mut self, node: NodeId, ev: Event) -> Result<(), Violation> {
        self.nemesis_event(node, &ev);
        match ev {
            Event::Applied {
                client,
                seq,
                response,
                ..
            } => {
                let Some(c) = self.clients.iter().position(|x| x.id == client) else {
                    return Ok(());
                };
                let Some((op, Attempt::Write { seq: s, .. })) = &self.clients[c].pending else {
                    return Ok(());
                };
                if *s != seq {
                    return Ok(());
                }
                let op = *op;
                let result = decode_response(&response)
                    .ok_or_else(|| Violation("undecodable kv response".into()))?;
                self.history.complete(op, result, self.now);
                self.clients[c].gen.saw(result);
                if self.healed_at.is_some() {
                    self.healed_ops.0 += 1;
                }
                self.finish_op(c);
            }
            Event::ReadReady { id, index } => {
                self.reads_served.push((node, id, index));
                let Some(c) = self.clients.iter().position(
                    |x| matches!(x.pending, Some((_, Attempt::Read { read, .. })) if read == id),
                ) else {
                    return Ok(());
                };
                let Some((op, Attempt::Read { key, .. })) = self.clients[c].pending.clone() else {
                    return Ok(());
                };
                let value = self.nodes[&node]
                    .raft
                    .as_ref()
                    .expect("live")
                    .state_machine()
                    .get(key);
                self.history.complete(op, value, self.now);
                self.clients[c].gen.saw(value);
                if self.healed_at.is_some() {
                    self.healed_ops.1 += 1;
                }
                self.finish_op(c);
            }
            Event::ReadFailed { id } => {
                if let Some(c) = self.clients.iter().position(
                    |x| matches!(x.pending, Some((_, Attempt::Read { read, .. })) if read == id),
                ) {
                    self.retry_elsewhere(c, None)?;
                }
            }
            Event::ProposalDropped {
                proposal: Proposal::Command { client, seq },
                reason,
                ..
            } => {
                let Some(c) = self.clients.iter().position(|x| x.id == client) else {
                    return Ok(());
                };
                if !matches!(&self.clients[c].pending, Some((_, Attempt::Write { seq: s, .. })) if *s == seq)
                {
                    return Ok(());
                }
                if matches!(reason, DropReason::SessionExpired | DropReason::Stale) {
                    // The table holds far more sessions than the simulation has clients, and a
                    // client retries only its latest command: neither can happen.
                    return Err(Violation(format!(
                        "{node}: proposal of {client} seq {seq} refused as {reason:?}"
                    )));
                }
                // Truncated or covered by a snapshot: retry now (de-duplication keeps it once).
                self.retry_elsewhere(c, None)?;
            }
            Event::RoleChanged { .. }
            | Event::SnapshotTaken { .. }
            | Event::ProposalDropped { .. }
            | Event::MembershipApplied { .. }
            | Event::TransferEnded { .. }
            | Event::Removed { .. } => {}
        }
        Ok(())
    }

    fn finish_op(&mut self, c: usize) {
        self.clients[c].pending = None;
        let think = if self.clients[c].kind == ClientKind::Workload {
            self.client_rng.below(20_000_000)
        } else {
            self.client_rng.below(2_000_000)
        };
        let at = self.now + 1_000_000 + think;
        self.schedule_client(c, at);
    }
}
