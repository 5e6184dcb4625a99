//! The snapshot store: etcdbrctl's object layout ([`crate::format::layout`]) over a Local directory or an
//! object store (S3, GCS, ABS) through `object_store`.
//!
//! Writes are two-phase: [`SnapStore::begin_upload`] gives a synchronous [`UploadSink`] (fed from
//! the compression thread) and a [`PendingUpload`] that is committed only after the snapshot's
//! integrity was verified. Until then nothing is visible: the Local store writes a hidden temp
//! file in the target directory and renames it after fsync; remote stores keep a multipart
//! upload open and complete it only on commit (an interrupted upload is never listed).
//! `object_store`'s own local writer does not fsync, hence our own Local write path.

pub mod copy;

pub mod credentials;

use crate::error::{Error, Result};
use crate::format::layout::{self, Snapshot, SnapshotSet};
use crate::format::proof::{Proof, MAX_PROOF_BYTES};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{
    local::LocalFileSystem, path::Path as OsPath, ObjectStore, ObjectStoreExt, WriteMultipart,
};
use std::collections::HashSet;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Prefix of our temp files in a Local store; listing skips them silently.
const LOCAL_TMP_PREFIX: &str = ".etcdbr-";
/// Default Local container, as etcdbrctl.
pub(crate) const DEFAULT_LOCAL_CONTAINER: &str = "default.bkp";
/// S3 allows 10,000 parts; etcdbrctl sizes parts for 9,999.
const MAX_PARTS: u64 = 9_999;
/// Bytes gathered before handing a piece to the uploader task.
const SINK_PIECE: usize = 1 << 20;

/// Where the snapshots are stored (`--storage-provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// A local directory.
    Local,
    /// S3 or an S3-compatible server.
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Abs,
}

impl FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Local" => Ok(Provider::Local),
            "S3" => Ok(Provider::S3),
            "GCS" => Ok(Provider::Gcs),
            "ABS" => Ok(Provider::Abs),
            "Swift" | "OSS" | "ECS" | "OCS" => Err(format!(
                "storage provider {s:?} is not supported by etcdbr (supported: Local, S3, GCS, ABS; ECS and OCS are S3-compatible: use S3 with --store-endpoint-override)"
            )),
            _ => Err(format!("unknown storage provider {s:?} (supported: Local, S3, GCS, ABS)")),
        }
    }
}

impl Provider {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Provider::Local => "Local",
            Provider::S3 => "S3",
            Provider::Gcs => "GCS",
            Provider::Abs => "ABS",
        }
    }
}

/// A store as the flags describe it (etcdbrctl's snapstore flags).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where.
    pub provider: Provider,
    /// Bucket or container; for Local a directory (relative paths are below `$HOME`, as etcdbrctl).
    pub container: String,
    /// Another endpoint than the provider's (an S3-compatible server, an emulator).
    pub endpoint_override: String,
    /// `--store-prefix`, without the version directory.
    pub prefix: String,
    /// Parts uploaded at once.
    pub max_parallel_chunk_uploads: usize,
    /// The size of a part (at least 5 MiB, the S3 minimum).
    pub min_chunk_size: usize,
    /// Where temporary files go.
    pub temp_dir: PathBuf,
    /// "", "SOURCE_" or "SECONDARY_": prefix of the credential environment variables.
    pub env_prefix: String,
    /// Where the credentials are, when the caller says so (a library caller, the tests);
    /// `None`: from the environment variables under `env_prefix`, as etcdbrctl.
    pub credentials: Option<credentials::Source>,
    /// The keys to encrypt what is written and decrypt what is read (none: plain objects).
    pub keys: crate::format::encryption::Keys,
}

impl StoreConfig {
    /// The credentials of kind `base` ("AWS_APPLICATION_CREDENTIALS", ...): the configured
    /// source, else `<env_prefix><base>[_JSON]` from the environment.
    pub(crate) fn credential_source(&self, base: &str) -> Option<credentials::Source> {
        self.credentials
            .clone()
            .or_else(|| credentials::source(&self.env_prefix, base))
    }

