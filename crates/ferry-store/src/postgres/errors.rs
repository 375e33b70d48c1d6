//! What went wrong, as the operator reads it. [`Failure`] is what a call ran into, before
//! the data source is attached; [`Failure::into_store_error`] makes it the crate's
//! `StoreError` (a statement the server cancelled at the call timeout is a `Timeout`, a
//! missing table or database a `Schema` error that says how to create it, a refusal of the
//! rules stays what it is, anything else is `Unavailable`), classifying tokio-postgres's
//! errors by SQLSTATE and, where it has no kind, by its message. [`PgProblem`] is the source
//! of an `Unavailable`: each names the server, user or file concerned and says what to do,
//! and none shows a password.

use tokio_postgres::error::SqlState;

use super::authority::Identity;
use super::{tls, SCHEMA_VERSION};
use crate::rules::{self, CorruptRow, SchemaProblem};
use crate::StoreError;

/// What errors need to name: the data source (redacted), user, database and address.
#[derive(Debug, Clone)]
pub(super) struct Names {
    pub(super) data_source: String,
    pub(super) user: String,
    pub(super) database: String,
    pub(super) target: String,
    /// The root certificate file the server's certificate is checked against, if any.
    pub(super) root_cert: Option<String>,
    /// The call timeout.
    pub(super) timeout_ms: u64,
}

/// What went wrong inside a call, before the data source is attached.
pub(super) enum Failure {
    /// Making a connection failed.
    Connect(tokio_postgres::Error),
    /// A host took the connection but had not answered within the connect timeout.
    ConnectTimeout {
        after_ms: u128,
    },
    Sql(tokio_postgres::Error),
    Corrupt(CorruptRow),
    Schema(SchemaProblem),
    Store(StoreError),
    /// The row kept changing under a take (only while the table is being reset).
    Busy(String),
    PoolClosed,
    /// The server is a former primary: a timeline behind one this store already used.
    Stale {
        found: Identity,
        seen: Identity,
    },
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<CorruptRow> for Failure {
    fn from(e: CorruptRow) -> Self {
        Failure::Corrupt(e)
    }
}

impl Failure {
    /// Whether the call may be tried again at once, on another connection: the server was
    /// not reached, went away, is (still) a standby, or is a former primary. What happens
    /// during a failover; a lease call is idempotent (a retried take or renewal whose first
    /// answer was lost finds its own row), so retrying within the call timeout is safe.
    pub(super) fn is_retryable(&self) -> bool {
        match self {
            Failure::Connect(e) => tls::failure(e).is_none() && e.code().is_none_or(is_failover_state),
            Failure::Sql(e) => match e.code() {
                Some(c) => is_failover_state(c),
                None => e.is_closed() || is_transport(e),
            },
            Failure::Stale { .. } | Failure::ConnectTimeout { .. } => true,
            _ => false,
        }
    }

    /// The message the operator would read, for logs of retried attempts.
    pub(super) fn describe(&self, names: &Names) -> String {
        let copy = match self {
            Failure::Stale { found, seen } => Failure::Stale { found: found.clone(), seen: seen.clone() },
            Failure::Connect(e) | Failure::Sql(e) => return format!("{e}"),
            _ => return "a lease call failed".to_string(),
        };
        copy.into_store_error(names).to_string()
    }

