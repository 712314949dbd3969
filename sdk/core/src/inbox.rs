//! The sequence tracker of one log (the user's inbox, or one room): deduplication, reordering,
//! gap detection and cumulative acks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tether_proto::{Deliver, Sync};

/// What receiving one inbox sequence number produced.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// Messages now handed to the app, in sequence order.
    pub(crate) handed: Vec<Deliver>,
    /// Whether the cursor advanced.
    pub(crate) advanced: bool,
    /// A `sync` to transmit for a newly detected gap.
    pub(crate) sync: Option<Sync>,
}

/// Tracks one log of the device (its inbox, or a room): the cursor `c` (highest contiguous
/// sequence number handed to the app), messages received ahead of it, what the server has been
/// told, and open gaps.
#[derive(Debug, Clone)]
pub(crate) struct Inbox {
    /// The room this tracker follows (its `sync`s carry it); `None` for the user's inbox.
    room: Option<String>,
    cursor: u64,
    /// Received but not yet contiguous. `None` marks one of our own messages (known from its
    /// `send_ack`), which occupies its sequence number but is not handed to the app.
    buffer: BTreeMap<u64, Option<Deliver>>,
    max_reorder: usize,
    /// Highest sequence number seen on this or an earlier connection (buffered or dropped).
    highest_seen: u64,
    /// `inbox_head` of the last `login_ok`.
    login_head: u64,
    /// The cursor the server knows (last `ack`, or the cursor sent in `login`).
    last_acked: u64,
    ack_deadline: Option<Instant>,
    gap_deadline: Option<Instant>,
}

impl Inbox {
    /// A tracker of the user's inbox starting at `cursor`.
    pub(crate) fn new(cursor: u64, max_reorder: usize) -> Self {
        Self::with_room(None, cursor, max_reorder)
    }

    /// A tracker of `room` (or of the inbox for `None`) starting at `cursor`.
    pub(crate) fn with_room(room: Option<String>, cursor: u64, max_reorder: usize) -> Self {
        Inbox {
            room,
            cursor,
            buffer: BTreeMap::new(),
            max_reorder,
            highest_seen: cursor,
            login_head: cursor,
            last_acked: cursor,
            ack_deadline: None,
            gap_deadline: None,
        }
    }

    /// The cursor.
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Number of buffered out-of-order sequence numbers.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Highest sequence number the inbox is known to reach.
    fn target(&self) -> u64 {
        self.highest_seen.max(self.login_head)
    }

    fn gap_open(&self) -> bool {
        self.cursor < self.target()
    }

    /// Receives sequence number `seq`: a message for the app (`Some`) or our own message
    /// (`None`). Duplicates are dropped; the next expected one is handed over with every
    /// buffered successor; later ones are buffered and, if they reveal new missing numbers, a
    /// `sync` for those is returned.
    pub(crate) fn receive(&mut self, seq: u64, item: Option<Deliver>, now: Instant, gap_timeout: Duration) -> Received {
        let mut out = Received::default();
        if seq <= self.cursor || self.buffer.contains_key(&seq) {
            return out;
        }
        let known = self.cursor.max(self.target());
        self.highest_seen = self.highest_seen.max(seq);
        if seq == self.cursor + 1 {
            self.cursor = seq;
            out.handed.extend(item);
            while let Some(next) = self.buffer.remove(&(self.cursor + 1)) {
                self.cursor += 1;
                out.handed.extend(next);
            }
            out.advanced = true;
        } else if self.buffer.len() < self.max_reorder {
            self.buffer.insert(seq, item);
            if seq > known + 1 {
                out.sync = Some(self.sync(known, Some(seq - 1)));
            }
        }
        // else: over the reorder limit; dropped and left to the gap timer's sync.
        self.update_gap_timer(out.advanced, now, gap_timeout);
        out
    }

    /// Moves the cursor forward to `to` without the messages in between (they are gone from the
    /// server: history truncated). Buffered messages at or below `to` are dropped; buffered
    /// successors that are now contiguous are handed over. Does nothing if `to` is not ahead.
    pub(crate) fn skip_to(&mut self, to: u64, now: Instant, gap_timeout: Duration) -> Received {
        let mut out = Received::default();
        if to <= self.cursor {
            return out;
        }
        self.cursor = to;
        self.highest_seen = self.highest_seen.max(to);
        self.buffer = self.buffer.split_off(&(to + 1));
        while let Some(next) = self.buffer.remove(&(self.cursor + 1)) {
            self.cursor += 1;
            out.handed.extend(next);
        }
        out.advanced = true;
        self.update_gap_timer(true, now, gap_timeout);
        out
    }

