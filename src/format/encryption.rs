//! Encryption at rest: a stored object may be an [age](https://age-encryption.org/v1) file
//! (X25519 recipients) around the compressed bytes etcdbrctl would store. Its name then carries
//! `.age` after the compression suffix (`Full-00000000-00000042-1784884502.gz.age`), so names
//! stay parseable, a store may mix plain and encrypted objects, and a reader knows which is
//! which without reading it.
//!
//! The format is age's STREAM: 64 KiB chunks, each authenticated (ChaCha20-Poly1305), the last
//! one marked, so a modified, reordered or truncated object fails to decrypt instead of giving
//! other bytes. Encryption and decryption are streamed: memory holds a chunk, and the plaintext
//! of an upload never touches the disk (the upload spool holds ciphertext).
//!
//! Keys are files in age's own formats, so `age-keygen` makes them and `age` can decrypt an
//! object by hand: a recipients file of `age1...` public keys, an identity file of
//! `AGE-SECRET-KEY-1...` secret keys, one per line, `#` comments and blank lines ignored.
//! Several of each make rotation possible: write to the old and the new recipient, read with
//! either identity.

use crate::error::{Error, Result};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// The name suffix of an encrypted object (after the compression suffix, before `.final`).
pub(crate) const AGE_SUFFIX: &str = ".age";

/// The first bytes of every age file.
const AGE_MAGIC: &[u8] = b"age-encryption.org/";

/// Public keys the objects we write are encrypted to (`--encryption-recipients-file`).
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
    path: PathBuf,
}

/// Secret keys the objects we read may be encrypted to (`--encryption-identity-file`).
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    path: PathBuf,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} recipients from {}",
            self.keys.len(),
            self.path.display()
        )
    }
}

impl fmt::Debug for Identities {
    // never the keys themselves
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} identities from {}",
            self.keys.len(),
            self.path.display()
        )
    }
}

/// The meaningful lines of a key file: (line number, trimmed text).
fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// The keys of a key file, one per meaningful line, at least one: `kind` says what the file
/// holds, `wrong` the prefix of the other kind of key and what to say about it. Errors name
/// the file and line, never the line's text (it may be a secret key).
fn parse_keys<K>(
    path: &Path,
    text: &str,
    kind: &str,
    wrong: (&str, &str),
    parse: impl Fn(&str) -> Option<K>,
) -> Result<Vec<K>> {
    let mut keys = Vec::new();
    for (n, line) in key_lines(text) {
        if line.starts_with(wrong.0) {
            return Err(Error::config(format!(
                "{}:{n}: {}",
                path.display(),
                wrong.1
            )));
        }
        let key = parse(line)
            .ok_or_else(|| Error::config(format!("{}:{n}: not an {kind}", path.display())))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(Error::config(format!(
            "{}: no {kind} in it",
            path.display()
        )));
    }
    Ok(keys)
}

fn read_key_file(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, format!("read the {what}"), e))
}

