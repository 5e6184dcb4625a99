//! Leadership: only the sidecar of the etcd leader writes snapshots. The role is read from
//! `Status(endpoints[0])` (leader id == this member's id), as etcdbrctl does.
//!
//! Two sidecars must never write deltas for the same revisions (etcdbrctl bug #1043). Polling
//! alone leaves a window after a leader change where the old leader's sidecar still writes, so
//! every write is fenced: the job checks the role again just before it commits an object
//! ([`Fence::check`]), checks that the store's chain still ends where its own does before it
//! uploads a delta, and a sidecar that becomes leader waits one re-election period before it
//! reads the store (the old leader's sidecar has by then seen the change or finished its commit).

use crate::error::{Error, Result};
use crate::etcd;
use etcd_client::Client;
use std::time::Duration;

/// This member's view of the cluster, from one Status call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Role {
    pub(crate) member_id: u64,
    pub(crate) leader_id: u64,
    pub(crate) raft_term: u64,
    pub(crate) revision: i64,
    pub(crate) is_learner: bool,
}

impl Role {
    pub(crate) fn is_leader(&self) -> bool {
        self.leader_id != 0 && self.leader_id == self.member_id
    }
}

/// Reads the role of the member at `endpoint`; a cluster without leader is an error.
pub(crate) async fn probe(client: &mut Client, endpoint: &str, timeout: Duration) -> Result<Role> {
    let s = etcd::call(endpoint, "status", timeout, client.status()).await?;
    let header = s
        .header()
        .ok_or_else(|| Error::etcd_protocol(endpoint, "status response without a header"))?;
    if s.leader() == 0 {
        return Err(Error::Cluster(format!(
            "etcd {endpoint} has no leader (lost quorum?)"
        )));
    }
    Ok(Role {
        member_id: header.member_id(),
        leader_id: s.leader(),
        raft_term: s.raft_term(),
        revision: header.revision(),
        is_learner: s.is_learner(),
    })
}

/// Whether writes must be fenced by leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// The `snapshot` command: one sidecar by construction, no leader election.
    None,
    /// The `server` command: write only while this member is the leader.
    Leader,
}

impl Fence {
    /// Fails with [`Error::Fenced`] unless this sidecar may write now.
    pub(crate) async fn check(self, client: &mut Client, endpoint: &str, what: &str) -> Result<()> {
        if self == Fence::None {
            return Ok(());
        }
        let role = probe(client, endpoint, Duration::from_secs(5))
            .await
            .map_err(|e| Error::Fenced(format!("{what}: cannot confirm leadership ({e})")))?;
        if !role.is_leader() {
            return Err(Error::Fenced(format!(
                "{what}: etcd {endpoint} (member {:x}) is no longer the leader (leader {:x})",
                role.member_id, role.leader_id
            )));
        }
        Ok(())
    }
}
