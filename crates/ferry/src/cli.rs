//! Dispatch of the command line: starts the daemons (admin, Node Manager, server), runs
//! `validate`, `enroll`, `leasing` and the demo, and hands client commands to `client`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferry_core::domain::ConfigErrors;
use ferry_core::{MachineName, ServerName};
use ferry_nodemanager::Role;

use crate::args::{Cli, Cmd, LeasingAction, EXIT_FAILED, EXIT_USAGE};

/// Logs go to stderr; in colour only on a terminal, so a log file (a daemon's stderr
/// redirected, a Node Manager's log of its servers) holds plain text without escape codes.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("ferry: cannot start the async runtime: {e}");
            std::process::exit(EXIT_FAILED);
        }
    }
}

/// Parses the command line and runs it; returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server { name } => {
            init_tracing("info");
            let name = match ServerName::new(name) {
                Ok(n) => n,
                Err(e) => {
                    errln!("ferry server: {e}");
                    return ferry_server::EXIT_CONFIG;
                }
            };
            // A small runtime: a server must stay light (DESIGN §6: under 15 MiB).
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match rt {
                Ok(rt) => {
                    let code = rt.block_on(ferry_server::run(name));
                    // Exit now: a store call stuck on the blocking pool must not hold a
                    // fenced server up until its Node Manager kills it.
                    rt.shutdown_background();
                    code
                }
                Err(e) => {
                    errln!("ferry server: cannot start the async runtime: {e}");
                    EXIT_FAILED
                }
            }
        }
        Cmd::Validate { file } => validate(&file),
        Cmd::DemoClient { target, log, interval_ms } => {
            runtime().block_on(crate::demo_service::run_client(target, log, interval_ms))
        }
        Cmd::DemoService { listen, journal } => runtime().block_on(crate::demo_service::run(listen, journal)),
        Cmd::Admin { domain, data_dir, listen } => {
            init_tracing("info");
            let data_dir =
                data_dir.unwrap_or_else(|| ferry_host::files::domain_dir(&domain).join("data").join("admin"));
            let opts = ferry_admin::AdminOptions {
                domain_file: domain,
                data_dir,
                listen,
                client_config_dir: ferry_host::files::client_config_dir(),
            };
            report(runtime().block_on(ferry_admin::run(opts)), "ferry admin")
        }
        Cmd::Nodemanager { machine, domain, admin_url, data_dir, secret_file, enroll_token_file } => {
            if let Some(code) = refuse_early("ferry nodemanager", domain.as_deref(), &machine, Role::NodeManager) {
                return code;
            }
            init_tracing("info");
            report(
                runtime().block_on(nodemanager(
                    machine,
                    domain,
                    admin_url,
                    data_dir,
                    secret_file,
                    enroll_token_file,
                    false,
                )),
                "ferry nodemanager",
            )
        }
        Cmd::Witness { name, domain, admin_url, data_dir, secret_file, enroll_token_file } => {
            if let Some(code) = refuse_early("ferry witness", domain.as_deref(), &name, Role::Witness) {
                return code;
            }
            init_tracing("info");
            report(
                runtime().block_on(nodemanager(
                    name,
                    domain,
                    admin_url,
                    data_dir,
                    secret_file,
                    enroll_token_file,
                    true,
                )),
                "ferry witness",
            )
        }
        Cmd::Enroll { machine, data_dir, rotate: true, .. } => {
            init_tracing("warn");
            report(runtime().block_on(rotate(&cli.admin, machine, data_dir)), "ferry enroll --rotate")
        }
        Cmd::Enroll { machine, data_dir, force, rotate: false } => {
            init_tracing("warn");
            let token_file = cli.token_file.clone();
            report(runtime().block_on(enroll(&cli.admin, machine, data_dir, token_file, force)), "ferry enroll")
        }
        Cmd::Leasing { action: LeasingAction::Init { data_source } } => leasing_local(data_source, false),
        Cmd::Leasing { action: LeasingAction::Reset { data_source } } => leasing_local(data_source, true),
        Cmd::Demo { exit_after, dir, data_source, hosts: true, leasing } => {
            let _ = data_source;
            init_tracing("warn");
            let consensus = leasing == crate::args::DemoLeasing::Consensus;
            report(runtime().block_on(crate::demo::run_hosts(exit_after, dir, consensus)), "ferry demo --hosts")
        }
        Cmd::Demo { exit_after, dir, data_source, hosts: false, leasing } => {
            init_tracing("warn");
            let consensus = leasing == crate::args::DemoLeasing::Consensus;
            report(runtime().block_on(crate::demo::run(exit_after, dir, data_source, consensus)), "ferry demo")
        }
        cmd => {
            init_tracing("warn");
            runtime().block_on(crate::client::run(&cli.admin, cli.ca.as_deref(), cli.token_file.as_deref(), cmd))
        }
    }
}

