//! Random interleavings of acquire, handover, renew, release and expiry from several actors,
//! checked against a model of the rules (a property test).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_core::lease::LeaseState;
use ferry_core::{Epoch, Incarnation, LeaseName, MachineName, ServerName};
use ferry_store::postgres::PostgresStore;
use ferry_store::{AcquireRequest, LeaseStore, StoreError};
use ferry_testkit::PgServer;
use proptest::prelude::*;
use tokio::time::Instant;

use super::{open_and_init, runtime};
use crate::common::{chain, server};

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