impl Recipients {
    /// Reads a recipients file: `age1...` X25519 public keys, at least one.
    pub fn from_file(path: &Path) -> Result<Recipients> {
        let text = read_key_file(path, "encryption recipients file")?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Recipients> {
        let keys = parse_keys(
            path,
            text,
            "age X25519 public key (age1...)",
            ("AGE-SECRET-KEY-", "this is a secret key; the recipients file holds public keys (age1...): derive it with `age-keygen -y` and keep the secret key out of the writers' configuration"),
            |l| age::x25519::Recipient::from_str(l).ok(),
        )?;
        Ok(Recipients {
            keys,
            path: path.to_path_buf(),
        })
    }

    /// The recipients of a list of keys (tests, library callers).
    pub fn from_keys(keys: Vec<age::x25519::Recipient>) -> Recipients {
        Recipients {
            keys,
            path: PathBuf::from("(given)"),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

impl Identities {
    /// Reads an identity file: `AGE-SECRET-KEY-1...` X25519 secret keys, at least one. Errors
    /// name the file and line, never the key.
    pub fn from_file(path: &Path) -> Result<Identities> {
        // the secret keys' text is wiped from memory once parsed
        let text = zeroize::Zeroizing::new(read_key_file(path, "encryption identity file")?);
        warn_if_readable_by_others(path);
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Identities> {
        let keys = parse_keys(
            path,
            text,
            "age X25519 secret key (AGE-SECRET-KEY-1...)",
            ("age1", "this is a public key; the identity file holds secret keys (AGE-SECRET-KEY-1..., as age-keygen writes them)"),
            |l| age::x25519::Identity::from_str(l).ok(),
        )?;
        Ok(Identities {
            keys,
            path: path.to_path_buf(),
        })
    }

    /// The identities of a list of keys (tests, library callers).
    pub fn from_keys(keys: Vec<age::x25519::Identity>) -> Identities {
        Identities {
            keys,
            path: PathBuf::from("(given)"),
        }
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        // group-readable is what a Secret volume with an fsGroup gives: only "others" warn
        if m.permissions().mode() & 0o007 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the encryption identity file is readable by every user (chmod 600, or defaultMode 0400 for a Secret volume)");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// The keys a process holds: recipients to encrypt what it writes, identities to decrypt what
/// it reads. The default holds none: objects are written plain, and encrypted ones cannot be
/// read.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Encrypt every object written to these; `None`: write plain.
    pub recipients: Option<Arc<Recipients>>,
    /// Decrypt encrypted objects with these.
    pub identities: Option<Arc<Identities>>,
}

impl Keys {
    /// Whether objects written now are encrypted.
    pub(crate) fn encrypts(&self) -> bool {
        self.recipients.is_some()
    }
}

/// Plaintext moves between the caller and the cipher thread in blocks of this size (4 age
/// chunks), at most [`QUEUE`] of them queued: memory stays bounded.
const BLOCK: usize = 256 << 10;
const QUEUE: usize = 8;

/// What the caller sends the encrypting thread.
pub(crate) enum Msg {
    Data(Vec<u8>),
    /// End of the object: write the last chunk. Without it (the writer dropped on an error
    /// path) the thread stops without ending the stream, so no truncated object looks complete.
    Finish,
}

/// A writer that encrypts to the recipients, or passes the bytes through when there are none.
/// Encryption runs on a thread of its own (and writes to `W` there), beside the caller's
/// hashing and compression: on 2 cores that hides most of its cost.
pub(crate) enum SealWriter<W: Write + Send + 'static> {
    Plain(W),
    Age {
        tx: Option<std::sync::mpsc::SyncSender<Msg>>,
        buf: Vec<u8>,
        thread: Option<std::thread::JoinHandle<io::Result<W>>>,
    },
}

impl<W: Write + Send + 'static> SealWriter<W> {
    /// Starts an object (the age header is written at once, on the cipher thread).
    pub(crate) fn new(recipients: Option<&Recipients>, w: W) -> io::Result<SealWriter<W>> {
        let Some(r) = recipients else {
            return Ok(SealWriter::Plain(w));
        };
        let enc = age::Encryptor::with_recipients(r.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(QUEUE);
        let thread = std::thread::Builder::new().name("encrypt".into()).spawn(
            move || -> io::Result<W> {
                let mut stream = enc.wrap_output(w)?;
                for msg in rx {
                    match msg {
                        Msg::Data(b) => stream.write_all(&b)?,
                        Msg::Finish => return stream.finish(),
                    }
                }
                Err(io::Error::other("the object was abandoned before its end"))
            },
        )?;
        Ok(SealWriter::Age {
            tx: Some(tx),
            buf: Vec::with_capacity(BLOCK),
            thread: Some(thread),
        })
    }

    /// The cipher thread's error, once it stopped (a send to it failed).
    fn thread_error(thread: &mut Option<std::thread::JoinHandle<io::Result<W>>>) -> io::Error {
        match thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("the encryption thread panicked"),
            _ => io::Error::other("the encryption thread stopped"),
        }
    }

    fn send(
        tx: &Option<std::sync::mpsc::SyncSender<Msg>>,
        thread: &mut Option<std::thread::JoinHandle<io::Result<W>>>,
        msg: Msg,
    ) -> io::Result<()> {
        match tx.as_ref().map(|tx| tx.send(msg)) {
            Some(Ok(())) => Ok(()),
            _ => Err(Self::thread_error(thread)),
        }
    }

    /// Ends the object (the last, marked chunk) and gives the inner writer back.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            SealWriter::Plain(w) => Ok(w),
            SealWriter::Age {
                mut tx,
                mut buf,
                mut thread,
            } => {
                if !buf.is_empty() {
                    Self::send(&tx, &mut thread, Msg::Data(std::mem::take(&mut buf)))?;
                }
                Self::send(&tx, &mut thread, Msg::Finish)?;
                tx.take();
                match thread.take().map(|t| t.join()) {
                    Some(Ok(r)) => r,
                    _ => Err(io::Error::other("the encryption thread panicked")),
                }
            }
        }
    }
}

impl<W: Write + Send + 'static> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            SealWriter::Plain(w) => w.write(data),
            SealWriter::Age { tx, buf, thread } => {
                let n = data.len().min(BLOCK - buf.len());
                buf.extend_from_slice(&data[..n]);
                if buf.len() == BLOCK {
                    let full = std::mem::replace(buf, Vec::with_capacity(BLOCK));
                    Self::send(tx, thread, Msg::Data(full))?;
                }
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SealWriter::Plain(w) => w.flush(),
            // the object is whole only at finish(); blocks go as they fill
            SealWriter::Age { .. } => Ok(()),
        }
    }
}

