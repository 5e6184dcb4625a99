//! Delta snapshots: a watch over the whole keyspace from the previous snapshot's revision + 1;
//! the buffered events are written as an `Incr-<start>-<last>-<unix>` object every
//! `--delta-snapshot-period`, when they reach `--delta-snapshot-memory-limit`, before the next
//! full snapshot, and on shutdown. Empty periods write nothing.
//!
//! The chain is gap-free by construction: each delta starts at the previous snapshot's last
//! revision + 1, and every etcd revision yields at least one event on a whole-keyspace watch, so
//! an event whose revision skips one is an error (the phase ends; the job then takes a full). A
//! compacted start revision (etcd cancels the watch) also ends the phase with
//! [`PhaseEnd::Compacted`], and the caller takes a full instead (etcdbrctl issue #599).

use crate::error::{Error, Result};
use crate::etcd;
use crate::etcd::leader::Fence;
use crate::format::codec::Codec;
use crate::format::delta::{DeltaBuilder, Event, EventType};
use crate::format::encryption::SealWriter;
use crate::format::layout::{Kind, Snapshot};
use crate::metrics;
use crate::snapshot::health::Health;
use crate::snapshot::job::control::{next_request, Observer, Request};
use crate::stop::flag_set;
use crate::store::SnapStore;
use chrono::{DateTime, Utc};
use etcd_client::{Client, WatchOptions};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Watch responses can hold one large revision: allow up to this size.
const MAX_WATCH_MESSAGE: usize = 256 << 20;
/// Bound of the lease-TTL cache.
const MAX_LEASES_CACHED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
pub(crate) struct DeltaConfig {
    pub(crate) period: Duration,
    pub(crate) memory_limit: usize,
    pub(crate) codec: Codec,
    /// Time allowed to write the final delta on shutdown.
    pub(crate) flush_timeout: Duration,
}

/// Why a delta phase ended.
#[derive(Debug)]
pub(crate) enum PhaseEnd {
    /// The deadline (next full snapshot) was reached; everything buffered was written.
    Deadline,
    /// Shutdown: the final delta was written (or there was nothing to write).
    Shutdown { last_revision: i64 },
    /// The start revision was compacted away: a full snapshot is needed.
    Compacted,
    /// A full snapshot was requested (HTTP); the buffered events were written first.
    FullRequested {
        is_final: bool,
        reply: oneshot::Sender<std::result::Result<Snapshot, String>>,
    },
    /// Leadership was lost: the buffered events were dropped (the new leader's sidecar
    /// re-reads them from etcd, starting after the store's last revision).
    Abandoned,
}

/// The stops and requests a delta phase answers, besides its watch.
pub(crate) struct PhaseIo<'a> {
    pub(crate) requests: Option<&'a mut mpsc::Receiver<Request>>,
    /// Graceful stop: write a final delta.
    pub(crate) shutdown: &'a mut watch::Receiver<bool>,
    /// Leadership lost: stop without writing.
    pub(crate) abandon: &'a mut watch::Receiver<bool>,
}

/// The delta watch and its buffer. It outlives a delta phase: while a full snapshot streams,
/// the snapshot job keeps reading it ([`DeltaWatch::message`], [`DeltaWatch::hold`]) into a
/// held list bounded by the memory limit (beyond it, reading pauses and etcd keeps the events),
/// and once the full is stored at revision R ([`DeltaWatch::after_full`]) the held events after R
/// start the next delta at R + 1. The store's layout is the same as without it: no delta
/// straddles a full.
pub(crate) struct DeltaWatch {
    client: Client,
    endpoint: String,
    store: Arc<SnapStore>,
    fence: Fence,
    health: Arc<Health>,
    observer: Arc<dyn Observer>,
    cfg: DeltaConfig,
    stream: etcd_client::WatchStream,
    /// Last revision covered by the store (full or delta).
    stored: i64,
    /// Last revision seen by the watch (buffered, held or stored).
    seen: i64,
    buf: DeltaBuilder,
    leases_in_buf: HashSet<i64>,
    ttl_cache: HashMap<i64, i64>,
    in_flight: Option<InFlight>,
    /// Events received while a full snapshot streams, and their size.
    held: Vec<Event>,
    held_bytes: usize,
    /// Why the watch cannot go on (it was cancelled while a full streamed).
    broken: Option<String>,
}

