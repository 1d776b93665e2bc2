-- The chain's hashes lose their UNIQUE index (issue 17). Each hash is a SHA-256,
-- so every append landed on a random page of that index and dirtied it: more
-- than half of the pages each commit wrote, more of them as the log grew.
-- Nothing looks records up by hash, and the index guaranteed nothing the chain
-- does not: a record is unique by its seq (the primary key), and its hash
-- covers its seq and its predecessor's hash, which `stackpass audit verify`
-- recomputes for every link.
--
-- SQLite cannot drop a column constraint, so the table is rebuilt once, with
-- its rows, indexes and append-only triggers as they were. DROP TABLE's
-- implicit delete fires no trigger, and no other table refers to this one.
CREATE TABLE audit_records_rebuilt (
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
    hash             TEXT    NOT NULL
);

INSERT INTO audit_records_rebuilt (seq, record_id, recorded_at, event, outcome, request_id,
    issuance_id, requester, requester_kind, actor, issuer, stack, tags, component, owner, rule,
    provider, role, duration_seconds, expires_at, credential_id, client_addr, detail, prev_hash, hash)
SELECT seq, record_id, recorded_at, event, outcome, request_id,
    issuance_id, requester, requester_kind, actor, issuer, stack, tags, component, owner, rule,
    provider, role, duration_seconds, expires_at, credential_id, client_addr, detail, prev_hash, hash
FROM audit_records;

DROP TABLE audit_records;
ALTER TABLE audit_records_rebuilt RENAME TO audit_records;

CREATE INDEX audit_records_requester ON audit_records (requester, seq);
CREATE INDEX audit_records_stack ON audit_records (stack, seq);
CREATE INDEX audit_records_recorded_at ON audit_records (recorded_at);
CREATE INDEX audit_records_credential ON audit_records (credential_id);
CREATE INDEX audit_records_actor ON audit_records (actor, seq);

CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
