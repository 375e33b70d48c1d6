//! The Administration Server's HTTP API, `/api/v1`, plus `/metrics`. Bad input gets a 4xx
//! with `{error, detail}` and changes nothing. Every request passes [`auth::require`] first
//! (operator tokens and roles); changes record the caller's token name in the event log.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use ferry_api::{DomainUpdate, EnrollRequest, ErrorBody, Event, MigrateRequest, StopRequest, TokenRequest};
use ferry_core::{ServerName, TokenName};
use ferry_host::{clock, files};
use ferry_tls::PeerInfo;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::auth;
use crate::ops::ApiError;
use crate::state::AdminState;
use crate::tokens::Caller;

/// The admin's routes over `state` (also used by tests with `oneshot`).
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1/domain", get(get_domain).put(put_domain))
        .route("/api/v1/servers", get(servers))
        .route("/api/v1/servers/{name}/config", get(server_config))
        .route("/api/v1/servers/{name}/start", post(start))
        .route("/api/v1/servers/{name}/stop", post(stop))
        .route("/api/v1/servers/{name}/migrate", post(migrate))
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/clusters/{name}/start", post(start_cluster))
        .route("/api/v1/machines", get(machines))
        .route("/api/v1/leases", get(leases))
        .route("/api/v1/operations/{id}", get(operation))
        .route("/api/v1/events", get(events).post(post_events))
        .route("/api/v1/events/stream", get(event_stream))
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/pki/ca", get(pki_ca))
        .route("/api/v1/pki/revoked", get(pki_revoked))
        .route("/api/v1/pki/rotate", post(pki_rotate))
        .route("/api/v1/machines/{name}/enroll-token", post(enroll_token))
        .route("/api/v1/machines/{name}/revoke", post(revoke_machine))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{name}", delete(revoke_token))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        // Outermost: nothing runs, not even body parsing, before the caller is known.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require))
        .with_state(state)
}

fn error(status: u16, msg: impl Into<String>) -> Response {
    error_with(status, msg, serde_json::Value::Null)
}

pub(crate) fn error_with(status: u16, msg: impl Into<String>, detail: serde_json::Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(ErrorBody { error: msg.into(), detail })).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.error)
    }
}

fn store_error(e: ferry_store::StoreError) -> Response {
    error(503, format!("cannot read the lease table: {}", ferry_store::chain(&e)))
}

async fn method_not_allowed() -> Response {
    error(405, "method not allowed on this endpoint: see the API list at /")
}

async fn not_found() -> Response {
    error(404, "no such endpoint: the API lives under /api/v1 (domain, servers, clusters, machines, leases, operations, events)")
}

async fn index(State(s): State<Arc<AdminState>>) -> Response {
    let d = s.domain();
    let text = format!(
        "ferry Administration Server of domain {} (configuration version {})\nAPI: /api/v1/servers, /api/v1/clusters, /api/v1/machines, /api/v1/leases, /api/v1/events, /api/v1/tokens, /metrics\n(every API call needs an operator token as `Authorization: Bearer TOKEN`)\n",
        d.domain.name, d.version
    );
    text.into_response()
}

async fn get_domain(State(s): State<Arc<AdminState>>) -> Response {
    Json(s.domain()).into_response()
}

async fn put_domain(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<DomainUpdate>, JsonRejection>,
) -> Response {
    let Json(update) = match body {
        Ok(b) => b,
        Err(e) => return error(e.status().as_u16(), format!("bad domain update: {}", e.body_text())),
    };
    if let Err(errs) = update.domain.validate() {
        let detail: Vec<_> =
            errs.errors.iter().map(|e| serde_json::json!({"field": e.field, "message": e.message})).collect();
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ErrorBody {
                error: format!(
                    "the new configuration is invalid: {}",
                    errs.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
                ),
                detail: detail.into(),
            }),
        )
            .into_response();
    }
    let current = s.domain();
    if update.domain.leasing != current.domain.leasing {
        return error(409, "the leasing basis and data source cannot change while the domain runs: stop the whole cluster, edit the domain file and restart the Administration Server");
    }
    let mut cfg = s.config.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(expected) = update.expected_version {
        if expected != cfg.current.version {
            return error(409, format!("the configuration changed meanwhile: version {} is current, not {expected}; fetch it again and reapply", cfg.current.version));
        }
    }
    match cfg.update(update.domain) {
        Ok(v) => {
            let out = cfg.current.clone();
            drop(cfg);
            s.record(
                "config-changed",
                None,
                None,
                None,
                format!("configuration version {v} accepted"),
                Some(caller.name.as_str()),
            );
            Json(out).into_response()
        }
        Err(e) => error(500, format!("could not persist the configuration: {e:#}")),
    }
}

