//! Who may call what: the role table of the Administration Server's API, and the middleware
//! that applies it to every request before any handler runs.
//!
//! Every `/api/v1` route and `/metrics` needs an operator token (`Authorization: Bearer
//! TOKEN`) of at least the role the table names: `Monitor` reads, `Operator` also starts,
//! stops and migrates, `Admin` also changes the configuration and the tokens. The only
//! exceptions are `GET /` (the landing text) and the daemon routes in [`access`], which
//! check their own credentials. A route the table does not know needs `Monitor` to read and
//! `Admin` to change anything: a new route is closed until someone classifies it.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use ferry_api::Role;
use ferry_host::{clock, files};
use ferry_tls::{Identity, PeerInfo};

use crate::state::AdminState;
use crate::tokens::{Caller, Invalid, TokenStore};

/// HOOK for daemon routes: paths under these prefixes skip the operator-token check because
/// their handlers authenticate the caller themselves, or serve only public material:
/// enrollment (a one-time token or the domain secret is the credential), the domain CA
/// certificate and the revoked serials. Add a prefix here only for such a route.
pub(crate) const DAEMON_PREFIXES: &[&str] = &["/api/v1/enroll", "/api/v1/pki"];

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone: `GET /`.
    Public,
    /// A daemon route whose handler checks the caller itself (`POST /api/v1/events` with
    /// the domain secret, and [`DAEMON_PREFIXES`]).
    Daemon,
    /// An operator token (see [`Need`]).
    Token(Need),
}

/// An operator token of at least `role`; `action` names what is refused in a 403. With
/// `daemons`, the domain secret is accepted too: the configuration reads that Node Managers
/// and servers make (Figure 7-1 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Need {
    pub role: Role,
    pub action: &'static str,
    pub daemons: bool,
}

fn token(role: Role, action: &'static str) -> Access {
    Access::Token(Need { role, action, daemons: false })
}

/// The role table. `path` is the raw (still percent-encoded) path, as the router matches it.
pub(crate) fn access(method: &Method, path: &str) -> Access {
    let read = method == Method::GET || method == Method::HEAD;
    let under = |prefix: &str| path == prefix || path.strip_prefix(prefix).is_some_and(|r| r.starts_with('/'));
    if path == "/" && read {
        return Access::Public;
    }
    if (path == "/api/v1/events" && method == Method::POST) || DAEMON_PREFIXES.iter().any(|p| under(p)) {
        return Access::Daemon;
    }
    let segs: Vec<&str> = path.strip_prefix("/api/v1/").map(|r| r.split('/').collect()).unwrap_or_default();
    match (read, segs.as_slice()) {
        (true, ["tokens", ..]) => token(Role::Admin, "listing tokens"),
        (false, ["tokens"]) => token(Role::Admin, "creating tokens"),
        (false, ["tokens", ..]) => token(Role::Admin, "revoking tokens"),
        (true, ["domain"] | ["servers", _, "config"]) => {
            Access::Token(Need { role: Role::Monitor, action: "reading the configuration", daemons: true })
        }
        (true, _) => token(Role::Monitor, "reading"),
        (false, ["domain"]) => token(Role::Admin, "changing the configuration"),
        (false, ["servers", _, "start"]) if method == Method::POST => token(Role::Operator, "start"),
        (false, ["servers", _, "stop"]) if method == Method::POST => token(Role::Operator, "stop"),
        (false, ["servers", _, "migrate"]) if method == Method::POST => token(Role::Operator, "migrate"),
        (false, ["clusters", _, "start"]) if method == Method::POST => token(Role::Operator, "start-cluster"),
        // Machines' certificates are the domain's security configuration.
        (false, ["machines", _, "enroll-token"]) => token(Role::Admin, "making enrollment tokens"),
        (false, ["machines", _, "revoke"]) => token(Role::Admin, "revoking a machine"),
        // Any other operation on servers, clusters, machines or operations (cancel, ...).
        (false, ["servers" | "clusters" | "machines" | "operations", _, ..]) => token(Role::Operator, "this operation"),
        (false, _) => token(Role::Admin, "this change"),
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    Operator(Caller),
    /// A Node Manager or server, by the domain secret.
    Daemon,
}

/// A refusal: 401 or 403 with the `{error, detail}` body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub error: String,
    pub detail: serde_json::Value,
}

