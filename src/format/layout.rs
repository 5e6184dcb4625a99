//! Object-store layout of etcdbrctl: snapshot names, their parsing, ordering and the "latest
//! snapshot set".
//!
//! Keys are `<prefix>/v2/<name>` (written) or `<prefix>/v1/Backup-<unix>/<name>` (legacy, read
//! only), where `<name>` is `<Kind>-<%08d start>-<%08d last>-<unix><suffix>[.age][.final]` (`.age`:
//! encrypted, ours, see [`crate::format::encryption`]). Chunk
//! objects left by etcdbrctl's GCS/Swift uploads are `<name>/<%010d part>` below the same dir.

use crate::format::encryption::AGE_SUFFIX;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use std::cmp::Ordering;
use std::fmt;

/// Directory of the layout we write.
pub(crate) const VERSION_V2: &str = "v2";
/// Legacy layout, read (restore, GC, copy) but never written.
pub(crate) const VERSION_V1: &str = "v1";
pub(crate) const FINAL_SUFFIX: &str = ".final";

/// Full or delta (etcdbrctl's `Incr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Kind {
    /// A full snapshot: the whole db.
    Full,
    /// A delta snapshot: watch events after the previous snapshot.
    Incr,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "Full",
            Kind::Incr => "Incr",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compression suffixes that can appear in a name; the codec for each is in [`crate::format::codec`].
pub(crate) const KNOWN_SUFFIXES: &[&str] = &["", ".gz", ".zlib", ".Z", ".zst"];

/// One snapshot object, with the fields (and JSON keys) of etcdbrctl's `brtypes.Snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// When the snapshot was taken (the name's Unix time).
    #[serde(serialize_with = "ser_go_time")]
    pub created_on: DateTime<Utc>,
    /// Kept misspelt: it is the key etcdbrctl's clients read.
    #[serde(rename = "immutabilityExpriyTime", serialize_with = "ser_go_time")]
    pub immutability_expiry_time: DateTime<Utc>,
    /// The store's version id of the object, when it keeps versions.
    #[serde(rename = "versionID")]
    pub version_id: Option<String>,
    /// Full or delta.
    pub kind: Kind,
    /// `Backup-<unix>` for v1 objects, empty for v2.
    pub snap_dir: String,
    /// The name, e.g. `Full-00000000-00000042-1784884502.gz` (for a chunk: `<name>/<part>`).
    pub snap_name: String,
    /// Key prefix up to and including the version dir (`main-etcd/v2/`); empty for a snapshot
    /// that has not been listed from a store.
    pub prefix: String,
    /// `.gz`, `.zlib`, `.Z`, `.zst` or "" (none).
    pub compression_suffix: String,
    /// The first revision it holds (0 for a full).
    pub start_revision: i64,
    /// The last revision it holds.
    pub last_revision: i64,
    /// A chunk of an etcdbrctl multipart upload (not a snapshot by itself).
    pub is_chunk: bool,
    /// Marked final (`.final`): the last snapshot before the cluster was deleted.
    pub is_final: bool,
    /// Encrypted (`.age` after the compression suffix; etcdbr only, and absent from the JSON
    /// of a plain snapshot, so that its shape stays etcdbrctl's).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

fn ser_go_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&go_rfc3339_nano(t))
}

/// Go's `time.RFC3339Nano` rendering: fraction digits with trailing zeros trimmed.
pub(crate) fn go_rfc3339_nano(t: &DateTime<Utc>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let ns = t.timestamp_subsec_nanos();
    if ns == 0 {
        format!("{base}Z")
    } else {
        let frac = format!("{ns:09}");
        format!("{base}.{}Z", frac.trim_end_matches('0'))
    }
}

