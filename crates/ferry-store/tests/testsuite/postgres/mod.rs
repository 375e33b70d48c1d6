//! The PostgreSQL lease table against the conformance suite, through one handle and
//! through two handles (as two processes would), plus what only PostgreSQL has: races over
//! many connections and OS processes, a property test of random interleavings against a
//! model of the rules, the errors an operator meets (unreachable server, wrong password,
//! missing database or table, another schema version), schema set-up, index use of the
//! expiry scan, bounded calls when the database is locked, frozen or restarted, and TLS
//! (the conformance suite over a checked TLS connection, and the refusals an operator meets:
//! no TLS on the server, a certificate of another CA or for another host name).
//!
//! Every test starts its own private server (`ferry_testkit::PgServer`). Without the
//! PostgreSQL server binaries the tests print why and pass, except under `CI=true`, where
//! they fail.

use ferry_testkit::PgServer;

use ferry_store::postgres::PostgresStore;

use crate::common::CALL_TIMEOUT;

/// A private server for this test, or return (skipping) when PostgreSQL is not installed.
macro_rules! pg_server {
    () => {
        match ::ferry_testkit::PgServer::start_or_skip() {
            Some(server) => server,
            None => return,
        }
    };
}

/// [`pg_server!`] with `ssl=on` and a certificate from a throw-away CA.
macro_rules! tls_pg_server {
    () => {
        match ::ferry_testkit::PgServer::start_with_tls_or_skip() {
            Some(server) => server,
            None => return,
        }
    };
}

mod bounds;
mod conformance;
mod errors;
mod failover;
mod model;
mod races;
mod schema;
mod tls;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, CALL_TIMEOUT).await.expect("open")
}

async fn open_and_init(url: &str) -> PostgresStore {
    PostgresStore::open_and_init(url, CALL_TIMEOUT).await.expect("open and init")
}

/// A new schema on the server and a data source whose `search_path` is it, so each
/// conformance check gets an empty lease table of its own.
async fn fresh_schema(pg: &PgServer, schema: &str) -> String {
    pg.execute(&format!("CREATE SCHEMA {schema}")).await.expect("create schema");
    format!("{}?options=-c%20search_path%3D{schema}", pg.url())
}

async fn query_one<T>(pg: &PgServer, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    pg.client().await.expect("client").query_one(sql, &[]).await.expect("query").get(0)
}