/// The `Authorization` header: absent, not a bearer token, or the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bearer<'a> {
    Missing,
    Malformed,
    Token(&'a str),
}

pub(crate) fn bearer(headers: &HeaderMap) -> Bearer<'_> {
    match headers.get(axum::http::header::AUTHORIZATION) {
        None => Bearer::Missing,
        Some(v) => match v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) {
            Some(t) if !t.is_empty() => Bearer::Token(t),
            _ => Bearer::Malformed,
        },
    }
}

/// Decides a request that needs an operator token. Messages name tokens, never show them.
pub(crate) fn authorize(
    need: &Need,
    presented: Bearer<'_>,
    secret: &str,
    tokens: &TokenStore,
    now_ms: u64,
    hint: &str,
) -> Result<Principal, Refusal> {
    let unauthorized = |error: String| Refusal { status: 401, error, detail: serde_json::json!({ "how": hint }) };
    let t = match presented {
        Bearer::Missing => {
            return Err(unauthorized(format!(
                "this request needs an operator token as `Authorization: Bearer TOKEN`: {hint}"
            )))
        }
        Bearer::Malformed => {
            return Err(unauthorized(format!(
                "the Authorization header must be `Bearer TOKEN` with an operator token: {hint}"
            )))
        }
        Bearer::Token(t) => t,
    };
    // HOOK (daemons): the domain secret admits Node Managers and servers to the routes
    // marked `daemons`; a verified machine or server certificate belongs here too.
    if need.daemons && files::secrets_equal(t, secret) {
        return Ok(Principal::Daemon);
    }
    let caller = tokens.verify(t, now_ms).map_err(|e| {
        let what = match &e {
            Invalid::Unknown => "ask an Admin for a token (`ferry token create`)".to_string(),
            Invalid::Expired { name, .. } | Invalid::Revoked { name, .. } => {
                format!("ask an Admin for a new one (`ferry token create --name {name} --role ROLE`)")
            }
        };
        Refusal {
            status: 401,
            error: format!("{e}: {what}"),
            detail: match &e {
                Invalid::Unknown => serde_json::json!({ "how": hint }),
                Invalid::Expired { name, .. } | Invalid::Revoked { name, .. } => {
                    serde_json::json!({ "token": name.as_str(), "how": hint })
                }
            },
        }
    })?;
    if caller.role < need.role {
        return Err(Refusal {
            status: 403,
            error: format!("{} needs the {} role; token '{}' has {}", need.action, need.role, caller.name, caller.role),
            detail: serde_json::json!({
                "needed": need.role.as_str(),
                "token": caller.name.as_str(),
                "role": caller.role.as_str(),
            }),
        });
    }
    Ok(Principal::Operator(caller))
}

/// HOOK (daemons): a Node Manager, a server or the admin itself, proven by its certificate
/// (mutual TLS), passes the routes marked `daemons` as the domain secret does.
fn daemon_by_certificate(req: &Request) -> bool {
    req.extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .and_then(|c| c.0.peer.as_ref())
        .is_some_and(|p| matches!(p.identity, Identity::Machine(_) | Identity::Server(_) | Identity::Admin))
}

/// Whether the caller connected over loopback (the admin's own host). A request without
/// connection information (only tests make those) is not.
fn from_this_host(req: &Request) -> bool {
    req.extensions().get::<ConnectInfo<PeerInfo>>().is_some_and(|c| c.0.addr.ip().to_canonical().is_loopback())
}

