//! Typed HTTP clients for the Administration Server and the Node Manager. Every call has a
//! timeout (STYLE habit 7); errors say which endpoint failed and how. Every name put in a
//! path is percent-encoded as one segment ([`path_segment`]), so no name can reach another
//! endpoint (`ferry stop ../../etc` asks to stop a server of that name, which is refused).

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use serde::de::DeserializeOwned;
use serde::Serialize;

use ferry_tls::{Credentials, Expect, Identity};

use crate::types::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} did not answer within {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
    #[error("{error}")]
    Api { status: u16, error: String, detail: serde_json::Value },
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    /// A name that cannot be one path segment (nothing was sent).
    #[error("{name:?} cannot be sent as a name: {why}")]
    BadName { name: String, why: &'static str },
}

/// What stays as it is in a path segment: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `name` as one percent-encoded path segment. An empty name, `.` and `..` are refused:
/// URL parsers resolve them (also when encoded as `%2E`), so they would name another path.
pub fn path_segment(name: &str) -> Result<String, ClientError> {
    let bad = |why| Err(ClientError::BadName { name: name.to_string(), why });
    match name {
        "" => bad("it is empty"),
        "." | ".." => bad("a path would resolve it to another endpoint"),
        _ => Ok(utf8_percent_encode(name, SEGMENT).to_string()),
    }
}

impl ClientError {
    /// True when the peer could not be reached at all (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. } | ClientError::Timeout { .. })
    }
    /// The stable reason word of a refusal (`detail.reason`), if it has one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Api { detail, .. } => detail.get("reason").and_then(|r| r.as_str()),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct Http {
    base: String,
    /// A bearer token (an operator's, or the domain secret): never printed.
    secret: Option<String>,
    /// The client, or why none could be built (unreadable credentials): every call then
    /// fails with that reason.
    client: Result<reqwest::Client, String>,
    timeout: Duration,
    connect: Duration,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base)
            .field("bearer", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Http {
    fn new(base: &str, secret: Option<String>, timeout: Duration) -> Self {
        Http::with_connect(base, secret, timeout, timeout)
    }

    fn with_connect(base: &str, secret: Option<String>, connect: Duration, timeout: Duration) -> Self {
        Http::build(base, secret, None, connect, timeout)
    }

    /// `tls`: mutual TLS with this configuration (the URL becomes `https://`), or the
    /// reason no configuration could be made.
    fn build(
        base: &str,
        secret: Option<String>,
        tls: Option<Result<rustls::ClientConfig, String>>,
        connect: Duration,
        timeout: Duration,
    ) -> Self {
        ferry_tls::install_crypto_provider();
        let builder =
            // The whole call's bound is set per request (`send`), so clients that share a
            // connection pool may wait differently long.
            reqwest::Client::builder().connect_timeout(connect).pool_max_idle_per_host(4).no_proxy();
        let bare = base.trim_end_matches('/');
        let bare = bare.strip_prefix("http://").or_else(|| bare.strip_prefix("https://")).unwrap_or(bare);
        let (client, base) = match tls {
            None => {
                let base = if base.starts_with("https://") {
                    base.trim_end_matches('/').to_string()
                } else {
                    format!("http://{bare}")
                };
                (builder.build().map_err(|e| e.to_string()), base)
            }
            Some(Ok(cfg)) => {
                (builder.use_preconfigured_tls(cfg).build().map_err(|e| e.to_string()), format!("https://{bare}"))
            }
            Some(Err(e)) => (Err(e), format!("https://{bare}")),
        };
        Http { base, secret, client, timeout, connect }
    }

    fn client(&self, url: &str) -> Result<&reqwest::Client, ClientError> {
        self.client
            .as_ref()
            .map_err(|e| ClientError::Unreachable { url: url.into(), reason: format!("no TLS client: {e}") })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder, url: &str) -> Result<T, ClientError> {
        self.send_full(req, url).await.map(|(t, _)| t)
    }

    /// [`Http::send`], with the answer's headers.
    async fn send_full<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<(T, reqwest::header::HeaderMap), ClientError> {
        let req = req.timeout(self.timeout);
        let req = match &self.secret {
            Some(s) => req.bearer_auth(s),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.transport(url, e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| self.transport(url, e))?;
        if !status.is_success() {
            let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: format!(
                    "{status} from {url}: {}",
                    String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>()
                ),
                detail: serde_json::Value::Null,
            });
            return Err(ClientError::Api { status: status.as_u16(), error: body.error, detail: body.detail });
        }
        let t = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode { url: url.into(), reason: e.to_string() })?;
        Ok((t, headers))
    }

    fn transport(&self, url: &str, e: reqwest::Error) -> ClientError {
        if e.is_connect() && e.is_timeout() {
            ClientError::Unreachable {
                url: url.into(),
                reason: format!("no connection within {} ms (machine down or cut off?)", self.connect.as_millis()),
            }
        } else if e.is_timeout() {
            ClientError::Timeout { url: url.into(), timeout_ms: self.timeout.as_millis() as u64 }
        } else {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            ClientError::Unreachable { url: url.into(), reason }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.client(&url)?.get(&url), &url).await
    }

    async fn get_full<T: DeserializeOwned>(&self, path: &str) -> Result<(T, reqwest::header::HeaderMap), ClientError> {
        let url = format!("{}{path}", self.base);
        self.send_full(self.client(&url)?.get(&url), &url).await
    }

    /// A GET whose answer is text, with the value of the response header `header`.
    async fn get_text(&self, path: &str, header: &str) -> Result<(String, Option<String>), ClientError> {
        let url = format!("{}{path}", self.base);
        let resp =
            self.client(&url)?.get(&url).timeout(self.timeout).send().await.map_err(|e| self.transport(&url, e))?;
        let status = resp.status();
        let value = resp.headers().get(header).and_then(|v| v.to_str().ok()).map(String::from);
        let text = resp.text().await.map_err(|e| self.transport(&url, e))?;
        if !status.is_success() {
            return Err(ClientError::Api { status: status.as_u16(), error: text, detail: serde_json::Value::Null });
        }
        Ok((text, value))
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.client(&url)?.post(&url).json(body), &url).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.client(&url)?.put(&url).json(body), &url).await
    }
}

