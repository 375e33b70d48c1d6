//! Private PostgreSQL servers for tests and benchmarks: each [`PgServer`] is a throw-away
//! cluster in its own temporary directory, on its own port, torn down when it is dropped
//! (also when the test panics).
//!
//! Why it exists: the PostgreSQL lease table must be tested against a real server (row
//! locks, the server's clock, synchronous commit, plans), and tests of other crates need
//! one they can stop, restart and freeze to play outages. Nothing here is used by the
//! daemons; it is a normal public module so every crate's tests and the benchmark can use
//! it without a feature flag.
//!
//! How: the server binaries are Debian's (`/usr/lib/postgresql/*/bin`, the highest
//! version) or the first `initdb` on `PATH`. One initialised cluster is kept as a template
//! in the temporary directory, shared by every test process (built once, then reused), and
//! copied for each server, so a server starts in a fraction of a second. PostgreSQL refuses
//! to run as root, so as root every server command runs as the `postgres` OS user.
//!
//! The template lives in `$TMPDIR/ferry-pg-template-VERSION-fN-uUID` (about 40 MB) and is
//! kept for later runs; delete it freely. Servers of a test process killed with SIGKILL
//! are not stopped (nothing runs their `Drop`): `pg_ctl stop -D /tmp/ferry-pg-*/data`.
//!
//! The methods that start and stop servers block for a fraction of a second (they run
//! `pg_ctl`); async tests may call them directly.
//!
//! Without the binaries, [`PgServer::start`] fails with [`PgServerError::NotFound`]; tests
//! call [`PgServer::start_or_skip`], which prints why they did not run and lets them return
//! early, except under `CI=true`, where a missing server fails the test loudly.
//!
//! [`PgServer::start_with_tls`] starts a server with `ssl=on` and a certificate for
//! `localhost` and `127.0.0.1` from a throw-away CA ([`TestCa`]) made for that server alone;
//! [`PgServer::ca_cert_path`] is the CA's PEM file, the root certificate clients check the
//! server against. Plain and TLS connections are both accepted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The superuser (and owner of the [`DATABASE`]) every server is created with; it logs
/// in over TCP from 127.0.0.1 without a password.
pub const SUPERUSER: &str = "ferry";
/// The database every server has.
pub const DATABASE: &str = "ferry";
/// Members of this role must log in with a password (see
/// [`PgServer::create_user_with_password`]).
const PASSWORD_ROLE: &str = "ferry_password_auth";
/// Changes whenever the template's contents change, so an old cached template is not used.
const TEMPLATE_FORMAT: u32 = 1;

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

type Result<T, E = PgServerError> = std::result::Result<T, E>;

/// A private PostgreSQL server, stopped and deleted on drop.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    /// The server's major version (15 for 15.18).
    major: u32,
    /// Holds `data/`, `sock/` and `log`; owned by `postgres` when running as root.
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
    frozen: bool,
    /// Whether the server runs with `ssl=on` (its files are in `tls/`).
    tls: bool,
}

impl PgServer {
    /// Starts a new server on a free port of 127.0.0.1 with trust authentication for
    /// [`SUPERUSER`], a database [`DATABASE`], and `fsync=on` (rule 8 is tested for real).
    pub fn start() -> Result<PgServer> {
        PgServer::start_as(false)
    }

    /// [`PgServer::start`] with `ssl=on` and a server certificate for `localhost` and
    /// `127.0.0.1` issued by a new throw-away CA, whose certificate is at
    /// [`PgServer::ca_cert_path`].
    pub fn start_with_tls() -> Result<PgServer> {
        PgServer::start_as(true)
    }

