//! The conformance suite: the lease semantics of DESIGN §3, written once and run against
//! every [`LeaseStore`] (SQLite here, later PostgreSQL and the consensus store), so that the
//! daemons can rely on the trait's contract and not on one backend's quirks.
//!
//! Each check takes a fresh store from the caller's factory, runs in its own task under a
//! time limit, and panics with the check's name and what it expected. Checks use their own
//! lease names and only look at those rows, so a factory may also hand out handles to one
//! shared store. Expiry is tested with short TTLs and real sleeps several times longer;
//! every lease that must stay live uses a TTL of a minute, so a loaded machine cannot make
//! a check flaky.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::lease::{Lease, LeaseState};
use ferry_core::{ClusterName, Epoch, Incarnation, LeaseName, MachineName, ServerName};

use ferry_store::{AcquireRequest, LeaseStore, Renewal, Result, ScanCursor, StoreError, SCAN_OVERLAP_MS};

/// A check's body, boxed so the checks fit in one table.
pub type CheckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// One named check; it panics on failure.
pub type CheckFn = fn(Arc<dyn LeaseStore>) -> CheckFuture;

/// How long one check may take before the suite gives up on it.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// The TTL of leases a check wants to see expire.
const SHORT_TTL: Duration = Duration::from_millis(150);
/// How long a check sleeps to be sure a `SHORT_TTL` lease has expired by the store's clock.
const PAST_SHORT_TTL: Duration = Duration::from_millis(600);
/// The TTL of leases that must stay live for the whole check.
const LONG_TTL: Duration = Duration::from_secs(60);
const LONG_TTL_MS: i64 = 60_000;

macro_rules! checks {
    ($($check:ident),* $(,)?) => {
        /// Every check, in the order [`run_all`] runs them.
        pub const CHECKS: &[(&str, CheckFn)] =
            &[$((stringify!($check), |store| Box::pin($check(store)))),*];
    };
}

checks![
    acquire_on_empty,
    second_acquirer_is_refused,
    reacquire_by_holder_keeps_epoch,
    renew_extends,
    renew_by_stale_holder_is_lost,
    lease_expires_by_store_clock,
    acquire_after_expiry_bumps_epoch,
    renew_after_expiry_is_lost,
    release_then_acquire_bumps_epoch,
    release_by_non_holder_is_lost,
    handover_from_recorded_incarnation,
    handover_from_wrong_incarnation_is_lost,
    handover_of_free_lease_succeeds,
    list_is_ordered_by_name,
    expired_lists_only_expired_held_rows,
    next_expiry_follows_the_soonest_lease,
    scan_from_a_cursor_reads_new_expiries_and_tracked_rows,
    concurrent_acquires_have_one_winner,
    epochs_increase_over_owner_changes,
    renew_many_decides_each_lease_like_renew,
    overlapping_batches_all_renew,
];

/// Runs every check in [`CHECKS`], each on a store from `make_fresh`, and panics at the
/// first failure with the check's name.
pub async fn run_all<S, F, Fut>(mut make_fresh: F)
where
    S: LeaseStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    for (name, check) in CHECKS {
        let store: Arc<dyn LeaseStore> = Arc::new(make_fresh().await);
        run_check(name, *check, store).await;
    }
}

/// Runs one check in its own task under [`CHECK_TIMEOUT`]; panics if it fails.
pub async fn run_check(name: &str, check: CheckFn, store: Arc<dyn LeaseStore>) {
    let described = store.describe();
    let task = tokio::spawn(check(store));
    let abort = task.abort_handle();
    match tokio::time::timeout(CHECK_TIMEOUT, task).await {
        Ok(Ok(())) => eprintln!("conformance {name}: ok"),
        Ok(Err(join)) => match join.try_into_panic() {
            Ok(payload) => {
                let why = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("conformance check `{name}` failed on {described}: {why}")
            }
            Err(join) => panic!("conformance check `{name}` did not complete: {join}"),
        },
        Err(_elapsed) => {
            abort.abort();
            panic!("conformance check `{name}` did not finish within {} s on {described}", CHECK_TIMEOUT.as_secs())
        }
    }
}

// ---- the checks ----

async fn acquire_on_empty(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    assert!(ok("get before any acquire", s.get(&name).await).is_none(), "row exists before acquire");
    let req = request(&name, "ms1", "machine-a", "inc-a", LONG_TTL);
    let lease = ok("acquire on an empty table", s.acquire(&req).await);
    assert_holds("acquire on an empty table", &lease, &req, 1);
    let got = ok("get after acquire", s.get(&name).await);
    let got = got.unwrap_or_else(|| panic!("get after acquire: no row for {name}"));
    assert_holds("get after acquire", &got, &req, 1);
    let listed = mine(ok("list after acquire", s.list().await), &[&name]);
    assert_eq!(listed.len(), 1, "list after acquire: {listed:?}");
    assert_holds("list after acquire", &listed[0], &req, 1);
    let expired = mine(ok("expired after acquire", s.expired().await), &[&name]);
    assert!(expired.is_empty(), "a live lease is listed as expired: {expired:?}");
}