/// What the snapshot job hands a new [`DeltaWatch`].
pub(crate) struct WatchSetup {
    pub(crate) client: Client,
    pub(crate) endpoint: String,
    pub(crate) store: Arc<SnapStore>,
    pub(crate) fence: Fence,
    pub(crate) health: Arc<Health>,
    pub(crate) observer: Arc<dyn Observer>,
}

impl DeltaWatch {
    /// Starts a whole-keyspace watch from `stored + 1`.
    pub(crate) async fn open(
        setup: WatchSetup,
        cfg: DeltaConfig,
        stored: i64,
    ) -> Result<DeltaWatch> {
        let WatchSetup {
            client,
            endpoint,
            store,
            fence,
            health,
            observer,
        } = setup;
        let opts = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(stored + 1)
            .with_progress_notify();
        let mut wc = client
            .watch_client()
            .max_decoding_message_size(MAX_WATCH_MESSAGE);
        let stream = etcd::call(
            &endpoint,
            "start the delta watch",
            Duration::from_secs(30),
            wc.watch(vec![0u8], Some(opts)),
        )
        .await?;
        Ok(DeltaWatch {
            client,
            endpoint,
            store,
            fence,
            health,
            observer,
            cfg,
            stream,
            stored,
            seen: stored,
            buf: DeltaBuilder::default(),
            leases_in_buf: HashSet::new(),
            ttl_cache: HashMap::new(),
            in_flight: None,
            held: Vec::new(),
            held_bytes: 0,
            broken: None,
        })
    }

    /// The last revision the store holds, as this watch knows it.
    pub(crate) fn stored(&self) -> i64 {
        self.stored
    }

    /// Whether [`Self::message`] should be read while a full streams: below the memory limit
    /// and not broken.
    pub(crate) fn can_hold(&self) -> bool {
        self.broken.is_none() && self.held_bytes + self.buf.len() < self.cfg.memory_limit
    }

    /// The next watch response (cancel-safe: a response is either returned or left in the
    /// stream).
    pub(crate) async fn message(&mut self) -> Result<Option<etcd_client::WatchResponse>> {
        self.stream.message().await.map_err(|source| Error::Etcd {
            endpoint: self.endpoint.clone(),
            what: "delta watch".into(),
            source,
        })
    }

    /// Keeps a response received while a full snapshot streams. A failure marks the watch
    /// broken (the job opens a new one after the full) instead of ending the full.
    pub(crate) async fn hold(&mut self, msg: Result<Option<etcd_client::WatchResponse>>) {
        let resp = match msg {
            Ok(Some(r)) if !r.canceled() => r,
            Ok(Some(r)) => {
                self.broken = Some(format!(
                    "the delta watch was cancelled: {}",
                    r.cancel_reason()
                ));
                return;
            }
            Ok(None) => {
                self.broken = Some("the delta watch closed".into());
                return;
            }
            Err(e) => {
                self.broken = Some(e.to_string());
                return;
            }
        };
        let now = Utc::now();
        for ev in resp.events() {
            match self.convert(ev, now).await {
                Ok(e) => {
                    self.held_bytes += e.key.len() + e.value.len() + 128;
                    self.held.push(e);
                }
                Err(e) => {
                    self.broken = Some(e.to_string());
                    return;
                }
            }
        }
        if let Some(m) = metrics::get() {
            m.delta_events.inc_by(resp.events().len() as u64);
            m.watch_revision.set(self.seen);
            m.delta_buffered_bytes
                .set((self.held_bytes + self.buf.len()) as i64);
        }
    }

