//! How the snapshot job is driven: by whom (the schedule, or a request over HTTP), fenced how,
//! stopped how.

use crate::etcd::leader::Fence;
use crate::format::layout::Snapshot;
use crate::snapshot::health::Health;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// An out-of-schedule snapshot asked for over HTTP.
#[derive(Debug)]
pub(crate) enum Request {
    Full {
        is_final: bool,
        reply: oneshot::Sender<std::result::Result<Snapshot, String>>,
    },
    /// `Ok(None)`: no events were buffered (etcdbrctl answers `null`).
    Delta {
        reply: oneshot::Sender<std::result::Result<Option<Snapshot>, String>>,
    },
}

/// How the job starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartMode {
    /// A full snapshot at once (the `snapshot` command).
    Full,
    /// The start-up decision (the `server` command); see the module doc.
    Decide,
}

/// How the job is driven: by whom, fenced how, stopped how.
pub(crate) struct Control {
    pub(crate) start: StartMode,
    pub(crate) fence: Fence,
    pub(crate) health: Arc<Health>,
    pub(crate) requests: Option<mpsc::Receiver<Request>>,
    /// Graceful stop (SIGTERM): the final delta is written.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Leadership lost: stop at once, write nothing more.
    pub(crate) abandon: watch::Receiver<bool>,
    /// Told of every object stored.
    pub(crate) observer: Arc<dyn Observer>,
}

/// Told of what the job stores, for whoever runs it: the `snapshot` and `server` commands print
/// each key on stdout. Called from the job's task: it must return quickly.
pub(crate) trait Observer: Send + Sync {
    /// A full or delta snapshot was stored under `key`.
    fn stored(&self, key: &str);
}

/// The next request, or never when there is no request channel (or it closed).
pub(crate) async fn next_request(rx: &mut Option<&mut mpsc::Receiver<Request>>) -> Request {
    match rx {
        Some(r) => match r.recv().await {
            Some(req) => req,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