async fn second_acquirer_is_refused(s: Arc<dyn LeaseStore>) {
    let name = master("cluster-1");
    let first = request(&name, "ms1", "machine-a", "inc-1", LONG_TTL);
    ok("first acquire", s.acquire(&first).await);
    let second = request(&name, "ms2", "machine-b", "inc-2", LONG_TTL);
    let (owner, machine, epoch, remaining_ms) = held("acquire by a second server", s.acquire(&second).await);
    assert_eq!((owner.as_str(), machine.as_str()), ("ms1", "machine-a"), "Held names the wrong holder");
    assert_eq!(epoch, Epoch(1), "Held reports the wrong epoch");
    assert!(
        remaining_ms > 0 && remaining_ms <= LONG_TTL_MS,
        "Held reports {remaining_ms} ms left of a {LONG_TTL_MS} ms lease"
    );
    // The same server restarted (a new incarnation) must wait as well, or use handover.
    let restarted = request(&name, "ms1", "machine-a", "inc-3", LONG_TTL);
    held("acquire by a new incarnation of the holder", s.acquire(&restarted).await);
    let got = expect_row("get after refused acquires", s.get(&name).await);
    assert_holds("get after refused acquires", &got, &first, 1);
}

async fn reacquire_by_holder_keeps_epoch(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let req = request(&name, "ms1", "machine-a", "inc-a", LONG_TTL);
    ok("first acquire", s.acquire(&req).await);
    // A retried acquire (its first answer lost) with a longer TTL.
    let retry = AcquireRequest { ttl: LONG_TTL * 2, ..req.clone() };
    let lease = ok("re-acquire by the holding incarnation", s.acquire(&retry).await);
    assert_holds("re-acquire by the holding incarnation", &lease, &retry, 1);
    assert!(lease.remaining_ms > LONG_TTL_MS, "re-acquire did not extend the lease: {} ms left", lease.remaining_ms);
    let got = expect_row("get after re-acquire", s.get(&name).await);
    assert_holds("get after re-acquire", &got, &retry, 1);
}

async fn renew_extends(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let req = request(&name, "ms1", "machine-a", "inc-a", Duration::from_secs(10));
    let lease = ok("acquire", s.acquire(&req).await);
    let renewed = ok("renew by the holder", s.renew(&name, &req.incarnation, lease.epoch, LONG_TTL).await);
    let longer = AcquireRequest { ttl: LONG_TTL, ..req.clone() };
    assert_holds("renew by the holder", &renewed, &longer, 1);
    assert!(renewed.remaining_ms > 10_000, "renew with a {LONG_TTL_MS} ms TTL left only {} ms", renewed.remaining_ms);
    let got = expect_row("get after renew", s.get(&name).await);
    assert_holds("get after renew", &got, &longer, 1);
    assert!(got.remaining_ms > 10_000, "get after renew: {} ms left", got.remaining_ms);
    let again = ok("second renew", s.renew(&name, &req.incarnation, lease.epoch, LONG_TTL).await);
    assert_eq!(again.epoch, Epoch(1), "renew changed the epoch");
}

async fn renew_by_stale_holder_is_lost(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let req = request(&name, "ms1", "machine-a", "inc-a", LONG_TTL);
    ok("acquire", s.acquire(&req).await);
    let other = Incarnation("inc-b".to_string());
    lost("renew at a later epoch", s.renew(&name, &req.incarnation, Epoch(2), LONG_TTL).await);
    lost("renew at epoch 0", s.renew(&name, &req.incarnation, Epoch(0), LONG_TTL).await);
    let (incarnation, _) = lost("renew by another incarnation", s.renew(&name, &other, Epoch(1), LONG_TTL).await);
    assert_eq!(incarnation, other, "Lost names the wrong incarnation");
    lost(
        "renew of a lease that does not exist",
        s.renew(&server("nobody"), &req.incarnation, Epoch(1), LONG_TTL).await,
    );
    let got = expect_row("get after refused renewals", s.get(&name).await);
    assert_holds("get after refused renewals", &got, &req, 1);
}

async fn lease_expires_by_store_clock(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let req = request(&name, "ms1", "machine-a", "inc-a", SHORT_TTL);
    let lease = ok("acquire with a short TTL", s.acquire(&req).await);
    assert_holds("acquire with a short TTL", &lease, &req, 1);
    tokio::time::sleep(PAST_SHORT_TTL).await;
    let got = expect_row("get after the TTL", s.get(&name).await);
    assert_eq!(got.state, LeaseState::Held, "an expired lease must stay held until taken");
    assert!(got.remaining_ms <= 0, "lease still has {} ms left after its TTL", got.remaining_ms);
    assert!(got.is_expired(), "is_expired() is false: {got:?}");
    assert!(
        got.since_renewal_ms >= ms(SHORT_TTL),
        "since_renewal_ms {} after sleeping {PAST_SHORT_TTL:?}",
        got.since_renewal_ms
    );
    assert_eq!(got.epoch, Epoch(1), "expiry changed the epoch");
    let listed = mine(ok("list after the TTL", s.list().await), &[&name]);
    assert!(listed.len() == 1 && listed[0].remaining_ms <= 0, "list after the TTL: {listed:?}");
}

