//! Proposals and apply: appending to the log as leader or follower, truncating it, applying
//! committed entries through the de-duplication table (thesis §6.3), and ending every proposal in
//! exactly one event (`Applied`, `MembershipApplied` or `ProposalDropped`).

use crate::ids::{ClientId, LogId, LogIndex, Term};
use crate::raft::error::ProposeError;
use crate::raft::io::{DropReason, Event, Proposal, Role};
use crate::raft::node::RaftNode;
use crate::raft::state_machine::{Applied, StateMachine};
use crate::raft::storage::PersistOp;
use crate::raft::types::{Entry, Payload};
use crate::time::Instant;
use std::collections::BTreeMap;

impl<S: StateMachine> RaftNode<S> {
    /// Proposes a command for `(client, seq)`. `unix_ms` is this node's wall clock, stamped into the
    /// entry. Returns the entry's index; the result arrives as `Event::Applied`.
    pub fn propose(
        &mut self,
        now: Instant,
        unix_ms: u64,
        client: ClientId,
        seq: u64,
        data: Vec<u8>,
    ) -> Result<LogIndex, ProposeError> {
        self.advance_clock(now);
        let Some(lead) = &self.lead else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if lead.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if data.len() > self.cfg.command_bytes_max {
            return Err(ProposeError::TooLarge {
                len: data.len(),
                max: self.cfg.command_bytes_max,
            });
        }
        let uncommitted = self.log.last_index().0 - self.commit.0;
        if uncommitted >= self.cfg.uncommitted_entries_max as u64
            || self.local_proposals.len() >= self.cfg.pending_proposals_max
        {
            return Err(ProposeError::Backpressure);
        }
        let index = self.append_as_leader(unix_ms, Payload::Command { client, seq, data });
        assert_eq!(
            self.log.last_index(),
            index,
            "{}: proposal not last",
            self.id
        );
        self.local_proposals
            .insert(index, (Proposal::Command { client, seq }, self.term));
        Ok(index)
    }

    pub(crate) fn append_as_leader(&mut self, unix_ms: u64, payload: Payload) -> LogIndex {
        assert_eq!(
            self.role,
            Role::Leader,
            "{}: only a leader appends new entries",
            self.id
        );
        self.last_unix_ms = self.last_unix_ms.max(unix_ms);
        let index = self.log.last_index().next();
        let entry = Entry {
            id: LogId::new(self.term, index),
            unix_ms: self.last_unix_ms,
            payload,
        };
        self.append_entries(vec![entry]);
        if let Some(lead) = &mut self.lead {
            lead.append_needed = true;
        }
        index
    }

    /// Appends the leader's no-op (Raft §8) when it takes office.
    pub(crate) fn append_noop(&mut self) {
        self.append_as_leader(self.last_unix_ms, Payload::Noop);
    }

    /// Appends entries to the log and stages them for persistence.
    pub(crate) fn append_entries(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        if let Some(last) = entries.last() {
            self.last_unix_ms = self.last_unix_ms.max(last.unix_ms);
        }
        let membership_changed = entries
            .iter()
            .any(|e| matches!(e.payload, Payload::Membership(_)));
        let last = entries.last().map(|e| e.id);
        self.log.append(entries.clone());
        assert_eq!(
            Some(self.log.last_id()),
            last,
            "{}: append did not extend the log",
            self.id
        );
        self.outbox.stage(PersistOp::Append(entries));
        if membership_changed {
            self.on_membership_changed();
        }
    }

    /// Truncates the log from `from` (a real conflict only, never at or below commit: Raft §5.3;
    /// openraft 9540c904).
    pub(crate) fn truncate_log(&mut self, from: LogIndex) {
        assert!(
            from > self.commit,
            "{}: truncating committed entry {:?} (commit {:?})",
            self.id,
            from,
            self.commit
        );
        let had_config = self.log.membership_index() >= from;
        self.log.truncate_from(from);
        assert!(
            self.log.last_index() < from,
            "{}: truncation left {from:?}",
            self.id
        );
        self.outbox.stage(PersistOp::Truncate { from });
        // Proposals at truncated indexes will never apply here: say so, so no driver guesses.
        let dropped = self.local_proposals.split_off(&from);
        self.drop_proposals(dropped, DropReason::Truncated);
        self.outbox.truncated(from);
        if had_config {
            self.on_membership_changed();
        }
    }

