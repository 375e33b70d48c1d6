//! The lease table across a database failover (DESIGN §3 rules 8 and 11): a new authority
//! restarts the lease clocks (also when only recorded as changed: the rule's own test),
//! version-1 tables are used as they are and upgraded in place, and with real streaming replication (a primary and a
//! `pg_basebackup` standby whose clock is off by seconds under libfaketime) a promotion keeps
//! every lease, loses no acknowledged epoch, and a former primary that comes back is never
//! written to.

use std::time::Duration;

use tokio::time::Instant;

use ferry_core::{Epoch, Incarnation};
use ferry_store::postgres::PostgresStore;
use ferry_store::{AcquireRequest, LeaseStore, Renewal, StoreError};
use ferry_testkit::PgPair as Pair;

use super::{open_and_init, query_one};
use crate::common::{request, server};

const TTL: Duration = Duration::from_millis(1500);

fn short(name: &str, incarnation: &str) -> AcquireRequest {
    AcquireRequest { ttl: TTL, ..request(&server(name), "m", incarnation) }
}

/// Rule 11 on one server: a recorded authority that differs from the server reached (what a
/// promotion looks like to the next connection) renews every held lease at the server's
/// clock, never shortens one, leaves released rows alone, and happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_authority_restarts_the_lease_clocks() {
    let pg = pg_server!();
    let store = open_and_init(&pg.url()).await;
    store.acquire(&short("stale", "a")).await.expect("acquire");
    store.acquire(&request(&server("far"), "m", "b")).await.expect("acquire (60 s)");
    store.acquire(&short("gone", "c")).await.expect("acquire");
    store.release(&server("gone"), &Incarnation("c".into()), Epoch(1)).await.expect("release");
    let recorded: i64 = query_one(&pg, "SELECT count(*) FROM ferry_authority").await;
    assert_eq!(recorded, 1, "the first lease call records the server");

    // As the old clock saw it: "stale" expired a second ago, "ahead" was renewed by a
    // clock 10 s ahead of the new one; then the primary changes.
    store.acquire(&short("ahead", "d")).await.expect("acquire");
    pg.execute(
        "UPDATE ferry_leases SET expires_at = now() - interval '1 second', \
             renewed_at = now() - interval '2500 milliseconds' WHERE name = 'server/stale'; \
         UPDATE ferry_leases SET expires_at = now() + interval '11500 milliseconds', \
             renewed_at = now() + interval '10 seconds' WHERE name = 'server/ahead'; \
         UPDATE ferry_authority SET system_identifier = 'another system'",
    )
    .await
    .expect("set the scene");
    let expiry = "SELECT extract(epoch FROM expires_at)::float8 FROM ferry_leases WHERE name = ";
    let far_before: f64 = query_one(&pg, &format!("{expiry}'server/far'")).await;
    let ahead_before: f64 = query_one(&pg, &format!("{expiry}'server/ahead'")).await;
    assert_eq!(store.expired().await.expect("expired").len(), 1, "the old store's connection is not re-checked");

    let after = PostgresStore::open(&pg.url(), Duration::from_secs(10)).await.expect("open");
    let expired = after.expired().await.expect("expired");
    assert!(expired.is_empty(), "a lease expired under the new authority: {expired:?}");
    let stale = after.get(&server("stale")).await.expect("get").expect("row");
    assert!(stale.remaining_ms > 1000 && stale.remaining_ms <= 1500, "a full TTL from the new clock: {stale:?}");
    assert_eq!(stale.epoch, Epoch(1), "the epoch is untouched");
    let taken = after.acquire(&short("stale", "intruder")).await;
    assert!(matches!(taken, Err(StoreError::Held { .. })), "acquisition obeys the rule too: {taken:?}");
    let far_after: f64 = query_one(&pg, &format!("{expiry}'server/far'")).await;
    assert!(far_after >= far_before, "a lease was shortened: {far_before} -> {far_after}");
    let ahead_after: f64 = query_one(&pg, &format!("{expiry}'server/ahead'")).await;
    assert_eq!(ahead_before, ahead_after, "a lease expiring beyond a full TTL is left alone");
    let gone = after.get(&server("gone")).await.expect("get").expect("row");
    assert_eq!(gone.state, ferry_core::lease::LeaseState::Released, "a released row stays released");
    let system: String = query_one(&pg, "SELECT system_identifier FROM ferry_authority").await;
    assert_ne!(system, "another system", "the new server is recorded");

    // Once recorded, another connection to the same server changes nothing.
    pg.execute("UPDATE ferry_leases SET expires_at = now() - interval '1 second' WHERE name = 'server/stale'")
        .await
        .expect("expire it");
    let again = PostgresStore::open(&pg.url(), Duration::from_secs(10)).await.expect("open");
    assert_eq!(again.expired().await.expect("expired").len(), 1, "the same server restarted the clocks again");
    // And the holder of an expired-and-restarted lease renews it as usual.
    let renewed = after.renew(&server("far"), &Incarnation("b".into()), Epoch(1), TTL).await;
    assert!(renewed.is_ok(), "{renewed:?}");
}