async fn acquire_after_expiry_bumps_epoch(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let a = request(&name, "ms1", "machine-a", "inc-a", SHORT_TTL);
    ok("acquire with a short TTL", s.acquire(&a).await);
    tokio::time::sleep(PAST_SHORT_TTL).await;
    let b = request(&name, "ms1", "machine-b", "inc-b", LONG_TTL);
    let lease = ok("acquire of an expired lease", s.acquire(&b).await);
    assert_holds("acquire of an expired lease", &lease, &b, 2);
    lost("renew by the expired holder", s.renew(&name, &a.incarnation, Epoch(1), LONG_TTL).await);
    held("acquire by the expired holder", s.acquire(&a).await);
    let got = expect_row("get after takeover", s.get(&name).await);
    assert_holds("get after takeover", &got, &b, 2);
}

async fn renew_after_expiry_is_lost(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let a = request(&name, "ms1", "machine-a", "inc-a", SHORT_TTL);
    ok("acquire with a short TTL", s.acquire(&a).await);
    tokio::time::sleep(PAST_SHORT_TTL).await;
    lost("renew after expiry", s.renew(&name, &a.incarnation, Epoch(1), LONG_TTL).await);
    let got = expect_row("get after a late renew", s.get(&name).await);
    assert!(got.is_expired(), "a late renew revived the lease: {got:?}");
    assert_eq!(got.epoch, Epoch(1), "a late renew changed the epoch");
    // The holder fenced at its deadline; holding again is a new holding with a new token.
    let again = AcquireRequest { ttl: LONG_TTL, ..a.clone() };
    let lease = ok("acquire again by the expired holder", s.acquire(&again).await);
    assert_holds("acquire again by the expired holder", &lease, &again, 2);
}

async fn release_then_acquire_bumps_epoch(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let a = request(&name, "ms1", "machine-a", "inc-a", LONG_TTL);
    ok("acquire", s.acquire(&a).await);
    ok("release by the holder", s.release(&name, &a.incarnation, Epoch(1)).await);
    ok("retried release", s.release(&name, &a.incarnation, Epoch(1)).await);
    let got = expect_row("get after release", s.get(&name).await);
    assert_eq!(got.state, LeaseState::Released, "release did not mark the row: {got:?}");
    assert_eq!(got.epoch, Epoch(1), "release changed the epoch");
    assert_eq!(got.owner.as_ref().map(ServerName::as_str), Some("ms1"), "release forgot the owner");
    assert_eq!(got.machine.as_ref().map(MachineName::as_str), Some("machine-a"), "release forgot the machine");
    assert!(!got.is_live() && !got.is_expired(), "a released row is live or expired: {got:?}");
    lost("renew after release", s.renew(&name, &a.incarnation, Epoch(1), LONG_TTL).await);

    let b = request(&name, "ms1", "machine-b", "inc-b", LONG_TTL);
    let lease = ok("acquire of a released lease", s.acquire(&b).await);
    assert_holds("acquire of a released lease", &lease, &b, 2);
    lost("release by the earlier holder", s.release(&name, &a.incarnation, Epoch(1)).await);
    ok("release by the second holder", s.release(&name, &b.incarnation, Epoch(2)).await);
    let c = request(&name, "ms1", "machine-c", "inc-c", LONG_TTL);
    assert_holds("third acquire", &ok("third acquire", s.acquire(&c).await), &c, 3);
    ok("release by the third holder", s.release(&name, &c.incarnation, Epoch(3)).await);
    // Even an incarnation that held the row before gets a new epoch.
    assert_holds("acquire by an earlier incarnation", &ok("acquire", s.acquire(&a).await), &a, 4);
}

async fn release_by_non_holder_is_lost(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let a = request(&name, "ms1", "machine-a", "inc-a", LONG_TTL);
    ok("acquire", s.acquire(&a).await);
    let other = Incarnation("inc-b".to_string());
    lost("release by another incarnation", s.release(&name, &other, Epoch(1)).await);
    lost("release at the wrong epoch", s.release(&name, &a.incarnation, Epoch(2)).await);
    lost("release of a missing lease", s.release(&server("nobody"), &a.incarnation, Epoch(1)).await);
    let got = expect_row("get after refused releases", s.get(&name).await);
    assert_holds("get after refused releases", &got, &a, 1);
}

