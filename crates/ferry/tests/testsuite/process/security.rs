//! Who may do what: operators' tokens and roles, enrollment by one-time token and
//! revocation, short-lived server certificates, a Node Manager that has only the secret.

use std::path::Path;
use std::time::Duration;

use ferry_api::EventKind;
use ferry_testkit::{wait_until, Harness};

use super::{assert_safe, ferry_cli, ferry_cli_env, spec, started};
use crate::{exe, PATIENCE, SERIAL};

/// Operators and their tokens (WebLogic's roles): without a token every API call is refused
/// with how to get one; a Monitor reads but cannot stop; an Operator starts and stops but
/// cannot change the configuration or the tokens; only an Admin can. Revoked and expired
/// tokens are refused by name, every change names its token in the event log, and no token
/// ever reaches a log, the event log or an error.
#[tokio::test]
async fn operator_tokens_have_roles_and_every_change_names_its_token() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let url = h.admin_url.clone();
    let cfg = h.client_config_dir();
    let port = url.rsplit(':').next().unwrap();
    let client_file = cfg.join(format!("admins/127.0.0.1_{port}/token"));
    assert_eq!(
        std::fs::read_to_string(&client_file).unwrap(),
        h.admin_token(),
        "the admin left its token for this host"
    );
    let nowhere = tempfile::tempdir().unwrap();

    // No token: refused, with how to get one.
    for path in ["/api/v1/servers", "/metrics", "/api/v1/domain"] {
        let raw = reqwest::get(format!("{url}{path}")).await.unwrap();
        assert_eq!(raw.status().as_u16(), 401, "{path}");
        let body: serde_json::Value = raw.json().await.unwrap();
        let e = body["error"].as_str().unwrap();
        assert!(e.contains("ferry token create") && e.contains(&client_file.display().to_string()), "{e}");
    }
    let out = ferry_cli(&url, nowhere.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ferry token create") && err.contains("no operator token was found"), "{err}");

    // An Admin makes tokens; each is printed alone on stdout.
    let create = |args: &[&str]| {
        let out = ferry_cli(&url, &cfg, &[&["token", "create"], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 1, "only the token on stdout: {text:?}");
        text.trim().to_string()
    };
    let monitor = create(&["--name", "watcher", "--role", "monitor"]);
    let operator = create(&["--name", "ci", "--role", "operator"]);
    let short = create(&["--name", "brief", "--role", "operator", "--ttl", "300ms"]);
    assert!(monitor.starts_with("ferry_") && operator.starts_with("ferry_"));
    let tokens = [h.admin_token().to_string(), monitor.clone(), operator.clone(), short.clone()];

    // A Monitor reads, and cannot stop.
    let as_monitor = [("FERRY_TOKEN", monitor.as_str())];
    let out = ferry_cli_env(&url, nowhere.path(), &as_monitor, &["status", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ferry_cli_env(&url, nowhere.path(), &as_monitor, &["stop", "ms2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop needs the Operator role; token 'watcher' has Monitor"), "{err}");
    let e = ferry_api::AdminClient::with_token(&url, &monitor, PATIENCE).stop("ms2", false).await.unwrap_err();
    assert_eq!(e.status(), Some(403));

    // An Operator (its token in a file) stops and starts.
    let file = h.dir.join("ci.token");
    std::fs::write(&file, format!("{operator}\n")).unwrap();
    let tf = file.display().to_string();
    for args in [["stop", "ms2", "--wait"], ["start", "ms2", "--wait"]] {
        let out = tokio::task::spawn_blocking({
            let (url, dir, tf) = (url.clone(), nowhere.path().to_path_buf(), tf.clone());
            move || ferry_cli(&url, &dir, &[&["--token-file", tf.as_str()], &args[..]].concat())
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    // ... but changes neither the configuration nor the tokens.
    let ci = ferry_api::AdminClient::with_token(&url, &operator, PATIENCE);
    let domain = ci.domain().await.unwrap();
    let update = ferry_api::DomainUpdate { expected_version: None, domain: domain.domain.clone() };
    let e = ci.put_domain(&update).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("needs the Admin role; token 'ci' has Operator"), "{e}");
    let out = ferry_cli_env(
        &url,
        nowhere.path(),
        &[("FERRY_TOKEN_FILE", tf.as_str())],
        &["token", "create", "--name", "x", "--role", "admin"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("creating tokens needs the Admin role"));
    // The Admin can.
    h.admin().put_domain(&update).await.expect("an Admin changes the configuration");

    // The list shows names and roles, never tokens or hashes.
    let out = ferry_cli(&url, &cfg, &["token", "list", "-o", "json"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let list: Vec<ferry_api::TokenInfo> = serde_json::from_str(&text).expect("token list -o json");
    let roles: Vec<_> = list.iter().map(|t| (t.name.as_str(), t.role.as_str())).collect();
    assert_eq!(roles, [("admin", "admin"), ("watcher", "monitor"), ("ci", "operator"), ("brief", "operator")]);
    assert!(!text.contains("sha256") && tokens.iter().all(|t| !text.contains(&t[6..])), "{text}");

    // Revoked and expired tokens are refused by name.
    let out = ferry_cli(&url, &cfg, &["token", "revoke", "watcher"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = ferry_cli_env(&url, nowhere.path(), &as_monitor, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token 'watcher' was revoked"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let e = ferry_api::AdminClient::with_token(&url, &short, PATIENCE).servers().await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("token 'brief' expired at"), "{e}");

    // The audit trail names the tokens: `-o json` and the human form.
    let out = ferry_cli(&url, &cfg, &["events", "-o", "json"]);
    let events: Vec<ferry_api::Event> = serde_json::from_slice(&out.stdout).expect("events -o json is one JSON array");
    let by = |kind: EventKind, who: &str| events.iter().any(|e| e.kind == kind && e.by.as_deref() == Some(who));
    assert!(by(EventKind::NmStopped, "ci") && by(EventKind::NmStarted, "ci"), "the stop and start name 'ci'");
    assert!(
        by(EventKind::ConfigChanged, "admin")
            && by(EventKind::TokenCreated, "admin")
            && by(EventKind::TokenRevoked, "admin")
    );
    assert!(
        events.iter().filter(|e| e.kind == EventKind::ContactNm).all(|e| e.by.is_some()),
        "every operation step has its token"
    );
    assert!(events.iter().filter(|e| e.source != "admin").all(|e| e.by.is_none()), "daemons' events name no operator");
    let out = ferry_cli(&url, &cfg, &["events"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(by ci)"));

    // No token ever reached a log, the event log or an answer.
    let mut seen = String::new();
    for f in ["logs/admin.log", "data/admin/events.jsonl", "data/admin/tokens.json"] {
        seen += &std::fs::read_to_string(h.dir.join(f)).unwrap();
    }
    for t in &tokens {
        assert!(!seen.contains(&t[6..]), "a token leaked into the admin's files");
    }
    assert_safe(&h).await;
}

/// `nmEnroll`: a machine gets its certificates for a one-time token the admin printed,
/// never a copy of the CA key. A used, misdirected or tampered token is refused. Revoking a
/// machine makes every other process refuse its certificates (and the servers it issued),
/// while the rest of the domain runs on.
#[tokio::test]
async fn enrollment_by_one_time_token_and_revocation() {
    use std::os::unix::fs::PermissionsExt;
    let _g = SERIAL.lock().await;
    let h = started().await;
    let admin = h.admin();
    let enroll = |machine: &str, dir: &Path, token: &str| {
        std::process::Command::new(exe())
            .args(["--admin", &h.admin_url, "enroll", "--machine", machine, "--data-dir"])
            .arg(dir)
            .env("FERRY_ENROLL_TOKEN", token)
            .output()
            .expect("ferry enroll runs")
    };
    let tok = admin.enroll_token("machine-d").await.unwrap();
    assert!(!format!("{tok:?}").contains(&tok.token), "a token in Debug output");
    let dir = tempfile::tempdir().unwrap();
    let out = enroll("machine-d", dir.path(), &tok.token);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry enroll: {said}");
    let pki = dir.path().join("pki");
    for key in ["machine.key", "issuer.key"] {
        let mode = std::fs::metadata(pki.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let creds = ferry_tls::Credentials::load(&pki, "machine").unwrap();
    assert_eq!(creds.identity().unwrap(), ferry_tls::Identity::Machine("machine-d".into()));
    assert!(
        !std::fs::read_to_string(pki.join("machine.pem")).unwrap().contains("PRIVATE"),
        "no key in the certificate file"
    );

    // The same token again (a replay): refused, and nothing is written over.
    let again = tempfile::tempdir().unwrap();
    let out = enroll("machine-d", again.path(), &tok.token);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && said.contains("not valid"), "a used token: {said}");
    assert!(!again.path().join("pki/machine.pem").exists());
    // A token made for machine-d, used for machine-c.
    let tok_d = admin.enroll_token("machine-d").await.unwrap();
    let out = enroll("machine-c", again.path(), &tok_d.token);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && said.contains("another machine"), "a misdirected token: {said}");
    // A token whose CA fingerprint is not this admin's CA (someone in between).
    let (secret_part, _) = tok_d.token.rsplit_once('.').unwrap();
    let out = enroll("machine-d", again.path(), &format!("{secret_part}.00000000000000000000000000000000"));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && said.contains("fingerprint"), "a tampered token: {said}");
    // Garbage.
    let out = enroll("machine-d", again.path(), "no-dot-here");
    assert!(!out.status.success());
    for o in [&tok.token, &tok_d.token] {
        let events = std::fs::read_to_string(h.dir.join("data/admin/events.jsonl")).unwrap();
        assert!(!events.contains(o.as_str()), "a token in the event log");
    }

    // The new certificate works: machine-c's Node Manager answers it (machines may read).
    let nm_c = h.nm_client_as("machine-c", &creds);
    nm_c.health().await.expect("an enrolled machine's certificate is accepted");

    // Rotation: new keys, asked for with the current certificate (no token).
    let out = std::process::Command::new(exe())
        .args(["--admin", &h.admin_url, "enroll", "--machine", "machine-d", "--rotate", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("ferry enroll --rotate runs");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry enroll --rotate: {said}");
    let rotated = ferry_tls::Credentials::load(&pki, "machine").unwrap();
    assert_ne!(rotated.key_pem, creds.key_pem, "a new key");
    assert_ne!(ferry_tls::serial_of(&rotated.chain_pem).unwrap(), ferry_tls::serial_of(&creds.chain_pem).unwrap());
    h.nm_client_as("machine-c", &rotated).health().await.expect("the rotated certificate is accepted");
    // Without a certificate, or with machine-c's for machine-d: refused.
    let anon = ferry_api::AdminClient::new(&h.admin_url, Duration::from_secs(5));
    let req = ferry_api::EnrollRequest {
        machine: ferry_core::MachineName::new("machine-d").unwrap(),
        token: String::new(),
        leaf_csr: String::new(),
        issuer_csr: String::new(),
    };
    assert_eq!(anon.rotate(&req).await.unwrap_err().status(), Some(401));
    let machine_c = ferry_tls::Credentials::load(&h.dir.join("data/nm-machine-c/pki"), "machine").unwrap();
    let as_c = ferry_api::AdminClient::with_tls(&h.admin_url, &machine_c, Duration::from_secs(5));
    assert_eq!(as_c.rotate(&req).await.unwrap_err().status(), Some(403));

    // A connection made before the revocation (kept in the client's pool).
    let live = h.nm_client_as("machine-c", &rotated);
    live.health().await.expect("before the revocation");
    // Revocation: every certificate of machine-d, the harness's Node Manager's included.
    let r = admin.revoke_machine("machine-d").await.unwrap();
    wait_until(PATIENCE, "machine-c's Node Manager to refuse the open connection of revoked machine-d", || async {
        live.health().await.is_err_and(|e| e.status() == Some(403))
    })
    .await
    .unwrap();
    assert!(r.serials.len() >= 4, "two enrollments, two certificates each: {r:?}");
    wait_until(PATIENCE, "machine-c's Node Manager to refuse revoked machine-d", || async {
        h.nm_client_as("machine-c", &creds).health().await.is_err()
    })
    .await
    .unwrap();
    // A server certificate machine-d's issuing key signed is refused too.
    let ms9 = h.server_credentials("machine-d", "ms1").unwrap();
    let e = h.nm_client_as("machine-c", &ms9).health().await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    // The admin no longer talks to machine-d's Node Manager, and says why it cannot.
    wait_until(PATIENCE, "the admin to see machine-d as unreachable", || async {
        admin.machines().await.map(|ms| ms.iter().any(|m| m.name == "machine-d" && !m.reachable)).unwrap_or(false)
    })
    .await
    .unwrap();
    // The rest of the domain runs on.
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    let events = admin.events(0).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == EventKind::MachineRevoked && e.by.as_deref() == Some("admin")),
        "the revocation is in the event log, with the token that made it"
    );
}

/// Servers' certificates are short-lived: a server asks its Node Manager for a fresh one at
/// half its life, over the local channel, and as cluster master keeps commanding Node
/// Managers with it. Here a certificate lives 6 s (a week in production).
#[tokio::test]
async fn servers_refresh_their_short_lived_certificates_and_the_master_still_commands() {
    let _g = SERIAL.lock().await;
    let mut s = spec();
    s.env.push(("FERRY_SERVER_CERT_SECONDS".into(), "6".into()));
    let h = Harness::start(s, exe(), None).await.expect("domain starts");
    h.admin().start_cluster("cluster-1").await.unwrap();
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    // Three lifetimes: every certificate the servers started with has expired by then.
    let log = h.dir.join("data/nm-machine-b/servers/ms1/server.log");
    wait_until(Duration::from_secs(60), "ms1 to take its third fresh certificate", || async {
        std::fs::read_to_string(&log).map(|t| t.matches("a fresh certificate").count() >= 3).unwrap_or(false)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
    // The master (ms1) still commands: machine-c dies, ms2 comes back on machine-d.
    h.kill_machine("machine-c");
    h.wait_running("ms2", "machine-d", 0, PATIENCE).await.expect("the master moved ms2 with a fresh certificate");
}

/// A Node Manager on another host, started with `--admin-url` and the domain secret but no
/// domain file and no CA certificate: it fetches the CA and accepts it only with the admin's
/// proof that it knows the secret (an HMAC over a fresh nonce), then enrolls. With a wrong
/// secret it stops with a clear error and sends nothing the impostor could use.
#[tokio::test]
async fn a_node_manager_with_only_the_secret_and_the_admin_url_enrolls_safely() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let secret = h.secret().await.unwrap();
    h.kill_machine("machine-d");
    let dir = tempfile::tempdir().unwrap();
    let run = |secret: &str, data: &Path| {
        std::process::Command::new(exe())
            .args(["nodemanager", "--machine", "machine-d", "--admin-url", &h.admin_url, "--data-dir"])
            .arg(data)
            .env("FERRY_SECRET", secret)
            .env("FERRY_CONFIG_DIR", h.dir.join("cfg"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ferry nodemanager starts")
    };
    // A wrong secret: the admin's proof does not check out; the Node Manager stops.
    let wrong = tempfile::tempdir().unwrap();
    let out = run("not-the-secret", wrong.path()).wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a Node Manager with a wrong secret kept running: {said}");
    assert!(said.contains("could not prove it knows this domain's secret"), "{said}");
    assert!(!wrong.path().join("pki/machine.pem").exists());
    // The right one: enrolled, serving, reachable by the admin's certificate.
    let mut nm = run(&secret, dir.path());
    let client = h.nm_client("machine-d", Duration::from_secs(2)).await.unwrap();
    let up =
        wait_until(PATIENCE, "the Node Manager of machine-d to answer", || async { client.health().await.is_ok() })
            .await;
    let _ = nm.kill();
    let _ = nm.wait();
    up.unwrap();
    let creds = ferry_tls::Credentials::load(&dir.path().join("pki"), "machine").unwrap();
    assert_eq!(creds.identity().unwrap(), ferry_tls::Identity::Machine("machine-d".into()));
}
