//! How digests and SHAs are shortened in what people read (never in what is hashed or
//! locked).

use std::fmt;

/// `blake3:1f2e3d4c5b6a…`, `sha256:…`: enough to tell digests apart in a sentence.
pub fn short_digest(d: &impl fmt::Display) -> String {
    let s = d.to_string();
    match s.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 => format!("{algo}:{}…", &hex[..12]),
        _ => s,
    }
}

/// The first 7 characters of a commit SHA, as git shows it.
pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}
