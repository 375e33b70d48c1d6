//! Hosted services: started after the lease is held, each in a process group of its own in
//! the server's session, with the DESIGN §4 environment; health-checked every interval.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_core::domain::{Health, Server, Service};
use ferry_host::process::{self, SpawnSpec};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) struct Running {
    pub name: String,
    pub child: tokio::process::Child,
    pub pid: i32,
    pub health: Option<Health>,
}

/// The environment every hosted service gets (DESIGN §4).
pub(crate) struct ServiceEnv<'a> {
    pub server: &'a Server,
    pub machine: &'a str,
    pub epoch: u64,
    pub incarnation: &'a str,
}

pub(crate) fn start_all(env: &ServiceEnv<'_>, dir: &Path) -> Result<Vec<Running>, String> {
    let mut out = Vec::new();
    for svc in &env.server.services {
        match start_one(env, svc, dir) {
            Ok(r) => out.push(r),
            Err(e) => {
                kill_all(&mut out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn start_one(env: &ServiceEnv<'_>, svc: &Service, dir: &Path) -> Result<Running, String> {
    let mut vars: Vec<(String, String)> = vec![
        ("FERRY_SERVER".into(), env.server.name.to_string()),
        ("FERRY_MACHINE".into(), env.machine.into()),
        ("FERRY_CLUSTER".into(), env.server.cluster.to_string()),
        ("FERRY_FENCING_TOKEN".into(), env.epoch.to_string()),
        ("FERRY_FLOATING_IP".into(), env.server.floating_ip.map(|i| i.to_string()).unwrap_or_default()),
        ("FERRY_INCARNATION".into(), env.incarnation.into()),
        ("FERRY_SERVICE".into(), svc.name.clone()),
    ];
    vars.extend(svc.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let spec = SpawnSpec {
        program: svc.command[0].clone().into(),
        args: svc.command[1..].to_vec(),
        env: vars,
        env_remove: vec!["FERRY_SECRET".into(), "FERRY_LOG_TARGET".into()],
        log_file: Some(dir.join(format!("{}.log", svc.name))),
        new_group: true,
        ..Default::default()
    };
    let child =
        process::spawn(&spec).map_err(|e| format!("cannot start service {} ({}): {e}", svc.name, svc.command[0]))?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    Ok(Running { name: svc.name.clone(), child, pid, health: svc.health.clone() })
}

/// SIGKILLs every service's process group at once (fencing).
pub(crate) fn kill_all(services: &mut [Running]) {
    for s in services.iter() {
        process::signal_group(s.pid, Signal::SIGKILL);
    }
}

/// SIGTERM, wait up to `patience`, then SIGKILL (graceful stop).
pub(crate) async fn stop_all(services: &mut [Running], patience: Duration) {
    for s in services.iter() {
        process::signal_group(s.pid, Signal::SIGTERM);
    }
    let deadline = ferry_host::clock::now() + patience;
    for s in services.iter_mut() {
        let left = Duration::from_millis(deadline.since(ferry_host::clock::now()));
        if tokio::time::timeout(left, s.child.wait()).await.is_err() {
            process::signal_group(s.pid, Signal::SIGKILL);
            let _ = s.child.wait().await;
        }
    }
    kill_all(services);
}

/// The first service whose process has ended, with how it ended.
pub(crate) fn exited(services: &mut [Running]) -> Option<(String, String)> {
    for s in services.iter_mut() {
        if let Ok(Some(status)) = s.child.try_wait() {
            return Some((s.name.clone(), status.to_string()));
        }
    }
    None
}

/// Runs one health check with a timeout.
pub(crate) async fn check(health: &Health, timeout: Duration) -> Result<(), String> {
    let work = async {
        match health {
            Health::Tcp(addr) => tcp(*addr).await,
            Health::Http(url) => http(url).await,
            Health::Exec(cmd) => exec(cmd).await,
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
}

async fn tcp(addr: SocketAddr) -> Result<(), String> {
    let s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("tcp {addr}: {e}"))?;
    // Nothing listens on a port in the ephemeral range, and Linux picked that very port as
    // the connection's source: it connected to itself. That is no service, and the socket
    // would hold the port the service needs.
    if connected_to_itself(&s) {
        return Err(format!("tcp {addr}: nothing listens there (the check connected to itself)"));
    }
    Ok(())
}

/// Whether a TCP connection's two ends are one socket (a TCP self-connect).
fn connected_to_itself(s: &tokio::net::TcpStream) -> bool {
    matches!((s.local_addr(), s.peer_addr()), (Ok(l), Ok(p)) if l == p)
}

/// A minimal HTTP/1.0 GET (the services are local; a client crate would be overkill here).
async fn http(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = tokio::net::TcpStream::connect(hostport).await.map_err(|e| format!("http {url}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("http {url}: {e}"))?;
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).await.map_err(|e| format!("http {url}: {e}"))?;
    let head = String::from_utf8_lossy(&buf[..n]);
    let code = head.split_whitespace().nth(1).unwrap_or("");
    if code.starts_with('2') || code.starts_with('3') {
        Ok(())
    } else {
        Err(format!("http {url}: status {code:?}"))
    }
}

async fn exec(cmd: &[String]) -> Result<(), String> {
    let mut c = tokio::process::Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c.kill_on_drop(true);
    let status = c.status().await.map_err(|e| format!("exec {}: {e}", cmd[0]))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exec {}: {status}", cmd[0]))
    }
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn a_health_check_that_connected_to_itself_is_no_service() {
        // Force a self-connect: bind the client to the port it connects to (what the kernel
        // may pick on its own for a port in the ephemeral range nobody listens on).
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(addr).unwrap();
        let s = sock.connect(addr).await.expect("Linux lets a socket connect to itself");
        assert!(connected_to_itself(&s));
        drop(s);
        // A real listener is a service.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let real = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        assert!(!connected_to_itself(&real));
        assert!(tcp(listener.local_addr().unwrap()).await.is_ok());
    }

    use super::*;

    #[tokio::test]
    async fn health_checks_tell_up_from_down() {
        let t = Duration::from_millis(500);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A tiny HTTP server: 200 on /ok, 503 elsewhere.
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ");
                let line = if ok { "HTTP/1.0 200 OK\r\n\r\n" } else { "HTTP/1.0 503 Unavailable\r\n\r\n" };
                let _ = s.write_all(line.as_bytes()).await;
            }
        });
        assert!(check(&Health::Tcp(addr), t).await.is_ok());
        assert!(check(&Health::Http(format!("http://{addr}/ok")), t).await.is_ok());
        let e = check(&Health::Http(format!("http://{addr}/bad")), t).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
        assert!(check(&Health::Exec(vec!["true".into()]), t).await.is_ok());
        assert!(check(&Health::Exec(vec!["false".into()]), t).await.is_err());
        let e = check(&Health::Exec(vec!["/no/such/program".into()]), t).await.unwrap_err();
        assert!(e.contains("/no/such/program"), "{e}");
        // A port nobody listens on.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(check(&Health::Tcp(free), t).await.is_err());
        // A check that hangs is cut off by the timeout.
        let e = check(&Health::Exec(vec!["sleep".into(), "5".into()]), Duration::from_millis(100)).await.unwrap_err();
        assert!(e.contains("no answer within 100 ms"), "{e}");
    }
}
