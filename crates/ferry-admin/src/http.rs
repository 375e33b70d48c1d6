//! The Administration Server's HTTP API, `/api/v1`, plus `/metrics`. Bad input gets a 4xx
//! with `{error, detail}` and changes nothing. Every request passes [`auth::require`] first
//! (operator tokens and roles); changes record the caller's token name in the event log.

use ferry_core::EventKind;
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
use crate::errors::error;
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
        .route("/api/v1/leasing", get(leasing))
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
        let what = if update.domain.leasing.basis != current.domain.leasing.basis {
            "leasing basis"
        } else {
            "lease table's data source"
        };
        return error(
            409,
            format!(
                "the {what} cannot change while the domain runs: when switching from one leasing type to another, you must restart the entire cluster, not just the Administration Server (the seed); stop every server and Node Manager, edit the domain file, then start the Administration Server and the Node Managers again"
            ),
        );
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
                EventKind::ConfigChanged,
                None,
                None,
                None,
                format!("configuration version {v} accepted"),
                Some(&caller.name),
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

async fn leasing(State(s): State<Arc<AdminState>>) -> Response {
    Json(s.leasing().await).into_response()
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
                EventKind::TokenCreated,
                None,
                None,
                None,
                format!("token '{}' created with the {} role ({expiry})", info.name, info.role),
                Some(&caller.name),
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
                EventKind::TokenRevoked,
                None,
                None,
                None,
                format!("token '{}' ({} role) revoked", info.name, info.role),
                Some(&caller.name),
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
                .event(e.kind.as_str())
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
    let machine = req.machine.clone();
    let d = s.domain();
    if !d.domain.enrolls(&machine) {
        return error(
            404,
            format!(
                "machine {machine} is not defined in domain {}: add it to the domain first (under [[machines]], or [[witnesses]] for a witness)",
                d.domain.name
            ),
        );
    }
    match s.pki.enroll(&req, &s.secret, ferry_host::clock::wall_ms()) {
        Ok(r) => {
            s.event(
                EventKind::MachineEnrolled,
                None,
                Some(&machine),
                None,
                format!("machine {machine} enrolled: its Node Manager has certificates of the domain"),
            );
            Json(r).into_response()
        }
        Err(refusal) => {
            let msg = refusal.to_string();
            s.event(
                EventKind::EnrollmentRefused,
                None,
                Some(&machine),
                None,
                format!("refused to enroll machine {machine}: {msg}"),
            );
            refusal.into_response()
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
                EventKind::MachineRotated,
                None,
                Some(&req.machine),
                None,
                format!("machine {m} rotated its keys: new certificates issued; the old ones stay valid until they expire or the machine is revoked"),
            );
            Json(r).into_response()
        }
        Err(refusal) => refusal.into_response(),
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
    if !d.domain.enrolls(&machine) {
        return error(
            404,
            format!("machine {machine} is not defined in domain {} (neither a machine nor a witness)", d.domain.name),
        );
    }
    let t = s.pki.enroll_token(&machine, ferry_host::clock::wall_ms());
    s.record(
        EventKind::EnrollTokenCreated,
        None,
        Some(&machine),
        None,
        format!("a one-time enrollment token for machine {machine} was made (valid one hour)"),
        Some(&caller.name),
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
    let r = s.pki.revoke(&machine);
    // Kept connections were checked at their handshake, before the revocation.
    s.nm_clients.lock().unwrap_or_else(|p| p.into_inner()).clear();
    s.record(
        EventKind::MachineRevoked,
        None,
        Some(&machine),
        None,
        format!("the certificates of machine {machine} were revoked ({} serials); its Node Manager and the servers it started are refused until it enrolls again", r.serials.len()),
        Some(&caller.name),
    );
    Json(r).into_response()
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