/// How many events [`AdminClient::events`] asks for at a time (the admin answers at most
/// [`EVENTS_PAGE_MAX`]).
pub const EVENTS_PAGE: usize = 1_000;
/// How many events the admin keeps (the newest); older ones are only in its `events.jsonl`.
pub const EVENTS_KEPT: usize = 20_000;
/// The most events one `GET /api/v1/events` answers.
pub const EVENTS_PAGE_MAX: usize = 10_000;
/// The header of `GET /api/v1/events` naming the oldest event the admin still holds (absent
/// when it holds none): events before it are only in its `events.jsonl`.
pub const EVENTS_OLDEST_HEADER: &str = "x-ferry-oldest-event";
/// The header of `GET /api/v1/events` naming the newest event: more remain after a page
/// whose last event is older.
pub const EVENTS_NEWEST_HEADER: &str = "x-ferry-newest-event";

/// One page of the event log, with what the admin holds.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsPage {
    pub events: Vec<Event>,
    /// The oldest event the admin holds; `None` when it holds none.
    pub oldest_id: Option<u64>,
    /// The newest event recorded (0 when none ever was).
    pub newest_id: u64,
}

/// A client of the Administration Server's `/api/v1`.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: Http,
}

impl AdminClient {
    pub fn new(url: &str, timeout: Duration) -> Self {
        AdminClient { http: Http::new(url, None, timeout) }
    }
    /// A client that authenticates with the domain secret (daemons posting events).
    pub fn with_secret(url: &str, secret: &str, timeout: Duration) -> Self {
        AdminClient { http: Http::new(url, Some(secret.to_string()), timeout) }
    }
    /// A daemon's client over mutual TLS: presents `creds`, accepts only the admin.
    pub fn with_tls(url: &str, creds: &Credentials, timeout: Duration) -> Self {
        let tls = creds.client_config(Expect::Identity(Identity::Admin)).map_err(|e| e.to_string());
        AdminClient { http: Http::build(url, None, Some(tls), timeout, timeout) }
    }
    /// A client over TLS with a configuration of the caller's making (enrollment: no
    /// certificate of its own yet).
    pub fn with_tls_config(url: &str, tls: rustls::ClientConfig, timeout: Duration) -> Self {
        AdminClient { http: Http::build(url, None, Some(Ok(tls)), timeout, timeout) }
    }
    /// A client that authenticates with an operator token (`Authorization: Bearer TOKEN`)
    /// in plain HTTP (the admin's own host). The token is sent, never shown.
    pub fn with_token(url: &str, token: &str, timeout: Duration) -> Self {
        AdminClient::new(url, timeout).bearer(token)
    }
    /// The same client, presenting an operator token (`Authorization: Bearer TOKEN`) on
    /// every call: how `ferry`'s client commands call, also over TLS (`with_tls_config`).
    pub fn bearer(mut self, token: &str) -> Self {
        self.http.secret = Some(token.to_string());
        self
    }
    /// `POST /api/v1/pki/rotate`: new certificates for an enrolled machine (mutual TLS with
    /// its current certificate; `req.token` is not used).
    pub async fn rotate(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.http.post("/api/v1/pki/rotate", req).await
    }
    /// `POST /api/v1/enroll`: a machine's certificates for its requests.
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.http.post("/api/v1/enroll", req).await
    }
    /// `POST /api/v1/machines/{machine}/enroll-token`.
    pub async fn enroll_token(&self, machine: &str) -> Result<EnrollToken, ClientError> {
        let path = format!("/api/v1/machines/{}/enroll-token", path_segment(machine)?);
        self.http.post(&path, &serde_json::json!({})).await
    }
    /// `POST /api/v1/machines/{machine}/revoke`.
    pub async fn revoke_machine(&self, machine: &str) -> Result<Revoked, ClientError> {
        let path = format!("/api/v1/machines/{}/revoke", path_segment(machine)?);
        self.http.post(&path, &serde_json::json!({})).await
    }
    /// `GET /api/v1/pki/ca[?nonce=N]`: the domain CA certificate, and with a nonce the
    /// admin's proof that it knows the domain secret (`ferry_tls::ca_mac`).
    pub async fn pki_ca(&self, nonce: Option<&str>) -> Result<(String, Option<String>), ClientError> {
        let path = match nonce {
            Some(n) => format!("/api/v1/pki/ca?nonce={}", utf8_percent_encode(n, NON_ALPHANUMERIC)),
            None => "/api/v1/pki/ca".to_string(),
        };
        self.http.get_text(&path, "x-ferry-ca-mac").await
    }
    /// `GET /api/v1/pki/revoked`: the serials every process must refuse.
    pub async fn revoked(&self) -> Result<Vec<String>, ClientError> {
        self.http.get("/api/v1/pki/revoked").await
    }
    pub fn base(&self) -> &str {
        &self.http.base
    }
    pub async fn domain(&self) -> Result<VersionedDomain, ClientError> {
        self.http.get("/api/v1/domain").await
    }
    pub async fn put_domain(&self, update: &DomainUpdate) -> Result<VersionedDomain, ClientError> {
        self.http.put("/api/v1/domain", update).await
    }
    pub async fn server_config(&self, server: &str) -> Result<VersionedDomain, ClientError> {
        self.http.get(&format!("/api/v1/servers/{}/config", path_segment(server)?)).await
    }
    pub async fn servers(&self) -> Result<Vec<ServerStatus>, ClientError> {
        self.http.get("/api/v1/servers").await
    }
    pub async fn clusters(&self) -> Result<Vec<ClusterStatus>, ClientError> {
        self.http.get("/api/v1/clusters").await
    }
    pub async fn machines(&self) -> Result<Vec<MachineStatus>, ClientError> {
        self.http.get("/api/v1/machines").await
    }
    pub async fn leases(&self) -> Result<Vec<ferry_core::lease::Lease>, ClientError> {
        self.http.get("/api/v1/leases").await
    }
    pub async fn leasing(&self) -> Result<crate::LeasingStatus, ClientError> {
        self.http.get("/api/v1/leasing").await
    }
    /// Every event after `since` that the admin holds, page after page.
    pub async fn events(&self, since: u64) -> Result<Vec<Event>, ClientError> {
        let mut all = Vec::new();
        let mut after = since;
        loop {
            let page = self.events_page(after, EVENTS_PAGE).await?;
            match page.events.last() {
                Some(e) => after = e.id,
                None => return Ok(all),
            }
            let done = page.events.len() < EVENTS_PAGE || after >= page.newest_id;
            all.extend(page.events);
            if done {
                return Ok(all);
            }
        }
    }
    /// `GET /api/v1/events?since=ID&limit=N`: at most `limit` events after `since`, oldest
    /// first, and what the admin holds (to go on from the last one, or to tell that older
    /// ones are no longer kept).
    pub async fn events_page(&self, since: u64, limit: usize) -> Result<EventsPage, ClientError> {
        let (events, headers): (Vec<Event>, _) =
            self.http.get_full(&format!("/api/v1/events?since={since}&limit={limit}")).await?;
        let number = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let newest_id = number(EVENTS_NEWEST_HEADER).unwrap_or_else(|| events.last().map_or(since, |e| e.id));
        Ok(EventsPage { oldest_id: number(EVENTS_OLDEST_HEADER), newest_id, events })
    }
    pub async fn post_events(&self, events: &[Event]) -> Result<serde_json::Value, ClientError> {
        self.http.post("/api/v1/events", &events).await
    }
    pub async fn start_cluster(&self, cluster: &str) -> Result<Operation, ClientError> {
        self.http.post(&format!("/api/v1/clusters/{}/start", path_segment(cluster)?), &serde_json::json!({})).await
    }
    pub async fn start(&self, server: &str) -> Result<Operation, ClientError> {
        self.http.post(&format!("/api/v1/servers/{}/start", path_segment(server)?), &serde_json::json!({})).await
    }
    pub async fn stop(&self, server: &str, force: bool) -> Result<Operation, ClientError> {
        self.http.post(&format!("/api/v1/servers/{}/stop", path_segment(server)?), &StopRequest { force }).await
    }
    pub async fn migrate(&self, server: &str, to: &str) -> Result<Operation, ClientError> {
        let path = format!("/api/v1/servers/{}/migrate", path_segment(server)?);
        self.http.post(&path, &MigrateRequest { to: to.into() }).await
    }
    pub async fn operation(&self, id: u64) -> Result<Operation, ClientError> {
        self.http.get(&format!("/api/v1/operations/{id}")).await
    }
}

