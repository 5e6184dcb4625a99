//! The etcd configuration file shared with the etcd container (`etcd.conf.yaml`) and its
//! rewrite for one member, served at `/config` (etcdbrctl's rules): `name` is this member;
//! `initial-advertise-peer-urls` and `advertise-client-urls`, when they map member names to URL
//! lists, become this member's URLs joined with `,`. In a multi-member cluster the other
//! members are asked (module `cluster`; etcdbrctl asked this member's own etcd, which is
//! stopped while the bootstrap script fetches `/config`): when a member with a leader answers,
//! this member joins a running cluster: `initial-cluster` is the members it lists (plus this
//! one) and `initial-cluster-state` is `existing`; otherwise the file's cluster and `new` (a new
//! cluster forming, or a member restarting on its own data, where etcd ignores both).

use crate::error::{Error, Result};
use crate::etcd::cluster::Member;
use serde_yaml_ng::{Mapping, Value};
use std::path::Path;

pub(crate) fn read(path: &Path) -> Result<Mapping> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            path,
            "read the etcd configuration (set --etcd-config or ETCD_CONF)",
            e,
        )
    })?;
    match serde_yaml_ng::from_str::<Value>(&text) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(_) => Err(Error::config(format!(
            "{}: the etcd configuration is not a YAML mapping",
            path.display()
        ))),
        Err(e) => Err(Error::config(format!(
            "{}: not valid YAML: {e}",
            path.display()
        ))),
    }
}

fn get_str<'a>(m: &'a Mapping, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// The `name=url` entries of `initial-cluster`.
pub(crate) fn initial_cluster(m: &Mapping) -> Vec<(String, String)> {
    get_str(m, "initial-cluster")
        .unwrap_or("")
        .split(',')
        .filter_map(|e| {
            let (n, u) = e.trim().split_once('=')?;
            Some((n.to_string(), u.to_string()))
        })
        .collect()
}

/// URLs as one comma-separated string, from a string or a list.
fn urls(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Sequence(seq) => Some(
            seq.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => None,
    }
}

/// A member's URLs from a value that is either URLs or a map member -> URLs.
fn member_urls(v: &Value, member: &str) -> Option<String> {
    match v {
        Value::Mapping(map) => urls(map.get(member)?),
        other => urls(other),
    }
}

