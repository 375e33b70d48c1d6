//! The client commands: they talk to the Administration Server's API and print tables, or
//! stable JSON with `-o json`.

use std::time::Duration;

use ferry_api::{AdminClient, ClientError, Operation};
use ferry_host::clock;

use crate::cli::{Cmd, MachineAction, Output, EXIT_FAILED};

/// Exit status when the Administration Server cannot be reached.
const EXIT_UNREACHABLE: i32 = 3;

pub(crate) async fn run(admin_url: &str, ca: Option<&std::path::Path>, cmd: Cmd) -> i32 {
    let admin = match admin_client(admin_url, ca) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ferry: {e}");
            return EXIT_FAILED;
        }
    };
    match dispatch(&admin, cmd).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e}");
            if e.is_unreachable() {
                eprintln!(
                    "hint: is the Administration Server running? pass --admin URL or set FERRY_ADMIN (now {})",
                    admin.base()
                );
                EXIT_UNREACHABLE
            } else {
                EXIT_FAILED
            }
        }
    }
}

/// The client of the admin at `url`: over TLS, checked against the domain CA `ca`, or in
/// plain HTTP to an admin on this host (which refuses plain HTTP from anywhere else).
fn admin_client(url: &str, ca: Option<&std::path::Path>) -> Result<AdminClient, String> {
    let timeout = Duration::from_secs(30);
    if let Some(path) = ca {
        let pem =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the domain CA {}: {e}", path.display()))?;
        let tls = ferry_tls::anonymous_client_config(&pem, ferry_tls::Expect::Identity(ferry_tls::Identity::Admin))
            .map_err(|e| format!("the domain CA {}: {e}", path.display()))?;
        return Ok(AdminClient::with_tls_config(url, tls, timeout));
    }
    if url.starts_with("https://") || !is_local(url) {
        return Err(format!(
            "the Administration Server at {url} answers other hosts only over TLS: give the domain CA with --ca FILE or FERRY_CA (the admin writes it to DOMAIN_DIR/.ferry/ca.pem and to its DATA/pki/ca.pem)"
        ));
    }
    Ok(AdminClient::new(url, timeout))
}

/// Whether `url` names a loopback host.
fn is_local(url: &str) -> bool {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn dispatch(admin: &AdminClient, cmd: Cmd) -> Result<i32, ClientError> {
    match cmd {
        Cmd::StartCluster { cluster, wait } => {
            let op = admin.start_cluster(&cluster).await?;
            follow(admin, op, wait).await
        }
        Cmd::Start { server, wait } => {
            let op = admin.start(&server).await?;
            follow(admin, op, wait).await
        }
        Cmd::Stop { server, force, wait } => {
            let op = admin.stop(&server, force).await?;
            follow(admin, op, wait).await
        }
        Cmd::Migrate { server, to, wait } => {
            let op = admin.migrate(&server, &to).await?;
            follow(admin, op, wait).await
        }
        Cmd::Status { watch, output } => loop {
            let servers = admin.servers().await?;
            let text = match output {
                Output::Json => serde_json::to_string_pretty(&servers).unwrap_or_default(),
                Output::Text => status_table(&servers),
            };
            if watch {
                // Clear the screen and redraw, like `watch`.
                print!("\x1b[2J\x1b[H{}  (every 1s, Ctrl-C to stop)\n\n{text}\n", admin.base());
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                println!("{text}");
                return Ok(0);
            }
        },
        Cmd::Machine { action: MachineAction::EnrollToken { machine } } => {
            let t = admin.enroll_token(&machine).await?;
            // The token alone on stdout, so `$(ferry machine enroll-token m)` works.
            println!("{}", t.token);
            eprintln!(
                "one-time enrollment token for machine {machine}, valid one hour: on {machine}, run\n  FERRY_ENROLL_TOKEN=<token> ferry --admin {} enroll --machine {machine} --data-dir DIR",
                admin.base()
            );
            Ok(0)
        }
        Cmd::Machine { action: MachineAction::Revoke { machine } } => {
            let r = admin.revoke_machine(&machine).await?;
            println!(
                "revoked {} certificate{} of machine {machine}: its Node Manager and the servers it started are refused; enroll it again (`ferry machine enroll-token {machine}`, then `ferry enroll --force` on it) and restart its Node Manager",
                r.serials.len(),
                if r.serials.len() == 1 { "" } else { "s" }
            );
            Ok(0)
        }
        Cmd::Machines { output } => {
            let machines = admin.machines().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&machines).unwrap_or_default()),
                Output::Text => {
                    println!("{:<14} {:<22} {:<10} SERVERS", "MACHINE", "NODE MANAGER", "REACHABLE");
                    for m in machines {
                        let servers: Vec<String> =
                            m.servers.iter().map(|s| format!("{} ({})", s.name, s.state)).collect();
                        println!(
                            "{:<14} {:<22} {:<10} {}",
                            m.name,
                            m.node_manager,
                            if m.reachable { "yes" } else { "NO" },
                            if m.reachable { servers.join(", ") } else { m.error.unwrap_or_default() }
                        );
                    }
                }
            }
            Ok(0)
        }
        Cmd::Leases { output } => {
            let leases = admin.leases().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&leases).unwrap_or_default()),
                Output::Text => {
                    println!(
                        "{:<24} {:<10} {:<12} {:>6} {:<8} {:>10} {:<16}",
                        "LEASE", "OWNER", "MACHINE", "EPOCH", "STATE", "LEFT", "INCARNATION"
                    );
                    for l in leases {
                        println!(
                            "{:<24} {:<10} {:<12} {:>6} {:<8} {:>10} {:<16}",
                            l.name.to_string(),
                            l.owner.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
                            l.machine.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
                            l.epoch.0,
                            format!("{:?}", l.state).to_lowercase(),
                            left(Some(l.remaining_ms), l.state == ferry_core::lease::LeaseState::Held),
                            l.incarnation.map(|i| i.0).unwrap_or_else(|| "-".into()),
                        );
                    }
                }
            }
            Ok(0)
        }
        Cmd::Events { follow, output } => {
            let mut since = 0;
            loop {
                let events = admin.events(since).await?;
                for e in &events {
                    since = since.max(e.id);
                    match output {
                        Output::Json => {
                            println!("{}", serde_json::to_string(e).unwrap_or_default())
                        }
                        Output::Text => {
                            println!("{} {:<24} {:<20} {}", clock::format_wall(e.at_ms), e.source, e.kind, e.message)
                        }
                    }
                }
                if !follow {
                    return Ok(0);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        _ => Ok(EXIT_FAILED),
    }
}

fn left(ms: Option<i64>, held: bool) -> String {
    match ms {
        Some(ms) if held && ms > 0 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) if held => format!("expired {:.1}s", -ms as f64 / 1000.0),
        _ => "-".into(),
    }
}

