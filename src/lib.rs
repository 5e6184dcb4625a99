//! etcdbr: a backup-restore sidecar for etcd, compatible with gardener's etcdbrctl.
//!
//! Data flows one way: etcd -> [`fullsnap`] -> [`codec`] -> [`store`], each module named after
//! the domain concept it implements:
//!
//! * [`layout`]: snapshot object names, parsing, ordering and the "latest snapshot set";
//! * [`codec`]: the compression policies (gzip, zlib, lzw, zstd) and their suffixes;
//! * [`store`]: the object stores (Local directory, S3, GCS, ABS) and their credentials;
//! * [`etcd`]: connecting to etcd from the command-line flags;
//! * [`fullsnap`]: streaming a verified full snapshot from etcd into a store;
//! * [`schedule`]: cron schedules with Go/robfig semantics;
//! * [`snapshotter`]: the scheduled snapshot loop with exponential backoff;
//! * [`cli`]: the `etcdbrctl` command line.

pub mod bbolt;
pub mod cli;
pub mod codec;
pub mod compact;
pub mod copy;
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
pub mod lzw;
pub mod metrics;
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
pub mod validate;
pub mod wal;

pub use error::{Error, Result};
