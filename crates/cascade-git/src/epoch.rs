//! The epoch of a pinned source: the committer time of the newest commit on the
//! first-parent line that changed the exported content (the rule is on `Git::pin`).
//!
//! Walking the history is the slow part of pinning a component that rarely changes, and
//! a no-op build pins every component again, so each answer is kept twice: in memory for
//! the build, and on disk under `<cache_dir>/epochs/` for the next one. The walk also
//! stops at any ancestor whose answer is on disk with the same content, so the build
//! after a commit walks one commit, not the history.
//!
//! On disk there is one file per commit, holding the answers of every source pinned at
//! it, written once when the build's pinning is done ([`flush`]): a monorepo of a
//! thousand directories costs one file per commit, not a thousand.
//!
//! The cache is keyed by the commit, not the repository: a commit id fixes its whole
//! history, so the answer is the same in every clone. A cache file is never trusted
//! blindly: it names its commit and carries a checksum, and an entry's content id must
//! equal the one just computed for that commit; anything else is ignored and recomputed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use git2::{Commit, ErrorCode, Oid};

use crate::filter::{self, Compiled, Filter, Memo};
use crate::resolve::Reader;

/// The first line of a cache file; a new format gets a new one (and so new keys). The
/// files of format 1 (one per source, named by a 64-digit key) are no longer read.
const HEADER: &str = "cascade-git epoch 2";
/// More than any valid cache file (about 120 bytes a source); a longer one is not read
/// to its end.
const MAX_FILE: u64 = 32 << 20;

/// What is exported from a commit: the tree at `dir`, and the id of its filtered tree
/// (the same id without a filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Content {
    pub(crate) sub: Oid,
    pub(crate) content: Oid,
}

/// One source's view of a repository's history: which directory, which filter.
pub(crate) struct Source<'a> {
    /// Normalized (see `resolve::normalize_dir`); empty for the root.
    pub(crate) dir: &'a str,
    pub(crate) filter: Option<(&'a Filter, &'a Compiled)>,
}

/// The answers of one commit, by source key: `(content, epoch)`.
pub(crate) type Entries = BTreeMap<[u8; 32], (Oid, i64)>;

/// What one build knows of the cache: every answer seen, the commits whose file was
/// read, and the answers found that are not on disk yet.
#[derive(Default)]
pub(crate) struct Known {
    answers: HashMap<[u8; 32], (Oid, i64)>,
    read: HashSet<Oid>,
    pending: BTreeMap<Oid, Entries>,
}

impl Source<'_> {
    /// The cache key of this source at `commit`: blake3 of an unambiguous encoding of the
    /// commit, the directory and the filter's patterns (sorted and deduplicated: the
    /// order they are written in does not change what is kept).
    pub(crate) fn key(&self, commit: Oid) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(HEADER.as_bytes());
        field(commit.as_bytes());
        field(self.dir.as_bytes());
        for list in [
            self.filter.map(|(f, _)| &f.include),
            self.filter.map(|(f, _)| &f.exclude),
        ] {
            let mut patterns: Vec<&str> = list.into_iter().flatten().map(String::as_str).collect();
            patterns.sort_unstable();
            patterns.dedup();
            field(&(patterns.len() as u64).to_le_bytes());
            for p in patterns {
                field(p.as_bytes());
            }
        }
        *h.finalize().as_bytes()
    }
}

/// The content of `commit` for `source`, or `None` when it has no tree at the dir.
/// With a filter, a sub-tree equal to `like`'s is not filtered again: equal trees keep
/// equal files.
fn content_of(
    git: &mut Reader<'_>,
    commit: &Commit<'_>,
    source: &Source<'_>,
    like: &Content,
    memo: &mut Memo,
) -> Result<Option<Content>, git2::Error> {
    let Some(sub) = git.subtree(commit.tree_id(), source.dir)? else {
        return Ok(None);
    };
    let content = match source.filter {
        _ if sub == like.sub => like.content,
        None => sub,
        Some((_, compiled)) => filter::filtered_id(git.repo, sub, compiled, memo)?,
    };
    Ok(Some(Content { sub, content }))
}

