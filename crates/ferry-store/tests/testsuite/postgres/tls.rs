//! TLS: the conformance suite over a connection that checks the server's certificate, and
//! the refusals an operator meets (no TLS on the server, a certificate of another CA or for
//! another host name); settings and passwords from the environment.

use std::path::Path;
use std::time::Duration;

use ferry_store::postgres::{PostgresOptions, PostgresStore};
use ferry_store::{LeaseStore, StoreError};
use ferry_testkit::{conformance, PgServer, TestCa};

use super::{fresh_schema, open_and_init, runtime};
use crate::common::{chain, request, server, test_name, CALL_TIMEOUT};

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
        cmd.args([test_name(module_path!(), "pg_tls_child").as_str(), "--exact", "--nocapture", "--test-threads=1"])
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