    pub(super) fn into_store_error(self, names: &Names) -> StoreError {
        let data_source = &names.data_source;
        let unavailable = |problem: PgProblem| StoreError::Unavailable {
            data_source: data_source.clone(),
            source: Box::new(problem),
        };
        match self {
            Failure::Store(e) => e,
            Failure::Schema(problem) => problem.into_store_error(data_source, SCHEMA_VERSION),
            Failure::Corrupt(e) => unavailable(PgProblem::Corrupt(e)),
            Failure::Busy(name) => unavailable(PgProblem::Busy { name }),
            Failure::PoolClosed => unavailable(PgProblem::PoolClosed),
            Failure::ConnectTimeout { after_ms } => {
                unavailable(PgProblem::Unanswered { target: names.target.clone(), after_ms })
            }
            Failure::Stale { found, seen } => {
                unavailable(PgProblem::Stale { target: names.target.clone(), found, seen })
            }
            Failure::Connect(e) => {
                let user = names.user.clone();
                let target = names.target.clone();
                if let Some(failure) = tls::failure(&e) {
                    let root = names.root_cert.clone().unwrap_or_else(|| "(none)".to_string());
                    return unavailable(match failure {
                        tls::TlsFailure::NotOffered => PgProblem::TlsNotOffered { target },
                        tls::TlsFailure::Untrusted => PgProblem::CertUntrusted { target, root, source: e },
                        tls::TlsFailure::WrongHost => PgProblem::CertWrongHost { target, source: e },
                        tls::TlsFailure::Refused => PgProblem::CertRefused { target, source: e },
                        tls::TlsFailure::Handshake => PgProblem::Tls { target, source: e },
                    });
                }
                match e.code() {
                    Some(c)
                        if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                    {
                        unavailable(PgProblem::Auth { user, source: e })
                    }
                    Some(c) if *c == SqlState::INVALID_CATALOG_NAME => StoreError::Schema {
                        data_source: data_source.clone(),
                        detail: format!(
                            "database {db:?} does not exist; create it (`createdb --owner \
                             {user} {db}`) and run `ferry leasing init --data-source \
                             {data_source}`",
                            db = names.database,
                        ),
                    },
                    Some(_) => unavailable(PgProblem::Refused { target: names.target.clone(), source: e }),
                    None if is_password_missing(&e) => unavailable(PgProblem::NoPassword { user, source: e }),
                    None => unavailable(PgProblem::Connect { target: names.target.clone(), source: e }),
                }
            }
            Failure::Sql(e) => match e.code() {
                Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_COLUMN => {
                    let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
                    rules::malformed(data_source, message)
                }
                // The server's `statement_timeout` equals the call timeout.
                Some(c) if *c == SqlState::QUERY_CANCELED || *c == SqlState::LOCK_NOT_AVAILABLE => {
                    StoreError::Timeout { data_source: data_source.clone(), timeout_ms: names.timeout_ms }
                }
                Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
                    unavailable(PgProblem::Privilege { user: names.user.clone(), source: e })
                }
                Some(c)
                    if *c == SqlState::READ_ONLY_SQL_TRANSACTION
                        || *c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE =>
                {
                    unavailable(PgProblem::ReadOnly { target: names.target.clone(), source: e })
                }
                None if e.is_closed() || is_transport(&e) => {
                    unavailable(PgProblem::Lost { target: names.target.clone(), source: e })
                }
                _ => unavailable(PgProblem::Query(e)),
            },
        }
    }
}

/// The states a server passes through in a failover: shutting down, starting up, read-only
/// (a standby, or a primary being demoted).
fn is_failover_state(c: &SqlState) -> bool {
    *c == SqlState::ADMIN_SHUTDOWN
        || *c == SqlState::CRASH_SHUTDOWN
        || *c == SqlState::CANNOT_CONNECT_NOW
        || *c == SqlState::READ_ONLY_SQL_TRANSACTION
        || *c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
}

/// Whether tokio-postgres failed to talk to the server (rather than the server refusing
/// the query): it has no public kind for this, only its message.
fn is_transport(e: &tokio_postgres::Error) -> bool {
    e.to_string() == "error communicating with the server"
}

/// tokio-postgres reports a password the server asked for and nobody gave as a
/// configuration error with this text.
fn is_password_missing(e: &tokio_postgres::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.to_string() == "password missing")
}

