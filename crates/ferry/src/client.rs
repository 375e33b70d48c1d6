//! The client commands: they talk to the Administration Server's API and print tables, or
//! stable JSON with `-o json`. Each call carries the operator token found by
//! [`find_token`]; the token is sent, never printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::{AdminClient, ClientError, ErrorBody, NewToken, Operation, OperationState, TokenInfo};
use ferry_core::TokenName;
use ferry_host::{clock, files};
use serde::de::DeserializeOwned;

use crate::args::{Cmd, EventsOutput, MachineAction, Output, TokenAction, EXIT_FAILED, EXIT_USAGE};

/// Exit status when the Administration Server cannot be reached.
const EXIT_UNREACHABLE: i32 = 3;

const TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn run(admin_url: &str, ca: Option<&Path>, token_file: Option<&Path>, cmd: Cmd) -> i32 {
    let (admin, raw) = match admin_client(admin_url, ca) {
        Ok(a) => a,
        Err(e) => {
            errln!("ferry: {e}");
            return EXIT_FAILED;
        }
    };
    let cred = match find_token(token_file, admin.base()) {
        Ok(c) => c,
        Err(e) => {
            errln!("ferry: {e}");
            return EXIT_USAGE;
        }
    };
    let admin = match &cred.token {
        Some(t) => admin.bearer(t),
        None => admin,
    };
    let target = Target { admin, raw, cred };
    match dispatch(&target, cmd).await {
        Ok(code) => code,
        Err(e) => {
            errln!("ferry: {e}");
            if e.is_unreachable() {
                errln!(
                    "hint: is the Administration Server running? pass --admin URL or set FERRY_ADMIN (now {})",
                    target.admin.base()
                );
                return EXIT_UNREACHABLE;
            }
            let cred = &target.cred;
            match (e.status(), &cred.source) {
                (Some(401), None) => errln!(
                    "hint: no operator token was found: ferry reads --token-file PATH, else $FERRY_TOKEN, else the file $FERRY_TOKEN_FILE, else {}",
                    if cred.looked.is_empty() { "the admin's client file (no $FERRY_CONFIG_DIR or $HOME)".to_string() } else { cred.looked.join(", ") }
                ),
                (Some(401 | 403), Some(source)) => errln!("hint: the token came from {source}"),
                _ => {}
            }
            EXIT_FAILED
        }
    }
}

