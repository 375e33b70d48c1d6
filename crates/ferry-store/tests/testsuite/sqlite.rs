//! The SQLite lease table against the conformance suite, through one handle and through two
//! handles on one file (as two processes would), plus what only SQLite has: opening paths,
//! schema set-up and versions, lock timeouts, and several real processes on one file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName};
use ferry_store::sqlite::{SqliteStore, EXPIRED_SQL};
use ferry_store::{AcquireRequest, LeaseStore, StoreError};
use ferry_testkit::conformance;

use crate::common::{chain, lost_detail, request, server, test_name, TwoHandles, CALL_TIMEOUT};

// ---- the conformance suite ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_one_handle() {
    let dir = tempdir();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let path = dir.path().join(format!("one-{n}.db"));
        async move { open_and_init(&path).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_two_handles_on_one_file() {
    let dir = tempdir();
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let path = dir.path().join(format!("two-{n}.db"));
        async move {
            let a = open_and_init(&path).await;
            let b = open(&path);
            TwoHandles::new(a, b)
        }
    })
    .await;
}

/// The trait's default `renew_many` (one `renew` after another), as stores that do not
/// override it get, against the batch checks of the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_renew_many_passes_the_batch_checks() {
    let dir = tempdir();
    for (n, (name, check)) in
        conformance::CHECKS.iter().filter(|(name, _)| name.contains("batch") || name.contains("renew_many")).enumerate()
    {
        let store = open_and_init(&dir.path().join(format!("default-{n}.db"))).await;
        conformance::run_check(name, *check, Arc::new(OnlyRenew(store))).await;
    }
}

/// Forwards everything but `renew_many`, which keeps the trait's default.
struct OnlyRenew(SqliteStore);

#[async_trait::async_trait]
impl LeaseStore for OnlyRenew {
    async fn acquire(&self, req: &AcquireRequest) -> ferry_store::Result<Lease> {
        self.0.acquire(req).await
    }
    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> ferry_store::Result<Lease> {
        self.0.handover(req, from).await
    }
    async fn renew(
        &self,
        name: &LeaseName,
        incarnation: &Incarnation,
        epoch: Epoch,
        ttl: Duration,
    ) -> ferry_store::Result<Lease> {
        self.0.renew(name, incarnation, epoch, ttl).await
    }
    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> ferry_store::Result<()> {
        self.0.release(name, incarnation, epoch).await
    }
    async fn get(&self, name: &LeaseName) -> ferry_store::Result<Option<Lease>> {
        self.0.get(name).await
    }
    async fn list(&self) -> ferry_store::Result<Vec<Lease>> {
        self.0.list().await
    }
    async fn expired(&self) -> ferry_store::Result<Vec<Lease>> {
        self.0.expired().await
    }
    fn describe(&self) -> String {
        format!("{} (default renew_many)", self.0.describe())
    }
}

// ---- SQLite only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_handles_race_for_one_lease() {
    let dir = tempdir();
    let path = dir.path().join("race.db");
    let handles: Vec<Arc<SqliteStore>> =
        vec![Arc::new(open_and_init(&path).await), Arc::new(open(&path)), Arc::new(open(&path))];
    let name = server("ms1");
    for round in 1..=10u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(12));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let store = Arc::clone(&handles[i % handles.len()]);
            let barrier = Arc::clone(&barrier);
            let req = request(&name, &format!("machine-{i}"), &format!("r{round}-{i}"));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.acquire(&req).await
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.expect("racing task") {
                Ok(lease) => winners.push(lease),
                Err(StoreError::Held { epoch, .. }) => assert_eq!(epoch, Epoch(round)),
                Err(e) => panic!("round {round}: {}", chain(&e)),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(winners[0].epoch, Epoch(round));
        let inc = winners[0].incarnation.clone().expect("incarnation");
        handles[0].release(&name, &inc, Epoch(round)).await.expect("release");
    }
}

