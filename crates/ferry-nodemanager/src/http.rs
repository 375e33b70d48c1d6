//! The Node Manager's HTTP API, `/nm/v1`, over mutual TLS only: every caller shows a
//! certificate of the domain (the handshake refuses anyone else, and revoked machines).
//! Commands come only from the admin, or from the server that holds its cluster's master
//! lease at the epoch the command carries (`authorize`); bad input gets a 4xx with
//! `{error, detail}`. The handlers decide nothing: they hand the command to the actor.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::{ErrorBody, NmHealth, NmStart, NmStop};
use ferry_core::nodeman::{Command, Origin, Refusal};
use ferry_core::{MachineName, ServerName};
use ferry_store::LeaseStore;
use ferry_tls::PeerInfo;

use crate::actor::Handle;
use crate::authorize::{authorize, Denied};
use crate::renewals::Batcher;

/// What the handlers share.
pub(crate) struct Api {
    pub machine: MachineName,
    pub actor: Handle,
    pub tls: Arc<crate::pki::NmTls>,
    pub store: Arc<dyn LeaseStore>,
    pub batcher: Batcher,
}

/// The `/nm/v1` routes, and `extra` (the consensus voter's) behind the same certificate
/// check.
pub(crate) fn router(api: Arc<Api>, extra: Option<Router>) -> Router {
    let nm = Router::new()
        .route("/nm/v1/health", get(health))
        .route("/nm/v1/servers", get(servers))
        .route("/nm/v1/servers/{name}/start", post(start))
        .route("/nm/v1/servers/{name}/stop", post(stop))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    guarded(nm.with_state(api.clone()).merge(extra.unwrap_or_default()), api.tls.clone())
}

/// `routes` behind the domain's client-certificate check (and the revocation list).
pub(crate) fn guarded(routes: Router, tls: Arc<crate::pki::NmTls>) -> Router {
    routes.layer(axum::middleware::from_fn_with_state(tls, auth)).layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
}

fn error(status: u16, msg: impl Into<String>, detail: serde_json::Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(ErrorBody { error: msg.into(), detail })).into_response()
}

/// A refusal of the core, with its status and reason word.
fn refused(r: &Refusal) -> Response {
    let detail = match r.reason() {
        Some(reason) => serde_json::json!({ "reason": reason }),
        None => serde_json::Value::Null,
    };
    error(r.status(), r.to_string(), detail)
}

fn denied(d: &Denied) -> Response {
    error(d.status(), d.to_string(), serde_json::Value::Null)
}

/// Every route: a verified client certificate of the domain.
async fn auth(State(tls): State<Arc<crate::pki::NmTls>>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<PeerInfo>>().and_then(|c| c.0.peer.clone());
    match peer {
        // Revocation at every request, not only at the handshake: a connection made before
        // the revocation must not go on working.
        Some(p) => match tls.revoked.refuses(&p) {
            Some(why) => error(403, why, serde_json::Value::Null),
            None => next.run(req).await,
        },
        None => error(
            401,
            "Node Manager calls need a client certificate of this domain (mutual TLS): the admin's, or a server's issued by a Node Manager",
            serde_json::Value::Null,
        ),
    }
}

async fn method_not_allowed() -> Response {
    error(405, "method not allowed on this Node Manager endpoint", serde_json::Value::Null)
}

async fn not_found() -> Response {
    error(
        404,
        "no such Node Manager endpoint: see /nm/v1/health, /nm/v1/servers, /nm/v1/servers/NAME/start|stop",
        serde_json::Value::Null,
    )
}

async fn health(State(api): State<Arc<Api>>) -> Json<NmHealth> {
    Json(NmHealth {
        machine: api.machine.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        renewals: api.batcher.renewals.load(Ordering::Relaxed),
        renewal_batches: api.batcher.batches.load(Ordering::Relaxed),
    })
}

async fn servers(State(api): State<Arc<Api>>) -> Json<Vec<ferry_api::NmServer>> {
    Json(api.actor.servers().await)
}

/// A request that is wrong in itself: its status and what is wrong.
struct Bad(u16, String);

impl IntoResponse for Bad {
    fn into_response(self) -> Response {
        error(self.0, self.1, serde_json::Value::Null)
    }
}

/// A command's server name and body, or the 4xx that says what is wrong with them.
fn command<T>(name: &str, body: Result<Json<T>, JsonRejection>, what: &str) -> Result<(ServerName, T), Bad> {
    let server = ServerName::new(name).map_err(|e| Bad(400, e.to_string()))?;
    let Json(cmd) = body.map_err(|e| Bad(e.status().as_u16(), format!("bad {what} command: {}", e.body_text())))?;
    Ok((server, cmd))
}

/// Authorizes, then hands the command to the actor and answers what it says.
async fn run(api: &Api, info: &PeerInfo, server: ServerName, origin: &Origin, command: Command) -> Response {
    if let Err(d) = authorize(api.store.as_ref(), info.peer.as_ref(), origin).await {
        return denied(&d);
    }
    match api.actor.command(server, origin.clone(), command).await {
        Some(Ok(ack)) => Json(ack).into_response(),
        Some(Err(r)) => refused(&r),
        None => error(503, "the Node Manager is shutting down", serde_json::Value::Null),
    }
}

async fn start(
    State(api): State<Arc<Api>>,
    ConnectInfo(info): ConnectInfo<PeerInfo>,
    Path(name): Path<String>,
    body: Result<Json<NmStart>, JsonRejection>,
) -> Response {
    match command(&name, body, "start") {
        Ok((server, cmd)) => run(&api, &info, server, &cmd.origin, Command::Start { in_place: cmd.in_place }).await,
        Err(r) => r.into_response(),
    }
}

async fn stop(
    State(api): State<Arc<Api>>,
    ConnectInfo(info): ConnectInfo<PeerInfo>,
    Path(name): Path<String>,
    body: Result<Json<NmStop>, JsonRejection>,
) -> Response {
    match command(&name, body, "stop") {
        Ok((server, cmd)) => {
            run(&api, &info, server, &cmd.origin, Command::Stop { force: cmd.force, timeout_ms: cmd.timeout_ms }).await
        }
        Err(r) => r.into_response(),
    }
}
