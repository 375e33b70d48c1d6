//! Rule 7: calls are bounded when the database is locked, frozen or restarted, and a
//! connection slower than one call timeout is still made in the background.

use std::time::Duration;

use ferry_core::lease::LeaseState;
use ferry_core::{Epoch, Incarnation};
use ferry_store::postgres::PostgresStore;
use ferry_store::{LeaseStore, StoreError};
use tokio::time::Instant;

use crate::common::{chain, request, server, CALL_TIMEOUT};

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