    /// Checks the values no store can work with; called once, where the configuration is
    /// built from the command line.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_parallel_chunk_uploads == 0 {
            return Err(Error::config(
                "--max-parallel-chunk-uploads must be greater than 0",
            ));
        }
        if self.min_chunk_size < 5 * 1024 * 1024 {
            return Err(Error::config(
                "--min-chunk-size must be at least 5242880 (5 MiB, the S3 minimum part size)",
            ));
        }
        if self.provider != Provider::Local && self.container.is_empty() {
            return Err(Error::config(format!(
                "--store-container (or {}STORAGE_CONTAINER) is required for provider {}",
                self.env_prefix,
                self.provider.as_str()
            )));
        }
        if !self.endpoint_override.is_empty() {
            url::Url::parse(&self.endpoint_override).map_err(|e| {
                Error::config(format!(
                    "--store-endpoint-override {:?} is not a URL: {e}",
                    self.endpoint_override
                ))
            })?;
        }
        Ok(())
    }
}

enum Backend {
    Local { root: PathBuf },
    Remote,
}

/// An open store: lists, reads, writes (two-phase) and deletes snapshots.
pub struct SnapStore {
    cfg: StoreConfig,
    backend: Backend,
    /// Reads, lists and deletes go through object_store for every provider.
    os: Arc<dyn ObjectStore>,
    warned: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for SnapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Resolves a Local container the way etcdbrctl does: relative to `$HOME`.
pub(crate) fn local_root(container: &str) -> PathBuf {
    let c = if container.is_empty() {
        DEFAULT_LOCAL_CONTAINER
    } else {
        container
    };
    let p = PathBuf::from(c);
    if p.is_absolute() {
        p
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(p)
    }
}

impl SnapStore {
    /// Builds the store and checks it can be used (Local: directories created; remote: the
    /// bucket answers a listing).
    pub async fn open(cfg: StoreConfig) -> Result<SnapStore> {
        let (backend, os): (Backend, Arc<dyn ObjectStore>) = match cfg.provider {
            Provider::Local => {
                let root = local_root(&cfg.container);
                let v2 = root.join(layout::version_dir(&cfg.prefix, layout::VERSION_V2));
                create_dir_all_private(&v2)?;
                let root = root
                    .canonicalize()
                    .map_err(|e| Error::io(&root, "resolve the store directory", e))?;
                let lfs = LocalFileSystem::new_with_prefix(&root).map_err(|e| {
                    Error::store(root.display().to_string(), "open the local store", e)
                })?;
                (Backend::Local { root }, Arc::new(lfs))
            }
            Provider::S3 => (Backend::Remote, remote::build_s3(&cfg)?),
            Provider::Abs => (Backend::Remote, remote::build_abs(&cfg)?),
            Provider::Gcs => (Backend::Remote, remote::build_gcs(&cfg)?),
        };
        let store = SnapStore {
            cfg,
            backend,
            os,
            warned: Mutex::new(HashSet::new()),
        };
        store.check_access().await?;
        store.check_home_misplacement().await?;
        store.clean_leftovers();
        Ok(store)
    }

