-- The shared store on MySQL 8 / MariaDB 10.6+: the PostgreSQL schema in MySQL's dialect.
-- Ids compare byte for byte (utf8mb4_bin), as in SQLite and PostgreSQL.

CREATE TABLE messages (
    id            BIGINT       NOT NULL PRIMARY KEY,
    sender        VARCHAR(128) NOT NULL,
    sender_device VARCHAR(128) NOT NULL,
    client_msg_id VARCHAR(128) NOT NULL,
    to_kind       VARCHAR(8)   NOT NULL,
    to_id         VARCHAR(128) NOT NULL,
    sender_seq    BIGINT       NOT NULL,
    to_seq        BIGINT       NOT NULL,
    ts            BIGINT       NOT NULL,
    content_type  VARCHAR(255) NOT NULL,
    payload       LONGBLOB     NOT NULL,
    UNIQUE KEY messages_dedup (sender, client_msg_id),
    UNIQUE KEY messages_sender_inbox (sender, sender_seq),
    UNIQUE KEY messages_to_inbox (to_id, to_seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE inbox_heads (
    user_id VARCHAR(128) NOT NULL PRIMARY KEY,
    head    BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE device_cursors (
    user_id    VARCHAR(128) NOT NULL,
    device_id  VARCHAR(128) NOT NULL,
    seq        BIGINT       NOT NULL,
    updated_ms BIGINT       NOT NULL,
    PRIMARY KEY (user_id, device_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE tickets (
    hash       VARCHAR(128) NOT NULL PRIMARY KEY,
    user_id    VARCHAR(128) NOT NULL,
    expires_ms BIGINT       NOT NULL,
    KEY tickets_by_expiry (expires_ms)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE rooms (
    room       VARCHAR(128) NOT NULL PRIMARY KEY,
    created_ms BIGINT       NOT NULL,
    head       BIGINT       NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE room_members (
    room      VARCHAR(128) NOT NULL,
    user_id   VARCHAR(128) NOT NULL,
    joined_ms BIGINT       NOT NULL,
    PRIMARY KEY (room, user_id),
    KEY room_members_by_user (user_id, room)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE room_log (
    room          VARCHAR(128) NOT NULL,
    seq           BIGINT       NOT NULL,
    id            BIGINT       NOT NULL,
    sender        VARCHAR(128) NOT NULL,
    sender_device VARCHAR(128) NOT NULL,
    client_msg_id VARCHAR(128) NOT NULL,
    ts            BIGINT       NOT NULL,
    content_type  VARCHAR(255) NOT NULL,
    payload       LONGBLOB     NOT NULL,
    PRIMARY KEY (room, seq),
    UNIQUE KEY room_log_dedup (sender, client_msg_id),
    KEY room_log_by_ts (ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE room_cursors (
    user_id    VARCHAR(128) NOT NULL,
    device_id  VARCHAR(128) NOT NULL,
    room       VARCHAR(128) NOT NULL,
    seq        BIGINT       NOT NULL,
    updated_ms BIGINT       NOT NULL,
    PRIMARY KEY (user_id, device_id, room),
    KEY room_cursors_by_room (room, user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE writer_probe (
    node  VARCHAR(128) NOT NULL PRIMARY KEY,
    at_ms BIGINT       NOT NULL,
    pad   LONGBLOB     NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
