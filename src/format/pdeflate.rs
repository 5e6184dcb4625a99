//! gzip and zlib compression on every core, the way pigz and bgzip do it: the input is cut into
//! blocks that worker threads deflate independently, and the writer puts them out in order.
//!
//! * **gzip**: each block is a complete gzip member (its own CRC-32 and size), and its header
//!   carries an extra field (`eb`, RFC 1952 FEXTRA) with the member's length, as BGZF does.
//!   Concatenated members are one gzip file (RFC 1952 §2.2): Go's `compress/gzip` (etcdbrctl's
//!   reader, multistream by default) and `gzip -d` read it whole. Knowing each member's length,
//!   [`ParallelGzipReader`] inflates several at once; a gzip file without the field (etcdbrctl's,
//!   or anyone's) is read as one stream, as before.
//! * **zlib** has a single checksum and no members: blocks are deflated with the previous
//!   block's last 32 KiB as dictionary, sync-flushed on a byte boundary, concatenated into one
//!   ordinary deflate stream, and their Adler-32 values combined in order (pigz's framing).
//!   It decompresses on one thread.
//!
//! Memory is bounded whatever the input size: at most `2 × threads` blocks in flight, each
//! [`BLOCK`] bytes in and about as much out. A single-threaded deflate was the slowest stage of a
//! gzip snapshot by far (3x `etcdctl snapshot save`), and a single-threaded inflate of a restore.
//!
//! zlib-rs (through which flate2 already compresses) gives the deflate state, the dictionary and
//! the checksums; no maintained crate offers this framing as a `Write` and a `Read`.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use zlib_rs::{Deflate, DeflateFlush, Status};

/// Input bytes per block: large enough that the per-block flush costs nothing measurable in
/// size, small enough that two per thread stay a few MiB.
pub(crate) const BLOCK: usize = 1 << 20;
/// deflate's window: the dictionary carried from one block to the next.
const WINDOW: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Container {
    Gzip,
    Zlib,
}

struct Job {
    data: Vec<u8>,
    dict: Arc<Vec<u8>>,
    last: bool,
    container: Container,
}

/// A compressed block (a whole member for gzip) and, for zlib, its input's Adler-32.
struct Done {
    out: Vec<u8>,
    check: u32,
    len: u64,
}

/// Worker threads taking jobs from one queue; each job's result comes back on its own channel,
/// so that the caller collects them in the order it submitted them. Dropping the pool stops
/// the workers once they finish what they hold.
struct Pool<J: Send + 'static, O: Send + 'static> {
    jobs: Option<SyncSender<(J, SyncSender<io::Result<O>>)>>,
    workers: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static, O: Send + 'static> Pool<J, O> {
    /// `threads` workers named `<name>-<i>`, each with the state `init` makes, running `work`.
    fn new<S: 'static>(
        threads: usize,
        name: &str,
        init: impl Fn() -> S + Send + Clone + 'static,
        work: fn(&mut S, J) -> io::Result<O>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<(J, SyncSender<io::Result<O>>)>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let (rx, init) = (rx.clone(), init.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        let mut state = init();
                        loop {
                            let (job, reply) = {
                                let Ok(rx) = rx.lock() else { return };
                                match rx.recv() {
                                    Ok(j) => j,
                                    Err(_) => return,
                                }
                            };
                            let _ = reply.send(work(&mut state, job));
                        }
                    })?,
            );
        }
        Ok(Pool {
            jobs: Some(tx),
            workers,
        })
    }

    /// Queues `job` (blocking while every worker is busy and the queue is full).
    fn submit(&self, job: J) -> io::Result<Receiver<io::Result<O>>> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the worker pool is stopped"))?
            .send((job, reply))
            .map_err(|_| io::Error::other("the worker threads stopped"))?;
        Ok(rx)
    }
}

impl<J: Send + 'static, O: Send + 'static> Drop for Pool<J, O> {
    fn drop(&mut self) {
        // closing the queue stops the workers once they are idle
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A compressing writer (gzip or zlib) that deflates blocks on `threads` workers.
pub struct ParallelDeflate<W: Write> {
    inner: W,
    container: Container,
    block: Vec<u8>,
    dict: Arc<Vec<u8>>,
    pool: Pool<Job, Done>,
    pending: VecDeque<Receiver<io::Result<Done>>>,
    max_pending: usize,
    /// zlib: the Adler-32 of what was collected so far.
    check: u32,
}

/// The gzip extra subfield that carries a member's total length (header to trailer).
const SUBFIELD: [u8; 2] = *b"eb";
/// A gzip member header with the extra field: ID1 ID2 CM FLG(FEXTRA) MTIME(4) XFL OS, XLEN,
/// then SI1 SI2 LEN(4) and the member length (u32 LE).
const MEMBER_HEADER: usize = 10 + 2 + 4 + 4;

fn member_header(total: u32) -> [u8; MEMBER_HEADER] {
    let mut h = [0u8; MEMBER_HEADER];
    // FLG FEXTRA; no mtime; XFL 0; OS unknown (255), as Go's gzip.Writer
    h[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255]);
    h[10..12].copy_from_slice(&8u16.to_le_bytes());
    h[12..14].copy_from_slice(&SUBFIELD);
    h[14..16].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&total.to_le_bytes());
    h
}

