//! The admin's routes driven without a socket (`app().oneshot(request)`): roles, pages of
//! events, hostile bodies.
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use ferry_api::{EventKind, Role};
use tower::ServiceExt;

use super::*;
use crate::config::ConfigStore;
use crate::events::EventLog;
use crate::operations::Operations;
use crate::tokens::{TokenFiles, TokenStore};

const DOMAIN: &str = r#"name = "t"
[admin]
listen = "127.0.0.1:7001"
[leasing]
data_source = "sqlite://leases.db"
[[machines]]
name = "m1"
node_manager = "127.0.0.1:9"
[[clusters]]
name = "c1"
migration_candidates = ["m1"]
[[servers]]
name = "ms1"
cluster = "c1"
machine = "m1"
[[servers.services]]
name = "s"
command = ["/bin/true"]
"#;

struct App {
    _dir: tempfile::TempDir,
    router: Router,
    state: Arc<AdminState>,
    secret: String,
    monitor: String,
    operator: String,
    admin: String,
}

fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("domain.toml");
    std::fs::write(&file, DOMAIN).unwrap();
    let (config, _) = ConfigStore::open(dir.path(), &file).unwrap();
    let mut tokens = TokenStore::open(&dir.path().join("tokens.json")).unwrap();
    let mut make =
        |n: &str, r, seed| tokens.create(TokenName::new(n).unwrap(), r, None, clock::wall_ms(), [seed; 32]).unwrap().0;
    let (monitor, operator, admin) =
        (make("mon", Role::Monitor, 1), make("ops", Role::Operator, 2), make("root", Role::Admin, 3));
    let secret = "5".repeat(64);
    let files =
        TokenFiles::new(dir.path(), Some(Path::new("/home/u/.config/ferry")), "127.0.0.1:7001".parse().unwrap());
    let state = Arc::new(AdminState {
        config: Mutex::new(config),
        store: ferry_store::open_lazy(&format!("sqlite://{}/leases.db", dir.path().display()), Duration::from_secs(2)),
        events: EventLog::open(dir.path().join("events.jsonl")),
        ops: Operations::default(),
        secret: secret.clone(),
        started_ms: 0,
        tokens: Mutex::new(tokens),
        token_hint: files.hint(),
        pki: crate::pki::AdminPki::open(
            dir.path(),
            &file,
            "t",
            &crate::pki::AdminNames::new("127.0.0.1:7001".parse().unwrap(), None),
        )
        .unwrap(),
        nm_clients: Mutex::default(),
        views: Arc::default(),
    });
    App { router: router(state.clone()), state, _dir: dir, secret, monitor, operator, admin }
}

async fn call(app: &App, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = app.router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// A caller without a token is told how to get one: on the admin's host with the paths
/// of the token files there; from another host in words, without any path of this host.
#[tokio::test]
async fn a_remote_caller_is_told_where_to_look_in_words_not_paths() {
    let a = app();
    let from = |addr: &str| {
        let info = PeerInfo { addr: addr.parse().unwrap(), peer: None, tls: true };
        let mut req = Request::get("/api/v1/servers").body(Body::empty()).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(info));
        let router = a.router.clone();
        async move {
            let resp = router.oneshot(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), 401);
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap().to_string()
        }
    };
    let data = a._dir.path().display().to_string();
    for local in ["127.0.0.1:4000", "[::1]:4000", "[::ffff:127.0.0.1]:4000"] {
        let body = from(local).await;
        assert!(body.contains("/home/u/.config/ferry/admins/127.0.0.1_7001/token"), "{local}: {body}");
        assert!(body.contains(&format!("{data}/admin.token")), "{local}: {body}");
    }
    for remote in ["198.18.0.9:4000", "[2001:db8::1]:4000", "[::ffff:198.18.0.9]:4000"] {
        let body = from(remote).await;
        assert!(!body.contains('/'), "a path reached {remote}: {body}");
        assert!(
            body.contains("the initial Admin token is in the admin's data directory as admin.token")
                && body.contains("ask its operator for a token")
                && body.contains("ferry token create"),
            "{remote}: {body}"
        );
    }
}