    /// etcdbrctl puts a Local store under `$HOME/<container>` even when the container is an
    /// absolute path; we keep absolute paths absolute. After switching tools with unchanged
    /// flags, the backups would sit in `$HOME/<container>` while this store is empty, and a
    /// lost data directory would become an empty cluster and a second history. Refused here,
    /// for every command, with where the backups are and which flag to set.
    async fn check_home_misplacement(&self) -> Result<()> {
        let Backend::Local { root } = &self.backend else {
            return Ok(());
        };
        let container = Path::new(&self.cfg.container);
        if !container.is_absolute() {
            return Ok(());
        }
        let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
            return Ok(());
        };
        let go_root = home.join(container.strip_prefix("/").unwrap_or(container));
        let Ok(go_root) = go_root.canonicalize() else {
            return Ok(()); // nothing there
        };
        if go_root == *root || !self.list().await?.is_empty() {
            return Ok(());
        }
        let Ok(lfs) = LocalFileSystem::new_with_prefix(&go_root) else {
            return Ok(());
        };
        let mut found: Vec<Snapshot> = lfs
            .list(self.list_prefix().as_ref())
            .filter_map(|m| async move {
                m.ok()
                    .and_then(|m| Snapshot::parse_key(m.location.as_ref()).ok())
            })
            .collect()
            .await;
        if found.is_empty() {
            return Ok(());
        }
        layout::sort(&mut found);
        let newest = found
            .last()
            .map(|s| s.snap_name.clone())
            .unwrap_or_default();
        Err(Error::config(format!(
            "the Local store {} holds no backup, but {} holds {} (newest {newest}): that is where etcdbrctl puts --store-container {:?} (it joins even an absolute path under $HOME). Refusing to start an empty history here: set --store-container {} to use those backups (or move them to {})",
            root.join(self.cfg.prefix.trim_matches('/')).display(),
            go_root.join(self.cfg.prefix.trim_matches('/')).display(),
            found.len(),
            self.cfg.container,
            go_root.display(),
            root.display()
        )))
    }

    pub(crate) fn describe(&self) -> String {
        match &self.backend {
            Backend::Local { root } => format!(
                "Local store {}",
                root.join(self.cfg.prefix.trim_matches('/')).display()
            ),
            Backend::Remote => format!(
                "{} store {}/{}",
                self.cfg.provider.as_str(),
                self.cfg.container,
                self.cfg.prefix.trim_matches('/')
            ),
        }
    }

    fn list_prefix(&self) -> Option<OsPath> {
        let p = self.cfg.prefix.trim_matches('/');
        if p.is_empty() {
            None
        } else {
            Some(Self::os_path(p))
        }
    }

    /// The object_store path of the object key `key`, as etcdbrctl names it: the key as is.
    /// `Path::from` would percent-encode `%`, `~`, `#`, `[`... and store the object under
    /// another key (or file name) than etcdbrctl's; it remains for what `Path::parse` refuses
    /// (control characters, empty segments), which etcdbrctl's names never contain.
    fn os_path(key: &str) -> OsPath {
        OsPath::parse(key).unwrap_or_else(|_| OsPath::from(key))
    }

