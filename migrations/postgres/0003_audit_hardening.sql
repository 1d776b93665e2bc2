-- Hardening the audit log against the database's own users (issue 13):
--
-- * TRUNCATE bypasses row triggers, so it gets statement triggers of its own on
--   both audit tables.
-- * The pruning flag stackpass.pruning is a setting any session may set; it now
--   counts only for a role that owns audit_records (the migration owner, see
--   `stackpass audit setup-postgres`). The runtime role cannot delete at all:
--   it is never granted DELETE, and the flag does not help it if it ever were.
-- * The chain's start (audit_chain) moves only forward, only by a prune, and
--   its row cannot be deleted. Appenders still lock it with SELECT ... FOR UPDATE,
--   which fires no UPDATE trigger.

CREATE FUNCTION audit_refuse_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: TRUNCATE of % is refused', TG_TABLE_NAME;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate();

CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_chain
FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate();

-- Whether this transaction is a prune run by the tables' owner.
CREATE FUNCTION audit_pruning_by_owner(relation oid) RETURNS boolean AS $$
    SELECT current_setting('stackpass.pruning', true) = 'on'
       AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = relation), 'USAGE');
$$ LANGUAGE sql STABLE;

CREATE OR REPLACE FUNCTION audit_records_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND audit_pruning_by_owner(TG_RELID) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit records are append-only';
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION audit_chain_forward_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND audit_pruning_by_owner(TG_RELID)
       AND NEW.id = OLD.id AND NEW.start_seq > OLD.start_seq THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit chain''s start moves only forward, and only by `stackpass audit prune`';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_chain_forward_only BEFORE UPDATE OR DELETE ON audit_chain
FOR EACH ROW EXECUTE FUNCTION audit_chain_forward_only();
