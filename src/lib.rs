//! etcdbr: a backup-restore sidecar for etcd, compatible with gardener's etcdbrctl.
//!
//! Data flows one way: etcd -> [`fullsnap`] / [`deltasnap`] -> [`codec`] -> [`store`], and
//! [`store`] -> [`codec`] -> [`restore`] -> data dir. Each module is named after the domain
//! concept it implements:
//!
//! * [`layout`]: snapshot object names, parsing, ordering and the "latest snapshot set";
//! * [`codec`], [`pdeflate`], [`lzw`]: the compression policies (gzip, zlib, lzw, zstd), their
//!   suffixes, and gzip/zlib on every core;
//! * [`store`]: the object stores (Local directory, S3, GCS, ABS) and their credentials;
//! * [`etcd`], [`leader`]: connecting to etcd; which member leads (and fencing writes);
//! * [`fullsnap`], [`snaprev`]: streaming a verified full snapshot into a store, named by the
//!   revision of its data;
//! * [`delta`], [`deltasnap`]: delta snapshot files and taking them from etcd's watch;
//! * [`schedule`], [`snapshotter`], [`gc`], [`defrag`]: the scheduled job, garbage collection,
//!   defragmentation;
//! * [`server`], [`listener`], [`https`], [`auth`], [`health`], [`metrics`]: the sidecar's
//!   HTTP API, its hardened listener, TLS, and who may call it;
//! * [`replay`], [`restore`], [`membership`], [`revbump`], [`compact`], [`copy`]: restoring a
//!   data dir (the db written once with the new membership, deltas replayed through a
//!   temporary etcd, revision bump), compacting and copying backups;
//! * [`bbolt`], [`schema`], [`wal`]: reading etcd's files natively (db, WAL, `.snap`);
//! * [`inspect`], [`k8s`]: `snapshot status|verify|ls|get`;
//! * [`validate`], [`initialize`], [`etcdconf`]: start-up validation, initialization and the
//!   `/config` rewrite;
//! * [`cli`]: the `etcdbrctl` command line.

pub mod auth;
pub mod bbolt;
pub mod bootcheck;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod compact;
pub mod copy;
pub mod datadir;
pub mod defrag;
pub mod delta;
pub mod deltasnap;
pub mod duration;
pub mod error;
pub mod etcd;
pub mod etcdconf;
pub mod fullsnap;
pub mod gc;
pub mod health;
pub mod https;
pub mod initialize;
pub mod inspect;
pub mod k8s;
pub mod layout;
pub mod leader;
pub mod listener;
pub mod lzw;
pub mod membership;
pub mod metrics;
pub mod pdeflate;
pub mod replay;
pub mod restore;
pub mod revbump;
pub mod schedule;
pub mod schema;
pub mod server;
pub mod snaprev;
pub mod snapshotter;
pub mod store;
pub mod streamio;
pub mod sys;
pub mod validate;
pub mod wal;

pub use error::{Error, Result};