    async fn check_access(&self) -> Result<()> {
        if let Backend::Remote = self.backend {
            self.os.list_with_delimiter(self.list_prefix().as_ref()).await.map_err(|e| {
                Error::store(
                    self.describe(),
                    format!(
                        "cannot list the bucket {:?} (does it exist, and do the credentials allow listing it?)",
                        self.cfg.container
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Removes temp files of dead writers left in a Local store by a crash.
    fn clean_leftovers(&self) {
        let Backend::Local { root } = &self.backend else {
            return;
        };
        let dir = root.join(layout::version_dir(&self.cfg.prefix, layout::VERSION_V2));
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with(LOCAL_TMP_PREFIX) {
                continue;
            }
            // Only a dead writer's files are leftovers: a living one holds a flock on its temp
            // file (PIDs prove nothing: in a container this process is PID 1 after every
            // restart, and this process opens stores again while its uploads are in flight).
            if !crate::ondisk::datadir::is_held(&e.path()) {
                match fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::info!(file = %e.path().display(), "removed the temp file of an interrupted upload")
                    }
                    Err(err) => {
                        tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a leftover temp file")
                    }
                }
            }
        }
    }

    /// Every snapshot of the prefix (`<prefix>/v1/`, `<prefix>/v2/`), sorted as etcdbrctl's
    /// `SnapList`. Foreign objects, and snapshots of other prefixes nested below this one, are
    /// skipped with a warning (once per object and process).
    pub async fn list(&self) -> Result<Vec<Snapshot>> {
        let own = [layout::VERSION_V1, layout::VERSION_V2]
            .map(|v| layout::version_dir(&self.cfg.prefix, v));
        let mut stream = self.os.list(self.list_prefix().as_ref());
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            let meta = match item {
                Ok(m) => m,
                // a Local directory may hold files object_store cannot name: skip them
                Err(e) if matches!(self.backend, Backend::Local { .. }) => {
                    self.warn_foreign(&e.to_string(), "unreadable entry in the store directory");
                    continue;
                }
                Err(e) => return Err(Error::store(self.describe(), "list snapshots", e)),
            };
            let key = meta.location.as_ref();
            if meta
                .location
                .filename()
                .is_some_and(|f| f.starts_with(LOCAL_TMP_PREFIX))
            {
                continue;
            }
            if Proof::is_proof_key(&self.cfg.prefix, key) {
                continue;
            }
            match Snapshot::parse_key(key) {
                // etcdbrctl lists the whole prefix and would also take the snapshots of a
                // store nested below it (`<prefix>/other/v2/...`): another cluster's history
                Ok(s) if !own.contains(&s.prefix) => self.warn_foreign(
                    key,
                    "a snapshot of another store prefix (nested below this one)",
                ),
                Ok(s) => out.push(s),
                Err(reason) => self.warn_foreign(key, &reason),
            }
        }
        layout::sort(&mut out);
        Ok(out)
    }

    fn warn_foreign(&self, key: &str, reason: &str) {
        let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() < 10_000 && w.insert(key.to_string()) {
            tracing::warn!(
                object = key,
                reason,
                "ignoring an object that is not a snapshot"
            );
        }
    }

    pub(crate) async fn latest_set(&self) -> Result<SnapshotSet> {
        Ok(layout::latest_set(&self.list().await?))
    }

    /// The file holding a snapshot in a Local store (`None` for remote stores).
    pub(crate) fn local_path(&self, snap: &Snapshot) -> Option<PathBuf> {
        match &self.backend {
            Backend::Local { root } => Some(root.join(self.key_of(snap))),
            Backend::Remote => None,
        }
    }

    /// The keys objects are encrypted with and decrypted with ([`StoreConfig::keys`]).
    pub(crate) fn keys(&self) -> &crate::format::encryption::Keys {
        &self.cfg.keys
    }

    pub(crate) fn key_of(&self, snap: &Snapshot) -> String {
        snap.key(&self.cfg.prefix)
    }

    /// Size of a stored object in bytes.
    pub async fn size(&self, snap: &Snapshot) -> Result<u64> {
        let key = self.key_of(snap);
        let meta = self
            .os
            .head(&Self::os_path(&key))
            .await
            .map_err(|e| Error::store(&key, "stat", e))?;
        Ok(meta.size)
    }

    /// The raw (still compressed) bytes of a stored object, streamed.
    pub async fn fetch(
        &self,
        snap: &Snapshot,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let key = self.key_of(snap);
        let r = self
            .os
            .get(&Self::os_path(&key))
            .await
            .map_err(|e| Error::store(&key, "download", e))?;
        let k2 = key.clone();
        Ok(r.into_stream()
            .map(move |c| c.map_err(|e| Error::store(&k2, "download", e)))
            .boxed())
    }

    /// Deletes a snapshot's object, and first the proof of a full (a proof without its
    /// snapshot proves nothing; a snapshot whose proof is gone is still a backup).
    pub async fn delete(&self, snap: &Snapshot) -> Result<()> {
        if snap.kind == layout::Kind::Full && !snap.is_chunk {
            self.delete_proof(snap).await?;
        }
        let key = self.key_of(snap);
        self.os
            .delete(&Self::os_path(&key))
            .await
            .map_err(|e| Error::store(&key, "delete", e))
    }

    /// Stores the proof of a full snapshot ([`Proof`], in `<prefix>/proofs/`). On a Local store the file is
    /// written aside, fsynced, renamed into place and its directory fsynced, as snapshots are.
    pub async fn put_proof(&self, snap: &Snapshot, proof: &Proof) -> Result<()> {
        let key = Proof::key_for(&self.cfg.prefix, &snap.snap_name);
        let bytes = proof.to_bytes();
        match &self.backend {
            Backend::Local { root } => {
                let dest = root.join(&key);
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
                    if !dir.is_dir() {
                        create_dir_all_private(&dir)?;
                        if let Some(up) = dir.parent() {
                            crate::ondisk::datadir::fsync_dir(up)?;
                        }
                    }
                    let tmp = dir.join(format!(
                        "{LOCAL_TMP_PREFIX}{:016x}.proof.part",
                        rand::random::<u64>()
                    ));
                    let mut f = open_private(&tmp)?;
                    let written = f
                        .write_all(&bytes)
                        .and_then(|()| f.sync_all())
                        .and_then(|()| fs::rename(&tmp, &dest));
                    if let Err(e) = written {
                        let _ = fs::remove_file(&tmp);
                        return Err(Error::io(&dest, "write the proof", e));
                    }
                    crate::ondisk::datadir::fsync_dir(&dir)
                })
                .await
                .map_err(|e| Error::task("proof writer", e))?
            }
            Backend::Remote => self
                .os
                .put(&Self::os_path(&key), object_store::PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| Error::store(&key, "upload the proof", e)),
        }
    }

