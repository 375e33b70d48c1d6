//! The connections of a [`PostgresStore`](super::PostgresStore): at most `pool_size`, made on
//! demand in a task of their own (so a connection slower than one call timeout is still
//! made, for the next call), each session set up with the call timeout as its
//! `statement_timeout` and `idle_in_transaction_session_timeout` and with
//! `synchronous_commit` on (rules 7 and 8), and closed rather than reused after any call
//! that did not end cleanly.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::authority::{self, Authorities, Identity};
use super::config::{self, DataSource, PostgresOptions};
use super::errors::{Failure, Names};
use super::operations::read_version;
use super::SCHEMA_VERSION;
use crate::rules::Version;
use crate::Result;

/// Bounds of the connect timeout of a new connection (made in the background, see
/// [`Pool::lend`]).
const BACKGROUND_CONNECT_MIN: Duration = Duration::from_secs(1);
const BACKGROUND_CONNECT_MAX: Duration = Duration::from_secs(10);

/// Bounds of the head start one host gets before the next is asked too (half a call).
const HEAD_START_MIN: Duration = Duration::from_millis(50);
const HEAD_START_MAX: Duration = Duration::from_secs(1);

/// How connections are made (`tls.rs` decides which).
#[derive(Clone)]
pub(super) enum Transport {
    /// TCP or a Unix socket without TLS.
    Plain,
    /// TLS, negotiated as the config's `ssl_mode` says (`Prefer`: falls back to plain when
    /// the server does not offer it; `Require`: fails), checked as the connector says.
    Tls(MakeRustlsConnect),
}

impl Transport {
    async fn connect(&self, config: &Config) -> Result<Client, tokio_postgres::Error> {
        match self {
            Transport::Plain => Ok(drive(config.connect(NoTls).await?)),
            Transport::Tls(connector) => Ok(drive(config.connect(connector.clone()).await?)),
        }
    }
}

/// Runs a connection's I/O on its own task; the client is what the pool keeps.
fn drive<S, T>((client, connection): (Client, tokio_postgres::Connection<S, T>)) -> Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    client
}

/// At most `size` connections, made on demand and kept while they stay clean.
pub(super) struct Pool {
    /// How new connections are made: in a task of their own, with a connect timeout longer
    /// than a call's (see [`Pool::lend`]); one config per host of the data source, tried in
    /// its order ([`config::per_host`]).
    configs: Vec<Config>,
    /// The bound on making one connection, from the TCP connect to the server identified
    /// (tokio-postgres bounds the TCP connect only).
    connect_timeout: Duration,
    /// How long an unanswered host is waited for before the next is asked as well, and, at
    /// first contact, how long the other hosts may still answer once one primary has.
    head_start: Duration,
    /// The host of the last connection made (`usize::MAX`: none yet), asked first.
    preferred: AtomicUsize,
    pub(super) transport: Transport,
    /// Run once on each new connection (rule 7 and 8 settings).
    session_sql: String,
    idle: Mutex<Vec<Conn>>,
    slots: Arc<Semaphore>,
    pub(super) size: usize,
    pub(super) names: Names,
    /// TLS without checking the server's certificate (`sslmode=require`, no root file).
    pub(super) unverified: bool,
    /// The servers seen behind the data source (rule 11).
    authorities: Authorities,
    warned_version_1: AtomicBool,
}

struct Conn {
    client: Client,
    /// The server this connection reached (rule 11).
    identity: Identity,
    /// Whether `ferry_schema` has been seen at [`SCHEMA_VERSION`] through this connection,
    /// and the server compared with the recorded authority.
    schema_checked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// Check `ferry_schema` once per connection before the first lease call.
    Schema,
    /// `open`, `init` and `reset` look at the schema themselves (or not at all).
    Nothing,
}