/// Why the PostgreSQL lease table could not answer: the source of `StoreError::Unavailable`.
#[derive(Debug, thiserror::Error)]
pub(super) enum PgProblem {
    #[error(
        "the data source is not a valid PostgreSQL URL; use \
         postgres://USER@HOST:PORT/DATABASE"
    )]
    Url(#[source] tokio_postgres::Error),
    #[error(
        "sslmode={value} is not known; use disable, allow, prefer (the default), require, \
         verify-ca or verify-full"
    )]
    SslModeUnknown { value: String },
    #[error(
        "sslrootcert=system (the operating system's trusted roots) is not supported; give the \
         path of a PEM file holding the CA certificate(s) that signed the server's certificate"
    )]
    RootCertSystem,
    #[error(
        "sslmode={mode} checks the server's certificate, but no root certificate was given; \
         set sslrootcert=PATH in the data source or PGSSLROOTCERT, or put the CA certificate \
         in ~/.postgresql/root.crt (sslmode=require encrypts without checking)"
    )]
    NoRootCert { mode: &'static str },
    #[error(
        "cannot read the root certificate file {path}; check the path (sslrootcert in the \
         data source, PGSSLROOTCERT or ~/.postgresql/root.crt) and its permissions"
    )]
    RootCertUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the root certificate file {path} holds no usable PEM certificate; it must hold the \
         CA certificate(s) that signed the server's certificate, in PEM"
    )]
    RootCertInvalid {
        path: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("cannot set up TLS")]
    TlsSetup(#[source] rustls::Error),
    #[error(
        "the PostgreSQL server at {target} does not offer TLS, which the data source requires \
         (sslmode=require, verify-ca or verify-full); turn ssl on in the server's \
         postgresql.conf, or use sslmode=prefer to allow plain connections"
    )]
    TlsNotOffered { target: String },
    #[error(
        "the certificate of the PostgreSQL server at {target} is not trusted: no certificate \
         in the root certificate file {root} issued it; put the CA certificate that signed \
         the server's certificate in that file, or name the right file (sslrootcert=PATH in \
         the data source, PGSSLROOTCERT)"
    )]
    CertUntrusted {
        target: String,
        root: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the certificate of the PostgreSQL server at {target} is not valid for that host \
         name; connect by a name the certificate lists, or use sslmode=verify-ca to check \
         the issuer only"
    )]
    CertWrongHost {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the certificate of the PostgreSQL server at {target} was refused; if it has expired \
         or is not valid yet, renew it or check this machine's clock"
    )]
    CertRefused {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the TLS handshake with the PostgreSQL server at {target} failed")]
    Tls {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot connect to the PostgreSQL server at {target}; check that it runs and \
         accepts connections there"
    )]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the PostgreSQL server at {target} refused the connection")]
    Refused {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "authentication failed for user {user}; check the user and password (in the data \
         source, PGPASSWORD or the password file) and the server's pg_hba.conf"
    )]
    Auth {
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the server asks for a password for user {user} and none was given; put it in the \
         data source, PGPASSWORD or the password file (~/.pgpass)"
    )]
    NoPassword {
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the PostgreSQL server at {target} is read-only (a standby?); point the data source \
         at the primary, or list every host and add target_session_attrs=read-write"
    )]
    ReadOnly {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "user {user} lacks a privilege on the lease table; grant it SELECT, INSERT and \
         UPDATE on ferry_leases and SELECT on ferry_schema (`ferry leasing init` also needs \
         CREATE on the schema), or let a DBA run schema/postgres.sql"
    )]
    Privilege {
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "no PostgreSQL server at {target} answered within {after_ms} ms of being connected to; \
         check that it runs and is not stopped or overloaded, or raise connect_timeout in the \
         data source"
    )]
    Unanswered { target: String, after_ms: u128 },
    #[error("lost the connection to the PostgreSQL server at {target}")]
    Lost {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("query failed")]
    Query(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Corrupt(CorruptRow),
    #[error("the row of {name} kept changing while it was being taken; try again")]
    Busy { name: String },
    #[error("the connection pool is closed")]
    PoolClosed,
    #[error(
        "the PostgreSQL server reached through {target} is on {found}, behind timeline {} \
         that this process already used: it is a former primary that came back after a \
         failover, and ferry does not write to it; rebuild it as a standby of the new primary \
         (pg_rewind or pg_basebackup) or take it out of the data source",
        seen.timeline
    )]
    Stale { target: String, found: Identity, seen: Identity },
}
