//! Digest newtypes. Every digest we print is `blake3:<64 hex>`.

use std::fmt;
use std::str::FromStr;

/// A 32-byte blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a digest of the form `blake3:<64 hex digits>`")]
pub struct DigestParseError(pub String);

impl Digest {
    pub const PREFIX: &'static str = "blake3:";

    /// The digest of some bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_hasher(h: &blake3::Hasher) -> Self {
        Digest(*h.finalize().as_bytes())
    }

    pub fn hex(&self) -> String {
        self.hex_str(&mut [0; 64]).to_string()
    }

    /// The 64 hex digits in `buf`, without allocating (store paths, lockfiles and
    /// snapshots print thousands of digests; `hex::encode` goes char by char).
    pub fn hex_str<'b>(&self, buf: &'b mut [u8; 64]) -> &'b str {
        // 64 bytes are exactly two per byte of the digest: this cannot fail.
        let _ = hex::encode_to_slice(self.0, buf);
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// The first `n` hex digits, for people (never for lookups).
    pub fn short(&self, n: usize) -> String {
        let mut h = self.hex();
        h.truncate(n);
        h
    }

    pub fn from_hex(s: &str) -> Result<Self, DigestParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| DigestParseError(s.to_string()))?;
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::PREFIX)?;
        f.write_str(self.hex_str(&mut [0; 64]))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.short(12))
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| DigestParseError(s.to_string()))?;
        if hex.len() != 64 {
            return Err(DigestParseError(s.to_string()));
        }
        Digest::from_hex(hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

macro_rules! digest_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Digest);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
        impl FromStr for $name {
            type Err = DigestParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
        impl $name {
            pub fn hex(&self) -> String {
                self.0.hex()
            }
            pub fn short(&self, n: usize) -> String {
                self.0.short(n)
            }
        }
    };
}

digest_newtype!(
    /// The derivation hash of a build node: what the action cache is keyed by.
    NodeKey
);
digest_newtype!(
    /// The root of a node's normalized output tree.
    OutputDigest
);
digest_newtype!(
    /// The digest of a file's contents.
    BlobDigest
);
digest_newtype!(
    /// The digest of one directory of an output tree (its canonical encoding).
    TreeDigest
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert!(s.starts_with("blake3:"));
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!("blake3:zz".parse::<Digest>().is_err());
        assert!(d.hex().parse::<Digest>().is_err(), "prefix is required");
    }

    /// The hex written in place is `hex::encode`'s, byte for byte (it names every store
    /// entry and is in every lockfile).
    #[test]
    fn hex_is_lowercase_and_matches_the_hex_crate() {
        for seed in [&b""[..], b"a", b"hello", &[0xff; 40]] {
            let d = Digest::of(seed);
            assert_eq!(d.hex(), hex::encode(d.0));
        }
        let edges = Digest([0x00, 0x0f, 0xf0, 0xff].repeat(8).try_into().unwrap());
        assert_eq!(edges.hex(), "000ff0ff".repeat(8));
        assert_eq!(
            edges.to_string(),
            format!("blake3:{}", "000ff0ff".repeat(8))
        );
    }
}