/// `GET /api/v1/events` pages: at most `limit` (capped), oldest first after `since`, with
/// the oldest held and the newest ids in headers to go on from.
#[tokio::test]
async fn events_come_in_pages_that_say_how_to_go_on() {
    let a = app();
    for i in 0..12 {
        a.state.event(ferry_core::EventKind::parse("test"), None, None, None, format!("event {i}"));
    }
    let get = |q: &str| {
        let req = Request::get(format!("/api/v1/events{q}"))
            .header("authorization", format!("Bearer {}", a.monitor))
            .body(Body::empty())
            .unwrap();
        a.router.clone().oneshot(req)
    };
    let resp = get("?since=3&limit=4").await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    assert_eq!((h("x-ferry-oldest-event"), h("x-ferry-newest-event")), (Some("1".into()), Some("12".into())));
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let page: Vec<Event> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5, 6, 7]);
    let resp = get("?since=12").await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    assert_eq!(&bytes[..], b"[]");
    assert_eq!(get("?since=x").await.unwrap().status().as_u16(), 400);
}

#[tokio::test]
async fn switching_the_leasing_basis_of_a_running_domain_is_refused_with_the_seeds_reason() {
    let a = app();
    let mut domain = a.state.domain().domain;
    domain.leasing.basis = ferry_core::domain::LeasingBasis::Consensus;
    domain.leasing.data_source.clear();
    let mut second = domain.machines[0].clone();
    second.name = ferry_core::MachineName::new("m2").unwrap();
    second.node_manager = "127.0.0.1:1".parse().unwrap();
    domain.machines.push(second);
    let body = serde_json::json!({ "domain": domain }).to_string();
    let (s, answer) = call(&a, "PUT", "/api/v1/domain", Some(&a.admin), &body).await;
    assert_eq!(s, 409, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with("the leasing basis cannot change while the domain runs"), "{error}");
    assert!(error.contains("you must restart the entire cluster"), "{error}");
    assert_eq!(a.state.domain().domain.leasing.basis, ferry_core::domain::LeasingBasis::Database, "nothing changed");
}

