-- Messages: one row per message, whatever the number of inboxes it lands in.
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,          -- server-wide message id (snowflake)
    sender        TEXT    NOT NULL,
    sender_device TEXT    NOT NULL,
    client_msg_id TEXT    NOT NULL,
    to_kind       TEXT    NOT NULL,             -- 'user' (rooms come later)
    to_id         TEXT    NOT NULL,
    sender_seq    INTEGER NOT NULL,             -- seq of the sender's own copy
    ts            INTEGER NOT NULL,             -- ms since the Unix epoch
    content_type  TEXT    NOT NULL,
    payload       BLOB    NOT NULL
);
-- Deduplication of retried sends: (sender, client_msg_id) is unique.
CREATE UNIQUE INDEX messages_dedup ON messages (sender, client_msg_id);

-- Inboxes: per-user sequence of message references.
CREATE TABLE inbox (
    user   TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    msg_id INTEGER NOT NULL REFERENCES messages (id),
    PRIMARY KEY (user, seq)
) WITHOUT ROWID;

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