/// A decrypting reader whose errors name the object and say what they mean.
struct Unsealed<R: Read> {
    inner: age::stream::StreamReader<R>,
    object: String,
}

impl<R: Read> Read for Unsealed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "decrypting {} failed: {e} (the object was modified, truncated or damaged after it was written)",
                    self.object
                ),
            )
        })
    }
}

/// Plaintext decrypted on a thread of its own, a bounded queue of blocks ahead of the reader.
struct Pipelined {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Pipelined {
    fn start<R: Read + Send + 'static>(mut src: Unsealed<R>) -> io::Result<Pipelined> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("decrypt".into())
            .spawn(move || loop {
                let mut block = vec![0u8; BLOCK];
                let mut n = 0;
                while n < BLOCK {
                    match src.read(&mut block[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                if n == 0 {
                    return; // the end, authenticated
                }
                block.truncate(n);
                // a reader that went away ends the thread
                if tx.send(Ok(block)).is_err() {
                    return;
                }
            })?;
        Ok(Pipelined {
            rx,
            cur: Vec::new(),
            pos: 0,
        })
    }
}

impl Read for Pipelined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.cur = b;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The plaintext of a stored object's bytes `r`: `r` itself for a plain object, decrypted with
/// `identities` for an encrypted one (on a thread of its own, ahead of the reader). Reads the
/// age header at once, so a missing or wrong identity, or a damaged header, fails here before
/// anything is written; a damaged body fails at the chunk it is in, as a read error.
pub(crate) fn open<R: Read + Send + 'static>(
    object: &str,
    encrypted: bool,
    identities: Option<&Identities>,
    r: R,
) -> Result<Box<dyn Read + Send>> {
    if !encrypted {
        return Ok(Box::new(r));
    }
    let Some(ids) = identities else {
        return Err(Error::config(format!(
            "{object} is encrypted (age): give the secret key with --encryption-identity-file"
        )));
    };
    let dec = age::Decryptor::new(r).map_err(|e| decrypt_error(object, ids, e))?;
    let inner = dec
        .decrypt(ids.keys.iter().map(|k| k as &dyn age::Identity))
        .map_err(|e| decrypt_error(object, ids, e))?;
    let unsealed = Unsealed {
        inner,
        object: object.to_string(),
    };
    Pipelined::start(unsealed)
        .map(|p| Box::new(p) as Box<dyn Read + Send>)
        .map_err(|e| Error::io(object, "start the decryption thread", e))
}

fn decrypt_error(object: &str, ids: &Identities, e: age::DecryptError) -> Error {
    match e {
        age::DecryptError::NoMatchingKeys => Error::config(format!(
            "{object} is encrypted to other recipients than the {} key(s) in {}: give the identity whose public key was in the recipients file when it was written",
            ids.keys.len(),
            ids.path.display()
        )),
        age::DecryptError::Io(e) => Error::integrity(
            object,
            format!("cannot read its age header (truncated?): {e}"),
        ),
        other => Error::integrity(
            object,
            format!("not a valid age file, or its header was modified: {other}"),
        ),
    }
}

/// Whether the first bytes of a file are an age header (a local file of any name).
pub(crate) fn looks_encrypted(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Recipients, Identities) {
        let id = age::x25519::Identity::generate();
        (
            Recipients::from_keys(vec![id.to_public()]),
            Identities::from_keys(vec![id]),
        )
    }

