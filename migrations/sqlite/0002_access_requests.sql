-- Access requests: credentials a rule grants only after approval. Unlike the
-- audit log this is working state (its state changes); every change to it is
-- also written to the audit log.
CREATE TABLE access_requests (
    id                 TEXT    PRIMARY KEY,
    created_at         TEXT    NOT NULL,
    expires_at         TEXT    NOT NULL,
    requester          TEXT    NOT NULL,
    stack              TEXT    NOT NULL,
    provider           TEXT    NOT NULL,
    rule               TEXT    NOT NULL,
    role               TEXT    NOT NULL,
    duration_seconds   INTEGER    NOT NULL,
    reason             TEXT,
    required_approvals INTEGER    NOT NULL CHECK (required_approvals >= 1),
    state              TEXT    NOT NULL,
    decided_at         TEXT,
    decided_by         TEXT,
    window_ends_at     TEXT,
    note               TEXT
);

CREATE INDEX access_requests_lookup ON access_requests (requester, stack, provider, rule, state);

CREATE TABLE approvals (
    request_id  TEXT NOT NULL REFERENCES access_requests (id),
    approver    TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (request_id, approver)
);