fn compress_block(d: &mut Deflate, job: Job) -> io::Result<Done> {
    let container = job.container;
    let err = |e: zlib_rs::DeflateError| io::Error::other(format!("deflate: {}", e.as_str()));
    d.reset();
    // gzip members stand alone (no dictionary), so that they inflate in parallel
    if container == Container::Zlib && !job.dict.is_empty() {
        d.set_dictionary(&job.dict).map_err(err)?;
    }
    let flush = if job.last || container == Container::Gzip {
        DeflateFlush::Finish
    } else {
        DeflateFlush::SyncFlush
    };
    let mut out = vec![0u8; zlib_rs::compress_bound(job.data.len()) + 64];
    let mut used = 0;
    loop {
        let consumed = d.total_in() as usize;
        let status = d
            .compress(&job.data[consumed..], &mut out[used..], flush)
            .map_err(err)?;
        used = d.total_out() as usize;
        let all_in = d.total_in() as usize == job.data.len();
        let done = match flush {
            DeflateFlush::Finish => status == Status::StreamEnd,
            // a sync flush is complete when it did not run out of room
            _ => all_in && used < out.len(),
        };
        if done {
            break;
        }
        out.resize(out.len() + 64 * 1024, 0);
    }
    out.truncate(used);
    let len = job.data.len() as u64;
    match container {
        Container::Gzip => {
            let crc = zlib_rs::crc32::crc32(0, &job.data);
            // ISIZE: the block's size (below 4 GiB: a block is BLOCK bytes)
            let total = MEMBER_HEADER + out.len() + 8;
            let total32 =
                u32::try_from(total).map_err(|_| io::Error::other("a gzip member over 4 GiB"))?;
            let mut member = Vec::with_capacity(total);
            member.extend_from_slice(&member_header(total32));
            member.extend_from_slice(&out);
            member.extend_from_slice(&crc.to_le_bytes());
            member.extend_from_slice(&(len as u32).to_le_bytes());
            // the member carries its own checksum: none to combine
            Ok(Done {
                out: member,
                check: 0,
                len,
            })
        }
        Container::Zlib => Ok(Done {
            out,
            check: zlib_rs::adler32::adler32(1, &job.data),
            len,
        }),
    }
}

impl<W: Write> ParallelDeflate<W> {
    /// `level` 0-9 (zlib's); `threads` at least 1.
    pub(crate) fn new(
        mut inner: W,
        container: Container,
        level: u32,
        threads: usize,
    ) -> io::Result<Self> {
        let threads = threads.max(1);
        let level = level.min(9) as i32;
        // raw deflate: the container's headers and trailers are written around it
        let pool = Pool::new(
            threads,
            "deflate",
            move || Deflate::new(level, false, 15),
            compress_block,
        )?;
        if container == Container::Zlib {
            // deflate, 32 KiB window, default level: what Go's zlib.Writer writes at level 6
            // (every gzip member carries its own header)
            inner.write_all(&[0x78, 0x9c])?;
        }
        Ok(ParallelDeflate {
            inner,
            container,
            block: Vec::with_capacity(BLOCK),
            dict: Arc::new(Vec::new()),
            pool,
            pending: VecDeque::new(),
            max_pending: 2 * threads,
            check: 1,
        })
    }

