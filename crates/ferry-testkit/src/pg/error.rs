//! What can go wrong starting or driving a test server.

/// What went wrong starting or driving a test server.
#[derive(Debug, thiserror::Error)]
pub enum PgServerError {
    /// The server binaries are not installed.
    #[error(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and \
         PATH){}; apt-get install postgresql",
        if *.required { " and CI=true requires them" } else { "" }
    )]
    NotFound {
        /// True under `CI=true`: the tests must not be skipped.
        required: bool,
    },
    /// A command ran but failed.
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Talking SQL to the server failed.
    #[error("{what}")]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PgServerError {
    /// Whether a test should skip rather than fail: the binaries are missing and this is
    /// not CI.
    pub fn is_skip(&self) -> bool {
        matches!(self, PgServerError::NotFound { required: false })
    }
}

pub(super) type Result<T, E = PgServerError> = std::result::Result<T, E>;
