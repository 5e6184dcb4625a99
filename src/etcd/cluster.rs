//! The running cluster as one member sees it while its own etcd is stopped: what the
//! initializer decides from (keep, join, restore, start fresh) and what `/config` tells etcd
//! (`initial-cluster`, `initial-cluster-state`). It asks the other members, never its own
//! (stopped) etcd: the endpoints are `--service-endpoints` and every other member's client URLs
//! from the etcd configuration.
//!
//! A member that has a leader and serves a linearizable read speaks for the cluster. Members that answer without one are
//! either still bootstrapping a new cluster (never had a leader: raft index at most the initial
//! membership, revision 1) or have lost quorum; the two call for opposite actions (join the
//! bootstrap / never bootstrap over a cluster that has data).

use crate::etcd::{self, EtcdConfig};
use std::time::Duration;

/// A member as the cluster lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) id: u64,
    /// Empty until the member has started once.
    pub(crate) name: String,
    pub(crate) peer_urls: Vec<String>,
    pub(crate) is_learner: bool,
}

/// What the other members say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum View {
    /// No member answered.
    Unreachable,
    /// Members answered but none has a leader. `bootstrapping`: every one of them is a new
    /// cluster that never had one.
    NoQuorum {
        answered: Vec<String>,
        bootstrapping: bool,
    },
    /// A member with a leader answered: the cluster's identity and members.
    Quorum {
        cluster_id: u64,
        members: Vec<Member>,
        endpoint: String,
    },
}

impl View {
    pub(crate) fn members(&self) -> Option<&[Member]> {
        match self {
            View::Quorum { members, .. } => Some(members),
            _ => None,
        }
    }

    /// The member with this name or one of these peer URLs.
    pub(crate) fn find(&self, name: &str, peer_urls: &[String]) -> Option<&Member> {
        self.members()?.iter().find(|m| {
            (!m.name.is_empty() && m.name == name)
                || m.peer_urls.iter().any(|u| peer_urls.contains(u))
        })
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            View::Unreachable => "no other member answers".into(),
            View::NoQuorum {
                answered,
                bootstrapping: true,
            } => format!(
                "{} answer(s), a new cluster still forming (no leader yet)",
                answered.join(", ")
            ),
            View::NoQuorum { answered, .. } => format!(
                "{} answer(s) without a leader: the cluster has lost quorum",
                answered.join(", ")
            ),
            View::Quorum {
                cluster_id,
                members,
                endpoint,
            } => format!(
                "cluster {cluster_id:x} with a leader ({} members, via {endpoint})",
                members.len()
            ),
        }
    }
}

/// Asks each endpoint once (bounded by the connection timeout, at most 3 s per call).
/// `initial_members`: the size of the configured initial cluster (a bootstrapping member's raft
/// index does not exceed it).
pub(crate) async fn observe(cfg: &EtcdConfig, initial_members: usize) -> View {
    let t = cfg.connection_timeout.min(Duration::from_secs(3));
    let mut c = cfg.clone();
    c.connection_timeout = t;
    let mut answered = Vec::new();
    let mut bootstrapping = true;
    for ep in &cfg.endpoints {
        let Ok(mut client) = etcd::connect_one(&c, ep).await else {
            continue;
        };
        let Ok(st) = etcd::call(ep, "status", t, client.status()).await else {
            continue;
        };
        let header = st.header();
        let revision = header.map(|h| h.revision()).unwrap_or(0);
        if st.leader() == 0 {
            answered.push(ep.clone());
            bootstrapping &= st.raft_index() <= initial_members as u64 && revision <= 1;
            continue;
        }
        // a follower reports its leader for up to an election timeout after losing it: only a
        // linearizable read proves a quorum now
        let probe = client.get(
            "\0etcdbr-quorum-probe",
            Some(etcd_client::GetOptions::new().with_count_only()),
        );
        if etcd::call(ep, "linearizable read", t, probe).await.is_err() {
            answered.push(ep.clone());
            bootstrapping = false;
            continue;
        }
        let Ok(list) = etcd::call(ep, "member list", t, client.member_list()).await else {
            continue;
        };
        return View::Quorum {
            cluster_id: header.map(|h| h.cluster_id()).unwrap_or(0),
            members: list
                .members()
                .iter()
                .map(|m| Member {
                    id: m.id(),
                    name: m.name().to_string(),
                    peer_urls: m.peer_urls().to_vec(),
                    is_learner: m.is_learner(),
                })
                .collect(),
            endpoint: ep.clone(),
        };
    }
    if answered.is_empty() {
        View::Unreachable
    } else {
        View::NoQuorum {
            answered,
            bootstrapping,
        }
    }
}

/// Observes up to `tries` times, 1 s apart, until a member with a leader answers.
pub(crate) async fn observe_until_quorum(
    cfg: &EtcdConfig,
    initial_members: usize,
    tries: usize,
) -> View {
    let mut view = View::Unreachable;
    for i in 0..tries.max(1) {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        view = observe(cfg, initial_members).await;
        if matches!(view, View::Quorum { .. }) {
            break;
        }
    }
    view
}