fn status_table(servers: &[ferry_api::ServerStatus]) -> String {
    let mut out = format!(
        "{:<12} {:<12} {:<14} {:<12} {:>8} {:>6} {:>14} {:<6}\n",
        "SERVER", "CLUSTER", "STATE", "MACHINE", "PID", "EPOCH", "LEASE LEFT", "MASTER"
    );
    for s in servers {
        out.push_str(&format!(
            "{:<12} {:<12} {:<14} {:<12} {:>8} {:>6} {:>14} {:<6}\n",
            s.name,
            s.cluster,
            s.state,
            s.machine.clone().unwrap_or_else(|| "-".into()),
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.epoch.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            left(s.lease_remaining_ms, s.lease_remaining_ms.is_some()),
            if s.master { "yes" } else { "" },
        ));
    }
    out.trim_end().to_string()
}

/// Prints an operation's steps as they happen (with `wait`) or just its id.
async fn follow(admin: &AdminClient, op: Operation, wait: bool) -> Result<i32, ClientError> {
    if !wait {
        println!("operation {} ({} {}) accepted; follow it with `ferry events --follow`", op.id, op.kind, op.target);
        return Ok(0);
    }
    let started = clock::now();
    // A spinner on a terminal; plain lines in a pipe or a log (indicatif hides itself there).
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    let tty = !bar.is_hidden();
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message(format!("{} {}", op.kind, op.target));
    let mut shown = 0;
    loop {
        let cur = admin.operation(op.id).await?;
        for s in cur.steps.iter().skip(shown) {
            let line = format!("  [{:>6.2}s] {}", clock::now().since(started) as f64 / 1000.0, s.message);
            if tty {
                bar.println(line);
            } else {
                println!("{line}");
            }
        }
        shown = cur.steps.len();
        match cur.state.as_str() {
            "succeeded" => {
                bar.finish_and_clear();
                println!(
                    "{} {} succeeded in {:.2}s",
                    cur.kind,
                    cur.target,
                    clock::now().since(started) as f64 / 1000.0
                );
                return Ok(0);
            }
            "failed" => {
                bar.finish_and_clear();
                eprintln!("{} {} failed: {}", cur.kind, cur.target, cur.error.unwrap_or_default());
                return Ok(EXIT_FAILED);
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_urls_are_local_and_others_are_not() {
        for u in [
            "http://127.0.0.1:7001",
            "127.0.0.1:7001",
            "http://localhost:7001/",
            "http://[::1]:7001",
            "http://127.9.9.9",
        ] {
            assert!(super::is_local(u), "{u}");
        }
        for u in [
            "http://198.18.0.1:7001",
            "http://admin.example:7001",
            "http://[2001:db8::1]:7001",
            "http://127.0.0.1.evil:7001",
        ] {
            assert!(!super::is_local(u), "{u}");
        }
    }
}