    /// After a full snapshot: stored at `revision` (the held events up to it are in it, the
    /// others start the next delta), or failed (`None`: every held event stays for the next
    /// delta). An error when the watch broke meanwhile: the job opens a new one.
    pub(crate) fn after_full(&mut self, revision: Option<i64>) -> Result<()> {
        if let Some(r) = revision {
            self.stored = self.stored.max(r);
        }
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let kept = held.len();
        for e in held {
            if e.mod_revision > self.stored {
                if e.lease != 0 {
                    self.leases_in_buf.insert(e.lease);
                }
                self.buf.push(&e);
            }
        }
        if kept > 0 {
            tracing::info!(
                received_meanwhile = kept,
                kept_for_the_next_delta = self.buf.events(),
                stored = self.stored,
                "events received while the full snapshot streamed"
            );
        }
        match self.broken.take() {
            Some(why) => Err(Error::etcd_protocol(
                &self.endpoint,
                format!("{why}; the watch restarts after the full snapshot"),
            )),
            None => Ok(()),
        }
    }

    /// Runs one delta phase until `deadline`, a stop, a request for a full, or an error; the
    /// store's last revision ([`Self::stored`]) is exact afterwards, also on failure.
    pub(crate) async fn run_phase(
        &mut self,
        io: PhaseIo<'_>,
        deadline: DateTime<Utc>,
    ) -> Result<PhaseEnd> {
        let result = phase_loop(self, deadline, io).await;
        // a write still in flight completes before the phase ends, so `stored` is exact
        let finished = self.finish_flush().await;
        let result = match (result, finished) {
            (Ok(end), Ok(_)) => Ok(end),
            (Ok(_), Err(e)) | (Err(e), _) => Err(e),
        };
        if let Some(m) = metrics::get() {
            m.delta_buffered_bytes.set(self.buf.len() as i64);
        }
        result
    }
    async fn lease_ttl(&mut self, lease: i64) -> Option<i64> {
        if let Some(t) = self.ttl_cache.get(&lease) {
            return Some(*t);
        }
        let r = etcd::call(
            &self.endpoint,
            "lease time-to-live",
            Duration::from_secs(5),
            self.client.lease_time_to_live(lease, None),
        )
        .await;
        match r {
            Ok(r) if r.granted_ttl() > 0 => {
                if self.ttl_cache.len() >= MAX_LEASES_CACHED {
                    self.ttl_cache.clear();
                }
                self.ttl_cache.insert(lease, r.granted_ttl());
                Some(r.granted_ttl())
            }
            // revoked or expired already: the restore falls back to a default TTL
            _ => None,
        }
    }

    /// An event of the watch, checked to continue the revisions seen so far.
    async fn convert(&mut self, ev: &etcd_client::Event, now: DateTime<Utc>) -> Result<Event> {
        let Some(kv) = ev.kv() else {
            return Err(Error::etcd_protocol(
                &self.endpoint,
                "watch event without a key-value",
            ));
        };
        let rev = kv.mod_revision();
        if rev != self.seen && rev != self.seen + 1 {
            return Err(Error::RevisionGap(format!(
                "watch delivered revision {rev} after {}: revisions {}..{} are missing",
                self.seen,
                self.seen + 1,
                rev - 1
            )));
        }
        self.seen = rev;
        let kind = match ev.event_type() {
            etcd_client::EventType::Put => EventType::Put,
            etcd_client::EventType::Delete => EventType::Delete,
        };
        let lease = kv.lease();
        let lease_ttl = if lease != 0 && !self.leases_in_buf.contains(&lease) {
            self.lease_ttl(lease).await
        } else {
            None
        };
        Ok(Event {
            kind,
            key: kv.key().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: rev,
            version: kv.version(),
            value: kv.value().to_vec(),
            lease,
            time: now,
            lease_ttl,
        })
    }

    /// Buffers an event for the next delta; one the store already holds (a full snapshot
    /// taken at a later revision than the watch had reached) is skipped.
    async fn push(&mut self, ev: &etcd_client::Event, now: DateTime<Utc>) -> Result<()> {
        let e = self.convert(ev, now).await?;
        if e.mod_revision > self.stored {
            if e.lease != 0 {
                self.leases_in_buf.insert(e.lease);
            }
            self.buf.push(&e);
        }
        Ok(())
    }

