-- The chain's hashes lose their UNIQUE index (issue 17); see the SQLite
-- migration of the same name for why. Each hash is a SHA-256, so every append
-- landed on a random page of that index; nothing looks records up by hash, and
-- a record is unique by its seq, which its hash covers.
ALTER TABLE audit_records DROP CONSTRAINT audit_records_hash_key;