/// The client of the admin at `url`: over TLS, checked against the domain CA `ca`, or in
/// plain HTTP to an admin on this host (which refuses plain HTTP from anywhere else). Also a
/// bare HTTP client set up the same way, for the calls `AdminClient` does not make.
fn admin_client(url: &str, ca: Option<&std::path::Path>) -> Result<(AdminClient, reqwest::Client), String> {
    let timeout = TIMEOUT;
    let raw = reqwest::Client::builder().timeout(timeout).no_proxy();
    if let Some(path) = ca {
        let pem =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the domain CA {}: {e}", path.display()))?;
        let tls = ferry_tls::anonymous_client_config(&pem, ferry_tls::Expect::Identity(ferry_tls::Identity::Admin))
            .map_err(|e| format!("the domain CA {}: {e}", path.display()))?;
        let raw = raw.use_preconfigured_tls(tls.clone()).build().map_err(|e| e.to_string())?;
        return Ok((AdminClient::with_tls_config(url, tls, timeout), raw));
    }
    if url.starts_with("https://") || !is_local(url) {
        return Err(format!(
            "the Administration Server at {url} answers other hosts only over TLS: give the domain CA with --ca FILE or FERRY_CA (the admin writes it to DOMAIN_DIR/.ferry/ca.pem and to its DATA/pki/ca.pem)"
        ));
    }
    Ok((AdminClient::new(url, timeout), raw.build().map_err(|e| e.to_string())?))
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

/// The operator token for this run and where it came from (for hints; never the token).
struct Credential {
    token: Option<String>,
    source: Option<String>,
    /// Client files looked at without finding a token.
    looked: Vec<String>,
}

/// Finds the operator token: `--token-file PATH`, else `$FERRY_TOKEN`, else the file
/// `$FERRY_TOKEN_FILE`, else the client file the admin at `base` left for this user
/// (`$FERRY_CONFIG_DIR/admins/HOST_PORT/token`). None is not an error: the admin's answer
/// then says how to get one. A token file named explicitly that cannot be read is.
fn find_token(token_file: Option<&Path>, base: &str) -> Result<Credential, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(p) = token_file {
        let source = format!("--token-file {}", p.display());
        return Ok(Credential { token: Some(read_token_file(p, &source)?), source: Some(source), looked: vec![] });
    }
    if let Some(t) = env("FERRY_TOKEN") {
        let source = "$FERRY_TOKEN".to_string();
        return Ok(Credential { token: Some(check_token(t, &source)?), source: Some(source), looked: vec![] });
    }
    if let Some(p) = env("FERRY_TOKEN_FILE") {
        let source = format!("$FERRY_TOKEN_FILE ({p})");
        return Ok(Credential {
            token: Some(read_token_file(Path::new(&p), &source)?),
            source: Some(source),
            looked: vec![],
        });
    }
    let mut looked = Vec::new();
    if let Some(dir) = files::client_config_dir() {
        for f in client_files(&dir, base) {
            match std::fs::read_to_string(&f) {
                Ok(text) => {
                    let source = f.display().to_string();
                    return Ok(Credential {
                        token: Some(check_token(text, &source)?),
                        source: Some(source),
                        looked: vec![],
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => looked.push(f.display().to_string()),
                Err(e) => looked.push(format!("{} ({e})", f.display())),
            }
        }
    }
    Ok(Credential { token: None, source: None, looked })
}

/// The client files that may hold a token for the admin at `base` (`localhost` is also
/// looked up as 127.0.0.1, the address an admin listening on loopback is named by).
fn client_files(dir: &Path, base: &str) -> Vec<PathBuf> {
    let Ok(url) = reqwest::Url::parse(base) else { return vec![] };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return vec![] };
    let mut out = vec![files::admin_token_file(dir, host, port)];
    if host == "localhost" {
        out.push(files::admin_token_file(dir, "127.0.0.1", port));
    }
    out
}

fn read_token_file(path: &Path, source: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    check_token(text, source)
}

/// A token is one word of visible ASCII; anything else would not fit in a header (and is
/// not shown, in case it is a secret put in the wrong place).
fn check_token(text: String, source: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the operator token from {source} is empty"));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("what {source} holds is not an operator token (it has spaces or control characters)"));
    }
    Ok(t.to_string())
}

/// `/api/v1/tokens`, which `AdminClient` does not cover: one call with the operator token.
async fn token_call<T: DeserializeOwned>(
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<T, ClientError> {
    let url = format!("{}{path}", target.admin.base());
    let mut req = target.raw.request(method, &url);
    if let Some(t) = &target.cred.token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let transport = |e: reqwest::Error| {
        if e.is_timeout() {
            ClientError::Timeout { url: url.clone(), timeout_ms: TIMEOUT.as_millis() as u64 }
        } else {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            ClientError::Unreachable { url: url.clone(), reason }
        }
    };
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(transport)?;
    if !status.is_success() {
        let body: ErrorBody = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| ErrorBody { error: format!("{status} from {url}"), detail: serde_json::Value::Null });
        return Err(ClientError::Api { status: status.as_u16(), error: body.error, detail: body.detail });
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url: url.clone(), reason: e.to_string() })
}

fn when(ms: Option<u64>, none: &str) -> String {
    ms.map_or(none.to_string(), clock::format_wall)
}