/// A rolling upgrade from schema version 1: this version renews on a version-1 table as it
/// is (so daemons can be upgraded one at a time while older ones still use it), records no
/// authority there, and `ferry leasing init` then upgrades it in place, keeping every lease.
#[tokio::test]
async fn a_version_1_table_is_used_as_it_is_and_upgraded_in_place() {
    let pg = pg_server!();
    let store = open_and_init(&pg.url()).await;
    let lease = store.acquire(&request(&server("ms1"), "m", "a")).await.expect("acquire");
    pg.execute("DROP TABLE ferry_authority; UPDATE ferry_schema SET version = 1").await.expect("make it version 1");
    let old = PostgresStore::open(&pg.url(), Duration::from_secs(10)).await.expect("open");
    let holder = Incarnation("a".into());
    old.renew(&lease.name, &holder, lease.epoch, TTL).await.expect("renew on a version-1 table");
    old.acquire(&short("ms2", "b")).await.expect("acquire on a version-1 table");
    let tables: i64 = query_one(&pg, "SELECT count(*) FROM pg_tables WHERE tablename = 'ferry_authority'").await;
    assert_eq!(tables, 0, "a lease call changed a version-1 table");
    old.init().await.expect("init upgrades");
    let version: i32 = query_one(&pg, "SELECT version FROM ferry_schema").await;
    assert_eq!(version, 2);
    let kept = old.get(&server("ms1")).await.expect("get").expect("the lease survives the upgrade");
    assert_eq!(kept.epoch, Epoch(1));
    let upgraded = PostgresStore::open(&pg.url(), Duration::from_secs(10)).await.expect("open");
    upgraded.renew(&lease.name, &holder, lease.epoch, TTL).await.expect("renew after the upgrade");
    let recorded: i64 = query_one(&pg, "SELECT count(*) FROM ferry_authority").await;
    assert_eq!(recorded, 1, "the upgraded table records its server");
}

/// Twenty holders renewing every 250 ms through the documented multi-host data source; the
/// primary dies and the standby, its clock 3 s ahead, is promoted. Without rule 11 the new
/// primary would find every lease expired at once; with it, every holder renews again and
/// nothing expires while they do, and a holder that stops renewing expires a TTL later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_with_its_clock_ahead_keeps_every_lease() {
    let Some(mut pair) = Pair::start_or_skip(Some("+3s")).await else {
        return;
    };
    let store = PostgresStore::open_and_init(&pair.url(), Duration::from_millis(400)).await.expect("open");
    let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let mut renewals = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let lease = store.acquire(&short(name, &format!("i{i}"))).await.expect("acquire");
        renewals.push(Renewal {
            name: lease.name,
            incarnation: Incarnation(format!("i{i}")),
            epoch: lease.epoch,
            ttl: TTL,
        });
    }
    let promotion = pair.fail_over(Duration::ZERO).await.expect("fail over");
    // Renew until it works again; no renewal may be refused as lost.
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match store.renew_many(&renewals).await {
            Ok(outcomes) => {
                for o in &outcomes {
                    assert!(o.is_ok(), "a lease was lost in the failover: {o:?}");
                }
                break;
            }
            Err(e) => assert!(e.is_transient(), "a failover error must be transient: {e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the store never reached the new primary");
    }
    eprintln!("promotion {promotion:?}, renewing again {:?} later ({attempts} calls)", started.elapsed());
    let expired = store.expired().await.expect("expired");
    assert!(expired.is_empty(), "leases expired on the new primary: {expired:?}");
    // Liveness: a holder that stops renewing still expires, by the new clock.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let expired = store.expired().await.expect("expired");
        if expired.len() == names.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the leases never expired: {} of {}", expired.len(), names.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same with the standby's clock behind: nothing expires early, and nothing lives on