    /// The proof stored with a full snapshot, if there is one.
    pub async fn proof(&self, snap: &Snapshot) -> Result<Option<Proof>> {
        let key = Proof::key_for(&self.cfg.prefix, &snap.snap_name);
        let r = match self.os.get(&Self::os_path(&key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store(&key, "download the proof", e)),
        };
        if r.meta.size > MAX_PROOF_BYTES as u64 {
            return Err(Error::integrity(
                &key,
                format!("{} bytes: not a proof", r.meta.size),
            ));
        }
        let bytes = r
            .bytes()
            .await
            .map_err(|e| Error::store(&key, "download the proof", e))?;
        Proof::parse(&key, &bytes).map(Some)
    }

    /// Deletes the proof of a snapshot, if there is one.
    async fn delete_proof(&self, snap: &Snapshot) -> Result<()> {
        let key = Proof::key_for(&self.cfg.prefix, &snap.snap_name);
        match self.os.delete(&Self::os_path(&key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store(&key, "delete the proof", e)),
        }
    }

    /// Starts writing `snap`. `size_hint` (bytes, e.g. etcd's db size) sizes multipart parts.
    pub async fn begin_upload(
        &self,
        snap: &Snapshot,
        size_hint: u64,
    ) -> Result<(UploadSink, PendingUpload)> {
        let key = self.key_of(snap);
        match &self.backend {
            Backend::Local { root } => {
                let dest = root.join(&key);
                let dir = dest
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.clone());
                create_dir_all_private(&dir)?;
                let tmp = dir.join(format!(
                    "{LOCAL_TMP_PREFIX}{:016x}.{}.part",
                    rand::random::<u64>(),
                    snap.snap_name.replace('/', "_")
                ));
                let file = open_private(&tmp)?;
                // held while the upload lives: the mark of a living writer (see clean_leftovers)
                file.try_lock().map_err(|e| {
                    Error::io(
                        &tmp,
                        "lock the temp file",
                        std::io::Error::other(e.to_string()),
                    )
                })?;
                Ok((
                    UploadSink {
                        inner: SinkInner::Local {
                            w: BufWriter::with_capacity(1 << 20, file),
                            path: tmp.clone(),
                        },
                    },
                    PendingUpload {
                        key,
                        kind: PendingKind::Local { tmp, dir },
                    },
                ))
            }
            Backend::Remote => {
                let upload = self
                    .os
                    .put_multipart(&Self::os_path(&key))
                    .await
                    .map_err(|e| Error::store(&key, "start the multipart upload", e))?;
                let part = (size_hint / MAX_PARTS).max(self.cfg.min_chunk_size as u64) as usize;
                let writer = WriteMultipart::new_with_chunk_size(upload, part);
                let (tx, rx) = mpsc::channel::<Bytes>(2);
                let concurrency = self.cfg.max_parallel_chunk_uploads;
                let task = tokio::spawn(uploader(writer, rx, concurrency, key.clone()));
                Ok((
                    UploadSink {
                        inner: SinkInner::Remote {
                            buf: Vec::with_capacity(SINK_PIECE),
                            tx,
                        },
                    },
                    PendingUpload {
                        key,
                        kind: PendingKind::Remote { task },
                    },
                ))
            }
        }
    }
}

