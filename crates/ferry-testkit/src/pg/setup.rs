//! Setting a server up: finding the PostgreSQL binaries, the template cluster every server
//! copies (built once per machine, version and user), each server's `pg_hba.conf`, and
//! running the server's commands as the `postgres` user when this process is root.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::error::{PgServerError, Result};

/// The superuser (and owner of the [`DATABASE`]) every server is created with; it logs
/// in over TCP from the networks of [`super::PgOptions::clients`] without a password.
pub const SUPERUSER: &str = "ferry";
/// The database every server has.
pub const DATABASE: &str = "ferry";
/// Members of this role must log in with a password (see
/// [`super::PgServer::create_user_with_password`]).
pub(super) const PASSWORD_ROLE: &str = "ferry_password_auth";
/// Changes whenever the template's contents change, so an old cached template is not used.
const TEMPLATE_FORMAT: u32 = 1;

/// The networks a server trusts unless told otherwise: loopback.
pub(super) const LOOPBACK_CLIENTS: [&str; 2] = ["127.0.0.1/32", "::1/128"];

/// The server's `pg_hba.conf`: local sockets trusted; from each of `clients`, password
/// logins for members of [`PASSWORD_ROLE`] and trust for everyone else.
pub(super) fn write_hba(path: &Path, clients: &[String]) -> Result<()> {
    let mut text = format!(
        "# ferry test server: password logins for {PASSWORD_ROLE} members, trust for the rest\n\
         local all all trust\n"
    );
    for net in clients {
        text.push_str(&format!("host all +{PASSWORD_ROLE} {net} scram-sha-256\n"));
    }
    for net in clients {
        text.push_str(&format!("host all all {net} trust\n"));
    }
    // Standbys of this server (`PgServer::start_standby`) stream from it.
    for net in clients {
        text.push_str(&format!("host replication {SUPERUSER} {net} trust\n"));
    }
    // The copy's file already belongs to the server's user; rewriting it keeps that.
    std::fs::write(path, text).map_err(io(format!("cannot write {}", path.display())))
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: Debian's highest
/// `/usr/lib/postgresql/*/bin`, else where the `initdb` on `PATH` really lives. Searched once
/// per process.
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
pub(super) fn find_binaries() -> Result<PathBuf> {
    postgres_bin_dir().ok_or(PgServerError::NotFound { required: std::env::var("CI").is_ok_and(|v| v == "true") })
}

/// The initialised cluster every server copies.
#[derive(Debug, Clone)]
pub(super) struct Template {
    /// Holds `data/`.
    pub(super) dir: PathBuf,
    pub(super) major: u32,
}

/// The template, built once per machine, version and user, and reused by later processes.
pub(super) fn template(bin: &Path) -> Result<Template> {
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
    let target = std::env::temp_dir().join(format!("ferry-pg-template-{version}-f{TEMPLATE_FORMAT}-u{}", euid()));
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
    let initdb: [&OsStr; 10] = [
        "-D".as_ref(),
        data.as_ref(),
        "-N".as_ref(),
        "-A".as_ref(),
        "trust".as_ref(),
        "-U".as_ref(),
        SUPERUSER.as_ref(),
        "-E".as_ref(),
        "UTF8".as_ref(),
        "--locale=C".as_ref(),
    ];
    run(&mut command(&as_postgres(&bin.join("initdb"), &initdb)), "initdb")?;
    // Each server writes its own pg_hba.conf; the template's is the loopback default.
    write_hba(&data.join("pg_hba.conf"), &LOOPBACK_CLIENTS.map(String::from))?;
    // Single-user mode runs one statement per line and goes on after an error: a server
    // without ICU gets the plain database from the second CREATE DATABASE. An ICU
    // collation makes the database's default order differ from bytewise order, so tests
    // see whether `list()` really sorts bytewise.
    let script = format!(
        "CREATE ROLE {PASSWORD_ROLE} NOLOGIN\n\
         CREATE DATABASE {DATABASE} OWNER {SUPERUSER} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'\n\
         CREATE DATABASE {DATABASE} OWNER {SUPERUSER}\n"
    );
    let single: [&OsStr; 6] =
        ["--single".as_ref(), "-D".as_ref(), data.as_ref(), "-c".as_ref(), "fsync=off".as_ref(), "postgres".as_ref()];
    let mut child = command(&as_postgres(&bin.join("postgres"), &single))
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

/// This process's effective uid, from `/proc/self/status` (`Uid: real effective saved fs`).
fn euid() -> u32 {
    static EUID: OnceLock<u32> = OnceLock::new();
    *EUID.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(u32::MAX)
    })
}

/// Whether this process runs as root (and so must run the server as `postgres`).
fn is_root() -> bool {
    euid() == 0
}

/// The uid and gid of the `postgres` OS user, from /etc/passwd.
fn postgres_user() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("cannot read /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            if f.next()? != "postgres" {
                return None;
            }
            let uid = f.nth(1)?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or_else(|| PgServerError::Command {
            what: "finding the postgres OS user".into(),
            detail: "running as root needs an OS user named postgres; apt-get install postgresql".into(),
        })
}

/// Gives a file or directory to the `postgres` user when running as root.
pub(super) fn hand_to_postgres(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) = postgres_user()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(io(format!("cannot hand {} to the postgres user", path.display())))
}

/// The command line of a server binary: as `postgres` when running as root.
pub(super) fn as_postgres(program: &Path, args: &[&OsStr]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = if !is_root() {
        Vec::new()
    } else if Path::new("/usr/sbin/runuser").is_file() || Path::new("/sbin/runuser").is_file() {
        ["runuser", "-u", "postgres", "--"].map(OsString::from).to_vec()
    } else {
        // su hands the arguments after the user to the shell as $0, $1, ...
        ["su", "-s", "/bin/sh", "postgres", "-c", "exec \"$0\" \"$@\""].map(OsString::from).to_vec()
    };
    argv.push(program.into());
    argv.extend(args.iter().map(OsString::from));
    argv
}

/// A command for `argv`, in a directory every user may enter (the server user may not be
/// able to enter the caller's).
pub(super) fn command(argv: &[OsString]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).current_dir(std::env::temp_dir());
    cmd
}

/// Runs a command to completion; its stdout, or its stderr as the error.
pub(super) fn run(cmd: &mut Command, what: &str) -> Result<String> {
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

pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgServerError {
    let what = what.into();
    move |source| PgServerError::Io { what, source }
}

pub(super) fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgServerError {
    let what = what.into();
    move |source| PgServerError::Sql { what, source }
}
