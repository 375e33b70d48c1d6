//! The demo's hosted service: answers every HTTP request with the server, machine and
//! fencing token it runs under, and (optionally) appends a line to a journal every 10 ms
//! while it runs, so tests can prove no two instances ever ran at once; and the client that
//! asks a floating IP who answers. The records' format and the checks on them are
//! ferry-testkit's (`ferry_testkit::service`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry_testkit::{probe, ClientLine, JournalLine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn run(listen: SocketAddr, journal: Option<PathBuf>) -> i32 {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let server = env("FERRY_SERVER");
    let machine = env("FERRY_MACHINE");
    let epoch: u64 = env("FERRY_FENCING_TOKEN").parse().unwrap_or(0);
    let incarnation = env("FERRY_INCARNATION");
    let pid = std::process::id();
    if let Some(path) = journal {
        let line = JournalLine { t_ms: 0, server: server.clone(), machine: machine.clone(), epoch, pid };
        std::thread::spawn(move || journal_loop(path, line));
    }
    // Bind with retries: the previous instance's socket may linger for a moment.
    let mut listener = None;
    for _ in 0..200 {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let Some(listener) = listener else {
        errln!("demo-service: cannot listen on {listen}");
        return 1;
    };
    let body = serde_json::json!({ "server": server, "machine": machine, "fencing_token": epoch, "incarnation": incarnation, "pid": pid }).to_string();
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf)).await;
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// A plain thread so a busy runtime cannot delay the heartbeat lines.
fn journal_loop(path: PathBuf, mut line: JournalLine) {
    let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) else {
        return;
    };
    loop {
        line.t_ms = ferry_host::clock::now().0;
        if let Ok(s) = serde_json::to_string(&line) {
            let _ = writeln!(f, "{s}");
        }
        #[allow(clippy::disallowed_methods)] // a dedicated thread, not a runtime worker
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ferry demo-client`: asks `target` who it is every `interval_ms` and appends each answer
/// (or its absence) to `log`: what a user of the floating IP saw.
pub async fn run_client(target: SocketAddr, log: PathBuf, interval_ms: u64) -> i32 {
    let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&log) else {
        errln!("demo-client: cannot open {}", log.display());
        return 1;
    };
    loop {
        let t_ms = ferry_host::clock::now().0;
        let answer = probe(target, Duration::from_millis(interval_ms.max(20) * 4)).await;
        let line = match answer {
            Some(v) => ClientLine {
                t_ms,
                ok: true,
                machine: v["machine"].as_str().unwrap_or_default().to_string(),
                epoch: v["fencing_token"].as_u64().unwrap_or(0),
                pid: v["pid"].as_u64().unwrap_or(0) as u32,
            },
            None => ClientLine { t_ms, ok: false, machine: String::new(), epoch: 0, pid: 0 },
        };
        if let Ok(s) = serde_json::to_string(&line) {
            let _ = writeln!(f, "{s}");
        }
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
}
