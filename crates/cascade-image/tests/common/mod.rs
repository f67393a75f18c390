//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use cascade_image::{OciDigest, OciLayout};

/// Writes `contents` at `root/rel` with `mode` and an mtime of `mtime_secs`, creating
/// parents.
pub fn write_file(root: &Path, rel: &str, contents: &[u8], mode: u32, mtime_secs: u64) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, contents).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    let f = fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_secs))
        .unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// One entry of a tar as the tests compare it.
#[derive(Debug, PartialEq, Eq)]
pub struct TarEntry {
    pub path: String,
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub link: Option<String>,
    pub data: Vec<u8>,
}

/// The entries of an uncompressed tar (GNU long names resolved).
pub fn tar_entries(tar_bytes: &[u8]) -> Vec<TarEntry> {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let link = e
            .link_name_bytes()
            .map(|b| String::from_utf8(b.into_owned()).unwrap());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(TarEntry {
            path,
            kind: h.entry_type().as_byte() as char,
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            uname: h.username_bytes().unwrap_or_default().to_vec(),
            gname: h.groupname_bytes().unwrap_or_default().to_vec(),
            link,
            data,
        });
    }
    out
}

/// The entry types of every raw header, extension headers included.
pub fn raw_entry_types(tar_bytes: &[u8]) -> Vec<char> {
    let mut ar = tar::Archive::new(tar_bytes);
    let entries = ar.entries().unwrap().raw(true);
    entries
        .map(|e| e.unwrap().header().entry_type().as_byte() as char)
        .collect()
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn blob_json(layout: &OciLayout, d: &OciDigest) -> serde_json::Value {
    serde_json::from_slice(&layout.read_blob(d).unwrap()).unwrap()
}