    /// Applies committed entries to the state machine, answers local proposals, releases reads
    /// and takes a snapshot when due.
    pub(crate) fn apply_committed(&mut self) {
        assert!(
            self.applied <= self.commit && self.commit <= self.log.last_index(),
            "{}: applied {:?}, commit {:?}, last {:?}",
            self.id,
            self.applied,
            self.commit,
            self.log.last_index()
        );
        let mut step_down = false;
        while self.applied < self.commit {
            let index = self.applied.next();
            // The replicated settings in effect at `index` (`ReplicatedSettings`). A joining node
            // that started empty learns the configuration only from a configuration entry or a
            // snapshot; entries before its first one were committed under the bootstrap
            // configuration, whose settings every later configuration copies, so the latest known
            // one applies. Knowing none, it waits: applying with a guess could diverge.
            let settings = [self.log.membership_at(index), self.log.membership()]
                .into_iter()
                .find(|m| m.is_known())
                .map(|m| m.settings);
            let Some(settings) = settings else { break };
            self.dedup.set_clients_max(settings.dedup_bound());
            // Borrow the entry: `log`, `dedup` and `sm` are disjoint fields, so applying needs no
            // copy of the command (the bench's profile showed entry clones as the top cost).
            let entry = self.log.entry(index).unwrap_or_else(|| {
                panic!("{}: committed entry {:?} not in the log", self.id, index)
            });
            let mut applied_event = None;
            // Ours only if the entry is the one proposed here (same term at the same index);
            // another entry there means ours was replaced (a snapshot that wiped the log).
            let proposed_here = match self.local_proposals.remove(&index) {
                Some((p, t)) if t == entry.term() => Some(p),
                Some((proposal, _)) => {
                    self.outbox.emit(Event::ProposalDropped {
                        index,
                        proposal,
                        reason: DropReason::Truncated,
                    });
                    None
                }
                None => None,
            };
            match &entry.payload {
                Payload::Command { client, seq, data } => {
                    let ctx = crate::raft::state_machine::ApplyContext {
                        index,
                        term: entry.term(),
                        unix_ms: entry.unix_ms,
                        client: *client,
                    };
                    let applied = self.dedup.apply(&mut self.sm, &ctx, *seq, data);
                    let proposal = Proposal::Command {
                        client: *client,
                        seq: *seq,
                    };
                    if proposed_here == Some(proposal) {
                        let refused = |reason| Event::ProposalDropped {
                            index,
                            proposal,
                            reason,
                        };
                        applied_event = Some(match applied {
                            Applied::Fresh(response) | Applied::Duplicate(response) => {
                                Event::Applied {
                                    client: *client,
                                    seq: *seq,
                                    index,
                                    response,
                                }
                            }
                            Applied::Stale => refused(DropReason::Stale),
                            Applied::SessionExpired => refused(DropReason::SessionExpired),
                        });
                    }
                }
                Payload::Membership(m) => {
                    if proposed_here == Some(Proposal::Membership) {
                        applied_event = Some(Event::MembershipApplied { index });
                    }
                    // A leader removed by a committed config steps down (etcd StepDownOnRemoval).
                    if self.role == Role::Leader
                        && !m.is_voter(self.id)
                        && self.log.membership_index() == index
                    {
                        step_down = true;
                    }
                }
                Payload::Noop => {}
            }
            if let Some(event) = applied_event {
                self.emit(event);
            }
            self.applied = index;
        }
        // Postcondition: everything committed is applied (unless no configuration is known yet),
        // and apply did not move the commit.
        assert!(
            self.applied == self.commit || !self.log.membership().is_known(),
            "{}: apply stopped short",
            self.id
        );
        self.release_ready_reads();
        self.maybe_snapshot();
        if step_down {
            tracing::debug!(node = %self.id, "removed from the cluster: stepping down");
            self.become_follower(self.term, None);
        }
    }

    /// Ends proposals that will never apply here with `ProposalDropped`.
    pub(crate) fn drop_proposals(
        &mut self,
        dropped: BTreeMap<LogIndex, (Proposal, Term)>,
        reason: DropReason,
    ) {
        for (index, (proposal, _)) in dropped {
            self.emit(Event::ProposalDropped {
                index,
                proposal,
                reason,
            });
        }
    }
}
