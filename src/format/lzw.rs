//! Streaming adapters over `weezl` for etcdbrctl's `lzw` policy: Go's `compress/lzw` with LSB
//! bit order and 8-bit literals (GIF-style code-width switching, clear code 256, end code 257).
//! weezl only offers slice-based streaming, so these adapt it to `std::io::Write`/`Read`.

use std::io::{self, BufRead, Read, Write};
use weezl::{BitOrder, LzwStatus};

const LIT_WIDTH: u8 = 8;
const OUT_BUF: usize = 64 * 1024;

/// A writer compressing as Go's `compress/lzw` (LSB, 8-bit literals) does.
pub struct LzwWriter<W: Write> {
    enc: weezl::encode::Encoder,
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> LzwWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        LzwWriter {
            enc: weezl::encode::Encoder::new(BitOrder::Lsb, LIT_WIDTH),
            inner,
            buf: vec![0; OUT_BUF],
        }
    }

    /// Writes the end code and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.enc.finish();
        for _ in 0..1024 {
            let r = self.enc.encode_bytes(&[], &mut self.buf);
            self.inner.write_all(&self.buf[..r.consumed_out])?;
            match r.status {
                Ok(LzwStatus::Done) => return Ok(self.inner),
                Ok(_) => {}
                Err(e) => return Err(io::Error::other(format!("lzw: {e}"))),
            }
        }
        Err(io::Error::other("lzw: encoder did not finish"))
    }
}

impl<W: Write> Write for LzwWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let r = self.enc.encode_bytes(data, &mut self.buf);
            self.inner.write_all(&self.buf[..r.consumed_out])?;
            data = &data[r.consumed_in..];
            if let Err(e) = r.status {
                return Err(io::Error::other(format!("lzw: {e}")));
            }
            if r.consumed_in == 0 && r.consumed_out == 0 {
                return Err(io::Error::other("lzw: encoder made no progress"));
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) struct LzwReader<R: BufRead> {
    dec: weezl::decode::Decoder,
    inner: R,
    done: bool,
}

impl<R: BufRead> LzwReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        LzwReader {
            dec: weezl::decode::Decoder::new(BitOrder::Lsb, LIT_WIDTH),
            inner,
            done: false,
        }
    }
}

impl<R: BufRead> Read for LzwReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            let inp = self.inner.fill_buf()?;
            let eof = inp.is_empty();
            let r = self.dec.decode_bytes(inp, out);
            self.inner.consume(r.consumed_in);
            match r.status {
                Ok(LzwStatus::Done) => self.done = true,
                Ok(LzwStatus::NoProgress) if eof && r.consumed_out == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "lzw: stream ends without an end code (truncated)",
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("lzw: {e}"),
                    ))
                }
            }
            if r.consumed_out > 0 {
                return Ok(r.consumed_out);
            }
            if eof && !self.done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "lzw: stream ends without an end code (truncated)",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(data: &[u8]) -> Vec<u8> {
        let mut w = LzwWriter::new(Vec::new());
        // uneven writes exercise the streaming path
        for chunk in data.chunks(7777) {
            w.write_all(chunk).unwrap();
        }
        let enc = w.finish().unwrap();
        let mut out = Vec::new();
        LzwReader::new(io::BufReader::with_capacity(100, &enc[..]))
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn roundtrips() {
        assert_eq!(roundtrip(b""), b"");
        assert_eq!(
            roundtrip(b"TOBEORNOTTOBEORTOBEORNOT"),
            b"TOBEORNOTTOBEORTOBEORNOT"
        );
        // enough varied data to fill the 4096-entry table several times
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 17) as u8)
            .collect();
        assert_eq!(roundtrip(&data), data);
    }

    #[test]
    fn first_code_is_clear_code_lsb() {
        // Go's writer starts with the 9-bit clear code 256: low byte 0x00, then bit 8 set.
        let mut w = LzwWriter::new(Vec::new());
        w.write_all(b"a").unwrap();
        let enc = w.finish().unwrap();
        assert_eq!(enc[0], 0x00);
        assert_eq!(enc[1] & 1, 1);
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut w = LzwWriter::new(Vec::new());
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 251) as u8).collect();
        w.write_all(&data).unwrap();
        let enc = w.finish().unwrap();
        let mut out = Vec::new();
        let err = LzwReader::new(&enc[..enc.len() / 2])
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
