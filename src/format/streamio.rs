//! Bridges between async byte streams (object-store downloads) and the blocking readers and
//! writers of the codecs and the upload sink.

use crate::error::Result;
use bytes::Bytes;
use std::io::Read;

/// A blocking `Read` over chunks arriving on a channel.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

impl ChannelReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Result<Bytes>>) -> ChannelReader {
        ChannelReader {
            rx,
            cur: Bytes::new(),
        }
    }
}
