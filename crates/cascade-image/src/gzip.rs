//! The gzip writer of layers: miniz_oxide's deflate at [`GZIP_LEVEL`], framed by hand.
//!
//! Layer digests are the digests of these bytes, so the deflate implementation is part of
//! every image's identity. flate2 picks its backend by cargo feature, and features unify
//! across the workspace: one dependency asking for `flate2/zlib-rs` (rpgp does) would
//! change every layer. So the encoder calls miniz_oxide itself, the way flate2's
//! pure-Rust backend does (raw deflate through `deflate::stream::deflate` into a 32 KiB
//! buffer, then `Finish`), and writes the same header and trailer flate2's `GzBuilder`
//! wrote: the layers of every earlier build keep their digests (pinned by the tests).

use std::io::{self, Write};

use miniz_oxide::deflate::core::CompressorOxide;
use miniz_oxide::deflate::stream::deflate;
use miniz_oxide::{DataFormat, MZFlush, MZStatus};

use crate::layer::{GZIP_LEVEL, GZIP_OS_UNKNOWN};

/// What flate2 buffered compressed output in.
const OUT_BUF: usize = 32 * 1024;

pub(crate) struct GzWriter<W: Write> {
    inner: W,
    compressor: Box<CompressorOxide>,
    out: Vec<u8>,
    crc: crc32fast::Hasher,
    size: u32,
}

impl<W: Write> GzWriter<W> {
    pub(crate) fn new(mut inner: W) -> io::Result<Self> {
        // ID1 ID2, CM = deflate, FLG = none, MTIME = 0, XFL = 0 (level 6: neither
        // "best" nor "fastest"), OS = unknown.
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, GZIP_OS_UNKNOWN])?;
        let mut compressor: Box<CompressorOxide> = Box::default();
        compressor.set_format_and_level(DataFormat::Raw, GZIP_LEVEL as u8);
        Ok(GzWriter {
            inner,
            compressor,
            out: vec![0; OUT_BUF],
            crc: crc32fast::Hasher::new(),
            size: 0,
        })
    }

    fn run(&mut self, input: &[u8], flush: MZFlush) -> io::Result<(usize, bool)> {
        let r = deflate(&mut self.compressor, input, &mut self.out, flush);
        let status = r
            .status
            .map_err(|e| io::Error::other(format!("deflate failed: {e:?}")))?;
        self.inner.write_all(&self.out[..r.bytes_written])?;
        Ok((r.bytes_consumed, status == MZStatus::StreamEnd))
    }

    /// Ends the deflate stream, writes the trailer (CRC-32, size mod 2^32), and gives
    /// back the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        loop {
            let (_, end) = self.run(&[], MZFlush::Finish)?;
            if end {
                break;
            }
        }
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&self.size.to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Consumes what the compressor takes; the output it makes goes out at once.
        let mut consumed = 0;
        while consumed == 0 {
            let (n, _) = self.run(buf, MZFlush::None)?;
            consumed = n;
        }
        self.crc.update(&buf[..consumed]);
        self.size = self.size.wrapping_add(consumed as u32);
        Ok(consumed)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any gzip reader reads it back; the header is exactly the one layers always had.
    #[test]
    fn round_trips_through_a_gzip_reader() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut w = GzWriter::new(Vec::new()).unwrap();
        for chunk in data.chunks(7_919) {
            w.write_all(chunk).unwrap();
        }
        let gz = w.finish().unwrap();
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, data);
        // The bytes themselves, pinned: what flate2's miniz_oxide backend wrote for the
        // same input (the history lockfiles' layers reproduce with this encoder). Another
        // deflate (zlib, zlib-rs) gives other bytes here, and other layer digests.
        assert_eq!(
            (crate::OciDigest::of(&gz).to_string(), gz.len()),
            (PINNED.to_string(), PINNED_LEN)
        );
    }

    const PINNED: &str = "sha256:2a65dbce676d04e8acdd0cb3c41795acb6890488d9da6987266967ec9899d068";
    const PINNED_LEN: usize = 6428;
}
