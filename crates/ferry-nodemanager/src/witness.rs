//! The witness (`ferry witness`): a voter of consensus leasing that hosts no servers, so a
//! domain of two machines keeps a majority when either dies. It is a Node Manager without
//! the servers: the same enrollment and certificates (it is named like a machine, so the
//! voters accept it), the same voter, the same configuration refresh, and on its mutual-TLS
//! listener only the voters' routes.

use std::sync::Arc;

use anyhow::Context;
use axum::response::Response;
use axum::Router;
use ferry_api::{AdminClient, ErrorBody, EventSink};
use ferry_core::domain::LeasingBasis;
use ferry_core::EventKind;
use ferry_host::{clock, files};

use crate::daemon::{self, NmOptions, Role, ADMIN_CALL_TIMEOUT};

/// Runs a witness until Ctrl-C or SIGTERM. `opts.machine` is the witness's name.
pub async fn run_witness(opts: NmOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let cache = opts.data_dir.join("domain-cache.json");
    daemon::check_defined(&opts, &cache, Role::Witness)?;
    let tls = Arc::new(daemon::certificates(&opts).await?);
    let domain = daemon::load_initial_domain(&opts, &cache, &tls.creds).await?;
    let name = &opts.machine;
    let Some(witness) = domain.domain.witness(name).cloned() else {
        let why = daemon::undefined(&domain.domain, name, "the Administration Server's configuration", Role::Witness);
        anyhow::bail!(why.unwrap_or_default());
    };
    if domain.domain.leasing.basis != LeasingBasis::Consensus {
        anyhow::bail!(
            "domain {} leases from a database: a witness only votes in consensus leasing (set [leasing] basis = \"consensus\")",
            domain.domain.name
        );
    }
    let _ = files::write_atomic(&cache, &serde_json::to_vec(&domain)?, 0o600);
    let admin_url = opts.admin_url.clone().unwrap_or_else(|| format!("http://{}", domain.domain.admin.listen));
    let events = EventSink::new(format!("witness/{name}"), clock::wall_ms);
    tokio::spawn(events.clone().deliver(AdminClient::with_tls(&admin_url, &tls.creds, ADMIN_CALL_TIMEOUT)));
    tokio::spawn(crate::pki::revocation_loop(tls.clone(), admin_url.clone()));
    let consensus =
        crate::consensus::Consensus::start(&domain.domain, name, &opts.data_dir, &tls.creds, events.clone()).await?;
    tokio::spawn(daemon::refresh_loop(None, opts.clone(), tls.clone(), domain, cache, Some(consensus.clone())));
    let listener = tokio::net::TcpListener::bind(witness.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen of witness {name})", witness.listen))?;
    events.emit(
        EventKind::WitnessStarted,
        None,
        Some(name),
        None,
        format!("witness {name} listening on {}: it votes in consensus leasing and hosts no servers", witness.listen),
    );
    let config = tls.creds.server_config(tls.revoked.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listener = ferry_tls::TlsListener::new(listener, config, false)?;
    let routes = Router::new().fallback(not_found).merge(consensus.clone().router());
    let app = crate::http::guarded(routes, tls).into_make_service_with_connect_info::<ferry_tls::PeerInfo>();
    let stopping = async move {
        daemon::shutdown_signal().await;
        consensus.leave().await;
    };
    axum::serve(listener, app).with_graceful_shutdown(stopping).await?;
    Ok(())
}

async fn not_found() -> Response {
    use axum::response::IntoResponse;
    let body = ErrorBody {
        error: "this is a witness: it hosts no servers and serves only the consensus voters' routes (/raft/v1/..., /lease/v1/...)".into(),
        detail: serde_json::Value::Null,
    };
    (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}