impl SnapStore {
    /// Makes an upload visible under the name of `wanted` (the same snapshot, possibly with a
    /// corrected revision). Call only after the sink was closed and the data verified. Returns
    /// the snapshot as stored: `wanted`, or the uploaded name when the store cannot rename.
    /// [`SnapStore::commit`] for the writer of a chain: only while the store's latest set still
    /// ends at `chain_end`, where this writer's chain ends. When another writer (an old or new
    /// leader's sidecar) extended it meanwhile, the upload is aborted and nothing is visible:
    /// [`Error::Fenced`]. Also returns the set it was checked against.
    pub async fn commit_fenced(
        &self,
        pending: PendingUpload,
        snap: &Snapshot,
        chain_end: i64,
    ) -> Result<(Snapshot, SnapshotSet)> {
        let set = match self.latest_set().await {
            Ok(set) => set,
            Err(e) => {
                pending.abort().await;
                return Err(e);
            }
        };
        let now = set.last_revision();
        if now != chain_end {
            pending.abort().await;
            return Err(Error::Fenced(format!(
                "the store's latest snapshot set now ends at revision {now}, not at {chain_end} where this sidecar's chain ends: another sidecar is writing; re-reading the store"
            )));
        }
        Ok((self.commit(pending, snap, snap).await?, set))
    }

    /// Makes an upload visible under `wanted`'s name (`uploaded`'s when they are equal).
    pub async fn commit(
        &self,
        pending: PendingUpload,
        uploaded: &Snapshot,
        wanted: &Snapshot,
    ) -> Result<Snapshot> {
        let wanted_key = self.key_of(wanted);
        match pending.kind {
            PendingKind::Local { tmp, dir, .. } => {
                let Backend::Local { root } = &self.backend else {
                    return Err(Error::Internal("a local upload on a remote store".into()));
                };
                let dest = root.join(&wanted_key);
                tokio::task::spawn_blocking(move || -> Result<()> {
                    fs::rename(&tmp, &dest).map_err(|e| {
                        let _ = fs::remove_file(&tmp);
                        Error::io(&dest, "rename the finished snapshot into place", e)
                    })?;
                    // fsync the directory so that the rename survives a power loss
                    fs::File::open(&dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| Error::io(&dir, "fsync", e))
                })
                .await
                .map_err(|e| Error::task("commit task", e))??;
                Ok(wanted.clone())
            }
            PendingKind::Remote { task } => {
                let w = task.await.map_err(|e| Error::task("upload task", e))??;
                w.finish()
                    .await
                    .map_err(|e| Error::store(&pending.key, "complete the multipart upload", e))?;
                if wanted_key == pending.key {
                    return Ok(wanted.clone());
                }
                // object stores cannot rename: copy server-side, then drop the first name
                let (from, to) = (Self::os_path(&pending.key), Self::os_path(&wanted_key));
                match self.os.copy(&from, &to).await {
                    Ok(()) => {
                        if let Err(e) = self.os.delete(&from).await {
                            tracing::warn!(object = %pending.key, error = %e, "cannot delete the lower-revision name of a renamed snapshot; both objects are valid");
                        }
                        Ok(wanted.clone())
                    }
                    Err(e) => {
                        tracing::warn!(object = %pending.key, wanted = %wanted_key, error = %e, "cannot copy the snapshot to its exact-revision name; keeping the lower-bound name");
                        Ok(uploaded.clone())
                    }
                }
            }
        }
    }
}

