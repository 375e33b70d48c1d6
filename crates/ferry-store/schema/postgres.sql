-- The lease table for PostgreSQL (DESIGN §3): the equivalent of WebLogic's leasing.ddl.
--
-- `ferry leasing init --data-source postgres://...` runs this file inside one transaction
-- (under an advisory lock, so concurrent inits do not race); every statement is idempotent,
-- so running it twice changes nothing. A DBA may also run it by hand:
--     psql --single-transaction -f postgres.sql "postgres://USER@HOST/DATABASE"
-- The tables go into the first schema of the connection's search_path.
--
-- Times are timestamps of the database server's clock (rule 1): ferry-store reads
-- clock_timestamp() / now() inside its statements and never writes a caller's time. They
-- are stored in whole milliseconds.
--
-- Durability (rule 8) is the server's synchronous commit, not a table option: ferry-store
-- turns `synchronous_commit` back on for its sessions if the server or database has it off.

CREATE TABLE IF NOT EXISTS ferry_schema (
    version integer NOT NULL
);

INSERT INTO ferry_schema (version)
    SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM ferry_schema);

CREATE TABLE IF NOT EXISTS ferry_leases (
    -- `server/ms1`, `master/cluster-1`; bytewise order ("C"), as in SQLite, whatever the
    -- database's default collation
    name        text COLLATE "C" NOT NULL PRIMARY KEY,
    -- the server that holds (or last held) the lease, its machine and process start
    owner       text        NOT NULL,
    machine     text        NOT NULL,
    incarnation text        NOT NULL,
    -- the fencing token: bumped on every change of owner or incarnation, never lowered
    epoch       bigint      NOT NULL CHECK (epoch >= 1),
    state       text        NOT NULL CHECK (state IN ('held', 'released')),
    expires_at  timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL
);

-- The master's expiry scan and next-expiry look-up read only held rows by their expiry, so
-- their cost follows the number of expired leases, not the size of the table (released
-- rows are left out).
CREATE INDEX IF NOT EXISTS ferry_leases_held_expiry
    ON ferry_leases (expires_at) WHERE state = 'held';