/// A bad domain file, or one that does not define `name` as `role`, is a bad start whatever
/// else would happen first (enrolling, waiting for the secret or an Administration Server
/// that may be down): the exit status, after saying so, as `ferry validate` does.
fn refuse_early(cmd: &str, domain: Option<&std::path::Path>, name: &str, role: Role) -> Option<i32> {
    let path = domain?;
    let d = match ferry_host::files::load_domain(path) {
        Ok(d) => d,
        Err(errs) => return Some(domain_problems(&errs)),
    };
    let name = MachineName::new(name).ok()?;
    let why = ferry_nodemanager::undefined(&d, &name, &path.display().to_string(), role)?;
    errln!("{cmd}: {why}");
    Some(EXIT_USAGE)
}

/// `ferry leasing init|reset --data-source URL`: prepares a database's lease table, here.
fn leasing_local(ds: String, reset: bool) -> i32 {
    let rt = runtime();
    let shown = ferry_core::domain::redact_url(&ds);
    // Before anything is written: a primary whose commits wait for a synchronous
    // standby that is not there makes init (and every lease write) wait too.
    if !reset {
        match rt.block_on(ferry_store::durability_warning(&ds)) {
            Ok(None) => {}
            Ok(Some(warning)) => errln!("warning: {warning}"),
            Err(e) => errln!("warning: cannot check the database's replication: {e}"),
        }
    }
    let r = rt.block_on(async {
        if reset {
            ferry_store::reset(&ds).await.map(|()| ferry_store::Prepared::Ready)
        } else {
            ferry_store::init(&ds).await
        }
    });
    match r {
        Ok(prepared) => {
            match prepared {
                _ if reset => outln!("lease table at {shown} re-created (every lease was dropped)"),
                ferry_store::Prepared::Ready => outln!("lease table at {shown} is ready"),
                ferry_store::Prepared::Upgraded { from, to } => outln!(
                    "lease table at {shown} upgraded from schema version {from} to {to}, every \
                     lease kept; a ferry older than this one refuses it from now on"
                ),
            }
            0
        }
        Err(e) => {
            errln!("ferry leasing: {e}");
            EXIT_FAILED
        }
    }
}

/// A daemon's end: a bad domain file is reported as `ferry validate` reports it, with its
/// exit status, so that `ferry admin --domain BAD` and `ferry validate BAD` agree.
fn report(r: anyhow::Result<()>, what: &str) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => match e.chain().find_map(|c| c.downcast_ref::<ConfigErrors>()) {
            Some(errs) => domain_problems(errs),
            None => {
                errln!("{what}: {e:#}");
                EXIT_FAILED
            }
        },
    }
}

/// Prints a domain file's problems, one `FILE:LINE:COL: field: message` line each, and
/// returns the exit status of a bad domain file.
fn domain_problems(errs: &ConfigErrors) -> i32 {
    errln!("{errs}");
    errln!("{} problem{} found", errs.errors.len(), if errs.errors.len() == 1 { "" } else { "s" });
    EXIT_USAGE
}

fn validate(file: &std::path::Path) -> i32 {
    match ferry_host::files::load_domain(file) {
        Ok(d) => {
            let n = |k: usize, one: &str| format!("{k} {one}{}", if k == 1 { "" } else { "s" });
            let witnesses = match d.witnesses.len() {
                0 => String::new(),
                1 => ", 1 witness".to_string(),
                k => format!(", {k} witnesses"),
            };
            outln!(
                "{}: domain {} is valid: {}{witnesses}, {}, {}",
                file.display(),
                d.name,
                n(d.machines.len(), "machine"),
                n(d.clusters.len(), "cluster"),
                n(d.servers.len(), "server")
            );
            // Valid, but a machine's takeover would outlast a lease (issue 11).
            for t in d.takeovers() {
                errln!("warning: {}", t.warning());
            }
            for w in d.leasing_warnings() {
                errln!("warning: {w}");
            }
            0
        }
        Err(errs) => domain_problems(&errs),
    }
}

