//! The errors an operator meets: an unreachable server, one that never answers, wrong
//! credentials and where passwords come from, a missing database or table, another schema
//! version, corrupt rows.

use std::path::Path;
use std::time::Duration;

use ferry_store::postgres::PostgresStore;
use ferry_store::{LeaseStore, StoreError};
use tokio::time::Instant;

use super::{open, open_and_init, runtime};
use crate::common::{chain, request, server, test_name, CALL_TIMEOUT};

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
        cmd.args([
            test_name(module_path!(), "pg_password_child").as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
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
    pg.execute("UPDATE ferry_schema SET version = 3").await.expect("update");
    let store = open(&pg.url()).await;
    let err = store.list().await.expect_err("version 3");
    assert!(matches!(err, StoreError::Schema { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("schema version 3") && text.contains("reads version 2"), "{text}");
    assert!(text.contains(&pg.url()), "{text}");
    let err = store.init().await.expect_err("init must not touch another version");
    assert!(err.to_string().contains("schema version 3"), "{err}");
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
