//! The PostgreSQL lease table against the conformance suite, through one handle and
//! through two handles (as two processes would), plus what only PostgreSQL has: races over
//! many connections and OS processes, a property test of random interleavings against a
//! model of the rules, the errors an operator meets (unreachable server, wrong password,
//! missing database or table, another schema version), schema set-up, index use of the
//! expiry scan, bounded calls when the database is locked, frozen or restarted, and TLS
//! (the conformance suite over a checked TLS connection, and the refusals an operator meets:
//! no TLS on the server, a certificate of another CA or for another host name).
//!
//! Every test starts its own private server (`ferry_testkit::PgServer`). Without the
//! PostgreSQL server binaries the tests print why and pass, except under `CI=true`, where
//! they fail.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::lease::{Lease, LeaseState};
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, ServerName};
use ferry_store::postgres::{PostgresOptions, PostgresStore, EXPIRED_SQL, NEXT_EXPIRY_SQL};
use ferry_store::{AcquireRequest, LeaseStore, Renewal, Scan, ScanCursor, StoreError};
use ferry_testkit::{conformance, PgServer, TestCa};
use proptest::prelude::*;
use tokio::time::Instant;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A private server for this test, or return (skipping) when PostgreSQL is not installed.
macro_rules! pg_server {
    () => {
        match PgServer::start_or_skip() {
            Some(server) => server,
            None => return,
        }
    };
}

/// [`pg_server!`] with `ssl=on` and a certificate from a throw-away CA.
macro_rules! tls_pg_server {
    () => {
        match PgServer::start_with_tls_or_skip() {
            Some(server) => server,
            None => return,
        }
    };
}

