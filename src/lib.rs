//! etcdbr: a backup-restore sidecar for etcd, compatible with gardener's etcdbrctl.
//!
//! Data flows one way: etcd -> [`snapshot`] -> [`format`] -> [`store`], and [`store`] ->
//! [`format`] -> [`restore`] -> data dir. The folders follow that flow; a folder only uses the
//! folders before it in this list (no module cycles):
//!
//! * [`error`], [`duration`], [`schedule`], [`sys`], [`stop`]: the crate error, Go durations
//!   and cron schedules as etcdbrctl parses them, the Linux calls std lacks, stop flags;
//! * [`format`]: the bytes of a backup: object names and the latest snapshot set, delta files,
//!   the compression policies, the sha256 trailer;
//! * [`metrics`]: the Prometheus registry (etcdbrctl's metric names);
//! * [`ondisk`]: etcd's own files read natively (bbolt db, WAL, `.snap`), whether etcd would
//!   boot a data dir, and the data dir's locks and durable swap;
//! * [`store`]: the object stores (Local directory, S3, GCS, ABS), their credentials, and
//!   copying backups between stores;
//! * [`etcd`]: connecting to etcd, which member leads (and fencing writes), the cluster's
//!   membership, defragmentation;
//! * [`restore`]: restoring a data dir from a snapshot set (the db written once with the new
//!   membership, deltas replayed through a temporary etcd, revision bump);
//! * [`snapshot`]: full and delta snapshots, garbage collection, compaction, and the scheduled
//!   job with its start-up decision and the health of the backups;
//! * [`initialize`]: start-up validation of the data dir and the restore that replaces it;
//! * [`verify`]: the restore drill, proving the backups restore into the cluster's data;
//! * [`inspect`]: `snapshot status|verify|ls|get`, natively;
//! * [`server`]: the sidecar's HTTP API, its hardened listener, TLS, who may call it, and the
//!   `/config` rewrite;
//! * [`cli`]: the `etcdbrctl` command line, one file per subcommand; the only place that
//!   prints.

pub mod cli;
pub mod duration;
pub mod error;
pub mod etcd;
pub mod format;
pub mod initialize;
pub mod inspect;
pub mod metrics;
pub mod ondisk;
pub mod restore;
pub mod schedule;
pub mod server;
pub mod snapshot;
pub mod stop;
pub mod store;
pub mod sys;
pub mod verify;

pub use error::{Error, Result};
