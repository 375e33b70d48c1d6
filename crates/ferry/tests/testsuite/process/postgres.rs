//! The domain on a real PostgreSQL lease table (a private server each test starts): a
//! failover and an outage, and a misconfigured table at start-up.

use std::time::Duration;

use ferry_api::{EventKind, ServerState};
use ferry_testkit::{wait_until, Harness};

use super::{assert_safe, events, spec};
use crate::{exe, PATIENCE, SERIAL};

/// The same domain on a real PostgreSQL lease table (a private server this test starts):
/// a machine dies and its server migrates; then the database goes down, every server fences
/// itself and the master moves nothing; the database comes back and so does the domain.
#[tokio::test]
async fn postgres_lease_table_failover_and_outage() {
    let _g = SERIAL.lock().await;
    let Some(mut pg) = tokio::task::spawn_blocking(ferry_testkit::PgServer::start_or_skip).await.unwrap() else {
        return;
    };
    let url = pg.url();
    let out = std::process::Command::new(exe()).args(["leasing", "init", "--data-source", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut spec = spec();
    spec.data_source = Some(url.clone());
    let h = Harness::start(spec, exe(), None).await.expect("domain starts");
    h.admin().start_cluster("cluster-1").await.unwrap();
    h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    let before = h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();

    h.kill_machine("machine-c");
    let moved = h
        .wait_running("ms2", "machine-d", before.epoch.unwrap().0, PATIENCE)
        .await
        .expect("ms2 migrated on PostgreSQL");
    h.wait_answer_from("ms2", "machine-d", PATIENCE).await.unwrap();

    // The database goes away: both servers fence themselves before their leases could expire.
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.stop().expect("PostgreSQL stops");
        pg
    })
    .await
    .unwrap();
    for (server, machine) in [("ms1", "machine-b"), ("ms2", "machine-d")] {
        let nm = h.nm_client(machine, Duration::from_secs(2)).await.unwrap();
        wait_until(PATIENCE, &format!("{server} to fence itself"), || async {
            nm.servers()
                .await
                .ok()
                .and_then(|l| l.into_iter().find(|s| s.name == server))
                .is_some_and(|s| s.state == ServerState::Fenced)
        })
        .await
        .unwrap();
        assert!(h.who_answers(server).await.is_none(), "{server}'s service is down");
    }
    let ev = events(&h).await;
    let migrations_before = ev.iter().filter(|e| e.kind == EventKind::Migrate).count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The admin answers with the database's error and no password.
    let e = h.admin().servers().await.unwrap_err().to_string();
    assert!(e.contains("cannot read the lease table") && e.contains("127.0.0.1"), "{e}");

    // It comes back: the domain returns to its configured state with no operator.
    let _pg = tokio::task::spawn_blocking(move || {
        pg.start_again().expect("PostgreSQL starts again");
        pg
    })
    .await
    .unwrap();
    h.wait_running("ms1", "machine-b", 1, Duration::from_secs(60)).await.expect("ms1 back");
    h.wait_running("ms2", "machine-d", moved.epoch.unwrap().0, Duration::from_secs(60))
        .await
        .expect("ms2 back where it ran");
    h.wait_answer_from("ms2", "machine-d", PATIENCE).await.unwrap();
    let ev = events(&h).await;
    assert_eq!(
        ev.iter().filter(|e| e.kind == EventKind::Migrate).count(),
        migrations_before,
        "nothing migrated during or after the outage"
    );
    assert_safe(&h).await;
}

