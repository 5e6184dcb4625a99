//! The `etcdbrctl` command line: etcdbrctl's sub-commands and flags, same names and defaults.
//! Every flag can also be set from an environment variable (`ETCDBR_<FLAG_NAME>`, shown in
//! `--help`); the store container also reads etcdbrctl's `STORAGE_CONTAINER`.
//!
//! One file per subcommand, each a small `run()`; the flag groups they share, and their
//! conversion into the library's configurations (validated there, once), are in [`options`].
//! This is the only module that prints: the library reports through return values, writers
//! and observers.

pub mod compact;
pub mod copy;
pub mod initialize;
pub mod inspect;
pub mod options;
pub mod restore;
pub mod server;
pub mod snapshot;
pub mod verify;

use crate::error::Result;
use crate::snapshot::job::control::Observer;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "etcdbrctl",
    about = "Command line utility for etcd backup restore",
    long_about = "etcdbrctl (etcdbr): takes full and delta snapshots of etcd into an object store, \
                  garbage-collects them, and restores an etcd data directory from them. \
                  A drop-in replacement for gardener's etcd-backup-restore.",
    disable_version_flag = true
)]
pub(crate) struct Cli {
    /// Print version information and exit.
    #[arg(short = 'v', long = "version", global = false)]
    pub(crate) version: bool,

    /// Log level (logrus numbers: 0 panic .. 4 info .. 6 trace). RUST_LOG overrides it.
    #[arg(
        long = "log-level",
        default_value_t = 4,
        env = "ETCDBR_LOG_LEVEL",
        global = true
    )]
    pub(crate) log_level: u8,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Take full snapshots of etcd on a schedule (the first one immediately).
    #[command(args_conflicts_with_subcommands = true)]
    Snapshot(Box<snapshot::SnapshotCmd>),
    /// Run the sidecar: HTTP API, and on the etcd leader's sidecar full and delta snapshots,
    /// garbage collection and defragmentation.
    Server(Box<server::ServerCmd>),
    /// Restore an etcd data directory from the latest snapshot set (full + deltas) in the store.
    Restore(Box<restore::RestoreCmd>),
    /// Restore the latest snapshot set, compact and defragment it, and store it as one new full.
    Compact(Box<compact::CompactCmd>),
    /// Validate the etcd data directory and, if it is missing or bad, restore the latest
    /// snapshot set in its place (what the sidecar's /initialization/start does).
    Initialize(Box<initialize::InitializeCmd>),
    /// Copy backups from a source store to the destination store.
    Copy(Box<copy::CopyCmd>),
    /// Prove the backups: `--restore` restores the latest snapshot set into a temporary
    /// directory and compares its keyspace with etcd's HashKV at its revision.
    Verify(Box<verify::VerifyCmd>),
}

impl Command {
    /// Runs the subcommand.
    pub(crate) async fn run(self) -> Result<()> {
        match self {
            Command::Snapshot(c) => c.run().await,
            Command::Server(c) => c.run().await,
            Command::Restore(c) => c.run().await,
            Command::Compact(c) => c.run().await,
            Command::Initialize(c) => c.run().await,
            Command::Copy(c) => c.run().await,
            Command::Verify(c) => c.run().await,
        }
    }
}

/// Prints the key of every object the snapshot job stores on stdout, one per line (the
/// `snapshot` and `server` commands).
struct PrintKeys;

impl Observer for PrintKeys {
    fn stored(&self, key: &str) {
        println!("{key}");
    }
}

fn init_logging(level: u8) {
    let lvl = match level {
        0..=2 => "error",
        3 => "warn",
        4 => "info",
        5 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{lvl},h2=warn,hyper=warn,tower=warn,rustls=warn"
        ))
    });
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// A watch channel that turns true on SIGINT/SIGTERM; a second signal exits at once (1).
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let Ok(mut term) = term else { return };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                tracing::info!(
                    "shutdown signal received; stopping (send it again to exit at once)"
                );
                let _ = tx.send(true);
            } else {
                std::process::exit(1);
            }
        }
    });
    rx
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("etcdbrctl (etcdbr) version {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    init_logging(cli.log_level);
    let Some(cmd) = cli.command else {
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcdbrctl: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cmd.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etcdbrctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
