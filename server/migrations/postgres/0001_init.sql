-- The shared store on PostgreSQL: the same data as the SQLite schema, plus a head row per inbox
-- (seqs are allocated inside the database, in the transaction that writes the rows, so several
-- nodes can append at once). Columns are `user_id`, not `user` (reserved in PostgreSQL).

CREATE TABLE messages (
    id            BIGINT  PRIMARY KEY,          -- server-wide message id (snowflake)
    sender        TEXT    NOT NULL,
    sender_device TEXT    NOT NULL,
    client_msg_id TEXT    NOT NULL,
    to_kind       TEXT    NOT NULL,             -- 'user'
    to_id         TEXT    NOT NULL,
    sender_seq    BIGINT  NOT NULL,             -- seq of the copy in the sender's inbox
    to_seq        BIGINT  NOT NULL,             -- seq in the recipient's inbox (= sender_seq when to oneself)
    ts            BIGINT  NOT NULL,             -- ms since the Unix epoch
    content_type  TEXT    NOT NULL,
    payload       BYTEA   NOT NULL
);
CREATE UNIQUE INDEX messages_dedup ON messages (sender, client_msg_id);
CREATE UNIQUE INDEX messages_sender_inbox ON messages (sender, sender_seq);
CREATE UNIQUE INDEX messages_to_inbox ON messages (to_id, to_seq) WHERE to_kind = 'user';

-- Highest seq given in each inbox; locked (and moved) by the append that allocates seqs.
CREATE TABLE inbox_heads (
    user_id TEXT   PRIMARY KEY,
    head    BIGINT NOT NULL
);

CREATE TABLE device_cursors (
    user_id    TEXT   NOT NULL,
    device_id  TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE tickets (
    hash       TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX tickets_by_expiry ON tickets (expires_ms);

CREATE TABLE rooms (
    room       TEXT   PRIMARY KEY,
    created_ms BIGINT NOT NULL,
    head       BIGINT NOT NULL DEFAULT 0        -- highest seq ever given (kept when history is pruned)
);

CREATE TABLE room_members (
    room      TEXT   NOT NULL,
    user_id   TEXT   NOT NULL,
    joined_ms BIGINT NOT NULL,
    PRIMARY KEY (room, user_id)
);
CREATE INDEX room_members_by_user ON room_members (user_id, room);

CREATE TABLE room_log (
    room          TEXT   NOT NULL,
    seq           BIGINT NOT NULL,
    id            BIGINT NOT NULL,
    sender        TEXT   NOT NULL,
    sender_device TEXT   NOT NULL,
    client_msg_id TEXT   NOT NULL,
    ts            BIGINT NOT NULL,
    content_type  TEXT   NOT NULL,
    payload       BYTEA  NOT NULL,
    PRIMARY KEY (room, seq)
);
CREATE UNIQUE INDEX room_log_dedup ON room_log (sender, client_msg_id);
CREATE INDEX room_log_by_ts ON room_log (ts);

CREATE TABLE room_cursors (
    user_id    TEXT   NOT NULL,
    device_id  TEXT   NOT NULL,
    room       TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, room)
);
CREATE INDEX room_cursors_by_room ON room_cursors (room, user_id);

CREATE TABLE writer_probe (
    node  TEXT   PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    pad   BYTEA  NOT NULL
);
