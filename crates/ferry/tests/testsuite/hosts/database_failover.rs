//! The lease table's PostgreSQL fails over under servers on lab hosts (DESIGN §3 rules 8
//! and 11): a primary and a synchronous streaming standby in the switch namespace, the
//! standby's clock 3 s ahead (libfaketime), the data source listing both with
//! `target_session_attrs=read-write`. The primary is killed and the standby promoted; then
//! the old primary comes back, writable and first in the data source, while every
//! connection to the new primary is cut. The same prompt promotion to a standby whose clock
//! is behind. And a promotion slower than a lease, to a standby whose clock is behind: every
//! server fences, then returns unaided.

use std::time::Duration;

use ferry_api::EventKind;
use ferry_core::Epoch;
use ferry_testkit::{DomainSpec, LabDomain};

use super::{assert_ending, client_on, count, events, status_of, wait_event, wait_running_anywhere, Ending};
use crate::{exe, PATIENCE, SERIAL};

/// The timings: a lease of 1.5 s, promotion in about 0.2 s.
const INTERVAL_MS: u64 = 500;
const PERIODS: u32 = 3;
const GRACE_MS: u64 = 500;
const TTL_MS: u64 = INTERVAL_MS * PERIODS as u64;

/// Figure 7-1 on lab hosts with its lease table on a primary and a synchronous standby whose
/// clock is off by `standby_clock`: both servers running, a client on each, and their epochs.
async fn started_on_a_pair(standby_clock: &str) -> Option<(LabDomain, [Option<Epoch>; 2])> {
    let spec = DomainSpec::figure_7_1(INTERVAL_MS, PERIODS, GRACE_MS);
    let mut d = LabDomain::start_ha(spec, exe(), None, Some(standby_clock)).await.expect("the lab domain starts")?;
    let out = d.cli(&["start-cluster", "cluster-1", "--wait"]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    d.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();
    client_on(&mut d, "ms1").await;
    client_on(&mut d, "ms2").await;
    let epochs = [status_of(&d, "ms1").await.epoch, status_of(&d, "ms2").await.epoch];
    Some((d, epochs))
}

/// The servers keep their leases through the promotion (no fence, no migration, the same
/// instance answering all along, though the new primary's clock is 3 s ahead), and the old
/// primary that comes back is never written to: the daemons, reconnecting, pass it over for
/// the timeline they have already seen.
#[tokio::test]
async fn a_database_failover_keeps_every_server_and_the_old_primary_is_never_written_to() {
    let _g = SERIAL.lock().await;
    let Some((mut d, before)) = started_on_a_pair("+3s").await else { return };
    promptly_promoted(&mut d, before).await;

    // The old primary comes back, writable, on timeline 1; every connection to the new
    // primary is cut, so every daemon connects again, trying the old primary first.
    d.pg.start_again().expect("the old primary comes back");
    let renewed = "SELECT coalesce(max(renewed_at)::text, '-') FROM ferry_leases";
    let on_old = d.psql_in_switch(&d.pg_url_primary(), renewed).await.unwrap();
    assert!(on_old.status.success(), "{}", String::from_utf8_lossy(&on_old.stderr));
    let standby_url = d.standby.as_ref().map(|s| s.url()).unwrap();
    let cut = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE application_name = 'ferry' AND pid <> pg_backend_pid()";
    let out = d.psql_in_switch(&standby_url, cut).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cut: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    assert!(cut >= 3, "only {cut} ferry connections were cut (admin and Node Managers use the new primary)");
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;
    let still = d.psql_in_switch(&d.pg_url_primary(), renewed).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&on_old.stdout),
        String::from_utf8_lossy(&still.stdout),
        "a lease was written to the former primary"
    );
    let last = [status_of(&d, "ms1").await.epoch, status_of(&d, "ms2").await.epoch];
    assert_eq!(before, last, "a server was restarted when its connections were cut");
    kept_every_server(&d, "database failover").await;
}

/// The same prompt promotion to a standby whose clock is 3 s behind: nothing expires early
/// or late enough to matter, every server keeps its lease and its instance.
#[tokio::test]
async fn a_prompt_promotion_to_a_standby_whose_clock_is_behind_keeps_every_server() {
    let _g = SERIAL.lock().await;
    let Some((mut d, before)) = started_on_a_pair("-3s").await else { return };
    promptly_promoted(&mut d, before).await;
    kept_every_server(&d, "database failover, clock behind").await;
}

/// Neither server fenced, migrated or ran twice, and each client saw one instance throughout.
async fn kept_every_server(d: &LabDomain, what: &str) {
    let ev = events(d).await;
    for s in ["ms1", "ms2"] {
        assert_eq!(count(&ev, EventKind::Fenced, s), 0, "{s} fenced");
    }
    assert_ending(
        d,
        Ending {
            what,
            clients: &["ms1", "ms2"],
            one_instance: &["ms1", "ms2"],
            no_events: &[EventKind::Migrate, EventKind::Fenced],
            ..Ending::default()
        },
    )
    .await;
}

/// Kills the primary and promotes the standby at once; three TTLs later every server still
/// runs under the epoch it had `before`.
async fn promptly_promoted(d: &mut LabDomain, before: [Option<Epoch>; 2]) {
    d.pg.stop().expect("kill the primary");
    d.standby.as_ref().expect("a standby").promote().expect("promote the standby");
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;
    let after = [status_of(d, "ms1").await.epoch, status_of(d, "ms2").await.epoch];
    assert_eq!(before, after, "a server was restarted across the database failover");
}

/// A promotion slower than a lease, to a standby whose clock is 3 s behind: every server
/// fences itself at its deadline (the database cannot be written), then each comes back
/// unaided once the new primary answers, under a larger epoch, and no client ever sees two
/// instances or an older one after a newer one.
#[tokio::test]
async fn a_promotion_slower_than_a_lease_fences_cleanly_and_the_domain_returns() {
    let _g = SERIAL.lock().await;
    let Some((mut d, before)) = started_on_a_pair("-3s").await else { return };

    d.pg.stop().expect("kill the primary");
    // Both fence themselves while nothing is writable.
    for s in ["ms1", "ms2"] {
        wait_event(&d, &format!("{s} to fence itself"), |e| {
            e.kind == EventKind::Fenced && e.server.as_deref() == Some(s)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(TTL_MS)).await;
    d.standby.as_ref().expect("a standby").promote().expect("promote the standby");
    for (s, epoch) in ["ms1", "ms2"].into_iter().zip(before) {
        wait_running_anywhere(&d, s, epoch.expect("an epoch").0).await;
    }
    // Until each client has seen the new instance answer.
    tokio::time::sleep(Duration::from_millis(TTL_MS)).await;
    assert_ending(&d, Ending { what: "slow database failover", clients: &["ms1", "ms2"], ..Ending::default() }).await;
}