/// Go's zero `time.Time`, which etcdbrctl reports when no immutability is set.
pub(crate) fn go_zero_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Snapshot {
    /// A new snapshot taken now, named in the v2 layout.
    pub fn new(
        kind: Kind,
        start_revision: i64,
        last_revision: i64,
        compression_suffix: &str,
        is_final: bool,
    ) -> Self {
        Self::new_at(
            kind,
            start_revision,
            last_revision,
            compression_suffix,
            is_final,
            Utc::now(),
        )
    }

    pub(crate) fn new_at(
        kind: Kind,
        start_revision: i64,
        last_revision: i64,
        compression_suffix: &str,
        is_final: bool,
        created_on: DateTime<Utc>,
    ) -> Self {
        let mut s = Snapshot {
            created_on,
            immutability_expiry_time: go_zero_time(),
            version_id: None,
            kind,
            snap_dir: String::new(),
            snap_name: String::new(),
            prefix: String::new(),
            compression_suffix: compression_suffix.to_string(),
            start_revision,
            last_revision,
            is_chunk: false,
            is_final,
            encrypted: false,
        };
        s.snap_name = s.generate_name();
        s
    }

    /// The same snapshot, encrypted or not (its name follows).
    pub fn with_encryption(mut self, encrypted: bool) -> Self {
        self.encrypted = encrypted;
        self.snap_name = self.generate_name();
        self
    }

    /// `<Kind>-<%08d start>-<%08d last>-<unix><suffix>[.age][.final]`; `%08d` is a minimum width.
    pub(crate) fn generate_name(&self) -> String {
        format!(
            "{}-{:08}-{:08}-{}{}{}{}",
            self.kind,
            self.start_revision,
            self.last_revision,
            self.created_on.timestamp(),
            self.compression_suffix,
            if self.encrypted { AGE_SUFFIX } else { "" },
            if self.is_final { FINAL_SUFFIX } else { "" }
        )
    }

    /// The object key below a store prefix (the user's `--store-prefix`, without version dir).
    /// Listed snapshots keep the prefix they were found under.
    pub fn key(&self, store_prefix: &str) -> String {
        let base = if self.prefix.is_empty() {
            version_dir(store_prefix, VERSION_V2)
        } else {
            self.prefix.clone()
        };
        if self.snap_dir.is_empty() {
            format!("{base}{}", self.snap_name)
        } else {
            format!("{base}{}/{}", self.snap_dir, self.snap_name)
        }
    }

    /// Parses an object key. Errors name the key and the rule it breaks.
    pub fn parse_key(key: &str) -> Result<Snapshot, String> {
        let segments: Vec<&str> = key.split('/').collect();
        // The version dir is the last `v1` or `v2` segment followed by 1 to 3 segments.
        let vidx = segments
            .iter()
            .enumerate()
            .rev()
            .find(|(i, s)| {
                (**s == VERSION_V1 || **s == VERSION_V2)
                    && (1..=3).contains(&(segments.len() - i - 1))
            })
            .map(|(i, _)| i)
            .ok_or_else(|| {
                format!("{key:?}: no v1/ or v2/ directory followed by a snapshot name")
            })?;
        let version = segments[vidx];
        let prefix = format!("{}/", segments[..=vidx].join("/"));
        let rest = &segments[vidx + 1..];
        let (snap_dir, name_tok, chunk) = match (version, rest.len()) {
            (VERSION_V1, 2) => (rest[0], rest[1], None),
            (VERSION_V1, 3) => (rest[0], rest[1], Some(rest[2])),
            (VERSION_V2, 1) => ("", rest[0], None),
            (VERSION_V2, 2) => ("", rest[0], Some(rest[1])),
            _ => {
                return Err(format!(
                    "{key:?}: unexpected number of path segments below {version}/"
                ))
            }
        };
        if version == VERSION_V1 && !snap_dir.starts_with("Backup-") {
            return Err(format!(
                "{key:?}: v1 snapshot outside a Backup-<time> directory"
            ));
        }
        let mut snap = parse_name(name_tok).map_err(|e| format!("{key:?}: {e}"))?;
        if let Some(part) = chunk {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{key:?}: chunk part {part:?} is not a number"));
            }
            snap.is_chunk = true;
            snap.snap_name = format!("{name_tok}/{part}");
        }
        snap.snap_dir = snap_dir.to_string();
        snap.prefix = prefix;
        Ok(snap)
    }

    /// The name without a `.final` marker (what the copier writes and compares).
    pub(crate) fn name_without_final(&self) -> &str {
        self.snap_name
            .strip_suffix(FINAL_SUFFIX)
            .unwrap_or(&self.snap_name)
    }

    /// The name without `.final` nor `.age`: the same backup, however it is stored.
    pub(crate) fn plain_name(&self) -> &str {
        let n = self.name_without_final();
        n.strip_suffix(AGE_SUFFIX).unwrap_or(n)
    }
}