async fn token_command(target: &Target, action: TokenAction) -> Result<i32, ClientError> {
    match action {
        TokenAction::Create { name, role, ttl } => {
            let name = match TokenName::new(name) {
                Ok(n) => n,
                Err(e) => {
                    errln!("ferry: {e}");
                    return Ok(EXIT_USAGE);
                }
            };
            let role = ferry_api::Role::from(role);
            let body = serde_json::json!({
                "name": name,
                "role": role,
                "ttl_ms": ttl.map(|d| d.as_millis() as u64),
            });
            let made: NewToken = token_call(target, reqwest::Method::POST, "/api/v1/tokens", Some(body)).await?;
            // Only the token on stdout, so `T=$(ferry token create ...)` works.
            outln!("{}", made.token);
            errln!(
                "token '{}' created with the {} role ({}); it is shown only this once: keep it in a file only its user can read, and use it with --token-file FILE or FERRY_TOKEN_FILE",
                made.info.name,
                made.info.role,
                made.info.expires_ms.map_or("valid until revoked".to_string(), |e| format!("expires at {}", clock::format_wall(e)))
            );
            Ok(0)
        }
        TokenAction::List { output } => {
            let list: Vec<TokenInfo> = token_call(target, reqwest::Method::GET, "/api/v1/tokens", None).await?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&list).unwrap_or_default()),
                Output::Text => {
                    outln!("{:<20} {:<9} {:<8} {:<25} {:<25}", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES");
                    for t in list {
                        outln!(
                            "{:<20} {:<9} {:<8} {:<25} {:<25}",
                            t.name.as_str(),
                            t.role.as_str(),
                            t.state,
                            clock::format_wall(t.created_ms),
                            when(t.expires_ms, "never"),
                        );
                    }
                }
            }
            Ok(0)
        }
        TokenAction::Revoke { name } => {
            if let Err(e) = TokenName::new(name.as_str()) {
                errln!("ferry: {e}");
                return Ok(EXIT_USAGE);
            }
            let path = format!("/api/v1/tokens/{}", ferry_api::path_segment(&name)?);
            let info: TokenInfo = token_call(target, reqwest::Method::DELETE, &path, None).await?;
            outln!("token '{}' ({} role) revoked", info.name, info.role);
            Ok(0)
        }
    }
}

/// The admin, as this run calls it.
struct Target {
    /// With the operator token, if one was found.
    admin: AdminClient,
    /// For `/api/v1/tokens`, configured like `admin` (TLS or not).
    raw: reqwest::Client,
    cred: Credential,
}

async fn dispatch(target: &Target, cmd: Cmd) -> Result<i32, ClientError> {
    let admin = &target.admin;
    match cmd {
        Cmd::Token { action } => token_command(target, action).await,
        Cmd::StartCluster { cluster, wait } => {
            let op = admin.start_cluster(cluster.as_str()).await?;
            follow(admin, op, wait).await
        }
        Cmd::Start { server, wait } => {
            let op = admin.start(server.as_str()).await?;
            follow(admin, op, wait).await
        }
        Cmd::Stop { server, force, wait } => {
            let op = admin.stop(server.as_str(), force).await?;
            follow(admin, op, wait).await
        }
        Cmd::Migrate { server, to, wait } => {
            let op = admin.migrate(server.as_str(), to.as_str()).await?;
            follow(admin, op, wait).await
        }
        Cmd::Status { watch, output } => loop {
            let servers = admin.servers().await?;
            let text = match output {
                Output::Json => serde_json::to_string_pretty(&servers).unwrap_or_default(),
                Output::Text => {
                    let mut t = status_table(&servers, &admin.machines().await?);
                    let leasing = admin.leasing().await?;
                    if leasing.basis == ferry_core::domain::LeasingBasis::Consensus {
                        t = format!("{t}\n{}", leasing_line(&leasing));
                    }
                    t
                }
            };
            if watch {
                // Clear the screen and redraw, like `watch`.
                out!("\x1b[2J\x1b[H{}  (every 1s, Ctrl-C to stop)\n\n{text}\n", admin.base());
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                outln!("{text}");
                return Ok(0);
            }
        },
        Cmd::Machine { action: MachineAction::EnrollToken { machine } } => {
            let t = admin.enroll_token(machine.as_str()).await?;
            // The token alone on stdout, so `$(ferry machine enroll-token m)` works.
            outln!("{}", t.token);
            errln!(
                "one-time enrollment token for machine {machine}, valid one hour: on {machine}, run\n  FERRY_ENROLL_TOKEN=<token> ferry --admin {} enroll --machine {machine} --data-dir DIR",
                admin.base()
            );
            Ok(0)
        }
        Cmd::Machine { action: MachineAction::Revoke { machine } } => {
            let r = admin.revoke_machine(machine.as_str()).await?;
            outln!(
                "revoked {} certificate{} of machine {machine}: its Node Manager and the servers it started are refused; enroll it again (`ferry machine enroll-token {machine}`, then `ferry enroll --force` on it) and restart its Node Manager",
                r.serials.len(),
                if r.serials.len() == 1 { "" } else { "s" }
            );
            Ok(0)
        }
        Cmd::Machines { output } => {
            let machines = admin.machines().await?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&machines).unwrap_or_default()),
                Output::Text => {
                    outln!("{:<14} {:<22} {:<10} SERVERS", "MACHINE", "NODE MANAGER", "REACHABLE");
                    for m in machines {
                        let servers: Vec<String> =
                            m.servers.iter().map(|s| format!("{} ({})", s.name, s.state)).collect();
                        outln!(
                            "{:<14} {:<22} {:<10} {}",
                            m.name,
                            m.node_manager,
                            if m.reachable { "yes" } else { "NO" },
                            if m.reachable { servers.join(", ") } else { last_answer(&m) }
                        );
                    }
                }
            }
            Ok(0)
        }
        Cmd::Leases { output } => {
            let leases = admin.leases().await?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&leases).unwrap_or_default()),
                Output::Text => {
                    outln!(
                        "{:<24} {:<10} {:<12} {:>6} {:<8} {:>10} {:<16}",
                        "LEASE",
                        "OWNER",
                        "MACHINE",
                        "EPOCH",
                        "STATE",
                        "LEFT",
                        "INCARNATION"
                    );
                    for l in leases {
                        outln!(
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
        Cmd::Events { follow, since, limit, output } => events(admin, follow, since, limit, output).await,
        Cmd::Leasing { action: crate::args::LeasingAction::Status { output } } => {
            let status = admin.leasing().await?;
            match output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&status).unwrap_or_default()),
                Output::Text => outln!("{}", leasing_text(&status)),
            }
            Ok(0)
        }
        _ => Ok(EXIT_FAILED),
    }
}

