//! The conformance suite on PostgreSQL, through one handle and through two pools on one
//! database (as two processes would).

use ferry_store::postgres::{PostgresOptions, PostgresStore};
use ferry_testkit::conformance;

use super::{fresh_schema, query_one};
use crate::common::{TwoHandles, CALL_TIMEOUT};

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
            TwoHandles::new(a, b)
        }
    })
    .await;
}