// ---- the conformance suite ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_one_handle() {
    let pg = pg_server!();
    let bytewise: bool = query_one(&pg, "SELECT 'a-b' < 'a_b'").await;
    eprintln!(
        "the test database's default collation {} bytewise",
        if bytewise { "is" } else { "is not (ICU): list() order is really checked" }
    );
    let mut n = 0;
    let pg = &pg;
    conformance::run_all(|| {
        n += 1;
        async move {
            let url = fresh_schema(pg, &format!("one_{n}")).await;
            PostgresStore::open_and_init(&url, CALL_TIMEOUT).await.expect("open and init")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_two_handles() {
    let pg = pg_server!();
    let mut n = 0;
    let pg = &pg;
    conformance::run_all(|| {
        n += 1;
        async move {
            let url = fresh_schema(pg, &format!("two_{n}")).await;
            let options = PostgresOptions { pool_size: 2, ..PostgresOptions::new(CALL_TIMEOUT) };
            let a = PostgresStore::open_with(&url, options.clone()).await.expect("open a");
            a.init().await.expect("init");
            let b = PostgresStore::open_with(&url, options).await.expect("open b");
            TwoHandles { handles: [a, b], next: AtomicUsize::new(0) }
        }
    })
    .await;
}

/// Sends each call to the next of two handles on one database, so every conformance check
/// also runs across pools, the way two processes share the table.
struct TwoHandles {
    handles: [PostgresStore; 2],
    next: AtomicUsize,
}

impl TwoHandles {
    fn pick(&self) -> &PostgresStore {
        &self.handles[self.next.fetch_add(1, Ordering::Relaxed) % 2]
    }
}

#[async_trait::async_trait]
impl LeaseStore for TwoHandles {
    async fn acquire(&self, req: &AcquireRequest) -> ferry_store::Result<Lease> {
        self.pick().acquire(req).await
    }
    async fn handover(&self, req: &AcquireRequest, from: &Incarnation) -> ferry_store::Result<Lease> {
        self.pick().handover(req, from).await
    }
    async fn renew(
        &self,
        name: &LeaseName,
        incarnation: &Incarnation,
        epoch: Epoch,
        ttl: Duration,
    ) -> ferry_store::Result<Lease> {
        self.pick().renew(name, incarnation, epoch, ttl).await
    }
    async fn renew_many(&self, renewals: &[Renewal]) -> ferry_store::Result<Vec<ferry_store::Result<Lease>>> {
        self.pick().renew_many(renewals).await
    }
    async fn release(&self, name: &LeaseName, incarnation: &Incarnation, epoch: Epoch) -> ferry_store::Result<()> {
        self.pick().release(name, incarnation, epoch).await
    }
    async fn get(&self, name: &LeaseName) -> ferry_store::Result<Option<Lease>> {
        self.pick().get(name).await
    }
    async fn list(&self) -> ferry_store::Result<Vec<Lease>> {
        self.pick().list().await
    }
    async fn expired(&self) -> ferry_store::Result<Vec<Lease>> {
        self.pick().expired().await
    }
    async fn scan(&self, since: ScanCursor, tracked: &[LeaseName]) -> ferry_store::Result<Scan> {
        self.pick().scan(since, tracked).await
    }
    async fn next_expiry_ms(&self) -> ferry_store::Result<Option<i64>> {
        self.pick().next_expiry_ms().await
    }
    fn describe(&self) -> String {
        format!("{} (two handles)", self.handles[0].describe())
    }
}

// ---- races ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_race_for_one_lease() {
    let pg = pg_server!();
    let url = pg.url();
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(Arc::new(open(&url).await));
    }
    handles[0].init().await.expect("init");
    let name = server("ms1");
    const RACERS: usize = 16;
    for round in 1..=10u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for i in 0..RACERS {
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
        handles[1].release(&name, &inc, Epoch(round)).await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_inserts_of_a_new_row_have_one_winner() {
    // Every round races on a row that does not exist yet: the ON CONFLICT path.
    let pg = pg_server!();
    let url = pg.url();
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(Arc::new(open(&url).await));
    }
    handles[0].init().await.expect("init");
    for round in 0..10 {
        let name = server(&format!("fresh-{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = Arc::clone(&handles[i % handles.len()]);
            let barrier = Arc::clone(&barrier);
            let req = request(&name, &format!("machine-{i}"), &format!("r{round}-{i}"));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.acquire(&req).await
            }));
        }
        let mut winners = 0;
        for task in tasks {
            match task.await.expect("racing task") {
                Ok(lease) => {
                    assert_eq!(lease.epoch, Epoch(1));
                    winners += 1;
                }
                Err(StoreError::Held { epoch, .. }) => assert_eq!(epoch, Epoch(1)),
                Err(e) => panic!("round {round}: {}", chain(&e)),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

/// Several OS processes (this test binary re-run as `pg_multiprocess_child`) race for one
/// lease; every epoch must be won exactly once.
#[test]
fn several_processes_race_for_one_lease() {
    const CHILDREN: usize = 4;
    let pg = pg_server!();
    let rt = runtime();
    rt.block_on(async {
        open(&pg.url()).await.init().await.expect("init");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["pg_multiprocess_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_URL, pg.url())
                .env(CHILD_ID, i.to_string())
                .env(CHILD_GO, &go)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    std::fs::write(&go, b"go").expect("start the children");
    let mut epochs = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("child output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        epochs.extend(
            stdout
                .lines()
                .filter_map(|l| l.split_once(WON).map(|(_, e)| e))
                .map(|e| e.trim().parse::<u64>().expect("epoch")),
        );
    }
    epochs.sort_unstable();
    let want: Vec<u64> = (1..=(CHILDREN * CHILD_WINS) as u64).collect();
    assert_eq!(epochs, want, "epochs won across processes");
}

const CHILD_URL: &str = "FERRY_STORE_PG_CHILD_URL";
const CHILD_ID: &str = "FERRY_STORE_PG_CHILD_ID";
const CHILD_GO: &str = "FERRY_STORE_PG_CHILD_GO";
const CHILD_WINS: usize = 8;
const WON: &str = "won epoch ";

/// The child side of `several_processes_race_for_one_lease`; does nothing in a normal run.
#[test]
fn pg_multiprocess_child() {
    let (Ok(url), Ok(id), Ok(go)) = (std::env::var(CHILD_URL), std::env::var(CHILD_ID), std::env::var(CHILD_GO)) else {
        return;
    };
    runtime().block_on(async {
        let store = open(&url).await;
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

// ---- fencing ----

#[tokio::test]
async fn stale_renewals_and_releases_fail() {
    let pg = pg_server!();
    let store = open_and_init(&pg.url()).await;
    let name = server("ms1");
    let a = Incarnation("a".into());
    let b = Incarnation("b".into());
    let lease = store.acquire(&request(&name, "machine-a", "a")).await.expect("acquire");
    assert_eq!(lease.epoch, Epoch(1));
    // The Node Manager saw `a` exit; `b` takes over at once.
    let taken = store.handover(&request(&name, "machine-a", "b"), &a).await.expect("handover");
    assert_eq!(taken.epoch, Epoch(2));
    for (what, inc, epoch) in [
        ("old incarnation, old epoch", &a, 1),
        ("old incarnation, current epoch", &a, 2),
        ("current incarnation, old epoch", &b, 1),
        ("current incarnation, future epoch", &b, 3),
    ] {
        let err = store.renew(&name, inc, Epoch(epoch), CALL_TIMEOUT).await.expect_err(what);
        assert!(matches!(err, StoreError::Lost { .. }), "{what}: {err:?}");
        let err = store.release(&name, inc, Epoch(epoch)).await.expect_err(what);
        assert!(matches!(err, StoreError::Lost { .. }), "{what}: {err:?}");
    }
    let renewed = store.renew(&name, &b, Epoch(2), CALL_TIMEOUT).await.expect("renew by the holder");
    assert_eq!(renewed.epoch, Epoch(2));
    let detail = lost_detail(store.renew(&name, &a, Epoch(1), CALL_TIMEOUT).await);
    assert!(detail.contains("now held by ms1 on machine-a, incarnation b, epoch 2"), "{detail}");
}

// ---- random interleavings against a model ----

/// Random sequences of acquire, handover, renew (sometimes with a stale epoch), release and
/// sleeps by three servers' instances on one lease. After every step: the answer is one the
/// rules allow (a model of the row, which knows a short lease may or may not have run out
/// yet), the row read back matches the model, epochs never go down, and at most one
/// instance believes it holds the lease (its belief ends at `t0 + ttl - margin`, `t0` read
/// before sending the request, as rule 2 has it).
#[test]
fn random_interleavings_keep_one_holder_and_growing_epochs() {
    let Some(pg) = PgServer::start_or_skip() else {
        return;
    };
    let rt = runtime();
    let store = rt.block_on(async { open_and_init(&pg.url()).await });
    let case = AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 40,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let ops = proptest::collection::vec(op_strategy(), 1..30);
    let result = runner.run(&ops, |ops| {
        let name = server(&format!("prop-{}", case.fetch_add(1, Ordering::Relaxed)));
        rt.block_on(run_interleaving(&store, &name, &ops)).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

const ACTORS: usize = 3;
const SHORT: Duration = Duration::from_millis(40);
const LONG: Duration = Duration::from_secs(60);
/// Longer than `SHORT` with room to spare: after it every short lease has expired.
const SLEEP: Duration = Duration::from_millis(100);
/// Rule 2's margin: the store rounds its clock to milliseconds.
const MARGIN: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        actor: usize,
        long: bool,
    },
    /// `from` died (its Node Manager saw it exit); `actor` takes over from it.
    Handover {
        actor: usize,
        from: usize,
        long: bool,
    },
    Renew {
        actor: usize,
        stale: bool,
        long: bool,
    },
    Release {
        actor: usize,
    },
    Sleep,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let actor = 0..ACTORS;
    prop_oneof![
        4 => (actor.clone(), any::<bool>()).prop_map(|(actor, long)| Op::Acquire { actor, long }),
        2 => (actor.clone(), 0..ACTORS, any::<bool>())
            .prop_map(|(actor, from, long)| Op::Handover { actor, from, long }),
        4 => (actor.clone(), prop::bool::weighted(0.2), any::<bool>())
            .prop_map(|(actor, stale, long)| Op::Renew { actor, stale, long }),
        2 => actor.prop_map(|actor| Op::Release { actor }),
        1 => Just(Op::Sleep),
    ]
}

/// One server instance as it sees itself.
#[derive(Debug, Default)]
struct Actor {
    generation: u32,
    /// The epoch of its last successful take, for renew and release.
    epoch: Option<u64>,
    /// Until when it believes it holds the lease (its local deadline).
    believes_until: Option<Instant>,
}

/// The model of the row.
#[derive(Debug, Clone)]
struct ModelRow {
    incarnation: String,
    epoch: u64,
    held: bool,
    expiry: Expiry,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expiry {
    /// A long TTL: live for the whole case.
    Live,
    /// A short TTL, not yet slept past: live or expired, the answers tell.
    Unsure,
    /// Slept past a short TTL, or an answer showed it expired.
    Expired,
}

fn incarnation(actor: usize, generation: u32) -> String {
    format!("a{actor}-g{generation}")
}

async fn run_interleaving(store: &PostgresStore, name: &LeaseName, ops: &[Op]) -> Result<(), String> {
    let mut actors: Vec<Actor> = (0..ACTORS).map(|_| Actor::default()).collect();
    let mut model: Option<ModelRow> = None;
    let mut highest_epoch = 0u64;
    for (step, op) in ops.iter().enumerate() {
        let at = |what: String| format!("step {step} ({op:?}): {what}");
        match *op {
            Op::Sleep => {
                tokio::time::sleep(SLEEP).await;
                if let Some(row) = model.as_mut() {
                    if row.expiry == Expiry::Unsure {
                        row.expiry = Expiry::Expired;
                    }
                }
            }
            Op::Acquire { actor, long } | Op::Handover { actor, long, .. } => {
                let from = match *op {
                    Op::Handover { from, .. } => {
                        // `from` is dead: its belief ends, its next start is a new incarnation.
                        let old = incarnation(from, actors[from].generation);
                        actors[from].generation += 1;
                        actors[from].believes_until = None;
                        actors[from].epoch = None;
                        Some(old)
                    }
                    _ => None,
                };
                let inc = incarnation(actor, actors[actor].generation);
                let ttl = if long { LONG } else { SHORT };
                let req = AcquireRequest {
                    name: name.clone(),
                    owner: ServerName::new("ms1").map_err(|e| e.to_string())?,
                    machine: MachineName::new(format!("machine-{actor}")).map_err(|e| e.to_string())?,
                    incarnation: Incarnation(inc.clone()),
                    ttl,
                };
                let t0 = Instant::now();
                let answer = match &from {
                    Some(from) => store.handover(&req, &Incarnation(from.clone())).await,
                    None => store.acquire(&req).await,
                };
                // What the rules allow: (epoch on success, or None for a refusal).
                let mut allowed: Vec<Option<u64>> = Vec::new();
                match &model {
                    None => allowed.push(Some(1)),
                    Some(row) => {
                        let live = match row.expiry {
                            _ if !row.held => vec![false],
                            Expiry::Live => vec![true],
                            Expiry::Expired => vec![false],
                            Expiry::Unsure => vec![true, false],
                        };
                        for live in live {
                            allowed.push(if live && row.incarnation == inc {
                                Some(row.epoch)
                            } else if !live || from.as_deref() == Some(row.incarnation.as_str()) {
                                Some(row.epoch + 1)
                            } else {
                                None
                            });
                        }
                    }
                }
                match answer {
                    Ok(lease) => {
                        let epoch = lease.epoch.0;
                        if !allowed.contains(&Some(epoch)) {
                            return Err(at(format!("took epoch {epoch}; allowed {allowed:?}, model {model:?}")));
                        }
                        model = Some(ModelRow {
                            incarnation: inc,
                            epoch,
                            held: true,
                            expiry: if long { Expiry::Live } else { Expiry::Unsure },
                        });
                        actors[actor].epoch = Some(epoch);
                        actors[actor].believes_until = Some(t0 + ttl - MARGIN);
                    }
                    Err(StoreError::Held { epoch, .. }) if from.is_none() => {
                        if !allowed.contains(&None) {
                            return Err(at(format!("refused (held at {epoch}); allowed {allowed:?}, model {model:?}")));
                        }
                    }
                    Err(StoreError::Lost { .. }) if from.is_some() => {
                        if !allowed.contains(&None) {
                            return Err(at(format!("refused (lost); allowed {allowed:?}, model {model:?}")));
                        }
                    }
                    Err(e) => return Err(at(format!("unexpected answer: {}", chain(&e)))),
                }
            }
            Op::Renew { actor, stale, long } => {
                let inc = incarnation(actor, actors[actor].generation);
                let believed = actors[actor].epoch.unwrap_or(1);
                let epoch = if stale { believed + 1 } else { believed };
                let ttl = if long { LONG } else { SHORT };
                let t0 = Instant::now();
                let answer = store.renew(name, &Incarnation(inc.clone()), Epoch(epoch), ttl).await;
                let theirs = model.as_ref().filter(|r| r.incarnation == inc && r.epoch == epoch && r.held);
                let (may_succeed, may_fail) = match theirs.map(|r| r.expiry) {
                    None | Some(Expiry::Expired) => (false, true),
                    Some(Expiry::Live) => (true, false),
                    Some(Expiry::Unsure) => (true, true),
                };
                match answer {
                    Ok(lease) if may_succeed && lease.epoch.0 == epoch => {
                        if let Some(row) = model.as_mut() {
                            row.expiry = if long { Expiry::Live } else { Expiry::Unsure };
                        }
                        actors[actor].believes_until = Some(t0 + ttl - MARGIN);
                    }
                    Err(StoreError::Lost { .. }) if may_fail => {
                        if let (Some(row), true) = (model.as_mut(), may_succeed) {
                            // Theirs, but refused: it had expired.
                            row.expiry = Expiry::Expired;
                        }
                        actors[actor].believes_until = None;
                    }
                    other => {
                        return Err(at(format!(
                            "renew answered {other:?}; model {model:?}, success allowed \
                             {may_succeed}, refusal allowed {may_fail}"
                        )))
                    }
                }
            }
            Op::Release { actor } => {
                let inc = incarnation(actor, actors[actor].generation);
                let epoch = actors[actor].epoch.unwrap_or(1);
                let answer = store.release(name, &Incarnation(inc.clone()), Epoch(epoch)).await;
                let theirs = model.as_ref().is_some_and(|r| r.incarnation == inc && r.epoch == epoch);
                match answer {
                    Ok(()) if theirs => {
                        if let Some(row) = model.as_mut() {
                            row.held = false;
                        }
                        actors[actor].believes_until = None;
                    }
                    Err(StoreError::Lost { .. }) if !theirs => {}
                    other => {
                        return Err(at(format!(
                            "release answered {other:?}; model {model:?}, allowed: {}",
                            if theirs { "success" } else { "Lost" }
                        )))
                    }
                }
            }
        }

        // The row as stored agrees with the model; epochs never go down.
        let got = store.get(name).await.map_err(|e| at(format!("get: {}", chain(&e))))?;
        match (&got, &model) {
            (None, None) => {}
            (Some(lease), Some(row)) => {
                let state = if row.held { LeaseState::Held } else { LeaseState::Released };
                let inc = lease.incarnation.as_ref().map(|i| i.0.as_str());
                if (lease.epoch.0, inc, lease.state) != (row.epoch, Some(&*row.incarnation), state) {
                    return Err(at(format!("stored {lease:?}, model {row:?}")));
                }
                if lease.epoch.0 < highest_epoch {
                    return Err(at(format!("epoch went down from {highest_epoch} to {}", lease.epoch)));
                }
                highest_epoch = lease.epoch.0;
                if row.held && row.expiry == Expiry::Live && !lease.is_live() {
                    return Err(at(format!("a 60 s lease is not live: {lease:?}")));
                }
            }
            _ => return Err(at(format!("stored {got:?}, model {model:?}"))),
        }

        // At most one instance believes it holds the lease, now.
        let now = Instant::now();
        let believers: Vec<usize> =
            (0..ACTORS).filter(|&i| actors[i].believes_until.is_some_and(|until| until > now)).collect();
        if believers.len() > 1 {
            return Err(at(format!("instances {believers:?} all believe they hold the lease: {actors:?}")));
        }
    }
    Ok(())
}

// ---- errors an operator meets ----

#[tokio::test]
async fn a_refused_connection_is_unavailable_and_names_the_server() {
    let mut pg = pg_server!();
    let url = pg.url_for("ferry", Some("s3cret-pw"), "ferry");
    pg.stop().expect("stop");
    let start = Instant::now();
    let err = PostgresStore::open(&url, Duration::from_secs(5)).await.expect_err("server is down");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    let text = chain(&err);
    assert!(text.contains(&format!("cannot connect to the PostgreSQL server at 127.0.0.1:{}", pg.port())), "{text}");
    assert!(text.contains(&format!("postgres://ferry:***@127.0.0.1:{}/ferry", pg.port())), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_call_timeout() {
    // Accepts TCP connections (the kernel does) but never speaks PostgreSQL.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("postgres://ferry:s3cret-pw@127.0.0.1:{port}/ferry");
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let err = PostgresStore::open(&url, timeout).await.expect_err("nothing answers");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(err.is_transient(), "{err:?}");
    let text = chain(&err);
    assert!(text.contains("300 ms") || text.contains("timeout"), "{text}");
    assert!(text.contains(&format!("postgres://ferry:***@127.0.0.1:{port}/ferry")), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    drop(listener);
}

#[tokio::test]
async fn wrong_credentials_say_authentication_failed() {
    let pg = pg_server!();
    pg.create_user_with_password("alice", "right-pw").await.expect("create user");

    let wrong = pg.url_for("alice", Some("wrong-pw"), "ferry");
    let err = PostgresStore::open(&wrong, CALL_TIMEOUT).await.expect_err("wrong password");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let text = chain(&err);
    assert!(text.contains("authentication failed for user alice"), "{text}");
    assert!(text.contains("PGPASSWORD"), "{text}");
    assert!(text.contains(&format!("postgres://alice:***@127.0.0.1:{}/ferry", pg.port())), "{text}");
    assert!(!text.contains("wrong-pw"), "{text}");

    let none = pg.url_for("alice", None, "ferry");
    let err = PostgresStore::open(&none, CALL_TIMEOUT).await.expect_err("no password");
    let text = chain(&err);
    assert!(text.contains("asks for a password for user alice"), "{text}");

    let unknown = pg.url_for("mallory", Some("pw"), "ferry");
    let err = PostgresStore::open(&unknown, CALL_TIMEOUT).await.expect_err("no such role");
    assert!(chain(&err).contains("authentication failed for user mallory"), "{}", chain(&err));

    let right = pg.url_for("alice", Some("right-pw"), "ferry");
    let store = PostgresStore::open_and_init(&right, CALL_TIMEOUT).await.expect("the right password works");
    assert_eq!(store.describe(), format!("postgres://alice:***@127.0.0.1:{}/ferry", pg.port()));
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
}

/// The password may come from `PGPASSWORD` or a password file instead of the URL. Each
/// case runs in a child process (this binary re-run as `pg_password_child`), so the
/// environment of the other tests stays untouched.
#[test]
fn the_password_can_come_from_pgpassword_or_a_password_file() {
    let pg = pg_server!();
    runtime().block_on(pg.create_user_with_password("bob", "env-pw")).expect("create user");
    let url = pg.url_for("bob", None, "ferry");
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pgpass");
    let line = format!("# test\n127.0.0.1:{}:ferry:bob:env-pw\n", pg.port());
    std::fs::write(&good, &line).expect("write");
    let open_to_all = dir.path().join("open.pgpass");
    std::fs::write(&open_to_all, &line).expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::set_permissions(&open_to_all, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let empty = dir.path().join("none.pgpass");
    let child = |env: &[(&str, &Path)], password: Option<&str>| {
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["pg_password_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(PW_CHILD_URL, &url)
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", &empty);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        let out = cmd.output().expect("child");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = child(&[], Some("env-pw"));
    assert!(out.contains("opened"), "PGPASSWORD: {out}");
    let out = child(&[("PGPASSFILE", &good)], None);
    assert!(out.contains("opened"), "PGPASSFILE: {out}");
    let out = child(&[("PGPASSFILE", &open_to_all)], None);
    assert!(out.contains("asks for a password for user bob"), "a world-readable password file must be ignored: {out}");
    let out = child(&[], Some("wrong-pw"));
    assert!(out.contains("authentication failed for user bob") && !out.contains("wrong-pw"), "{out}");
}

const PW_CHILD_URL: &str = "FERRY_STORE_PG_PW_CHILD_URL";

/// The child side of `the_password_can_come_from_pgpassword_or_a_password_file`.
#[test]
fn pg_password_child() {
    let Ok(url) = std::env::var(PW_CHILD_URL) else {
        return;
    };
    runtime().block_on(async {
        match PostgresStore::open(&url, CALL_TIMEOUT).await {
            Ok(_) => println!("opened"),
            Err(e) => println!("refused: {}", chain(&e)),
        }
    });
}

#[tokio::test]
async fn a_missing_database_is_a_schema_error_saying_how_to_create_it() {
    let pg = pg_server!();
    let url = pg.url_for("ferry", Some("s3cret-pw"), "nosuchdb");
    let err = PostgresStore::open(&url, CALL_TIMEOUT).await.expect_err("no such database");
    assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
    let text = chain(&err);
    assert!(text.contains("database \"nosuchdb\" does not exist"), "{text}");
    assert!(text.contains("createdb --owner ferry nosuchdb"), "{text}");
    assert!(
        text.contains(&format!(
            "ferry leasing init --data-source postgres://ferry:***@127.0.0.1:{}/nosuchdb",
            pg.port()
        )),
        "{text}"
    );
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[tokio::test]
async fn a_missing_table_is_a_schema_error_naming_init() {
    let pg = pg_server!();
    let store = open(&pg.url()).await;
    let err = store.get(&server("ms1")).await.expect_err("no table yet");
    assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
    assert!(!err.is_transient());
    let want = format!("run `ferry leasing init --data-source {}`", pg.url());
    assert!(err.to_string().contains(&want), "{err}");

    // The same handle works once the table exists.
    store.init().await.expect("init");
    assert!(store.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_dropped_table_is_a_schema_error() {
    let pg = pg_server!();
    let store = open_and_init(&pg.url()).await;
    store.list().await.expect("list");
    pg.execute("DROP TABLE ferry_leases").await.expect("drop");
    let err = store.acquire(&request(&server("ms1"), "m", "i")).await.expect_err("no table");
    assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
    assert!(err.to_string().contains("ferry leasing init"), "{err}");
    store.init().await.expect("init re-creates the table");
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
}

#[tokio::test]
async fn another_schema_version_is_reported() {
    let pg = pg_server!();
    open_and_init(&pg.url()).await;
    pg.execute("UPDATE ferry_schema SET version = 2").await.expect("update");
    let store = open(&pg.url()).await;
    let err = store.list().await.expect_err("version 2");
    assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("schema version 2") && text.contains("reads version 1"), "{text}");
    assert!(text.contains(&pg.url()), "{text}");
    let err = store.init().await.expect_err("init must not touch another version");
    assert!(err.to_string().contains("schema version 2"), "{err}");
    store.reset().await.expect("reset replaces any version");
    store.list().await.expect("list after reset");
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() {
    let pg = pg_server!();
    let store = open_and_init(&pg.url()).await;
    pg.execute(
        "INSERT INTO ferry_leases VALUES ('server/ms1', '', 'm', 'i', 1, 'held', now(), now());
         INSERT INTO ferry_leases VALUES ('nonsense', 'ms2', 'm', 'i', 1, 'held', now(), now());",
    )
    .await
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
    for bad in [
        "INSERT INTO ferry_leases VALUES ('server/ms3', 'ms3', 'm', 'i', 0, 'held', now(), now())",
        "INSERT INTO ferry_leases VALUES ('server/ms4', 'ms4', 'm', 'i', 1, 'lost', now(), now())",
    ] {
        assert!(pg.execute(bad).await.is_err(), "accepted: {bad}");
    }
}

// ---- schema set-up ----

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

// ---- the expiry index ----

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

// ---- batched renewals ----

/// Rule 1 for `renew_many`: a batch that waits for a row lock decides that row by the
/// clock read after the lock is granted, and by the row as the lock holder left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_each_row_after_its_lock_is_granted() {
    let pg = pg_server!();
    let store = Arc::new(open_and_init(&pg.url()).await);
    let (a, b, c) = (server("a"), server("b"), server("c"));
    store.acquire(&request(&a, "m", "ia")).await.expect("a");
    let short = AcquireRequest { ttl: Duration::from_millis(400), ..request(&b, "m", "ib") };
    store.acquire(&short).await.expect("b");
    store.acquire(&request(&c, "m", "ic")).await.expect("c");
    let blocker = pg.client().await.expect("client");
    blocker
        .batch_execute("BEGIN; SELECT * FROM ferry_leases WHERE name IN ('server/b', 'server/c') FOR UPDATE")
        .await
        .expect("lock b and c");
    let batch: Vec<Renewal> = [(&a, "ia"), (&b, "ib"), (&c, "ic")]
        .into_iter()
        .map(|(name, inc)| Renewal {
            name: name.clone(),
            incarnation: Incarnation(inc.into()),
            epoch: Epoch(1),
            ttl: Duration::from_secs(60),
        })
        .collect();
    let task = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.renew_many(&batch).await })
    };
    // b expires while the batch waits; c is taken over by the lock holder.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!task.is_finished(), "the batch did not wait for the row locks");
    blocker
        .batch_execute(
            "UPDATE ferry_leases SET incarnation = 'taker', machine = 'm2', epoch = 2 \
             WHERE name = 'server/c'; COMMIT",
        )
        .await
        .expect("take c over and unlock");
    let outcomes = task.await.expect("task").expect("renew_many");
    let mut outcomes = outcomes.into_iter();
    let renewed = outcomes.next().expect("a").expect("a is renewed");
    assert_eq!((renewed.name, renewed.epoch), (a, Epoch(1)));
    let detail = lost_detail(outcomes.next().expect("b"));
    assert!(detail.contains("expired"), "b: {detail}");
    let detail = lost_detail(outcomes.next().expect("c"));
    assert!(detail.contains("now held by ms1 on m2, incarnation taker, epoch 2"), "c: {detail}");
    let got = store.get(&b).await.expect("get b").expect("row b");
    assert!(got.is_expired(), "the batch revived b: {got:?}");
}

// ---- rule 7: calls are bounded ----

#[tokio::test]
async fn a_locked_row_times_out_within_the_call_timeout() {
    let pg = pg_server!();
    let timeout = Duration::from_millis(300);
    let store = PostgresStore::open_and_init(&pg.url(), timeout).await.expect("open");
    let name = server("ms1");
    store.acquire(&request(&name, "m", "a")).await.expect("acquire");
    let blocker = pg.client().await.expect("client");
    blocker
        .batch_execute("BEGIN; SELECT * FROM ferry_leases WHERE name = 'server/ms1' FOR UPDATE")
        .await
        .expect("lock the row");

    let start = Instant::now();
    let err = store.renew(&name, &Incarnation("a".into()), Epoch(1), CALL_TIMEOUT).await.expect_err("locked");
    let took = start.elapsed();
    assert!(matches!(err, StoreError::Timeout { .. }), "{err:?}");
    assert!(took < Duration::from_secs(2), "a locked call took {took:?}");
    // Readers are not blocked by a row lock.
    assert_eq!(store.list().await.expect("read while locked").len(), 1);

    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    store.renew(&name, &Incarnation("a".into()), Epoch(1), CALL_TIMEOUT).await.expect("renew after unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_and_is_used_again_when_it_thaws() {
    let mut pg = pg_server!();
    let timeout = Duration::from_millis(400);
    let store = PostgresStore::open_and_init(&pg.url(), timeout).await.expect("open");
    let name = server("ms1");
    let lease = store.acquire(&request(&name, "m", "a")).await.expect("acquire");
    pg.freeze().expect("freeze");
    for _ in 0..3 {
        let start = Instant::now();
        let err = store.renew(&name, &Incarnation("a".into()), lease.epoch, CALL_TIMEOUT).await.expect_err("frozen");
        let took = start.elapsed();
        assert!(matches!(err, StoreError::Timeout { .. }), "{err:?}");
        assert!(took < Duration::from_millis(1500), "a frozen call took {took:?}");
    }
    pg.thaw().expect("thaw");
    let renewed =
        store.renew(&name, &Incarnation("a".into()), lease.epoch, CALL_TIMEOUT).await.expect("renew after thaw");
    assert_eq!(renewed.epoch, lease.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_and_kept_every_commit() {
    let mut pg = pg_server!();
    let store = PostgresStore::open_and_init(&pg.url(), Duration::from_secs(2)).await.expect("open");
    let name = server("ms1");
    for i in 0..5 {
        let lease = store.acquire(&request(&name, "m", &format!("i{i}"))).await.expect("acquire");
        store.release(&name, &Incarnation(format!("i{i}")), lease.epoch).await.expect("release");
    }
    pg.stop().expect("stop");
    let start = Instant::now();
    let err = store.list().await.expect_err("server down");
    assert!(err.is_transient(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    pg.start_again().expect("start again");
    let mut got = None;
    for _ in 0..20 {
        match store.get(&name).await {
            Ok(lease) => {
                got = lease;
                break;
            }
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("after restart: {}", chain(&e)),
        }
    }
    let got = got.expect("the row survived the crash");
    assert_eq!(got.epoch, Epoch(5), "an epoch bump was lost");
    assert_eq!(got.state, LeaseState::Released);
}

// ---- TLS ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_tls_checking_the_servers_certificate() {
    let pg = tls_pg_server!();
    let ca = ca_of(&pg);
    let mut n = 0;
    let (pg, ca) = (&pg, &ca);
    // sslmode=require with a root certificate checks the chain and the host name.
    conformance::run_all(|| {
        n += 1;
        async move {
            let url = format!("{}&sslmode=require", fresh_schema(pg, &format!("tls_{n}")).await);
            let store = PostgresStore::open_with(&url, tls_options(ca)).await.expect("open over TLS");
            store.init().await.expect("init");
            store
        }
    })
    .await;
    let url = format!("{}?sslmode=verify-full", pg.url());
    let store = PostgresStore::open_with(&url, tls_options(ca)).await.expect("open with verify-full");
    store.init().await.expect("init");
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
    let (encrypted, plain) = ferry_sessions(pg).await;
    assert!(encrypted >= 1 && plain == 0, "{encrypted} encrypted and {plain} plain ferry sessions");
}

#[tokio::test]
async fn prefer_uses_tls_when_the_server_offers_it_and_plain_otherwise() {
    let tls = tls_pg_server!();
    // No sslmode: tokio-postgres's and libpq's default, prefer (nothing is checked).
    let store = open_and_init(&tls.url()).await;
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
    let (encrypted, plain) = ferry_sessions(&tls).await;
    assert!(encrypted >= 1 && plain == 0, "{encrypted} encrypted and {plain} plain ferry sessions");

    let pg = pg_server!();
    let store = open_and_init(&format!("{}?sslmode=prefer", pg.url())).await;
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
    let (encrypted, plain) = ferry_sessions(&pg).await;
    assert!(encrypted == 0 && plain >= 1, "{encrypted} encrypted and {plain} plain ferry sessions");
}

#[tokio::test]
async fn requiring_tls_from_a_server_without_it_fails_clearly() {
    let pg = pg_server!();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = write_ca_file(dir.path(), "some CA");
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = format!("{}?sslmode={mode}", pg.url_for("ferry", Some("s3cret-pw"), "ferry"));
        let err = PostgresStore::open_with(&url, tls_options(&ca)).await.expect_err("the server has no TLS");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let text = chain(&err);
        assert!(
            text.contains(&format!("the PostgreSQL server at 127.0.0.1:{} does not offer TLS", pg.port())),
            "{mode}: {text}"
        );
        assert!(text.contains("turn ssl on") && text.contains("sslmode=prefer"), "{text}");
        assert!(text.contains(&format!("postgres://ferry:***@127.0.0.1:{}/ferry?sslmode={mode}", pg.port())), "{text}");
        assert!(!text.contains("s3cret-pw"), "{text}");
    }
}

#[tokio::test]
async fn a_root_certificate_of_another_ca_is_refused_naming_the_file() {
    let pg = tls_pg_server!();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = write_ca_file(dir.path(), "some other CA");
    let url = |mode: &str| format!("{}?sslmode={mode}", pg.url_for("ferry", Some("s3cret-pw"), "ferry"));
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = PostgresStore::open_with(&url(mode), tls_options(&wrong)).await.expect_err("untrusted certificate");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let text = chain(&err);
        assert!(
            text.contains(&format!(
                "the certificate of the PostgreSQL server at 127.0.0.1:{} is not trusted: no certificate \
                 in the root certificate file {} issued it",
                pg.port(),
                wrong.display()
            )),
            "{mode}: {text}"
        );
        assert!(text.contains(&format!("postgres://ferry:***@127.0.0.1:{}/ferry", pg.port())), "{text}");
        assert!(!text.contains("s3cret-pw"), "{text}");
    }
    // `sslrootcert` in the data source wins over the options.
    let right = ca_of(&pg);
    let url = format!("{}&sslrootcert={}", url("verify-full"), wrong.display());
    let err = PostgresStore::open_with(&url, tls_options(&right)).await.expect_err("the URL's root file");
    assert!(chain(&err).contains(&wrong.display().to_string()), "{}", chain(&err));
    let url = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(), right.display());
    let store = PostgresStore::open_with(&url, tls_options(&wrong)).await.expect("the URL's root file");
    store.init().await.expect("init");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused_unless_only_the_issuer_is_checked() {
    let pg = tls_pg_server!();
    let ca = ca_of(&pg);
    // The server's address under a name its certificate does not list.
    let url = |host: &str, mode: &str| {
        format!("postgres://ferry:s3cret-pw@{host}:{}/ferry?hostaddr=127.0.0.1&sslmode={mode}", pg.port())
    };
    for mode in ["require", "verify-full"] {
        let err = PostgresStore::open_with(&url("db.example", mode), tls_options(&ca)).await.expect_err("wrong name");
        let text = chain(&err);
        assert!(
            text.contains(&format!(
                "the certificate of the PostgreSQL server at db.example:{} is not valid for that host name",
                pg.port()
            )),
            "{mode}: {text}"
        );
        assert!(text.contains("sslmode=verify-ca"), "{text}");
        assert!(!text.contains("s3cret-pw"), "{text}");
    }
    let store = PostgresStore::open_with(&url("db.example", "verify-ca"), tls_options(&ca)).await.expect("verify-ca");
    store.init().await.expect("init");
    let store = PostgresStore::open_with(&url("localhost", "verify-full"), tls_options(&ca)).await.expect("localhost");
    store.acquire(&request(&server("ms1"), "m", "i")).await.expect("acquire");
}

/// The settings that come from the environment (`PGSSLROOTCERT`, `~/.postgresql/root.crt`,
/// the password file) and the warning about an unchecked server. Each case runs in a child
/// process (this binary re-run as `pg_tls_child`), so the environment of the other tests
/// stays untouched. The server refuses plain TCP connections here, so every store that
/// opens talks TLS.
#[test]
fn tls_settings_and_passwords_come_from_the_environment() {
    let pg = tls_pg_server!();
    let rt = runtime();
    rt.block_on(pg.create_user_with_password("carol", "tls-pw")).expect("create user");
    rt.block_on(reject_plain_tcp(&pg));
    let ca = ca_of(&pg);
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = write_ca_file(dir.path(), "some other CA");
    let empty_home = dir.path().join("empty-home");
    let home_with_root = dir.path().join("home");
    std::fs::create_dir_all(&empty_home).expect("mkdir");
    std::fs::create_dir_all(home_with_root.join(".postgresql")).expect("mkdir");
    std::fs::copy(&ca, home_with_root.join(".postgresql/root.crt")).expect("copy");
    let passfile = dir.path().join("pgpass");
    std::fs::write(&passfile, format!("127.0.0.1:{}:ferry:carol:tls-pw\n", pg.port())).expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let no_passfile = dir.path().join("none.pgpass");
    let child = |url: &str, env: &[(&str, &Path)]| {
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["pg_tls_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(TLS_CHILD_URL, url)
            .env("HOME", &empty_home)
            .env_remove("PGSSLROOTCERT")
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", &no_passfile);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("child");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let warning = "without checking the server's certificate";

    // Plain connections are refused now: the server really insists on TLS.
    let out = child(&format!("{}?sslmode=disable", pg.url()), &[]);
    assert!(out.contains("refused") && out.contains("no encryption"), "{out}");

    // require without any root certificate: encrypted, unchecked, warned once per store.
    let url = format!("{}?sslmode=require", pg.url_for("ferry", Some("s3cret-pw"), "ferry"));
    let out = child(&url, &[]);
    assert!(out.contains("opened") && out.contains("three connections"), "{out}");
    assert_eq!(out.matches(warning).count(), 1, "{out}");
    assert!(out.contains(&format!("postgres://ferry:***@127.0.0.1:{}/ferry?sslmode=require", pg.port())), "{out}");
    assert!(out.contains("sslrootcert=PATH") && out.contains("PGSSLROOTCERT"), "{out}");
    assert!(!out.contains("s3cret-pw"), "{out}");

    // PGSSLROOTCERT is the root certificate.
    let out = child(&url, &[("PGSSLROOTCERT", &wrong)]);
    assert!(out.contains("refused") && out.contains(&wrong.display().to_string()), "{out}");
    let out = child(&url, &[("PGSSLROOTCERT", &ca)]);
    assert!(out.contains("opened") && !out.contains(warning), "{out}");

    // Else ~/.postgresql/root.crt, when it exists.
    let verify_full = format!("{}?sslmode=verify-full", pg.url());
    let out = child(&verify_full, &[("HOME", &home_with_root)]);
    assert!(out.contains("opened"), "{out}");
    let out = child(&verify_full, &[]);
    assert!(out.contains("refused") && out.contains("no root certificate was given"), "{out}");

    // A password from the password file, over a checked TLS connection.
    let url = format!("{}?sslmode=verify-full", pg.url_for("carol", None, "ferry"));
    let out = child(&url, &[("PGSSLROOTCERT", &ca), ("PGPASSFILE", &passfile)]);
    assert!(out.contains("opened"), "{out}");
    let out = child(&url, &[("PGSSLROOTCERT", &ca)]);
    assert!(out.contains("asks for a password for user carol"), "{out}");
}

const TLS_CHILD_URL: &str = "FERRY_STORE_PG_TLS_CHILD_URL";

/// The child side of `tls_settings_and_passwords_come_from_the_environment`: opens the store
/// (logging warnings to stdout) and makes three connections at once.
#[test]
fn pg_tls_child() {
    let Ok(url) = std::env::var(TLS_CHILD_URL) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .try_init();
    runtime().block_on(async {
        let options = PostgresOptions { pool_size: 3, ..PostgresOptions::new(CALL_TIMEOUT) };
        match PostgresStore::open_with(&url, options).await {
            Ok(store) => {
                println!("opened");
                // More connections of the same store (a user without rights on the table
                // gets errors here, which do not matter).
                let calls = async {
                    store.init().await?;
                    let (a, b, c) = tokio::join!(store.list(), store.list(), store.list());
                    a.and(b).and(c)
                };
                match calls.await {
                    Ok(_) => println!("three connections"),
                    Err(e) => println!("calls failed: {}", chain(&e)),
                }
            }
            Err(e) => println!("refused: {}", chain(&e)),
        }
    });
}

/// Rewrites the server's pg_hba.conf so that TCP connections without TLS are refused.
async fn reject_plain_tcp(pg: &PgServer) {
    let hba = pg.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(&hba, format!("hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n{rules}"))
        .expect("write pg_hba.conf");
    pg.execute("SELECT pg_reload_conf()").await.expect("reload");
    // The postmaster reloads on its own time; wait until a plain connection is refused.
    for _ in 0..100 {
        if pg.client().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server still accepts plain TCP connections");
}

/// The ferry sessions on the server: (encrypted, plain).
async fn ferry_sessions(pg: &PgServer) -> (i64, i64) {
    let row = pg
        .client()
        .await
        .expect("client")
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'ferry'",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    (row.get(0), row.get(1))
}

fn ca_of(pg: &PgServer) -> std::path::PathBuf {
    pg.ca_cert_path().expect("a TLS test server has a CA")
}

fn tls_options(root_cert: &Path) -> PostgresOptions {
    PostgresOptions { ssl_root_cert: Some(root_cert.to_path_buf()), ..PostgresOptions::new(CALL_TIMEOUT) }
}

/// The certificate of a new CA, in `dir`: one that issued nothing the servers use.
fn write_ca_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{}.pem", name.replace(' ', "-")));
    std::fs::write(&path, TestCa::new(name).expect("CA").cert_pem()).expect("write the CA certificate");
    path
}

// ---- helpers ----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn open(url: &str) -> PostgresStore {
    PostgresStore::open(url, CALL_TIMEOUT).await.expect("open")
}

async fn open_and_init(url: &str) -> PostgresStore {
    PostgresStore::open_and_init(url, CALL_TIMEOUT).await.expect("open and init")
}

/// A new schema on the server and a data source whose `search_path` is it, so each
/// conformance check gets an empty lease table of its own.
async fn fresh_schema(pg: &PgServer, schema: &str) -> String {
    pg.execute(&format!("CREATE SCHEMA {schema}")).await.expect("create schema");
    format!("{}?options=-c%20search_path%3D{schema}", pg.url())
}

async fn query_one<T>(pg: &PgServer, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    pg.client().await.expect("client").query_one(sql, &[]).await.expect("query").get(0)
}

fn server(name: &str) -> LeaseName {
    LeaseName::Server(ServerName::new(name).expect("name"))
}

fn request(name: &LeaseName, machine: &str, incarnation: &str) -> AcquireRequest {
    AcquireRequest {
        name: name.clone(),
        owner: ServerName::new("ms1").expect("name"),
        machine: MachineName::new(machine).expect("name"),
        incarnation: Incarnation(incarnation.to_string()),
        ttl: Duration::from_secs(60),
    }
}

fn lost_detail<T: std::fmt::Debug>(r: ferry_store::Result<T>) -> String {
    match r {
        Err(StoreError::Lost { detail, .. }) => detail,
        other => panic!("expected Lost, got {other:?}"),
    }
}

fn chain(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A database that takes longer than one call timeout to accept a connection (a TLS or
/// SCRAM handshake on a loaded host) is still reached: the connection goes on being made in
/// the background and a later call uses it. (Before, each call's timeout cancelled the
/// connection it was making, so no call ever got through.)
#[tokio::test]
async fn a_connection_slower_than_the_call_timeout_is_made_in_the_background() {
    let pg = pg_server!();
    ferry_store::init(&pg.url()).await.expect("init");
    // A proxy that holds every new connection 400 ms before passing bytes through.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = proxy.local_addr().unwrap().port();
    let target = format!("127.0.0.1:{}", pg.port());
    let forwarder = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = proxy.accept().await else { return };
            let target = target.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let url = pg.url().replace(&format!(":{}/", pg.port()), &format!(":{port}/"));
    assert_ne!(url, pg.url());
    let store = ferry_store::open_lazy(&url, Duration::from_millis(200));
    let first = store.list().await;
    assert!(matches!(first, Err(StoreError::Timeout { .. })), "{first:?}");
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(5) {
        match store.list().await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(chain(&e)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_none(), "never reached through the slow proxy: {last:?}");
    forwarder.abort();
}