/// `<prefix>/<version>/`, or `<version>/` for an empty prefix.
pub(crate) fn version_dir(store_prefix: &str, version: &str) -> String {
    let p = store_prefix.trim_matches('/');
    if p.is_empty() {
        format!("{version}/")
    } else {
        format!("{p}/{version}/")
    }
}

/// Parses a bare snapshot name (no directories).
pub(crate) fn parse_name(name: &str) -> Result<Snapshot, String> {
    let tokens: Vec<&str> = name.split('-').collect();
    if tokens.len() != 4 {
        return Err(format!(
            "name {name:?} does not have 4 dash-separated parts"
        ));
    }
    let kind = match tokens[0] {
        "Full" => Kind::Full,
        "Incr" => Kind::Incr,
        k => return Err(format!("unknown snapshot kind {k:?}")),
    };
    let start =
        parse_rev(tokens[1]).ok_or_else(|| format!("invalid start revision {:?}", tokens[1]))?;
    let last =
        parse_rev(tokens[2]).ok_or_else(|| format!("invalid last revision {:?}", tokens[2]))?;
    if start > last {
        return Err(format!(
            "start revision {start} is greater than last revision {last}"
        ));
    }
    let mut rest = tokens[3];
    let is_final = match rest.strip_suffix(FINAL_SUFFIX) {
        Some(r) => {
            rest = r;
            true
        }
        None => false,
    };
    let encrypted = match rest.strip_suffix(AGE_SUFFIX) {
        Some(r) => {
            rest = r;
            true
        }
        None => false,
    };
    let (time_str, suffix) = match rest.find('.') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !KNOWN_SUFFIXES.contains(&suffix) {
        return Err(format!("unknown compression suffix {suffix:?}"));
    }
    if time_str.is_empty() || !time_str.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid creation time {time_str:?}"));
    }
    let unix: i64 = time_str
        .parse()
        .map_err(|_| format!("invalid creation time {time_str:?}"))?;
    let created_on = Utc
        .timestamp_opt(unix, 0)
        .single()
        .ok_or_else(|| format!("creation time {unix} out of range"))?;
    let mut s = Snapshot::new_at(kind, start, last, suffix, is_final, created_on)
        .with_encryption(encrypted);
    s.snap_name = name.to_string();
    Ok(s)
}

fn parse_rev(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// etcdbrctl's `SnapList` order: last revision ascending; on ties non-chunks before chunks, then
/// creation time ascending.
pub(crate) fn compare(a: &Snapshot, b: &Snapshot) -> Ordering {
    a.last_revision
        .cmp(&b.last_revision)
        .then_with(|| a.is_chunk.cmp(&b.is_chunk))
        .then_with(|| a.created_on.cmp(&b.created_on))
}

/// Sorts snapshots in etcdbrctl's order ([`compare`]).
pub fn sort(list: &mut [Snapshot]) {
    list.sort_by(compare);
}

/// The base full snapshot and the deltas after it, as a restore uses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotSet {
    pub(crate) full: Option<Snapshot>,
    pub(crate) deltas: Vec<Snapshot>,
}

