//! Bad input gets a clear error and disturbs nothing: wrong requests, bad domain files, a
//! Node Manager for an undefined machine, hostile and random HTTP bodies, bad names.

use std::time::Duration;

use ferry_api::{NmClient, NmStart, NmStop, Origin};

use super::{assert_safe, ferry_cli, started};
use crate::{exe, PATIENCE, SERIAL};

/// Bad input gets a clear error and disturbs nothing.
#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let admin = h.admin();
    let before = h.status().await.unwrap();

    let e = admin.migrate("ms2", "machine-x").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("unknown machine machine-x"), "{e}");
    let e = admin.migrate("nosuch", "machine-d").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("unknown server nosuch"), "{e}");
    let e = admin.start("ms2").await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("already running on machine-c"), "{e}");
    let e = admin.migrate("ms2", "machine-c").await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    let e = admin.start_cluster("nosuch").await.unwrap_err();
    assert_eq!(e.status(), Some(404));

    // A Node Manager talks only mutual TLS with certificates of this domain: plain HTTP, no
    // certificate, or another domain's certificate get no answer at all.
    let addr = h.nm_addr["machine-c"].to_string();
    let cmd = NmStart { origin: Origin::Admin, in_place: true };
    let raw = reqwest::Client::new().post(format!("http://{addr}/nm/v1/servers/ms2/start")).body("{}").send().await;
    assert!(raw.is_err(), "plain HTTP got an answer: {raw:?}");
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = ferry_tls::Ca::load_or_create(other_dir.path(), "other").unwrap();
    let stranger = other_ca.issue(&ferry_tls::Identity::Admin).unwrap();
    let e = NmClient::new(&addr, "machine-c", &stranger, Duration::from_secs(2)).start("ms2", &cmd).await.unwrap_err();
    assert!(e.is_unreachable(), "another domain's certificate: {e}");
    let admin_creds = h.admin_credentials().await.unwrap();
    let anon = ferry_tls::anonymous_client_config(&admin_creds.ca_pem, ferry_tls::Expect::AnyPeer).unwrap();
    let e = NmClient::with_tls(&addr, anon, Duration::from_secs(2)).start("ms2", &cmd).await.unwrap_err();
    assert!(e.is_unreachable(), "no client certificate: {e}");
    // Dialling machine-c but expecting machine-b's Node Manager: the client refuses.
    let e = NmClient::new(&addr, "machine-b", &admin_creds, Duration::from_secs(2)).health().await.unwrap_err();
    assert!(e.to_string().contains("expected machine machine-b"), "{e}");

    // Commands: the admin's certificate as the admin; a server's only as the current master
    // of its cluster at the lease's epoch; nobody else.
    let cluster = h.admin().clusters().await.unwrap().into_iter().next().expect("a cluster");
    let (master, epoch) = (cluster.master.expect("a master"), cluster.master_epoch.expect("an epoch"));
    let home = if master == "ms1" { "machine-b" } else { "machine-c" };
    let as_master = |epoch, server: &str| NmStart {
        origin: Origin::Master {
            cluster: cluster.name.clone(),
            epoch,
            server: ferry_core::ServerName::new(server).unwrap(),
        },
        in_place: false,
    };
    let master_creds = h.server_credentials(home, &master).unwrap();
    let nm = h.nm_client_as("machine-c", &master_creds);
    nm.start("ms2", &as_master(epoch, &master)).await.expect("the current master may ask (ms2 already runs: no-op)");
    let e = nm.start("ms2", &as_master(ferry_core::Epoch(epoch.0 - 1), &master)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("not the current master"), "{e}");
    let e = nm.start("ms2", &NmStart { origin: Origin::Admin, in_place: false }).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "a server posing as the admin: {e}");
    let other = if master == "ms1" { "ms2" } else { "ms1" };
    let e = nm.start("ms2", &as_master(epoch, other)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "a command claiming another server's name: {e}");
    assert!(e.to_string().contains("certificate is server"), "{e}");
    let impostor = h.server_credentials("machine-d", other).unwrap();
    let e = h.nm_client_as("machine-c", &impostor).start("ms2", &as_master(epoch, other)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "a server that is not master: {e}");
    let e = h.nm_client_as("machine-c", &admin_creds).start("ms2", &as_master(epoch, &master)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "the admin posing as a master: {e}");
    let machine_d = ferry_tls::Credentials::load(&h.dir.join("data/nm-machine-d/pki"), "machine").unwrap();
    let e = h
        .nm_client_as("machine-c", &machine_d)
        .stop("ms2", &NmStop { origin: Origin::Admin, force: true, timeout_ms: None })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "another machine's Node Manager: {e}");
    // Malformed bodies.
    let raw = reqwest::Client::new()
        .post(format!("{}/api/v1/servers/ms2/migrate", h.admin_url))
        .bearer_auth(h.admin_token())
        .header("content-type", "application/json")
        .body("{\"to\": 5")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 422, "a number where a machine name belongs");
    let body: serde_json::Value = raw.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("bad migrate request"));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = h.status().await.unwrap();
    for (a, b) in before.iter().zip(&after) {
        assert_eq!((a.state, &a.machine, a.epoch, a.pid), (b.state, &b.machine, b.epoch, b.pid), "nothing changed");
    }
    assert_safe(&h).await;
}

