//! Typed HTTP clients for the Administration Server and the Node Manager. Every call has a
//! timeout (STYLE habit 7); errors say which endpoint failed and how.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

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
}

impl ClientError {
    /// True when the peer could not be reached at all (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. } | ClientError::Timeout { .. })
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Http {
    base: String,
    secret: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
    connect: Duration,
}

impl Http {
    fn new(base: &str, secret: Option<String>, timeout: Duration) -> Self {
        Http::with_connect(base, secret, timeout, timeout)
    }

    fn with_connect(base: &str, secret: Option<String>, connect: Duration, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(timeout)
            .pool_max_idle_per_host(4)
            .no_proxy()
            .build()
            .unwrap_or_default();
        let base = if base.starts_with("http://") || base.starts_with("https://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        Http { base, secret, client, timeout, connect }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder, url: &str) -> Result<T, ClientError> {
        let req = match &self.secret {
            Some(s) => req.bearer_auth(s),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.transport(url, e))?;
        let status = resp.status();
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
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url: url.into(), reason: e.to_string() })
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
        self.send(self.client.get(&url), &url).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.client.post(&url).json(body), &url).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.client.put(&url).json(body), &url).await
    }
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
        self.http.get(&format!("/api/v1/servers/{server}/config")).await
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
    pub async fn events(&self, since: u64) -> Result<Vec<Event>, ClientError> {
        self.http.get(&format!("/api/v1/events?since={since}")).await
    }
    pub async fn post_events(&self, events: &[Event]) -> Result<serde_json::Value, ClientError> {
        self.http.post("/api/v1/events", &events).await
    }
    pub async fn start_cluster(&self, cluster: &str) -> Result<Operation, ClientError> {
        self.http.post(&format!("/api/v1/clusters/{cluster}/start"), &serde_json::json!({})).await
    }
    pub async fn start(&self, server: &str) -> Result<Operation, ClientError> {
        self.http.post(&format!("/api/v1/servers/{server}/start"), &serde_json::json!({})).await
    }
    pub async fn stop(&self, server: &str, force: bool) -> Result<Operation, ClientError> {
        self.http.post(&format!("/api/v1/servers/{server}/stop"), &StopRequest { force }).await
    }
    pub async fn migrate(&self, server: &str, to: &str) -> Result<Operation, ClientError> {
        self.http.post(&format!("/api/v1/servers/{server}/migrate"), &MigrateRequest { to: to.into() }).await
    }
    pub async fn operation(&self, id: u64) -> Result<Operation, ClientError> {
        self.http.get(&format!("/api/v1/operations/{id}")).await
    }
}

/// A client of one Node Manager's `/nm/v1`, authenticated with the domain secret.
#[derive(Debug, Clone)]
pub struct NmClient {
    http: Http,
}

impl NmClient {
    pub fn new(addr: &str, secret: &str, timeout: Duration) -> Self {
        NmClient { http: Http::new(addr, Some(secret.to_string()), timeout) }
    }

    /// A client that gives up connecting after `connect` (a dead machine answers nothing; a
    /// live one accepts at once) but allows `timeout` for the whole call.
    pub fn with_connect_timeout(addr: &str, secret: &str, connect: Duration, timeout: Duration) -> Self {
        NmClient { http: Http::with_connect(addr, Some(secret.to_string()), connect, timeout) }
    }
    pub async fn health(&self) -> Result<NmHealth, ClientError> {
        self.http.get("/nm/v1/health").await
    }
    pub async fn servers(&self) -> Result<Vec<NmServer>, ClientError> {
        self.http.get("/nm/v1/servers").await
    }
    pub async fn start(&self, server: &str, cmd: &NmStart) -> Result<NmAck, ClientError> {
        self.http.post(&format!("/nm/v1/servers/{server}/start"), cmd).await
    }
    pub async fn stop(&self, server: &str, cmd: &NmStop) -> Result<NmAck, ClientError> {
        self.http.post(&format!("/nm/v1/servers/{server}/stop"), cmd).await
    }
}
