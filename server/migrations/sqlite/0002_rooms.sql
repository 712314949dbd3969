-- Rooms: a log per room with its own gapless seq, and stored membership.
CREATE TABLE rooms (
    room       TEXT    PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    head       INTEGER NOT NULL DEFAULT 0      -- highest seq ever given (kept when history is pruned)
) WITHOUT ROWID;

CREATE TABLE room_members (
    room      TEXT    NOT NULL,
    user      TEXT    NOT NULL,
    joined_ms INTEGER NOT NULL,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;
CREATE INDEX room_members_by_user ON room_members (user, room);

CREATE TABLE room_log (
    room          TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    id            INTEGER NOT NULL,
    sender        TEXT    NOT NULL,
    sender_device TEXT    NOT NULL,
    client_msg_id TEXT    NOT NULL,
    ts            INTEGER NOT NULL,
    content_type  TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX room_log_dedup ON room_log (sender, client_msg_id);

-- Cumulative acknowledgement per device and room.
CREATE TABLE room_cursors (
    user       TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    room       TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device_id, room)
) WITHOUT ROWID;
