//! A highly available lease table for tests and benchmarks: a primary with one synchronous
//! streaming standby (`pg_basebackup`), both private servers on loopback, the standby's
//! clock optionally off by seconds (libfaketime), and the failover an operator would do:
//! kill the primary, promote the standby.

use std::time::Duration;

use super::error::{PgServerError, Result};
use super::server::{PgOptions, PgServer};

/// A primary and its synchronous standby.
#[derive(Debug)]
pub struct PgPair {
    pub primary: PgServer,
    pub standby: PgServer,
}

impl PgPair {
    /// Starts both; the standby's clock is off by `standby_clock` (libfaketime's
    /// `FAKETIME`, e.g. `"+3s"`; `None`: the real clock). Returns once the primary counts
    /// the standby as synchronous.
    pub async fn start(standby_clock: Option<&str>) -> Result<PgPair> {
        let primary = PgServer::start()?;
        let standby = primary
            .start_standby(PgOptions { clock_offset: standby_clock.map(str::to_string), ..PgOptions::default() })?;
        primary.require_synchronous_standby().await?;
        let client = primary.client().await?;
        for _ in 0..600 {
            let row = client
                .query_one("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'", &[])
                .await
                .map_err(super::setup::sql("reading pg_stat_replication"))?;
            if row.get::<_, i64>(0) == 1 {
                return Ok(PgPair { primary, standby });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(PgServerError::Command {
            what: "waiting for the standby".into(),
            detail: "it did not become synchronous within 30 s".into(),
        })
    }

    /// [`PgPair::start`], or `None` after printing why not when the binaries are missing
    /// outside CI (as [`PgServer::start_or_skip`]).
    pub async fn start_or_skip(standby_clock: Option<&str>) -> Option<PgPair> {
        match PgPair::start(standby_clock).await {
            Ok(pair) => Some(pair),
            Err(e) if e.is_skip() => {
                eprintln!("skipping: {e}");
                None
            }
            Err(e) => panic!("cannot start a primary and its standby: {e}"),
        }
    }

    /// The data source the README documents: both hosts, the primary first, writable
    /// sessions only.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
            super::setup::SUPERUSER,
            self.primary.port(),
            self.standby.port(),
            super::setup::DATABASE
        )
    }

    /// Kills the primary (`pg_ctl stop -m immediate`, as a crash), waits `before_promotion`,
    /// and promotes the standby; returns how long it took from the kill until the standby
    /// accepts writes.
    pub async fn fail_over(&mut self, before_promotion: Duration) -> Result<Duration> {
        let started = tokio::time::Instant::now();
        self.primary.stop()?;
        tokio::time::sleep(before_promotion).await;
        self.standby.promote()?;
        Ok(started.elapsed())
    }
}
