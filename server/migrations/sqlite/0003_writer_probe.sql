-- One row the readiness probe rewrites to prove the writer commits again after a failure. It
-- carries a pad as large as the largest message, so "ready" means a message would fit.
CREATE TABLE writer_probe (
    id    INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    pad   BLOB    NOT NULL
);
-- Expired tickets are removed whenever a ticket is created.
CREATE INDEX tickets_by_expiry ON tickets (expires_ms);
