//! Faithful replay of delta snapshots into a restored data directory, and the temporary etcd
//! that applies it (started on free loopback ports, fsync off where the version supports it,
//! stopped afterwards).
//!
//! Every source revision becomes exactly one transaction, in order, with no compares: `Put{key,
//! value, lease}` / `DeleteRange{key}` in event order. Because the base is the same data at the
//! same revision, every key's create/mod revision and version come out equal to the source's.
//! Leases first seen in the events are granted with their original IDs and the recorded TTL
//! (`leaseTTL`, or `default_lease_ttl` for etcdbrctl deltas that do not carry it) before the
//! events that use them.
//!
//! Two ways to etcd ([`Method`]):
//! - **WAL** (default): the transactions are appended to the stopped member's WAL as committed
//!   raft entries ([`crate::ondisk::wal::WalAppender`], etcd's `InternalRaftRequest` encoding), which
//!   etcd applies in order as it starts, without a raft round trip, an fsync or a client
//!   request per revision. Each transaction moves the revision by one, or by nothing if it
//!   failed; whatever etcd proposes itself is appended after them; so the revision etcd answers
//!   at ([`TempEtcd::expect_revision`]) must be exactly the last replayed one, which proves
//!   every transaction applied, in order, and nothing else.
//! - **API**: Txn requests to the running etcd, pipelined with guards (`ApiSink`); the
//!   revision of each response is checked.
//!
//! Lease expiry during the replay (etcdbrctl bugs #1045/#1046: the embedded etcd revokes expired
//! leases, which deletes their keys at new revisions and shifts every later one). Through the
//! WAL it cannot happen: etcd's lessor becomes primary only when the member is leader and has
//! applied the empty entry of its new term (`applyEntryNormal`), which raft appends after the
//! replayed entries; until then leases never expire. Through the API, every lease the temporary
//! etcd holds is kept alive from the moment it answers until it stops (a keep-alive per lease
//! every second), and the per-transaction revision check fails loudly should one still be revoked.
//! Both methods end with the keep-alives running until etcd is stopped.

use crate::error::{Error, Result};
use crate::format::delta::{Event, EventType};
use crate::ondisk::wal::WalAppender;
use etcd_client::{Client, Compare, CompareOp, LeaseGrantOptions, Txn, TxnOp};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, Clone)]
pub(crate) struct TempEtcdConfig {
    /// The `etcd` binary.
    pub(crate) binary: PathBuf,
    pub(crate) name: String,
    pub(crate) quota_bytes: u64,
    pub(crate) max_txn_ops: u32,
    pub(crate) max_request_bytes: u64,
    /// Where the temporary etcd's log goes.
    pub(crate) log: PathBuf,
    /// How long it may take to answer (it applies pending WAL entries first).
    pub(crate) ready_within: Duration,
    /// Keep etcd's fsync: on for a real data directory (validation lets etcd replay its WAL
    /// there), off for a restore's `.part`, which is fsynced as a whole before it is used.
    pub(crate) fsync: bool,
}

/// Two distinct free loopback ports (client, peer): both are held until both are chosen, as
/// the kernel may give a port just released to the next bind.
fn free_ports() -> Result<(u16, u16)> {
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|e| Error::io("127.0.0.1:0", "find a free port", e))
    };
    let (c, _held_c) = bind()?;
    let (p, _held_p) = bind()?;
    Ok((c, p))
}

/// A temporary etcd on a restored data dir; killed on drop.
pub(crate) struct TempEtcd {
    child: Child,
    pub(crate) endpoint: String,
    log: PathBuf,
    keepalive: Option<tokio::task::JoinHandle<()>>,
    pub(crate) leases: Arc<Mutex<HashSet<i64>>>,
}

impl Drop for TempEtcd {
    fn drop(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        let _ = self.child.start_kill();
    }
}

