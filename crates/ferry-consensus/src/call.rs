//! A lease call as it travels to the leader (in this process or over HTTP), and its answer.
//! The leader runs it with [`Voter::answer`]; every voter answers the same way.

use std::time::Duration;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName};
use ferry_store::rules::Take;
use ferry_store::{AcquireRequest, Renewal, StoreError};
use serde::{Deserialize, Serialize};

use crate::voter::{Local, Voter};

/// One `LeaseStore` call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Call {
    Acquire(AcquireRequest),
    Handover {
        req: AcquireRequest,
        from: Incarnation,
    },
    Renew {
        name: LeaseName,
        incarnation: Incarnation,
        epoch: Epoch,
        ttl: Duration,
    },
    Release {
        name: LeaseName,
        incarnation: Incarnation,
        epoch: Epoch,
    },
    /// Several renewals in one call, each decided as `Renew` (a Node Manager's batch).
    RenewMany(Vec<Renewal>),
    List,
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    Lease(Lease),
    Leases(Vec<Lease>),
    /// One outcome per renewal of a `RenewMany`, in order.
    Renewed(Vec<Answer>),
    Done,
    /// Not answered here (not the leader, not serving yet, deposed): try again.
    Retry(String),
    Held {
        name: LeaseName,
        owner: String,
        machine: String,
        epoch: Epoch,
        remaining_ms: i64,
    },
    Lost {
        name: LeaseName,
        incarnation: Incarnation,
        detail: String,
    },
    /// Anything else the store refused with, in words.
    Failed(String),
}

impl Answer {
    /// From a voter's local result.
    pub(crate) fn of(result: Result<Answer, Local>) -> Answer {
        match result {
            Ok(a) => a,
            Err(Local::Retry(why)) => Answer::Retry(why.to_string()),
            Err(Local::Store(StoreError::Held { name, owner, machine, epoch, remaining_ms })) => {
                Answer::Held { name, owner, machine, epoch, remaining_ms }
            }
            Err(Local::Store(StoreError::Lost { name, incarnation, detail })) => {
                Answer::Lost { name, incarnation, detail }
            }
            Err(Local::Store(other)) => Answer::Failed(ferry_core::chain(&other)),
        }
    }
}

impl Voter {
    /// Runs `call` here, as the leader would.
    pub async fn answer(&self, call: &Call) -> Answer {
        let result = match call {
            Call::Acquire(req) => self.take(req, Take::Acquire).await.map(Answer::Lease),
            Call::Handover { req, from } => self.take(req, Take::Handover(from)).await.map(Answer::Lease),
            Call::Renew { name, incarnation, epoch, ttl } => {
                self.renew(name, incarnation, *epoch, *ttl).await.map(Answer::Lease)
            }
            Call::Release { name, incarnation, epoch } => {
                self.release(name, incarnation, *epoch).await.map(|()| Answer::Done)
            }
            Call::RenewMany(renewals) => {
                let mut each = Vec::with_capacity(renewals.len());
                for r in renewals {
                    let one = self.renew(&r.name, &r.incarnation, r.epoch, r.ttl).await;
                    // Not the leader (any more): the batch as a whole is tried again.
                    if let Err(Local::Retry(why)) = one {
                        return Answer::Retry(why.to_string());
                    }
                    each.push(Answer::of(one.map(Answer::Lease)));
                }
                Ok(Answer::Renewed(each))
            }
            Call::List => self.leases().map(Answer::Leases),
        };
        Answer::of(result)
    }
}