/// The epoch of `source` at `commit`, whose content is `start`, and how many ancestors
/// were looked at to find it. `memo` is the filtered-tree memo of this source's filter.
pub(crate) fn epoch(
    git: &mut Reader<'_>,
    cache: &Cache,
    known: &mut Known,
    commit: &Commit<'_>,
    source: &Source<'_>,
    start: Content,
    memo: &mut Memo,
) -> Result<(i64, usize), git2::Error> {
    let key = source.key(commit.id());
    if let Some(epoch) = lookup(cache, known, commit.id(), &key, start.content) {
        return Ok((epoch, 0));
    }
    let mut walked = 0;
    let mut current = commit.clone();
    let epoch = loop {
        let here = current.committer().when().seconds();
        let Some(parent_id) = current.parent_ids().next() else {
            break here;
        };
        walked += 1;
        let parent = match git.repo.find_commit(parent_id) {
            Ok(p) => p,
            // A shallow history ends here: nothing older is known to have this content.
            Err(e) if e.code() == ErrorCode::NotFound => break here,
            Err(e) => return Err(e),
        };
        match content_of(git, &parent, source, &start, memo)? {
            Some(c) if c.content == start.content => {}
            _ => break here,
        }
        if let Some(epoch) = lookup(
            cache,
            known,
            parent_id,
            &source.key(parent_id),
            start.content,
        ) {
            break epoch;
        }
        current = parent;
    };
    known.answers.insert(key, (start.content, epoch));
    known
        .pending
        .entry(commit.id())
        .or_default()
        .insert(key, (start.content, epoch));
    Ok((epoch, walked))
}

/// The epoch known for `key` (a source at `commit`) if its content is `content`: from
/// memory, else from the commit's file.
fn lookup(
    cache: &Cache,
    known: &mut Known,
    commit: Oid,
    key: &[u8; 32],
    content: Oid,
) -> Option<i64> {
    if !known.answers.contains_key(key) && known.read.insert(commit) {
        for (k, v) in cache.read(commit) {
            known.answers.entry(k).or_insert(v);
        }
    }
    let (c, epoch) = known.answers.get(key)?;
    (*c == content).then_some(*epoch)
}

/// Writes the answers found since the last flush, one file per commit, each merged with
/// what its file already holds (another build may have added to it meanwhile).
pub(crate) fn flush(cache: &Cache, known: &mut Known) {
    let pending = std::mem::take(&mut known.pending);
    // A reader's answers stay in memory: nothing to read back, nothing to write.
    if !cache.write {
        return;
    }
    for (commit, found) in pending {
        let mut entries = cache.read(commit);
        entries.extend(found);
        cache.write(commit, &entries);
    }
}

/// `<cache_dir>/epochs/<commit>`, each file:
///
/// ```text
/// cascade-git epoch 2
/// commit <hex commit id>
/// <hex source key> <hex content id> <seconds>     (one line per source, by key)
/// check <hex blake3 of the lines above, newlines included>
/// ```
pub(crate) struct Cache {
    dir: PathBuf,
    /// Off for readers that must write nothing.
    write: bool,
}

impl Cache {
    /// The cache under `cache_dir`; `write: false` only reads it.
    pub(crate) fn new(cache_dir: &Path, write: bool) -> Cache {
        Cache {
            dir: cache_dir.join("epochs"),
            write,
        }
    }

    fn path(&self, commit: Oid) -> PathBuf {
        self.dir.join(commit.to_string())
    }

    /// The valid entries of `commit`'s file; none for a missing or damaged one.
    fn read(&self, commit: Oid) -> Entries {
        let mut text = String::new();
        let read = fs::File::open(self.path(commit))
            .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text));
        match read {
            Ok(_) => parse(&text, commit).unwrap_or_default(),
            Err(_) => Entries::new(),
        }
    }

    /// Best effort: a cache that cannot be written is only slower next time.
    fn write(&self, commit: Oid, entries: &Entries) {
        let _ = self.try_write(commit, entries);
    }

    fn try_write(&self, commit: Oid, entries: &Entries) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        // A temp file in the same directory, renamed into place: readers see a whole
        // file or none, whatever else is writing the same commit's file.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(render(commit, entries).as_bytes())?;
        file.persist(self.path(commit)).map_err(|e| e.error)?;
        Ok(())
    }
}

