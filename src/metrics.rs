//! Prometheus metrics: etcdbrctl's `etcdbr_*` names and labels (section 9 of the reference),
//! with every label combination pre-initialised to 0 as etcdbrctl does, plus what an operator
//! needs to alert on: staleness, leadership, the watch's progress.
//!
//! `etcdbr_snapshotter_failure` is labelled with an error *category* rather than etcdbrctl's raw
//! error string, whose unbounded cardinality grows the registry with every distinct message.

use crate::format::layout::Kind;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) gc_total: IntCounterVec,
    pub(crate) latest_revision: IntGaugeVec,
    pub(crate) latest_timestamp: GaugeVec,
    pub(crate) required: IntGaugeVec,
    pub(crate) duration: HistogramVec,
    pub(crate) defrag_duration: HistogramVec,
    pub(crate) latest_deltas_total: IntGauge,
    pub(crate) latest_deltas_revisions_total: IntGauge,
    pub(crate) snapshotter_failure: IntCounterVec,
    pub(crate) cluster_size: IntGauge,
    pub(crate) is_learner: IntGauge,
    // etcdbr's own
    pub(crate) is_leader: IntGauge,
    pub(crate) stale: IntGaugeVec,
    pub(crate) etcd_revision: IntGauge,
    pub(crate) delta_buffered_bytes: IntGauge,
    pub(crate) delta_events: prometheus::IntCounter,
    pub(crate) watch_revision: IntGauge,
    pub(crate) up_seconds: Gauge,
    pub(crate) invalid_data_dirs: IntGauge,
    pub(crate) drill_last_success: Gauge,
    pub(crate) drill_result: IntGaugeVec,
    pub(crate) drill_seconds: Gauge,
    pub(crate) validation_duration: HistogramVec,
    pub(crate) restoration_duration: HistogramVec,
    pub(crate) add_learner_duration: HistogramVec,
    pub(crate) member_remove_duration: HistogramVec,
    pub(crate) member_promote_duration: HistogramVec,
    pub(crate) is_learner_count: IntCounterVec,
    pub(crate) api_refused: IntCounterVec,
}

/// Member and data-dir operations timed as etcdbrctl times them (label `succeeded`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Validation,
    /// `restore="single_node"` (a cluster of one) or `"single_member"` (one member of several).
    Restoration {
        single_node: bool,
    },
    AddLearner,
    MemberRemove,
    MemberPromote,
}

/// Why `/…` refused a request (label `reason` of `etcdbr_api_requests_refused_total`).
pub(crate) const REFUSAL_REASONS: &[&str] = &["no_credentials", "wrong_token"];

/// Error categories of `etcdbr_snapshotter_failure`.
pub(crate) const ERROR_CATEGORIES: &[&str] = &[
    "config",
    "etcd",
    "etcd_timeout",
    "store",
    "io",
    "integrity",
    "credentials",
    "fenced",
    "cancelled",
    "other",
];

const KINDS: [&str; 3] = ["Full", "Incr", "Chunk"];
const BOOLS: [&str; 2] = ["true", "false"];

