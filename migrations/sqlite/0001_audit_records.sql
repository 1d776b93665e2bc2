-- The audit log: one row per decision and per step of an issuance, hash-chained.
-- `seq` is assigned by the appender (the previous record's seq + 1, inside the
-- write transaction), so the chain has no gaps and no forks. Rows are only ever
-- appended: the triggers below refuse UPDATE and DELETE, and retention pruning
-- (the only deletion) drops and recreates the delete trigger inside its own
-- transaction.
CREATE TABLE audit_records (
    seq              INTEGER PRIMARY KEY,
    record_id        TEXT    NOT NULL UNIQUE,
    recorded_at      TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,
    request_id       TEXT    NOT NULL,
    issuance_id      TEXT,
    requester        TEXT,
    requester_kind   TEXT,
    actor            TEXT,
    issuer           TEXT,
    stack            TEXT,
    tags             TEXT,
    component        TEXT,
    owner            TEXT,
    rule             TEXT,
    provider         TEXT,
    role             TEXT,
    duration_seconds INTEGER,
    expires_at       TEXT,
    credential_id    TEXT,
    client_addr      TEXT,
    detail           TEXT,
    prev_hash        TEXT    NOT NULL,
    hash             TEXT    NOT NULL UNIQUE
);

CREATE INDEX audit_records_requester ON audit_records (requester, seq);
CREATE INDEX audit_records_stack ON audit_records (stack, seq);
CREATE INDEX audit_records_recorded_at ON audit_records (recorded_at);
CREATE INDEX audit_records_credential ON audit_records (credential_id);

-- Where the chain starts: the genesis, or after retention pruning the last
-- pruned record (its seq + 1 and its hash). One row; appenders lock it.
CREATE TABLE audit_chain (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    start_seq       INTEGER NOT NULL,
    start_prev_hash TEXT    NOT NULL
);
INSERT INTO audit_chain (id, start_seq, start_prev_hash)
VALUES (1, 1, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
