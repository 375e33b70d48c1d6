-- The lease table for SQLite (DESIGN §3): the equivalent of WebLogic's leasing.ddl.
--
-- `ferry leasing init` runs this file inside one transaction; every statement is idempotent,
-- so running it twice changes nothing. The connection settings that rule 8 needs
-- (journal_mode=WAL, synchronous=FULL) are per connection or cannot change inside a
-- transaction, so ferry-store sets them when it opens the file, not here.
--
-- Times are milliseconds since the Unix epoch by the store's clock (rule 1): ferry-store
-- computes them inside SQLite, never from a caller's timestamp.

CREATE TABLE IF NOT EXISTS ferry_schema (
    version INTEGER NOT NULL
) STRICT;

INSERT INTO ferry_schema (version)
    SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM ferry_schema);

CREATE TABLE IF NOT EXISTS ferry_leases (
    -- `server/ms1`, `master/cluster-1`
    name          TEXT    NOT NULL PRIMARY KEY,
    -- the server that holds (or last held) the lease, its machine and process start
    owner         TEXT    NOT NULL,
    machine       TEXT    NOT NULL,
    incarnation   TEXT    NOT NULL,
    -- the fencing token: bumped on every change of owner or incarnation, never lowered
    epoch         INTEGER NOT NULL CHECK (epoch >= 1),
    state         TEXT    NOT NULL CHECK (state IN ('held', 'released')),
    expires_at_ms INTEGER NOT NULL,
    renewed_at_ms INTEGER NOT NULL
) STRICT;

-- The master's expiry scan reads only held rows past their expiry, so its cost follows the
-- number of expired leases, not the size of the table (released rows are left out).
CREATE INDEX IF NOT EXISTS ferry_leases_held_expiry
    ON ferry_leases (expires_at_ms) WHERE state = 'held';