/// `ferry validate` prints every problem with file, line and field, and exits non-zero.
#[test]
fn validate_reports_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"name = "d"
[leasing]
data_source = "sqlite://x.db"

[[machines]]
name = "m1"
node_manager = "127.0.0.1:5556"

[[clusters]]
name = "c1"

[[servers]]
name = "ms1"
cluster = "c1"
machine = "m2"
candidate_machines = ["m9"]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(exe()).arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:15:11: servers[0].machine: unknown machine \"m2\""), "{err}");
    assert!(err.contains("bad.toml:16:23: servers[0].candidate_machines[0]: unknown machine \"m9\""), "{err}");
    assert!(err.contains("2 problems found"), "{err}");

    std::fs::write(&path, "name = \"d\"\n[leasing]\ndata_source = \"sqlite://x.db\"\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(exe()).arg("validate").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4:1: leasing.bogus: unknown key: the keys allowed here are basis, data_source"),
        "{err}"
    );
}

/// A bad domain file stops `ferry admin` and `ferry nodemanager --domain` as it fails
/// `ferry validate`: exit status 2 and the same `FILE:LINE:COL: field: message` lines.
#[tokio::test]
async fn daemons_refuse_a_bad_domain_file_as_validate_does() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| async move {
        let child = tokio::process::Command::new(exe())
            .args(&args)
            .env("FERRY_LOG", "off")
            .env_remove("FERRY_SECRET")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ferry starts");
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("ferry {args:?} kept running with a bad domain file"))
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let path = |name: &str| dir.path().join(name).display().to_string();
    let daemons = |file: &str| {
        [
            vec!["admin".into(), "--domain".into(), file.to_string(), "--data-dir".into(), path("admin")],
            vec![
                "nodemanager".into(),
                "--machine".into(),
                "m1".into(),
                "--domain".into(),
                file.to_string(),
                "--data-dir".into(),
                path("nm-m1"),
            ],
        ]
    };

    let bad = path("bad.toml");
    std::fs::write(
        &bad,
        "name = \"d\"\n[leasing]\ndata_source = \"sqlite://x.db\"\n\n[[machines]]\nname = \"m1\"\nnode_manager = \"localhost\"\n",
    )
    .unwrap();
    let validate = run(vec!["validate".into(), bad.clone()]).await;
    assert_eq!(
        validate,
        (
            Some(2),
            format!(
                "{bad}:7:16: machines[0].node_manager: expected IP:PORT, like \"127.0.0.1:5556\", got the string \"localhost\"\n1 problem found\n"
            )
        )
    );
    for args in daemons(&bad) {
        assert_eq!(run(args.clone()).await, validate, "ferry {args:?}");
    }

    // A domain file that cannot be read is a bad domain file too.
    let missing = path("missing.toml");
    let validate = run(vec!["validate".into(), missing.clone()]).await;
    assert_eq!(validate.0, Some(2), "{}", validate.1);
    assert!(validate.1.starts_with(&format!("{missing}: cannot read the domain file: ")), "{}", validate.1);
    for args in daemons(&missing) {
        assert_eq!(run(args.clone()).await, validate, "ferry {args:?}");
    }
}

