//! The delta snapshot format, byte-compatible with etcdbrctl's: a JSON array of
//! `{"etcdEvent": <mvccpb.Event>, "time": "<RFC 3339 nano>"}` in Go's `encoding/json` rendering of
//! the protobuf-generated types (bytes as standard base64, snake_case keys in field order,
//! zero-valued fields omitted, `type` 1 for DELETE and absent for PUT), followed by the raw
//! 32-byte SHA-256 of the JSON; the whole payload is then compressed per the name's suffix.
//!
//! Our addition, invisible to etcdbrctl (Go's decoder ignores unknown keys): an event that is the
//! first to use a lease in a delta carries `"leaseTTL": <granted TTL in seconds>`, so that a
//! restore can re-grant the lease with its original ID and TTL.

use crate::error::{Error, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// What an event did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// One etcd event as recorded in a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventType,
    /// The key.
    pub key: Vec<u8>,
    /// The revision the key was created at.
    pub create_revision: i64,
    /// The revision of this event.
    pub mod_revision: i64,
    /// The key's version after the event (0 after a delete).
    pub version: i64,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
    /// When the watch delivered the event.
    pub time: DateTime<Utc>,
    /// Our addition: the lease's granted TTL, on the first event of a delta using it.
    pub lease_ttl: Option<i64>,
}

/// Appends `"name":<n>` when `n` is not zero (Go's omitempty).
fn num(out: &mut String, first: &mut bool, name: &str, n: i64) {
    if n != 0 {
        if !*first {
            out.push(',');
        }
        *first = false;
        let _ = write!(out, "\"{name}\":{n}");
    }
}

fn bytes(out: &mut String, first: &mut bool, name: &str, b: &[u8]) {
    if !b.is_empty() {
        if !*first {
            out.push(',');
        }
        *first = false;
        let _ = write!(out, "\"{name}\":\"{}\"", B64.encode(b));
    }
}

/// Go's `time.Time` JSON rendering (RFC 3339 with nanoseconds, trailing zeros trimmed).
fn go_time(t: &DateTime<Utc>) -> String {
    crate::format::layout::go_rfc3339_nano(t)
}

impl Event {
    /// The JSON of one array element, exactly as etcdbrctl writes it.
    pub(crate) fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + (self.key.len() + self.value.len()) * 4 / 3);
        out.push_str("{\"etcdEvent\":{");
        let mut first = true;
        if self.kind == EventType::Delete {
            out.push_str("\"type\":1");
            first = false;
        }
        if !first {
            out.push(',');
        }
        out.push_str("\"kv\":{");
        let mut f = true;
        bytes(&mut out, &mut f, "key", &self.key);
        num(&mut out, &mut f, "create_revision", self.create_revision);
        num(&mut out, &mut f, "mod_revision", self.mod_revision);
        num(&mut out, &mut f, "version", self.version);
        bytes(&mut out, &mut f, "value", &self.value);
        num(&mut out, &mut f, "lease", self.lease);
        out.push_str("}},\"time\":\"");
        out.push_str(&go_time(&self.time));
        out.push('"');
        if let Some(ttl) = self.lease_ttl {
            let _ = write!(out, ",\"leaseTTL\":{ttl}");
        }
        out.push('}');
        out
    }
}

/// Builds a delta payload incrementally, as etcdbrctl does: `[` + events joined by `,` + `]`.
#[derive(Debug, Default)]
pub struct DeltaBuilder {
    json: String,
    events: usize,
    first_revision: i64,
    last_revision: i64,
}

impl DeltaBuilder {
    /// Adds one event.
    pub fn push(&mut self, ev: &Event) {
        self.json.push(if self.events == 0 { '[' } else { ',' });
        self.json.push_str(&ev.to_json());
        if self.events == 0 {
            self.first_revision = ev.mod_revision;
        }
        self.last_revision = ev.mod_revision;
        self.events += 1;
    }

    /// Bytes buffered so far (what `--delta-snapshot-memory-limit` compares against).
    pub(crate) fn len(&self) -> usize {
        self.json.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events == 0
    }

    pub(crate) fn events(&self) -> usize {
        self.events
    }

    /// Revisions of the first and last buffered events.
    pub(crate) fn revisions(&self) -> (i64, i64) {
        (self.first_revision, self.last_revision)
    }

    /// The uncompressed object content: the JSON array followed by its SHA-256.
    pub fn finish(mut self) -> Vec<u8> {
        if self.events == 0 {
            self.json.push('[');
        }
        self.json.push(']');
        let mut out = self.json.into_bytes();
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    create_revision: i64,
    #[serde(default)]
    mod_revision: i64,
    #[serde(default)]
    version: i64,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    lease: i64,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default, rename = "type")]
    kind: i32,
    kv: Option<RawKv>,
}

