-- An approval binds what it showed the approver: the mode, the grant's facts
-- (canonical JSON) and their SHA-256 digest, besides the provider, role and
-- duration that 0002 already stores. Every state change bumps `version`
-- (compare-and-set), and an approved request is `used` by exactly one
-- issuance (`used_at`). Requests written before this migration have no
-- binding (NULL) and can never be used; their requesters ask again.
ALTER TABLE access_requests ADD COLUMN mode TEXT;
ALTER TABLE access_requests ADD COLUMN grant_facts TEXT;
ALTER TABLE access_requests ADD COLUMN grant_digest TEXT;
ALTER TABLE access_requests ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE access_requests ADD COLUMN used_at TEXT;