/// Issue 9, item 11: a Node Manager for a machine the domain does not define waited for ever
/// for an Administration Server to enroll it. It exits at once with the error (exit 2),
/// whether or not an admin runs, and with only a cached configuration to go by.
#[tokio::test]
async fn a_node_manager_for_an_undefined_machine_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let domain = dir.path().join("d.toml");
    std::fs::write(
        &domain,
        "name = \"d\"\n[admin]\nlisten = \"127.0.0.1:1\"\n[leasing]\ndata_source = \"sqlite://x.db\"\n\n[[machines]]\nname = \"alpha\"\nnode_manager = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    let run = |args: Vec<String>| async move {
        let child = tokio::process::Command::new(exe())
            .args(&args)
            .env("FERRY_LOG", "off")
            .env_remove("FERRY_SECRET")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ferry starts");
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("ferry {args:?} kept waiting"))
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let s = |x: &str| x.to_string();
    // No admin listens at 127.0.0.1:1: the Node Manager must not wait for one.
    let (code, err) = run(vec![
        s("nodemanager"),
        s("--machine"),
        s("zeta"),
        s("--domain"),
        domain.display().to_string(),
        s("--data-dir"),
        dir.path().join("nm").display().to_string(),
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("machine zeta is not defined in domain d") && err.contains("defines alpha"),
        "the error names the machine and the ones defined: {err}"
    );
    // With only --admin-url (down) and a cached configuration from an earlier run.
    let data = dir.path().join("nm-cached");
    std::fs::create_dir_all(&data).unwrap();
    let cached = ferry_api::VersionedDomain { version: 3, domain: ferry_host::files::load_domain(&domain).unwrap() };
    std::fs::write(data.join("domain-cache.json"), serde_json::to_vec(&cached).unwrap()).unwrap();
    let (code, err) = run(vec![
        s("nodemanager"),
        s("--machine"),
        s("zeta"),
        s("--admin-url"),
        s("https://127.0.0.1:1"),
        s("--data-dir"),
        data.display().to_string(),
    ])
    .await;
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("machine zeta is not defined in domain d"), "{err}");
}

/// What a request of [`hostile_requests_get_clear_4xx_and_disturb_nothing`] presents.
#[derive(Clone, Copy)]
enum Auth {
    None,
    /// The domain secret as a bearer token.
    Secret,
    /// The admin's initial Admin token.
    Token,
    /// Mutual TLS with the admin's certificate (the Node Manager's cases).
    Cert,
}