impl Pool {
    pub(super) fn new(data_source: &str, options: &PostgresOptions) -> Result<Pool> {
        let DataSource { mut config, transport, names, unverified } = DataSource::read(data_source, options)?;
        // A new connection is made in a task of its own that outlives a call that gave up
        // waiting for it (`Pool::lend`): a database that takes longer than one call timeout
        // to accept a connection (a TLS or SCRAM handshake on a loaded host) is then still
        // reached, by the next call, instead of never. Calls stay bounded by their timeout.
        let connect_timeout = options
            .connect_timeout
            .max(options.call_timeout * 10)
            .clamp(BACKGROUND_CONNECT_MIN, BACKGROUND_CONNECT_MAX);
        config.connect_timeout(connect_timeout);
        // Notice dead peers of idle pooled connections within seconds, not hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(1));
        config.keepalives_retries(3);
        config.tcp_user_timeout(options.call_timeout.max(Duration::from_millis(1)));
        let timeout_ms = options.call_timeout.as_millis().clamp(1, i32::MAX as u128);
        let session_sql = format!(
            "SET statement_timeout = {timeout_ms}; \
             SET idle_in_transaction_session_timeout = {timeout_ms}; \
             SET client_min_messages = warning; \
             SELECT set_config('synchronous_commit', 'on', false) \
                 WHERE current_setting('synchronous_commit') = 'off'"
        );
        let size = options.pool_size.max(1);
        Ok(Pool {
            configs: config::per_host(&config),
            connect_timeout,
            head_start: (options.call_timeout / 2).clamp(HEAD_START_MIN, HEAD_START_MAX),
            preferred: AtomicUsize::new(usize::MAX),
            transport,
            session_sql,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(size)),
            size,
            names,
            unverified,
            authorities: Authorities::default(),
            warned_version_1: AtomicBool::new(false),
        })
    }

    /// Once per store: a version-1 table is used as it is, without rule 11.
    fn warn_version_1(&self) {
        if !self.warned_version_1.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                data_source = %self.names.data_source,
                "the lease table has schema version 1: it is used as it is, but a database \
                 failover is not noticed (DESIGN §3 rule 11: a new primary whose clock is ahead \
                 may expire every lease at once); once every ferry daemon of the domain runs \
                 this version, run `ferry leasing init` to upgrade it in place (every lease is kept)"
            );
        }
    }

    /// How many hosts the data source lists.
    pub(super) fn hosts(&self) -> usize {
        self.configs.len()
    }

    /// A connection for one call: an idle one, or a new one while the pool has room.
    pub(super) async fn lend(self: &Arc<Self>, check: Check) -> Result<Lent, Failure> {
        let slot = Arc::clone(&self.slots).acquire_owned().await.map_err(|_| Failure::PoolClosed)?;
        let idle = loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some(conn) if conn.client.is_closed() => continue,
                // A former primary since a failover this store saw: closed, never used.
                Some(conn) if self.authorities.is_stale(&conn.identity) => continue,
                other => break other,
            }
        };
        let (mut conn, slot) = match idle {
            Some(conn) => (conn, slot),
            None => {
                // The connection is made in a task that holds the slot: if this call times out
                // meanwhile, the task goes on and leaves the connection in the pool for the
                // next call.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let pool = Arc::clone(self);
                tokio::spawn(async move {
                    let made = pool.connect_any().await;
                    if let Err(Ok((conn, slot))) = tx.send(made.map(|c| (c, slot))) {
                        // Nobody waits any more: keep it for the next call.
                        if !conn.client.is_closed() {
                            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                        }
                        drop(slot);
                    }
                });
                rx.await.map_err(|_| Failure::PoolClosed)??
            }
        };
        if check == Check::Schema && !conn.schema_checked {
            match read_version(&conn.client).await? {
                // A rolling upgrade: the daemons already run this version, the table is
                // upgraded once all of them do (version 1 lacks only `ferry_authority`).
                Version::Is(1) => self.warn_version_1(),
                version => {
                    version.check(SCHEMA_VERSION).map_err(Failure::Schema)?;
                    authority::check(&conn.client, &conn.identity).await?;
                }
            }
            conn.schema_checked = true;
        }
        Ok(Lent { conn: Some(conn), pool: Arc::clone(self), _slot: slot })
    }

    /// A new connection to a host that accepts one as the data source asks
    /// (`target_session_attrs`), is a primary (a standby is never used, not even for reads)
    /// and is not a former primary (rule 11); else the last failure, or a former primary's
    /// refusal if there was one (the one the operator must act on).
    ///
    /// The host of the last connection is asked first, then the others in the data source's
    /// order, each after the one before failed or had [`Pool::head_start`] without an
    /// answer: a host that accepts TCP and never answers delays a connection by a head
    /// start, not a connect timeout. The first time (this process has seen no server yet)
    /// every host is asked at once and the answers within a head start of the first primary
    /// are compared, so a process started after a split learns the latest timeline before
    /// it uses any host, instead of taking a former primary listed first for the primary.
    async fn connect_any(&self) -> Result<Conn, Failure> {
        let first_contact = self.configs.len() > 1 && !self.authorities.has_seen();
        let preferred = self.preferred.load(Ordering::Relaxed);
        let mut order: Vec<usize> = (0..self.configs.len()).collect();
        if let Some(at) = order.iter().position(|&i| i == preferred) {
            order[..=at].rotate_right(1);
        }
        let mut waiting = order.into_iter();
        let mut asked = FuturesUnordered::new();
        let mut answered: Vec<(usize, Conn)> = Vec::new();
        let mut failures = Failures::default();
        let mut settled_at: Option<Instant> = None;
        let mut next_at = Instant::now();
        loop {
            if asked.is_empty() || first_contact || Instant::now() >= next_at {
                if let Some(host) = waiting.next() {
                    asked.push(async move { (host, self.connect_one(&self.configs[host]).await) });
                    next_at = Instant::now() + self.head_start;
                    continue;
                }
            }
            if asked.is_empty() {
                break;
            }
            tokio::select! {
                Some((host, made)) = asked.next() => match made {
                    // At first contact every answer is compared below: only the latest
                    // timeline of each system is admitted.
                    Ok(conn) if first_contact => {
                        let _ = self.authorities.admit(&conn.identity);
                        answered.push((host, conn));
                        settled_at.get_or_insert(Instant::now() + self.head_start);
                    }
                    Ok(conn) => match self.admit(conn) {
                        Ok(conn) => return Ok(self.chosen(host, conn)),
                        Err(failure) => failures.note(failure),
                    },
                    Err(failure) => failures.note(failure),
                },
                () = tokio::time::sleep_until(next_at), if waiting.len() > 0 && !first_contact => {}
                () = tokio::time::sleep_until(settled_at.unwrap_or(next_at)), if settled_at.is_some() => break,
            }
        }
        answered.sort_by_key(|(host, _)| *host);
        for (host, conn) in answered {
            match self.admit(conn) {
                Ok(conn) => return Ok(self.chosen(host, conn)),
                Err(failure) => failures.note(failure),
            }
        }
        Err(failures.into_failure())
    }

    fn chosen(&self, host: usize, conn: Conn) -> Conn {
        self.preferred.store(host, Ordering::Relaxed);
        conn
    }

    /// The connection, unless its server is a former primary.
    fn admit(&self, conn: Conn) -> Result<Conn, Failure> {
        self.authorities.admit(&conn.identity).map(|()| conn)
    }

    /// A connection to one host, its session set up and its server identified.
    async fn connect_one(&self, config: &Config) -> Result<Conn, Failure> {
        let connect = async {
            let client = self.transport.connect(config).await.map_err(Failure::Connect)?;
            client.batch_execute(&self.session_sql).await?;
            let identity = authority::identify(&client).await?;
            Ok(Conn { client, identity, schema_checked: false })
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| Failure::ConnectTimeout { after_ms: self.connect_timeout.as_millis() })?
    }
}

