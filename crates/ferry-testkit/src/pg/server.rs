//! The server itself: [`PgOptions`] (where it listens, who may log in, TLS, what it runs
//! under), and [`PgServer`]: start, stop, start again, freeze, thaw, and SQL for setting up
//! and inspecting a test.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::ca::TestCa;
use super::error::{PgServerError, Result};
use super::setup::{
    as_postgres, command, find_binaries, hand_to_postgres, io, run, sql, template, write_hba, Template, DATABASE,
    LOOPBACK_CLIENTS, PASSWORD_ROLE, SUPERUSER,
};

/// Where a lab's server listens: the switch's own address, on PostgreSQL's usual port (each
/// lab has its own switch namespace, so the port is always free).
pub const LAB_PORT: u16 = 5432;

/// Where and how a [`PgServer`] runs. The default is a server on a free port of
/// 127.0.0.1 that trusts loopback, without TLS, run here, in a directory under `$TMPDIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// The address the server listens on.
    pub listen: Ipv4Addr,
    /// Its TCP port; `None` takes a free one, probed by binding `listen` from this process
    /// (so only for an address this process can bind, such as loopback).
    pub port: Option<u16>,
    /// `ssl=on`, with a certificate for `localhost` and `listen` from a new throw-away CA.
    pub tls: bool,
    /// The networks that may log in over TCP (CIDR): the superuser without a password,
    /// members of the password role with one.
    pub clients: Vec<String>,
    /// The program and arguments the server is started under (its `pg_ctl start` command
    /// line is appended): a lab's namespace and cgroup ([`ferry_lab::Lab::command_prefix`]).
    /// Empty: the server runs where this process runs.
    pub run_under: Vec<OsString>,
    /// The directory the server's own directory is made in; `None`: the temporary directory.
    pub parent_dir: Option<PathBuf>,
    /// Run the server under libfaketime with this `FAKETIME` (`"+3s"`, `"-2s"`): its wall
    /// clock, and so `now()` and `clock_timestamp()`, is off by that much (monotonic clocks
    /// are left alone). See [`libfaketime`].
    pub clock_offset: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            listen: Ipv4Addr::LOCALHOST,
            port: None,
            tls: false,
            clients: LOOPBACK_CLIENTS.map(String::from).to_vec(),
            run_under: Vec::new(),
            parent_dir: None,
            clock_offset: None,
        }
    }
}

impl PgOptions {
    /// A server for `lab`: in its switch namespace and cgroup on 198.18.1.1:5432 (so
    /// freezing or crashing the switch takes the database with it), trusting the lab
    /// network 198.18.0.0/15, its files in the lab's state directory. Only the lab's nodes
    /// reach it ([`PgServer::client`] from this process does not).
    pub fn in_lab(lab: &ferry_lab::Lab) -> ferry_lab::Result<PgOptions> {
        Ok(PgOptions {
            listen: lab.switch_addr(),
            port: Some(LAB_PORT),
            clients: vec![format!("{}/{}", ferry_lab::LAB_NET, ferry_lab::LAB_NET_PREFIX_LEN)],
            run_under: lab.command_prefix(ferry_lab::SWITCH)?,
            parent_dir: Some(lab.state_dir().to_path_buf()),
            ..PgOptions::default()
        })
    }
}

/// A private PostgreSQL server, stopped and deleted on drop.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    /// The server's major version (15 for 15.18).
    major: u32,
    /// Holds `data/`, `sock/` and `log`; owned by `postgres` when running as root.
    dir: tempfile::TempDir,
    options: PgOptions,
    port: u16,
    running: bool,
    frozen: bool,
}

impl PgServer {
    /// Starts a new server on a free port of 127.0.0.1 with trust authentication for
    /// [`SUPERUSER`], a database [`DATABASE`], and `fsync=on` (rule 8 is tested for real).
    pub fn start() -> Result<PgServer> {
        PgServer::start_with(PgOptions::default())
    }

