-- Hardening the audit log (issue 13): the chain's start (audit_chain) moves only
-- forward and its row cannot be deleted. Whoever can write the SQLite file can
-- still drop these triggers; `stackpass audit verify` then catches a start that
-- no chained audit_pruned record names, and shipped checkpoints catch the rest.
CREATE TRIGGER audit_chain_forward_only BEFORE UPDATE ON audit_chain
WHEN NEW.id <> OLD.id OR NEW.start_seq <= OLD.start_seq
BEGIN
    SELECT RAISE(ABORT, 'the audit chain''s start moves only forward, and only by `stackpass audit prune`');
END;

CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_chain
BEGIN
    SELECT RAISE(ABORT, 'the audit chain''s start cannot be deleted');
END;