/// What a connection attempt over several hosts failed with: the last failure, unless a
/// former primary refused, the one the operator must act on.
#[derive(Default)]
struct Failures {
    last: Option<Failure>,
    stale: Option<Failure>,
}

impl Failures {
    fn note(&mut self, failure: Failure) {
        match failure {
            Failure::Stale { .. } => self.stale = Some(failure),
            other => self.last = Some(other),
        }
    }

    fn into_failure(self) -> Failure {
        self.stale.or(self.last).unwrap_or(Failure::PoolClosed)
    }
}

/// A connection lent for one call. Dropped without [`Lent::give_back`] (an error, a
/// timeout, a panic), it is closed, so no half-finished transaction is ever reused.
pub(super) struct Lent {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    _slot: OwnedSemaphorePermit,
}

impl Lent {
    pub(super) fn client(&self) -> Result<&Client, Failure> {
        self.conn.as_ref().map(|c| &c.client).ok_or(Failure::PoolClosed)
    }

    pub(super) fn give_back(mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        }
    }

    /// Keeps the connection after a success or a refusal (its transaction was ended);
    /// closes it after anything else.
    pub(super) fn finish<T>(self, result: Result<T, Failure>) -> Result<T, Failure> {
        if matches!(result, Ok(_) | Err(Failure::Store(_))) {
            self.give_back();
        }
        result
    }

    /// `finish` for `init` and `reset`: the connection is kept after success (its first
    /// lease call then checks the schema and the authority, rule 11).
    pub(super) fn finish_creating<T>(self, result: Result<T, Failure>) -> Result<T, Failure> {
        if result.is_ok() {
            self.give_back();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::PostgresStore;

    #[tokio::test]
    async fn sessions_over_tls_are_encrypted_and_verified() {
        let Some(pg) = ferry_testkit::PgServer::start_with_tls_or_skip() else {
            return;
        };
        let Some(ca) = pg.ca_cert_path() else {
            panic!("a TLS test server has a CA");
        };
        let options = PostgresOptions { ssl_root_cert: Some(ca), ..PostgresOptions::new(Duration::from_secs(10)) };
        let store =
            PostgresStore::open_with(&format!("{}?sslmode=require", pg.url()), options).await.expect("open over TLS");
        assert!(!store.pool.unverified);
        let Ok(lent) = store.pool.lend(Check::Nothing).await else {
            panic!("no connection from the pool");
        };
        let Ok(c) = lent.client() else {
            panic!("the lent connection is gone");
        };
        let row = c
            .query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .expect("pg_stat_ssl");
        assert!(row.get::<_, bool>(0), "the store's own session is not encrypted");
        let version: String = row.get(1);
        assert!(version.starts_with("TLSv1.") && version != "TLSv1.1", "{version}");
    }

    #[tokio::test]
    async fn sessions_keep_synchronous_commit_on_and_bound_every_statement() {
        let Some(pg) = ferry_testkit::PgServer::start_or_skip() else {
            return;
        };
        pg.execute("ALTER DATABASE ferry SET synchronous_commit = off")
            .await
            .expect("turn synchronous commit off for the database");
        // A plain session sees the database's setting, so the check below means something.
        let plain = pg.client().await.expect("client");
        assert_eq!(show(&plain, "synchronous_commit").await, "off");

        let store = PostgresStore::open(&pg.url(), Duration::from_millis(1500)).await.expect("open");
        let Ok(lent) = store.pool.lend(Check::Nothing).await else {
            panic!("no connection from the pool");
        };
        let Ok(c) = lent.client() else {
            panic!("the lent connection is gone");
        };
        assert_eq!(show(c, "synchronous_commit").await, "on");
        assert_eq!(show(c, "statement_timeout").await, "1500ms");
        assert_eq!(show(c, "idle_in_transaction_session_timeout").await, "1500ms");
        assert_eq!(show(c, "application_name").await, "ferry");
    }

    async fn show(c: &Client, what: &str) -> String {
        let rows = c.simple_query(&format!("SHOW {what}")).await.expect("show");
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .expect("a value")
    }
}
