-- Notifications are delivered from the audit log itself: a notification exists
-- exactly when its audit record is committed. These tables hold only delivery
-- state (working state, not evidence; the audit log stays append-only).
--
-- notification_cursor: how far the dispatchers have looked for records to
-- announce. It starts at the current head, so upgrading does not announce
-- history the previous in-memory delivery already tried.
CREATE TABLE notification_cursor (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    scanned_seq BIGINT  NOT NULL
);
INSERT INTO notification_cursor (id, scanned_seq)
SELECT 1, COALESCE(MAX(seq), 0) FROM audit_records;

-- One row per audit record that announces something. A dispatcher claims a
-- pending row by moving next_attempt_at to the end of its lease (lease_owner
-- names it), so a claim by a broker that died expires by itself. state:
-- pending -> delivered | given_up (given up is also audited).
CREATE TABLE notification_deliveries (
    seq             BIGINT  PRIMARY KEY,
    record_id       TEXT    NOT NULL UNIQUE,
    recorded_at     TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'given_up')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    lease_owner     TEXT,
    last_error      TEXT,
    finished_at     TEXT
);

CREATE INDEX notification_deliveries_due ON notification_deliveries (state, next_attempt_at);