async fn handover_from_recorded_incarnation(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let a = request(&name, "ms1", "machine-a", "inc-a", LONG_TTL);
    ok("acquire", s.acquire(&a).await);
    // The Node Manager saw inc-a exit and restarts ms1 on the same machine at once.
    let b = request(&name, "ms1", "machine-a", "inc-b", LONG_TTL);
    let lease = ok("handover from the recorded incarnation", s.handover(&b, &a.incarnation).await);
    assert_holds("handover from the recorded incarnation", &lease, &b, 2);
    let got = expect_row("get after handover", s.get(&name).await);
    assert_holds("get after handover", &got, &b, 2);
    lost("renew by the reaped incarnation", s.renew(&name, &a.incarnation, Epoch(1), LONG_TTL).await);
    let retry = ok("retried handover", s.handover(&b, &a.incarnation).await);
    assert_holds("retried handover", &retry, &b, 2);
}

async fn handover_from_wrong_incarnation_is_lost(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let a = request(&name, "ms1", "machine-a", "inc-a", LONG_TTL);
    ok("acquire", s.acquire(&a).await);
    let b = request(&name, "ms1", "machine-b", "inc-b", LONG_TTL);
    let stranger = Incarnation("inc-x".to_string());
    let (incarnation, _) = lost("handover from a stranger", s.handover(&b, &stranger).await);
    assert_eq!(incarnation, stranger, "Lost names the wrong incarnation");
    let got = expect_row("get after refused handover", s.get(&name).await);
    assert_holds("get after refused handover", &got, &a, 1);
    // Once b has taken it over, a second handover from inc-a (by c) comes too late.
    ok("handover to b", s.handover(&b, &a.incarnation).await);
    let c = request(&name, "ms1", "machine-c", "inc-c", LONG_TTL);
    lost("second handover from the same incarnation", s.handover(&c, &a.incarnation).await);
    let got = expect_row("get after the late handover", s.get(&name).await);
    assert_holds("get after the late handover", &got, &b, 2);
}

async fn handover_of_free_lease_succeeds(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let stranger = Incarnation("inc-x".to_string());
    let a = request(&name, "ms1", "machine-a", "inc-a", LONG_TTL);
    let lease = ok("handover of a missing lease", s.handover(&a, &stranger).await);
    assert_holds("handover of a missing lease", &lease, &a, 1);
    ok("release", s.release(&name, &a.incarnation, Epoch(1)).await);
    let b = request(&name, "ms1", "machine-b", "inc-b", SHORT_TTL);
    let lease = ok("handover of a released lease", s.handover(&b, &stranger).await);
    assert_holds("handover of a released lease", &lease, &b, 2);
    tokio::time::sleep(PAST_SHORT_TTL).await;
    let c = request(&name, "ms1", "machine-c", "inc-c", LONG_TTL);
    let lease = ok("handover of an expired lease", s.handover(&c, &stranger).await);
    assert_holds("handover of an expired lease", &lease, &c, 3);
}

async fn list_is_ordered_by_name(s: Arc<dyn LeaseStore>) {
    // Punctuation sorts differently under locale collations; the order is bytewise.
    let names =
        [server("ab"), master("z"), server("a_b"), server("a-b"), server("aB"), server("a.b"), master("cluster-1")];
    for (i, name) in names.iter().enumerate() {
        let req = request(name, "ms1", "machine-a", &format!("inc-{i}"), LONG_TTL);
        ok("acquire", s.acquire(&req).await);
    }
    let released = &names[2];
    ok("release", s.release(released, &Incarnation("inc-2".to_string()), Epoch(1)).await);
    let refs: Vec<&LeaseName> = names.iter().collect();
    let listed = mine(ok("list", s.list().await), &refs);
    let got: Vec<String> = listed.iter().map(|l| l.name.to_string()).collect();
    let mut want: Vec<String> = names.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(got, want, "list is not in bytewise name order");
    for lease in &listed {
        assert!(lease.remaining_ms <= LONG_TTL_MS, "more than the TTL left: {lease:?}");
        assert!(lease.since_renewal_ms >= 0, "negative since_renewal_ms: {lease:?}");
        if &lease.name == released {
            assert_eq!(lease.state, LeaseState::Released, "released row listed as {lease:?}");
        } else {
            assert!(lease.is_live(), "a live lease is listed as {lease:?}");
            assert_eq!(lease.epoch, Epoch(1), "unexpected epoch: {lease:?}");
        }
        let got = expect_row("get of a listed row", s.get(&lease.name).await);
        assert_eq!(
            (&got.owner, &got.incarnation, got.epoch, got.state),
            (&lease.owner, &lease.incarnation, lease.epoch, lease.state),
            "get and list disagree"
        );
    }
}