    fn seal(r: &Recipients, data: &[u8]) -> Vec<u8> {
        let mut w = SealWriter::new(Some(r), Vec::new()).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn unseal(ids: Option<&Identities>, data: &[u8]) -> Result<Vec<u8>> {
        let mut r = open("obj", true, ids, std::io::Cursor::new(data.to_vec()))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| Error::integrity("obj", e.to_string()))?;
        Ok(out)
    }

    #[test]
    fn round_trip_and_failures() {
        let (r, ids) = pair();
        // several blocks of the cipher threads, and a part of one
        let data: Vec<u8> = (0..(3 * BLOCK as u32 + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        let sealed = seal(&r, &data);
        assert!(looks_encrypted(&sealed));
        assert_eq!(unseal(Some(&ids), &sealed).unwrap(), data);

        let missing = unseal(None, &sealed).unwrap_err().to_string();
        assert!(missing.contains("--encryption-identity-file"), "{missing}");
        let (_, other) = pair();
        let wrong = unseal(Some(&other), &sealed).unwrap_err().to_string();
        assert!(wrong.contains("other recipients"), "{wrong}");

        // a flipped byte anywhere (header, first chunk, last chunk) fails
        for at in [40, sealed.len() / 3, sealed.len() - 5] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(unseal(Some(&ids), &bad).is_err(), "byte {at}");
        }
        // truncation at a chunk boundary fails too
        assert!(unseal(Some(&ids), &sealed[..sealed.len() - 1000]).is_err());

        // a plain object passes through
        let mut p = open("obj", false, None, std::io::Cursor::new(data.clone())).unwrap();
        let mut out = Vec::new();
        p.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn several_recipients_each_decrypts() {
        let (a, b) = (
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        );
        let r = Recipients::from_keys(vec![a.to_public(), b.to_public()]);
        let sealed = seal(&r, b"events");
        for id in [a, b] {
            let ids = Identities::from_keys(vec![id]);
            assert_eq!(unseal(Some(&ids), &sealed).unwrap(), b"events");
        }
    }

    #[test]
    fn key_files_parse_with_errors_by_line() {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        let secret = {
            use age::secrecy::ExposeSecret;
            id.to_string().expose_secret().to_string()
        };
        let p = Path::new("keys.txt");
        let r = Recipients::parse(p, &format!("# old\n\n{public}\n  {public}  \n")).unwrap();
        assert_eq!(r.len(), 2);
        let e = Recipients::parse(p, &format!("{public}\n{secret}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("keys.txt:2") && e.contains("secret key"), "{e}");
        assert!(!e.contains(&secret));
        assert!(Recipients::parse(p, "# nothing\n").is_err());
        assert!(Recipients::parse(p, "age1garbage\n").is_err());

        let ids = Identities::parse(
            p,
            &format!("# created: now\n# public key: {public}\n{secret}\n"),
        )
        .unwrap();
        assert_eq!(ids.keys.len(), 1);
        let e = Identities::parse(p, &format!("{public}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("public key"), "{e}");
        let e = Identities::parse(p, "AGE-SECRET-KEY-1NOPE\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keys.txt:1") && !e.contains("NOPE"), "{e}");
        assert!(!format!("{ids:?}").contains(&secret));
    }
}