/// unboundedly (each lease expires within a TTL of its last renewal by the new clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_with_its_clock_behind_expires_nothing_early() {
    let Some(mut pair) = Pair::start_or_skip(Some("-3s")).await else {
        return;
    };
    let store = PostgresStore::open_and_init(&pair.url(), Duration::from_millis(400)).await.expect("open");
    let lease = store.acquire(&short("s1", "a")).await.expect("acquire");
    pair.fail_over(Duration::ZERO).await.expect("fail over");
    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        match store.renew(&lease.name, &Incarnation("a".into()), lease.epoch, TTL).await {
            Ok(l) => break l,
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
        assert!(Instant::now() < deadline, "never renewed on the new primary");
    };
    assert!(renewed.remaining_ms <= TTL.as_millis() as i64, "{renewed:?}");
    let stored = store.get(&lease.name).await.expect("get").expect("row");
    assert!(
        stored.remaining_ms <= TTL.as_millis() as i64 + 50,
        "the old clock's expiry (3 s later by the new clock) must not outlive a renewal: {stored:?}"
    );
}

/// Rule 8: an epoch bump the store acknowledged is on the standby when it is promoted. A
/// holder hands its lease over again and again (each an epoch bump) while the primary is
/// killed; the promoted standby has every acknowledged epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_epoch_bump_is_lost_in_a_failover() {
    let Some(mut pair) = Pair::start_or_skip(Some("+0s")).await else {
        return;
    };
    let url = pair.url();
    let store = std::sync::Arc::new(PostgresStore::open_and_init(&url, Duration::from_secs(2)).await.expect("open"));
    let first = store.acquire(&short("s1", "i0")).await.expect("acquire");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let store = std::sync::Arc::clone(&store);
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut acked = first.epoch;
            for i in 1.. {
                // Stops at the first failure, or once the primary is dead (a handover in
                // flight then may still be answered by the new primary).
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                match store.handover(&short("s1", &format!("i{i}")), &Incarnation(format!("i{}", i - 1))).await {
                    Ok(lease) => acked = lease.epoch,
                    Err(_) => break,
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    pair.primary.stop().expect("kill the primary");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    pair.standby.promote().expect("promote");
    let acked = worker.await.expect("worker");
    assert!(acked.0 > 5, "the handovers did not run: last epoch {acked:?}");
    let after = PostgresStore::open(&url, Duration::from_secs(10)).await.expect("open the new primary");
    let row = after.get(&server("s1")).await.expect("get").expect("row");
    assert!(
        row.epoch >= acked,
        "an acknowledged epoch was lost: {:?} on the new primary, {acked:?} acknowledged",
        row.epoch
    );
}

/// A split: after the failover the old primary comes back, writable, first in the data
/// source. The store has used the new primary's timeline and never writes to the old one;
/// with the new primary down it says why, and once it is back it renews there. A store
/// opened after the split uses the new primary too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_primary_that_comes_back_is_never_written_to() {
    let Some(mut pair) = Pair::start_or_skip(Some("+0s")).await else {
        return;
    };
    let store = PostgresStore::open_and_init(&pair.url(), Duration::from_millis(500)).await.expect("open");
    let lease = store.acquire(&short("s1", "a")).await.expect("acquire");
    let holder = Incarnation("a".into());
    let renew = || store.renew(&lease.name, &holder, lease.epoch, TTL);
    pair.fail_over(Duration::ZERO).await.expect("fail over");
    let deadline = Instant::now() + Duration::from_secs(30);
    while renew().await.is_err() {
        assert!(Instant::now() < deadline, "never renewed on the new primary");
    }
    pair.primary.start_again().expect("the old primary comes back");
    let before: i64 = query_one(
        &pair.primary,
        "SELECT floor(extract(epoch FROM renewed_at) * 1000)::bigint FROM ferry_leases WHERE name = 'server/s1'",
    )
    .await;
    // A process started after the split, that never saw the new primary, asks every host
    // first and uses the new one, though the old one is listed first and writable.
    let fresh = PostgresStore::open(&pair.url(), Duration::from_secs(10)).await.expect("open after the split");
    fresh.acquire(&short("s2", "b")).await.expect("acquire on the new primary");
    let on_old: i64 = query_one(&pair.primary, "SELECT count(*) FROM ferry_leases WHERE name = 'server/s2'").await;
    assert_eq!(on_old, 0, "a process started after the split wrote to the former primary");
    let on_new: i64 = query_one(&pair.standby, "SELECT count(*) FROM ferry_leases WHERE name = 'server/s2'").await;
    assert_eq!(on_new, 1);
    drop(fresh);
    // New connections start at the first host, the old primary: passed over.
    pair.standby.stop().expect("stop the new primary");
    let refused = renew().await;
    let message = match &refused {
        Err(e @ StoreError::Unavailable { .. }) => {
            e.to_string() + &std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default()
        }
        other => panic!("expected Unavailable, got {other:?}"),
    };
    assert!(message.contains("former primary"), "{message}");
    pair.standby.start_again().expect("the new primary comes back");
    let deadline = Instant::now() + Duration::from_secs(30);
    while renew().await.is_err() {
        assert!(Instant::now() < deadline, "never renewed on the new primary again");
    }
    let after: i64 = query_one(
        &pair.primary,
        "SELECT floor(extract(epoch FROM renewed_at) * 1000)::bigint FROM ferry_leases WHERE name = 'server/s1'",
    )
    .await;
    assert_eq!(before, after, "the former primary was written to");
}

