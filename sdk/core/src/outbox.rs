//! The outbox: messages kept, in order, until the server acknowledges them.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::types::OutboxEntry;

/// One outbox message and its transmission state.
#[derive(Debug, Clone)]
struct Slot {
    entry: OutboxEntry,
    /// `Some(t)`: in flight on the current connection, to be transmitted again at `t` if still
    /// unanswered. `None`: not transmitted on the current connection yet.
    resend_at: Option<Instant>,
    /// It may have reached the server: transmitted on some connection, or restored from a
    /// journal (whose earlier run may have transmitted it).
    maybe_sent: bool,
}

/// Ordered outbox with a window of in-flight messages.
///
/// Invariant: the in-flight slots are a prefix of the queue. Pending slots are only ever put in
/// flight front to back, removal keeps relative order, and [`Outbox::reset`] makes every slot
/// pending, so in-flight slots always precede pending ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outbox {
    slots: VecDeque<Slot>,
    /// Ids of the slots, for constant-time membership tests.
    ids: HashSet<String>,
    in_flight: usize,
}

impl Outbox {
    /// An outbox restored from persisted entries (duplicates of an id are dropped).
    pub(crate) fn from_entries(entries: Vec<OutboxEntry>) -> Self {
        let mut outbox = Outbox::default();
        for entry in entries {
            if !outbox.contains(&entry.client_msg_id) {
                outbox.push(entry);
                if let Some(slot) = outbox.slots.back_mut() {
                    slot.maybe_sent = true;
                }
            }
        }
        outbox
    }

    /// Appends a new message (pending).
    pub(crate) fn push(&mut self, entry: OutboxEntry) {
        self.ids.insert(entry.client_msg_id.clone());
        self.slots.push_back(Slot { entry, resend_at: None, maybe_sent: false });
    }

    /// Number of messages in the outbox.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Number of messages in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a message with this id is in the outbox.
    pub(crate) fn contains(&self, client_msg_id: &str) -> bool {
        self.ids.contains(client_msg_id)
    }

    /// The entries, oldest first.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.slots.iter().map(|s| &s.entry)
    }

    /// Removes the message with this id, if present.
    pub(crate) fn remove(&mut self, client_msg_id: &str) -> Option<OutboxEntry> {
        self.take(client_msg_id).map(|(entry, _)| entry)
    }

    /// Removes the message with this id, if present, and tells whether it may have reached
    /// the server.
    pub(crate) fn take(&mut self, client_msg_id: &str) -> Option<(OutboxEntry, bool)> {
        if !self.ids.remove(client_msg_id) {
            return None;
        }
        let idx = self.slots.iter().position(|s| s.entry.client_msg_id == client_msg_id)?;
        let slot = self.slots.remove(idx)?;
        if slot.resend_at.is_some() {
            self.in_flight -= 1;
        }
        Some((slot.entry, slot.maybe_sent))
    }

    /// Schedules an in-flight message to be transmitted again at `at` (after a transient
    /// refusal). Returns whether the id was found.
    pub(crate) fn retry_at(&mut self, client_msg_id: &str, at: Instant) -> bool {
        match self.slots.iter_mut().find(|s| s.entry.client_msg_id == client_msg_id) {
            Some(slot) => {
                // A pending slot stays pending: it goes out anyway when the window allows.
                if slot.resend_at.is_some() {
                    slot.resend_at = Some(at);
                }
                true
            }
            None => false,
        }
    }

    /// The connection is gone: every message becomes pending again, original order kept.
    pub(crate) fn reset(&mut self) {
        for slot in &mut self.slots {
            slot.resend_at = None;
        }
        self.in_flight = 0;
    }

    /// Collects, in outbox order, the messages to transmit now: in-flight messages whose
    /// answer is overdue, then pending ones while fewer than `max_in_flight` are in flight.
    /// Each one is (re)armed to be resent `ack_timeout` from `now`.
    pub(crate) fn poll_sends(&mut self, now: Instant, ack_timeout: Duration, max_in_flight: usize) -> Vec<OutboxEntry> {
        let mut out = Vec::new();
        let deadline = now + ack_timeout;
        for slot in &mut self.slots {
            match slot.resend_at {
                Some(at) if at <= now => {
                    slot.resend_at = Some(deadline);
                    slot.maybe_sent = true;
                    out.push(slot.entry.clone());
                }
                Some(_) => {}
                None => {
                    if self.in_flight >= max_in_flight {
                        // In-flight slots are a prefix: nothing further can be overdue.
                        break;
                    }
                    self.in_flight += 1;
                    slot.resend_at = Some(deadline);
                    slot.maybe_sent = true;
                    out.push(slot.entry.clone());
                }
            }
        }
        out
    }

    /// The earliest time an in-flight message is due to be transmitted again.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().map_while(|s| s.resend_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::Address;

    fn entry(id: &str) -> OutboxEntry {
        OutboxEntry {
            client_msg_id: id.to_owned(),
            to: Address::user("bob"),
            content_type: "text/plain".to_owned(),
            payload: id.as_bytes().to_vec(),
            created_ms: 0,
        }
    }

    fn ids(v: &[OutboxEntry]) -> Vec<&str> {
        v.iter().map(|e| e.client_msg_id.as_str()).collect()
    }

    #[test]
    fn window_limits_in_flight_and_refills_in_order() {
        let t0 = Instant::now();
        let ack = Duration::from_secs(10);
        let mut o = Outbox::from_entries(vec![entry("a"), entry("b"), entry("a"), entry("c")]);
        assert_eq!(o.len(), 3, "duplicate id dropped on restore");
        assert_eq!(ids(&o.poll_sends(t0, ack, 2)), ["a", "b"]);
        assert_eq!(o.in_flight(), 2);
        assert!(o.poll_sends(t0, ack, 2).is_empty());
        assert_eq!(o.remove("a").map(|e| e.client_msg_id), Some("a".into()));
        assert_eq!(ids(&o.poll_sends(t0, ack, 2)), ["c"]);
        assert_eq!(o.next_deadline(), Some(t0 + ack));
    }

    #[test]
    fn overdue_messages_are_resent_and_reset_keeps_order() {
        let t0 = Instant::now();
        let ack = Duration::from_secs(10);
        let mut o = Outbox::from_entries(vec![entry("a"), entry("b")]);
        o.poll_sends(t0, ack, 10);
        assert!(o.poll_sends(t0 + ack - Duration::from_millis(1), ack, 10).is_empty());
        assert_eq!(ids(&o.poll_sends(t0 + ack, ack, 10)), ["a", "b"]);
        assert_eq!(o.next_deadline(), Some(t0 + ack + ack));
        o.push(entry("c"));
        o.reset();
        assert_eq!(o.in_flight(), 0);
        assert_eq!(o.next_deadline(), None);
        assert_eq!(ids(&o.poll_sends(t0, ack, 10)), ["a", "b", "c"]);
    }

    #[test]
    fn retry_at_reschedules_only_in_flight_messages() {
        let t0 = Instant::now();
        let ack = Duration::from_secs(10);
        let mut o = Outbox::from_entries(vec![entry("a"), entry("b")]);
        o.poll_sends(t0, ack, 1);
        assert!(o.retry_at("a", t0 + Duration::from_secs(1)));
        assert!(o.retry_at("b", t0 + Duration::from_secs(1)));
        assert!(!o.retry_at("zzz", t0));
        assert_eq!(o.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(ids(&o.poll_sends(t0 + Duration::from_secs(1), ack, 1)), ["a"]);
        assert_eq!(o.remove("nope"), None);
    }
}