    fn start_as(tls: bool) -> Result<PgServer> {
        let bin = find_binaries()?;
        let Template { dir: template, major } = template(&bin)?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .map_err(io("cannot create a directory for the test server"))?;
        hand_to_postgres(dir.path())?;
        run(
            Command::new("cp").arg("-a").arg(template.join("data")).arg(dir.path().join("data")),
            "copying the template cluster",
        )?;
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).map_err(io("cannot create the socket directory"))?;
        hand_to_postgres(&sock)?;
        if tls {
            write_tls_files(&dir.path().join("tls"))?;
        }
        let mut server = PgServer { bin, major, dir, port: 0, running: false, frozen: false, tls };
        // Another process may take the port between our probe and the server's bind.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| PgServerError::Command {
            what: "pg_ctl start".into(),
            detail: "no attempt was made".into(),
        }))
    }

    /// [`PgServer::start`], or `None` after printing why not when the binaries are missing
    /// outside CI. Panics on any other failure (and, under `CI=true`, on missing binaries).
    pub fn start_or_skip() -> Option<PgServer> {
        or_skip(PgServer::start())
    }

    /// [`PgServer::start_with_tls`], skipping as [`PgServer::start_or_skip`] does.
    pub fn start_with_tls_or_skip() -> Option<PgServer> {
        or_skip(PgServer::start_with_tls())
    }

    /// The PEM file of the CA that issued the server's certificate (servers started with
    /// [`PgServer::start_with_tls`] only).
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("tls").join("ca.crt"))
    }

    /// The data source of the superuser on the server's database:
    /// `postgres://ferry@127.0.0.1:PORT/ferry`.
    pub fn url(&self) -> String {
        self.url_for(SUPERUSER, None, DATABASE)
    }

    /// A data source for another user, password or database on this server.
    pub fn url_for(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_string(),
        };
        format!("postgres://{auth}@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Whether the server is running (not stopped; a frozen server counts as running).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: like a crash or a power cut of
    /// the database host; committed data survives, as `fsync` is on). Connections fail
    /// from now on, until [`PgServer::start_again`].
    pub fn stop(&mut self) -> Result<()> {
        self.thaw()?;
        if self.running {
            self.pg_ctl(&["stop", "-m", "immediate", "-w"], "pg_ctl stop")?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port and data directory.
    pub fn start_again(&mut self) -> Result<()> {
        if !self.running {
            self.pg_ctl_start()?;
        }
        Ok(())
    }

    /// Suspends every process of the server (SIGSTOP): connections stay open but nothing
    /// answers, like a hung database host or a network black hole.
    pub fn freeze(&mut self) -> Result<()> {
        if self.running && !self.frozen {
            self.signal_all("-STOP")?;
            self.frozen = true;
        }
        Ok(())
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&mut self) -> Result<()> {
        if self.frozen {
            self.signal_all("-CONT")?;
            self.frozen = false;
        }
        Ok(())
    }

    /// A superuser connection to [`DATABASE`], for setting up and inspecting tests.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        self.client_to(DATABASE).await
    }

    /// A superuser connection to another database of this server.
    pub async fn client_to(&self, database: &str) -> Result<tokio_postgres::Client> {
        let url = self.url_for(SUPERUSER, None, database);
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(sql(format!("cannot connect to the test server at {url}")))?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server goes away.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Runs SQL (one or more statements) as the superuser in [`DATABASE`].
    pub async fn execute(&self, sql_text: &str) -> Result<()> {
        self.client()
            .await?
            .batch_execute(sql_text)
            .await
            .map_err(sql(format!("running {sql_text:?} on the test server")))
    }

    /// Creates a login role that must give `password` (scram-sha-256) over TCP, with the
    /// right to create tables in [`DATABASE`]'s `public` schema.
    pub async fn create_user_with_password(&self, user: &str, password: &str) -> Result<()> {
        let ident = format!("\"{}\"", user.replace('"', "\"\""));
        let literal = format!("'{}'", password.replace('\'', "''"));
        self.execute(&format!(
            "CREATE ROLE {ident} LOGIN PASSWORD {literal} IN ROLE {PASSWORD_ROLE}; \
             GRANT CREATE, USAGE ON SCHEMA public TO {ident};"
        ))
        .await
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c shared_buffers=16MB \
             -c max_connections=100",
            self.port,
            self.dir.path().join("sock").display()
        );
        if self.major >= 14 {
            // Crash recovery (after `stop`) first syncs the data directory; one syncfs()
            // takes a fraction of a second where fsync of each file takes seconds.
            options.push_str(" -c recovery_init_sync_method=syncfs");
        }
        if self.tls {
            let tls = self.dir.path().join("tls");
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                tls.join("server.crt").display(),
                tls.join("server.key").display()
            ));
        }
        let log = self.dir.path().join("log");
        let log_arg = log.display().to_string();
        let result = self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log_arg, "-o", &options], "pg_ctl start");
        match result {
            Ok(()) => {
                self.running = true;
                Ok(())
            }
            Err(PgServerError::Command { what, detail }) => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(PgServerError::Command { what, detail: format!("{detail}; server log:\n{}", tail.join("\n")) })
            }
            Err(e) => Err(e),
        }
    }

    fn pg_ctl(&self, args: &[&str], what: &str) -> Result<()> {
        let data = self.data_dir().display().to_string();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        run(&mut as_postgres(&self.bin.join("pg_ctl"), &all)?, what).map(|_| ())
    }

    /// Sends a signal to the postmaster and all its children.
    fn signal_all(&self, signal: &str) -> Result<()> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).map_err(io(format!("cannot read {}", pid_file.display())))?;
        let Some(postmaster) = text.lines().next().map(str::trim).map(str::to_string) else {
            return Err(PgServerError::Command {
                what: "reading postmaster.pid".into(),
                detail: "the file is empty".into(),
            });
        };
        let mut pids = vec![postmaster.clone()];
        pids.extend(children_of(&postmaster));
        let mut cmd = Command::new("kill");
        cmd.arg(signal).args(&pids);
        run(&mut cmd, &format!("kill {signal}")).map(|_| ())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.thaw();
        if self.running {
            if let Err(e) = self.pg_ctl(&["stop", "-m", "immediate", "-w"], "pg_ctl stop") {
                eprintln!("warning: cannot stop the test PostgreSQL server: {e}");
            }
        }
        // The TempDir removes the directory after this.
    }
}