/// Hostile input, table-driven: malformed (400), wrongly shaped (422), wrongly typed (415),
/// oversized (413), unauthenticated (401) and unknown (404, 405) requests to the
/// Administration Server and a Node Manager each get a 4xx with a JSON `error`, and
/// the daemons and their servers keep running untouched.
#[tokio::test]
async fn hostile_requests_get_clear_4xx_and_disturb_nothing() {
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before = h.status().await.unwrap();
    let secret = h.secret().await.unwrap();
    let nm = format!("https://{}", h.nm_addr["machine-c"]);
    let admin = h.admin_url.clone();
    let big = "x".repeat(2 * 1024 * 1024);
    let long_name = "a".repeat(5000);
    // Admin calls carry the initial Admin token (so the check under test is the input's);
    // its daemon route the domain secret, or nothing.
    let token = h.admin_token().to_string();
    // (method, url, auth, content type, body, expected status)
    let cases: Vec<(&str, String, Auth, &str, String, u16)> = vec![
        (
            "POST",
            format!("{admin}/api/v1/servers/ms2/migrate"),
            Auth::Token,
            "application/json",
            "{\"to\": ".into(),
            400,
        ),
        ("POST", format!("{admin}/api/v1/servers/ms2/migrate"), Auth::Token, "application/json", "{}".into(), 422),
        (
            "POST",
            format!("{admin}/api/v1/servers/ms2/migrate"),
            Auth::Token,
            "application/json",
            "{\"to\": 7}".into(),
            422,
        ),
        (
            "POST",
            format!("{admin}/api/v1/servers/ms2/migrate"),
            Auth::Token,
            "text/plain",
            "{\"to\":\"machine-d\"}".into(),
            415,
        ),
        ("POST", format!("{admin}/api/v1/servers/ms2/migrate"), Auth::Token, "application/json", big.clone(), 413),
        (
            "POST",
            format!("{admin}/api/v1/servers/{long_name}/migrate"),
            Auth::Token,
            "application/json",
            "{\"to\":\"machine-d\"}".into(),
            400,
        ),
        (
            "POST",
            format!("{admin}/api/v1/servers/..%2F..%2Fetc/start"),
            Auth::Token,
            "application/json",
            "{}".into(),
            400,
        ),
        (
            "POST",
            format!("{admin}/api/v1/servers/ms2/migrate"),
            Auth::Token,
            "application/json",
            "{\"to\":\"../../etc\"}".into(),
            400,
        ),
        (
            "PUT",
            format!("{admin}/api/v1/domain"),
            Auth::Token,
            "application/json",
            "{\"domain\": {\"name\": 5}}".into(),
            422,
        ),
        ("PUT", format!("{admin}/api/v1/domain"), Auth::Token, "application/json", "[]".into(), 422),
        ("GET", format!("{admin}/api/v1/events?since=-1"), Auth::Token, "", String::new(), 400),
        ("GET", format!("{admin}/api/v1/operations/abc"), Auth::Token, "", String::new(), 400),
        ("GET", format!("{admin}/api/v1/operations/999999"), Auth::Token, "", String::new(), 404),
        ("DELETE", format!("{admin}/api/v1/servers"), Auth::Token, "", String::new(), 405),
        ("GET", format!("{admin}/api/v2/anything"), Auth::Token, "", String::new(), 404),
        ("POST", format!("{admin}/api/v1/events"), Auth::None, "application/json", "[]".into(), 401),
        ("GET", format!("{admin}/api/v1/servers"), Auth::None, "", String::new(), 401),
        ("POST", format!("{admin}/api/v1/servers/ms2/stop"), Auth::Secret, "application/json", "{}".into(), 401),
        (
            "POST",
            format!("{admin}/api/v1/events"),
            Auth::Secret,
            "application/json",
            "{\"not\": \"a list\"}".into(),
            422,
        ),
        ("POST", format!("{nm}/nm/v1/servers/ms2/start"), Auth::Cert, "application/json", "{".into(), 400),
        (
            "POST",
            format!("{nm}/nm/v1/servers/ms2/start"),
            Auth::Cert,
            "application/json",
            "{\"origin\": {\"kind\": \"root\"}}".into(),
            422,
        ),
        ("POST", format!("{nm}/nm/v1/servers/ms2/start"), Auth::Cert, "application/json", big.clone(), 413),
        (
            "POST",
            format!("{nm}/nm/v1/servers/nosuch/start"),
            Auth::Cert,
            "application/json",
            "{\"origin\":{\"kind\":\"admin\"}}".into(),
            404,
        ),
        (
            "POST",
            format!("{nm}/nm/v1/servers/{long_name}/stop"),
            Auth::Cert,
            "application/json",
            "{\"origin\":{\"kind\":\"admin\"}}".into(),
            400,
        ),
        (
            "POST",
            format!("{nm}/nm/v1/servers/ms1/start"),
            Auth::Cert,
            "application/json",
            "{\"origin\":{\"kind\":\"admin\"}}".into(),
            409,
        ),
        (
            "POST",
            format!("{nm}/nm/v1/exec"),
            Auth::Cert,
            "application/json",
            "{\"command\": [\"/bin/sh\"]}".into(),
            404,
        ),
    ];
    // No pooled connections: a server may close one after refusing an oversized body.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // The Node Manager's cases go over mutual TLS with the admin's certificate ("auth").
    let creds = h.admin_credentials().await.unwrap();
    let tls =
        creds.client_config(ferry_tls::Expect::Identity(ferry_tls::Identity::Machine("machine-c".into()))).unwrap();
    let nm_client = reqwest::Client::builder().pool_max_idle_per_host(0).use_preconfigured_tls(tls).build().unwrap();
    for (method, url, auth, ctype, body, want) in cases {
        let to_nm = url.starts_with(&nm);
        let mut req = if to_nm { &nm_client } else { &client }.request(method.parse().unwrap(), &url);
        match auth {
            Auth::None | Auth::Cert => {}
            Auth::Secret => req = req.bearer_auth(&secret),
            Auth::Token => req = req.bearer_auth(&token),
        }
        if !ctype.is_empty() {
            req = req.header("content-type", ctype);
        }
        let shown = format!("{method} {} ({} bytes)", &url[..url.len().min(90)], body.len());
        let oversized = body.len() > 1024 * 1024;
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            // A server that refuses an oversized body may answer 413 and close while the
            // client is still sending: the client then sees a reset. Both are refusals.
            Err(_) if oversized => continue,
            Err(e) => panic!("{shown}: {}", e.without_url()),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, want, "{shown}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{shown}: not JSON: {text}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{shown}: no error message: {text}");
        assert!(!text.contains(&secret) && !text.contains(&token), "{shown}: the secret leaked");
    }
    // A connection that sends half a request and stalls does not hold anything up.
    let mut stall = tokio::net::TcpStream::connect(h.nm_addr["machine-c"]).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stall,
        b"POST /nm/v1/servers/ms2/stop HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = h.status().await.unwrap();
    for (a, b) in before.iter().zip(&after) {
        assert_eq!((a.state, &a.machine, a.epoch, a.pid), (b.state, &b.machine, b.epoch, b.pid), "nothing changed");
    }
    drop(stall);
    assert_safe(&h).await;
}