/// Rule 8 across a failover needs a synchronous standby: `ferry leasing init` (and a store
/// opened on several hosts) warns without one, and is quiet with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_without_a_synchronous_standby_is_warned_about() {
    let Some(pair) = Pair::start_or_skip(Some("+0s")).await else {
        return;
    };
    let alone = ferry_store::durability_warning(&pair.standby.url()).await;
    // The standby is read-only and not the primary: refused, not judged.
    assert!(alone.is_err() || alone.as_ref().is_ok_and(|w| w.is_some()), "{alone:?}");
    let with_standby = ferry_store::durability_warning(&pair.url()).await.expect("check");
    assert_eq!(with_standby, None, "a synchronous standby is connected");
    pair.primary.execute("ALTER SYSTEM RESET synchronous_standby_names").await.expect("reset");
    pair.primary.execute("SELECT pg_reload_conf()").await.expect("reload");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let warning = ferry_store::durability_warning(&pair.url()).await.expect("check");
        if let Some(text) = warning {
            assert!(text.contains("synchronous_standby_names"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no warning without a synchronous standby");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A host that accepts TCP connections and then says nothing (a stopped postmaster, a
/// network that drops replies after the handshake) is passed over: at first contact the
/// other hosts decide, and later a silent preferred host costs a short head start, not a
/// connect timeout, before the next host is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_accepts_and_never_answers_is_passed_over() {
    let pg = pg_server!();
    let call = Duration::from_secs(1);
    // First contact, the silent host listed first.
    let silent = Relay::start(0).await;
    silent.go_silent();
    let data_source = |relay: &Relay| {
        format!("postgres://{}@127.0.0.1:{},127.0.0.1:{}/ferry", ferry_testkit::SUPERUSER, relay.port, pg.port())
    };
    let store = PostgresStore::open_and_init(&data_source(&silent), call).await.expect("open past a silent host");
    store.acquire(&short("s1", "a")).await.expect("acquire past a silent host");

    // A relay to the same server, listed first, so it is the one used; then it goes
    // silent, dropping the connections it carried.
    let relay = Relay::start(pg.port()).await;
    let store = PostgresStore::open(&data_source(&relay), call).await.expect("open");
    let lease = store.acquire(&short("s2", "b")).await.expect("acquire through the relay");
    assert!(relay.carried() > 0, "the first host listed is not the one used");
    relay.go_silent();
    // The connect timeout of a new connection is 10 s here: renewing again well before it
    // shows the silent host was not waited for.
    let since = Instant::now();
    let holder = Incarnation("b".into());
    while store.renew(&lease.name, &holder, lease.epoch, TTL).await.is_err() {
        assert!(since.elapsed() < Duration::from_secs(5), "waited for the silent host");
    }
}

/// A TCP relay to a local port that can be made to accept connections and never answer
/// (port 0: silent from the start).
struct Relay {
    port: u16,
    state: std::sync::Arc<std::sync::Mutex<RelayState>>,
}

#[derive(Default)]
struct RelayState {
    silent: bool,
    carried: usize,
    relaying: Vec<tokio::task::JoinHandle<()>>,
    held: Vec<tokio::net::TcpStream>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(RelayState::default()));
        let shared = std::sync::Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut s = shared.lock().expect("relay state");
                if s.silent || target == 0 {
                    s.held.push(inbound);
                    continue;
                }
                s.carried += 1;
                s.relaying.push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Relay { port, state }
    }

    fn carried(&self) -> usize {
        self.state.lock().expect("relay state").carried
    }

    /// From now on: accept, never answer; the connections relayed so far are cut.
    fn go_silent(&self) {
        let mut s = self.state.lock().expect("relay state");
        s.silent = true;
        for task in s.relaying.drain(..) {
            task.abort();
        }
    }
}