#[tokio::test]
async fn missing_table_is_a_schema_error_naming_init() {
    let dir = tempdir();
    let path = dir.path().join("nothing-yet.db");
    let store = open(&path);
    let err = store.get(&server("ms1")).await.expect_err("no table yet");
    assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
    let text = err.to_string();
    let want = format!("run `ferry leasing init --data-source sqlite://{}`", path.display());
    assert!(text.contains(&want), "{text}");
    assert!(!err.is_transient());

    // The same handle works once the table exists.
    store.init().await.expect("init");
    assert!(store.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_dropped_table_is_a_schema_error() {
    let dir = tempdir();
    let path = dir.path().join("dropped.db");
    let store = open_and_init(&path).await;
    store.list().await.expect("list");
    raw(&path).execute_batch("DROP TABLE ferry_leases").expect("drop");
    let err = store.acquire(&request(&server("ms1"), "m", "i")).await.expect_err("no table");
    assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
    assert!(err.to_string().contains("ferry leasing init"), "{err}");
    store.init().await.expect("init re-creates the table");
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
}

#[tokio::test]
async fn init_is_idempotent() {
    let dir = tempdir();
    let path = dir.path().join("init.db");
    let store = open_and_init(&path).await;
    let lease = store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
    store.init().await.expect("second init");
    let again = open_and_init(&path).await;
    again.init().await.expect("init from another handle");
    let got = again.get(&server("ms1")).await.expect("get").expect("row kept");
    assert_eq!((got.epoch, got.incarnation), (lease.epoch, lease.incarnation));
    let versions: i64 = raw(&path).query_row("SELECT count(*) FROM ferry_schema", [], |r| r.get(0)).expect("count");
    assert_eq!(versions, 1, "init added a second version row");
}

#[tokio::test]
async fn reset_empties_the_table() {
    let dir = tempdir();
    let path = dir.path().join("reset.db");
    let store = open_and_init(&path).await;
    let name = server("ms1");
    store.acquire(&request(&name, "m", "a")).await.expect("acquire");
    store.release(&name, &Incarnation("a".into()), Epoch(1)).await.expect("release");
    store.acquire(&request(&name, "m", "b")).await.expect("acquire");
    store.reset().await.expect("reset");
    assert!(store.list().await.expect("list").is_empty());
    let lease = store.acquire(&request(&name, "m", "c")).await.expect("acquire");
    assert_eq!(lease.epoch, Epoch(1), "epochs restart after reset");
}

#[tokio::test]
async fn another_schema_version_is_reported() {
    let dir = tempdir();
    let path = dir.path().join("v2.db");
    open_and_init(&path).await;
    raw(&path).execute_batch("UPDATE ferry_schema SET version = 2").expect("update");
    let store = open(&path);
    let err = store.list().await.expect_err("version 2");
    assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("schema version 2") && text.contains("version 1"), "{text}");
    let err = store.init().await.expect_err("init must not touch another version");
    assert!(err.to_string().contains("schema version 2"), "{err}");
    store.reset().await.expect("reset replaces any version");
    store.list().await.expect("list after reset");
}

#[tokio::test]
async fn bad_paths_give_clear_errors() {
    let dir = tempdir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");

    let err = SqliteStore::open(&format!("sqlite://{}/sub/leases.db", file.display()), CALL_TIMEOUT)
        .expect_err("parent is a file");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(chain(&err).contains("cannot create directory"), "{}", chain(&err));

    let err = SqliteStore::open(&dir.path().display().to_string(), CALL_TIMEOUT).expect_err("path is a directory");
    assert!(chain(&err).contains("cannot open"), "{}", chain(&err));

    let err = SqliteStore::open(&file.display().to_string(), CALL_TIMEOUT).expect_err("not an SQLite file");
    assert!(chain(&err).contains("cannot open"), "{}", chain(&err));

    let err = SqliteStore::open("postgres://u:pw@db/x", CALL_TIMEOUT).expect_err("postgres");
    assert!(chain(&err).contains("not an SQLite data source"), "{}", chain(&err));
    assert!(!chain(&err).contains("pw"), "{}", chain(&err));

    let err = SqliteStore::open("sqlite://", CALL_TIMEOUT).expect_err("empty path");
    assert!(chain(&err).contains("names no file"), "{}", chain(&err));
}

#[tokio::test]
async fn open_dispatches_on_the_scheme() {
    let dir = tempdir();
    let path = dir.path().join("deep/er/leases.db");
    let bare = path.display().to_string();
    let store = ferry_store::open_and_init(&bare, CALL_TIMEOUT).await.expect("bare path");
    assert_eq!(store.describe(), format!("sqlite://{bare}"));
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");

    let url = format!("sqlite://{bare}");
    let store = ferry_store::open(&url, CALL_TIMEOUT).await.expect("url");
    assert_eq!(store.get(&server("ms1")).await.expect("get").map(|l| l.epoch), Some(Epoch(1)));

    ferry_store::init(&url).await.expect("init");
    ferry_store::reset(&url).await.expect("reset");
    assert!(store.list().await.expect("list").is_empty());

    // Nothing listens on port 1: the PostgreSQL backend is chosen and says so.
    let err = ferry_store::open("postgres://ferry:secret@127.0.0.1:1/ferry", CALL_TIMEOUT)
        .await
        .err()
        .expect("no server on port 1");
    assert!(chain(&err).contains("cannot connect to the PostgreSQL server at 127.0.0.1:1"), "{}", chain(&err));
    assert!(!chain(&err).contains("secret"), "{}", chain(&err));
    let err = ferry_store::init("mysql://x").await.expect_err("unknown scheme");
    assert!(chain(&err).contains("unknown data source scheme `mysql://`"), "{}", chain(&err));
}

#[tokio::test]
async fn lost_details_say_why() {
    let dir = tempdir();
    let store = open_and_init(&dir.path().join("lost.db")).await;
    let name = server("ms1");
    let short = AcquireRequest { ttl: Duration::from_millis(100), ..request(&name, "m", "a") };
    store.acquire(&short).await.expect("acquire");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a = Incarnation("a".into());
    let detail = lost_detail(store.renew(&name, &a, Epoch(1), CALL_TIMEOUT).await);
    assert!(detail.contains("expired") && detail.contains("ms ago"), "{detail}");
    store.acquire(&request(&name, "machine-b", "b")).await.expect("take over");
    let detail = lost_detail(store.renew(&name, &a, Epoch(1), CALL_TIMEOUT).await);
    assert!(detail.contains("now held by ms1 on machine-b, incarnation b, epoch 2"), "{detail}");
    let b = Incarnation("b".into());
    let detail = lost_detail(store.renew(&name, &b, Epoch(1), CALL_TIMEOUT).await);
    assert!(detail.contains("epoch 2, not 1"), "{detail}");
    store.release(&name, &b, Epoch(2)).await.expect("release");
    let detail = lost_detail(store.renew(&name, &b, Epoch(2), CALL_TIMEOUT).await);
    assert!(detail.contains("released"), "{detail}");
}

#[tokio::test]
async fn a_locked_file_times_out_within_the_call_timeout() {
    let dir = tempdir();
    let path = dir.path().join("locked.db");
    let timeout = Duration::from_millis(300);
    let store = SqliteStore::open_and_init(&path.display().to_string(), timeout).await.expect("open");
    let blocker = raw(&path);
    blocker.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");

    let start = tokio::time::Instant::now();
    let err = store.acquire(&request(&server("ms1"), "m", "i")).await.expect_err("locked");
    let took = start.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert!(took < Duration::from_secs(3), "a locked call took {took:?}");
    // Reads are not blocked by a writer in WAL mode.
    store.list().await.expect("read while locked");

    blocker.execute_batch("ROLLBACK").expect("unlock");
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire after unlock");
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() {
    let dir = tempdir();
    let path = dir.path().join("corrupt.db");
    let store = open_and_init(&path).await;
    raw(&path)
        .execute_batch(
            "INSERT INTO ferry_leases VALUES ('server/ms1', '', 'm', 'i', 1, 'held', 0, 0);
             INSERT INTO ferry_leases VALUES ('nonsense', 'ms2', 'm', 'i', 1, 'held', 0, 0);",
        )
        .expect("insert");
    for err in [
        store.list().await.expect_err("list"),
        store.expired().await.map(|_| ()).expect_err("expired"),
        store.get(&server("ms1")).await.map(|_| ()).expect_err("get"),
    ] {
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(chain(&err).contains("is invalid"), "{}", chain(&err));
    }
    // The schema itself refuses impossible epochs and states.
    let refused =
        raw(&path).execute_batch("INSERT INTO ferry_leases VALUES ('server/ms3', 'ms3', 'm', 'i', 0, 'held', 0, 0)");
    assert!(refused.is_err(), "epoch 0 accepted");
}

#[tokio::test]
async fn the_expiry_scan_uses_the_index() {
    let dir = tempdir();
    let path = dir.path().join("plan.db");
    open_and_init(&path).await;
    let db = raw(&path);
    let mut stmt = db.prepare(&format!("EXPLAIN QUERY PLAN {EXPIRED_SQL}")).expect("explain");
    let plan: Vec<String> =
        stmt.query_map([0i64], |r| r.get::<_, String>(3)).expect("plan").collect::<Result<_, _>>().expect("rows");
    let plan = plan.join("\n");
    assert!(plan.contains("USING INDEX ferry_leases_held_expiry"), "{plan}");
    assert!(!plan.contains("SCAN ferry_leases\n") && !plan.ends_with("SCAN ferry_leases"), "{plan}");
}

#[tokio::test]
async fn files_are_durable_wal() {
    let dir = tempdir();
    let path = dir.path().join("wal.db");
    open_and_init(&path).await;
    let mode: String = raw(&path).query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
    assert_eq!(mode, "wal");
}

/// Several OS processes (this test binary re-run as `multiprocess_child`) race for one
/// lease on one file; every epoch must be won exactly once.
#[test]
fn several_processes_share_one_file() {
    const CHILDREN: usize = 4;
    let dir = tempdir();
    let path = dir.path().join("processes.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(open_and_init(&path));
    let go = dir.path().join("go");
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            std::process::Command::new(&exe)
                .args([
                    test_name(module_path!(), "multiprocess_child").as_str(),
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DB, &path)
                .env(CHILD_ID, i.to_string())
                .env(CHILD_GO, &go)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    // Let them start together so they really race.
    std::fs::write(&go, b"go").expect("start the children");
    let mut epochs = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("child output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        epochs.extend(
            // libtest may have printed "test multiprocess_child ... " on the same line.
            stdout.lines().filter_map(|l| l.split_once(WON).map(|(_, e)| e)).map(|e| e.parse::<u64>().expect("epoch")),
        );
    }
    epochs.sort_unstable();
    let want: Vec<u64> = (1..=(CHILDREN * CHILD_WINS) as u64).collect();
    assert_eq!(epochs, want, "epochs won across processes");
}

const CHILD_DB: &str = "FERRY_STORE_TEST_CHILD_DB";

const CHILD_ID: &str = "FERRY_STORE_TEST_CHILD_ID";

const CHILD_GO: &str = "FERRY_STORE_TEST_CHILD_GO";

const CHILD_WINS: usize = 10;

const WON: &str = "won epoch ";

/// The child side of `several_processes_share_one_file`; does nothing in a normal run.
#[test]
fn multiprocess_child() {
    let (Ok(db), Ok(id), Ok(go)) = (std::env::var(CHILD_DB), std::env::var(CHILD_ID), std::env::var(CHILD_GO)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let store = open(Path::new(&db));
        while !Path::new(&go).exists() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let name = server("shared");
        let mut wins = 0;
        let mut attempt = 0;
        while wins < CHILD_WINS {
            attempt += 1;
            let req = request(&name, &format!("machine-{id}"), &format!("p{id}-{attempt}"));
            match store.acquire(&req).await {
                Ok(lease) => {
                    println!("{WON}{}", lease.epoch);
                    wins += 1;
                    store.release(&name, &req.incarnation, lease.epoch).await.expect("release");
                    // Step aside, so the next epoch is contended by every process.
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                Err(StoreError::Held { .. }) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => panic!("child {id}: {}", chain(&e)),
            }
        }
    });
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(&path.display().to_string(), CALL_TIMEOUT).expect("open")
}

async fn open_and_init(path: &Path) -> SqliteStore {
    SqliteStore::open_and_init(&format!("sqlite://{}", path.display()), CALL_TIMEOUT).await.expect("open and init")
}

/// A plain connection, for poking at the file behind the store's back.
fn raw(path: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).expect("raw open");
    db.busy_timeout(CALL_TIMEOUT).expect("busy timeout");
    db
}

/// Issue 11: four Node Managers renewing their servers in batches on one file while a fifth
/// handle starts and stops servers as fast as it can. A busy file makes a caller wait, up
/// to its call timeout: no "database is locked" (or any other error) reaches a holder
/// while its timeout has time left, and a timeout only comes once the timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_among_node_managers_never_answers_locked_early() {
    use ferry_core::{MachineName, ServerName};
    use ferry_store::Renewal;

    const CALL: Duration = Duration::from_millis(400);
    let dir = tempdir();
    let path = format!("sqlite://{}", dir.path().join("busy.db").display());
    SqliteStore::open_and_init(&path, CALL).await.expect("init");
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for nm in 0..5 {
        let store = SqliteStore::open_bounded(&path, CALL).await.expect("open");
        tasks.push(tokio::spawn(async move {
            let mut took_all = Vec::new();
            let mut check = |took: Duration, r: Result<(), StoreError>| {
                took_all.push(took);
                match r {
                    Ok(()) => {}
                    // (The store's clock counts whole milliseconds.)
                    Err(StoreError::Timeout { .. }) => {
                        assert!(took + Duration::from_millis(2) >= CALL, "a timeout after only {took:?}")
                    }
                    Err(e) => panic!("handle {nm}: {e} after {took:?} of {CALL:?}"),
                }
            };
            let lease = |i: usize| LeaseName::Server(ServerName::new(format!("n{nm}s{i:03}")).expect("name"));
            let req = |i: usize| AcquireRequest {
                name: lease(i),
                owner: ServerName::new("ms1").expect("name"),
                machine: MachineName::new(format!("node-{nm}")).expect("name"),
                incarnation: Incarnation(format!("i{nm}-{i}")),
                ttl: Duration::from_secs(2),
            };
            if nm == 4 {
                // The starter: acquire, then release, round and round.
                let mut i = 0;
                while tokio::time::Instant::now() < until {
                    let t = tokio::time::Instant::now();
                    let r = store.acquire(&req(i % 50)).await;
                    let epoch = r.as_ref().map(|l| l.epoch).ok();
                    check(t.elapsed(), r.map(|_| ()));
                    if let Some(epoch) = epoch {
                        let t = tokio::time::Instant::now();
                        let r = store.release(&lease(i % 50), &req(i % 50).incarnation, epoch).await;
                        check(t.elapsed(), r);
                    }
                    i += 1;
                }
                return took_all;
            }
            // A Node Manager with 25 servers: acquire them, then renew them all every 50 ms.
            let mut held = Vec::new();
            for i in 0..25 {
                let t = tokio::time::Instant::now();
                let r = store.acquire(&req(i)).await;
                if let Ok(l) = &r {
                    held.push(Renewal {
                        name: lease(i),
                        incarnation: req(i).incarnation,
                        epoch: l.epoch,
                        ttl: req(i).ttl,
                    });
                }
                check(t.elapsed(), r.map(|_| ()));
            }
            while tokio::time::Instant::now() < until {
                let t = tokio::time::Instant::now();
                let r = store.renew_many(&held).await;
                if let Ok(each) = &r {
                    for one in each {
                        assert!(one.is_ok(), "handle {nm}: a renewal of a held lease failed: {one:?}");
                    }
                }
                check(t.elapsed(), r.map(|_| ()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            took_all
        }));
    }
    for (nm, t) in tasks.into_iter().enumerate() {
        let mut took = t.await.expect("no handle panicked");
        assert!(took.len() > 1, "handle {nm} made calls");
        took.sort();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
        println!("handle {nm}: {} calls, p50 {:?}, p99 {:?}, max {:?}", took.len(), at(0.5), at(0.99), at(1.0));
    }
}