/// The fuzz target of every HTTP request body, as a property test against the real
/// daemons: random bytes, random JSON and mutations of valid bodies, to every route of the
/// admin and of a Node Manager (over mutual TLS) that takes a body. Each answer is a 2xx or
/// a 4xx with a JSON `error`, never a 5xx or a dropped connection; afterwards the daemons
/// answer and the servers run as before. `FERRY_FUZZ_CASES` sets the number of requests.
#[tokio::test]
async fn every_http_body_survives_random_input() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    let _g = SERIAL.lock().await;
    let h = started().await;
    let before: Vec<_> = h.status().await.unwrap().into_iter().map(|s| (s.name, s.pid, s.epoch)).collect();
    let version = h.admin().domain().await.unwrap().version;
    let secret = h.secret().await.unwrap();
    let creds = h.admin_credentials().await.unwrap();
    let nm_tls =
        creds.client_config(ferry_tls::Expect::Identity(ferry_tls::Identity::Machine("machine-c".into()))).unwrap();
    let plain = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let nm_client = reqwest::Client::builder().pool_max_idle_per_host(0).use_preconfigured_tls(nm_tls).build().unwrap();
    let (admin, nm) = (h.admin_url.clone(), format!("https://{}", h.nm_addr["machine-c"]));
    // Routes that take a body. Names that exist nowhere, so a body that happens to be valid
    // changes nothing (ms2's own routes get bodies that cannot name a target).
    let routes: Vec<(&str, String, bool)> = vec![
        ("POST", format!("{admin}/api/v1/servers/nosuch/migrate"), false),
        ("POST", format!("{admin}/api/v1/servers/ms2/migrate"), false),
        ("POST", format!("{admin}/api/v1/servers/nosuch/stop"), false),
        ("POST", format!("{admin}/api/v1/servers/nosuch/start"), false),
        ("POST", format!("{admin}/api/v1/clusters/nosuch/start"), false),
        ("PUT", format!("{admin}/api/v1/domain"), false),
        ("POST", format!("{admin}/api/v1/events"), false),
        ("POST", format!("{admin}/api/v1/enroll"), false),
        ("POST", format!("{admin}/api/v1/tokens"), false),
        ("POST", format!("{nm}/nm/v1/servers/nosuch/start"), true),
        ("POST", format!("{nm}/nm/v1/servers/nosuch/stop"), true),
        ("POST", format!("{nm}/nm/v1/servers/ms2/start"), true),
    ];
    let valid = [
        r#"{"to":"machine-x"}"#,
        r#"{"force":true}"#,
        r#"{"name":"fuzz","role":"monitor","ttl_ms":1000}"#,
        r#"{"origin":{"kind":"admin"},"in_place":false}"#,
        r#"{"origin":{"kind":"master","cluster":"cluster-1","epoch":1,"server":"ms1"}}"#,
        r#"{"machine":"machine-d","token":"x.y","leaf_csr":"-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----","issuer_csr":""}"#,
        r#"[{"id":0,"at_ms":1,"source":"x","kind":"k","message":"m"}]"#,
        r#"{"domain":{"name":"d"}}"#,
    ];
    let json = prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned());
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("x".repeat(70_000))),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    // Mutations of the valid bodies: one field's value replaced by a random one.
    let mutated = (0..valid.len(), value.clone(), 0usize..8).prop_map(move |(i, v, k)| {
        let mut body: serde_json::Value = serde_json::from_str(valid[i]).unwrap();
        let target = if let Some(a) = body.as_array_mut() { a.get_mut(0) } else { Some(&mut body) };
        if let Some(serde_json::Value::Object(map)) = target {
            let keys: Vec<String> = map.keys().cloned().collect();
            if !keys.is_empty() {
                map.insert(keys[k % keys.len()].clone(), v);
            }
        }
        body.to_string()
    });
    let body = prop_oneof![json, value.prop_map(|v| v.to_string()), mutated];
    let case = (0..routes.len(), body, any::<bool>());
    let cases = std::env::var("FERRY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400u32);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut by_status = std::collections::BTreeMap::<u16, u32>::new();
    for n in 0..cases {
        let (route, body, json_type) = case.new_tree(&mut runner).unwrap().current();
        let (method, url, to_nm) = &routes[route];
        let client = if *to_nm { &nm_client } else { &plain };
        let mut req = client.request(method.parse().unwrap(), url).body(body.clone());
        if json_type {
            req = req.header("content-type", "application/json");
        }
        // The admin's routes with its Admin token, so the body is what gets checked.
        if url.ends_with("/events") {
            req = req.bearer_auth(&secret);
        } else if !*to_nm {
            req = req.bearer_auth(h.admin_token());
        }
        let shown = format!("case {n}: {method} {url} {:?}", &body.chars().take(200).collect::<String>());
        let resp = match req.send().await {
            Ok(r) => r,
            // Over a body limit (64 KiB at a Node Manager) a daemon may answer 413 and close
            // while the client still sends: the client sees a reset. A refusal too.
            Err(_) if body.len() > 64 * 1024 => {
                *by_status.entry(413).or_default() += 1;
                continue;
            }
            Err(e) => panic!("{shown}: no answer: {e}"),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        *by_status.entry(status).or_default() += 1;
        assert!(status < 500, "{shown}: {status} {text}");
        if status >= 400 {
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("{shown}: not JSON: {text}"));
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{shown}: no error message: {text}");
        }
        assert!(!text.contains(&secret) && !text.contains(h.admin_token()), "{shown}: the secret leaked");
    }
    eprintln!("{cases} random bodies; answers by status: {by_status:?}");
    // Everything still runs, untouched.
    h.nm_client("machine-c", Duration::from_secs(2)).await.unwrap().health().await.expect("the Node Manager answers");
    let after: Vec<_> = h.status().await.unwrap().into_iter().map(|s| (s.name, s.pid, s.epoch)).collect();
    assert_eq!(before, after, "the servers were disturbed");
    assert_eq!(h.admin().domain().await.unwrap().version, version, "a random body changed the configuration");
}

