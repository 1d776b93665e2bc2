-- One row per decision and per step of an issuance. Rows are only ever appended:
-- the triggers below refuse UPDATE and DELETE so that no code path (and no
-- careless operator with the sqlite3 shell) edits history by accident.
CREATE TABLE audit_records (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id        TEXT    NOT NULL UNIQUE,
    recorded_at      TEXT    NOT NULL,
    event            TEXT    NOT NULL CHECK (event IN ('decision', 'issuance_intent', 'issuance_outcome')),
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
    detail           TEXT
);

CREATE INDEX audit_records_requester ON audit_records (requester, seq);
CREATE INDEX audit_records_stack ON audit_records (stack, seq);
CREATE INDEX audit_records_issuance ON audit_records (issuance_id);

CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
