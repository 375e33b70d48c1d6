//! Reading the data source as libpq would: the `postgres://` URL as tokio-postgres parses
//! it (several hosts, `hostaddr`, Unix socket directories in `host=`; the local socket when
//! no host is named), the user from `PGUSER` or the OS, the password from `PGPASSWORD` or
//! the password file, and `sslmode`/`sslrootcert` (through `tls.rs`). All of it happens
//! before the first connection, so a data source that cannot work is refused when the store
//! is opened, and every message shows the data source with its password redacted.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

use super::errors::{Names, PgProblem};
use super::pool::Transport;
use super::tls;
use crate::{Result, StoreError};

/// Connections one [`PostgresStore`](super::PostgresStore) opens at most (made on demand).
pub const DEFAULT_POOL_SIZE: usize = 4;

/// How a [`PostgresStore`](super::PostgresStore) connects and how long it waits.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The bound on every call, and the server's `statement_timeout` (rule 7).
    pub call_timeout: Duration,
    /// The bound on establishing one connection (never longer than `call_timeout`).
    pub connect_timeout: Duration,
    /// Connections this store opens at most; calls beyond it wait (within their timeout).
    pub pool_size: usize,
    /// The PEM file of the CA certificate(s) the server's TLS certificate is checked against
    /// (see the module docs for when). `sslrootcert=PATH` in the data source takes
    /// precedence; `None` means libpq's rule: `PGSSLROOTCERT`, else `~/.postgresql/root.crt`
    /// if it exists ([`PostgresStore::open_with`](super::PostgresStore::open_with) looks there).
    pub ssl_root_cert: Option<PathBuf>,
    /// `open` answers with the store even when its first connection is not made within the
    /// call timeout (it goes on being made in the background): what a store opened on
    /// first use wants, so a slow database is reached by the next call.
    pub patient_open: bool,
}

impl PostgresOptions {
    /// The defaults for a call timeout: connect within it, [`DEFAULT_POOL_SIZE`] connections,
    /// the root certificate from the environment.
    pub fn new(call_timeout: Duration) -> PostgresOptions {
        PostgresOptions {
            call_timeout,
            connect_timeout: call_timeout,
            pool_size: DEFAULT_POOL_SIZE,
            ssl_root_cert: None,
            patient_open: false,
        }
    }
}

/// A data source read: what tokio-postgres connects with and how, and what errors name.
pub(super) struct DataSource {
    pub(super) config: Config,
    pub(super) transport: Transport,
    pub(super) names: Names,
    /// TLS without checking the server's certificate (`sslmode=require`, no root file).
    pub(super) unverified: bool,
}

impl DataSource {
    /// Parses the data source and fills in what it leaves out from the environment and the
    /// options; refuses what cannot work (a bad URL, an unknown `sslmode`, a root
    /// certificate that is needed and missing or unreadable).
    pub(super) fn read(data_source: &str, options: &PostgresOptions) -> Result<DataSource> {
        let redacted = redact(data_source);
        let refuse =
            |problem: PgProblem| StoreError::Unavailable { data_source: redacted.clone(), source: Box::new(problem) };
        let (url, tls_params) = tls::take_params(data_source).map_err(&refuse)?;
        let mut config: Config = url.parse().map_err(|e| refuse(PgProblem::Url(e)))?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            // libpq's default: the local Unix socket.
            let socket_dir = std::path::Path::new("/var/run/postgresql");
            if socket_dir.is_dir() {
                config.host_path(socket_dir);
            } else {
                config.host("localhost");
            }
        }
        if config.get_user().is_none() {
            if let Some(user) = env_nonempty("PGUSER").or_else(|| env_nonempty("USER")) {
                config.user(user);
            }
        }
        let user = config.get_user().unwrap_or("(the OS user)").to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        if config.get_password().is_none() {
            if let Some(password) = password_from_env(&config, &database) {
                config.password(password);
            }
        }
        let unix_only =
            config.get_hostaddrs().is_empty() && config.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)));
        let root_cert = tls_params.root_cert.as_deref().or(options.ssl_root_cert.as_deref());
        let decision = tls::decide(&tls_params, root_cert, unix_only).map_err(&refuse)?;
        config.ssl_mode(decision.ssl_mode);
        let transport = match decision.connector {
            Some(connector) => {
                if config.get_hosts().is_empty() {
                    // tokio-postgres takes the name to check the certificate against from
                    // `host`; with addresses only, the address is that name.
                    for addr in config.get_hostaddrs().to_vec() {
                        config.host(addr.to_string());
                    }
                }
                Transport::Tls(connector)
            }
            None => Transport::Plain,
        };
        if config.get_application_name().is_none() {
            config.application_name("ferry");
        }
        let names = Names {
            data_source: redacted,
            target: target(&config),
            user,
            database,
            root_cert: decision.root_cert.map(|p| p.display().to_string()),
            timeout_ms: u64::try_from(options.call_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        Ok(DataSource { config, transport, names, unverified: decision.unverified })
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The password from `PGPASSWORD`, else from the password file, as libpq finds it.
fn password_from_env(config: &Config, database: &str) -> Option<String> {
    if let Some(password) = env_nonempty("PGPASSWORD") {
        return Some(password);
    }
    let path = match env_nonempty("PGPASSFILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::PathBuf::from(env_nonempty("HOME")?).join(".pgpass"),
    };
    let text = std::fs::read_to_string(&path).ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file has group or world access; ignored (chmod 0600 it)"
            );
            return None;
        }
    }
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) | None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = config.get_user().unwrap_or_default();
    passfile_lookup(&text, [&host, &port, database, user])
}

