//! The command line and what it shows: driving a domain with stable `-o json`, persisted
//! configuration changes, log files without colour codes, events paged through and closed
//! pipes.

use std::path::Path;
use std::time::Duration;

use ferry_api::EventKind;
use ferry_testkit::Harness;

use super::{assert_safe, ferry_cli, spec, started};
use crate::{exe, PATIENCE, SERIAL};

/// The command line drives a domain as DESIGN §4 says, with stable `-o json`.
#[tokio::test]
async fn the_command_line_drives_the_domain() {
    let _g = SERIAL.lock().await;
    let h = Harness::start(spec(), exe(), None).await.expect("domain starts");
    let url = h.admin_url.clone();
    // The operator finds the token the admin left for its host's users (DESIGN's flow).
    let cfg = h.client_config_dir();
    let out = tokio::task::spawn_blocking({
        let (url, cfg) = (url.clone(), cfg.clone());
        move || ferry_cli(&url, &cfg, &["start-cluster", "cluster-1", "--wait"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("start-cluster cluster-1 succeeded"));
    // On a running cluster, every server gets its line, the first one too.
    let out = ferry_cli(&url, &cfg, &["start-cluster", "cluster-1", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in ["ms1 is already running on machine-b", "ms2 is already running on machine-c"] {
        assert_eq!(text.matches(line).count(), 1, "start-cluster --wait on a running cluster:\n{text}");
    }

    let out = ferry_cli(&url, &cfg, &["status", "-o", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status -o json is JSON");
    let list = v.as_array().expect("a list");
    assert_eq!(list.len(), 2);
    for s in list {
        for field in ["name", "cluster", "state", "machine", "pid", "epoch", "lease_remaining_ms", "master"] {
            assert!(s.get(field).is_some(), "status -o json lacks {field}: {s}");
        }
        assert_eq!(s["state"], "RUNNING");
    }
    assert_eq!(list.iter().filter(|s| s["master"] == true).count(), 1, "exactly one master");

    let out = ferry_cli(&url, &cfg, &["leases", "-o", "json"]);
    let leases: Vec<ferry_core::lease::Lease> = serde_json::from_slice(&out.stdout).expect("leases -o json");
    assert_eq!(leases.len(), 3, "two server leases and the master lease: {leases:?}");

    let out = tokio::task::spawn_blocking({
        let (url, cfg) = (url.clone(), cfg.clone());
        move || ferry_cli(&url, &cfg, &["migrate", "ms1", "--to", "machine-d", "--wait"])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    for step in [
        "contacting the Node Manager on machine-b to stop ms1",
        "contacting the Node Manager on machine-d to start ms1",
        "obtained its lease on machine-d",
    ] {
        assert!(text.contains(step), "migrate --wait did not show {step:?}:\n{text}");
    }

    let out = ferry_cli(&url, &cfg, &["events", "-o", "json"]);
    let events: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).expect("events -o json is one JSON array");
    assert!(events.iter().any(|e| e.kind == EventKind::MasterAcquired));
    assert!(events.iter().any(|e| e.kind == EventKind::LeaseReleased && e.server.as_deref() == Some("ms1")));

    let out = ferry_cli(&url, &cfg, &["migrate", "ms1", "--to", "machine-q"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown machine machine-q"));
    let out = ferry_cli("http://127.0.0.1:1", &cfg, &["status"]);
    assert_eq!(out.status.code(), Some(3), "an unreachable admin is exit 3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the Administration Server running?"));
    assert_safe(&h).await;
}

/// Configuration changes made through the API are versioned, persisted, survive a restart of
/// the Administration Server, and reach the Node Managers.
#[tokio::test]
async fn configuration_changes_persist() {
    let _g = SERIAL.lock().await;
    let mut h = Harness::start(spec(), exe(), None).await.expect("domain starts");
    let admin = h.admin();
    let v1 = admin.domain().await.unwrap();
    assert_eq!(v1.version, 1);
    let mut d = v1.domain.clone();
    d.servers[0].shutdown_timeout = Duration::from_secs(7);
    let v2 = admin.put_domain(&ferry_api::DomainUpdate { expected_version: Some(1), domain: d.clone() }).await.unwrap();
    assert_eq!(v2.version, 2);
    // A stale writer is refused; an invalid configuration is refused with the field named.
    let e =
        admin.put_domain(&ferry_api::DomainUpdate { expected_version: Some(1), domain: d.clone() }).await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    let mut bad = d.clone();
    bad.servers[0].candidate_machines = vec![ferry_core::MachineName::new("nowhere").unwrap()];
    let e = admin.put_domain(&ferry_api::DomainUpdate { expected_version: None, domain: bad }).await.unwrap_err();
    assert_eq!(e.status(), Some(422));
    assert!(e.to_string().contains("servers[0].candidate_machines[0]"), "{e}");
    // Restart the admin: version 2 is still current.
    h.kill_admin();
    h.start_admin().await.unwrap();
    let again = h.admin().domain().await.unwrap();
    assert_eq!(again.version, 2);
    assert_eq!(again.domain.servers[0].shutdown_timeout, Duration::from_secs(7));
    assert!(h.dir.join("data/admin/history/domain-v2.toml").exists());
}

/// Every `*.log` file under `dir`, at any depth.
fn log_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Logs written to files (the admin's and Node Managers' stderr, the servers' logs their
/// Node Managers keep) are plain text: colour codes only on a terminal.
#[tokio::test]
async fn logs_written_to_files_have_no_colour_codes() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let files = log_files(&h.dir);
    let names: Vec<String> = files.iter().map(|p| p.strip_prefix(&h.dir).unwrap_or(p).display().to_string()).collect();
    for want in ["logs/admin.log", "logs/nm-machine-b.log", "logs/nm-machine-c.log"] {
        assert!(names.iter().any(|n| n == want), "no {want} among {names:?}");
    }
    assert!(names.iter().any(|n| n.ends_with("server.log")), "no server log among {names:?}");
    for f in &files {
        let text = std::fs::read(f).unwrap();
        assert!(!text.windows(2).any(|w| w == b"\x1b["), "{} holds ANSI escape codes", f.display());
    }
    // A Node Manager says how it really reached the admin: over TLS (item 10).
    let nm_log = std::fs::read_to_string(h.dir.join("logs/nm-machine-b.log")).unwrap();
    let enrolled =
        nm_log.lines().find(|l| l.contains("enrolled with the Administration Server at")).unwrap_or_default();
    assert!(enrolled.contains(" at https://127.0.0.1:"), "{enrolled}");
}

/// `ferry ARGS` with its stdout a pipe: `keep` bytes are read, then the pipe is closed while
/// it still writes. Its exit status and stderr.
fn ferry_cli_closed_pipe(h: &Harness, args: &[&str], keep: usize) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(exe())
        .args(args)
        .env("FERRY_ADMIN", &h.admin_url)
        .env("FERRY_CONFIG_DIR", h.client_config_dir())
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ferry runs");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; keep];
    stdout.read_exact(&mut buf).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// Posts `n` events as a daemon does (with the domain secret).
async fn post_events(h: &Harness, n: usize) {
    let admin = ferry_api::AdminClient::with_secret(&h.admin_url, &h.secret().await.unwrap(), PATIENCE);
    let batch = |i0: usize, k: usize| -> Vec<ferry_api::Event> {
        (i0..i0 + k)
            .map(|i| ferry_api::Event {
                id: 0,
                at_ms: 1,
                source: "test".into(),
                kind: ferry_api::EventKind::parse("load"),
                server: None,
                machine: None,
                epoch: None,
                message: format!("event {i}"),
                by: None,
            })
            .collect()
    };
    for i0 in (0..n).step_by(1_000) {
        admin.post_events(&batch(i0, (n - i0).min(1_000))).await.unwrap();
    }
}

/// `ferry events` pages through the whole log (more than one page of the API, more than
/// its old cap of 10,000); `-o json` is one JSON array and `-o jsonl` one object per line;
/// `--since` and `--limit` page by hand, and when it stops short, or the admin no longer
/// holds the oldest events, stderr says what was left out and how to get it. No command
/// panics when its reader closes the pipe.
#[tokio::test]
async fn events_page_through_everything_and_a_closed_pipe_ends_no_command_badly() {
    let _g = SERIAL.lock().await;
    let h = Harness::start(spec(), exe(), None).await.expect("domain starts");
    let (url, cfg) = (h.admin_url.clone(), h.client_config_dir());
    post_events(&h, 10_500).await;
    let newest = h.admin().events_page(0, 1).await.unwrap().newest_id;
    assert!(newest > 10_500, "{newest}");

    let out = ferry_cli(&url, &cfg, &["events", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let all: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).expect("events -o json is one JSON array");
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), (1..=newest).collect::<Vec<_>>());
    let out = ferry_cli(&url, &cfg, &["events", "-o", "jsonl"]);
    let lines: Vec<ferry_api::Event> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(lines, all);
    let out = ferry_cli(&url, &cfg, &["events"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count() as u64, newest);

    // By hand: a limit says what remains and how to get it; --since goes on from there.
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json", "--since", "100", "--limit", "2500"]);
    let some: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(some.iter().map(|e| e.id).collect::<Vec<_>>(), (101..=2600).collect::<Vec<_>>());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "ferry: showed 2500 events (the --limit); events 2601 to {newest} remain: `ferry events --since 2600` shows them"
        )
    );
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json", "--since", "2600"]);
    let rest: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rest.first().map(|e| e.id), Some(2601));
    assert_eq!(rest.last().map(|e| e.id), Some(newest));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json", "--since", &newest.to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n");
    let out = ferry_cli(&url, &cfg, &["events", "--follow", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use -o jsonl"));

    // A reader that stops early: no panic, a clean exit.
    let (code, err) = ferry_cli_closed_pipe(&h, &["events", "-o", "json"], 100);
    assert_eq!((code, err.as_str()), (Some(0), ""), "ferry events -o json | head -c 100");
    let (code, err) = ferry_cli_closed_pipe(&h, &["events"], 100);
    assert_eq!((code, err.as_str()), (Some(0), ""), "ferry events | head -c 100");
    for args in
        [&["status"][..], &["status", "-o", "json"], &["machines"], &["leases", "-o", "json"], &["token", "list"]]
    {
        let (code, err) = ferry_cli_closed_pipe(&h, args, 1);
        assert_eq!((code, err.as_str()), (Some(0), ""), "ferry {args:?} | head -c 1");
    }

    // Past what the admin keeps in memory: the oldest are named, and where they are.
    post_events(&h, 10_500).await;
    let page = h.admin().events_page(0, 1).await.unwrap();
    let (oldest, newest) = (page.oldest_id.unwrap(), page.newest_id);
    assert_eq!(newest - oldest + 1, ferry_api::EVENTS_KEPT as u64);
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json"]);
    let kept: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kept.iter().map(|e| e.id).collect::<Vec<_>>(), (oldest..=newest).collect::<Vec<_>>());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "ferry: events 1 to {} are no longer held by the Administration Server (it keeps the newest 20000); they are in events.jsonl in its data directory",
            oldest - 1
        )
    );
    let log = std::fs::read_to_string(h.dir.join("data/admin/events.jsonl")).unwrap();
    assert_eq!(log.lines().count() as u64, newest, "every event is in events.jsonl");
}