async fn expired_lists_only_expired_held_rows(s: Arc<dyn LeaseStore>) {
    let live = server("live");
    let gone = server("gone");
    let released = server("released");
    let released_short = server("released-short");
    let names = [&live, &gone, &released, &released_short];
    let req = |name: &LeaseName, ttl| request(name, "ms1", "machine-a", &format!("inc-{name}"), ttl);
    ok("acquire live", s.acquire(&req(&live, LONG_TTL)).await);
    ok("acquire gone", s.acquire(&req(&gone, SHORT_TTL)).await);
    let r = req(&released, LONG_TTL);
    ok("acquire released", s.acquire(&r).await);
    ok("release released", s.release(&released, &r.incarnation, Epoch(1)).await);
    let r = req(&released_short, SHORT_TTL);
    ok("acquire released-short", s.acquire(&r).await);
    ok("release released-short", s.release(&released_short, &r.incarnation, Epoch(1)).await);
    tokio::time::sleep(PAST_SHORT_TTL).await;

    let expired = mine(ok("expired", s.expired().await), &names);
    let got: Vec<&LeaseName> = expired.iter().map(|l| &l.name).collect();
    assert_eq!(got, vec![&gone], "expired() must list exactly the expired held rows: {expired:?}");
    assert!(expired[0].is_expired() && expired[0].epoch == Epoch(1), "{expired:?}");

    let taker = request(&gone, "ms1", "machine-b", "inc-taker", LONG_TTL);
    ok("acquire of the expired row", s.acquire(&taker).await);
    let expired = mine(ok("expired after takeover", s.expired().await), &names);
    assert!(expired.is_empty(), "a re-acquired row is still listed as expired: {expired:?}");
}

async fn next_expiry_follows_the_soonest_lease(s: Arc<dyn LeaseStore>) {
    // Other rows may share the store, so only upper bounds can be asserted.
    let long = server("next-long");
    let short = server("next-short");
    let r = request(&long, "ms1", "machine-a", "inc-next-long", LONG_TTL);
    ok("acquire long", s.acquire(&r).await);
    let n = ok("next_expiry_ms", s.next_expiry_ms().await);
    assert!(n.is_some_and(|n| n <= LONG_TTL_MS), "next expiry with a 60 s lease held: {n:?}");
    let r = request(&short, "ms1", "machine-a", "inc-next-short", Duration::from_secs(2));
    ok("acquire short", s.acquire(&r).await);
    let n = ok("next_expiry_ms", s.next_expiry_ms().await);
    assert!(n.is_some_and(|n| n <= 2_000), "next expiry with a 2 s lease held: {n:?}");
    ok("release short", s.release(&short, &r.incarnation, Epoch(1)).await);
}

async fn scan_from_a_cursor_reads_new_expiries_and_tracked_rows(s: Arc<dyn LeaseStore>) {
    let old = server("scan-old");
    let new = server("scan-new");
    let live = server("scan-live");
    let released = server("scan-released");
    let names = [&old, &new, &live, &released];
    let req = |name: &LeaseName, ttl| request(name, "ms1", "machine-a", &format!("inc-{name}"), ttl);
    ok("acquire old", s.acquire(&req(&old, SHORT_TTL)).await);
    ok("acquire live", s.acquire(&req(&live, LONG_TTL)).await);
    tokio::time::sleep(PAST_SHORT_TTL).await;

    let full = ok("full scan", s.scan(ScanCursor::FULL, &[]).await);
    let full_mine = mine(full.leases, &names);
    let got: Vec<&LeaseName> = full_mine.iter().map(|l| &l.name).collect();
    assert_eq!(got, vec![&old], "a full scan lists every expired held row");
    assert!(full.next_expiry_ms.is_some_and(|n| n <= LONG_TTL_MS), "next expiry: {:?}", full.next_expiry_ms);
    // A store without an expiry index (the trait's default) answers full scans each time.
    let incremental = !full.cursor.is_full();

    // Past the overlap, the old expiry is behind the next scan's window.
    tokio::time::sleep(Duration::from_millis(SCAN_OVERLAP_MS as u64 + 300)).await;
    let second = ok("second scan", s.scan(full.cursor, &[]).await);
    let second_mine = mine(second.leases, &names);
    assert!(second_mine.is_empty() || second_mine.iter().all(|l| l.name == old), "{second_mine:?}");
    tokio::time::sleep(Duration::from_millis(SCAN_OVERLAP_MS as u64 + 300)).await;
    let third = ok("third scan", s.scan(second.cursor, &[]).await);
    let third_mine = mine(third.leases, &names);
    if incremental {
        assert!(third_mine.is_empty(), "an expiry before the window is read again: {third_mine:?}");
    } else {
        assert_eq!(third_mine.len(), 1, "a full scan lists the expired row again: {third_mine:?}");
    }

    let r = req(&released, LONG_TTL);
    ok("acquire released", s.acquire(&r).await);
    ok("release released", s.release(&released, &r.incarnation, Epoch(1)).await);
    ok("acquire new", s.acquire(&req(&new, SHORT_TTL)).await);
    tokio::time::sleep(PAST_SHORT_TTL).await;
    let tracked = [old.clone(), live.clone(), old.clone()];
    let fourth = ok("scan with tracked rows", s.scan(third.cursor, &tracked).await);
    let mut got: Vec<(LeaseName, bool)> =
        mine(fourth.leases, &names).into_iter().map(|l| (l.name.clone(), l.is_expired())).collect();
    got.sort();
    let mut want = vec![(new.clone(), true), (old.clone(), true), (live.clone(), false)];
    want.sort();
    assert_eq!(got, want, "the window's new expiry once, and each tracked row once whatever its state");
}

