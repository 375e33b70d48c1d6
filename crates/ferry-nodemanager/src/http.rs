//! The Node Manager's HTTP API, `/nm/v1`, over mutual TLS only: every caller shows a
//! certificate of the domain (the handshake refuses anyone else, and revoked machines).
//! Commands come only from the admin, or from the server that holds its cluster's master
//! lease at the epoch the command carries; bad input gets a 4xx with `{error, detail}`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_api::{ErrorBody, NmHealth, NmStart, NmStop};
use ferry_core::ServerName;
use ferry_tls::PeerInfo;

use crate::manager::{Nm, Refusal};

pub(crate) fn router(nm: Arc<Nm>) -> Router {
    Router::new()
        .route("/nm/v1/health", get(health))
        .route("/nm/v1/servers", get(servers))
        .route("/nm/v1/servers/{name}/start", post(start))
        .route("/nm/v1/servers/{name}/stop", post(stop))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(nm.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(nm)
}

fn error(status: u16, msg: impl Into<String>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(ErrorBody { error: msg.into(), detail: serde_json::Value::Null })).into_response()
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let detail = match self.reason {
            Some(reason) => serde_json::json!({ "reason": reason }),
            None => serde_json::Value::Null,
        };
        (code, Json(ErrorBody { error: self.error, detail })).into_response()
    }
}

/// Every route: a verified client certificate of the domain.
async fn auth(State(nm): State<Arc<Nm>>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<PeerInfo>>().and_then(|c| c.0.peer.clone());
    match peer {
        // Revocation at every request, not only at the handshake: a connection made before
        // the revocation must not go on working.
        Some(p) => match nm.tls.revoked.refuses(&p) {
            Some(why) => error(403, why),
            None => next.run(req).await,
        },
        None => error(
            401,
            "Node Manager calls need a client certificate of this domain (mutual TLS): the admin's, or a server's issued by a Node Manager",
        ),
    }
}

async fn method_not_allowed() -> Response {
    error(405, "method not allowed on this Node Manager endpoint")
}

async fn not_found() -> Response {
    error(404, "no such Node Manager endpoint: see /nm/v1/health, /nm/v1/servers, /nm/v1/servers/NAME/start|stop")
}

async fn health(State(nm): State<Arc<Nm>>) -> Json<NmHealth> {
    let (renewals, renewal_batches) = nm.renewal_counts.lock().map(|c| *c).unwrap_or_default();
    Json(NmHealth {
        machine: nm.opts.machine.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        renewals,
        renewal_batches,
    })
}

async fn servers(State(nm): State<Arc<Nm>>) -> Json<Vec<ferry_api::NmServer>> {
    Json(nm.snapshot())
}

/// A command's server name and body, or the 4xx that says what is wrong with them.
fn command<T>(name: &str, body: Result<Json<T>, JsonRejection>, what: &str) -> Result<(ServerName, T), Refusal> {
    let server = ServerName::new(name).map_err(|e| Refusal::new(400, e.to_string()))?;
    let Json(cmd) =
        body.map_err(|e| Refusal::new(e.status().as_u16(), format!("bad {what} command: {}", e.body_text())))?;
    Ok((server, cmd))
}

fn answer(result: Result<ferry_api::NmAck, Refusal>) -> Response {
    match result {
        Ok(ack) => Json(ack).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn start(
    State(nm): State<Arc<Nm>>,
    ConnectInfo(info): ConnectInfo<PeerInfo>,
    Path(name): Path<String>,
    body: Result<Json<NmStart>, JsonRejection>,
) -> Response {
    match command(&name, body, "start") {
        Ok((server, cmd)) => match nm.authorize(info.peer.as_ref(), &cmd.origin).await {
            Ok(()) => answer(nm.start(&server, &cmd.origin, cmd.in_place, None).await),
            Err(r) => r.into_response(),
        },
        Err(r) => r.into_response(),
    }
}

async fn stop(
    State(nm): State<Arc<Nm>>,
    ConnectInfo(info): ConnectInfo<PeerInfo>,
    Path(name): Path<String>,
    body: Result<Json<NmStop>, JsonRejection>,
) -> Response {
    match command(&name, body, "stop") {
        Ok((server, cmd)) => match nm.authorize(info.peer.as_ref(), &cmd.origin).await {
            Ok(()) => answer(nm.stop(&server, &cmd.origin, cmd.force, cmd.timeout_ms).await),
            Err(r) => r.into_response(),
        },
        Err(r) => r.into_response(),
    }
}
