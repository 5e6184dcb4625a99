//! The etcd configuration file shared with the etcd container (`etcd.conf.yaml`) and its
//! rewrite for one member, served at `/config` (etcdbrctl's rules): `name` is this member;
//! `initial-advertise-peer-urls` and `advertise-client-urls`, when they map member names to URL
//! lists, become this member's URLs joined with `,`; in a multi-member cluster `initial-cluster`
//! keeps only the members etcd lists (plus this one) and `initial-cluster-state` is `existing`
//! when a learner is listed (a member being re-added), else `new`.

use crate::error::{Error, Result};
use serde_yaml_ng::{Mapping, Value};
use std::path::Path;

/// A member as etcd lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMember {
    pub name: String,
    pub is_learner: bool,
}

pub fn read(path: &Path) -> Result<Mapping> {
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
pub fn initial_cluster(m: &Mapping) -> Vec<(String, String)> {
    get_str(m, "initial-cluster")
        .unwrap_or("")
        .split(',')
        .filter_map(|e| {
            let (n, u) = e.trim().split_once('=')?;
            Some((n.to_string(), u.to_string()))
        })
        .collect()
}

/// Every member's client URLs from `advertise-client-urls` (a map member -> URLs, or a list).
pub fn all_client_urls(m: &Mapping) -> Vec<String> {
    let joined: Vec<String> = match m.get("advertise-client-urls") {
        Some(Value::Mapping(map)) => map.values().filter_map(urls).collect(),
        Some(v) => urls(v).into_iter().collect(),
        None => Vec::new(),
    };
    joined
        .iter()
        .flat_map(|j| j.split(','))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
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

/// Rewrites the configuration for `member`; `listed` is etcd's member list when it could be
/// read (`None`: etcd unreachable, the file's cluster is kept and the state is `new`).
pub fn rewrite(mut m: Mapping, member: &str, listed: Option<&[ListedMember]>) -> Result<Mapping> {
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
        if let Some(list) = listed.filter(|l| !l.is_empty()) {
            let kept: Vec<String> = cluster
                .iter()
                .filter(|(n, _)| n == member || list.iter().any(|l| &l.name == n))
                .map(|(n, u)| format!("{n}={u}"))
                .collect();
            m.insert("initial-cluster".into(), kept.join(",").into());
            if list.iter().any(|l| l.is_learner) {
                state = "existing";
            }
        }
    }
    m.insert("initial-cluster-state".into(), state.into());
    Ok(m)
}

pub fn to_yaml(m: &Mapping) -> Result<String> {
    serde_yaml_ng::to_string(m)
        .map_err(|e| Error::Other(format!("cannot encode the etcd configuration: {e}")))
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
    fn a_member_being_readded_joins_the_existing_cluster() {
        let listed = [
            ListedMember {
                name: "etcd-main-0".into(),
                is_learner: false,
            },
            ListedMember {
                name: "etcd-main-2".into(),
                is_learner: false,
            },
            ListedMember {
                name: String::new(), // a learner not started yet has no name
                is_learner: true,
            },
        ];
        let m = rewrite(parse(), "etcd-main-1", Some(&listed)).expect("rewrite");
        assert_eq!(get_str(&m, "initial-cluster-state"), Some("existing"));
        assert_eq!(initial_cluster(&m).len(), 3);
        let m = rewrite(parse(), "etcd-main-1", Some(&listed[..1])).expect("rewrite");
        assert_eq!(
            initial_cluster(&m)
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["etcd-main-0", "etcd-main-1"]
        );
        assert_eq!(get_str(&m, "initial-cluster-state"), Some("new"));
        assert!(rewrite(parse(), "nobody", None).is_err());
    }
}