/// A server, or `None` after printing why not when the binaries are missing outside CI.
fn or_skip(started: Result<PgServer>) -> Option<PgServer> {
    match started {
        Ok(server) => Some(server),
        Err(e) if e.is_skip() => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("cannot start a PostgreSQL server for the test: {e}"),
    }
}

/// A throw-away certificate authority: issues test servers' certificates, and stands for
/// the wrong CA in tests of refused certificates.
pub struct TestCa {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA with its own key; `name` is its common name.
    pub fn new(name: &str) -> Result<TestCa> {
        let key = rcgen::KeyPair::generate().map_err(cert("generating a CA key"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert("a CA certificate"))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let cert_pem = params.self_signed(&key).map_err(cert("signing a CA certificate"))?.pem();
        Ok(TestCa { cert_pem, issuer: rcgen::Issuer::new(params, key) })
    }

    /// The CA's certificate (PEM): the root certificate clients check servers against.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (host names or IP addresses) and its private key,
    /// both PEM.
    pub fn server_cert(&self, names: &[&str]) -> Result<(String, String)> {
        let key = rcgen::KeyPair::generate().map_err(cert("generating a server key"))?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).map_err(cert("a server certificate"))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "ferry test PostgreSQL server");
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let signed = params.signed_by(&key, &self.issuer).map_err(cert("signing a server certificate"))?;
        Ok((signed.pem(), key.serialize_pem()))
    }
}

