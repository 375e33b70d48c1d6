//! Consensus leasing's membership: which voters a domain has, and how one voter finds its
//! place among them. Every Node Manager (and a `ferry witness`) runs one voter; at start and
//! until it is a member it asks the others who they are ([`Hello`]) and takes the [`Step`]
//! [`step`] decides. The leader changes the membership with [`after_join`] and
//! [`after_leave`]. Nothing here talks to anyone: the voters' transport lives in
//! `ferry-consensus`, the loop in the Node Manager.
//!
//! - **One cluster, started once.** Only the *bootstrapper* (the domain's first voter) starts
//!   a cluster, and only when a majority of the domain's voters answered and none of them
//!   knows a cluster already. Everyone else joins the cluster that exists.
//! - **A voter's identity is its data.** An id is drawn when a voter's data directory is new,
//!   and kept with its vote and log. A voter that lost its data comes back with a new id, and
//!   the leader replaces the old id of the same name by the new one ([`after_join`]): the old
//!   identity's vote and log are gone, so it must never count again.
//! - **A voter that leaves cleanly stops counting against the majority** ([`after_leave`]),
//!   as the seed's cleanly shut down server does; it joins again at its next start.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Voters by id, with the name of the voter (a machine, or the witness) each id belongs to.
pub type Members = BTreeMap<u64, String>;

/// What a voter says about itself when asked (`GET /raft/v1/hello`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub id: u64,
    /// The voter's name: its machine, or the witness's name.
    pub name: String,
    /// The voters of the cluster this voter knows, if it knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Members>,
    /// The voter it believes leads, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    #[serde(default)]
    pub term: u64,
}

/// What a voter that is not yet a member does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// It is a voter of the cluster: nothing to do.
    Member,
    /// Start the cluster with these voters.
    Initialize(Members),
    /// Ask voter `leader` (named `name`) to admit it.
    Join { leader: u64, name: String },
    /// Ask again later, for this reason.
    Wait(String),
}

/// The next step for voter `me`, given what the voters that answered said (`answers`, not
/// including `me`), the domain's voter names (`roster`, the bootstrapper first).
pub fn step(me: &Hello, answers: &[Hello], roster: &[String]) -> Step {
    // The leader's own word about who is a member, the newest term first: a voter that left
    // cleanly may have stopped before its log learned it was taken out, and would otherwise
    // believe itself a member that no leader ever contacts.
    let leading = answers
        .iter()
        .filter(|h| h.leader == Some(h.id))
        .filter_map(|h| h.members.as_ref().map(|m| (h, m)))
        .max_by_key(|(h, _)| h.term);
    if let Some((leader, members)) = leading {
        if members.contains_key(&me.id) {
            return Step::Member;
        }
        return Step::Join { leader: leader.id, name: leader.name.clone() };
    }
    if me.members.as_ref().is_some_and(|m| m.contains_key(&me.id)) {
        return Step::Member;
    }
    // A cluster someone knows: join it through its leader.
    let known = std::iter::once(me).chain(answers).filter_map(|h| h.members.as_ref().map(|m| (h, m)));
    let mut any_cluster = false;
    for (h, members) in known {
        any_cluster = true;
        if let Some(leader) = h.leader.filter(|l| members.contains_key(l)) {
            let name = members[&leader].clone();
            return Step::Join { leader, name };
        }
    }
    if any_cluster {
        return Step::Wait("the cluster has no leader at the moment".into());
    }
    let Some(bootstrapper) = roster.first() else {
        return Step::Wait("the domain names no voters".into());
    };
    if *bootstrapper != me.name {
        return Step::Wait(format!("waiting for {bootstrapper} (the domain's first machine) to start the cluster"));
    }
    let mut members: Members = answers
        .iter()
        .filter(|h| roster.contains(&h.name) && h.name != me.name)
        .map(|h| (h.id, h.name.clone()))
        .collect();
    members.insert(me.id, me.name.clone());
    let names: BTreeSet<&String> = members.values().collect();
    if names.len() * 2 > roster.len() {
        Step::Initialize(members)
    } else {
        Step::Wait(format!(
            "{} of the domain's {} voters answered; a majority is needed to start the cluster",
            names.len(),
            roster.len()
        ))
    }
}

/// The voters after `id` (named `name`) joins: it, and every voter of another name (an
/// earlier id of the same name lost its data and never counts again).
pub fn after_join(members: &Members, id: u64, name: &str) -> BTreeSet<u64> {
    members.iter().filter(|(_, n)| n.as_str() != name).map(|(&v, _)| v).chain([id]).collect()
}

/// The voters after `id` leaves, or why it may not: the last voter stays.
pub fn after_leave(members: &Members, id: u64) -> Result<BTreeSet<u64>, String> {
    if !members.contains_key(&id) {
        return Err(format!("voter {id} is not a member"));
    }
    let rest: BTreeSet<u64> = members.keys().copied().filter(|&v| v != id).collect();
    if rest.is_empty() {
        return Err("it is the cluster's last voter: it stays a member, so the lease table outlives it".into());
    }
    Ok(rest)
}

/// The cluster as the voters that answered describe it (the operator's view): the leader
/// named in the highest term anyone answered with, and the membership of that leader's own
/// answer when it gave one, else the newest one seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub leader: Option<(u64, String)>,
    pub term: u64,
    pub members: Members,
}