/// The password of the first `host:port:database:user:password` line of a password file
/// that matches (`*` matches anything, `\` escapes `:` and `\`).
fn passfile_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(ch) = chars.next() {
            match ch {
                '\\' => {
                    if let (Some(next), Some(field)) = (chars.next(), fields.last_mut()) {
                        field.push(next);
                    }
                }
                ':' if fields.len() < 5 => fields.push(String::new()),
                _ => {
                    if let Some(field) = fields.last_mut() {
                        field.push(ch);
                    }
                }
            }
        }
        if fields.len() != 5 {
            continue;
        }
        if fields[..4].iter().zip(want).all(|(pattern, value)| pattern == "*" || pattern == value) {
            return fields.pop();
        }
    }
    None
}

/// The server address(es) for messages.
fn target(config: &Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = if config.get_hosts().is_empty() {
        config.get_hostaddrs().iter().enumerate().map(|(i, a)| format!("{a}:{}", port(i))).collect()
    } else {
        config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Host::Tcp(h) => format!("{h}:{}", port(i)),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
            })
            .collect()
    };
    hosts.join(", ")
}

/// The data source without its password: `user:***@` in the authority (as everywhere in
/// ferry) and `password=***` in the query string.
pub fn redact(data_source: &str) -> String {
    let redacted = ferry_core::domain::redact_url(data_source);
    let Some((base, query)) = redacted.split_once('?') else {
        return redacted;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain;
    use crate::postgres::pool::Pool;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://ferry:s3cret@db:5432/ferry"), "postgres://ferry:***@db:5432/ferry");
        assert_eq!(
            redact("postgresql://db/ferry?user=ferry&password=s3cret&sslmode=disable"),
            "postgresql://db/ferry?user=ferry&password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://ferry@db/ferry"), "postgres://ferry@db/ferry");
    }

    #[test]
    fn password_file_lines_match_like_libpq() {
        let file = "# comment\n\
                    other:5432:*:ferry:wrong\n\
                    db:5432:ferry:ferry:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(passfile_lookup(file, ["db", "5432", "ferry", "ferry"]).as_deref(), Some("pa:ss\\word"));
        assert_eq!(passfile_lookup(file, ["db2", "5433", "x", "y"]).as_deref(), Some("fallback"));
        assert_eq!(passfile_lookup("a:b:c\n", ["a", "b", "c", "d"]), None);
    }

    #[test]
    fn urls_that_cannot_work_are_refused_before_connecting() {
        let options = PostgresOptions::new(Duration::from_secs(1));
        let refused = |url: &str| Pool::new(url, &options).err().map(|e| chain(&e)).unwrap_or_default();
        let text = refused("postgres://u:s3cret@db:notaport/x");
        assert!(text.contains("not a valid PostgreSQL URL"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let text = refused("postgres://u:s3cret@db/x?sslmode=verify");
        assert!(text.contains("sslmode=verify is not known"), "{text}");
        assert!(text.contains("postgres://u:***@db/x?sslmode=verify"), "{text}");
        let text = refused("postgres://u:s3cret@db/x?sslmode=verify-full");
        assert!(text.contains("sslmode=verify-full checks the server's certificate"), "{text}");
        assert!(text.contains("sslrootcert=PATH") && text.contains("PGSSLROOTCERT"), "{text}");
        let text = refused("postgres://u:s3cret@db/x?sslmode=require&sslrootcert=/no/such/ca.pem");
        assert!(text.contains("cannot read the root certificate file /no/such/ca.pem"), "{text}");
        let text = refused("postgres://db/x?sslmode=verify-full&sslrootcert=system");
        assert!(text.contains("sslrootcert=system"), "{text}");
        let text = refused("postgres://db/x?sslcert=/client.pem");
        assert!(text.contains("unknown option `sslcert`"), "{text}");
        for url in ["postgres://u:pw@db/x?sslmode=require", "postgres://u:pw@db/x?sslmode=disable"] {
            assert!(Pool::new(url, &options).is_ok(), "{url}");
        }
        // The root certificate of the options is checked when TLS needs it.
        let options = PostgresOptions { ssl_root_cert: Some("/no/such/root.crt".into()), ..options };
        let text =
            Pool::new("postgres://db/x?sslmode=verify-ca", &options).err().map(|e| chain(&e)).unwrap_or_default();
        assert!(text.contains("/no/such/root.crt"), "{text}");
        // Unix sockets never use TLS, as with libpq: nothing to check, no root file needed.
        let pool = Pool::new("postgres:///x?host=/run/postgresql&sslmode=verify-full", &options).ok();
        assert!(pool.is_some_and(|p| matches!(p.transport, Transport::Plain) && !p.unverified));
    }
}

/// One config per host of a multi-host data source, in the data source's order, each with
/// every other setting of `config`: the pool tries them one by one, so it can pass over a
/// host that answers but must not be used (a former primary, rule 11), which a multi-host
/// connect of tokio-postgres would pick again and again. A single host: `config` itself.
pub(super) fn per_host(config: &Config) -> Vec<Config> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let count = hosts.len().max(addrs.len());
    if count <= 1 {
        return vec![config.clone()];
    }
    let ports = config.get_ports();
    (0..count)
        .map(|i| {
            let mut one = Config::new();
            if let Some(user) = config.get_user() {
                one.user(user);
            }
            if let Some(password) = config.get_password() {
                one.password(password);
            }
            if let Some(db) = config.get_dbname() {
                one.dbname(db);
            }
            if let Some(options) = config.get_options() {
                one.options(options);
            }
            if let Some(name) = config.get_application_name() {
                one.application_name(name);
            }
            one.ssl_mode(config.get_ssl_mode());
            one.ssl_negotiation(config.get_ssl_negotiation());
            one.channel_binding(config.get_channel_binding());
            one.target_session_attrs(config.get_target_session_attrs());
            if let Some(t) = config.get_connect_timeout() {
                one.connect_timeout(*t);
            }
            if let Some(t) = config.get_tcp_user_timeout() {
                one.tcp_user_timeout(*t);
            }
            one.keepalives(config.get_keepalives());
            one.keepalives_idle(config.get_keepalives_idle());
            if let Some(t) = config.get_keepalives_interval() {
                one.keepalives_interval(t);
            }
            if let Some(n) = config.get_keepalives_retries() {
                one.keepalives_retries(n);
            }
            match hosts.get(i) {
                Some(Host::Tcp(name)) => {
                    one.host(name);
                }
                Some(Host::Unix(path)) => {
                    one.host_path(path);
                }
                None => {}
            }
            if let Some(addr) = addrs.get(i) {
                one.hostaddr(*addr);
            }
            if let Some(port) = ports.get(i).or(ports.first()) {
                one.port(*port);
            }
            one
        })
        .collect()
}

#[cfg(test)]
mod per_host_tests {
    use super::*;

    #[test]
    fn each_host_keeps_every_other_setting() {
        let config: Config =
            "postgres://u:pw@a:5432,b:5433/db?target_session_attrs=read-write&connect_timeout=3".parse().unwrap();
        let each = per_host(&config);
        assert_eq!(each.len(), 2);
        assert_eq!(each[1].get_hosts(), &[Host::Tcp("b".into())]);
        assert_eq!(each[1].get_ports(), &[5433]);
        assert_eq!(each[0].get_ports(), &[5432]);
        for one in &each {
            assert_eq!(one.get_user(), Some("u"));
            assert_eq!(one.get_password(), Some(&b"pw"[..]));
            assert_eq!(one.get_dbname(), Some("db"));
            assert_eq!(one.get_target_session_attrs(), config.get_target_session_attrs());
            assert_eq!(one.get_connect_timeout(), Some(&Duration::from_secs(3)));
        }
        let single: Config = "postgres://u@a:1/db".parse().unwrap();
        assert_eq!(per_host(&single).len(), 1);
    }
}
