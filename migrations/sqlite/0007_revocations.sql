-- Revocations: a person's revocation of their delegation to an agent
-- (`person` set), or an admin's revocation of an agent for every person
-- (`person` NULL). `agent` is the actor string or a glob on it (`*`). Working
-- state like access requests: every change is committed together with the
-- audit record that describes it. A revocation is never deleted; restoring it
-- sets `restored_at` and `restored_by`.
CREATE TABLE revocations (
    id           TEXT    PRIMARY KEY,
    person       TEXT,
    agent        TEXT    NOT NULL,
    is_pattern   INTEGER NOT NULL CHECK (is_pattern IN (0, 1)),
    reason       TEXT,
    revoked_by   TEXT    NOT NULL,
    revoked_at   TEXT    NOT NULL,
    restored_at  TEXT,
    restored_by  TEXT
);

-- The per-request check reads the active revocations of one agent (and the
-- patterns); the listing reads a person's.
CREATE INDEX revocations_active_agent ON revocations (agent, restored_at);
CREATE INDEX revocations_active_pattern ON revocations (is_pattern, restored_at);
CREATE INDEX revocations_person ON revocations (person, revoked_at);

-- Credentials already issued to an agent: the revocation's answer lists them.
CREATE INDEX audit_records_actor ON audit_records (actor, seq);