async fn nodemanager(
    machine: String,
    domain: Option<PathBuf>,
    admin_url: Option<String>,
    data_dir: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    enroll_token_file: Option<PathBuf>,
    witness: bool,
) -> anyhow::Result<()> {
    let machine = MachineName::new(machine)?;
    let base = domain.as_deref().map(ferry_host::files::domain_dir);
    let data_dir = match (data_dir, &base) {
        (Some(d), _) => d,
        (None, Some(b)) => b.join("data").join(format!("{}-{machine}", if witness { "witness" } else { "nm" })),
        (None, None) => {
            anyhow::bail!("--data-dir is needed when the domain comes from --admin-url")
        }
    };
    let enroll_token = match enroll_token_file {
        Some(p) => Some(read_token(&p)?),
        None => std::env::var("FERRY_ENROLL_TOKEN").ok().filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_string()),
    };
    // The domain secret is only for enrolling at a first start on the admin's host.
    let secret = if ferry_nodemanager::pki::enrolled(&data_dir) || enroll_token.is_some() {
        None
    } else {
        match std::env::var("FERRY_SECRET") {
            Ok(s) if !s.is_empty() => Some(s),
            _ => match (secret_file, &domain) {
                (Some(p), _) => Some(
                    ferry_host::files::wait_for_secret(&p, Duration::from_secs(30))
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot read the domain secret {}: {e}", p.display()))?,
                ),
                (None, Some(d)) => {
                    let path = ferry_host::files::secret_path(d);
                    Some(ferry_host::files::wait_for_secret(&path, Duration::from_secs(30)).await.map_err(|e| {
                        anyhow::anyhow!("machine {machine} is not enrolled, and the domain secret {} cannot be read ({e}): start the Administration Server first (it creates the secret), or enroll this machine with a token (`ferry machine enroll-token {machine}`, then --enroll-token-file)", path.display())
                    })?)
                }
                (None, None) => None,
            },
        }
    };
    let ferry_exe = std::env::current_exe()?;
    let opts = ferry_nodemanager::NmOptions {
        machine,
        domain_file: domain,
        admin_url,
        data_dir,
        secret,
        enroll_token,
        ferry_exe,
    };
    if witness {
        ferry_nodemanager::run_witness(opts).await
    } else {
        ferry_nodemanager::run(opts).await
    }
}

/// Reads a token from a file (`-`: standard input), trimmed.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
        t
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?
    };
    let t = text.trim().to_string();
    if t.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(t)
}

/// `ferry enroll`: makes this machine's keys and gets its certificates for a token.
async fn enroll(
    admin: &str,
    machine: String,
    data_dir: PathBuf,
    token_file: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    let machine = MachineName::new(machine)?;
    let token = match token_file {
        Some(p) => read_token(&p)?,
        None => std::env::var("FERRY_ENROLL_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_string())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "give the enrollment token with --token-file or $FERRY_ENROLL_TOKEN (on the admin's host: `ferry machine enroll-token {machine}`)"
                )
            })?,
    };
    if ferry_nodemanager::pki::enrolled(&data_dir) && !force {
        anyhow::bail!(
            "machine {machine} is already enrolled ({} holds its certificates); pass --force to replace them",
            ferry_nodemanager::pki::pki_dir(&data_dir).display()
        );
    }
    std::fs::create_dir_all(&data_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", data_dir.display()))?;
    ferry_nodemanager::pki::enroll(&data_dir, &machine, admin, &ferry_nodemanager::pki::Enrollment::Token(token))
        .await?;
    outln!(
        "machine {machine} enrolled: certificates in {}; start its Node Manager with --data-dir {}",
        ferry_nodemanager::pki::pki_dir(&data_dir).display(),
        data_dir.display()
    );
    Ok(())
}

/// `ferry enroll --rotate`: new keys and certificates, asked for with the current ones.
async fn rotate(admin: &str, machine: String, data_dir: PathBuf) -> anyhow::Result<()> {
    let machine = MachineName::new(machine)?;
    let serials = ferry_nodemanager::pki::rotate(&data_dir, &machine, admin).await?;
    outln!(
        "machine {machine}: new keys and certificates in {} (serials {}); restart its Node Manager to use them (its servers keep running); the old ones stay valid until they expire, or until `ferry machine revoke`",
        ferry_nodemanager::pki::pki_dir(&data_dir).display(),
        serials.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// A subcommand's help lists the global options apart from its own, with their defaults,
    /// so none of them looks required (`ferry migrate --help` showed `--admin` next to `--to`).
    #[test]
    fn global_options_show_apart_and_optional() {
        let mut cmd = super::Cli::command();
        cmd.build();
        let help = cmd.find_subcommand_mut("migrate").unwrap().render_help().to_string();
        let (own, global) = help.split_once("Global options (all optional):").expect(&help);
        assert!(own.contains("Usage: ferry migrate [OPTIONS] --to <MACHINE> <SERVER>\n"), "{help}");
        assert!(own.contains("--to <MACHINE>") && !own.contains("--admin") && !own.contains("--ca"), "{help}");
        let admin = global.lines().find(|l| l.trim_start().starts_with("--admin <URL>")).expect(&help);
        assert!(admin.contains("[env: FERRY_ADMIN=") && admin.contains("[default: http://127.0.0.1:7001]"), "{admin}");
        assert!(global.contains("--ca <FILE>") && global.contains("--token-file <PATH>"), "{help}");
    }
}
