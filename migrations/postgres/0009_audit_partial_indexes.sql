-- The credential and actor indexes hold only the records that have one
-- (issue 17); see the SQLite migration of the same name for why. Rebuilding
-- them locks the table for writes once, for time proportional to the log.
DROP INDEX audit_records_credential;
CREATE INDEX audit_records_credential ON audit_records (credential_id)
    WHERE credential_id IS NOT NULL;
DROP INDEX audit_records_actor;
CREATE INDEX audit_records_actor ON audit_records (actor, seq)
    WHERE actor IS NOT NULL;