/// Names are checked by the client before any call (exit 2 with the reason), so a name can
/// never reach another endpoint: the admin named here does not exist, and an attempt to
/// call it would end in exit 3.
#[test]
fn names_are_checked_before_any_call() {
    let cfg = tempfile::tempdir().unwrap();
    for (args, want) in [
        (&["stop", "../../etc"][..], "invalid server name \"../../etc\": must start with a letter or digit"),
        (
            &["start", "ms1/start"][..],
            "invalid server name \"ms1/start\": may hold only letters, digits, '-', '_' and '.'",
        ),
        (&["migrate", "ms1", "--to", "machine-b/../x"][..], "invalid machine name \"machine-b/../x\""),
        (&["migrate", "..", "--to", "machine-b"][..], "invalid server name \"..\""),
        (&["start-cluster", "cluster 1"][..], "invalid cluster name \"cluster 1\""),
        (&["machine", "revoke", "m%2F1"][..], "invalid machine name \"m%2F1\""),
        (&["machine", "enroll-token", ""][..], "invalid machine name \"\": must not be empty"),
    ] {
        let out = ferry_cli("http://127.0.0.1:1", cfg.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "ferry {args:?}: {err}");
        assert!(err.contains(want), "ferry {args:?} said {err}");
    }
}

/// `ferry validate` warns (and still exits 0) when a machine may have to take over more
/// servers than it starts within a lease; with fewer servers per machine it says nothing.
#[test]
fn validate_warns_when_a_takeover_outlasts_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let file = |servers: usize| {
        let mut t = String::from("name = \"big\"\n[leasing]\ndata_source = \"sqlite://x.db\"\n");
        for m in 1..=4 {
            t += &format!("[[machines]]\nname = \"node-{m}\"\nnode_manager = \"127.0.0.1:{}\"\n", 5600 + m);
        }
        t += "[[clusters]]\nname = \"web\"\nmigration_candidates = [\"node-1\", \"node-2\", \"node-3\", \"node-4\"]\n";
        for s in 0..servers {
            t += &format!(
                "[[servers]]\nname = \"web{s:03}\"\ncluster = \"web\"\nmachine = \"node-{}\"\nhealth_check_interval = \"500ms\"\n",
                s % 4 + 1
            );
        }
        let path = dir.path().join(format!("big-{servers}.toml"));
        std::fs::write(&path, t).unwrap();
        std::process::Command::new(exe()).arg("validate").arg(&path).output().unwrap()
    };
    let out = file(200);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: if node-1 fails, node-2 may have to start 17 of its servers, 4 at a time"), "{err}");
    assert!(err.contains("longer than their lease time to live (1500 ms)"), "{err}");
    let out = file(100);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no warning at 25 servers a machine");
}
