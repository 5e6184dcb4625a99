//! The error type: every error names what failed, on which object or path, and (where there is
//! one) what the operator can do about it.

use std::path::PathBuf;

/// The crate's result: [`Error`] unless said otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with the object or path it happened to and, where there is one, what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, environment variable or configuration value is wrong.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// etcd could not be reached or answered with an error.
    #[error("etcd {endpoint}: {what}: {}", root_cause(source))]
    Etcd {
        /// The member called.
        endpoint: String,
        /// The call ("snapshot", "member list", ...).
        what: String,
        /// etcd's answer.
        #[source]
        source: etcd_client::Error,
    },

    /// An etcd call did not finish within its timeout.
    #[error("etcd {endpoint}: {what}: timed out after {secs}s")]
    EtcdTimeout {
        /// The member called.
        endpoint: String,
        /// The call.
        what: String,
        /// The timeout that passed.
        secs: u64,
    },

    /// The object store failed.
    #[error("store {location}: {what}: {source}")]
    Store {
        /// The store (and object) it happened to.
        location: String,
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },

    /// A local file or directory operation failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// Snapshot data failed an integrity check (hash, size, format).
    #[error("integrity check failed for {object}: {reason}")]
    Integrity {
        /// The object, file or stream.
        object: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Credentials could not be read or are incomplete.
    #[error("credentials {path}: {reason}")]
    Credentials {
        /// Where they were read from.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// This sidecar may not write: its etcd member is no longer the leader, or another writer
    /// advanced the store's chain. Nothing was stored; the job re-reads the store.
    #[error("fenced: {0}")]
    Fenced(String),

    /// The operation was cancelled (shutdown signal).
    #[error("cancelled: {0}")]
    Cancelled(String),

    /// The store holds no snapshot to do this from (no full, none named so, none at that
    /// revision or time).
    #[error("{0}")]
    NoSnapshot(String),

    /// The revisions of the stored chain do not continue each other (a delta missing or out of
    /// order), or do not reach the revision asked for.
    #[error("{0}")]
    RevisionGap(String),

    /// etcd's restore tool or the temporary etcd of a restore failed.
    #[error("{tool} {reason}")]
    ToolFailed {
        /// The tool (its path) or "the temporary etcd".
        tool: String,
        /// What happened, with its output.
        reason: String,
    },

    /// etcd answered something its protocol does not allow (a response without a header, a
    /// watch closed or cancelled under us, an event without its key-value).
    #[error("etcd {endpoint}: {reason}")]
    EtcdProtocol {
        /// The member.
        endpoint: String,
        /// What it did.
        reason: String,
    },

    /// The cluster's state does not allow the step now (no quorum, no leader reachable, the
    /// member that restores first has not yet); it may once the other members are back.
    #[error("{0}")]
    Cluster(String),

    /// A safety rule refused the step; nothing was changed.
    #[error("{0}")]
    Refused(String),

    /// A worker thread or task of ours failed (a panic: a bug); the message names it.
    #[error("{what} failed: {reason}")]
    Task {
        /// The worker.
        what: String,
        /// Its panic or cancellation.
        reason: String,
    },

    /// What should not happen did (a bug); the message says what.
    #[error("internal error: {0}")]
    Internal(String),
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
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            path: path.into(),
            what: what.into(),
            source,
        }
    }

    pub(crate) fn store(
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

    pub(crate) fn integrity(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Integrity {
            object: object.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// A worker (`what`: "snapshot worker", ...) that panicked or was cancelled.
    pub(crate) fn task(what: &str, e: impl std::fmt::Display) -> Self {
        Error::Task {
            what: what.to_string(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn etcd_protocol(endpoint: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::EtcdProtocol {
            endpoint: endpoint.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tool_failed(tool: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::ToolFailed {
            tool: tool.into(),
            reason: reason.into(),
        }
    }

    /// Whether the same call may succeed later, unchanged: etcd or the store unreachable or
    /// slow, a local I/O error (a full disk), the cluster not ready yet. Retry loops retry
    /// these and stop at the others (a wrong flag, a refusal, damaged data, a bug).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Etcd { source, .. } => etcd_transient(source),
            Error::EtcdTimeout { .. } | Error::EtcdProtocol { .. } | Error::Cluster(_) => true,
            Error::Store { source, .. } => store_transient(source),
            Error::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            Error::Config(_)
            | Error::Integrity { .. }
            | Error::Credentials { .. }
            | Error::Fenced(_)
            | Error::Cancelled(_)
            | Error::NoSnapshot(_)
            | Error::RevisionGap(_)
            | Error::ToolFailed { .. }
            | Error::Refused(_)
            | Error::Task { .. }
            | Error::Internal(_) => false,
        }
    }

    /// A bounded category, for the `etcdbr_snapshotter_failure` metric.
    pub(crate) fn category(&self) -> &'static str {
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
            Error::NoSnapshot(_) => "no_snapshot",
            Error::RevisionGap(_) => "revision_gap",
            Error::ToolFailed { .. } => "tool",
            Error::EtcdProtocol { .. } => "etcd",
            Error::Cluster(_) => "cluster",
            Error::Refused(_) => "refused",
            Error::Task { .. } | Error::Internal(_) => "other",
        }
    }
}

/// etcd errors worth retrying: the member unreachable, overloaded, electing, or the call cut;
/// not a request etcd refuses for what it is (bad argument, permission, compacted revision).
fn etcd_transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => !matches!(
            s.code(),
            Code::InvalidArgument
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented
                | Code::OutOfRange
                | Code::AlreadyExists
                | Code::NotFound
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Store errors worth retrying: the network or the server, not a missing object, a refused
/// credential or a precondition.
fn store_transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_those_a_retry_can_fix() {
        let io = |kind| Error::io("/x", "write", std::io::Error::from(kind));
        assert!(io(std::io::ErrorKind::StorageFull).is_transient());
        assert!(!io(std::io::ErrorKind::PermissionDenied).is_transient());
        let status = |code| Error::Etcd {
            endpoint: "e".into(),
            what: "get".into(),
            source: etcd_client::Error::GRpcStatus(tonic::Status::new(code, "x")),
        };
        assert!(status(tonic::Code::Unavailable).is_transient());
        assert!(status(tonic::Code::DeadlineExceeded).is_transient());
        assert!(!status(tonic::Code::PermissionDenied).is_transient());
        assert!(!status(tonic::Code::OutOfRange).is_transient());
        let store = |source| Error::store("s3://b/k", "get", source);
        assert!(!store(object_store::Error::NotFound {
            path: "k".into(),
            source: "gone".into()
        })
        .is_transient());
        assert!(store(object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into()
        })
        .is_transient());
        assert!(!Error::config("--x").is_transient());
        assert!(Error::Cluster("no quorum".into()).is_transient());
        assert!(!Error::RevisionGap("11 after 9".into()).is_transient());
    }
}