    /// [`PgServer::start`] with `ssl=on` and a server certificate for `localhost` and
    /// `127.0.0.1` issued by a new throw-away CA, whose certificate is at
    /// [`PgServer::ca_cert_path`].
    pub fn start_with_tls() -> Result<PgServer> {
        PgServer::start_with(PgOptions { tls: true, ..PgOptions::default() })
    }

    /// Starts a new server as `options` say; returns when it accepts connections.
    pub fn start_with(options: PgOptions) -> Result<PgServer> {
        let bin = find_binaries()?;
        let Template { dir: template, major } = template(&bin)?;
        let dir = server_dir(&options)?;
        run(
            Command::new("cp").arg("-a").arg(template.join("data")).arg(dir.path().join("data")),
            "copying the template cluster",
        )?;
        PgServer::start_in(bin, major, dir, options)
    }

    /// Starts a streaming standby of this server, as `options` say (on a free port unless
    /// given one): a copy taken with `pg_basebackup -R` (so it shares the primary's system
    /// identifier and follows it), running until [`PgServer::promote`]. The primary's
    /// replication connections are trusted from its clients' networks. A standby is
    /// synchronous once the primary runs [`PgServer::require_synchronous_standby`].
    pub fn start_standby(&self, options: PgOptions) -> Result<PgServer> {
        let dir = server_dir(&options)?;
        let data = dir.path().join("data");
        let port = self.port.to_string();
        let host = self.options.listen.to_string();
        let args: [&OsStr; 13] = [
            "-h".as_ref(),
            host.as_ref(),
            "-p".as_ref(),
            port.as_ref(),
            "-U".as_ref(),
            SUPERUSER.as_ref(),
            "-D".as_ref(),
            data.as_ref(),
            "-R".as_ref(),
            "-X".as_ref(),
            "stream".as_ref(),
            "-c".as_ref(),
            "fast".as_ref(),
        ];
        let mut argv = self.options.run_under.clone();
        argv.extend(as_postgres(&self.bin.join("pg_basebackup"), &args));
        run(&mut command(&argv), "pg_basebackup")?;
        PgServer::start_in(self.bin.clone(), self.major, dir, options)
    }

    /// Makes every commit wait for a standby's confirmation (`synchronous_standby_names =
    /// '*'`, reloaded): what DESIGN §3 rule 8 asks of a highly available lease table.
    pub async fn require_synchronous_standby(&self) -> Result<()> {
        self.execute("ALTER SYSTEM SET synchronous_standby_names = '*'").await?;
        self.execute("SELECT pg_reload_conf()").await
    }

    /// Promotes a standby to primary (`pg_ctl promote -w`: returns once it accepts writes).
    pub fn promote(&self) -> Result<()> {
        self.pg_ctl(&["promote", "-w", "-t", "60"], "pg_ctl promote")
    }

    fn start_in(bin: PathBuf, major: u32, dir: tempfile::TempDir, options: PgOptions) -> Result<PgServer> {
        write_hba(&dir.path().join("data").join("pg_hba.conf"), &options.clients)?;
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).map_err(io("cannot create the socket directory"))?;
        hand_to_postgres(&sock)?;
        if options.tls {
            write_tls_files(&dir.path().join("tls"), options.listen)?;
        }
        let fixed = options.port;
        let mut server = PgServer { bin, major, dir, options, port: 0, running: false, frozen: false };
        if let Some(port) = fixed {
            server.port = port;
            server.pg_ctl_start()?;
            return Ok(server);
        }
        // Another process may take the port between our probe and the server's bind.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port(server.options.listen)?;
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

    /// [`PgServer::start_with`], skipping as [`PgServer::start_or_skip`] does.
    pub fn start_with_or_skip(options: PgOptions) -> Option<PgServer> {
        or_skip(PgServer::start_with(options))
    }

