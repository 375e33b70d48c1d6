//! A lease call as it travels to the leader (in this process or over HTTP), and its answer.
//! The leader runs it with [`Voter::answer`]; every voter answers the same way.

use std::time::Duration;

use ferry_core::lease::Lease;
use ferry_core::{Epoch, Incarnation, LeaseName};
use ferry_store::rules::Take;
use ferry_store::{AcquireRequest, StoreError};
use serde::{Deserialize, Serialize};

use crate::voter::{Local, Voter};

/// One `LeaseStore` call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Call {
    Acquire(AcquireRequest),
    Handover { req: AcquireRequest, from: Incarnation },
    Renew { name: LeaseName, incarnation: Incarnation, epoch: Epoch, ttl: Duration },
    Release { name: LeaseName, incarnation: Incarnation, epoch: Epoch },
    List,
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    Lease(Lease),
    Leases(Vec<Lease>),
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
            Call::List => self.leases().map(Answer::Leases),
        };
        Answer::of(result)
    }
}