    /// Hands the current block to a worker; `last` ends the stream.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let next_dict = if self.container == Container::Zlib && data.len() >= WINDOW {
            Arc::new(data[data.len() - WINDOW..].to_vec())
        } else {
            // a short block (only the last can be): its dictionary is never used
            Arc::new(Vec::new())
        };
        let rx = self.pool.submit(Job {
            data,
            dict: std::mem::replace(&mut self.dict, next_dict),
            last,
            container: self.container,
        })?;
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.collect_one()?;
        }
        Ok(())
    }

    /// Writes out the oldest block in flight (blocking until it is compressed).
    fn collect_one(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = rx
            .recv()
            .map_err(|_| io::Error::other("a compression worker stopped"))??;
        if self.container == Container::Zlib {
            self.check = zlib_rs::adler32::adler32_combine(self.check, done.check, done.len);
        }
        self.inner.write_all(&done.out)
    }

    /// Compresses what is buffered, writes the trailer, and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.dispatch(true)?;
        while !self.pending.is_empty() {
            self.collect_one()?;
        }
        // a gzip member carries its own trailer; zlib's is the stream's Adler-32
        if self.container == Container::Zlib {
            self.inner.write_all(&self.check.to_be_bytes())?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelDeflate<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = BLOCK - self.block.len();
        let n = room.min(buf.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK {
            self.dispatch(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // blocks are written as they complete; nothing is held back but the current block
        self.inner.flush()
    }
}

/// The largest member [`ParallelGzipReader`] takes from the extra field; a larger claim is
/// read as an ordinary gzip stream instead (bounded memory whatever the input says).
const MAX_MEMBER: usize = 64 << 20;

type Inflated = Receiver<io::Result<Vec<u8>>>;

/// Reads a gzip file, inflating the members written by [`ParallelDeflate`] (those whose header
/// gives their length) on several threads, in order; from the first member without that field
/// on (any other gzip writer's), one multi-member stream on the calling thread. Each member's
/// CRC-32 and size are checked; a cut inside a member is an error.
pub(crate) struct ParallelGzipReader<R: io::BufRead> {
    src: Option<R>,
    threads: usize,
    /// Started at the first member that can be inflated apart.
    pool: Option<Pool<Vec<u8>, Vec<u8>>>,
    pending: VecDeque<Inflated>,
    out: Vec<u8>,
    pos: usize,
    /// Header bytes of a member without the length field: the rest is read sequentially.
    switch: Option<Vec<u8>>,
    sequential: Option<flate2::bufread::MultiGzDecoder<io::Chain<io::Cursor<Vec<u8>>, R>>>,
    src_done: bool,
}

fn inflate_member(_: &mut (), member: Vec<u8>) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut d = flate2::read::GzDecoder::new(&member[..]);
    let mut out = Vec::with_capacity(BLOCK);
    d.read_to_end(&mut out)?;
    Ok(out)
}

impl<R: io::BufRead> ParallelGzipReader<R> {
    pub(crate) fn new(src: R, threads: usize) -> Self {
        ParallelGzipReader {
            src: Some(src),
            threads: threads.max(1),
            pool: None,
            pending: VecDeque::new(),
            out: Vec::new(),
            pos: 0,
            switch: None,
            sequential: None,
            src_done: false,
        }
    }

    /// Reads the next member from the source: `Ok(true)` when one was handed to a worker,
    /// `Ok(false)` at the end of the source or at a member without the length field (then
    /// [`Self::switch`] holds its bytes read so far).
    fn next_member(&mut self) -> io::Result<bool> {
        let Some(src) = self.src.as_mut() else {
            return Ok(false);
        };
        if src.fill_buf()?.is_empty() {
            self.src_done = true;
            return Ok(false);
        }
        let mut head = vec![0u8; 10];
        read_full(src, &mut head)?;
        let ours = head[..3] == [0x1f, 0x8b, 8] && head[3] == 4;
        if !ours {
            self.switch = Some(head);
            return Ok(false);
        }
        let mut xlen = [0u8; 2];
        read_full(src, &mut xlen)?;
        head.extend_from_slice(&xlen);
        let xlen = u16::from_le_bytes(xlen) as usize;
        let mut extra = vec![0u8; xlen];
        read_full(src, &mut extra)?;
        head.extend_from_slice(&extra);
        let total = (xlen == 8 && extra[..2] == SUBFIELD && extra[2..4] == 4u16.to_le_bytes())
            .then(|| u32::from_le_bytes([extra[4], extra[5], extra[6], extra[7]]) as usize)
            .filter(|t| *t > head.len() + 8 && *t <= MAX_MEMBER);
        let Some(total) = total else {
            self.switch = Some(head);
            return Ok(false);
        };
        let mut member = head;
        let at = member.len();
        member.resize(total, 0);
        read_full(src, &mut member[at..])?;
        if self.pool.is_none() {
            self.pool = Some(Pool::new(self.threads, "inflate", || (), inflate_member)?);
        }
        let pool = self
            .pool
            .as_ref()
            .ok_or_else(|| io::Error::other("no inflate workers"))?;
        let rx = pool.submit(member)?;
        self.pending.push_back(rx);
        Ok(true)
    }
}

/// `read_exact` with an error that says the gzip stream was cut.
fn read_full<R: io::Read>(r: &mut R, buf: &mut [u8]) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the gzip stream ends inside a member (truncated object?)",
            )
        } else {
            e
        }
    })
}

