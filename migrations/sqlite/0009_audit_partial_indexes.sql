-- The credential and actor indexes hold only the records that have one
-- (issue 17). Most records have neither (a decision or an intent names no
-- credential; a person asking for themselves has no actor), yet each one
-- still dirtied a page of both indexes, and a commit writes every page it
-- dirtied: about a fifth of the WAL frames per commit. Every query that uses
-- them names a value (`credential_id = ?`, or the agent quota's
-- `actor IS NOT NULL AND actor = ?`), which a partial index serves.
DROP INDEX audit_records_credential;
CREATE INDEX audit_records_credential ON audit_records (credential_id)
    WHERE credential_id IS NOT NULL;
DROP INDEX audit_records_actor;
CREATE INDEX audit_records_actor ON audit_records (actor, seq)
    WHERE actor IS NOT NULL;