/// Every other member's client URLs (`advertise-client-urls` as a map member -> URLs).
pub(crate) fn other_client_urls(m: &Mapping, me: &str) -> Vec<String> {
    match m.get("advertise-client-urls") {
        Some(Value::Mapping(map)) => map
            .iter()
            .filter(|(k, _)| k.as_str() != Some(me))
            .filter_map(|(_, v)| urls(v))
            .flat_map(|j| {
                j.split(',')
                    .map(|u| u.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|u| !u.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// Rewrites the configuration for `member`; `running`: the members of the running cluster when
/// one with a leader answered.
pub(crate) fn rewrite(mut m: Mapping, member: &str, running: Option<&[Member]>) -> Result<Mapping> {
    m.insert("name".into(), member.into());
    for key in ["initial-advertise-peer-urls", "advertise-client-urls"] {
        if let Some(v) = m.get(key) {
            let urls = member_urls(v, member).ok_or_else(|| {
                Error::config(format!(
                    "etcd configuration: {key} has no entry for member {member:?}"
                ))
            })?;
            m.insert(key.into(), urls.into());
        }
    }
    let cluster = initial_cluster(&m);
    let mut state = "new";
    if cluster.len() > 1 {
        if let Some(list) = running.filter(|l| !l.is_empty()) {
            let my_urls: Vec<String> = get_str(&m, "initial-advertise-peer-urls")
                .unwrap_or("")
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            // etcd checks that initial-cluster names exactly the running cluster's peer URLs
            let mut entries = Vec::new();
            let mut listed_me = false;
            for l in list {
                let mine = l.name == member || l.peer_urls.iter().any(|u| my_urls.contains(u));
                listed_me |= mine;
                let name = if mine { member } else { l.name.as_str() };
                if name.is_empty() {
                    continue; // another member added but never started: it has no name yet
                }
                entries.extend(l.peer_urls.iter().map(|u| format!("{name}={u}")));
            }
            if !listed_me {
                entries.extend(my_urls.iter().map(|u| format!("{member}={u}")));
            }
            m.insert("initial-cluster".into(), entries.join(",").into());
            state = "existing";
        }
    }
    m.insert("initial-cluster-state".into(), state.into());
    Ok(m)
}

pub(crate) fn to_yaml(m: &Mapping) -> Result<String> {
    serde_yaml_ng::to_string(m)
        .map_err(|e| Error::Internal(format!("cannot encode the etcd configuration: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "name: etcd-main\n\
data-dir: /var/etcd/data/new.etcd\n\
initial-cluster: etcd-main-0=https://etcd-main-0.p:2380,etcd-main-1=https://etcd-main-1.p:2380,etcd-main-2=https://etcd-main-2.p:2380\n\
initial-advertise-peer-urls:\n  etcd-main-0: [https://etcd-main-0.p:2380]\n  etcd-main-1: [https://etcd-main-1.p:2380]\n  etcd-main-2: [https://etcd-main-2.p:2380]\n\
advertise-client-urls:\n  etcd-main-1: [https://etcd-main-1.c:2379, https://x:2379]\n\
initial-cluster-state: new\n";

    fn parse() -> Mapping {
        match serde_yaml_ng::from_str::<Value>(CONF).expect("yaml") {
            Value::Mapping(m) => m,
            _ => panic!("not a mapping"),
        }
    }

    #[test]
    fn rewrites_for_one_member() {
        let m = rewrite(parse(), "etcd-main-1", None).expect("rewrite");
        assert_eq!(get_str(&m, "name"), Some("etcd-main-1"));
        assert_eq!(
            get_str(&m, "initial-advertise-peer-urls"),
            Some("https://etcd-main-1.p:2380")
        );
        assert_eq!(
            get_str(&m, "advertise-client-urls"),
            Some("https://etcd-main-1.c:2379,https://x:2379")
        );
        assert_eq!(initial_cluster(&m).len(), 3);
        assert_eq!(get_str(&m, "initial-cluster-state"), Some("new"));
        assert_eq!(
            get_str(&m, "data-dir"),
            Some("/var/etcd/data/new.etcd"),
            "other keys are kept"
        );
    }

    #[test]
    fn a_member_joining_a_running_cluster_is_told_existing() {
        let m = |name: &str, url: &str, learner: bool| Member {
            id: 1,
            name: name.into(),
            peer_urls: vec![url.into()],
            is_learner: learner,
        };
        // re-added as a learner, not started yet (no name)
        let listed = [
            m("etcd-main-0", "https://etcd-main-0.p:2380", false),
            m("etcd-main-2", "https://etcd-main-2.p:2380", false),
            m("", "https://etcd-main-1.p:2380", true),
        ];
        let out = rewrite(parse(), "etcd-main-1", Some(&listed)).expect("rewrite");
        assert_eq!(get_str(&out, "initial-cluster-state"), Some("existing"));
        assert_eq!(
            get_str(&out, "initial-cluster"),
            Some("etcd-main-0=https://etcd-main-0.p:2380,etcd-main-2=https://etcd-main-2.p:2380,etcd-main-1=https://etcd-main-1.p:2380")
        );
        // a cluster of one (restored by the first member): the others join it one by one
        let out = rewrite(parse(), "etcd-main-1", Some(&listed[..1])).expect("rewrite");
        assert_eq!(
            get_str(&out, "initial-cluster"),
            Some("etcd-main-0=https://etcd-main-0.p:2380,etcd-main-1=https://etcd-main-1.p:2380")
        );
        assert_eq!(get_str(&out, "initial-cluster-state"), Some("existing"));
        // nobody with a leader answers: the file's cluster, new
        let out = rewrite(parse(), "etcd-main-1", None).expect("rewrite");
        assert_eq!(initial_cluster(&out).len(), 3);
        assert_eq!(get_str(&out, "initial-cluster-state"), Some("new"));
        assert!(rewrite(parse(), "nobody", None).is_err());
        let conf = parse();
        assert_eq!(
            other_client_urls(&conf, "etcd-main-1"),
            Vec::<String>::new(),
            "only etcd-main-1 has client URLs in this file"
        );
        assert_eq!(other_client_urls(&conf, "etcd-main-0").len(), 2);
    }
}
