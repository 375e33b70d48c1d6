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
    SELECT 2 WHERE NOT EXISTS (SELECT 1 FROM ferry_schema);

-- Version 2 only adds ferry_authority (below): a version-1 table is upgraded in place.
UPDATE ferry_schema SET version = 2 WHERE version = 1;

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

-- Which database server the lease clocks were last restarted for (DESIGN §3 rule 11): one
-- row, the identity of the primary (system identifier, timeline, postmaster start) and when
-- a ferry process first saw it. A process that connects to a server whose identity is not
-- this row's (a promoted standby, a restarted or moved primary) rewrites the row and, in the
-- same transaction, extends every held lease to at least a full TTL from the new server's
-- clock (extend, never shorten), because that clock is not the one the expiries were
-- computed with.
CREATE TABLE IF NOT EXISTS ferry_authority (
    singleton         boolean     NOT NULL PRIMARY KEY DEFAULT true CHECK (singleton),
    system_identifier text        NOT NULL,
    timeline          bigint      NOT NULL,
    started_at        timestamptz NOT NULL,
    since             timestamptz NOT NULL
);
