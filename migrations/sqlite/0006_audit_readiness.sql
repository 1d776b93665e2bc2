-- Readiness: `/readyz` commits a heartbeat here, so "ready" means the audit
-- store can commit now (a full disk fails this write), not only that it answers.
CREATE TABLE audit_readiness (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT    NOT NULL
);
INSERT INTO audit_readiness (id, checked_at) VALUES (1, '');