    /// Starts writing the buffered events as one delta in the background (the watch keeps
    /// being read meanwhile); the previous write is completed first, so deltas commit in order.
    async fn start_flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.finish_flush().await?;
        let (_, last) = self.buf.revisions();
        let start = self.stored + 1;
        let payload = std::mem::take(&mut self.buf).finish();
        self.leases_in_buf.clear();
        let w = DeltaWrite {
            store: self.store.clone(),
            client: self.client.clone(),
            endpoint: self.endpoint.clone(),
            fence: self.fence,
            codec: self.cfg.codec,
            start,
            last,
        };
        self.in_flight = Some(InFlight {
            handle: tokio::spawn(w.run(payload)),
            started: std::time::Instant::now(),
        });
        if let Some(m) = metrics::get() {
            m.delta_buffered_bytes.set(0);
        }
        Ok(())
    }

    /// Waits for the delta being written, if any; returns it.
    async fn finish_flush(&mut self) -> Result<Option<Snapshot>> {
        let Some(f) = self.in_flight.take() else {
            return Ok(None);
        };
        let r = match f.handle.await {
            Ok(r) => r,
            Err(e) => Err(Error::task("delta writer", e)),
        };
        metrics::snapshot_taken(Kind::Incr, r.is_ok(), f.started.elapsed().as_secs_f64());
        let w = r?;
        self.observer.stored(&w.key);
        self.stored = w.snap.last_revision;
        self.health
            .delta_stored(&w.snap, w.deltas_in_set, Some(&w.first));
        Ok(Some(w.snap))
    }

    /// Completes a background write that has finished, without waiting.
    async fn poll_flush(&mut self) -> Result<()> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.handle.is_finished())
        {
            self.finish_flush().await?;
        }
        Ok(())
    }

    /// Writes the buffered events as one delta and waits for it (and any write in flight);
    /// returns the last delta written, `None` when there was nothing to write.
    async fn flush(&mut self) -> Result<Option<Snapshot>> {
        self.start_flush().await?;
        self.finish_flush().await
    }
}

struct InFlight {
    handle: tokio::task::JoinHandle<Result<Written>>,
    started: std::time::Instant,
}

struct Written {
    snap: Snapshot,
    key: String,
    /// Deltas after the latest full, this one included, and the first of them.
    deltas_in_set: usize,
    first: Snapshot,
}

/// One delta object being written: checked, compressed, uploaded, fenced, committed.
struct DeltaWrite {
    store: Arc<SnapStore>,
    client: Client,
    endpoint: String,
    fence: Fence,
    codec: Codec,
    start: i64,
    last: i64,
}

impl DeltaWrite {
    async fn run(mut self, payload: Vec<u8>) -> Result<Written> {
        let (start, last) = (self.start, self.last);
        let snap = Snapshot::new(Kind::Incr, start, last, self.codec.suffix(), false)
            .with_encryption(self.store.keys().encrypts());
        let bytes = payload.len();
        let codec = self.codec;
        let (sink, pending) = self.store.begin_upload(&snap, bytes as u64).await?;
        let recipients = self.store.keys().recipients.clone();
        let key = pending.key().to_string();
        let k2 = key.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<()> {
            let io_err = |e| Error::io(&k2, "compress and encrypt the delta", e);
            let sealed = SealWriter::new(recipients.as_deref(), sink).map_err(io_err)?;
            let mut enc = codec.encoder(sealed).map_err(io_err)?;
            enc.write_all(&payload).map_err(io_err)?;
            enc.finish()
                .and_then(SealWriter::finish)
                .map_err(io_err)?
                .close()
        })
        .await
        .map_err(|e| Error::task("delta writer", e))?;
        if let Err(e) = written {
            pending.abort().await;
            return Err(e);
        }
        if let Err(e) = self
            .fence
            .check(&mut self.client, &self.endpoint, "delta snapshot")
            .await
        {
            pending.abort().await;
            return Err(e);
        }
        // another writer (an old or new leader's sidecar) must not have extended the chain
        let (snap, set) = self.store.commit_fenced(pending, &snap, start - 1).await?;
        tracing::info!(object = key, start, last, bytes, "delta snapshot stored");
        let first = set.deltas.first().cloned().unwrap_or_else(|| snap.clone());
        Ok(Written {
            deltas_in_set: set.deltas.len() + 1,
            first,
            snap,
            key,
        })
    }
}