impl SnapshotSet {
    /// Its encrypted objects, the full first.
    pub(crate) fn encrypted(&self) -> impl Iterator<Item = &Snapshot> {
        self.full.iter().chain(&self.deltas).filter(|s| s.encrypted)
    }

    /// Revision the set restores to: the last delta's, else the full's, else 0.
    pub(crate) fn last_revision(&self) -> i64 {
        self.deltas
            .last()
            .or(self.full.as_ref())
            .map(|s| s.last_revision)
            .unwrap_or(0)
    }
}

/// The latest set of a sorted list: the highest-revision full and every delta after it, in
/// revision order; without any full, no base and every delta (as etcdbrctl does).
pub(crate) fn latest_set(sorted: &[Snapshot]) -> SnapshotSet {
    let mut deltas = Vec::new();
    let mut full = None;
    for s in sorted.iter().rev() {
        if s.is_chunk {
            continue;
        }
        match s.kind {
            Kind::Full => {
                full = Some(s.clone());
                break;
            }
            Kind::Incr => deltas.push(s.clone()),
        }
    }
    deltas.reverse();
    SnapshotSet { full, deltas }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(unix, 0).unwrap()
    }

    #[test]
    fn generates_names() {
        let s = Snapshot::new_at(Kind::Full, 0, 9002, ".gz", false, at(1565021494));
        assert_eq!(s.snap_name, "Full-00000000-00009002-1565021494.gz");
        assert_eq!(s.key(""), "v2/Full-00000000-00009002-1565021494.gz");
        assert_eq!(
            s.key("main-etcd"),
            "main-etcd/v2/Full-00000000-00009002-1565021494.gz"
        );
        assert_eq!(
            s.key("/a/b/"),
            "a/b/v2/Full-00000000-00009002-1565021494.gz"
        );
        let d = Snapshot::new_at(Kind::Incr, 13002039293, 13002039400, "", false, at(1));
        assert_eq!(d.snap_name, "Incr-13002039293-13002039400-1");
        let f = Snapshot::new_at(Kind::Full, 0, 5, ".Z", true, at(7));
        assert_eq!(f.snap_name, "Full-00000000-00000005-7.Z.final");
        let z = Snapshot::new_at(Kind::Full, 0, 5, ".zst", false, at(7));
        assert_eq!(z.snap_name, "Full-00000000-00000005-7.zst");
        let u = Snapshot::new_at(Kind::Full, 0, 5, "", true, at(7));
        assert_eq!(u.snap_name, "Full-00000000-00000005-7.final");
    }

    #[test]
    fn parses_every_suffix_and_final() {
        for suffix in KNOWN_SUFFIXES {
            for fin in [false, true] {
                let name = format!(
                    "Incr-00000010-00000020-1600000000{suffix}{}",
                    if fin { ".final" } else { "" }
                );
                let s = Snapshot::parse_key(&format!("pre/v2/{name}")).unwrap();
                assert_eq!(s.kind, Kind::Incr);
                assert_eq!((s.start_revision, s.last_revision), (10, 20));
                assert_eq!(s.compression_suffix, *suffix);
                assert_eq!(s.is_final, fin);
                assert_eq!(s.created_on, at(1600000000));
                assert_eq!(s.prefix, "pre/v2/");
                assert_eq!(s.snap_name, name);
                assert!(!s.is_chunk);
                // generation is the inverse of parsing
                let mut regenerated = s.clone();
                regenerated.prefix.clear();
                assert_eq!(regenerated.generate_name(), name);
            }
        }
    }

    #[test]
    fn encrypted_names() {
        for suffix in KNOWN_SUFFIXES {
            for fin in [false, true] {
                let s =
                    Snapshot::new_at(Kind::Full, 0, 42, suffix, fin, at(7)).with_encryption(true);
                let want = format!(
                    "Full-00000000-00000042-7{suffix}.age{}",
                    if fin { ".final" } else { "" }
                );
                assert_eq!(s.snap_name, want);
                let p = Snapshot::parse_key(&format!("v2/{want}")).unwrap();
                assert!(p.encrypted);
                assert_eq!(p.compression_suffix, *suffix);
                assert_eq!(p.is_final, fin);
                assert_eq!(p.plain_name(), format!("Full-00000000-00000042-7{suffix}"));
                assert_eq!(serde_json::to_value(&p).unwrap()["encrypted"], true);
            }
        }
        assert!(Snapshot::parse_key("v2/Full-00000000-00000001-1.age.gz").is_err());
        assert!(Snapshot::parse_key("v2/Full-00000000-00000001-1.age.age").is_err());
        let plain = Snapshot::parse_key("v2/Full-00000000-00000001-1.gz").unwrap();
        assert!(!plain.encrypted);
        assert!(serde_json::to_value(&plain)
            .unwrap()
            .get("encrypted")
            .is_none());
    }

    #[test]
    fn parses_v1_v2_and_chunks() {
        let s = Snapshot::parse_key("v2/Full-00000000-00000042-1784884502.gz").unwrap();
        assert_eq!((s.prefix.as_str(), s.snap_dir.as_str()), ("v2/", ""));
        assert_eq!(s.key("ignored"), "v2/Full-00000000-00000042-1784884502.gz");

        let s = Snapshot::parse_key("a/b/v1/Backup-1565021000/Full-00000000-00009002-1565021494")
            .unwrap();
        assert_eq!(s.prefix, "a/b/v1/");
        assert_eq!(s.snap_dir, "Backup-1565021000");
        assert_eq!(
            s.key("x"),
            "a/b/v1/Backup-1565021000/Full-00000000-00009002-1565021494"
        );

        let c =
            Snapshot::parse_key("p/v2/Full-00000000-00000042-1784884502.gz/0000000003").unwrap();
        assert!(c.is_chunk);
        assert_eq!(
            c.snap_name,
            "Full-00000000-00000042-1784884502.gz/0000000003"
        );
        assert_eq!(
            c.key(""),
            "p/v2/Full-00000000-00000042-1784884502.gz/0000000003"
        );
        let c1 = Snapshot::parse_key("v1/Backup-1/Incr-00000001-00000002-3/0000000001").unwrap();
        assert!(c1.is_chunk);

        // revisions over 8 digits
        let big = Snapshot::parse_key("v2/Incr-13002039293-13002039400-1700000000.zlib").unwrap();
        assert_eq!(
            (big.start_revision, big.last_revision),
            (13002039293, 13002039400)
        );

        // a prefix segment that merely ends in "v1" is not a version dir
        let s = Snapshot::parse_key("dev1/v2/Full-00000000-00000001-1").unwrap();
        assert_eq!(s.prefix, "dev1/v2/");
    }

    #[test]
    fn rejects_invalid_names() {
        for key in [
            "Full-00000000-00000001-1",            // no version dir
            "v2/",                                 // nothing below
            "v2/Full-00000000-00000001",           // 3 tokens
            "v2/Full-00000000-00000001-1-2",       // 5 tokens
            "v2/Part-00000000-00000001-1",         // unknown kind
            "v2/Full-0000000a-00000001-1",         // bad start
            "v2/Full-00000000-0000000x-1",         // bad last
            "v2/Incr-00000005-00000004-1",         // start > last
            "v2/Full-00000000-00000001-abc",       // bad time
            "v2/Full-00000000-00000001-1.bz2",     // unknown suffix
            "v2/Full-00000000-00000001-.gz",       // empty time
            "v2/Full-00000000-00000001-1.gz/part", // bad chunk
            "v2/a/b/c/Full-00000000-00000001-1",   // too deep
            "v1/Full-00000000-00000001-1",         // v1 without Backup dir
            "v1/Other-1/Full-00000000-00000001-1", // v1 with a foreign dir
            "v2/Full-00000000-00000001-1.gz#1",    // object_store/temp leftovers
            "v2/-00000000-00000001-1",
            "v2/Full--00000001-1",
        ] {
            assert!(
                Snapshot::parse_key(key).is_err(),
                "{key} should be rejected"
            );
        }
    }

    #[test]
    fn sorts_like_snaplist() {
        let mut l = vec![
            Snapshot::parse_key("v2/Incr-00000011-00000020-300").unwrap(),
            Snapshot::parse_key("v2/Full-00000000-00000020-200").unwrap(),
            Snapshot::parse_key("v2/Full-00000000-00000020-100/0000000001").unwrap(),
            Snapshot::parse_key("v2/Full-00000000-00000010-50").unwrap(),
            Snapshot::parse_key("v2/Full-00000000-00000020-100").unwrap(),
        ];
        sort(&mut l);
        let names: Vec<_> = l.iter().map(|s| s.snap_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Full-00000000-00000010-50",
                "Full-00000000-00000020-100",
                "Full-00000000-00000020-200",
                "Incr-00000011-00000020-300",
                "Full-00000000-00000020-100/0000000001",
            ]
        );
    }

    #[test]
    fn selects_latest_set() {
        let mut l: Vec<Snapshot> = [
            "v2/Full-00000000-00000010-1",
            "v2/Incr-00000011-00000015-2",
            "v2/Full-00000000-00000020-3",
            "v2/Incr-00000021-00000030-4",
            "v2/Full-00000000-00000020-3/0000000001",
            "v2/Incr-00000031-00000040-5",
        ]
        .iter()
        .map(|k| Snapshot::parse_key(k).unwrap())
        .collect();
        sort(&mut l);
        let set = latest_set(&l);
        assert_eq!(set.full.as_ref().unwrap().last_revision, 20);
        let d: Vec<_> = set.deltas.iter().map(|s| s.last_revision).collect();
        assert_eq!(d, [30, 40]);
        assert_eq!(set.last_revision(), 40);

        // only deltas: no base, all deltas
        let mut only: Vec<Snapshot> =
            ["v2/Incr-00000001-00000005-1", "v2/Incr-00000006-00000009-2"]
                .iter()
                .map(|k| Snapshot::parse_key(k).unwrap())
                .collect();
        sort(&mut only);
        let set = latest_set(&only);
        assert!(set.full.is_none());
        assert_eq!(set.deltas.len(), 2);

        // empty
        assert_eq!(latest_set(&[]), SnapshotSet::default());
        assert_eq!(latest_set(&[]).last_revision(), 0);

        // a full that is the newest: no deltas
        let mut l2: Vec<Snapshot> = ["v2/Incr-00000001-00000005-1", "v2/Full-00000000-00000009-2"]
            .iter()
            .map(|k| Snapshot::parse_key(k).unwrap())
            .collect();
        sort(&mut l2);
        let set = latest_set(&l2);
        assert_eq!(set.full.unwrap().last_revision, 9);
        assert!(set.deltas.is_empty());
    }

    #[test]
    fn json_shape_matches_etcdbrctl() {
        let mut s = Snapshot::new_at(Kind::Full, 0, 42, ".gz", false, at(1784884502));
        s.created_on += chrono::Duration::nanoseconds(123456789);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["createdOn"], "2026-07-24T09:15:02.123456789Z");
        assert_eq!(v["immutabilityExpriyTime"], "0001-01-01T00:00:00Z");
        assert_eq!(v["versionID"], serde_json::Value::Null);
        assert_eq!(v["kind"], "Full");
        assert_eq!(v["snapName"], "Full-00000000-00000042-1784884502.gz");
        assert_eq!(v["compressionSuffix"], ".gz");
        assert_eq!(v["lastRevision"], 42);
        assert_eq!(v["isFinal"], false);
        assert_eq!(v.as_object().unwrap().len(), 12);
    }
}
