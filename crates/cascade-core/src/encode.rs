//! The canonical encoding that node keys and tree digests are hashed over.
//!
//! A document is a header (`domain` and `version`) followed by fields. Every field is
//! `tag: u8, len: u64 LE, payload`; integers are u64 LE; strings are UTF-8; lists and
//! maps are a u64 count followed by length-prefixed items. Nothing depends on `Debug`
//! output or on a hash map's order: maps are `BTreeMap`s and are written sorted.
//! `docs/encoding.md` describes it and `tests/vectors.rs` pins it.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
}

fn put_len(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(&(n as u64).to_le_bytes());
}

impl Encoder {
    /// Start a document: a length-prefixed domain string and a version number, so two
    /// kinds of documents, or two versions of one, never hash alike.
    pub fn new(domain: &str, version: u64) -> Self {
        let mut buf = Vec::with_capacity(256);
        put_len(&mut buf, domain.len());
        buf.extend_from_slice(domain.as_bytes());
        buf.extend_from_slice(&version.to_le_bytes());
        Encoder { buf }
    }

    /// An encoder with no header, for nested payloads.
    fn bare() -> Self {
        Encoder { buf: Vec::new() }
    }

    pub fn bytes(&mut self, tag: u8, payload: &[u8]) -> &mut Self {
        self.buf.push(tag);
        put_len(&mut self.buf, payload.len());
        self.buf.extend_from_slice(payload);
        self
    }

    pub fn str(&mut self, tag: u8, s: &str) -> &mut Self {
        self.bytes(tag, s.as_bytes())
    }

    pub fn u64(&mut self, tag: u8, n: u64) -> &mut Self {
        self.bytes(tag, &n.to_le_bytes())
    }

    pub fn bool(&mut self, tag: u8, b: bool) -> &mut Self {
        self.bytes(tag, &[b as u8])
    }

    /// An optional value: absent fields are written as a field with an empty payload
    /// preceded by a 0 marker, present ones with a 1 marker, so `None` != `Some("")`.
    pub fn opt_str(&mut self, tag: u8, s: Option<&str>) -> &mut Self {
        let mut p = Vec::with_capacity(1 + s.map_or(0, str::len));
        match s {
            None => p.push(0),
            Some(s) => {
                p.push(1);
                p.extend_from_slice(s.as_bytes());
            }
        }
        self.bytes(tag, &p)
    }

    /// A nested structure, written by `f` into its own length-prefixed payload.
    pub fn nested(&mut self, tag: u8, f: impl FnOnce(&mut Encoder)) -> &mut Self {
        let mut inner = Encoder::bare();
        f(&mut inner);
        self.bytes(tag, &inner.buf)
    }

    /// A list: count, then each item as a length-prefixed nested payload.
    pub fn list<T>(
        &mut self,
        tag: u8,
        items: impl ExactSizeIterator<Item = T>,
        mut f: impl FnMut(&mut Encoder, T),
    ) -> &mut Self {
        let mut inner = Vec::new();
        put_len(&mut inner, items.len());
        for item in items {
            let mut e = Encoder::bare();
            f(&mut e, item);
            put_len(&mut inner, e.buf.len());
            inner.extend_from_slice(&e.buf);
        }
        self.bytes(tag, &inner)
    }