#[derive(Deserialize)]
struct RawElement {
    #[serde(rename = "etcdEvent")]
    etcd_event: RawEvent,
    time: DateTime<Utc>,
    #[serde(default, rename = "leaseTTL")]
    lease_ttl: Option<i64>,
}

/// Bounds on a delta read as a stream (a corrupt or hostile object is an error that names it,
/// never an unbounded allocation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Decompressed bytes of one delta (`--max-delta-bytes`).
    pub(crate) delta_bytes: u64,
    /// JSON bytes of one event (etcd's requests are at most a few MiB; base64 adds a third).
    pub(crate) event_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            delta_bytes: 1 << 30,
            event_bytes: 128 << 20,
        }
    }
}

/// Passes everything but the last 32 bytes of `inner` on, hashing it; the last 32 bytes are the
/// trailer. Counts bytes against the [`Limits`].
struct HoldBack<R> {
    inner: R,
    held: Vec<u8>,
    eof: bool,
    hasher: Sha256,
    total: u64,
    since_event: std::rc::Rc<std::cell::Cell<u64>>,
    limits: Limits,
}

impl<R: std::io::Read> std::io::Read for HoldBack<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        // keep more than 32 bytes held unless the input ended
        while !self.eof && self.held.len() <= 32 + out.len().min(64 << 10) {
            let mut chunk = [0u8; 64 << 10];
            let n = self.inner.read(&mut chunk)?;
            if n == 0 {
                self.eof = true;
            }
            self.held.extend_from_slice(&chunk[..n]);
        }
        let avail = self.held.len().saturating_sub(32);
        let n = avail.min(out.len());
        out[..n].copy_from_slice(&self.held[..n]);
        self.hasher.update(&self.held[..n]);
        self.held.drain(..n);
        self.total += n as u64;
        let since = self.since_event.get() + n as u64;
        self.since_event.set(since);
        if self.total > self.limits.delta_bytes {
            return Err(std::io::Error::other(format!(
                "the delta is larger than {} bytes decompressed (--max-delta-bytes)",
                self.limits.delta_bytes
            )));
        }
        if since > self.limits.event_bytes {
            return Err(std::io::Error::other(format!(
                "an event is larger than {} bytes",
                self.limits.event_bytes
            )));
        }
        Ok(n)
    }
}

/// Reads a delta payload (JSON + SHA-256 trailer, decompressed) from `r` event by event,
/// calling `on_event` for each as soon as it is parsed: memory holds one event, whatever the
/// delta's size. The trailer is checked at the end, so a caller must not make what it did with
/// the events visible before this returns `Ok`. `object` names the delta in errors.
pub(crate) fn stream<R: std::io::Read>(
    r: R,
    object: &str,
    limits: Limits,
    mut on_event: impl FnMut(Event) -> Result<()>,
) -> Result<()> {
    use serde::de::{DeserializeSeed, SeqAccess, Visitor};
    use std::io::Read as _;
    let since_event = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let hold = HoldBack {
        inner: r,
        held: Vec::new(),
        eof: false,
        hasher: Sha256::new(),
        total: 0,
        since_event: since_event.clone(),
        limits,
    };
    let mut buf = std::io::BufReader::with_capacity(64 << 10, hold);
    // the callback's own error, kept aside (serde only carries strings)
    let mut failed: Option<Error> = None;

    struct Events<'a, F> {
        on_event: &'a mut F,
        object: &'a str,
        since_event: &'a std::cell::Cell<u64>,
        failed: &'a mut Option<Error>,
    }
    impl<'de, F: FnMut(Event) -> Result<()>> Visitor<'de> for Events<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of delta events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            while let Some(raw) = seq.next_element::<RawElement>()? {
                self.since_event.set(0);
                let ev = decode_element(raw, self.object).and_then(|ev| (self.on_event)(ev));
                if let Err(e) = ev {
                    let msg = e.to_string();
                    *self.failed = Some(e);
                    return Err(serde::de::Error::custom(msg));
                }
            }
            Ok(())
        }
    }
    impl<'de, F: FnMut(Event) -> Result<()>> DeserializeSeed<'de> for Events<'_, F> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    let parsed = {
        let mut de = serde_json::Deserializer::from_reader(&mut buf);
        Events {
            on_event: &mut on_event,
            object,
            since_event: &since_event,
            failed: &mut failed,
        }
        .deserialize(&mut de)
    };
    if let Some(e) = failed {
        return Err(e);
    }
    if let Err(e) = parsed {
        // a damaged object is best named by its hash: read the rest and compare
        let drained = std::io::copy(&mut buf, &mut std::io::sink());
        let hold = buf.into_inner();
        if drained.is_ok()
            && hold.held.len() == 32
            && hold.hasher.finalize().as_slice() != hold.held.as_slice()
        {
            return Err(Error::integrity(
                object,
                "sha256 mismatch: the delta is corrupted or truncated",
            ));
        }
        return Err(Error::integrity(
            object,
            format!("not a readable delta snapshot ({e})"),
        ));
    }
    // only whitespace may follow the array; then the input ends with the trailer
    let mut rest = Vec::new();
    buf.by_ref()
        .take(4096)
        .read_to_end(&mut rest)
        .map_err(|e| Error::integrity(object, format!("read failed: {e}")))?;
    if rest.iter().any(|b| !b.is_ascii_whitespace()) || rest.len() == 4096 {
        return Err(Error::integrity(
            object,
            "unexpected bytes after the JSON array (corrupted?)",
        ));
    }
    let hold = buf.into_inner();
    if hold.held.len() != 32 {
        return Err(Error::integrity(
            object,
            "the delta is too short to hold its sha256 trailer (truncated?)",
        ));
    }
    if hold.hasher.finalize().as_slice() != hold.held.as_slice() {
        return Err(Error::integrity(
            object,
            "sha256 mismatch: the delta is corrupted or truncated",
        ));
    }
    Ok(())
}