    /// The PEM file of the CA that issued the server's certificate (servers started with
    /// TLS only).
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.dir.path().join("tls").join("ca.crt"))
    }

    /// The data source of the superuser on the server's database:
    /// `postgres://ferry@ADDRESS:PORT/ferry`.
    pub fn url(&self) -> String {
        self.url_for(SUPERUSER, None, DATABASE)
    }

    /// A data source for another user, password or database on this server.
    pub fn url_for(&self, user: &str, password: Option<&str>, database: &str) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_string(),
        };
        format!("postgres://{auth}@{}:{}/{database}", self.options.listen, self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the PostgreSQL programs (`psql`, `pg_isready`, ...), e.g. to run
    /// them in a lab machine.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
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
            self.signal_all(Signal::SIGSTOP)?;
            self.frozen = true;
        }
        Ok(())
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&mut self) -> Result<()> {
        if self.frozen {
            self.signal_all(Signal::SIGCONT)?;
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
            "-p {} -k {} -c listen_addresses={} -c fsync=on -c shared_buffers=16MB \
             -c max_connections=100",
            self.port,
            self.dir.path().join("sock").display(),
            self.options.listen
        );
        if self.major >= 14 {
            // Crash recovery (after `stop`) first syncs the data directory; one syncfs()
            // takes a fraction of a second where fsync of each file takes seconds.
            options.push_str(" -c recovery_init_sync_method=syncfs");
        }
        if self.options.tls {
            let tls = self.dir.path().join("tls");
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                tls.join("server.crt").display(),
                tls.join("server.key").display()
            ));
        }
        let log = self.dir.path().join("log");
        let data = self.data_dir();
        let args: [&OsStr; 10] = [
            "-D".as_ref(),
            data.as_ref(),
            "start".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "-l".as_ref(),
            log.as_ref(),
            "-o".as_ref(),
            options.as_ref(),
        ];
        let mut argv = self.options.run_under.clone();
        match &self.options.clock_offset {
            None => argv.extend(as_postgres(&self.bin.join("pg_ctl"), &args)),
            Some(offset) => {
                let Some(lib) = libfaketime() else {
                    return Err(PgServerError::Command {
                        what: "starting a server with its clock off".into(),
                        detail: "libfaketime is not installed; apt-get install faketime".into(),
                    });
                };
                let preload = format!("LD_PRELOAD={}", lib.display());
                let faketime = format!("FAKETIME={offset}");
                let pg_ctl = self.bin.join("pg_ctl");
                let mut with_env: Vec<&OsStr> =
                    vec![preload.as_ref(), faketime.as_ref(), "DONT_FAKE_MONOTONIC=1".as_ref(), pg_ctl.as_ref()];
                with_env.extend(args);
                argv.extend(as_postgres(Path::new("/usr/bin/env"), &with_env));
            }
        }
        let result = run(&mut command(&argv), "pg_ctl start");
        match result {
            Ok(_) => {
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

    /// Runs `pg_ctl -D DATA ARGS` here (as `postgres` when root): stopping needs no
    /// namespace, and a command joining a frozen cgroup would freeze with it.
    fn pg_ctl(&self, args: &[&str], what: &str) -> Result<()> {
        let data = self.data_dir();
        let mut all: Vec<&OsStr> = vec!["-D".as_ref(), data.as_ref()];
        all.extend(args.iter().map(OsStr::new));
        run(&mut command(&as_postgres(&self.bin.join("pg_ctl"), &all)), what).map(|_| ())
    }

    /// Sends a signal to the postmaster and all its children.
    fn signal_all(&self, signal: Signal) -> Result<()> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).map_err(io(format!("cannot read {}", pid_file.display())))?;
        let Some(postmaster) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else {
            return Err(PgServerError::Command {
                what: "reading postmaster.pid".into(),
                detail: "the file holds no pid".into(),
            });
        };
        for pid in std::iter::once(postmaster).chain(children_of(postmaster)) {
            kill(Pid::from_raw(pid), signal)
                .map_err(|e| PgServerError::Command { what: format!("kill -{signal} {pid}"), detail: e.to_string() })?;
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.thaw();
        // A server whose directory is gone went with its lab: nothing is left to stop.
        if self.running && self.data_dir().is_dir() {
            if let Err(e) = self.pg_ctl(&["stop", "-m", "immediate", "-w"], "pg_ctl stop") {
                eprintln!("warning: cannot stop the test PostgreSQL server: {e}");
            }
        }
        // The TempDir removes the directory after this.
    }
}

