//! The error type: every error names what failed, on which object or path, and (where there is
//! one) what the operator can do about it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, environment variable or configuration value is wrong.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// etcd could not be reached or answered with an error.
    #[error("etcd {endpoint}: {what}: {}", root_cause(source))]
    Etcd {
        endpoint: String,
        what: String,
        #[source]
        source: etcd_client::Error,
    },

    /// An etcd call did not finish within its timeout.
    #[error("etcd {endpoint}: {what}: timed out after {secs}s")]
    EtcdTimeout {
        endpoint: String,
        what: String,
        secs: u64,
    },

    /// The object store failed.
    #[error("store {location}: {what}: {source}")]
    Store {
        location: String,
        what: String,
        #[source]
        source: object_store::Error,
    },

    /// A local file or directory operation failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// Snapshot data failed an integrity check (hash, size, format).
    #[error("integrity check failed for {object}: {reason}")]
    Integrity { object: String, reason: String },

    /// Credentials could not be read or are incomplete.
    #[error("credentials {path}: {reason}")]
    Credentials { path: String, reason: String },

    /// This sidecar may not write: its etcd member is no longer the leader, or another writer
    /// advanced the store's chain. Nothing was stored; the job re-reads the store.
    #[error("fenced: {0}")]
    Fenced(String),

    /// The operation was cancelled (shutdown signal).
    #[error("cancelled: {0}")]
    Cancelled(String),

    #[error("{0}")]
    Other(String),
}

/// The innermost cause of an error chain (e.g. "Connection refused" under gRPC and transport
/// layers), with a hint when etcd could not be reached.
fn root_cause(e: &etcd_client::Error) -> String {
    // etcd_client's error does not chain to the gRPC status: start from the status itself
    let mut cur: &dyn std::error::Error = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => other,
    };
    while let Some(next) = cur.source() {
        cur = next;
    }
    let cause = cur.to_string();
    let unreachable =
        matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable);
    if unreachable {
        format!("unreachable ({cause}); is etcd running at this address?")
    } else if let etcd_client::Error::GRpcStatus(s) = e {
        if cause == s.message() || cause == s.to_string() {
            s.message().to_string()
        } else {
            format!("{}: {cause}", s.message())
        }
    } else {
        e.to_string()
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            what: what.into(),
            source,
        }
    }

    pub fn store(
        location: impl Into<String>,
        what: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        Error::Store {
            location: location.into(),
            what: what.into(),
            source,
        }
    }

    pub fn integrity(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Integrity {
            object: object.into(),
            reason: reason.into(),
        }
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// A bounded category, for the `etcdbr_snapshotter_failure` metric.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Etcd { .. } => "etcd",
            Error::EtcdTimeout { .. } => "etcd_timeout",
            Error::Store { .. } => "store",
            Error::Io { .. } => "io",
            Error::Integrity { .. } => "integrity",
            Error::Credentials { .. } => "credentials",
            Error::Fenced(_) => "fenced",
            Error::Cancelled(_) => "cancelled",
            Error::Other(_) => "other",
        }
    }
}
