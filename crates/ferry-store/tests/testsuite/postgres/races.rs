//! Races for one lease over many connections and OS processes, stale holders that are
//! fenced, and batched renewals that wait for row locks (rule 1 for `renew_many`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Epoch, Incarnation};
use ferry_store::{AcquireRequest, LeaseStore, Renewal, StoreError};

use super::{open, open_and_init, runtime};
use crate::common::{chain, lost_detail, request, server, test_name, CALL_TIMEOUT};

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
                .args([
                    test_name(module_path!(), "pg_multiprocess_child").as_str(),
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
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