#[tokio::test]
async fn every_route_checks_the_callers_role() {
    let a = app();
    let (s, body) = call(&a, "GET", "/api/v1/events", None, "").await;
    assert_eq!(s, 401);
    assert!(body["error"].as_str().unwrap().contains("ferry token create"), "{body}");
    assert_eq!(call(&a, "GET", "/metrics", None, "").await.0, 401);
    assert_eq!(call(&a, "GET", "/api/v1/events", Some(&a.secret), "").await.0, 401, "the secret is no token");
    assert_eq!(call(&a, "GET", "/api/v1/events", Some(&a.monitor), "").await.0, 200);
    assert_eq!(call(&a, "GET", "/metrics", Some(&a.monitor), "").await.0, 200);
    // The daemons' configuration reads take the domain secret.
    assert_eq!(call(&a, "GET", "/api/v1/servers/ms1/config", Some(&a.secret), "").await.0, 200);
    assert_eq!(call(&a, "GET", "/api/v1/domain", Some(&a.secret), "").await.0, 200);
    assert_eq!(call(&a, "GET", "/api/v1/domain", None, "").await.0, 401);
    // ... and a daemon's certificate (mutual TLS), which a token cannot stand in for.
    let as_peer = |identity: Option<ferry_tls::Identity>, path: &str| {
        let peer = identity.map(|identity| ferry_tls::Peer {
            identity,
            issued_by: None,
            serial: "01".into(),
            issuer_serial: None,
        });
        let info = PeerInfo { addr: "127.0.0.1:1".parse().unwrap(), peer, tls: true };
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(info));
        a.router.clone().oneshot(req)
    };
    let machine = Some(ferry_tls::Identity::Machine("m1".into()));
    assert_eq!(as_peer(machine.clone(), "/api/v1/servers/ms1/config").await.unwrap().status().as_u16(), 200);
    assert_eq!(as_peer(machine, "/api/v1/servers").await.unwrap().status().as_u16(), 401);
    assert_eq!(as_peer(None, "/api/v1/domain").await.unwrap().status().as_u16(), 401);
    // Events from daemons: the secret, checked by the handler; a `by` is dropped.
    assert_eq!(call(&a, "POST", "/api/v1/events", None, "[]").await.0, 401);
    let forged = r#"[{"at_ms": 1, "source": "server/ms1", "kind": "x", "message": "m", "by": "root"}]"#;
    assert_eq!(call(&a, "POST", "/api/v1/events", Some(&a.secret), forged).await.0, 200);
    assert_eq!(a.state.events.since(0, 10).last().unwrap().by, None);

    let (s, body) = call(&a, "POST", "/api/v1/servers/ms1/stop", Some(&a.monitor), "{}").await;
    assert_eq!(s, 403);
    assert_eq!(body["error"], "stop needs the Operator role; token 'mon' has Monitor");
    let domain = serde_json::json!({ "domain": a.state.domain().domain }).to_string();
    let (s, body) = call(&a, "PUT", "/api/v1/domain", Some(&a.operator), &domain).await;
    assert_eq!(s, 403);
    assert_eq!(body["error"], "changing the configuration needs the Admin role; token 'ops' has Operator");
    let (s, _) = call(&a, "PUT", "/api/v1/domain", Some(&a.admin), &domain).await;
    assert_eq!(s, 200);
    let changed = a.state.events.since(0, 100).into_iter().find(|e| e.kind == EventKind::ConfigChanged).unwrap();
    assert_eq!(changed.by.as_deref(), Some("root"));

    // Tokens: Admin only; the new token is answered once and works at once.
    let req = r#"{"name": "ci", "role": "operator", "ttl_ms": 60000}"#;
    assert_eq!(call(&a, "POST", "/api/v1/tokens", Some(&a.operator), req).await.0, 403);
    let (s, body) = call(&a, "POST", "/api/v1/tokens", Some(&a.admin), req).await;
    assert_eq!(s, 201, "{body}");
    let ci = body["token"].as_str().unwrap().to_string();
    assert_eq!((body["info"]["name"].as_str(), body["info"]["role"].as_str()), (Some("ci"), Some("operator")));
    let (s, list) = call(&a, "GET", "/api/v1/tokens", Some(&a.admin), "").await;
    assert_eq!(s, 200);
    let text = list.to_string();
    assert!(text.contains("\"ci\"") && !text.contains(&ci) && !text.contains("sha256"), "{text}");
    assert_eq!(call(&a, "GET", "/api/v1/tokens", Some(&ci), "").await.0, 403);
    assert_eq!(call(&a, "DELETE", "/api/v1/tokens/ci", Some(&a.admin), "").await.0, 200);
    let (s, body) = call(&a, "GET", "/api/v1/events", Some(&ci), "").await;
    assert_eq!(s, 401);
    assert!(body["error"].as_str().unwrap().starts_with("token 'ci' was revoked at"), "{body}");
    let (s, _) = call(&a, "DELETE", "/api/v1/tokens/root", Some(&a.admin), "").await;
    assert_eq!(s, 409, "the last Admin token stays");
    let ev = a.state.events.since(0, 100);
    let by_root: Vec<_> = ev.iter().filter(|e| e.by.as_deref() == Some("root")).map(|e| e.kind.as_str()).collect();
    assert_eq!(by_root, ["config-changed", "token-created", "token-revoked"]);
    let log = std::fs::read_to_string(a._dir.path().join("events.jsonl")).unwrap();
    for t in [&a.monitor, &a.operator, &a.admin, &ci, &a.secret] {
        assert!(!log.contains(t.as_str()), "a token reached the event log");
    }
    // Unknown routes stay closed to strangers; the landing text is open.
    assert_eq!(call(&a, "GET", "/api/v1/nosuch", None, "").await.0, 401);
    assert_eq!(call(&a, "GET", "/api/v1/nosuch", Some(&a.monitor), "").await.0, 404);
    assert_eq!(call(&a, "DELETE", "/api/v1/servers", Some(&a.monitor), "").await.0, 403);
    assert_eq!(call(&a, "DELETE", "/api/v1/servers", Some(&a.admin), "").await.0, 405);
    let resp = a.router.clone().oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}