/// What the log holds from byte `from` on (one start attempt's lines), at most its last 256 KiB.
fn log_since(path: &Path, from: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.seek(SeekFrom::Start(from.max(len.saturating_sub(256 << 10))))
            .is_ok()
        {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How one start attempt ended.
enum Started {
    Ready(Box<TempEtcd>),
    /// etcd exited because a port was taken (the log line).
    PortTaken(String),
}

/// Whether this etcd binary has `--unsafe-no-fsync` (3.5+).
fn supports_no_fsync(binary: &Path) -> bool {
    std::process::Command::new(binary)
        .arg("--help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("unsafe-no-fsync")
                || String::from_utf8_lossy(&o.stderr).contains("unsafe-no-fsync")
        })
        .unwrap_or(false)
}

impl TempEtcd {
    /// Starts etcd on `data_dir` and waits until it answers (at most `ready_within`).
    ///
    /// The free ports are found by binding port 0 and releasing it, so another process may take
    /// one before etcd binds it. etcd opens its listeners before it reads the data directory,
    /// so a start that failed only for that is tried again on new ports: a taken port must
    /// never look like a data directory etcd cannot start on.
    pub(crate) async fn start(cfg: &TempEtcdConfig, data_dir: &Path) -> Result<TempEtcd> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            match Self::try_start(cfg, data_dir).await? {
                Started::Ready(t) => return Ok(*t),
                Started::PortTaken(why) if attempt < ATTEMPTS => {
                    tracing::warn!(attempt, reason = %why, "the temporary etcd could not bind its port; trying others");
                    attempt += 1;
                }
                Started::PortTaken(why) => {
                    return Err(Error::tool_failed(
                        "the temporary etcd",
                        format!(
                            "could not bind a loopback port in {ATTEMPTS} attempts ({why}); its log: {}",
                            cfg.log.display()
                        ),
                    ))
                }
            }
        }
    }

    async fn try_start(cfg: &TempEtcdConfig, data_dir: &Path) -> Result<Started> {
        let (c, p) = free_ports()?;
        let endpoint = format!("http://127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let log = crate::sys::append_private(&cfg.log)
            .map_err(|e| Error::io(&cfg.log, "create the temporary etcd's log", e))?;
        // this attempt's lines start here (the log is appended to)
        let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(&cfg.log, "open the temporary etcd's log", e))?;
        let mut cmd = Command::new(&cfg.binary);
        cmd.arg("--name")
            .arg(&cfg.name)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--listen-metrics-urls", ""])
            .args(["--quota-backend-bytes", &cfg.quota_bytes.to_string()])
            .args(["--max-txn-ops", &cfg.max_txn_ops.to_string()])
            .args(["--max-request-bytes", &cfg.max_request_bytes.to_string()])
            // no periodic compaction: the replay must keep every revision it writes
            .args(["--auto-compaction-retention", "0"])
            .env_remove("ETCD_NAME")
            .env_remove("ETCD_DATA_DIR")
            .env_remove("ETCD_INITIAL_CLUSTER")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true);
        if !cfg.fsync && supports_no_fsync(&cfg.binary) {
            cmd.arg("--unsafe-no-fsync");
        }
        let child = cmd.spawn().map_err(|e| {
            Error::io(
                &cfg.binary,
                "start the temporary etcd (give its path with --etcd-binary)",
                e,
            )
        })?;
        let mut t = TempEtcd {
            child,
            endpoint,
            log: cfg.log.clone(),
            keepalive: None,
            leases: Arc::new(Mutex::new(HashSet::new())),
        };
        let started = Instant::now();
        let mut client = loop {
            if let Ok(Some(st)) = t.child.try_wait() {
                let said = log_since(&t.log, log_from);
                if let Some(line) = said.lines().find(|l| l.contains("address already in use")) {
                    // 3.5 logs JSON (its "error" is the point), 3.4 plain text
                    let why = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|j| j["error"].as_str().map(str::to_string))
                        .unwrap_or_else(|| line.chars().take(200).collect());
                    return Ok(Started::PortTaken(why));
                }
                return Err(Error::tool_failed(
                    "the temporary etcd",
                    format!(
                        "exited with {st} before it was ready; its log ({}):\n{}",
                        t.log.display(),
                        last_lines(&said, 15)
                    ),
                ));
            }
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect([t.endpoint.as_str()], None),
            )
            .await
            {
                if matches!(
                    tokio::time::timeout(Duration::from_secs(2), c.status()).await,
                    Ok(Ok(s)) if s.leader() != 0
                ) {
                    break c;
                }
            }
            if started.elapsed() > cfg.ready_within {
                return Err(Error::tool_failed(
                    "the temporary etcd",
                    format!(
                        "did not become ready within {:?}; its log ({}):\n{}",
                        cfg.ready_within,
                        t.log.display(),
                        last_lines(&log_since(&t.log, log_from), 15)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // keep every lease alive from now on (module doc)
        let existing = client.leases().await.map_err(|e| t.err("list leases", e))?;
        {
            let mut l = t.leases.lock().unwrap_or_else(|p| p.into_inner());
            l.extend(existing.leases().iter().map(|s| s.id()));
        }
        t.keepalive = Some(tokio::spawn(keep_alive(client, t.leases.clone())));
        Ok(Started::Ready(Box::new(t)))
    }

    fn err(&self, what: &str, source: etcd_client::Error) -> Error {
        Error::Etcd {
            endpoint: format!("{} (temporary etcd)", self.endpoint),
            what: what.to_string(),
            source,
        }
    }

    /// Stops etcd gracefully (SIGTERM, then SIGKILL after 30 s).
    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        if let Some(pid) = self.child.id() {
            // SAFETY-free: plain kill(2) through the `kill` command keeps this crate free of libc
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::io(&self.log, "wait for the temporary etcd", e)),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(Error::tool_failed(
                    "the temporary etcd",
                    format!(
                        "did not stop within 30 s of SIGTERM and was killed; see {}",
                        self.log.display()
                    ),
                ))
            }
        }
    }

    /// Checks that etcd is at `expected` after applying `entries` replayed WAL entries: each
    /// transaction advances the revision by exactly one or not at all (it failed), and etcd
    /// appends anything of its own (a lease revoked) after them, so reaching exactly
    /// `expected` proves that every one applied, in order, and nothing else did.
    pub(crate) async fn expect_revision(&self, expected: i64, entries: u64) -> Result<()> {
        let (_, rev) = self.client_and_revision().await?;
        if rev == expected {
            return Ok(());
        }
        Err(Error::tool_failed("the temporary etcd", format!(
            "is at revision {rev} after applying the {entries} replayed WAL entries, not {expected}: {}; the restore would not be faithful (its log: {})",
            if rev < expected {
                format!("{} transaction(s) did not apply", expected - rev)
            } else {
                "it wrote revisions of its own".to_string()
            },
            self.log.display()
        )))
    }

    /// A client of this etcd, and its current revision.
    async fn client_and_revision(&self) -> Result<(Client, i64)> {
        let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(10));
        let mut c = Client::connect([self.endpoint.as_str()], Some(opts))
            .await
            .map_err(|e| self.err("connect", e))?;
        // the Status header carries the revision and needs no credentials (a restored backend
        // may have authentication enabled)
        let r = c
            .status()
            .await
            .map_err(|e| self.err("read the revision", e))?;
        Ok((c, r.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Compacts at the current revision, physically (both compaction marks written); returns
    /// the revision.
    pub(crate) async fn compact_to_current(&self) -> Result<i64> {
        let (mut c, rev) = self.client_and_revision().await?;
        match c
            .compact(
                rev,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
        {
            Ok(_) => Ok(rev),
            // compacted at this very revision already (a base that was just compacted)
            Err(etcd_client::Error::GRpcStatus(st)) if st.message().contains("compacted") => {
                Ok(rev)
            }
            Err(e) => Err(self.err(&format!("compact at revision {rev}"), e)),
        }
    }
}

/// Sends a keep-alive for every known lease every second, until aborted.
async fn keep_alive(client: Client, leases: Arc<Mutex<HashSet<i64>>>) {
    let mut keepers: HashMap<i64, (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> =
        HashMap::new();
    loop {
        let ids: Vec<i64> = leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        for id in ids {
            if let std::collections::hash_map::Entry::Vacant(v) = keepers.entry(id) {
                let mut c = client.clone();
                match c.lease_keep_alive(id).await {
                    Ok(k) => {
                        v.insert(k);
                    }
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "cannot keep a lease alive");
                        continue;
                    }
                }
            }
            if let Some((k, s)) = keepers.get_mut(&id) {
                if k.keep_alive().await.is_err() {
                    keepers.remove(&id);
                    continue;
                }
                // read the answer so that the stream does not back up
                let _ = tokio::time::timeout(Duration::from_secs(2), s.message()).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Transactions in flight during the replay.
const WINDOW: usize = 16;

fn ops(group: &[Event]) -> Vec<TxnOp> {
    group
        .iter()
        .map(|ev| match ev.kind {
            EventType::Put => {
                let opts =
                    (ev.lease != 0).then(|| etcd_client::PutOptions::new().with_lease(ev.lease));
                TxnOp::put(ev.key.clone(), ev.value.clone(), opts)
            }
            EventType::Delete => TxnOp::delete(ev.key.clone(), None),
        })
        .collect()
}

fn drift(object: &str, rev: i64, got: i64) -> Error {
    Error::integrity(
        object,
        format!(
            "replaying revision {rev} produced revision {got} in the temporary etcd: the restore would not be faithful (was a lease revoked, or was the base snapshot newer than its name?)"
        ),
    )
}

/// How replayed transactions reach etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Method {
    /// Appended to the stopped member's WAL as committed raft entries, which the temporary
    /// etcd applies when it starts (module doc).
    Wal,
    /// Sent to the running temporary etcd as Txn requests, pipelined.
    Api,
}

/// Applies delta events, one transaction per source revision, through the WAL or the API.
pub(crate) struct Replayer {
    sink: Sink,
    /// The revision reached (through the WAL: once etcd applies what was appended).
    pub(crate) revision: i64,
    default_lease_ttl: i64,
    /// Revisions applied, for progress.
    pub(crate) applied: u64,
    /// A gap ends the replay at the revision before it instead of failing.
    pub(crate) stop_at_gap: bool,
    /// The first and last missing revisions of the gap the replay stopped at.
    pub(crate) gap: Option<(i64, i64)>,
}

enum Sink {
    Api(Box<ApiSink>),
    Wal(Box<WalSink>),
}

struct ApiSink {
    client: Client,
    endpoint: String,
    leases: Arc<Mutex<HashSet<i64>>>,
    /// Transactions sent again because they overtook their predecessor.
    resent: u64,
    window: usize,
}

struct WalSink {
    dir: PathBuf,
    /// Open while entries are being appended; closed (committed) before etcd starts.
    wal: Option<WalAppender>,
    /// Leases a grant entry was written for.
    granted: HashSet<i64>,
    /// Request IDs of the entries (no client waits for them).
    next_id: u64,
    /// Entries appended and not yet applied by etcd.
    pending: u64,
    /// The auth revision when authentication is enabled.
    auth: Option<u64>,
}

impl Replayer {
    /// Replays through the API of a running temporary etcd.
    pub(crate) async fn through_api(etcd: &TempEtcd, default_lease_ttl: i64) -> Result<Replayer> {
        let (client, revision) = etcd.client_and_revision().await?;
        Ok(Replayer {
            sink: Sink::Api(Box::new(ApiSink {
                client,
                endpoint: etcd.endpoint.clone(),
                leases: etcd.leases.clone(),
                resent: 0,
                window: std::env::var("ETCDBR_REPLAY_WINDOW")
                    .ok()
                    .and_then(|w| w.parse().ok())
                    .filter(|w| *w > 0)
                    .unwrap_or(WINDOW),
            })),
            revision,
            default_lease_ttl,
            applied: 0,
            stop_at_gap: false,
            gap: None,
        })
    }

    /// Replays into the WAL of the stopped member whose WAL is `wal_dir` and whose backend is
    /// at `revision`, with authentication enabled at revision `auth` if it is `Some`: the
    /// entries are then made by `root`, as etcd requires (root holds every permission).
    pub(crate) fn through_wal(
        wal_dir: &Path,
        revision: i64,
        auth: Option<u64>,
        default_lease_ttl: i64,
    ) -> Replayer {
        Replayer {
            sink: Sink::Wal(Box::new(WalSink {
                dir: wal_dir.to_path_buf(),
                wal: None,
                granted: HashSet::new(),
                next_id: 1,
                pending: 0,
                auth,
            })),
            revision,
            default_lease_ttl,
            applied: 0,
            stop_at_gap: false,
            gap: None,
        }
    }

    /// Transactions sent again (API) because they overtook their predecessor.
    pub(crate) fn resent(&self) -> u64 {
        match &self.sink {
            Sink::Api(a) => a.resent,
            Sink::Wal(_) => 0,
        }
    }

    /// Entries appended to the WAL that etcd has not applied yet, and their bytes.
    pub(crate) fn pending(&self) -> (u64, u64) {
        match &self.sink {
            Sink::Wal(w) => (w.pending, w.wal.as_ref().map(|a| a.bytes).unwrap_or(0)),
            Sink::Api(_) => (0, 0),
        }
    }

    /// Commits what was appended to the WAL (etcd applies it when it next starts); the next
    /// event opens the WAL again, after whatever etcd wrote in between.
    pub(crate) fn commit_wal(&mut self) -> Result<()> {
        if let Sink::Wal(w) = &mut self.sink {
            if let Some(a) = w.wal.take() {
                a.finish().map_err(wal_err)?;
            }
        }
        Ok(())
    }

    /// etcd applied every pending entry (checked by the caller against [`Replayer::revision`]).
    pub(crate) fn applied_by_etcd(&mut self) {
        if let Sink::Wal(w) = &mut self.sink {
            w.pending = 0;
        }
    }

    /// Applies the events of one delta object (`object` names it in errors). Events at or below
    /// the current revision are skipped (overlaps are normal); a missing revision is an error,
    /// unless `up_to` stops the replay before it. Events above `up_to` are not applied.
    /// Returns false once `up_to` was reached.
    pub(crate) async fn apply(
        &mut self,
        events: &[Event],
        object: &str,
        up_to: i64,
    ) -> Result<bool> {
        let mut groups: Vec<&[Event]> = Vec::new();
        let mut expect = self.revision + 1;
        let mut i = 0;
        let mut reached = false;
        while i < events.len() {
            let rev = events[i].mod_revision;
            let mut j = i;
            while j < events.len() && events[j].mod_revision == rev {
                j += 1;
            }
            let group = &events[i..j];
            i = j;
            if rev < expect {
                continue;
            }
            if rev > up_to {
                reached = true;
                break;
            }
            if rev != expect {
                // apply what precedes the gap, then stop there or report it
                self.apply_groups(&groups, object).await?;
                if self.stop_at_gap {
                    tracing::warn!(
                        object,
                        missing = format!("{expect}..{}", rev - 1),
                        restored_to = self.revision,
                        "revisions are missing from the backups: the restore stops before them (--stop-at-gap)"
                    );
                    self.gap = Some((expect, rev - 1));
                    return Ok(false);
                }
                return Err(Error::integrity(
                    object,
                    format!(
                        "revisions {expect}..{} are missing from the backups (the chain has a gap before this delta's revision {rev})",
                        rev - 1
                    ),
                ));
            }
            groups.push(group);
            expect = rev + 1;
        }
        self.apply_groups(&groups, object).await?;
        Ok(!reached && self.revision < up_to)
    }

    async fn apply_groups(&mut self, groups: &[&[Event]], object: &str) -> Result<()> {
        let ttl = self.default_lease_ttl;
        let done = match &mut self.sink {
            Sink::Api(a) => {
                a.apply_groups(groups, object, ttl, &mut self.revision)
                    .await?
            }
            Sink::Wal(w) => w.apply_groups(groups, object, ttl, &mut self.revision)?,
        };
        self.applied += done;
        Ok(())
    }
}

fn lease_ttl(ev: &Event, default: i64) -> i64 {
    ev.lease_ttl.filter(|t| *t > 0).unwrap_or(default)
}

impl ApiSink {
    fn err(&self, what: String, source: etcd_client::Error) -> Error {
        Error::Etcd {
            endpoint: format!("{} (temporary etcd)", self.endpoint),
            what,
            source,
        }
    }

    /// Sends the transactions of consecutive revisions pipelined, up to [`WINDOW`] in flight.
    ///
    /// etcd may start concurrent requests in any order, so each transaction sent while its
    /// predecessor is unconfirmed is guarded: it only applies if the predecessor's put is
    /// visible (`mod_revision(key) == predecessor's revision`), which by induction means every
    /// earlier revision applied, in order. A predecessor without a put (deletes only) leaves
    /// nothing to compare against, so its successor waits for it. A guard that failed (the
    /// request overtook its predecessor) changed nothing: it is sent again once the predecessor
    /// is confirmed. Every applied transaction's revision is still checked.
    async fn apply_groups(
        &mut self,
        groups: &[&[Event]],
        object: &str,
        default_ttl: i64,
        revision: &mut i64,
    ) -> Result<u64> {
        use futures::StreamExt;
        let mut applied = 0;
        // polled here, in order (not spawned): requests leave in the order they were made
        let mut inflight = futures::stream::FuturesOrdered::new();
        let mut next = 0;
        while next < groups.len() || !inflight.is_empty() {
            while next < groups.len() && inflight.len() < self.window {
                let guard = if inflight.is_empty() {
                    None
                } else {
                    let prev = groups[next - 1];
                    match prev.iter().find(|e| e.kind == EventType::Put) {
                        Some(p) => Some(Compare::mod_revision(
                            p.key.clone(),
                            CompareOp::Equal,
                            p.mod_revision,
                        )),
                        None => break, // wait for the delete-only predecessor
                    }
                };
                let group = groups[next];
                for ev in group {
                    if ev.lease != 0 && ev.kind == EventType::Put {
                        self.ensure_lease(ev.lease, lease_ttl(ev, default_ttl))
                            .await?;
                    }
                }
                let mut txn = Txn::new();
                if let Some(g) = guard {
                    txn = txn.when(vec![g]);
                }
                let txn = txn.and_then(ops(group));
                let mut c = self.client.clone();
                let i = next;
                inflight.push_back(async move { (i, c.txn(txn).await) });
                next += 1;
            }
            let Some((i, r)) = inflight.next().await else {
                break;
            };
            let rev = groups[i][0].mod_revision;
            let resp = r.map_err(|e| self.err(format!("replay revision {rev} of {object}"), e))?;
            if resp.succeeded() {
                let got = resp.header().map(|h| h.revision()).unwrap_or(0);
                if got != rev {
                    return Err(drift(object, rev, got));
                }
                *revision = rev;
                applied += 1;
            } else {
                // overtook its predecessor: the ones behind it failed too; send again from it
                while let Some((j, r)) = inflight.next().await {
                    let jrev = groups[j][0].mod_revision;
                    let r =
                        r.map_err(|e| self.err(format!("replay revision {jrev} of {object}"), e))?;
                    if r.succeeded() {
                        let got = r.header().map(|h| h.revision()).unwrap_or(0);
                        return Err(drift(object, jrev, got));
                    }
                }
                self.resent += 1;
                next = i;
            }
        }
        Ok(applied)
    }

    async fn ensure_lease(&mut self, id: i64, ttl: i64) -> Result<()> {
        let known = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id);
        if known {
            return Ok(());
        }
        match self
            .client
            .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
            .await
        {
            Ok(_) => {}
            // granted already (e.g. in the base): fine
            Err(etcd_client::Error::GRpcStatus(s))
                if s.message().contains("lease already exists") => {}
            Err(e) => return Err(self.err(format!("re-grant lease {id:x} (TTL {ttl}s)"), e)),
        }
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        Ok(())
    }
}

fn wal_err(e: crate::ondisk::wal::WalError) -> Error {
    Error::Integrity {
        object: e.file.display().to_string(),
        reason: format!(
            "replay into the restored WAL at byte {}: {}",
            e.offset, e.message
        ),
    }
}

impl WalSink {
    /// Appends one entry per source revision, after a lease grant entry for each lease first
    /// used. Grants of leases the base already holds fail harmlessly when etcd applies them
    /// ("lease already exists"), as through the API.
    fn apply_groups(
        &mut self,
        groups: &[&[Event]],
        object: &str,
        default_ttl: i64,
        revision: &mut i64,
    ) -> Result<u64> {
        if groups.is_empty() {
            return Ok(0);
        }
        let wal = match &mut self.wal {
            Some(w) => w,
            None => self
                .wal
                .insert(WalAppender::open(&self.dir).map_err(wal_err)?),
        };
        let mut buf = Vec::new();
        for group in groups {
            for ev in group.iter() {
                if ev.lease != 0 && ev.kind == EventType::Put && self.granted.insert(ev.lease) {
                    let grant = raftpb::InternalRaftRequest {
                        header: Some(raftpb::RequestHeader::new(self.next_id, self.auth)),
                        lease_grant: Some(raftpb::LeaseGrantRequest {
                            ttl: lease_ttl(ev, default_ttl),
                            id: ev.lease,
                        }),
                        ..Default::default()
                    };
                    self.next_id += 1;
                    buf.clear();
                    prost::Message::encode(&grant, &mut buf)
                        .map_err(|e| Error::Internal(format!("encode a lease grant: {e}")))?;
                    wal.append(&buf).map_err(wal_err)?;
                }
            }
            let txn = raftpb::InternalRaftRequest {
                header: Some(raftpb::RequestHeader::new(self.next_id, self.auth)),
                txn: Some(raftpb::TxnRequest {
                    success: group.iter().map(raftpb::RequestOp::of).collect(),
                }),
                ..Default::default()
            };
            self.next_id += 1;
            buf.clear();
            prost::Message::encode(&txn, &mut buf)
                .map_err(|e| Error::Internal(format!("encode a transaction: {e}")))?;
            let rev = group[0].mod_revision;
            wal.append(&buf).map_err(|e| {
                Error::integrity(object, format!("cannot replay revision {rev}: {e}"))
            })?;
            *revision = rev;
            self.pending += 1;
        }
        Ok(groups.len() as u64)
    }
}

/// The subset of etcd's raft request messages the replay writes (`etcdserverpb`, field numbers
/// of `raft_internal.proto` and `rpc.proto`, unchanged since 3.0).
mod raftpb {
    use crate::format::delta::{Event, EventType};

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct RequestHeader {
        #[prost(uint64, tag = "1")]
        pub(crate) id: u64,
        #[prost(string, tag = "2")]
        pub(crate) username: String,
        #[prost(uint64, tag = "3")]
        pub(crate) auth_revision: u64,
    }

    impl RequestHeader {
        /// A request of `root` at `auth` when authentication is enabled, else of no one.
        pub(crate) fn new(id: u64, auth: Option<u64>) -> RequestHeader {
            RequestHeader {
                id,
                username: auth.map(|_| "root".to_string()).unwrap_or_default(),
                auth_revision: auth.unwrap_or(0),
            }
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct InternalRaftRequest {
        #[prost(message, optional, tag = "100")]
        pub(crate) header: Option<RequestHeader>,
        #[prost(message, optional, tag = "6")]
        pub(crate) txn: Option<TxnRequest>,
        #[prost(message, optional, tag = "8")]
        pub(crate) lease_grant: Option<LeaseGrantRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct TxnRequest {
        #[prost(message, repeated, tag = "2")]
        pub(crate) success: Vec<RequestOp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct RequestOp {
        #[prost(message, optional, tag = "2")]
        pub(crate) request_put: Option<PutRequest>,
        #[prost(message, optional, tag = "3")]
        pub(crate) request_delete_range: Option<DeleteRangeRequest>,
    }

    impl RequestOp {
        pub(crate) fn of(ev: &Event) -> RequestOp {
            match ev.kind {
                EventType::Put => RequestOp {
                    request_put: Some(PutRequest {
                        key: ev.key.clone(),
                        value: ev.value.clone(),
                        lease: ev.lease,
                    }),
                    request_delete_range: None,
                },
                EventType::Delete => RequestOp {
                    request_put: None,
                    request_delete_range: Some(DeleteRangeRequest {
                        key: ev.key.clone(),
                    }),
                },
            }
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(crate) value: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub(crate) lease: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct DeleteRangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) key: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct LeaseGrantRequest {
        #[prost(int64, tag = "1")]
        pub(crate) ttl: i64,
        #[prost(int64, tag = "2")]
        pub(crate) id: i64,
    }
}