fn build() -> prometheus::Result<Metrics> {
    let r = Registry::new();
    let ns = |name: &str, help: &str| Opts::new(name, help).namespace("etcdbr");
    let hist = |name: &str, help: &str| HistogramOpts::new(name, help).namespace("etcdbr");
    let m = Metrics {
        gc_total: IntCounterVec::new(
            ns(
                "snapshot_gc_total",
                "Total number of garbage-collected snapshots.",
            ),
            &["kind", "succeeded"],
        )?,
        latest_revision: IntGaugeVec::new(
            ns(
                "snapshot_latest_revision",
                "Revision number of the latest snapshot taken.",
            ),
            &["kind"],
        )?,
        latest_timestamp: GaugeVec::new(
            ns(
                "snapshot_latest_timestamp",
                "Timestamp (unix seconds) of the latest snapshot taken.",
            ),
            &["kind"],
        )?,
        required: IntGaugeVec::new(
            ns(
                "snapshot_required",
                "1 while a snapshot of this kind is due and not taken (stale backups).",
            ),
            &["kind"],
        )?,
        duration: HistogramVec::new(
            hist(
                "snapshot_duration_seconds",
                "Total latency distribution of taking and saving a snapshot.",
            ),
            &["kind", "succeeded"],
        )?,
        defrag_duration: HistogramVec::new(
            hist(
                "defragmentation_duration_seconds",
                "Total latency distribution of the defragmentation of each etcd member.",
            ),
            &["succeeded", "endpoint"],
        )?,
        latest_deltas_total: IntGauge::with_opts(ns(
            "snapstore_latest_deltas_total",
            "Number of delta snapshots after the latest full snapshot.",
        ))?,
        latest_deltas_revisions_total: IntGauge::with_opts(ns(
            "snapstore_latest_deltas_revisions_total",
            "Number of revisions covered by the delta snapshots after the latest full.",
        ))?,
        snapshotter_failure: IntCounterVec::new(
            ns(
                "snapshotter_failure",
                "Total number of snapshotter errors, by category.",
            ),
            &["error"],
        )?,
        cluster_size: IntGauge::with_opts(ns("cluster_size", "Size of the etcd cluster."))?,
        is_learner: IntGauge::with_opts(ns(
            "is_learner",
            "1 if this sidecar's etcd member is a learner.",
        ))?,
        is_leader: IntGauge::with_opts(ns(
            "is_leader",
            "1 if this sidecar's etcd member is the leader (and this sidecar snapshots).",
        ))?,
        stale: IntGaugeVec::new(
            ns(
                "snapshot_stale",
                "1 if backups of this kind are stale: no full within its schedule window, or no delta for 3 periods while etcd changed.",
            ),
            &["kind"],
        )?,
        etcd_revision: IntGauge::with_opts(ns(
            "etcd_revision",
            "Current revision of etcd, as last seen by the sidecar.",
        ))?,
        delta_buffered_bytes: IntGauge::with_opts(ns(
            "delta_buffered_bytes",
            "Bytes of watch events buffered for the next delta snapshot.",
        ))?,
        delta_events: prometheus::IntCounter::with_opts(ns(
            "delta_events_total",
            "Watch events received for delta snapshots.",
        ))?,
        watch_revision: IntGauge::with_opts(ns(
            "delta_watch_revision",
            "Last revision received by the delta watch (lag = etcdbr_etcd_revision - this).",
        ))?,
        up_seconds: Gauge::with_opts(ns(
            "start_time_seconds",
            "Start time of the sidecar (unix seconds).",
        ))?,
        drill_last_success: Gauge::with_opts(ns(
            "restore_drill_last_success_timestamp_seconds",
            "Unix time of the last restore drill that proved the backups equal to the cluster.",
        ))?,
        drill_result: IntGaugeVec::new(
            ns(
                "restore_drill_result",
                "Outcome of the last restore drill: 1 for its result (equal, unproven, mismatch, failed), 0 for the others.",
            ),
            &["result"],
        )?,
        drill_seconds: Gauge::with_opts(ns(
            "restore_drill_duration_seconds",
            "Time the last restore drill took.",
        ))?,
        invalid_data_dirs: IntGauge::with_opts(ns(
            "invalid_data_dirs",
            "Replaced data directories kept aside as <data-dir>.invalid-<time> (bounded by --keep-invalid-data-dirs).",
        ))?,
        validation_duration: HistogramVec::new(
            hist(
                "validation_duration_seconds",
                "Total latency distribution of validating the data directory.",
            ),
            &["succeeded"],
        )?,
        restoration_duration: HistogramVec::new(
            hist(
                "restoration_duration_seconds",
                "Total latency distribution of restoring the data directory from the store.",
            ),
            &["restore", "succeeded"],
        )?,
        add_learner_duration: HistogramVec::new(
            hist(
                "add_learner_duration_seconds",
                "Total latency distribution of adding this member to the cluster as a learner.",
            ),
            &["succeeded"],
        )?,
        member_remove_duration: HistogramVec::new(
            hist(
                "member_remove_duration_seconds",
                "Total latency distribution of removing this member from the cluster.",
            ),
            &["succeeded"],
        )?,
        member_promote_duration: HistogramVec::new(
            hist(
                "member_promote_duration_seconds",
                "Total latency distribution of promoting this learner to a voting member.",
            ),
            &["succeeded"],
        )?,
        is_learner_count: IntCounterVec::new(
            ns(
                "is_learner_count_total",
                "Total number of times this member was added to the cluster as a learner.",
            ),
            &["succeeded"],
        )?,
        api_refused: IntCounterVec::new(
            ns(
                "api_requests_refused_total",
                "API requests refused for missing or wrong credentials (--server-token-file, --server-client-ca).",
            ),
            &["reason"],
        )?,
        registry: r,
    };
    let r = &m.registry;
    r.register(Box::new(m.gc_total.clone()))?;
    r.register(Box::new(m.latest_revision.clone()))?;
    r.register(Box::new(m.latest_timestamp.clone()))?;
    r.register(Box::new(m.required.clone()))?;
    r.register(Box::new(m.duration.clone()))?;
    r.register(Box::new(m.defrag_duration.clone()))?;
    r.register(Box::new(m.latest_deltas_total.clone()))?;
    r.register(Box::new(m.latest_deltas_revisions_total.clone()))?;
    r.register(Box::new(m.snapshotter_failure.clone()))?;
    r.register(Box::new(m.cluster_size.clone()))?;
    r.register(Box::new(m.is_learner.clone()))?;
    r.register(Box::new(m.is_leader.clone()))?;
    r.register(Box::new(m.stale.clone()))?;
    r.register(Box::new(m.etcd_revision.clone()))?;
    r.register(Box::new(m.delta_buffered_bytes.clone()))?;
    r.register(Box::new(m.delta_events.clone()))?;
    r.register(Box::new(m.up_seconds.clone()))?;
    r.register(Box::new(m.watch_revision.clone()))?;
    r.register(Box::new(m.invalid_data_dirs.clone()))?;
    r.register(Box::new(m.drill_last_success.clone()))?;
    r.register(Box::new(m.drill_result.clone()))?;
    r.register(Box::new(m.drill_seconds.clone()))?;
    r.register(Box::new(m.validation_duration.clone()))?;
    r.register(Box::new(m.restoration_duration.clone()))?;
    r.register(Box::new(m.add_learner_duration.clone()))?;
    r.register(Box::new(m.member_remove_duration.clone()))?;
    r.register(Box::new(m.member_promote_duration.clone()))?;
    r.register(Box::new(m.is_learner_count.clone()))?;
    r.register(Box::new(m.api_refused.clone()))?;
    r.register(Box::new(NetworkBytes::new()?))?;
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    // etcdbrctl pre-initialises every label combination to 0
    for k in KINDS {
        for b in BOOLS {
            m.gc_total.with_label_values(&[k, b]);
            m.duration.with_label_values(&[k, b]);
        }
        m.latest_revision.with_label_values(&[k]);
        m.latest_timestamp.with_label_values(&[k]);
        m.required.with_label_values(&[k]);
    }
    for k in ["Full", "Incr"] {
        m.stale.with_label_values(&[k]);
    }
    for c in ERROR_CATEGORIES {
        m.snapshotter_failure.with_label_values(&[c]);
    }
    for b in BOOLS {
        m.validation_duration.with_label_values(&[b]);
        for kind in ["single_node", "single_member"] {
            m.restoration_duration.with_label_values(&[kind, b]);
        }
        m.add_learner_duration.with_label_values(&[b]);
        m.member_remove_duration.with_label_values(&[b]);
        m.member_promote_duration.with_label_values(&[b]);
        m.is_learner_count.with_label_values(&[b]);
    }
    for r in REFUSAL_REASONS {
        m.api_refused.with_label_values(&[r]);
    }
    m.up_seconds.set(chrono::Utc::now().timestamp() as f64);
    Ok(m)
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// The process-wide metrics; `None` only if the registry could not be built (logged once).
pub(crate) fn get() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| match build() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the metrics registry; /metrics will be empty");
                None
            }
        })
        .as_ref()
}

