//! gzip and zlib compression on every core, the way pigz does it: the input is cut into blocks
//! that worker threads deflate independently (each primed with the previous block's last 32 KiB
//! as its dictionary, so the ratio stays that of one stream), each but the last ending with a
//! sync flush on a byte boundary; their concatenation is one ordinary deflate stream, wrapped in
//! one ordinary gzip or zlib header and trailer. Go's `compress/gzip` and `compress/zlib`
//! (etcdbrctl) and `gzip -d` read it like any other. The checksum (CRC-32 or Adler-32) is
//! computed per block by the workers and combined in order.
//!
//! Memory is bounded whatever the input size: at most `2 × threads` blocks in flight, each
//! [`BLOCK`] bytes in and about as much out. A single-threaded deflate was the slowest stage of a
//! gzip snapshot by far (3x `etcdctl snapshot save`).
//!
//! zlib-rs (through which flate2 already compresses) gives the deflate state, the dictionary,
//! and the checksum combination; no crate offers the parallel framing as a maintained `Write`.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use zlib_rs::{Deflate, DeflateFlush, Status};

/// Input bytes per block: large enough that the per-block flush costs nothing measurable in
/// size, small enough that two per thread stay a few MiB.
pub const BLOCK: usize = 1 << 20;
/// deflate's window: the dictionary carried from one block to the next.
const WINDOW: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Gzip,
    Zlib,
}

struct Job {
    data: Vec<u8>,
    dict: Arc<Vec<u8>>,
    last: bool,
    reply: SyncSender<io::Result<Done>>,
}

/// A compressed block and its input's checksum.
struct Done {
    out: Vec<u8>,
    check: u32,
    len: u64,
}

/// A compressing writer (gzip or zlib) that deflates blocks on `threads` workers.
pub struct ParallelDeflate<W: Write> {
    inner: Option<W>,
    container: Container,
    block: Vec<u8>,
    dict: Arc<Vec<u8>>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<Receiver<io::Result<Done>>>,
    max_pending: usize,
    check: u32,
    total: u64,
    header_written: bool,
    finished: bool,
}

fn compress_block(d: &mut Deflate, job: &Job, container: Container) -> io::Result<Done> {
    let err = |e: zlib_rs::DeflateError| io::Error::other(format!("deflate: {}", e.as_str()));
    d.reset();
    if !job.dict.is_empty() {
        d.set_dictionary(&job.dict).map_err(err)?;
    }
    let flush = if job.last {
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
    let check = match container {
        Container::Gzip => zlib_rs::crc32::crc32(0, &job.data),
        Container::Zlib => zlib_rs::adler32::adler32(1, &job.data),
    };
    Ok(Done {
        out,
        check,
        len: job.data.len() as u64,
    })
}

impl<W: Write> ParallelDeflate<W> {
    /// `level` 0-9 (zlib's); `threads` at least 1.
    pub fn new(inner: W, container: Container, level: u32, threads: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = rx.clone();
            let level = level.min(9) as i32;
            let h = std::thread::Builder::new()
                .name(format!("deflate-{i}"))
                .spawn(move || {
                    // raw deflate: the container's header and trailer are written once
                    let mut d = Deflate::new(level, false, 15);
                    loop {
                        let job = {
                            let Ok(rx) = rx.lock() else { return };
                            match rx.recv() {
                                Ok(j) => j,
                                Err(_) => return,
                            }
                        };
                        let r = compress_block(&mut d, &job, container);
                        let _ = job.reply.send(r);
                    }
                })?;
            workers.push(h);
        }
        Ok(ParallelDeflate {
            inner: Some(inner),
            container,
            block: Vec::with_capacity(BLOCK),
            dict: Arc::new(Vec::new()),
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            max_pending: 2 * threads,
            check: match container {
                Container::Gzip => 0,
                Container::Zlib => 1,
            },
            total: 0,
            header_written: false,
            finished: false,
        })
    }

    fn inner(&mut self) -> io::Result<&mut W> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("the compressor was already finished"))
    }

    fn write_header(&mut self) -> io::Result<()> {
        if self.header_written {
            return Ok(());
        }
        self.header_written = true;
        let header: &[u8] = match self.container {
            // no name, no mtime, XFL 0, OS unknown (255): what Go's gzip.Writer writes
            Container::Gzip => &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255],
            // deflate, 32 KiB window, default level: what Go's zlib.Writer writes at level 6
            Container::Zlib => &[0x78, 0x9c],
        };
        self.inner()?.write_all(header)
    }

    /// Hands the current block to a worker; `last` ends the stream.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        self.write_header()?;
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let next_dict = if data.len() >= WINDOW {
            Arc::new(data[data.len() - WINDOW..].to_vec())
        } else {
            // a short block (only the last can be): its dictionary is never used
            Arc::new(Vec::new())
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let job = Job {
            data,
            dict: std::mem::replace(&mut self.dict, next_dict),
            last,
            reply,
        };
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the compressor was already finished"))?;
        jobs.send(job)
            .map_err(|_| io::Error::other("the compression workers stopped"))?;
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
        self.check = match self.container {
            Container::Gzip => zlib_rs::crc32::crc32_combine(self.check, done.check, done.len),
            Container::Zlib => zlib_rs::adler32::adler32_combine(self.check, done.check, done.len),
        };
        self.total += done.len;
        self.inner()?.write_all(&done.out)
    }

    /// Compresses what is buffered, writes the trailer, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.finish_stream()?;
        self.inner
            .take()
            .ok_or_else(|| io::Error::other("the compressor was already finished"))
    }

    fn finish_stream(&mut self) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.dispatch(true)?;
        while !self.pending.is_empty() {
            self.collect_one()?;
        }
        let (check, total, container) = (self.check, self.total, self.container);
        let w = self.inner()?;
        match container {
            Container::Gzip => {
                w.write_all(&check.to_le_bytes())?;
                // ISIZE: the input size modulo 2^32
                w.write_all(&(total as u32).to_le_bytes())?;
            }
            Container::Zlib => w.write_all(&check.to_be_bytes())?,
        }
        Ok(())
    }

    pub fn get_mut(&mut self) -> Option<&mut W> {
        self.inner.as_mut()
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
        match self.inner.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl<W: Write> Drop for ParallelDeflate<W> {
    fn drop(&mut self) {
        // closing the job channel stops the workers once they are idle
        self.jobs = None;
        self.pending.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
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
            Container::Gzip => flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut back),
            Container::Zlib => flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut back),
        }
        .unwrap_or_else(|e| panic!("decode {container:?} {n}: {e}"));
        assert!(back == data, "{container:?} {n} bytes, {threads} threads");
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