/// A misconfigured lease table at start-up: the daemons run, and every answer names the
/// data source (without its password) and the fix.
#[tokio::test]
async fn misconfigured_postgres_gets_clear_errors_and_no_crash() {
    let _g = SERIAL.lock().await;
    let Some(pg) = tokio::task::spawn_blocking(ferry_testkit::PgServer::start_or_skip).await.unwrap() else {
        return;
    };
    pg.create_user_with_password("alice", "s3cret-pw").await.unwrap();
    let cases = [
        // No table yet.
        (pg.url(), "ferry leasing init"),
        // Wrong password.
        (pg.url_for("alice", Some("wrong-pw"), "ferry"), "authentication failed"),
        // Nobody listens.
        ("postgres://ferry:s3cret-pw@127.0.0.1:1/ferry".to_string(), "127.0.0.1:1"),
    ];
    for (url, want) in cases {
        let mut spec = spec();
        spec.data_source = Some(url.clone());
        let h = Harness::start(spec, exe(), None).await.expect("the admin and Node Managers start anyway");
        let e = h.admin().servers().await.unwrap_err();
        assert_eq!(e.status(), Some(503));
        let text = e.to_string();
        assert!(text.contains(want), "{url}: {text}");
        assert!(!text.contains("s3cret-pw") && !text.contains("wrong-pw"), "a password leaked: {text}");
        // A start is refused with the same reason, and the admin keeps running.
        let e = h.admin().start("ms1").await.unwrap_err().to_string();
        assert!(e.contains("cannot read the lease table"), "{e}");
        assert!(h.admin().domain().await.is_ok(), "the admin still runs");
        let log = std::fs::read_to_string(h.dir.join("logs/admin.log")).unwrap_or_default();
        assert!(!log.contains("s3cret-pw") && !log.contains("wrong-pw"), "a password leaked into the log");
    }
}

/// A rolling upgrade from a lease table of schema version 1: this ferry runs the domain on
/// it as it is, and `ferry leasing init` upgrades it under the running servers, which keep
/// their leases and instances.
#[tokio::test]
async fn a_version_1_lease_table_is_upgraded_under_running_servers() {
    let _g = SERIAL.lock().await;
    let Some(pg) = tokio::task::spawn_blocking(ferry_testkit::PgServer::start_or_skip).await.unwrap() else {
        return;
    };
    let url = pg.url();
    let init = {
        let url = url.clone();
        move || std::process::Command::new(exe()).args(["leasing", "init", "--data-source", &url]).output().unwrap()
    };
    let out = init();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg.execute("DROP TABLE ferry_authority; UPDATE ferry_schema SET version = 1").await.expect("make it version 1");
    let mut spec = spec();
    spec.data_source = Some(url.clone());
    let h = Harness::start(spec, exe(), None).await.expect("domain starts");
    h.admin().start_cluster("cluster-1").await.unwrap();
    let ms1 = h.wait_running("ms1", "machine-b", 0, PATIENCE).await.unwrap();
    let ms2 = h.wait_running("ms2", "machine-c", 0, PATIENCE).await.unwrap();

    let out = tokio::task::spawn_blocking(init.clone()).await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("upgraded from schema version 1 to 2"), "{said}");
    // Three leases' worth of renewals on the upgraded table.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = h.admin().servers().await.unwrap();
    for before in [ms1, ms2] {
        let now = now.iter().find(|s| s.name == before.name).expect("listed");
        assert_eq!((now.state, now.epoch), (before.state, before.epoch), "{} was restarted", before.name);
    }
    let ev = events(&h).await;
    assert!(!ev.iter().any(|e| e.kind == EventKind::Fenced), "a server fenced itself: {ev:?}");
    assert_safe(&h).await;
}

/// A primary whose commits wait for a synchronous standby that is not connected makes every
/// lease write wait: `ferry leasing init` says so before it writes (and waits), not only a
/// timeout half a minute later.
#[tokio::test]
async fn leasing_init_warns_of_a_missing_synchronous_standby_before_it_waits() {
    let _g = SERIAL.lock().await;
    let Some(mut pair) = ferry_testkit::PgPair::start_or_skip(None).await else {
        return;
    };
    let stopped = tokio::task::spawn_blocking(move || {
        pair.standby.stop().expect("stop the standby");
        pair
    });
    let pair = stopped.await.unwrap();
    let mut init = tokio::process::Command::new(exe())
        .args(["leasing", "init", "--data-source", &pair.url()])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = init.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    let Ok(Ok(Some(line))) = first else {
        panic!("ferry leasing init said nothing within 10 s (its call waits 30 s): {first:?}");
    };
    assert!(line.contains("no synchronous standby is connected"), "{line}");
    let _ = init.kill().await;
}