async fn concurrent_acquires_have_one_winner(s: Arc<dyn LeaseStore>) {
    const RACERS: usize = 16;
    const ROUNDS: u64 = 5;
    let name = server("race");
    for round in 1..=ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut tasks = Vec::with_capacity(RACERS);
        for i in 0..RACERS {
            let (s, barrier) = (Arc::clone(&s), Arc::clone(&barrier));
            let req = request(&name, "race", &format!("machine-{i:02}"), &format!("r{round}-{i}"), LONG_TTL);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                s.acquire(&req).await
            }));
        }
        let mut winners = Vec::new();
        let mut refusals = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok(lease)) => winners.push(lease),
                Ok(Err(StoreError::Held { machine, epoch, .. })) => refusals.push((machine, epoch)),
                Ok(Err(e)) => panic!("round {round}: racing acquire failed: {}", chain(&e)),
                Err(join) => panic!("round {round}: racing task failed: {join}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners: {winners:?}", winners.len());
        let winner = &winners[0];
        assert_eq!(winner.epoch, Epoch(round), "round {round}: winner's epoch");
        let machine = winner.machine.as_ref().map(|m| m.to_string()).unwrap_or_default();
        for (held_by, epoch) in &refusals {
            assert_eq!((held_by, *epoch), (&machine, winner.epoch), "round {round}: a loser saw another holder");
        }
        let incarnation = winner.incarnation.clone().unwrap_or_else(|| panic!("winner has no incarnation"));
        ok("release by the winner", s.release(&name, &incarnation, winner.epoch).await);
    }
}

async fn epochs_increase_over_owner_changes(s: Arc<dyn LeaseStore>) {
    let name = server("ms1");
    let req = |inc: &str, ttl| request(&name, "ms1", "machine-a", inc, ttl);
    let mut epochs = Vec::new();
    let mut record = |what: &str, lease: Lease| {
        epochs.push(lease.epoch);
        assert!(epochs.windows(2).all(|w| w[0] < w[1]), "epoch did not increase at {what}: {epochs:?}");
        lease.epoch
    };
    record("acquire a", ok("acquire a", s.acquire(&req("a", LONG_TTL)).await));
    let e = record("handover a->b", ok("handover a->b", s.handover(&req("b", LONG_TTL), &inc("a")).await));
    ok("release b", s.release(&name, &inc("b"), e).await);
    record("acquire c", ok("acquire c", s.acquire(&req("c", SHORT_TTL)).await));
    tokio::time::sleep(PAST_SHORT_TTL).await;
    record("acquire d after expiry", ok("acquire d", s.acquire(&req("d", LONG_TTL)).await));
    let e = record("handover d->e", ok("handover d->e", s.handover(&req("e", LONG_TTL), &inc("d")).await));
    ok("release e", s.release(&name, &inc("e"), e).await);
    let e = record("handover of released", ok("handover f", s.handover(&req("f", LONG_TTL), &inc("zz")).await));
    let got = expect_row("get at the end", s.get(&name).await);
    assert_eq!(got.epoch, e, "get disagrees with the last answer");
}