async fn current_revision(ph: &mut DeltaWatch) -> Result<i64> {
    let opts = etcd_client::GetOptions::new()
        .with_keys_only()
        .with_limit(1);
    let r = etcd::call(
        &ph.endpoint,
        "read the current revision",
        Duration::from_secs(5),
        ph.client.get(vec![0u8], Some(opts)),
    )
    .await?;
    Ok(r.header().map(|h| h.revision()).unwrap_or(ph.seen))
}

async fn phase_loop(
    ph: &mut DeltaWatch,
    deadline: DateTime<Utc>,
    mut stops: PhaseIo<'_>,
) -> Result<PhaseEnd> {
    let (cfg, endpoint, start) = (ph.cfg, ph.endpoint.clone(), ph.stored);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.period, cfg.period);
    let until = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    let stop_at = tokio::time::sleep(until);
    tokio::pin!(stop_at);
    loop {
        tokio::select! {
            msg = ph.stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(Error::etcd_protocol(&endpoint, "the delta watch closed")),
                    Err(source) => return Err(Error::Etcd { endpoint: endpoint.clone(), what: "delta watch".into(), source }),
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        tracing::warn!(start = start + 1, compact_revision = resp.compact_revision(), "the delta watch start was compacted away; a full snapshot is needed");
                        // what was buffered before the cancel is still a valid delta
                        ph.flush().await?;
                        return Ok(PhaseEnd::Compacted);
                    }
                    return Err(Error::etcd_protocol(&endpoint, format!("the delta watch was cancelled: {}", resp.cancel_reason())));
                }
                let now = Utc::now();
                for ev in resp.events() {
                    ph.push(ev, now).await?;
                }
                if let Some(m) = metrics::get() {
                    m.delta_events.inc_by(resp.events().len() as u64);
                    m.watch_revision.set(ph.seen);
                    m.delta_buffered_bytes.set(ph.buf.len() as i64);
                }
                ph.poll_flush().await?;
                if ph.buf.len() >= cfg.memory_limit {
                    ph.start_flush().await?;
                    tick.reset();
                }
            }
            _ = tick.tick() => {
                ph.poll_flush().await?;
                ph.start_flush().await?;
            }
            _ = &mut stop_at => {
                ph.flush().await?;
                return Ok(PhaseEnd::Deadline);
            }
            _ = flag_set(stops.abandon) => {
                tracing::info!(dropped_bytes = ph.buf.len(), last_stored = ph.stored, "leadership lost: stopping delta snapshots without writing the buffered events");
                return Ok(PhaseEnd::Abandoned);
            }
            req = next_request(&mut stops.requests) => match req {
                Request::Delta { reply } => {
                    let r = ph.flush().await;
                    tick.reset();
                    match r {
                        Ok(s) => { let _ = reply.send(Ok(s)); }
                        Err(e) => {
                            let _ = reply.send(Err(e.to_string()));
                            return Err(e);
                        }
                    }
                }
                Request::Full { is_final, reply } => {
                    if let Err(e) = ph.flush().await {
                        let _ = reply.send(Err(format!("writing the pending delta before the full snapshot failed: {e}")));
                        return Err(e);
                    }
                    return Ok(PhaseEnd::FullRequested { is_final, reply });
                }
            },
            _ = flag_set(stops.shutdown) => {
                {
                    // the final delta: every event up to the revision current at the signal
                    let final_delta = async {
                        let target = current_revision(ph).await?;
                        while ph.seen < target {
                            match ph.stream.message().await {
                                Ok(Some(resp)) => {
                                    let now = Utc::now();
                                    for ev in resp.events() {
                                        ph.push(ev, now).await?;
                                    }
                                }
                                _ => break,
                            }
                        }
                        ph.flush().await.map(|_| ())
                    };
                    match tokio::time::timeout(cfg.flush_timeout, final_delta).await {
                        Ok(r) => r?,
                        Err(_) => tracing::error!("the final delta did not finish within {:?}", cfg.flush_timeout),
                    }
                    return Ok(PhaseEnd::Shutdown { last_revision: ph.stored });
                }
            }
        }
    }
}
