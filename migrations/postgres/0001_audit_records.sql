-- The audit log: one row per decision and per step of an issuance, hash-chained.
-- Same columns and meaning as migrations/sqlite. Appenders on every broker
-- instance lock the single audit_chain row (SELECT ... FOR UPDATE), so concurrent
-- instances append one after another: one chain, no forks, no gaps.
CREATE TABLE audit_records (
    seq              BIGINT PRIMARY KEY,
    record_id        TEXT   NOT NULL UNIQUE,
    recorded_at      TEXT   NOT NULL,
    event            TEXT   NOT NULL,
    outcome          TEXT   NOT NULL,
    request_id       TEXT   NOT NULL,
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
    duration_seconds BIGINT,
    expires_at       TEXT,
    credential_id    TEXT,
    client_addr      TEXT,
    detail           TEXT,
    prev_hash        TEXT   NOT NULL,
    hash             TEXT   NOT NULL UNIQUE
);

CREATE INDEX audit_records_requester ON audit_records (requester, seq);
CREATE INDEX audit_records_stack ON audit_records (stack, seq);
CREATE INDEX audit_records_recorded_at ON audit_records (recorded_at);
CREATE INDEX audit_records_credential ON audit_records (credential_id);

CREATE TABLE audit_chain (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    start_seq       BIGINT  NOT NULL,
    start_prev_hash TEXT    NOT NULL
);
INSERT INTO audit_chain (id, start_seq, start_prev_hash)
VALUES (1, 1, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only. Retention pruning is the one exception: it sets the transaction-
-- local flag stackpass.pruning before deleting the records it seals.
CREATE FUNCTION audit_records_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('stackpass.pruning', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit records are append-only';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
FOR EACH ROW EXECUTE FUNCTION audit_records_append_only();