fn decode_element(r: RawElement, object: &str) -> Result<Event> {
    let decode = |s: Option<String>, what: &str| -> Result<Vec<u8>> {
        match s {
            None => Ok(Vec::new()),
            Some(s) => B64
                .decode(s)
                .map_err(|e| Error::integrity(object, format!("invalid base64 in {what}: {e}"))),
        }
    };
    let kind = match r.etcd_event.kind {
        0 => EventType::Put,
        1 => EventType::Delete,
        k => return Err(Error::integrity(object, format!("unknown event type {k}"))),
    };
    let kv = r
        .etcd_event
        .kv
        .ok_or_else(|| Error::integrity(object, "event without kv"))?;
    Ok(Event {
        kind,
        key: decode(kv.key, "key")?,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: decode(kv.value, "value")?,
        lease: kv.lease,
        time: r.time,
        lease_ttl: r.lease_ttl,
    })
}

/// Parses a whole uncompressed delta payload (JSON + SHA-256 trailer) in memory.
pub fn parse(payload: &[u8], object: &str) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    stream(payload, object, Limits::default(), |e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t() -> DateTime<Utc> {
        Utc.timestamp_opt(1784884502, 123_456_000).unwrap()
    }

    #[test]
    fn renders_like_go() {
        let put = Event {
            kind: EventType::Put,
            key: b"/registry/a".to_vec(),
            create_revision: 42004,
            mod_revision: 69263102,
            version: 4511635,
            value: b"k8s".to_vec(),
            lease: 0,
            time: t(),
            lease_ttl: None,
        };
        assert_eq!(
            put.to_json(),
            r#"{"etcdEvent":{"kv":{"key":"L3JlZ2lzdHJ5L2E=","create_revision":42004,"mod_revision":69263102,"version":4511635,"value":"azhz"}},"time":"2026-07-24T09:15:02.123456Z"}"#
        );
        let del = Event {
            kind: EventType::Delete,
            key: b"/a".to_vec(),
            create_revision: 0,
            mod_revision: 7,
            version: 0,
            value: vec![],
            lease: 0,
            time: Utc.timestamp_opt(1784884502, 0).unwrap(),
            lease_ttl: None,
        };
        assert_eq!(
            del.to_json(),
            r#"{"etcdEvent":{"type":1,"kv":{"key":"L2E=","mod_revision":7}},"time":"2026-07-24T09:15:02Z"}"#
        );
    }

    #[test]
    fn roundtrips_and_checks_the_hash() {
        let mut b = DeltaBuilder::default();
        let evs: Vec<Event> = (0..3)
            .map(|i| Event {
                kind: if i == 1 {
                    EventType::Delete
                } else {
                    EventType::Put
                },
                key: format!("/k{i}").into_bytes(),
                create_revision: if i == 1 { 0 } else { 10 },
                mod_revision: 10 + i,
                version: if i == 1 { 0 } else { 1 },
                value: if i == 1 {
                    vec![]
                } else {
                    vec![0, 255, b'"', b'\\']
                },
                lease: if i == 2 { 0x1234 } else { 0 },
                time: t(),
                lease_ttl: if i == 2 { Some(60) } else { None },
            })
            .collect();
        for e in &evs {
            b.push(e);
        }
        assert_eq!(b.revisions(), (10, 12));
        let payload = b.finish();
        assert_eq!(parse(&payload, "d").unwrap(), evs);
        let mut bad = payload.clone();
        bad[5] ^= 1;
        assert!(parse(&bad, "d")
            .unwrap_err()
            .to_string()
            .contains("sha256 mismatch"));
        assert!(parse(&payload[..payload.len() - 1], "d").is_err());
        assert!(parse(b"short", "d").is_err());
    }
}