fn body(commit: Oid, entries: &Entries) -> String {
    let mut body = format!("{HEADER}\ncommit {commit}\n");
    for (key, (content, epoch)) in entries {
        body.push_str(&format!("{} {content} {epoch}\n", hex(key)));
    }
    body
}

pub(crate) fn render(commit: Oid, entries: &Entries) -> String {
    let body = body(commit, entries);
    let check = blake3::hash(body.as_bytes()).to_hex();
    format!("{body}check {check}\n")
}

/// The entries of a cache file for `commit`; `None` for anything but a whole,
/// unaltered file written for this commit.
pub(crate) fn parse(text: &str, commit: Oid) -> Option<Entries> {
    let (body, check) = text.rsplit_once("check ")?;
    let check = check.strip_suffix('\n')?;
    if blake3::hash(body.as_bytes()).to_hex().as_str() != check {
        return None;
    }
    let mut lines = body.lines();
    if lines.next()? != HEADER || lines.next()?.strip_prefix("commit ")? != commit.to_string() {
        return None;
    }
    let mut entries = Entries::new();
    for line in lines {
        let mut fields = line.split(' ');
        let key = unhex(fields.next()?)?;
        let content = Oid::from_str(fields.next()?).ok()?;
        let epoch = fields.next()?.parse().ok()?;
        if fields.next().is_some() {
            return None;
        }
        entries.insert(key, (content, epoch));
    }
    // What was parsed must be what was written: no second spelling of one entry.
    (body == self::body(commit, &entries)).then_some(entries)
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_files_round_trip_and_reject_alterations() {
        let commit = Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid");
        let content = Oid::from_str("4b825dc642cb6eb9a060e54bf8d69288fbee4904").expect("oid");
        let entries: Entries = [
            ([7u8; 32], (content, 1_700_000_060)),
            ([9u8; 32], (content, 5)),
        ]
        .into_iter()
        .collect();
        let text = render(commit, &entries);
        assert_eq!(parse(&text, commit), Some(entries));
        // Another commit's file, a torn write, an edited epoch, garbage: all ignored.
        assert_eq!(parse(&text, content), None);
        assert_eq!(parse(&text[..text.len() - 1], commit), None);
        assert_eq!(parse(&text[..text.len() / 2], commit), None);
        let edited = text.replace(" 1700000060\n", " 1700000061\n");
        assert_ne!(edited, text);
        assert_eq!(parse(&edited, commit), None);
        assert_eq!(parse("", commit), None);
        assert_eq!(parse("check \n", commit), None);
        assert_eq!(parse("\u{0}\u{1}garbage", commit), None);
        assert_eq!(
            parse(&render(commit, &Entries::new()), commit),
            Some(Entries::new())
        );
    }

    #[test]
    fn keys_tell_dirs_and_filters_apart_but_not_pattern_order() {
        let commit = Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid");
        let filter = |include: &[&str], exclude: &[&str]| Filter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        };
        let key = |dir: &str, f: Option<&Filter>| {
            let compiled = f.map(|f| Compiled::new(f).expect("filter"));
            let source = Source {
                dir,
                filter: f.zip(compiled.as_ref()),
            };
            source.key(commit)
        };
        let ab = filter(&["a", "b"], &[]);
        let ba = filter(&["b", "a", "a"], &[]);
        let a_b = filter(&["a"], &["b"]);
        let joined = filter(&["ab"], &[]);
        assert_eq!(key("x", Some(&ab)), key("x", Some(&ba)));
        assert_ne!(key("x", Some(&ab)), key("x", Some(&a_b)));
        assert_ne!(key("x", Some(&ab)), key("x", Some(&joined)));
        assert_ne!(key("x", Some(&ab)), key("y", Some(&ab)));
        assert_ne!(key("x", None), key("y", None));
        assert_ne!(key("x", None), key("x", Some(&ab)));
    }
}