/// `ferry events`: every event after `since` the admin holds, page after page, oldest
/// first; at most `limit`. What is left out, and how to get it, goes to stderr.
async fn events(
    admin: &AdminClient,
    follow: bool,
    since: u64,
    limit: Option<u64>,
    output: EventsOutput,
) -> Result<i32, ClientError> {
    if follow && output == EventsOutput::Json {
        errln!("ferry: --follow goes on for ever, so it cannot print one JSON array: use -o jsonl (one object per line) or the text output");
        return Ok(EXIT_USAGE);
    }
    let (mut after, mut shown, mut newest) = (since, 0u64, since);
    let mut not_held = None;
    let mut first_page = true;
    loop {
        let want = limit.map_or(ferry_api::EVENTS_PAGE as u64, |l| (l - shown).min(ferry_api::EVENTS_PAGE as u64));
        if want == 0 {
            break;
        }
        let page = admin.events_page(after, want as usize).await?;
        if std::mem::take(&mut first_page) {
            not_held = page.oldest_id.filter(|&oldest| oldest > after + 1).map(|oldest| (after + 1, oldest - 1));
        }
        newest = newest.max(page.newest_id);
        for e in &page.events {
            match output {
                EventsOutput::Json => out!("{}  {}", if shown == 0 { "[\n" } else { ",\n" }, json(e)),
                EventsOutput::Jsonl => outln!("{}", json(e)),
                EventsOutput::Text => {
                    let by = e.by.as_ref().map(|b| format!(" (by {b})")).unwrap_or_default();
                    outln!("{} {:<24} {:<20} {}{by}", clock::format_wall(e.at_ms), e.source, e.kind, e.message)
                }
            }
            shown += 1;
            after = after.max(e.id);
        }
        if page.events.is_empty() || after >= page.newest_id {
            if !follow {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    if output == EventsOutput::Json {
        outln!("{}", if shown == 0 { "[]" } else { "\n]" });
    }
    if let Some((from, to)) = not_held {
        errln!(
            "ferry: events {from} to {to} are no longer held by the Administration Server (it keeps the newest {}); they are in events.jsonl in its data directory",
            ferry_api::EVENTS_KEPT
        );
    }
    if after < newest {
        errln!(
            "ferry: showed {shown} event{} (the --limit); events {} to {newest} remain: `ferry events --since {after}` shows them",
            if shown == 1 { "" } else { "s" },
            after + 1
        );
    }
    Ok(0)
}

/// One event as a JSON object on one line.
fn json(e: &ferry_api::Event) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

fn left(ms: Option<i64>, held: bool) -> String {
    match ms {
        Some(ms) if held && ms > 0 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) if held => format!("expired {:.1}s", -ms as f64 / 1000.0),
        _ => "-".into(),
    }
}

/// When an unreachable machine's Node Manager last answered, and why it does not now:
/// `last answered 4.2 s ago: ...`.
fn last_answer(m: &ferry_api::MachineStatus) -> String {
    let when = m
        .last_seen_age_ms
        .map_or("never answered".to_string(), |ms| format!("last answered {:.1} s ago", ms as f64 / 1000.0));
    match &m.error {
        Some(e) => format!("{when}: {e}"),
        None => when,
    }
}

/// The servers, then a line for each machine whose Node Manager does not answer. A state
/// with `?` is the last one its machine's Node Manager gave (it holds its lease).
fn status_table(servers: &[ferry_api::ServerStatus], machines: &[ferry_api::MachineStatus]) -> String {
    let mut out = format!(
        "{:<12} {:<12} {:<14} {:<12} {:>8} {:>6} {:>14} {:<6}\n",
        "SERVER", "CLUSTER", "STATE", "MACHINE", "PID", "EPOCH", "LEASE LEFT", "MASTER"
    );
    let last_known = |s: &ferry_api::ServerStatus| s.view_stale && s.lease_remaining_ms.is_some_and(|ms| ms > 0);
    for s in servers {
        out.push_str(&format!(
            "{:<12} {:<12} {:<14} {:<12} {:>8} {:>6} {:>14} {:<6}\n",
            s.name,
            s.cluster,
            if last_known(s) { format!("{}?", s.state) } else { s.state.to_string() },
            s.machine.as_deref().unwrap_or("-"),
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.epoch.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            left(s.lease_remaining_ms, s.lease_remaining_ms.is_some()),
            if s.master { "yes" } else { "" },
        ));
    }
    for m in machines.iter().filter(|m| !m.reachable) {
        out.push_str(&format!("{}  UNREACHABLE ({})\n", m.name, last_answer(m)));
    }
    if servers.iter().any(last_known) {
        out.push_str("?: the last state its machine's Node Manager gave; it holds its lease\n");
    }
    out.trim_end().to_string()
}

/// One line on the consensus cluster: under `ferry status`.
fn leasing_line(l: &ferry_api::LeasingStatus) -> String {
    let leader = match (&l.leader, l.term) {
        (Some(name), Some(term)) => format!("leader {name} (term {term})"),
        _ => "NO LEADER (the lease table is not available: servers that cannot renew fence at their deadlines)".into(),
    };
    // When no voter answers, nobody says who the members are: show every voter as silent.
    let none_answer = l.voters.iter().all(|v| !v.reachable);
    let voters: Vec<String> = l
        .voters
        .iter()
        .filter(|v| v.member || v.reachable || none_answer)
        .map(|v| match (v.member || none_answer, v.reachable) {
            (true, true) => v.name.clone(),
            (true, false) => format!("{} UNREACHABLE", v.name),
            (false, _) => format!("{} (not a voter)", v.name),
        })
        .collect();
    format!("consensus leasing: {leader}; voters {}", voters.join(", "))
}

/// `ferry leasing status`.
fn leasing_text(l: &ferry_api::LeasingStatus) -> String {
    use ferry_core::domain::LeasingBasis;
    if l.basis == LeasingBasis::Database {
        return format!("database leasing: {}", l.data_source.as_deref().unwrap_or("-"));
    }
    let mut out = leasing_line(l);
    out.push_str(&format!(
        "\n\n{:<14} {:>12} {:<7} {:<10} {:>6}  ANSWER\n",
        "VOTER", "ID", "MEMBER", "REACHABLE", "TERM"
    ));
    for v in &l.voters {
        out.push_str(&format!(
            "{:<14} {:>12} {:<7} {:<10} {:>6}  {}\n",
            v.name,
            v.id.map_or_else(|| "-".into(), |i| i.to_string()),
            if v.member { "yes" } else { "no" },
            if v.reachable { "yes" } else { "no" },
            v.term.map_or_else(|| "-".into(), |t| t.to_string()),
            match (&v.error, l.leader.as_deref() == Some(v.name.as_str())) {
                (Some(e), _) => e.clone(),
                (None, true) => "leader".into(),
                (None, false) if v.member => "follower".into(),
                (None, false) => "answers, not a voter (joining, or it left cleanly)".into(),
            },
        ));
    }
    out.trim_end().to_string()
}

/// Prints an operation's steps as they happen (with `wait`) or just its id.
async fn follow(admin: &AdminClient, op: Operation, wait: bool) -> Result<i32, ClientError> {
    if !wait {
        outln!("operation {} ({} {}) accepted; follow it with `ferry events --follow`", op.id, op.kind, op.target);
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
                outln!("{line}");
            }
        }
        shown = cur.steps.len();
        match cur.state {
            OperationState::Succeeded => {
                bar.finish_and_clear();
                outln!("{} {} succeeded in {:.2}s", cur.kind, cur.target, clock::now().since(started) as f64 / 1000.0);
                return Ok(0);
            }
            OperationState::Failed => {
                bar.finish_and_clear();
                errln!("{} {} failed: {}", cur.kind, cur.target, cur.error.unwrap_or_default());
                return Ok(EXIT_FAILED);
            }
            OperationState::Running => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    #[test]
    fn the_leasing_line_names_every_voter_also_when_none_answers() {
        let voter = |name: &str, member: bool, reachable: bool| ferry_api::VoterStatus {
            name: name.into(),
            id: reachable.then_some(1),
            reachable,
            member,
            term: None,
            error: None,
        };
        let mut l = ferry_api::LeasingStatus {
            basis: ferry_core::domain::LeasingBasis::Consensus,
            data_source: None,
            leader: Some("a".into()),
            term: Some(3),
            voters: vec![voter("a", true, true), voter("b", true, false), voter("c", false, true)],
        };
        assert_eq!(
            super::leasing_line(&l),
            "consensus leasing: leader a (term 3); voters a, b UNREACHABLE, c (not a voter)"
        );
        // Every voter gone (the last one stopped cleanly): nobody says who the members are.
        l.leader = None;
        l.voters = vec![voter("a", false, false), voter("b", false, false)];
        assert!(
            super::leasing_line(&l).ends_with("; voters a UNREACHABLE, b UNREACHABLE"),
            "{}",
            super::leasing_line(&l)
        );
    }

    #[test]
    fn the_admins_client_file_is_found_by_host_and_port() {
        let dir = Path::new("/c");
        let f = |base| super::client_files(dir, base);
        assert_eq!(f("http://127.0.0.1:7001"), [PathBuf::from("/c/admins/127.0.0.1_7001/token")]);
        assert_eq!(f("https://admin.example:7443"), [PathBuf::from("/c/admins/admin.example_7443/token")]);
        assert_eq!(f("http://[::1]:7001"), [PathBuf::from("/c/admins/::1_7001/token")]);
        assert_eq!(f("http://10.0.0.1"), [PathBuf::from("/c/admins/10.0.0.1_80/token")]);
        assert_eq!(f("http://localhost:7001")[1], PathBuf::from("/c/admins/127.0.0.1_7001/token"));
    }

    #[test]
    fn token_files_hold_one_word_and_errors_never_show_it() {
        assert_eq!(super::check_token("ferry_ab12\n".into(), "F").unwrap(), "ferry_ab12");
        assert!(super::check_token(" \n".into(), "F").unwrap_err().contains("empty"));
        let e = super::check_token("ferry_secret and more".into(), "F").unwrap_err();
        assert!(!e.contains("ferry_secret"), "{e}");
    }

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