async fn servers(State(s): State<Arc<AdminState>>) -> Response {
    match s.servers().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => store_error(e),
    }
}

async fn server_config(State(s): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    let d = s.domain();
    let known = ServerName::new(name.as_str()).ok().and_then(|n| d.domain.server(&n).map(|_| ()));
    if known.is_none() {
        return error(404, format!("unknown server {name:?}: it is not defined in domain {}", d.domain.name));
    }
    Json(d).into_response()
}

async fn clusters(State(s): State<Arc<AdminState>>) -> Response {
    match s.clusters().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => store_error(e),
    }
}

async fn machines(State(s): State<Arc<AdminState>>) -> Response {
    Json(s.machines().await).into_response()
}

async fn leases(State(s): State<Arc<AdminState>>) -> Response {
    match s.store.list().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => store_error(e),
    }
}

async fn start(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    match s.start_server(&name, &caller.name).await {
        Ok(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn stop(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    // The body is optional (`{}` or nothing: a graceful stop); when given it must be right.
    let force = if body.iter().all(|b| b.is_ascii_whitespace()) {
        false
    } else {
        match serde_json::from_slice::<StopRequest>(&body) {
            Ok(r) => r.force,
            Err(e) => {
                return error(400, format!("bad stop request (expected {{\"force\": true|false}} or nothing): {e}"))
            }
        }
    };
    match s.stop_server(&name, force, &caller.name).await {
        Ok(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn migrate(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<MigrateRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                e.status().as_u16(),
                format!("bad migrate request (expected {{\"to\": \"MACHINE\"}}): {}", e.body_text()),
            )
        }
    };
    match s.migrate(&name, &req.to, &caller.name).await {
        Ok(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn start_cluster(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    match s.start_cluster(&name, &caller.name).await {
        Ok(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn operation(State(s): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(400, format!("operation id {id:?} is not a number"));
    };
    match s.ops.get(id) {
        Some(op) => Json(op).into_response(),
        None => error(404, format!("no operation {id} (operations are kept in memory until the admin restarts)")),
    }
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn events(
    State(s): State<Arc<AdminState>>,
    q: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(400, "bad query: use ?since=ID&limit=N with whole numbers");
    };
    let limit = q.limit.unwrap_or(ferry_api::EVENTS_PAGE_MAX).min(ferry_api::EVENTS_PAGE_MAX);
    // What a caller needs to page on, and to tell that older events are no longer held.
    let (oldest, newest) = s.events.bounds();
    let page = s.events.since(q.since, limit);
    let mut headers = HeaderMap::new();
    if let Some(oldest) = oldest {
        headers.insert(ferry_api::EVENTS_OLDEST_HEADER, oldest.into());
    }
    headers.insert(ferry_api::EVENTS_NEWEST_HEADER, newest.into());
    (headers, Json(page)).into_response()
}

async fn post_events(
    State(s): State<Arc<AdminState>>,
    info: Option<axum::Extension<ConnectInfo<PeerInfo>>>,
    headers: HeaderMap,
    body: Result<Json<Vec<Event>>, JsonRejection>,
) -> Response {
    // Daemons post events: a Node Manager or server by its certificate, or a process on
    // this host with the domain secret.
    let by_cert = matches!(
        peer_identity(&info),
        Some(ferry_tls::Identity::Machine(_) | ferry_tls::Identity::Server(_) | ferry_tls::Identity::Admin)
    );
    if !by_cert {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            Some(t) if files::secrets_equal(t, &s.secret) => {}
            Some(_) => return error(403, "wrong domain secret"),
            None => {
                return error(
                    401,
                    "posting events needs a Node Manager's or server's certificate (mutual TLS), or the domain secret as `Authorization: Bearer SECRET`",
                )
            }
        }
    }
    let Json(events) = match body {
        Ok(b) => b,
        Err(e) => return error(e.status().as_u16(), format!("bad events: {}", e.body_text())),
    };
    if events.len() > 1_000 {
        return error(413, "at most 1000 events per request");
    }
    let n = events.len();
    for mut e in events {
        e.message.truncate(4_000);
        // Daemons report; only the admin says which operator did something.
        e.by = None;
        s.events.append(e);
    }
    Json(serde_json::json!({ "accepted": n })).into_response()
}

async fn list_tokens(State(s): State<Arc<AdminState>>) -> Response {
    let tokens = s.tokens.lock().unwrap_or_else(|p| p.into_inner());
    Json(tokens.list(clock::wall_ms())).into_response()
}

async fn create_token(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                e.status().as_u16(),
                format!(
                    "bad token request (expected {{\"name\": \"NAME\", \"role\": \"monitor|operator|admin\", \"ttl_ms\": N}}): {}",
                    e.body_text()
                ),
            )
        }
    };
    let created = {
        let mut tokens = s.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.create(req.name, req.role, req.ttl_ms, clock::wall_ms(), rand::random())
    };
    match created {
        Ok((token, info)) => {
            let expiry = info
                .expires_ms
                .map_or("valid until revoked".to_string(), |e| format!("expires at {}", clock::format_wall(e)));
            s.record(
                "token-created",
                None,
                None,
                None,
                format!("token '{}' created with the {} role ({expiry})", info.name, info.role),
                Some(caller.name.as_str()),
            );
            // The one answer that carries a token: keep it out of every cache.
            (
                StatusCode::CREATED,
                [(axum::http::header::CACHE_CONTROL, "no-store")],
                Json(ferry_api::NewToken { token, info }),
            )
                .into_response()
        }
        Err(e) => error(e.status(), e.to_string()),
    }
}

async fn revoke_token(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let name = match TokenName::new(name) {
        Ok(n) => n,
        Err(e) => return error(400, e.to_string()),
    };
    let revoked = {
        let mut tokens = s.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.revoke(&name, clock::wall_ms())
    };
    match revoked {
        Ok(info) => {
            s.record(
                "token-revoked",
                None,
                None,
                None,
                format!("token '{}' ({} role) revoked", info.name, info.role),
                Some(caller.name.as_str()),
            );
            Json(info).into_response()
        }
        Err(e) => error(e.status(), e.to_string()),
    }
}

async fn event_stream(
    State(s): State<Arc<AdminState>>,
    q: Result<Query<Since>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let since = q.map(|Query(q)| q.since).unwrap_or(0);
    let rx = s.events.tx.subscribe();
    // Everything held after `since` (at most `events::KEEP`), then what comes: a shorter
    // backlog would skip the events between its end and the subscription.
    let backlog = s.events.since(since, crate::events::KEEP);
    let last = backlog.last().map_or(since, |e| e.id);
    let head = futures_util::stream::iter(backlog.into_iter().map(Ok::<Event, Infallible>));
    let live = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| async move {
        match r {
            Ok(e) if e.id > last => Some(Ok(e)),
            _ => None,
        }
    });
    let stream = head.chain(live).map(|r: Result<Event, Infallible>| {
        r.map(|e| {
            SseEvent::default()
                .id(e.id.to_string())
                .event(e.kind.clone())
                .data(serde_json::to_string(&e).unwrap_or_default())
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let mut out = String::new();
    out.push_str(
        "# HELP ferry_events_total Events recorded by the Administration Server.\n# TYPE ferry_events_total counter\n",
    );
    out.push_str(&format!("ferry_events_total {}\n", s.events.count()));
    out.push_str(&format!(
        "# TYPE ferry_admin_start_time_seconds gauge\nferry_admin_start_time_seconds {}\n",
        s.started_ms / 1000
    ));
    match s.store.list().await {
        Ok(leases) => {
            out.push_str("# HELP ferry_lease_remaining_seconds Time left on each lease by the store's clock.\n# TYPE ferry_lease_remaining_seconds gauge\n");
            for l in &leases {
                out.push_str(&format!(
                    "ferry_lease_remaining_seconds{{lease=\"{}\"}} {:.3}\n",
                    l.name,
                    l.remaining_ms as f64 / 1000.0
                ));
            }
            out.push_str("# HELP ferry_lease_epoch Fencing token of each lease.\n# TYPE ferry_lease_epoch gauge\n");
            for l in &leases {
                out.push_str(&format!("ferry_lease_epoch{{lease=\"{}\"}} {}\n", l.name, l.epoch));
            }
            out.push_str("# TYPE ferry_lease_table_up gauge\nferry_lease_table_up 1\n");
        }
        Err(_) => out.push_str("# TYPE ferry_lease_table_up gauge\nferry_lease_table_up 0\n"),
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The verified certificate holder on the other end, if it showed a certificate.
pub(crate) fn peer_identity(info: &Option<axum::Extension<ConnectInfo<PeerInfo>>>) -> Option<ferry_tls::Identity> {
    info.as_ref().and_then(|c| c.0 .0.peer.as_ref()).map(|p| p.identity.clone())
}

/// `POST /api/v1/enroll`: a Node Manager's certificates, for a one-time token (or the domain
/// secret on this host). The token is the credential, so no other is asked for.
async fn enroll(State(s): State<Arc<AdminState>>, body: Result<Json<EnrollRequest>, JsonRejection>) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(e.status().as_u16(), format!("bad enrollment request: {}", e.body_text())),
    };
    let machine = match ferry_core::MachineName::new(req.machine.as_str()) {
        Ok(m) => m,
        Err(e) => return error(400, format!("bad machine name: {e}")),
    };
    let d = s.domain();
    if d.domain.machine(&machine).is_none() {
        return error(
            404,
            format!("machine {machine} is not defined in domain {}: add it to the domain first", d.domain.name),
        );
    }
    match s.pki.enroll(&req, &s.secret, ferry_host::clock::wall_ms()) {
        Ok(r) => {
            s.event(
                "machine-enrolled",
                None,
                Some(machine.as_str()),
                None,
                format!("machine {machine} enrolled: its Node Manager has certificates of the domain"),
            );
            Json(r).into_response()
        }
        Err(crate::pki::Refusal(status, msg)) => {
            s.event(
                "enrollment-refused",
                None,
                Some(machine.as_str()),
                None,
                format!("refused to enroll machine {machine}: {msg}"),
            );
            error(status, msg)
        }
    }
}

/// `GET /api/v1/pki/ca`: the domain CA certificate (public; checked by the fingerprint in
/// an enrollment token).
async fn pki_ca(
    State(s): State<Arc<AdminState>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let ca = s.pki.ca_pem().to_string();
    // With `?nonce=`, prove knowledge of the domain secret (for a Node Manager that has the
    // secret but not yet the CA certificate).
    match q.get("nonce").filter(|n| !n.is_empty() && n.len() <= 128) {
        Some(nonce) => {
            let mac = ferry_tls::ca_mac(&s.secret, nonce, &ca);
            (
                [
                    (axum::http::header::CONTENT_TYPE, "application/x-pem-file".to_string()),
                    (axum::http::HeaderName::from_static("x-ferry-ca-mac"), mac),
                ],
                ca,
            )
                .into_response()
        }
        None => ([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], ca).into_response(),
    }
}

/// `POST /api/v1/pki/rotate`: new certificates for the machine whose current certificate
/// made the call (`ferry enroll --rotate`).
async fn pki_rotate(
    State(s): State<Arc<AdminState>>,
    info: Option<axum::Extension<ConnectInfo<PeerInfo>>>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Response {
    let Some(ferry_tls::Identity::Machine(m)) = peer_identity(&info) else {
        return error(
            401,
            "rotation needs the machine's current certificate (mutual TLS); a machine without one enrolls with a token",
        );
    };
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(e.status().as_u16(), format!("bad rotation request: {}", e.body_text())),
    };
    if req.machine != m {
        return error(403, format!("machine {m}'s certificate cannot rotate machine {}'s", req.machine));
    }
    match s.pki.rotate(&req) {
        Ok(r) => {
            s.event(
                "machine-rotated",
                None,
                Some(m.as_str()),
                None,
                format!("machine {m} rotated its keys: new certificates issued; the old ones stay valid until they expire or the machine is revoked"),
            );
            Json(r).into_response()
        }
        Err(crate::pki::Refusal(status, msg)) => error(status, msg),
    }
}

/// `GET /api/v1/pki/revoked`: revoked certificate serials, for every process's handshakes.
async fn pki_revoked(State(s): State<Arc<AdminState>>) -> Response {
    Json(s.pki.revoked_serials()).into_response()
}

/// `POST /api/v1/machines/{name}/enroll-token`: a one-time token for `ferry enroll`.
async fn enroll_token(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let machine = match ferry_core::MachineName::new(name) {
        Ok(m) => m,
        Err(e) => return error(400, format!("bad machine name: {e}")),
    };
    let d = s.domain();
    if d.domain.machine(&machine).is_none() {
        return error(404, format!("machine {machine} is not defined in domain {}", d.domain.name));
    }
    let t = s.pki.enroll_token(machine.as_str(), ferry_host::clock::wall_ms());
    s.record(
        "enroll-token-created",
        None,
        Some(machine.as_str()),
        None,
        format!("a one-time enrollment token for machine {machine} was made (valid one hour)"),
        Some(caller.name.as_str()),
    );
    Json(t).into_response()
}

/// `POST /api/v1/machines/{name}/revoke`: revokes a machine's certificates.
async fn revoke_machine(
    State(s): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    let machine = match ferry_core::MachineName::new(name) {
        Ok(m) => m,
        Err(e) => return error(400, format!("bad machine name: {e}")),
    };
    let r = s.pki.revoke(machine.as_str());
    // Kept connections were checked at their handshake, before the revocation.
    s.nm_clients.lock().unwrap_or_else(|p| p.into_inner()).clear();
    s.record(
        "machine-revoked",
        None,
        Some(machine.as_str()),
        None,
        format!("the certificates of machine {machine} were revoked ({} serials); its Node Manager and the servers it started are refused until it enrolls again", r.serials.len()),
        Some(caller.name.as_str()),
    );
    Json(r).into_response()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use ferry_api::Role;
    use tower::ServiceExt;

    use super::*;
    use crate::config::ConfigStore;
    use crate::events::EventLog;
    use crate::ops::Operations;
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
        let mut make = |n: &str, r, seed| {
            tokens.create(TokenName::new(n).unwrap(), r, None, clock::wall_ms(), [seed; 32]).unwrap().0
        };
        let (monitor, operator, admin) =
            (make("mon", Role::Monitor, 1), make("ops", Role::Operator, 2), make("root", Role::Admin, 3));
        let secret = "5".repeat(64);
        let files =
            TokenFiles::new(dir.path(), Some(Path::new("/home/u/.config/ferry")), "127.0.0.1:7001".parse().unwrap());
        let state = Arc::new(AdminState {
            config: Mutex::new(config),
            store: ferry_store::open_lazy(
                &format!("sqlite://{}/leases.db", dir.path().display()),
                Duration::from_secs(2),
            ),
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
            a.state.event("test", None, None, None, format!("event {i}"));
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
        let changed = a.state.events.since(0, 100).into_iter().find(|e| e.kind == "config-changed").unwrap();
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
}
