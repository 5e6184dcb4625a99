//! Compression of snapshot objects. The suffix in an object's name selects the codec, exactly
//! as etcdbrctl does: `""` none, `.gz` gzip, `.zlib` zlib, `.Z` Go `compress/lzw` (LSB, 8-bit
//! literals). `.zst` (zstd) is our addition; etcdbrctl cannot read it, so it is opt-in.

use crate::format::lzw::{LzwReader, LzwWriter};
use std::io::{self, BufRead, Read, Write};
use std::str::FromStr;

/// A compression policy of stored snapshots, as etcdbrctl names it; the object name's suffix says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as it is (no suffix).
    None,
    /// gzip (`.gz`).
    Gzip,
    /// zlib (`.zlib`).
    Zlib,
    /// Go's `compress/lzw`, LSB order, 8-bit literals (`.Z`).
    Lzw,
    /// zstd (`.zst`, etcdbr only).
    Zstd,
}

/// Default levels: Go's gzip/zlib default (6) so sizes match etcdbrctl's; zstd level 1 because
/// the point of zstd here is speed.
const DEFLATE_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 1;

impl Codec {
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Codec::None => "",
            Codec::Gzip => ".gz",
            Codec::Zlib => ".zlib",
            Codec::Lzw => ".Z",
            Codec::Zstd => ".zst",
        }
    }

    /// The codec of an object name's compression suffix ("" for none).
    pub fn from_suffix(suffix: &str) -> Result<Codec, String> {
        Ok(match suffix {
            "" => Codec::None,
            ".gz" => Codec::Gzip,
            ".zlib" => Codec::Zlib,
            ".Z" => Codec::Lzw,
            ".zst" => Codec::Zstd,
            other => return Err(format!("unknown compression suffix {other:?}")),
        })
    }

    /// The codec for `--compress-snapshots` and `--compression-policy`.
    pub(crate) fn from_flags(enabled: bool, policy: &str) -> Result<Codec, String> {
        let c: Codec = policy.parse()?;
        Ok(if enabled { c } else { Codec::None })
    }

    pub(crate) fn policy_name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Zlib => "zlib",
            Codec::Lzw => "lzw",
            Codec::Zstd => "zstd",
        }
    }

    /// A single-stream encoder at the default levels (deltas: small objects).
    pub(crate) fn encoder<W: Write>(self, w: W) -> io::Result<Encoder<W>> {
        let level = DEFLATE_LEVEL;
        Ok(match self {
            Codec::None => Encoder::None(w),
            Codec::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .operating_system(255) // Go's gzip writes OS "unknown"
                    .write(w, flate2::Compression::new(level)),
            ),
            Codec::Zlib => Encoder::Zlib(flate2::write::ZlibEncoder::new(
                w,
                flate2::Compression::new(level),
            )),
            Codec::Lzw => Encoder::Lzw(LzwWriter::new(w)),
            Codec::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?),
        })
    }

    /// A decompressing reader. Truncated input is an error, never a short, silent read.
    pub fn decoder<'a, R: BufRead + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Codec::None => Box::new(r),
            // Multi-member gzip is valid and Go reads it; ours (module pdeflate) inflate on
            // every core, anyone else's as one stream.
            Codec::Gzip => Box::new(crate::format::pdeflate::ParallelGzipReader::new(
                r,
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
            )),
            Codec::Zlib => Box::new(flate2::bufread::ZlibDecoder::new(r)),
            Codec::Lzw => Box::new(LzwReader::new(r)),
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }
}

/// How full snapshots are compressed: the codec, and for gzip and zlib the level and the number
/// of threads deflating blocks (module `pdeflate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub(crate) codec: Codec,
    pub(crate) level: u32,
    pub(crate) threads: usize,
}

impl Compression {
    /// `threads` 0: every core.
    pub fn new(codec: Codec, level: u32, threads: usize) -> Compression {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        Compression {
            codec,
            level: level.min(9),
            threads,
        }
    }