async fn renew_many_decides_each_lease_like_renew(s: Arc<dyn LeaseStore>) {
    let none = ok("renew_many of an empty batch", s.renew_many(&[]).await);
    assert!(none.is_empty(), "an empty batch answered {none:?}");

    let valid = server("batch-valid");
    let stale = server("batch-stale");
    let stranger = server("batch-stranger");
    let expired = server("batch-expired");
    let missing = server("batch-missing");
    let released = server("batch-released");
    let last = server("batch-last");
    let ten_s = Duration::from_secs(10);
    let v = request(&valid, "ms1", "machine-a", "inc-valid", ten_s);
    ok("acquire valid", s.acquire(&v).await);
    // Handed over to a new incarnation (epoch 2); the batch renews at the old epoch.
    let st1 = request(&stale, "ms2", "machine-a", "inc-stale-1", LONG_TTL);
    ok("acquire stale", s.acquire(&st1).await);
    let st2 = request(&stale, "ms2", "machine-a", "inc-stale-2", LONG_TTL);
    ok("handover stale", s.handover(&st2, &st1.incarnation).await);
    let sr = request(&stranger, "ms3", "machine-b", "inc-stranger", LONG_TTL);
    ok("acquire stranger", s.acquire(&sr).await);
    let ex = request(&expired, "ms4", "machine-a", "inc-expired", SHORT_TTL);
    ok("acquire expired", s.acquire(&ex).await);
    let rl = request(&released, "ms5", "machine-a", "inc-released", LONG_TTL);
    ok("acquire released", s.acquire(&rl).await);
    ok("release released", s.release(&released, &rl.incarnation, Epoch(1)).await);
    let la = request(&last, "ms6", "machine-c", "inc-last", ten_s);
    ok("acquire last", s.acquire(&la).await);
    tokio::time::sleep(PAST_SHORT_TTL).await;

    let names = [&valid, &stale, &stranger, &expired, &missing, &released, &last];
    let mut before = Vec::new();
    for name in names {
        before.push(ok("get before the batch", s.get(name).await));
    }
    let renewal = |name: &LeaseName, incarnation: &str, epoch: u64| Renewal {
        name: name.clone(),
        incarnation: inc(incarnation),
        epoch: Epoch(epoch),
        ttl: LONG_TTL,
    };
    let batch = [
        renewal(&valid, "inc-valid", 1),
        renewal(&stale, "inc-stale-2", 1),
        renewal(&stranger, "inc-intruder", 1),
        renewal(&expired, "inc-expired", 1),
        renewal(&missing, "inc-missing", 1),
        renewal(&released, "inc-released", 1),
        renewal(&valid, "inc-valid", 1),
        // Another TTL in the same batch.
        Renewal { ttl: LONG_TTL * 2, ..renewal(&last, "inc-last", 1) },
    ];
    let outcomes = ok("renew_many of a mixed batch", s.renew_many(&batch).await);
    assert_eq!(outcomes.len(), batch.len(), "one outcome per renewal: {outcomes:?}");
    let mut refused = Vec::new();
    for (i, (r, outcome)) in batch.iter().zip(outcomes).enumerate() {
        let what = format!("renewal {i} ({}) of the batch", r.name);
        match i {
            0 | 6 | 7 => {
                let req = if i == 7 { &la } else { &v };
                let longer = AcquireRequest { ttl: r.ttl, ..req.clone() };
                let lease = ok(&what, outcome);
                assert_holds(&what, &lease, &longer, 1);
                let floor = ms(r.ttl) - LONG_TTL_MS / 2;
                assert!(
                    lease.remaining_ms > floor,
                    "{what}: a {} ms renewal left {} ms",
                    ms(r.ttl),
                    lease.remaining_ms
                );
                let got = expect_row(&format!("get after {what}"), s.get(&r.name).await);
                assert!(
                    got.remaining_ms > floor,
                    "{what}: the row has {} ms left after a {} ms renewal",
                    got.remaining_ms,
                    ms(r.ttl)
                );
            }
            _ => {
                let (incarnation, detail) = lost(&what, outcome);
                assert_eq!(incarnation, r.incarnation, "{what}: Lost names the wrong incarnation");
                refused.push((what, r, detail));
            }
        }
    }
    // Every refusal says what `renew` says about the same lease (expiry ages aside).
    for (what, r, detail) in refused {
        let (_, single) =
            lost(&format!("renew alone of {}", r.name), s.renew(&r.name, &r.incarnation, r.epoch, r.ttl).await);
        if r.name == expired {
            // "it expired N ms ago": N grows between the two calls.
            assert!(detail.contains("expired"), "{what}: {detail}");
            assert_eq!(without_numbers(&detail), without_numbers(&single), "{what}: the batch and renew disagree");
        } else {
            assert_eq!(detail, single, "{what}: the batch and renew disagree");
        }
    }
    // Refused rows are untouched: same holder, epoch and state; the expired one stays
    // expired, the missing one missing.
    for (name, old) in names.iter().zip(before) {
        let now = ok("get after the batch", s.get(name).await);
        if *name == &valid || *name == &last {
            let now = now.unwrap_or_else(|| panic!("{name} vanished"));
            assert_eq!(now.epoch, Epoch(1), "the batch changed the epoch of {name}");
            continue;
        }
        match (old, now) {
            (None, None) => {}
            (Some(old), Some(now)) => {
                assert_eq!(
                    (&now.owner, &now.incarnation, now.epoch, now.state),
                    (&old.owner, &old.incarnation, old.epoch, old.state),
                    "a refused renewal changed {name}"
                );
                assert!(
                    now.remaining_ms <= old.remaining_ms,
                    "a refused renewal extended {name}: {} -> {} ms",
                    old.remaining_ms,
                    now.remaining_ms
                );
                if *name == &expired {
                    assert!(now.is_expired(), "the batch revived {name}: {now:?}");
                }
            }
            (old, now) => panic!("{name} was {old:?} before the batch and is {now:?} after"),
        }
    }
}