/// The middleware: refuses what the table does not allow; hands the handlers the [`Caller`]
/// (an `Extension`) for the audit trail.
pub(crate) async fn require(State(s): State<Arc<AdminState>>, mut req: Request, next: Next) -> Response {
    // Revocation is checked at every request, not only at the handshake: a connection made
    // before `ferry machine revoke` must not go on working.
    let revoked = req
        .extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .and_then(|c| c.0.peer.as_ref())
        .and_then(|p| s.pki.revoked.refuses(p));
    if let Some(why) = revoked {
        return crate::errors::error_with(403, why, serde_json::Value::Null);
    }
    if let Access::Token(need) = access(req.method(), req.uri().path()) {
        if need.daemons && daemon_by_certificate(&req) {
            return next.run(req).await;
        }
        // Paths of this host are for callers on this host; others are told in words.
        let hint = if from_this_host(&req) { s.token_hint.as_str() } else { crate::tokens::REMOTE_HINT };
        let decided = {
            let tokens = s.tokens.lock().unwrap_or_else(|p| p.into_inner());
            authorize(&need, bearer(req.headers()), &s.secret, &tokens, clock::wall_ms(), hint)
        };
        match decided {
            Ok(Principal::Operator(caller)) => {
                req.extensions_mut().insert(caller);
            }
            Ok(Principal::Daemon) => {}
            Err(r) => {
                tracing::info!(status = r.status, "refused {} {}: {}", req.method(), req.uri().path(), r.error);
                return crate::errors::error_with(r.status, r.error, r.detail);
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::TokenName;

    /// Every route of the router, with what it needs.
    #[test]
    fn the_role_table() {
        use Access::*;
        let mon = |a| Token(Need { role: Role::Monitor, action: a, daemons: false });
        let op = |a| Token(Need { role: Role::Operator, action: a, daemons: false });
        let adm = |a| Token(Need { role: Role::Admin, action: a, daemons: false });
        let cfg = Token(Need { role: Role::Monitor, action: "reading the configuration", daemons: true });
        let cases = [
            ("GET", "/", Public),
            ("POST", "/", adm("this change")),
            ("GET", "/metrics", mon("reading")),
            ("GET", "/api/v1/domain", cfg),
            ("PUT", "/api/v1/domain", adm("changing the configuration")),
            ("GET", "/api/v1/servers", mon("reading")),
            ("GET", "/api/v1/servers/ms1/config", cfg),
            ("POST", "/api/v1/servers/ms1/start", op("start")),
            ("POST", "/api/v1/servers/ms1/stop", op("stop")),
            ("POST", "/api/v1/servers/ms1/migrate", op("migrate")),
            ("POST", "/api/v1/servers/..%2F..%2Fetc/start", op("start")),
            ("GET", "/api/v1/clusters", mon("reading")),
            ("POST", "/api/v1/clusters/c1/start", op("start-cluster")),
            ("POST", "/api/v1/operations/7/cancel", op("this operation")),
            ("GET", "/api/v1/machines", mon("reading")),
            ("POST", "/api/v1/machines/m1/enroll-token", adm("making enrollment tokens")),
            ("POST", "/api/v1/machines/m1/revoke", adm("revoking a machine")),
            ("POST", "/api/v1/machines/m1/restart", op("this operation")),
            ("GET", "/api/v1/pki/ca", Daemon),
            ("GET", "/api/v1/leases", mon("reading")),
            ("GET", "/api/v1/operations/7", mon("reading")),
            ("GET", "/api/v1/events", mon("reading")),
            ("HEAD", "/api/v1/events", mon("reading")),
            ("GET", "/api/v1/events/stream", mon("reading")),
            ("POST", "/api/v1/events", Daemon),
            ("POST", "/api/v1/events/stream", adm("this change")),
            ("GET", "/api/v1/tokens", adm("listing tokens")),
            ("POST", "/api/v1/tokens", adm("creating tokens")),
            ("DELETE", "/api/v1/tokens/ci", adm("revoking tokens")),
            ("POST", "/api/v1/enroll", Daemon),
            ("GET", "/api/v1/pki/revoked", Daemon),
            ("POST", "/api/v1/enrollment", adm("this change")),
            ("DELETE", "/api/v1/servers", adm("this change")),
            ("GET", "/api/v2/anything", mon("reading")),
            ("PUT", "/anything", adm("this change")),
        ];
        for (method, path, want) in cases {
            assert_eq!(access(&method.parse().unwrap(), path), want, "{method} {path}");
        }
        assert!(Role::Monitor < Role::Operator && Role::Operator < Role::Admin);
    }

    fn store_with(roles: &[(&str, Role, Option<u64>)]) -> (tempfile::TempDir, TokenStore, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TokenStore::open(&dir.path().join("tokens.json")).unwrap();
        let mut out = Vec::new();
        for (i, (n, r, ttl)) in roles.iter().enumerate() {
            out.push(s.create(TokenName::new(*n).unwrap(), *r, *ttl, 0, [i as u8; 32]).unwrap().0);
        }
        (dir, s, out)
    }

    #[test]
    fn decisions_name_the_role_and_the_token_but_never_show_it() {
        let (_d, s, t) = store_with(&[
            ("mon", Role::Monitor, None),
            ("ops", Role::Operator, None),
            ("root", Role::Admin, Some(100)),
        ]);
        let secret = "f".repeat(64);
        let hint = "HINT";
        let decide =
            |role, daemons, b, now| authorize(&Need { role, action: "stop", daemons }, b, &secret, &s, now, hint);

        let e = decide(Role::Monitor, false, Bearer::Missing, 0).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.error.contains("Authorization: Bearer TOKEN") && e.error.contains(hint), "{}", e.error);
        assert_eq!(decide(Role::Monitor, false, Bearer::Malformed, 0).unwrap_err().status, 401);

        let e = decide(Role::Operator, false, Bearer::Token(&t[0]), 0).unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.error, "stop needs the Operator role; token 'mon' has Monitor");
        assert_eq!(e.detail["needed"], "operator");
        let ok = decide(Role::Operator, false, Bearer::Token(&t[1]), 0).unwrap();
        assert_eq!(ok, Principal::Operator(Caller { name: TokenName::new("ops").unwrap(), role: Role::Operator }));
        assert!(decide(Role::Admin, false, Bearer::Token(&t[2]), 99).is_ok());

        let e = decide(Role::Monitor, false, Bearer::Token(&t[2]), 100).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.error.starts_with("token 'root' expired at"), "{}", e.error);
        assert_eq!(e.detail["token"], "root");

        let e = decide(Role::Monitor, false, Bearer::Token("ferry_nonsense"), 0).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.error.contains("ferry token create"), "{}", e.error);

        // The domain secret opens the daemons' configuration reads, and nothing else.
        assert_eq!(decide(Role::Monitor, true, Bearer::Token(&secret), 0), Ok(Principal::Daemon));
        assert_eq!(decide(Role::Monitor, false, Bearer::Token(&secret), 0).unwrap_err().status, 401);

        for r in [
            decide(Role::Admin, false, Bearer::Token(&t[0]), 0),
            decide(Role::Monitor, false, Bearer::Token(&t[2]), 200),
        ] {
            let e = r.unwrap_err();
            let shown = format!("{} {}", e.error, e.detail);
            assert!(t.iter().all(|t| !shown.contains(t.as_str())) && !shown.contains(&secret), "{shown}");
        }
    }

    #[test]
    fn bearer_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Bearer::Missing);
        h.insert("authorization", "Basic dXNlcg==".parse().unwrap());
        assert_eq!(bearer(&h), Bearer::Malformed);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), Bearer::Malformed);
        h.insert("authorization", "Bearer ferry_ab".parse().unwrap());
        assert_eq!(bearer(&h), Bearer::Token("ferry_ab"));
    }
}