/// A client of one Node Manager's `/nm/v1`, over mutual TLS: it presents `creds` and
/// accepts only the Node Manager of `machine`.
#[derive(Debug, Clone)]
pub struct NmClient {
    http: Http,
}

impl NmClient {
    pub fn new(addr: &str, machine: &str, creds: &Credentials, timeout: Duration) -> Self {
        NmClient::with_connect_timeout(addr, machine, creds, timeout, timeout)
    }

    /// A client that gives up connecting after `connect` (a dead machine answers nothing; a
    /// live one accepts at once) but allows `timeout` for the whole call.
    pub fn with_connect_timeout(
        addr: &str,
        machine: &str,
        creds: &Credentials,
        connect: Duration,
        timeout: Duration,
    ) -> Self {
        let tls = creds.client_config(Expect::Identity(Identity::Machine(machine.into()))).map_err(|e| e.to_string());
        NmClient { http: Http::build(addr, None, Some(tls), connect, timeout) }
    }

    /// The same client (and its connections) with another bound on each whole call.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut http = self.http.clone();
        http.timeout = timeout;
        NmClient { http }
    }

    /// A client whose every call fails with `why` (the caller has no certificate).
    pub fn unusable(addr: &str, why: &str) -> Self {
        NmClient {
            http: Http::build(addr, None, Some(Err(why.to_string())), Duration::from_secs(1), Duration::from_secs(1)),
        }
    }

    /// A client with a TLS configuration of the caller's making (tests of wrong certificates).
    pub fn with_tls(addr: &str, tls: rustls::ClientConfig, timeout: Duration) -> Self {
        NmClient { http: Http::build(addr, None, Some(Ok(tls)), timeout, timeout) }
    }

    pub async fn health(&self) -> Result<NmHealth, ClientError> {
        self.http.get("/nm/v1/health").await
    }
    pub async fn servers(&self) -> Result<Vec<NmServer>, ClientError> {
        self.http.get("/nm/v1/servers").await
    }
    /// Its consensus voter: who it is, the voters and leader it knows (consensus leasing).
    pub async fn hello(&self) -> Result<ferry_core::voters::Hello, ClientError> {
        self.http.get("/raft/v1/hello").await
    }
    pub async fn start(&self, server: &str, cmd: &NmStart) -> Result<NmAck, ClientError> {
        self.http.post(&format!("/nm/v1/servers/{}/start", path_segment(server)?), cmd).await
    }
    pub async fn stop(&self, server: &str, cmd: &NmStop) -> Result<NmAck, ClientError> {
        self.http.post(&format!("/nm/v1/servers/{}/stop", path_segment(server)?), cmd).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_percent_encoded_path_segment() {
        assert_eq!(path_segment("ms1").unwrap(), "ms1");
        assert_eq!(path_segment("ms-1_a.b~").unwrap(), "ms-1_a.b~");
        assert_eq!(path_segment("../../etc").unwrap(), "..%2F..%2Fetc");
        assert_eq!(path_segment("a b?c#d%e").unwrap(), "a%20b%3Fc%23d%25e");
        assert_eq!(path_segment("ü").unwrap(), "%C3%BC");
        for bad in ["", ".", ".."] {
            let e = path_segment(bad).unwrap_err();
            assert!(matches!(e, ClientError::BadName { .. }), "{bad:?}: {e}");
        }
        // Why `.` and `..` are refused rather than encoded: URL parsers resolve them either way.
        let url = reqwest::Url::parse("http://h/api/v1/servers/%2E%2E/stop").unwrap();
        assert_eq!(url.path(), "/api/v1/stop");
    }

    /// The request line a real HTTP client sends for `stop("../../etc")`, read by a listener
    /// that answers 404: one encoded segment, on the stop endpoint.
    #[tokio::test]
    async fn a_name_with_slashes_stays_on_its_endpoint() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            let body = r#"{"error":"unknown server"}"#;
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string()
        });
        let e = AdminClient::new(&url, Duration::from_secs(5)).stop("../../etc", false).await.unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert_eq!(seen.await.unwrap(), "POST /api/v1/servers/..%2F..%2Fetc/stop HTTP/1.1");
        // Nothing is sent for a name that cannot be a segment.
        let e = AdminClient::new(&url, Duration::from_secs(5)).start("..").await.unwrap_err();
        assert_eq!(e.to_string(), r#"".." cannot be sent as a name: a path would resolve it to another endpoint"#);
    }

    #[test]
    fn a_client_never_prints_its_token() {
        let c = AdminClient::with_secret("http://127.0.0.1:1", "s3cr3t-value", Duration::from_secs(1));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