/// libfaketime's preload library, if the Debian package libfaketime is installed.
pub fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime"))
        .chain([PathBuf::from("/usr/lib/faketime")]);
    dirs.map(|d| d.join("libfaketime.so.1")).find(|p| p.is_file())
}

/// A new directory for a server (owned by `postgres` when this process is root).
fn server_dir(options: &PgOptions) -> Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new();
    dir.prefix("ferry-pg-");
    let dir = match &options.parent_dir {
        Some(parent) => dir.tempdir_in(parent),
        None => dir.tempdir(),
    }
    .map_err(io("cannot create a directory for the test server"))?;
    hand_to_postgres(dir.path())?;
    Ok(dir)
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

/// Writes `ca.crt`, `server.crt` (for `localhost`, 127.0.0.1 and `listen`) and `server.key`
/// (mode 0600, owned by the server's user, as PostgreSQL insists) into `dir`, a new
/// directory.
fn write_tls_files(dir: &Path, listen: Ipv4Addr) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;

    std::fs::create_dir(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    hand_to_postgres(dir)?;
    let ca = TestCa::new("ferry test CA")?;
    let listen = listen.to_string();
    let mut names = vec!["localhost", "127.0.0.1"];
    if !names.contains(&listen.as_str()) {
        names.push(&listen);
    }
    let (cert_pem, key_pem) = ca.server_cert(&names)?;
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
fn children_of(parent: i32) -> Vec<i32> {
    let parent = parent.to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces, so split after the ')'.
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

fn free_port(listen: Ipv4Addr) -> Result<u16> {
    let what = || format!("cannot find a free port on {listen}");
    let listener = std::net::TcpListener::bind((listen, 0)).map_err(io(what()))?;
    let port = listener.local_addr().map_err(io(what()))?.port();
    Ok(port)
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

    /// Polls `check` every 20 ms for up to `within`.
    async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> anyhow::Result<bool>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let rounds = within.as_millis() / 20 + 1;
        for _ in 0..rounds {
            if check().await? {
                return Ok(true);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(false)
    }

    #[tokio::test]
    async fn postgres_in_the_lab_serves_every_machine() -> anyhow::Result<()> {
        use std::time::Duration;

        use ferry_lab::{or_skip, require, Lab, LabSpec};

        let Some(()) = or_skip(require(&["nft"])) else {
            return Ok(());
        };
        let Some(lab) = Lab::up_or_skip(LabSpec::new(&["a", "b"])).await else {
            return Ok(());
        };
        let started = ferry_host::clock::now();
        let Some(mut pg) = PgServer::start_with_or_skip(PgOptions::in_lab(&lab)?) else {
            return Ok(());
        };
        let start_ms = ferry_host::clock::now().since(started);
        let bin = pg.bin_dir().to_path_buf();
        let isready = bin.join("pg_isready").display().to_string();
        let psql = bin.join("psql").display().to_string();
        let ready = |node: &'static str| {
            let isready = isready.clone();
            let lab = &lab;
            async move {
                let out = lab.run(node, &[&isready, "-h", "198.18.1.1", "-p", "5432", "-t", "1"]).await?;
                anyhow::Ok(out.status.success())
            }
        };
        assert_eq!(pg.url(), "postgres://ferry@198.18.1.1:5432/ferry");
        assert!(ready("a").await?, "pg_isready from a");
        let db = lab.exec("b", &[&psql, &pg.url(), "-Atc", "select current_database()"]).await?;
        assert_eq!(db.trim(), "ferry");

        // A machine cut off from the switch loses the database; the others keep it.
        lab.partition_from_switch("a").await?;
        assert!(!ready("a").await?, "a still reaches the database");
        assert!(ready("b").await?);
        lab.heal().await?;
        assert!(eventually(Duration::from_secs(3), || ready("a")).await?);

        pg.stop()?;
        assert!(!ready("b").await?, "the stopped server still answers");
        pg.start_again()?;
        assert!(ready("b").await?);
        eprintln!("postgres in the lab started in {start_ms} ms");
        drop(pg);
        lab.down()?;
        Ok(())
    }
}