    fn update_gap_timer(&mut self, advanced: bool, now: Instant, gap_timeout: Duration) {
        if self.gap_open() {
            if advanced || self.gap_deadline.is_none() {
                self.gap_deadline = Some(now + gap_timeout);
            }
        } else {
            self.gap_deadline = None;
        }
    }

    fn sync(&self, after: u64, until: Option<u64>) -> Sync {
        Sync { after, until, room: self.room.clone() }
    }

    /// Notes that the cursor advanced at `now`: an ack becomes due `ack_delay` later at most.
    pub(crate) fn note_advance(&mut self, now: Instant, ack_delay: Duration) {
        if self.ack_deadline.is_none() && self.cursor > self.last_acked {
            self.ack_deadline = Some(now + ack_delay);
        }
    }

    /// Whether an ack is due: the cursor is `ack_every` past the last ack, or the ack delay
    /// expired.
    pub(crate) fn ack_due(&self, now: Instant, ack_every: u64) -> bool {
        self.cursor > self.last_acked
            && (self.cursor - self.last_acked >= ack_every || self.ack_deadline.is_some_and(|d| d <= now))
    }

    /// The cursor the server knows (last ack, or the cursor the last `login` carried).
    pub(crate) fn last_acked(&self) -> u64 {
        self.last_acked
    }

    /// The cumulative ack to transmit now, if one is due ([`Inbox::ack_due`]) or `force`.
    /// Never returns a value that does not advance.
    pub(crate) fn take_ack(&mut self, now: Instant, ack_every: u64, force: bool) -> Option<u64> {
        if self.cursor <= self.last_acked {
            self.ack_deadline = None;
            return None;
        }
        if !force && !self.ack_due(now, ack_every) {
            return None;
        }
        self.last_acked = self.cursor;
        self.ack_deadline = None;
        Some(self.cursor)
    }

    /// When an ack becomes due.
    pub(crate) fn ack_deadline(&self) -> Option<Instant> {
        self.ack_deadline
    }

    /// When an open gap is due to be asked for again.
    pub(crate) fn gap_deadline(&self) -> Option<Instant> {
        self.gap_deadline
    }

    /// The `sync` to transmit if the gap timer expired: everything after the cursor up to the
    /// highest missing number (`until: None` when nothing is buffered, e.g. a backlog announced
    /// by `login_ok` that did not arrive). Re-arms the timer while the gap stays open.
    pub(crate) fn poll_gap(&mut self, now: Instant, gap_timeout: Duration) -> Option<Sync> {
        match self.gap_deadline {
            Some(d) if d <= now => {}
            _ => return None,
        }
        if !self.gap_open() {
            self.gap_deadline = None;
            return None;
        }
        self.gap_deadline = Some(now + gap_timeout);
        let until = if self.buffer.is_empty() {
            None
        } else {
            // cursor + 1 is never buffered (it would have been drained), so this stops there.
            let mut x = self.target();
            while x > self.cursor + 1 && self.buffer.contains_key(&x) {
                x -= 1;
            }
            Some(x)
        };
        Some(self.sync(self.cursor, until))
    }

    /// A `login` carrying the cursor was sent: the server now knows it.
    pub(crate) fn on_login_sent(&mut self) {
        self.last_acked = self.cursor;
        self.ack_deadline = None;
        self.gap_deadline = None;
    }

    /// `login_ok` arrived announcing `inbox_head`: the server sends the backlog by itself; the
    /// gap timer watches that it does.
    pub(crate) fn on_login_ok(&mut self, inbox_head: u64, now: Instant, gap_timeout: Duration) {
        self.login_head = inbox_head;
        self.gap_deadline = self.gap_open().then(|| now + gap_timeout);
    }

    /// `login_ok` arrived for a room tracker (whose head the server does not announce): a gap
    /// left open by the last connection is watched again.
    pub(crate) fn on_login_ok_room(&mut self, now: Instant, gap_timeout: Duration) {
        self.gap_deadline = self.gap_open().then(|| now + gap_timeout);
    }

