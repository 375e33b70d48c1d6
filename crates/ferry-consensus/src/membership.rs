//! A voter's membership calls: what it says about itself ([`Hello`]), and, at the leader,
//! admitting a voter ([`ferry_core::voters::after_join`]) or letting one leave
//! ([`ferry_core::voters::after_leave`]). A member's node is its *name* (a machine, or the
//! witness); where that name listens is the [`crate::http::Directory`]'s business.

use ferry_core::voters::{self, Hello, Members};
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};

use crate::voter::Voter;

impl Voter {
    /// The voters of the cluster this voter knows, by id with their names; `None` before it
    /// belongs to one.
    pub fn members(&self) -> Option<Members> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let members: Members = membership
            .voter_ids()
            .map(|v| (v, membership.get_node(&v).map_or_else(|| v.to_string(), |n| n.addr.clone())))
            .collect();
        (!members.is_empty()).then_some(members)
    }

    /// The address (name) of voter `id`'s node in the membership, voter or learner.
    pub fn node_addr(&self, id: u64) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// The term this voter is in.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// What this voter, named `name`, says about itself.
    pub fn hello(&self, name: &str) -> Hello {
        Hello {
            id: self.id,
            name: name.to_string(),
            members: self.members(),
            leader: self.current_leader(),
            term: self.term(),
        }
    }

    /// At the leader: makes `id` (named `name`) a voter, in place of any earlier id of the
    /// same name. Returns the new voters.
    pub async fn admit(&self, id: u64, name: &str) -> Result<Members, String> {
        if self.current_leader() != Some(self.id) {
            return Err("not the cluster leader".into());
        }
        let members = self.members().unwrap_or_default();
        if members.get(&id).is_some_and(|n| n == name) {
            return Ok(members);
        }
        self.raft
            .add_learner(id, BasicNode::new(name), true)
            .await
            .map_err(|e| format!("adding {name} ({id}) as a learner: {e}"))?;
        let voters = voters::after_join(&members, id, name);
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map_err(|e| format!("making {name} ({id}) a voter: {e}"))?;
        Ok(self.members().unwrap_or_default())
    }

    /// At the leader: `id` stops being a voter (it left cleanly). Returns the new voters.
    pub async fn dismiss(&self, id: u64) -> Result<Members, String> {
        if self.current_leader() != Some(self.id) {
            return Err("not the cluster leader".into());
        }
        let members = self.members().unwrap_or_default();
        if !members.contains_key(&id) {
            return Ok(members);
        }
        let voters = voters::after_leave(&members, id)?;
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
            .await
            .map_err(|e| format!("removing voter {id}: {e}"))?;
        Ok(self.members().unwrap_or_default())
    }
}