    pub(crate) fn suffix(self) -> &'static str {
        self.codec.suffix()
    }

    pub(crate) fn policy_name(self) -> &'static str {
        self.codec.policy_name()
    }

    /// A writer compressing into `w` (level and threads as configured).
    pub fn encoder<W: Write>(self, w: W) -> io::Result<Encoder<W>> {
        use crate::format::pdeflate::{Container, ParallelDeflate};
        let container = match self.codec {
            Codec::Gzip => Container::Gzip,
            Codec::Zlib => Container::Zlib,
            other => return other.encoder(w),
        };
        // one thread too writes blocks: a gzip full restores on every core whoever wrote it
        Ok(Encoder::Parallel(ParallelDeflate::new(
            w,
            container,
            self.level,
            self.threads,
        )?))
    }
}

/// The codec with Go's level and every core.
impl From<Codec> for Compression {
    fn from(codec: Codec) -> Compression {
        Compression::new(codec, DEFLATE_LEVEL, 0)
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "gzip" => Codec::Gzip,
            "zlib" => Codec::Zlib,
            "lzw" => Codec::Lzw,
            "zstd" => Codec::Zstd,
            other => {
                return Err(format!(
                    "unknown compression policy {other:?}: expected one of gzip, zlib, lzw, zstd"
                ))
            }
        })
    }
}

/// A compressing writer; `finish` writes the codec's trailer and returns the inner writer.
pub enum Encoder<W: Write> {
    /// No compression.
    None(W),
    /// gzip on one thread.
    Gzip(flate2::write::GzEncoder<W>),
    /// zlib on one thread.
    Zlib(flate2::write::ZlibEncoder<W>),
    /// lzw.
    Lzw(LzwWriter<W>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, W>),
    /// gzip or zlib on several threads.
    Parallel(crate::format::pdeflate::ParallelDeflate<W>),
}

impl<W: Write> Encoder<W> {
    /// Ends the stream (trailers included) and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zlib(e) => e.finish(),
            Encoder::Lzw(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Parallel(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zlib(e) => e.write(buf),
            Encoder::Lzw(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Parallel(e) => e.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(buf),
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Zlib(e) => e.write_all(buf),
            Encoder::Lzw(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
            Encoder::Parallel(e) => e.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zlib(e) => e.flush(),
            Encoder::Lzw(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Parallel(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_roundtrips_and_detects_truncation() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 20) as u8)
            .collect();
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Zlib,
            Codec::Lzw,
            Codec::Zstd,
        ] {
            let mut e = codec.encoder(Vec::new()).unwrap();
            for c in data.chunks(32 * 1024) {
                e.write_all(c).unwrap();
            }
            let enc = e.finish().unwrap();
            assert_eq!(Codec::from_suffix(codec.suffix()).unwrap(), codec);
            let mut out = Vec::new();
            codec
                .decoder(&enc[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{codec:?}");
            if codec != Codec::None {
                let mut out = Vec::new();
                let r = codec
                    .decoder(&enc[..enc.len() - 5])
                    .and_then(|mut d| d.read_to_end(&mut out));
                assert!(r.is_err(), "{codec:?} must reject a truncated stream");
            }
        }
    }

    #[test]
    fn gzip_header_is_go_like() {
        let e = Codec::Gzip.encoder(Vec::new()).unwrap();
        let enc = e.finish().unwrap();
        assert_eq!(&enc[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&enc[4..8], &[0, 0, 0, 0]); // no mtime
        assert_eq!(enc[9], 255); // OS unknown
    }

    #[test]
    fn policies_parse() {
        assert_eq!(Codec::from_flags(true, "gzip").unwrap(), Codec::Gzip);
        assert_eq!(Codec::from_flags(false, "gzip").unwrap(), Codec::None);
        assert_eq!(Codec::from_flags(true, "lzw").unwrap().suffix(), ".Z");
        assert!(Codec::from_flags(true, "lz4").is_err());
        assert!(Codec::from_suffix(".bz2").is_err());
    }
}