/// Text exposition of every metric.
pub(crate) fn render() -> String {
    let Some(m) = get() else {
        return String::new();
    };
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Records one snapshot attempt.
pub(crate) fn snapshot_taken(kind: Kind, ok: bool, secs: f64) {
    if let Some(m) = get() {
        m.duration
            .with_label_values(&[kind.as_str(), if ok { "true" } else { "false" }])
            .observe(secs);
    }
}

/// Records the latest stored snapshot of a kind.
pub(crate) fn latest(kind: Kind, revision: i64, unix: i64) {
    if let Some(m) = get() {
        m.latest_revision
            .with_label_values(&[kind.as_str()])
            .set(revision);
        m.latest_timestamp
            .with_label_values(&[kind.as_str()])
            .set(unix as f64);
    }
}

pub(crate) fn failure(category: &str) {
    if let Some(m) = get() {
        m.snapshotter_failure.with_label_values(&[category]).inc();
    }
}

/// How many replaced data directories are kept aside.
/// The outcomes of a restore drill (label `result` of `etcdbr_restore_drill_result`).
pub(crate) const DRILL_RESULTS: &[&str] = &["equal", "unproven", "mismatch", "failed"];

/// Records a restore drill's outcome (one of [`DRILL_RESULTS`]).
pub(crate) fn drill(result: &str, secs: f64) {
    if let Some(m) = get() {
        for r in DRILL_RESULTS {
            m.drill_result
                .with_label_values(&[r])
                .set(i64::from(*r == result));
        }
        m.drill_seconds.set(secs);
        if result == "equal" {
            m.drill_last_success
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
    }
}

pub(crate) fn set_invalid_data_dirs(n: usize) {
    if let Some(m) = get() {
        m.invalid_data_dirs.set(n as i64);
    }
}

pub(crate) fn gc_deleted(kind: &str, ok: bool) {
    if let Some(m) = get() {
        m.gc_total
            .with_label_values(&[kind, if ok { "true" } else { "false" }])
            .inc();
    }
}

fn ok_label(ok: bool) -> &'static str {
    if ok {
        "true"
    } else {
        "false"
    }
}

/// Records one timed operation.
pub(crate) fn operation(op: Op, ok: bool, secs: f64) {
    let Some(m) = get() else { return };
    let b = ok_label(ok);
    match op {
        Op::Validation => m.validation_duration.with_label_values(&[b]).observe(secs),
        Op::Restoration { single_node } => {
            let kind = if single_node {
                "single_node"
            } else {
                "single_member"
            };
            m.restoration_duration
                .with_label_values(&[kind, b])
                .observe(secs)
        }
        Op::AddLearner => {
            m.add_learner_duration.with_label_values(&[b]).observe(secs);
            m.is_learner_count.with_label_values(&[b]).inc();
        }
        Op::MemberRemove => m
            .member_remove_duration
            .with_label_values(&[b])
            .observe(secs),
        Op::MemberPromote => m
            .member_promote_duration
            .with_label_values(&[b])
            .observe(secs),
    }
}

/// Times `fut` as `op` (succeeded = it returned `Ok`).
pub(crate) async fn timed<T, E>(
    op: Op,
    fut: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E> {
    let t = std::time::Instant::now();
    let r = fut.await;
    operation(op, r.is_ok(), t.elapsed().as_secs_f64());
    r
}

/// The defragmentation histogram's series for `endpoints` (etcdbrctl's family exists from
/// start-up only once an endpoint is known; these are the configured ones).
pub(crate) fn init_defrag_endpoints(endpoints: &[String]) {
    if let Some(m) = get() {
        for e in endpoints {
            for b in BOOLS {
                m.defrag_duration.with_label_values(&[b, e]);
            }
        }
    }
}

/// A refused API request.
pub(crate) fn api_refused(reason: &'static str) {
    if let Some(m) = get() {
        m.api_refused.with_label_values(&[reason]).inc();
    }
}

/// `etcdbr_network_received_bytes` and `etcdbr_network_transmitted_bytes`: the sums over the
/// interfaces of `/proc/self/net/dev`, read at each scrape (etcdbrctl's counter functions).
struct NetworkBytes {
    received: prometheus::IntCounter,
    transmitted: prometheus::IntCounter,
    descs: Vec<prometheus::core::Desc>,
}

impl NetworkBytes {
    fn new() -> prometheus::Result<Self> {
        use prometheus::core::Collector;
        let received = prometheus::IntCounter::with_opts(
            Opts::new("network_received_bytes", "Bytes received over the network (all interfaces of this process's network namespace).")
                .namespace("etcdbr"),
        )?;
        let transmitted = prometheus::IntCounter::with_opts(
            Opts::new("network_transmitted_bytes", "Bytes transmitted over the network (all interfaces of this process's network namespace).")
                .namespace("etcdbr"),
        )?;
        let descs = received
            .desc()
            .into_iter()
            .chain(transmitted.desc())
            .cloned()
            .collect();
        Ok(NetworkBytes {
            received,
            transmitted,
            descs,
        })
    }
}

/// (received, transmitted) bytes summed over the interfaces of a `/proc/net/dev` text.
fn net_dev_totals(text: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in text.lines().skip(2) {
        let Some((_, counters)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = counters
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() >= 9 {
            rx = rx.saturating_add(f[0]);
            tx = tx.saturating_add(f[8]);
        }
    }
    (rx, tx)
}

impl prometheus::core::Collector for NetworkBytes {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Ok(text) = std::fs::read_to_string("/proc/self/net/dev") {
            let (rx, tx) = net_dev_totals(&text);
            // counters only go up (an interface that went away lowers the sum)
            for (c, v) in [(&self.received, rx), (&self.transmitted, tx)] {
                if v > c.get() {
                    c.inc_by(v - c.get());
                }
            }
        }
        let mut out = self.received.collect();
        out.extend(self.transmitted.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_etcdbrctl_names_preinitialised() {
        snapshot_taken(Kind::Full, true, 1.5);
        failure("etcd");
        let text = render();
        for needle in [
            "etcdbr_snapshot_gc_total{kind=\"Full\",succeeded=\"false\"} 0",
            "etcdbr_snapshot_duration_seconds_count{kind=\"Full\",succeeded=\"true\"} 1",
            "etcdbr_snapshotter_failure{error=\"etcd\"} 1",
            "etcdbr_snapshot_latest_revision{kind=\"Incr\"} 0",
            "etcdbr_snapstore_latest_deltas_total 0",
            "process_resident_memory_bytes",
            "etcdbr_validation_duration_seconds_count{succeeded=\"true\"} 0",
            "etcdbr_restoration_duration_seconds_count{restore=\"single_node\",succeeded=\"false\"} 0",
            "etcdbr_add_learner_duration_seconds_count{succeeded=\"true\"} 0",
            "etcdbr_member_promote_duration_seconds_count{succeeded=\"true\"} 0",
            "etcdbr_member_remove_duration_seconds_count{succeeded=\"true\"} 0",
            "etcdbr_is_learner_count_total{succeeded=\"true\"} 0",
            "# TYPE etcdbr_network_received_bytes counter",
            "# TYPE etcdbr_network_transmitted_bytes counter",
            "etcdbr_api_requests_refused_total{reason=\"wrong_token\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
    }

    #[test]
    fn net_dev_sums_every_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  100   2    0    0    0     0          0         0      300   2    0    0    0     0       0          0\n  eth0:   50   1    0    0    0     0          0         0       7   1    0    0    0     0       0          0\n";
        assert_eq!(net_dev_totals(text), (150, 307));
    }
}
