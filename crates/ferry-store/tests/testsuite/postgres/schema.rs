//! Schema set-up (`init` also run concurrently, `reset`), the data source scheme, and the
//! index the expiry scan must use.

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation};
use ferry_store::postgres::{EXPIRED_SQL, NEXT_EXPIRY_SQL};
use ferry_store::LeaseStore;

use super::{open_and_init, query_one};
use crate::common::{request, server, CALL_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_is_idempotent_also_when_run_concurrently() {
    let pg = pg_server!();
    let url = pg.url();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { ferry_store::init(&url).await }));
    }
    for task in tasks {
        task.await.expect("task").expect("concurrent init");
    }
    let store = open_and_init(&url).await;
    let lease = store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
    store.init().await.expect("init again");
    ferry_store::init(&url).await.expect("init by URL");
    let got = store.get(&server("ms1")).await.expect("get").expect("row kept");
    assert_eq!((got.epoch, got.incarnation), (lease.epoch, lease.incarnation));
    let versions: i64 = query_one(&pg, "SELECT count(*) FROM ferry_schema").await;
    assert_eq!(versions, 1, "init added a second version row");
}

#[tokio::test]
async fn reset_empties_the_table() {
    let pg = pg_server!();
    let store = open_and_init(&pg.url()).await;
    let name = server("ms1");
    store.acquire(&request(&name, "m", "a")).await.expect("acquire");
    store.release(&name, &Incarnation("a".into()), Epoch(1)).await.expect("release");
    store.acquire(&request(&name, "m", "b")).await.expect("acquire");
    ferry_store::reset(&pg.url()).await.expect("reset");
    assert!(store.list().await.expect("list").is_empty());
    let lease = store.acquire(&request(&name, "m", "c")).await.expect("acquire");
    assert_eq!(lease.epoch, Epoch(1), "epochs restart after reset");
}

#[tokio::test]
async fn open_dispatches_on_the_scheme() {
    let pg = pg_server!();
    let url = pg.url();
    let store = ferry_store::open_and_init(&url, CALL_TIMEOUT).await.expect("postgres://");
    assert_eq!(store.describe(), url);
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
    let other = url.replacen("postgres://", "postgresql://", 1);
    let store = ferry_store::open(&other, CALL_TIMEOUT).await.expect("postgresql://");
    assert_eq!(store.get(&server("ms1")).await.expect("get").map(|l| l.epoch), Some(Epoch(1)));
    ferry_store::reset(&other).await.expect("reset");
    assert!(store.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn the_expiry_scan_uses_the_index() {
    let pg = pg_server!();
    let store = open_and_init(&pg.url()).await;
    // 10,000 held leases with an hour to go, 2,000 released ones, and 5 expired.
    pg.execute(
        "INSERT INTO ferry_leases
             SELECT 'server/s' || i, 's' || i, 'm', 'i' || i, 1, 'held',
                    now() + interval '1 hour', now()
             FROM generate_series(1, 10000) i;
         INSERT INTO ferry_leases
             SELECT 'server/r' || i, 'r' || i, 'm', 'i' || i, 1, 'released',
                    now() - interval '1 hour', now() - interval '2 hours'
             FROM generate_series(1, 2000) i;
         INSERT INTO ferry_leases
             SELECT 'server/e' || i, 'e' || i, 'm', 'i' || i, 1, 'held',
                    now() - i * interval '1 second', now() - interval '1 minute'
             FROM generate_series(1, 5) i;
         ANALYZE ferry_leases;",
    )
    .await
    .expect("fill the table");
    let client = pg.client().await.expect("client");
    for sql in [EXPIRED_SQL, NEXT_EXPIRY_SQL] {
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {sql}"), &[])
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let plan = plan.join("\n");
        eprintln!("{sql}\n{plan}");
        assert!(plan.contains("ferry_leases_held_expiry"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
    let expired = store.expired().await.expect("expired");
    let names: Vec<String> = expired.iter().map(|l| l.name.to_string()).collect();
    assert_eq!(names, ["server/e5", "server/e4", "server/e3", "server/e2", "server/e1"], "oldest expiry first");
    assert!(expired.iter().all(Lease::is_expired), "{expired:?}");
    let next = store.next_expiry_ms().await.expect("next expiry");
    assert!(next.is_some_and(|ms| ms > 3_500_000 && ms <= 3_600_000), "{next:?}");
}