async fn uploader(
    mut w: WriteMultipart,
    mut rx: mpsc::Receiver<Bytes>,
    concurrency: usize,
    key: String,
) -> Result<WriteMultipart> {
    while let Some(piece) = rx.recv().await {
        if let Err(e) = w.wait_for_capacity(concurrency).await {
            let _ = w.abort().await;
            return Err(Error::store(&key, "upload a part", e));
        }
        w.put(piece);
    }
    Ok(w)
}

fn create_dir_all_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, "create the store directory", e))
}

fn open_private(p: &Path) -> Result<fs::File> {
    crate::sys::create_private(p).map_err(|e| Error::io(p, "create", e))
}

/// The synchronous end of an upload, written from the compression thread.
pub struct UploadSink {
    inner: SinkInner,
}

enum SinkInner {
    Local {
        w: BufWriter<fs::File>,
        path: PathBuf,
    },
    Remote {
        buf: Vec<u8>,
        tx: mpsc::Sender<Bytes>,
    },
}

fn send_piece(tx: &mpsc::Sender<Bytes>, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let piece = Bytes::from(std::mem::replace(buf, Vec::with_capacity(SINK_PIECE)));
    tx.blocking_send(piece).map_err(|_| {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the uploader stopped (see its error)",
        )
    })
}

impl Write for UploadSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            SinkInner::Local { w, .. } => w.write(data),
            SinkInner::Remote { buf, tx } => {
                buf.extend_from_slice(data);
                if buf.len() >= SINK_PIECE {
                    send_piece(tx, buf)?;
                }
                Ok(data.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl UploadSink {
    /// Flushes everything written (Local: to disk, with fsync). Call from a blocking thread.
    pub fn close(self) -> Result<()> {
        match self.inner {
            SinkInner::Local { w, path } => {
                let f = w
                    .into_inner()
                    .map_err(|e| Error::io(&path, "write", e.into_error()))?;
                f.sync_all().map_err(|e| Error::io(&path, "fsync", e))
            }
            SinkInner::Remote { mut buf, tx } => {
                send_piece(&tx, &mut buf).map_err(|e| Error::task("upload", e))?;
                Ok(())
            }
        }
    }
}

/// The asynchronous end of an upload: nothing is visible until `commit`.
pub struct PendingUpload {
    key: String,
    kind: PendingKind,
}

enum PendingKind {
    Local {
        tmp: PathBuf,
        dir: PathBuf,
    },
    Remote {
        task: JoinHandle<Result<WriteMultipart>>,
    },
}

impl PendingUpload {
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Discards the upload; nothing becomes visible.
    pub async fn abort(self) {
        match self.kind {
            PendingKind::Local { tmp, .. } => {
                let _ = fs::remove_file(&tmp);
            }
            PendingKind::Remote { task } => {
                if let Ok(Ok(w)) = task.await {
                    if let Err(e) = w.abort().await {
                        tracing::warn!(object = %self.key, error = %e, "cannot abort the multipart upload; it stays invisible, and a bucket lifecycle rule can remove it");
                    }
                }
            }
        }
    }
}

mod remote;
use remote::credential_source;

/// A store that is rebuilt when its credential files change (rotation without restart).
pub struct RotatingStore {
    cfg: StoreConfig,
    store: Option<Arc<SnapStore>>,
    cred_mtime: Option<std::time::SystemTime>,
}

impl RotatingStore {
    /// A store opened on first use and again when its credentials change.
    pub fn new(cfg: StoreConfig) -> RotatingStore {
        RotatingStore {
            cfg,
            store: None,
            cred_mtime: None,
        }
    }

    /// The store, re-opened first if the credentials file changed.
    pub async fn get(&mut self) -> Result<&Arc<SnapStore>> {
        let mtime = credential_source(&self.cfg).and_then(|s| credentials::modified(&s));
        if self.store.is_none() || mtime != self.cred_mtime {
            if self.store.is_some() {
                tracing::info!("store credentials changed; re-creating the store client");
            }
            self.store = Some(Arc::new(SnapStore::open(self.cfg.clone()).await?));
            self.cred_mtime = mtime;
        }
        self.store
            .as_ref()
            .ok_or_else(|| Error::Internal("store not initialised".into()))
    }
}
