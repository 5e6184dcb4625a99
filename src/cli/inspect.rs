//! `etcdbrctl snapshot status|verify|ls|get`: looking inside a snapshot (a local file or an
//! object in the store), natively; etcdctl's output on stdout, the rest on stderr.

use super::options::{DecryptArgs, SnapstoreArgs};
use crate::error::Result;
use crate::inspect::{self, Opened, Output};
use clap::Args;
use std::path::PathBuf;

fn stdio() -> Output {
    Output {
        out: Box::new(std::io::stdout()),
        notes: Box::new(std::io::stderr()),
    }
}

/// A snapshot to look into, and the store to find it in when it is not a local file.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// A local file (a db, a snapshot with its sha256 trailer, or a compressed snapshot) or the
    /// name of a snapshot in the store given by the store flags.
    pub(crate) source: String,
    #[command(flatten)]
    pub(crate) store: SnapstoreArgs,
    #[command(flatten)]
    pub(crate) decryption: DecryptArgs,
}

impl InspectArgs {
    async fn open(&self, check_hash: bool) -> Result<Opened> {
        inspect::open(
            &self.source,
            self.store.optional()?,
            self.decryption.keys()?,
            &self.store.snapstore_temp_directory,
            check_hash,
        )
        .await
    }
}

#[derive(Debug, Args)]
pub(crate) struct StatusCmd {
    #[command(flatten)]
    pub(crate) src: InspectArgs,
    /// Output format, as etcdctl's `-w`.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub(crate) write_out: inspect::Format,
    /// Do not hash a local file against its sha256 trailer (etcdctl's amount of work; `verify`
    /// always hashes).
    #[arg(long = "skip-hash-check")]
    pub(crate) skip_hash_check: bool,
}

/// What `ls` and `get` print.
#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    /// Read at this revision instead of the snapshot's (it must be in the kept history).
    #[arg(long = "revision")]
    pub(crate) revision: Option<i64>,
    /// Output: a table, or JSON lines.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub(crate) write_out: inspect::ListFormat,
    /// Show `/registry/` keys as resource/namespace/name with the objects' apiVersion and kind.
    #[arg(long = "kubernetes")]
    pub(crate) kubernetes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LsCmd {
    #[command(flatten)]
    pub(crate) src: InspectArgs,
    /// Only keys starting with this prefix.
    #[arg(long = "prefix", default_value = "")]
    pub(crate) prefix: String,
    #[command(flatten)]
    pub(crate) read: ReadArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GetCmd {
    #[command(flatten)]
    pub(crate) src: InspectArgs,
    /// The key.
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) read: ReadArgs,
    /// Write the value (with --kubernetes and a protobuf object: the raw object) to this file.
    #[arg(long = "out")]
    pub(crate) out: Option<PathBuf>,
}

/// What `snapshot verify` checks.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) src: InspectArgs,
    /// The proof to check a local file against (`<store>/proofs/<name>.hashkv.json`, etcd's
    /// HashKV recorded with the full); a stored full's own proof is found by itself.
    #[arg(long = "proof")]
    pub(crate) proof: Option<PathBuf>,
}

impl VerifyArgs {
    pub(crate) async fn run(self) -> Result<()> {
        let mut o = self.src.open(true).await?;
        if let Some(p) = &self.proof {
            o.set_proof(p)?;
        }
        inspect::write_verify(o, stdio()).await
    }
}

/// `snapshot hashkv`.
#[derive(Debug, Args)]
pub(crate) struct HashkvCmd {
    #[command(flatten)]
    pub(crate) src: InspectArgs,
    /// The revision to hash (default: the snapshot's effective revision).
    #[arg(long = "revision")]
    pub(crate) revision: Option<i64>,
    /// The compaction revision of the member to compare with, as `etcdctl endpoint hashkv`
    /// reports it (default: the snapshot's own).
    /// (-1, as etcd reports a member that never compacted, means none).
    #[arg(long = "compact-revision", allow_negative_numbers = true)]
    pub(crate) compact_revision: Option<i64>,
}

impl HashkvCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let o = self.src.open(false).await?;
        let (revision, compact, hash) =
            inspect::hash_kv(o, self.revision, self.compact_revision).await?;
        println!(
            "{}",
            serde_json::json!({"hash": hash, "revision": revision, "compact_revision": compact})
        );
        Ok(())
    }
}

impl StatusCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let o = self.src.open(!self.skip_hash_check).await?;
        inspect::write_status(o, self.write_out, stdio()).await
    }
}

impl LsCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let o = self.src.open(false).await?;
        let r = &self.read;
        inspect::write_ls(
            o,
            stdio(),
            self.prefix.into_bytes(),
            r.revision,
            r.write_out,
            r.kubernetes,
        )
        .await
    }
}

impl GetCmd {
    pub(crate) async fn run(self) -> Result<()> {
        let o = self.src.open(false).await?;
        let r = &self.read;
        inspect::write_get(
            o,
            stdio(),
            self.key.into_bytes(),
            r.revision,
            r.write_out,
            r.kubernetes,
            self.out,
        )
        .await
    }
}