async fn overlapping_batches_all_renew(s: Arc<dyn LeaseStore>) {
    const LEASES: usize = 12;
    const BATCHES: usize = 8;
    const ROUNDS: usize = 4;
    let mut renewals = Vec::new();
    for i in 0..LEASES {
        let name = server(&format!("shared-{i:02}"));
        let incarnation = format!("inc-shared-{i}");
        let req = request(&name, "ms1", "machine-a", &incarnation, LONG_TTL);
        ok("acquire", s.acquire(&req).await);
        renewals.push(Renewal { name, incarnation: inc(&incarnation), epoch: Epoch(1), ttl: LONG_TTL });
    }
    // Concurrent batches over the same rows in different orders: every renewal succeeds
    // (no deadlock between batches, no refusal of a live holder).
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for b in 0..BATCHES {
            let mut batch = renewals.clone();
            batch.rotate_left(b % LEASES);
            if b % 2 == 1 {
                batch.reverse();
            }
            let s = Arc::clone(&s);
            tasks.push(tokio::spawn(async move { (batch.clone(), s.renew_many(&batch).await) }));
        }
        for task in tasks {
            let (batch, outcomes) = task.await.unwrap_or_else(|e| panic!("round {round}: batch task failed: {e}"));
            let outcomes = ok(&format!("round {round}: renew_many"), outcomes);
            assert_eq!(outcomes.len(), batch.len(), "round {round}: outcomes");
            for (r, outcome) in batch.iter().zip(outcomes) {
                let lease = ok(&format!("round {round}: renewal of {}", r.name), outcome);
                assert_eq!(
                    (&lease.name, lease.epoch),
                    (&r.name, Epoch(1)),
                    "round {round}: outcomes out of order or epoch changed"
                );
            }
        }
    }
}

// ---- helpers ----

/// `text` with every run of digits replaced by `#`: Lost details name ages in ms.
fn without_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn server(name: &str) -> LeaseName {
    LeaseName::Server(ServerName::new(name).unwrap_or_else(|e| panic!("test name: {e}")))
}

fn master(cluster: &str) -> LeaseName {
    LeaseName::Master(ClusterName::new(cluster).unwrap_or_else(|e| panic!("test name: {e}")))
}

fn inc(s: &str) -> Incarnation {
    Incarnation(s.to_string())
}

fn request(name: &LeaseName, owner: &str, machine: &str, incarnation: &str, ttl: Duration) -> AcquireRequest {
    AcquireRequest {
        name: name.clone(),
        owner: ServerName::new(owner).unwrap_or_else(|e| panic!("test name: {e}")),
        machine: MachineName::new(machine).unwrap_or_else(|e| panic!("test name: {e}")),
        incarnation: inc(incarnation),
        ttl,
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The rows of `leases` whose names are in `names`, in the order given.
fn mine(leases: Vec<Lease>, names: &[&LeaseName]) -> Vec<Lease> {
    leases.into_iter().filter(|l| names.contains(&&l.name)).collect()
}

use ferry_core::chain;

#[track_caller]
fn ok<T>(what: &str, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: expected success, got: {}", chain(&e)))
}

#[track_caller]
fn expect_row(what: &str, r: Result<Option<Lease>>) -> Lease {
    ok(what, r).unwrap_or_else(|| panic!("{what}: the row is missing"))
}

/// Asserts `Held` and returns (owner, machine, epoch, remaining_ms).
#[track_caller]
fn held<T: Debug>(what: &str, r: Result<T>) -> (String, String, Epoch, i64) {
    match r {
        Err(StoreError::Held { owner, machine, epoch, remaining_ms, .. }) => (owner, machine, epoch, remaining_ms),
        Err(e) => panic!("{what}: expected Held, got: {}", chain(&e)),
        Ok(v) => panic!("{what}: expected Held, got success: {v:?}"),
    }
}

/// Asserts `Lost` and returns (incarnation, detail).
#[track_caller]
fn lost<T: Debug>(what: &str, r: Result<T>) -> (Incarnation, String) {
    match r {
        Err(StoreError::Lost { incarnation, detail, .. }) => (incarnation, detail),
        Err(e) => panic!("{what}: expected Lost, got: {}", chain(&e)),
        Ok(v) => panic!("{what}: expected Lost, got success: {v:?}"),
    }
}

/// Asserts that `lease` is `req`'s, live, at `epoch`, with sane times.
#[track_caller]
fn assert_holds(what: &str, lease: &Lease, req: &AcquireRequest, epoch: u64) {
    assert_eq!(lease.name, req.name, "{what}: name");
    assert_eq!(lease.owner.as_ref(), Some(&req.owner), "{what}: owner");
    assert_eq!(lease.machine.as_ref(), Some(&req.machine), "{what}: machine");
    assert_eq!(lease.incarnation.as_ref(), Some(&req.incarnation), "{what}: incarnation");
    assert_eq!(lease.epoch, Epoch(epoch), "{what}: epoch");
    assert_eq!(lease.state, LeaseState::Held, "{what}: state");
    let ttl_ms = ms(req.ttl);
    assert!(
        lease.remaining_ms > 0 && lease.remaining_ms <= ttl_ms,
        "{what}: {} ms left of a {ttl_ms} ms lease",
        lease.remaining_ms
    );
    assert!(
        (0..=ttl_ms).contains(&lease.since_renewal_ms),
        "{what}: since_renewal_ms {} with a {ttl_ms} ms TTL",
        lease.since_renewal_ms
    );
}