impl<R: io::BufRead> io::Read for ParallelGzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if let Some(d) = self.sequential.as_mut() {
                return d.read(buf);
            }
            // keep 2 members per thread in flight
            while self.switch.is_none()
                && !self.src_done
                && self.pending.len() < 2 * self.threads
                && self.next_member()?
            {}
            if let Some(rx) = self.pending.pop_front() {
                self.out = rx
                    .recv()
                    .map_err(|_| io::Error::other("an inflate worker stopped"))??;
                self.pos = 0;
                continue;
            }
            if let Some(prefix) = self.switch.take() {
                let src = self
                    .src
                    .take()
                    .ok_or_else(|| io::Error::other("the gzip source is gone"))?;
                self.sequential = Some(flate2::bufread::MultiGzDecoder::new(
                    io::Cursor::new(prefix).chain(src),
                ));
                continue;
            }
            return Ok(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(n: usize) -> Vec<u8> {
        // compressible but not trivial: repeated records with a counter
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(
                format!(
                    "/registry/pods/ns-{}/pod-{i}:{{\"phase\":\"Running\"}}\n",
                    i % 7
                )
                .as_bytes(),
            );
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 3;
        }
        v.truncate(n);
        v
    }

    fn roundtrip(container: Container, n: usize, threads: usize) {
        let data = sample(n);
        let mut e = ParallelDeflate::new(Vec::new(), container, 6, threads)
            .unwrap_or_else(|e| panic!("new: {e}"));
        // odd write sizes cross block boundaries
        for chunk in data.chunks(77_777) {
            e.write_all(chunk).unwrap_or_else(|e| panic!("write: {e}"));
        }
        let out = e.finish().unwrap_or_else(|e| panic!("finish: {e}"));
        let mut back = Vec::new();
        match container {
            // what Go's multistream gzip.Reader does
            Container::Gzip => flate2::read::MultiGzDecoder::new(&out[..]).read_to_end(&mut back),
            Container::Zlib => flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut back),
        }
        .unwrap_or_else(|e| panic!("decode {container:?} {n}: {e}"));
        assert!(back == data, "{container:?} {n} bytes, {threads} threads");
        if container == Container::Gzip {
            let mut par = Vec::new();
            ParallelGzipReader::new(&out[..], threads)
                .read_to_end(&mut par)
                .unwrap_or_else(|e| panic!("parallel inflate {n}: {e}"));
            assert!(par == data, "parallel inflate of {n} bytes");
            // cut inside the last member: an error, never a short read
            if out.len() > 40 {
                let mut cut = Vec::new();
                let r =
                    ParallelGzipReader::new(&out[..out.len() - 20], threads).read_to_end(&mut cut);
                assert!(r.is_err(), "a truncated stream of {n} bytes must fail");
            }
        }
    }

    #[test]
    fn one_ordinary_stream_whatever_the_size_and_threads() {
        for c in [Container::Gzip, Container::Zlib] {
            for n in [0, 1, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345] {
                for t in [1, 2, 4] {
                    roundtrip(c, n, t);
                }
            }
        }
    }

    #[test]
    fn other_gzip_writers_are_read_as_one_stream() {
        // Go's and flate2's gzip: no length field; then a mix (ours, then foreign)
        let data = sample(3 * BLOCK + 5);
        let mut foreign = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        foreign.write_all(&data).unwrap_or_else(|e| panic!("{e}"));
        let foreign = foreign.finish().unwrap_or_else(|e| panic!("{e}"));
        let mut ours = ParallelDeflate::new(Vec::new(), Container::Gzip, 1, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        ours.write_all(&data).unwrap_or_else(|e| panic!("{e}"));
        let ours = ours.finish().unwrap_or_else(|e| panic!("{e}"));
        for (input, want) in [
            (foreign.clone(), data.clone()),
            (
                [ours.clone(), foreign.clone()].concat(),
                [data.clone(), data.clone()].concat(),
            ),
        ] {
            let mut back = Vec::new();
            ParallelGzipReader::new(&input[..], 2)
                .read_to_end(&mut back)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(back == want);
        }
    }

    #[test]
    fn ratio_close_to_one_stream() {
        let data = sample(4 * BLOCK);
        let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        one.write_all(&data).unwrap_or_else(|e| panic!("{e}"));
        let one = one.finish().unwrap_or_else(|e| panic!("{e}")).len();
        let mut p = ParallelDeflate::new(Vec::new(), Container::Gzip, 6, 2)
            .unwrap_or_else(|e| panic!("{e}"));
        p.write_all(&data).unwrap_or_else(|e| panic!("{e}"));
        let par = p.finish().unwrap_or_else(|e| panic!("{e}")).len();
        assert!(
            (par as f64) < one as f64 * 1.01,
            "parallel {par} vs one stream {one}"
        );
    }
}