/// Writes `ca.crt`, `server.crt` and `server.key` (mode 0600, owned by the server's user,
/// as PostgreSQL insists) into `dir`, a new directory.
fn write_tls_files(dir: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    std::fs::create_dir(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    hand_to_postgres(dir)?;
    let ca = TestCa::new("ferry test CA")?;
    let (cert_pem, key_pem) = ca.server_cert(&["localhost", "127.0.0.1"])?;
    for (name, text, mode) in [
        ("ca.crt", ca.cert_pem(), 0o644),
        ("server.crt", cert_pem.as_str(), 0o644),
        ("server.key", key_pem.as_str(), 0o600),
    ] {
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io(format!("cannot create {}", path.display())))?;
        file.write_all(text.as_bytes()).map_err(io(format!("cannot write {}", path.display())))?;
        hand_to_postgres(&path)?;
    }
    Ok(())
}

/// The child processes of `parent`, from /proc.
fn children_of(parent: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().to_string();
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after the ')'.
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("cannot find a free port on 127.0.0.1"))?;
    let port = listener.local_addr().map_err(io("cannot find a free port on 127.0.0.1"))?.port();
    Ok(port)
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: Debian's highest
/// `/usr/lib/postgresql/*/bin`, else where the `initdb` on `PATH` really lives. Searched once
/// per process; also used by ferry-lab, which runs PostgreSQL in a lab namespace.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let has_all = |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|b| dir.join(b).is_file());
    let found = FOUND.get_or_init(|| {
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, bin)| has_all(bin))
            .collect();
        debian.sort();
        if let Some((_, bin)) = debian.pop() {
            return Some(bin);
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.is_file())
            .and_then(|initdb| std::fs::canonicalize(initdb).ok())
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .filter(|dir| has_all(dir))
    });
    found.clone()
}

/// [`postgres_bin_dir`], or why the tests cannot run.
fn find_binaries() -> Result<PathBuf> {
    postgres_bin_dir().ok_or(PgServerError::NotFound { required: std::env::var("CI").is_ok_and(|v| v == "true") })
}

/// The initialised cluster every server copies.
#[derive(Debug, Clone)]
struct Template {
    /// Holds `data/`.
    dir: PathBuf,
    major: u32,
}

/// The template, built once per machine, version and user, and reused by later processes.
fn template(bin: &Path) -> Result<Template> {
    static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| build_template(bin).map_err(|e| e.to_string()))
        .clone()
        .map_err(|detail| PgServerError::Command { what: "preparing the template cluster".into(), detail })
}