    /// A list of strings.
    pub fn strs<'a>(
        &mut self,
        tag: u8,
        items: impl ExactSizeIterator<Item = &'a str>,
    ) -> &mut Self {
        self.list(tag, items, |e, s| {
            e.str(0, s);
        })
    }

    /// A string map, written in key order.
    pub fn map(&mut self, tag: u8, m: &BTreeMap<String, String>) -> &mut Self {
        self.list(tag, m.iter(), |e, (k, v)| {
            e.str(0, k).str(1, v);
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads what [`Encoder`] wrote. Every read is bounds-checked: a truncated or
/// malformed document is an error, never a panic.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated document")]
    Truncated,
    #[error("expected domain `{expected}` version {version}")]
    WrongHeader { expected: String, version: u64 },
    #[error("expected field {expected}, found {found}")]
    WrongTag { expected: u8, found: u8 },
    #[error("field {0} is not valid UTF-8")]
    Utf8(u8),
    #[error("field {0} has a malformed value")]
    Malformed(u8),
    #[error("trailing bytes after the document")]
    Trailing,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8], domain: &str, version: u64) -> Result<Self, DecodeError> {
        let mut d = Decoder { buf };
        let wrong = || DecodeError::WrongHeader {
            expected: domain.to_string(),
            version,
        };
        let n = d.take_len().map_err(|_| wrong())?;
        let dom = d.take(n).map_err(|_| wrong())?;
        let v = d.take(8).map_err(|_| wrong())?;
        if dom != domain.as_bytes() || v != version.to_le_bytes() {
            return Err(wrong());
        }
        Ok(d)
    }

    /// Reads the header of a document that exists in several versions: the version,
    /// and the decoder positioned after it, when the domain is `domain` and the version
    /// one of `versions`.
    pub fn any_version(
        buf: &'a [u8],
        domain: &str,
        versions: &[u64],
    ) -> Result<(Self, u64), DecodeError> {
        let wrong = || DecodeError::WrongHeader {
            expected: domain.to_string(),
            version: versions.last().copied().unwrap_or_default(),
        };
        let mut d = Decoder { buf };
        let n = d.take_len().map_err(|_| wrong())?;
        let dom = d.take(n).map_err(|_| wrong())?;
        let v = d.take(8).map_err(|_| wrong())?;
        let mut le = [0u8; 8];
        le.copy_from_slice(v);
        let version = u64::from_le_bytes(le);
        if dom != domain.as_bytes() || !versions.contains(&version) {
            return Err(wrong());
        }
        Ok((d, version))
    }

    fn bare(buf: &'a [u8]) -> Self {
        Decoder { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn take_len(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(a)).map_err(|_| DecodeError::Truncated)
    }

    pub fn bytes(&mut self, tag: u8) -> Result<&'a [u8], DecodeError> {
        let t = self.take(1)?[0];
        if t != tag {
            return Err(DecodeError::WrongTag {
                expected: tag,
                found: t,
            });
        }
        let n = self.take_len()?;
        self.take(n)
    }

    pub fn str(&mut self, tag: u8) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(tag)?).map_err(|_| DecodeError::Utf8(tag))
    }

    pub fn u64(&mut self, tag: u8) -> Result<u64, DecodeError> {
        let b = self.bytes(tag)?;
        let a: [u8; 8] = b.try_into().map_err(|_| DecodeError::Malformed(tag))?;
        Ok(u64::from_le_bytes(a))
    }

    pub fn bool(&mut self, tag: u8) -> Result<bool, DecodeError> {
        match self.bytes(tag)? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(DecodeError::Malformed(tag)),
        }
    }

    pub fn opt_str(&mut self, tag: u8) -> Result<Option<&'a str>, DecodeError> {
        match self.bytes(tag)? {
            [0] => Ok(None),
            [1, rest @ ..] => std::str::from_utf8(rest)
                .map(Some)
                .map_err(|_| DecodeError::Utf8(tag)),
            _ => Err(DecodeError::Malformed(tag)),
        }
    }

    pub fn nested(&mut self, tag: u8) -> Result<Decoder<'a>, DecodeError> {
        Ok(Decoder::bare(self.bytes(tag)?))
    }

    /// The items of a list, each as its own decoder.
    pub fn list(&mut self, tag: u8) -> Result<Vec<Decoder<'a>>, DecodeError> {
        let mut d = Decoder::bare(self.bytes(tag)?);
        let n = d.take_len()?;
        // A count larger than the bytes left is a lie; don't preallocate for it.
        let mut out = Vec::with_capacity(n.min(d.buf.len() / 8));
        for _ in 0..n {
            let len = d.take_len()?;
            out.push(Decoder::bare(d.take(len)?));
        }
        d.end()?;
        Ok(out)
    }

    /// The next field's tag, if any field is left.
    pub fn peek_tag(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// A list of strings written only when present: `None` when the next field is not
    /// `tag`.
    pub fn opt_strs(&mut self, tag: u8) -> Result<Option<Vec<String>>, DecodeError> {
        if self.peek_tag() == Some(tag) {
            self.strs(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn strs(&mut self, tag: u8) -> Result<Vec<String>, DecodeError> {
        self.list(tag)?
            .into_iter()
            .map(|mut d| {
                let s = d.str(0)?.to_string();
                d.end()?;
                Ok(s)
            })
            .collect()
    }

    pub fn map(&mut self, tag: u8) -> Result<BTreeMap<String, String>, DecodeError> {
        let mut m = BTreeMap::new();
        for mut d in self.list(tag)? {
            let k = d.str(0)?.to_string();
            let v = d.str(1)?.to_string();
            d.end()?;
            m.insert(k, v);
        }
        Ok(m)
    }

    /// Succeeds only when every byte was consumed.
    pub fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut m = BTreeMap::new();
        m.insert("B".to_string(), "2".to_string());
        m.insert("A".to_string(), "1".to_string());
        let mut e = Encoder::new("test", 3);
        e.str(1, "x")
            .u64(2, 7)
            .opt_str(3, None)
            .map(4, &m)
            .nested(5, |e| {
                e.bool(0, true);
            });
        let bytes = e.finish();
        let mut d = Decoder::new(&bytes, "test", 3).unwrap();
        assert_eq!(d.str(1).unwrap(), "x");
        assert_eq!(d.u64(2).unwrap(), 7);
        assert_eq!(d.opt_str(3).unwrap(), None);
        assert_eq!(d.map(4).unwrap(), m);
        assert!(d.nested(5).unwrap().bool(0).unwrap());
        d.end().unwrap();
        assert!(Decoder::new(&bytes, "test", 4).is_err());
        // Every truncation is an error, never a panic.
        for n in 0..bytes.len() {
            let r = Decoder::new(&bytes[..n], "test", 3).and_then(|mut d| {
                d.str(1)?;
                d.u64(2)?;
                d.opt_str(3)?;
                d.map(4)?;
                d.nested(5)?;
                d.end()
            });
            assert!(r.is_err(), "truncated at {n} decoded");
        }
    }

    #[test]
    fn none_differs_from_empty() {
        let a = Encoder::new("t", 1).opt_str(1, None).as_bytes().to_vec();
        let b = Encoder::new("t", 1)
            .opt_str(1, Some(""))
            .as_bytes()
            .to_vec();
        assert_ne!(a, b);
    }
}