pub fn view(answers: &[Hello]) -> ClusterView {
    let term = answers.iter().map(|h| h.term).max().unwrap_or(0);
    let current: Vec<&Hello> = answers.iter().filter(|h| h.term == term).collect();
    let leader_id = current.iter().find_map(|h| h.leader);
    let own = leader_id.and_then(|l| answers.iter().find(|h| h.id == l && h.members.is_some()));
    let members = own
        .or_else(|| current.iter().copied().find(|h| h.members.is_some()))
        .or_else(|| answers.iter().filter(|h| h.members.is_some()).max_by_key(|h| h.term))
        .and_then(|h| h.members.clone())
        .unwrap_or_default();
    let leader = leader_id.map(|l| {
        let name = members
            .get(&l)
            .cloned()
            .or_else(|| answers.iter().find(|h| h.id == l).map(|h| h.name.clone()))
            .unwrap_or_else(|| l.to_string());
        (l, name)
    });
    ClusterView { leader, term, members }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: u64, name: &str, members: Option<&[(u64, &str)]>, leader: Option<u64>) -> Hello {
        Hello {
            id,
            name: name.into(),
            members: members.map(|m| m.iter().map(|&(i, n)| (i, n.to_string())).collect()),
            leader,
            term: 1,
        }
    }

    fn roster() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    #[test]
    fn the_bootstrapper_starts_with_a_majority_and_nobody_else_does() {
        let a = hello(11, "a", None, None);
        let b = hello(22, "b", None, None);
        assert!(matches!(step(&a, &[], &roster()), Step::Wait(w) if w.contains("1 of the domain's 3")));
        let Step::Initialize(m) = step(&a, std::slice::from_ref(&b), &roster()) else { panic!() };
        assert_eq!(m, [(11, "a".to_string()), (22, "b".to_string())].into());
        assert!(matches!(step(&b, std::slice::from_ref(&a), &roster()), Step::Wait(w) if w.contains("waiting for a")));
    }

    #[test]
    fn the_leaders_membership_outranks_a_voters_own_log() {
        // c left cleanly, but stopped before its log had the change that took it out.
        let c = hello(33, "c", Some(&[(11, "a"), (22, "b"), (33, "c")]), None);
        let a = hello(11, "a", Some(&[(11, "a"), (22, "b")]), Some(11));
        let b = hello(22, "b", Some(&[(11, "a"), (22, "b")]), Some(11));
        assert_eq!(step(&c, &[a.clone(), b.clone()], &roster()), Step::Join { leader: 11, name: "a".into() });
        // Without the leader's answer its own log is all it has.
        assert_eq!(step(&c, std::slice::from_ref(&b), &roster()), Step::Member);
        // A member by the leader's word is one.
        let a3 = hello(11, "a", Some(&[(11, "a"), (22, "b"), (33, "c")]), Some(11));
        assert_eq!(step(&c, &[a3], &roster()), Step::Member);
        // Of two voters that claim to lead, the newer term's word counts.
        let old = Hello { term: 1, ..hello(22, "b", Some(&[(11, "a"), (22, "b"), (33, "c")]), Some(22)) };
        let new = Hello { term: 2, ..a };
        assert_eq!(step(&c, &[old, new], &roster()), Step::Join { leader: 11, name: "a".into() });
    }

    #[test]
    fn a_voter_outside_a_known_cluster_joins_through_its_leader() {
        let c = hello(33, "c", None, None);
        let a = hello(11, "a", Some(&[(11, "a"), (22, "b")]), Some(22));
        assert_eq!(step(&c, &[a], &roster()), Step::Join { leader: 22, name: "b".into() });
        // The bootstrapper that lost its data does not start a second cluster.
        let fresh_a = hello(44, "a", None, None);
        let b = hello(22, "b", Some(&[(11, "a"), (22, "b")]), None);
        assert!(matches!(step(&fresh_a, &[b], &roster()), Step::Wait(w) if w.contains("no leader")));
        // One that left cleanly knows the cluster, not itself in it.
        let left = hello(33, "c", Some(&[(11, "a"), (22, "b")]), Some(11));
        assert_eq!(step(&left, &[], &roster()), Step::Join { leader: 11, name: "a".into() });
        let member = hello(22, "b", Some(&[(11, "a"), (22, "b")]), Some(11));
        assert_eq!(step(&member, &[], &roster()), Step::Member);
    }

    #[test]
    fn the_view_names_the_leader_of_the_highest_term() {
        let abc: &[(u64, &str)] = &[(11, "a"), (22, "b"), (33, "c")];
        // c is partitioned away and still believes in an old leader a.
        let answers = [
            hello(11, "a", Some(abc), Some(22)),
            Hello { term: 5, ..hello(22, "b", Some(abc), Some(22)) },
            Hello { term: 1, ..hello(33, "c", Some(abc), Some(11)) },
        ];
        let mut answers = answers.to_vec();
        answers[0].term = 5;
        let v = view(&answers);
        assert_eq!((v.leader, v.term, v.members.len()), (Some((22, "b".to_string())), 5, 3));
        assert_eq!(view(&[]), ClusterView::default());
    }

    #[test]
    fn a_new_identity_replaces_the_old_one_of_the_same_name() {
        let m: Members = [(11, "a".to_string()), (22, "b".to_string()), (33, "c".to_string())].into();
        assert_eq!(after_join(&m, 44, "a"), [22, 33, 44].into());
        assert_eq!(after_join(&m, 55, "w"), [11, 22, 33, 55].into());
        assert_eq!(after_leave(&m, 22), Ok([11, 33].into()));
        assert!(after_leave(&[(11, "a".to_string())].into(), 11).is_err());
        assert!(after_leave(&m, 99).is_err());
    }
}