fn build_template(bin: &Path) -> Result<Template> {
    let version = run(Command::new(bin.join("pg_ctl")).arg("--version"), "pg_ctl --version")?;
    let version: String = version
        .split_whitespace()
        .nth(2)
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let major = version.split('.').next().and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
    let uid = run(Command::new("id").arg("-u"), "id -u")?;
    let target = std::env::temp_dir().join(format!("ferry-pg-template-{version}-f{TEMPLATE_FORMAT}-u{}", uid.trim()));
    let done = |dir: PathBuf| Template { dir, major };
    if target.join("ready").is_file() {
        return Ok(done(target));
    }
    let build = tempfile::Builder::new()
        .prefix("ferry-pg-template-build-")
        .tempdir()
        .map_err(io("cannot create a directory for the template cluster"))?;
    hand_to_postgres(build.path())?;
    let data = build.path().join("data");
    let data_arg = data.display().to_string();
    run(
        &mut as_postgres(
            &bin.join("initdb"),
            &["-D", &data_arg, "-N", "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"],
        )?,
        "initdb",
    )?;
    let hba = data.join("pg_hba.conf");
    std::fs::write(
        &hba,
        format!(
            "# ferry test server: password logins for {PASSWORD_ROLE} members, trust for the rest\n\
             local all all trust\n\
             host all +{PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n\
             host all +{PASSWORD_ROLE} ::1/128 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n\
             host all all ::1/128 trust\n"
        ),
    )
    .map_err(io(format!("cannot write {}", hba.display())))?;
    // Single-user mode runs one statement per line and goes on after an error: a server
    // without ICU gets the plain database from the second CREATE DATABASE. An ICU
    // collation makes the database's default order differ from bytewise order, so tests
    // see whether `list()` really sorts bytewise.
    let script = format!(
        "CREATE ROLE {PASSWORD_ROLE} NOLOGIN\n\
         CREATE DATABASE {DATABASE} OWNER {SUPERUSER} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'\n\
         CREATE DATABASE {DATABASE} OWNER {SUPERUSER}\n"
    );
    let mut single = as_postgres(&bin.join("postgres"), &["--single", "-D", &data_arg, "-c", "fsync=off", "postgres"])?;
    let mut child = single
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("cannot run postgres --single"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(io("cannot write to postgres --single"))?;
    }
    let out = child.wait_with_output().map_err(io("cannot run postgres --single"))?;
    if !out.status.success() {
        return Err(PgServerError::Command {
            what: "postgres --single".into(),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    std::fs::write(build.path().join("ready"), b"ok\n").map_err(io("cannot mark the template ready"))?;
    let built = build.keep();
    match std::fs::rename(&built, &target) {
        Ok(()) => Ok(done(target)),
        // Another test process built it at the same time; use theirs.
        Err(_) if target.join("ready").is_file() => {
            let _ = std::fs::remove_dir_all(&built);
            Ok(done(target))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&built);
            Err(PgServerError::Io {
                what: format!("cannot move the template cluster to {}", target.display()),
                source: e,
            })
        }
    }
}

/// Whether this process runs as root (and so must run the server as `postgres`).
fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

/// Gives a directory to the `postgres` user when running as root.
fn hand_to_postgres(dir: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let mut cmd = Command::new("chown");
    cmd.arg("postgres:").arg(dir);
    run(&mut cmd, "chown postgres (running as root needs an OS user named postgres)").map(|_| ())
}

/// A command for a server binary: as `postgres` when running as root.
fn as_postgres(program: &Path, args: &[&str]) -> Result<Command> {
    let mut cmd = if !is_root() {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    } else if Path::new("/usr/sbin/runuser").is_file() || Path::new("/sbin/runuser").is_file() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program).args(args);
        cmd
    } else {
        // su hands the arguments after the user to the shell as $0, $1, ...
        let mut cmd = Command::new("su");
        cmd.args(["-s", "/bin/sh", "postgres", "-c", "exec \"$0\" \"$@\""]).arg(program).args(args);
        cmd
    };
    // The server user may not be able to enter the caller's directory.
    cmd.current_dir(std::env::temp_dir());
    Ok(cmd)
}

/// Runs a command to completion; its stdout, or its stderr as the error.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(io(format!("cannot run {what}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(PgServerError::Command {
            what: what.to_string(),
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        })
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgServerError {
    let what = what.into();
    move |source| PgServerError::Io { what, source }
}

fn cert(what: &str) -> impl FnOnce(rcgen::Error) -> PgServerError + '_ {
    move |e| PgServerError::Command { what: format!("making a test certificate ({what})"), detail: e.to_string() }
}

fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgServerError {
    let what = what.into();
    move |source| PgServerError::Sql { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_skip_outside_ci_only() {
        let local = PgServerError::NotFound { required: false };
        assert!(local.is_skip());
        assert!(local.to_string().contains("apt-get install postgresql"));
        let ci = PgServerError::NotFound { required: true };
        assert!(!ci.is_skip());
        assert!(ci.to_string().contains("CI=true requires them"), "{ci}");
    }

    #[test]
    fn a_server_can_be_stopped_started_and_frozen() {
        let Some(mut pg) = PgServer::start_or_skip() else {
            return;
        };
        assert!(pg.is_running());
        assert!(pg.url().starts_with("postgres://ferry@127.0.0.1:"));
        let data = pg.data_dir();
        assert!(data.join("PG_VERSION").is_file());
        pg.freeze().expect("freeze");
        pg.thaw().expect("thaw");
        pg.stop().expect("stop");
        assert!(!pg.is_running());
        assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_err());
        pg.start_again().expect("start again");
        assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_ok());
        let root = data.parent().map(Path::to_path_buf).expect("parent");
        drop(pg);
        assert!(!root.exists(), "{} is left behind", root.display());
    }
}