    /// The connection is gone: no acks or syncs until the next login.
    pub(crate) fn on_offline(&mut self) {
        self.ack_deadline = None;
        self.gap_deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::Address;

    fn msg(seq: u64) -> Deliver {
        Deliver {
            msg_id: 1000 + seq,
            seq,
            from: "bob".into(),
            from_device: "bob-phone".into(),
            client_msg_id: format!("c{seq}"),
            to: Address::user("alice"),
            ts: seq,
            content_type: "text/plain".into(),
            payload: vec![seq as u8],
        }
    }

    fn seqs(r: &Received) -> Vec<u64> {
        r.handed.iter().map(|d| d.seq).collect()
    }

    #[test]
    fn in_order_duplicates_and_reordering() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        let mut i = Inbox::new(5, 100);
        assert!(seqs(&i.receive(5, Some(msg(5)), t, g)).is_empty());
        assert_eq!(seqs(&i.receive(6, Some(msg(6)), t, g)), [6]);
        assert!(i.receive(6, Some(msg(6)), t, g).handed.is_empty());
        let r = i.receive(9, Some(msg(9)), t, g);
        assert!(r.handed.is_empty());
        assert_eq!(r.sync, Some(Sync { after: 6, until: Some(8), room: None }));
        // 8 fills part of the known gap: no new sync.
        let r = i.receive(8, Some(msg(8)), t, g);
        assert!(r.sync.is_none() && r.handed.is_empty());
        // 11 reveals 10 as newly missing: sync only that.
        let r = i.receive(11, Some(msg(11)), t, g);
        assert_eq!(r.sync, Some(Sync { after: 9, until: Some(10), room: None }));
        // Own message marker fills 7; it is not handed over but the drain continues.
        let r = i.receive(7, None, t, g);
        assert_eq!(seqs(&r), [8, 9]);
        assert_eq!(i.cursor(), 9);
        assert_eq!(seqs(&i.receive(10, Some(msg(10)), t, g)), [10, 11]);
        assert_eq!(i.buffered(), 0);
        assert_eq!(i.gap_deadline(), None);
    }

    #[test]
    fn reorder_limit_drops_and_gap_sync_covers_dropped() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        let mut i = Inbox::new(0, 2);
        i.receive(3, Some(msg(3)), t, g);
        i.receive(4, Some(msg(4)), t, g);
        let r = i.receive(6, Some(msg(6)), t, g);
        assert!(r.sync.is_none(), "dropped messages trigger no immediate sync");
        assert_eq!(i.buffered(), 2);
        assert_eq!(i.poll_gap(t + g - Duration::from_millis(1), g), None);
        assert_eq!(i.poll_gap(t + g, g), Some(Sync { after: 0, until: Some(6), room: None }));
        assert_eq!(i.gap_deadline(), Some(t + g + g));
    }

    #[test]
    fn acks_are_cumulative_batched_and_never_backwards() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        let d = Duration::from_millis(50);
        let mut i = Inbox::new(0, 100);
        assert_eq!(i.take_ack(t, 3, true), None, "nothing to ack");
        i.receive(1, Some(msg(1)), t, g);
        i.note_advance(t, d);
        assert_eq!(i.take_ack(t, 3, false), None);
        assert_eq!(i.ack_deadline(), Some(t + d));
        i.receive(2, Some(msg(2)), t, g);
        i.note_advance(t + Duration::from_millis(10), d);
        assert_eq!(i.ack_deadline(), Some(t + d), "deadline set by the first advance");
        assert_eq!(i.take_ack(t + d, 3, false), Some(2));
        assert_eq!(i.take_ack(t + d, 3, false), None);
        for s in 3..=5 {
            i.receive(s, Some(msg(s)), t, g);
        }
        assert_eq!(i.take_ack(t, 3, false), Some(5));
    }

    #[test]
    fn room_trackers_tag_their_syncs() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        let mut i = Inbox::with_room(Some("r1".into()), 10, 100);
        let r = i.receive(13, Some(msg(13)), t, g);
        assert_eq!(r.sync, Some(Sync { after: 10, until: Some(12), room: Some("r1".into()) }));
        assert_eq!(i.poll_gap(t + g, g), Some(Sync { after: 10, until: Some(12), room: Some("r1".into()) }));
    }

    #[test]
    fn skip_to_drops_what_is_gone_and_drains_the_rest() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        let mut i = Inbox::new(2, 100);
        for s in [4, 7, 8, 10] {
            i.receive(s, Some(msg(s)), t, g);
        }
        // 3..=6 are gone: 4 is dropped, 7 and 8 are handed, 9 is still missing.
        let r = i.skip_to(6, t, g);
        assert!(r.advanced);
        assert_eq!(seqs(&r), [7, 8]);
        assert_eq!(i.cursor(), 8);
        assert_eq!(i.buffered(), 1);
        assert_eq!(i.gap_deadline(), Some(t + g));
        assert!(!i.skip_to(5, t, g).advanced, "never backwards");
        // Skipping past everything closes the gap.
        assert!(seqs(&i.skip_to(20, t, g)).is_empty());
        assert_eq!((i.cursor(), i.buffered(), i.gap_deadline()), (20, 0, None));
        assert_eq!(i.receive(21, Some(msg(21)), t, g).handed.len(), 1);
    }
}
