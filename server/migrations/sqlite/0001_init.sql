-- Messages: one row per message. A message to a user sits in two inboxes, the sender's own
-- (at sender_seq) and the recipient's (at to_seq); the inboxes are the two indexes below, so a
-- message costs one row and no separate inbox rows.
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,          -- server-wide message id (snowflake)
    sender        TEXT    NOT NULL,
    sender_device TEXT    NOT NULL,
    client_msg_id TEXT    NOT NULL,
    to_kind       TEXT    NOT NULL,             -- 'user' (rooms come later)
    to_id         TEXT    NOT NULL,
    sender_seq    INTEGER NOT NULL,             -- seq of the copy in the sender's inbox
    to_seq        INTEGER NOT NULL,             -- seq in the recipient's inbox (= sender_seq when to oneself)
    ts            INTEGER NOT NULL,             -- ms since the Unix epoch
    content_type  TEXT    NOT NULL,
    payload       BLOB    NOT NULL
);
-- Deduplication of retried sends: (sender, client_msg_id) is unique.
CREATE UNIQUE INDEX messages_dedup ON messages (sender, client_msg_id);
-- The sender's inbox copies.
CREATE UNIQUE INDEX messages_sender_inbox ON messages (sender, sender_seq);
-- The recipient's inbox entries.
CREATE UNIQUE INDEX messages_to_inbox ON messages (to_id, to_seq) WHERE to_kind = 'user';

-- Cumulative acknowledgement per device.
CREATE TABLE device_cursors (
    user       TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device_id)
) WITHOUT ROWID;

-- One-time login tickets, stored as SHA-256 of the ticket.
CREATE TABLE tickets (
    hash       TEXT    PRIMARY KEY,
    user       TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
