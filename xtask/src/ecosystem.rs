//! `cargo xtask ecosystem`: the example ecosystem's git repositories.
//!
//! `ecosystem/history.yaml` says which commits each repository has, on which branch, with
//! which tag (its format is documented at its top); `ecosystem/<repo>/` holds each
//! repository's newest tree and `ecosystem/overlays/` the files that differ in older commits.
//! Everything that goes into an object is fixed — identity and dates from the history file,
//! modes from this checkout, contents from the files, trees built in memory — so every
//! commit SHA is the same on every machine and every run, and so are the keys and lockfiles
//! cascade derives from them.
//!
//! The repositories are written into a temporary directory beside the output directory and
//! then swapped into place, so nobody ever sees a half-written ecosystem.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, RepositoryInitOptions, Signature, Time};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Errors are messages for a person: each names the file or repository and what is wrong.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where `cargo xtask ecosystem` writes, relative to the workspace root; the environments
/// in `graph/environments/` point there.
pub const DEFAULT_OUT: &str = "target/ecosystem";
const HISTORY: &str = "ecosystem/history.yaml";
const SNAPSHOTS: &str = "ecosystem";
const OVERLAYS: &str = "ecosystem/overlays";
/// Seconds between two consecutive commits of a repository.
const COMMIT_INTERVAL: i64 = 3600;

/// Writes the ecosystem's repositories into `out_dir` (replacing what is there) and prints
/// one line per repository: its name, branches, tags and develop's short SHA.
pub fn generate(workspace_root: &Path, out_dir: &Path) -> Result<(), Error> {
    for repo in write_ecosystem(workspace_root, out_dir)? {
        println!("{repo}");
    }
    Ok(())
}

/// What one generated repository holds.
pub struct RepoSummary {
    pub name: String,
    /// `main` and `develop`, with the commit each points at.
    pub branches: Vec<(String, Oid)>,
    /// Oldest first.
    pub tags: Vec<String>,
    pub develop: Oid,
}

impl fmt::Display for RepoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let branches: Vec<&str> = self
            .branches
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let develop = self.develop.to_string();
        write!(
            f,
            "{:<13} branches: {}  tags: {}  develop: {}",
            self.name,
            branches.join(" "),
            self.tags.join(" "),
            &develop[..7]
        )
    }
}

/// Loads and checks the history, writes every repository into a temporary directory beside
/// `out_dir`, then swaps it into place. On any error nothing in `out_dir` has changed.
pub fn write_ecosystem(workspace_root: &Path, out_dir: &Path) -> Result<Vec<RepoSummary>, Error> {
    let history = load_history(workspace_root)?;

    let parent = match out_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out_dir
        .file_name()
        .ok_or_else(|| format!("{}: not a directory name", out_dir.display()))?;
    fs::create_dir_all(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    // In the same directory as the output, so the final rename never crosses filesystems.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.tmp-", name.to_string_lossy()))
        .tempdir_in(&parent)
        .map_err(|e| {
            format!(
                "cannot create a temporary directory in {}: {e}",
                parent.display()
            )
        })?;

    let mut summaries = Vec::new();
    for repo in &history.repos {
        let path = staging.path().join(format!("{}.git", repo.name));
        let summary = write_repo(&history, repo, &path)
            .map_err(|e| format!("{}: cannot write repository `{}`: {e}", HISTORY, repo.name))?;
        summaries.push(summary);
    }
    make_world_readable(staging.path())?;

    replace_dir(staging.path(), out_dir)?;
    // The staging path now holds the previous ecosystem, or nothing: drop it.
    if let Err(e) = fs::remove_dir_all(staging.path()) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("warning: cannot remove {}: {e}", staging.path().display());
        }
    }
    Ok(summaries)
}

// ---------------------------------------------------------------------------------------
// The history file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryFile {
    identity: Identity,
    start: String,
    repos: Repos,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    name: String,
    email: String,
}

/// The repositories in file order (upstream first reads best in the output). The parser
/// already rejects duplicate keys; the visitor checks again rather than merge silently.
struct Repos(Vec<(String, RepoFile)>);

impl<'de> Deserialize<'de> for Repos {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ReposVisitor;
        impl<'de> Visitor<'de> for ReposVisitor {
            type Value = Repos;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from repository name to its commits")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Repos, A::Error> {
                let mut repos: Vec<(String, RepoFile)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if repos.iter().any(|(seen, _)| *seen == name) {
                        return Err(de::Error::custom(format!(
                            "repository `{name}` is listed twice"
                        )));
                    }
                    let repo = map.next_value()?;
                    repos.push((name, repo));
                }
                Ok(Repos(repos))
            }
        }
        deserializer.deserialize_map(ReposVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoFile {
    commits: Vec<CommitFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitFile {
    branch: Branch,
    message: String,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    overlays: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Branch {
    Main,
    Develop,
}

// ---------------------------------------------------------------------------------------
// The history once checked: everything needed to write the repositories, with nothing left
// to go wrong but git itself.

struct History {
    name: String,
    email: String,
    /// Unix time of each repository's first commit.
    start: i64,
    repos: Vec<RepoPlan>,
}

struct RepoPlan {
    name: String,
    commits: Vec<CommitPlan>,
}

struct CommitPlan {
    branch: Branch,
    message: String,
    tag: Option<String>,
    files: Files,
}

/// A tree's files by `/`-separated path.
type Files = BTreeMap<String, FileEntry>;

#[derive(Clone)]
struct FileEntry {
    bytes: Vec<u8>,
    executable: bool,
}

/// Reads `ecosystem/history.yaml` and the trees it names, and checks all of it. Every problem
/// found is reported at once, each with where it is in the file.
fn load_history(root: &Path) -> Result<History, Error> {
    let path = root.join(HISTORY);
    let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {HISTORY}: {e}"))?;
    let file: HistoryFile = serde_saphyr::from_str(&text).map_err(|e| {
        // serde-saphyr renders a snippet of the file, which it calls `<input>`: name it.
        let rendered = e.to_string().replace("<input>", HISTORY);
        format!("{HISTORY}: {}", rendered.trim_start_matches("error: "))
    })?;

    let mut problems = Vec::new();
    let start = parse_utc(&file.start);
    if start.is_none() {
        problems.push(format!(
            "start: `{}` is not a UTC time like 2026-01-01T00:00:00Z",
            file.start
        ));
    }
    for (field, value) in [
        ("name", &file.identity.name),
        ("email", &file.identity.email),
    ] {
        if value.trim().is_empty() || value.contains(['<', '>', '\n']) {
            problems.push(format!(
                "identity.{field}: `{value}` must be non-empty, on one line, without < or >"
            ));
        }
    }
    if file.repos.0.is_empty() {
        problems.push("repos: no repository listed".to_string());
    }

    let mut repos = Vec::new();
    for (name, repo) in &file.repos.0 {
        if let Some(plan) = check_repo(root, name, repo, &mut problems) {
            repos.push(plan);
        }
    }
    unlisted_snapshots(root, &file.repos, &mut problems);

    match start {
        Some(start) if problems.is_empty() => Ok(History {
            name: file.identity.name,
            email: file.identity.email,
            start,
            repos,
        }),
        _ => Err(format!("{HISTORY}:\n  - {}", problems.join("\n  - ")).into()),
    }
}

/// Checks one repository's commits and computes their trees; pushes what is wrong onto
/// `problems` and returns the plan when nothing is.
fn check_repo(
    root: &Path,
    name: &str,
    repo: &RepoFile,
    problems: &mut Vec<String>,
) -> Option<RepoPlan> {
    let before = problems.len();
    let at = format!("repos.{name}");
    if !valid_repo_name(name) {
        problems.push(format!(
            "{at}: `{name}` is not a repository name (lowercase letters, digits and -, not `overlays`)"
        ));
        return None;
    }
    let snapshot_dir = format!("{SNAPSHOTS}/{name}");
    let snapshot = match read_files(root, &snapshot_dir) {
        Ok(files) => files,
        Err(e) => {
            problems.push(format!("{at}: the snapshot {snapshot_dir}/: {e}"));
            return None;
        }
    };
    if repo.commits.is_empty() {
        problems.push(format!("{at}.commits: no commit listed"));
        return None;
    }

    let mut commits = Vec::new();
    let mut seen_develop = false;
    let mut last_tag: Option<(String, semver::Version)> = None;
    for (index, commit) in repo.commits.iter().enumerate() {
        let at = format!("{at}.commits[{index}] (\"{}\")", commit.message.trim());
        match commit.branch {
            Branch::Develop => seen_develop = true,
            Branch::Main if seen_develop => problems.push(format!(
                "{at}: a main commit after a develop commit; history is linear with main first, \
                 so that develop is main plus a few commits"
            )),
            Branch::Main => {}
        }
        if index == 0 && commit.branch != Branch::Main {
            problems.push(format!("{at}: the first commit must be on main"));
        }
        if commit.message.trim().is_empty() {
            problems.push(format!("{at}: empty message"));
        }
        if let Some(tag) = &commit.tag {
            match parse_tag(tag) {
                None => problems.push(format!(
                    "{at}: tag `{tag}` is not vMAJOR.MINOR.PATCH (like v0.6.1)"
                )),
                Some(_) if commit.branch != Branch::Main => problems.push(format!(
                    "{at}: tag `{tag}` is on a develop commit; version tags go on main"
                )),
                Some(version) => {
                    if let Some((previous, previous_version)) = &last_tag {
                        if version <= *previous_version {
                            problems.push(format!(
                                "{at}: tag `{tag}` does not come after the earlier `{previous}`"
                            ));
                        }
                    }
                    last_tag = Some((tag.clone(), version));
                }
            }
        }
        if index + 1 == repo.commits.len()
            && (!commit.overlays.is_empty() || !commit.remove.is_empty())
        {
            problems.push(format!(
                "{at}: the last commit is the snapshot {snapshot_dir}/ itself, so it takes no \
                 overlays and no remove"
            ));
        }
        if let Some(files) = commit_files(root, &snapshot, commit, &at, problems) {
            commits.push(CommitPlan {
                branch: commit.branch,
                message: format!("{}\n", commit.message.trim_end()),
                tag: commit.tag.clone(),
                files,
            });
        }
    }
    (problems.len() == before).then(|| RepoPlan {
        name: name.to_string(),
        commits,
    })
}

/// The tree of one commit: the snapshot, with its overlays laid over it in order, minus its
/// removals.
fn commit_files(
    root: &Path,
    snapshot: &Files,
    commit: &CommitFile,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<Files> {
    let before = problems.len();
    let mut files = snapshot.clone();
    for overlay in &commit.overlays {
        if !safe_relative(overlay) {
            problems.push(format!(
                "{at}: overlay `{overlay}` must be a relative path under {OVERLAYS}/, without `.` or `..`"
            ));
            continue;
        }
        match read_files(root, &format!("{OVERLAYS}/{overlay}")) {
            Ok(overlay_files) => files.extend(overlay_files),
            Err(e) => problems.push(format!("{at}: overlay `{overlay}`: {e}")),
        }
    }
    for path in &commit.remove {
        if files.remove(path).is_none() {
            problems.push(format!(
                "{at}: remove `{path}`: no such file in the snapshot or the overlays"
            ));
        }
    }
    // An overlay file where the snapshot has a directory (or the reverse) cannot be a tree.
    for path in files.keys() {
        let mut prefix = path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if files.contains_key(parent) {
                problems.push(format!(
                    "{at}: `{parent}` is both a file and the directory of `{path}`"
                ));
            }
            prefix = parent;
        }
    }
    if files.is_empty() {
        problems.push(format!("{at}: the commit would have no files"));
    }
    (problems.len() == before).then_some(files)
}

/// A directory in `ecosystem/` that the history does not list is most likely a typo in one
/// of the two names: say so instead of silently leaving it out.
fn unlisted_snapshots(root: &Path, repos: &Repos, problems: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(root.join(SNAPSHOTS)) else {
        return; // reported by the repositories' own snapshot checks
    };
    let mut unlisted: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "overlays" && !repos.0.iter().any(|(repo, _)| repo == name))
        .collect();
    unlisted.sort();
    for name in unlisted {
        problems.push(format!(
            "repos: {SNAPSHOTS}/{name}/ is not listed (a repository's snapshot needs an entry here)"
        ));
    }
}

/// Every regular file under `root/dir`, by path relative to it.
fn read_files(root: &Path, dir: &str) -> Result<Files, String> {
    let top = root.join(dir);
    if !top.is_dir() {
        return Err(format!("{dir}/ is not a directory"));
    }
    let mut files = Files::new();
    let mut pending = vec![(top, String::new())];
    while let Some((path, prefix)) = pending.pop() {
        let entries =
            fs::read_dir(&path).map_err(|e| format!("cannot read {dir}/{prefix}: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {dir}/{prefix}: {e}"))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|name| format!("{dir}/{prefix}{name:?}: the name is not UTF-8"))?;
            let relative = format!("{prefix}{name}");
            if name == ".git" {
                return Err(format!(
                    "{dir}/{relative}: git does not allow `.git` in a tree"
                ));
            }
            let meta = fs::symlink_metadata(entry.path())
                .map_err(|e| format!("cannot read {dir}/{relative}: {e}"))?;
            if meta.is_dir() {
                pending.push((entry.path(), format!("{relative}/")));
            } else if meta.is_file() {
                let bytes = fs::read(entry.path())
                    .map_err(|e| format!("cannot read {dir}/{relative}: {e}"))?;
                files.insert(
                    relative,
                    FileEntry {
                        bytes,
                        executable: is_executable(&meta),
                    },
                );
            } else {
                return Err(format!(
                    "{dir}/{relative}: only regular files and directories are supported"
                ));
            }
        }
    }
    Ok(files)
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o100 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

fn valid_repo_name(name: &str) -> bool {
    name != "overlays"
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// `v1.2.3` → 1.2.3; release tags carry no pre-release or build part.
fn parse_tag(tag: &str) -> Option<semver::Version> {
    let version = semver::Version::parse(tag.strip_prefix('v')?).ok()?;
    (version.pre.is_empty() && version.build.is_empty()).then_some(version)
}

/// `YYYY-MM-DDTHH:MM:SSZ` → Unix time. Only this one form, so a date cannot be misread.
fn parse_utc(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let layout_ok = bytes.len() == 20
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !layout_ok {
        return None;
    }
    let number = |from: usize, to: usize| text[from..to].parse::<i64>().ok();
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

// ---------------------------------------------------------------------------------------
// Writing.

fn write_repo(history: &History, repo: &RepoPlan, path: &Path) -> Result<RepoSummary, Error> {
    let mut options = RepositoryInitOptions::new();
    // No template: the user's or the system's hooks and config have no business in here.
    options
        .bare(true)
        .initial_head("main")
        .external_template(false);
    let git = Repository::init_opts(path, &options)?;

    let mut parent: Option<git2::Commit<'_>> = None;
    let mut main = None;
    let mut tags = Vec::new();
    for (index, commit) in repo.commits.iter().enumerate() {
        let seconds = history.start + COMMIT_INTERVAL * i64::try_from(index)?;
        let signature = Signature::new(&history.name, &history.email, &Time::new(seconds, 0))?;
        let tree = git.find_tree(write_tree(&git, &commit.files)?)?;
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let id = git.commit(
            None,
            &signature,
            &signature,
            &commit.message,
            &tree,
            &parents,
        )?;
        let object = git.find_commit(id)?;
        if let Some(tag) = &commit.tag {
            // Annotated, as `git tag -a` and release tooling make them: resolving a version
            // must peel the tag object to its commit.
            git.tag(
                tag,
                object.as_object(),
                &signature,
                &format!("release {tag}\n"),
                false,
            )?;
            tags.push(tag.clone());
        }
        if commit.branch == Branch::Main {
            main = Some(id);
        }
        parent = Some(object);
    }
    let (Some(main), Some(develop)) = (main, parent.map(|commit| commit.id())) else {
        return Err("no main commit".into());
    };
    git.reference("refs/heads/main", main, true, "xtask ecosystem")?;
    git.reference("refs/heads/develop", develop, true, "xtask ecosystem")?;
    git.set_head("refs/heads/main")?;
    Ok(RepoSummary {
        name: repo.name.clone(),
        branches: vec![("main".to_string(), main), ("develop".to_string(), develop)],
        tags,
        develop,
    })
}

/// A directory of the tree being built: files and sub-directories by name.
#[derive(Default)]
struct DirNode<'a> {
    files: BTreeMap<&'a str, &'a FileEntry>,
    dirs: BTreeMap<&'a str, DirNode<'a>>,
}

/// Writes `files` as a tree, from memory: only contents and the executable bit reach git.
fn write_tree(git: &Repository, files: &Files) -> Result<Oid, Error> {
    let mut root = DirNode::default();
    for (path, entry) in files {
        let (dirs, name) = match path.rsplit_once('/') {
            Some((dirs, name)) => (Some(dirs), name),
            None => (None, path.as_str()),
        };
        let mut dir = &mut root;
        for part in dirs.into_iter().flat_map(|dirs| dirs.split('/')) {
            dir = dir.dirs.entry(part).or_default();
        }
        dir.files.insert(name, entry);
    }
    Ok(write_dir(git, &root)?)
}

fn write_dir(git: &Repository, dir: &DirNode<'_>) -> Result<Oid, git2::Error> {
    let mut builder = git.treebuilder(None)?;
    for (name, entry) in &dir.files {
        let mode = if entry.executable { 0o100755 } else { 0o100644 };
        builder.insert(name, git.blob(&entry.bytes)?, mode)?;
    }
    for (name, sub) in &dir.dirs {
        builder.insert(name, write_dir(git, sub)?, 0o040000)?;
    }
    builder.write()
}

/// The temporary directory is created private (0700); the ecosystem is not a secret.
#[cfg(unix)]
fn make_world_readable(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot set the permissions of {}: {e}", dir.display()).into())
}

#[cfg(not(unix))]
fn make_world_readable(_dir: &Path) -> Result<(), Error> {
    Ok(())
}

/// Puts the directory `new` at `dest`. Afterwards `new` holds the previous `dest`, if any,
/// for the caller to delete.
fn replace_dir(new: &Path, dest: &Path) -> Result<(), Error> {
    let fail = |e: io::Error| -> Error {
        format!("cannot move {} to {}: {e}", new.display(), dest.display()).into()
    };
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return fs::rename(new, dest).map_err(fail)
        }
        Err(e) => return Err(fail(e)),
        Ok(_) => {}
    }
    #[cfg(target_os = "linux")]
    if exchange(new, dest).is_ok() {
        return Ok(());
    }
    // No atomic exchange here (another OS, or a filesystem without it): move the old
    // ecosystem aside first. `dest` is then missing for a moment, but never half-written.
    let mut aside = new.as_os_str().to_owned();
    aside.push(".old");
    let aside = PathBuf::from(aside);
    fs::rename(dest, &aside).map_err(fail)?;
    if let Err(e) = fs::rename(new, dest) {
        // Put the old ecosystem back rather than leave none.
        let _ = fs::rename(&aside, dest);
        return Err(fail(e));
    }
    fs::rename(&aside, new).map_err(fail)
}

/// Swaps two paths atomically: renameat2(2) with RENAME_EXCHANGE.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated strings that outlive the call; renameat2 only reads
    // them, and AT_FDCWD resolves them as rename(2) would.
    let status = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf()
    }

    /// Every ref of every repository under `dir` (and each HEAD's target), by repository.
    fn refs(dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut all = BTreeMap::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let git = Repository::open_bare(&path).unwrap();
            let mut refs = BTreeMap::new();
            for reference in git.references().unwrap() {
                let reference = reference.unwrap();
                let target = reference.target().map(|id| id.to_string());
                refs.insert(reference.name().unwrap().to_string(), target.unwrap());
            }
            let head = git.find_reference("HEAD").unwrap();
            refs.insert(
                "HEAD".into(),
                head.symbolic_target().unwrap().unwrap().to_string(),
            );
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            all.insert(name, refs);
        }
        all
    }

    #[test]
    fn generating_twice_gives_the_same_shas() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_ecosystem(&root(), &a.path().join("ecosystem")).unwrap();
        write_ecosystem(&root(), &b.path().join("ecosystem")).unwrap();
        let refs_a = refs(&a.path().join("ecosystem"));
        assert_eq!(refs_a.len(), load_history(&root()).unwrap().repos.len());
        assert_eq!(refs_a, refs(&b.path().join("ecosystem")));
    }

    #[test]
    fn repositories_carry_the_history_s_branches_tags_and_dates() {
        let history = load_history(&root()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let summaries = write_ecosystem(&root(), out.path()).unwrap();
        assert_eq!(summaries.len(), history.repos.len());
        for repo in &history.repos {
            let git = Repository::open_bare(out.path().join(format!("{}.git", repo.name))).unwrap();
            let head = git.find_reference("HEAD").unwrap();
            assert_eq!(head.symbolic_target().unwrap(), Some("refs/heads/main"));

            // First-parent chain of develop, oldest first: one commit per history entry.
            let develop = git.revparse_single("refs/heads/develop").unwrap().id();
            let mut walk = git.revwalk().unwrap();
            walk.push(develop).unwrap();
            let mut chain: Vec<Oid> = walk.map(|id| id.unwrap()).collect();
            chain.reverse();
            assert_eq!(chain.len(), repo.commits.len(), "{}", repo.name);

            let mains = repo.commits.iter().filter(|c| c.branch == Branch::Main);
            let main = git.revparse_single("refs/heads/main").unwrap().id();
            assert_eq!(main, chain[mains.count() - 1], "{}", repo.name);

            for (index, (commit, id)) in repo.commits.iter().zip(&chain).enumerate() {
                let object = git.find_commit(*id).unwrap();
                assert_eq!(object.message().unwrap(), commit.message);
                assert_eq!(object.time().seconds(), history.start + 3600 * index as i64);
                assert_eq!(object.time().offset_minutes(), 0);
                if let Some(tag) = &commit.tag {
                    let reference = git.find_reference(&format!("refs/tags/{tag}")).unwrap();
                    assert!(reference.peel_to_tag().is_ok(), "{tag} is annotated");
                    assert_eq!(reference.peel_to_commit().unwrap().id(), *id, "{tag}");
                }
            }
            let tags = git.tag_names(None).unwrap();
            assert_eq!(
                tags.len(),
                repo.commits.iter().filter(|c| c.tag.is_some()).count()
            );
        }
    }

    #[test]
    fn regenerating_replaces_the_previous_ecosystem_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ecosystem");
        write_ecosystem(&root(), &out).unwrap();
        let first = refs(&out);
        fs::write(out.join("stale"), "from an older run").unwrap();
        write_ecosystem(&root(), &out).unwrap();
        assert!(!out.join("stale").exists());
        assert_eq!(refs(&out), first);
        // No temporary directory is left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ecosystem"]);
    }

    #[test]
    fn utc_times() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        assert_eq!(parse_utc("2000-02-29T12:30:01Z"), Some(951_827_401));
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00+01:00",
            "+026-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    /// A workspace with one snapshot (`one/`: a.txt, b.txt) and one overlay (`one/old`).
    fn fixture(history: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let eco = root.path().join("ecosystem");
        fs::create_dir_all(eco.join("one")).unwrap();
        fs::create_dir_all(eco.join("overlays/one/old")).unwrap();
        fs::write(eco.join("one/a.txt"), "new a\n").unwrap();
        fs::write(eco.join("one/b.txt"), "b\n").unwrap();
        fs::write(eco.join("overlays/one/old/a.txt"), "old a\n").unwrap();
        fs::write(eco.join("history.yaml"), history).unwrap();
        root
    }

    const HEADER: &str = "identity: { name: n, email: e@x }\nstart: 2026-01-01T00:00:00Z\n";

    fn error_of(repos: &str) -> String {
        let root = fixture(&format!("{HEADER}repos:\n{repos}"));
        match load_history(root.path()) {
            Ok(_) => panic!("accepted:\n{repos}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_fixture_loads() {
        let root = fixture(&format!(
            "{HEADER}repos:\n  one:\n    commits:\n      - {{ branch: main, message: a, tag: v0.1.0, overlays: [one/old], remove: [b.txt] }}\n      - {{ branch: develop, message: b }}\n"
        ));
        let history = load_history(root.path()).unwrap();
        let commits = &history.repos[0].commits;
        assert_eq!(commits[0].files.len(), 1);
        assert_eq!(commits[0].files["a.txt"].bytes, b"old a\n");
        assert_eq!(commits[1].files["a.txt"].bytes, b"new a\n");
        assert_eq!(commits[1].message, "b\n");
    }

    #[test]
    fn bad_histories_name_the_file_the_place_and_the_problem() {
        let cases = [
            ("  one:\n    commits:\n      - { branch: main, message: a, colour: red }\n", "unknown field"),
            ("  one:\n    commits:\n      - { branch: trunk, message: a }\n", "trunk"),
            (
                "  one:\n    commits:\n      - { branch: main, message: a }\n      - { branch: develop, message: b, tag: v1.0.0 }\n",
                "repos.one.commits[1] (\"b\"): tag `v1.0.0` is on a develop commit",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a }\n      - { branch: develop, message: b }\n      - { branch: main, message: c }\n",
                "repos.one.commits[2] (\"c\"): a main commit after a develop commit",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a, tag: v1.0 }\n      - { branch: main, message: b }\n",
                "tag `v1.0` is not vMAJOR.MINOR.PATCH",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a, tag: v1.0.0 }\n      - { branch: main, message: b, tag: v0.9.0 }\n",
                "tag `v0.9.0` does not come after the earlier `v1.0.0`",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a, overlays: [one/missing] }\n      - { branch: main, message: b }\n",
                "overlay `one/missing`: ecosystem/overlays/one/missing/ is not a directory",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a, overlays: [../one] }\n      - { branch: main, message: b }\n",
                "overlay `../one` must be a relative path",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a, remove: [c.txt] }\n      - { branch: main, message: b }\n",
                "remove `c.txt`: no such file",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a, remove: [b.txt] }\n",
                "the last commit is the snapshot ecosystem/one/ itself",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a }\n  two:\n    commits:\n      - { branch: main, message: a }\n",
                "repos.two: the snapshot ecosystem/two/: ecosystem/two/ is not a directory",
            ),
            ("  uno:\n    commits:\n      - { branch: main, message: a }\n", "ecosystem/one/ is not listed"),
            (
                "  one:\n    commits: []\n",
                "repos.one.commits: no commit listed",
            ),
            (
                "  one:\n    commits:\n      - { branch: main, message: a }\n  one:\n    commits:\n      - { branch: main, message: b }\n",
                "line 7 column 3: duplicate mapping key: one",
            ),
        ];
        for (repos, expected) in cases {
            let error = error_of(repos);
            assert!(error.starts_with(HISTORY), "{error}");
            assert!(
                error.contains(expected),
                "expected `{expected}` in:\n{error}"
            );
        }
    }

    // --- The graph's environments against the generated repositories -------------------

    #[derive(Deserialize)]
    struct Environment {
        mode: String,
        sources: BTreeMap<String, Source>,
    }

    #[derive(Deserialize)]
    struct Source {
        repo: String,
        #[serde(rename = "ref")]
        reference: Option<String>,
        version: Option<String>,
        dir: Option<String>,
    }

    #[derive(Deserialize)]
    struct Compatibility {
        compatibility: BTreeMap<String, BTreeMap<String, String>>,
    }

    /// The version of `commit` as branch mode derives it, like `git describe`: the nearest
    /// vX.Y.Z tag N commits back gives X.Y.(Z+1)-dev.N, or exactly X.Y.Z when N is 0.
    fn describe(git: &Repository, commit: Oid) -> semver::Version {
        let mut tagged = BTreeMap::new();
        for name in git.tag_names(Some("v*")).unwrap().iter() {
            let name = name.unwrap().unwrap();
            let reference = git.find_reference(&format!("refs/tags/{name}")).unwrap();
            let id = reference.peel_to_commit().unwrap().id();
            tagged.insert(id, parse_tag(name).unwrap());
        }
        let mut walk = git.revwalk().unwrap();
        walk.push(commit).unwrap();
        walk.simplify_first_parent().unwrap();
        for (distance, id) in walk.enumerate() {
            if let Some(version) = tagged.get(&id.unwrap()) {
                let mut version = version.clone();
                if distance > 0 {
                    version.patch += 1;
                    version.pre = semver::Prerelease::new(&format!("dev.{distance}")).unwrap();
                }
                return version;
            }
        }
        panic!("{commit} has no version tag behind it");
    }

    /// `">=0.5.0 <1.0.0"`: every comparator must hold, by semver precedence (so pre-releases
    /// such as 0.7.1-dev.2 are ordinary versions between their neighbours).
    fn satisfies(version: &semver::Version, range: &str) -> bool {
        range.split_whitespace().all(|comparator| {
            let (op, bound) = [">=", "<=", ">", "<", "="]
                .iter()
                .find_map(|op| comparator.strip_prefix(op).map(|rest| (*op, rest)))
                .unwrap_or(("=", comparator));
            let bound = semver::Version::parse(bound).unwrap();
            match op {
                ">=" => *version >= bound,
                "<=" => *version <= bound,
                ">" => *version > bound,
                "<" => *version < bound,
                _ => *version == bound,
            }
        })
    }

    #[test]
    fn every_environment_resolves_and_satisfies_the_compatibility_matrix() {
        let out = tempfile::tempdir().unwrap();
        write_ecosystem(&root(), out.path()).unwrap();
        let compatibility: Compatibility = serde_saphyr::from_str(
            &fs::read_to_string(root().join("graph/compatibility.yaml")).unwrap(),
        )
        .unwrap();

        let mut problems = Vec::new();
        for env in ["scratch", "beta", "staging", "prod"] {
            let path = root().join(format!("graph/environments/{env}.yaml"));
            let environment: Environment =
                serde_saphyr::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            let mut versions = BTreeMap::new();
            for (name, source) in &environment.sources {
                assert_eq!(source.repo, format!("../../target/ecosystem/{name}.git"));
                let git = Repository::open_bare(out.path().join(format!("{name}.git"))).unwrap();
                let (commit, version) = match environment.mode.as_str() {
                    "branch" => {
                        let reference = source.reference.as_deref().unwrap();
                        let commit = git.revparse_single(reference).unwrap().peel_to_commit();
                        let commit = commit.unwrap();
                        let version = describe(&git, commit.id());
                        (commit, version)
                    }
                    _ => {
                        let version = source.version.as_deref().unwrap();
                        let tag = format!("refs/tags/v{version}");
                        let commit = git.find_reference(&tag).unwrap().peel_to_commit();
                        (commit.unwrap(), semver::Version::parse(version).unwrap())
                    }
                };
                if let Some(dir) = &source.dir {
                    assert!(
                        commit.tree().unwrap().get_path(Path::new(dir)).is_ok(),
                        "{dir}"
                    );
                }
                println!("{env:<8} {name:<13} {version}");
                versions.insert(name.clone(), version);
            }
            for (component, requirements) in &compatibility.compatibility {
                for (upstream, range) in requirements {
                    let version = &versions[upstream];
                    if !versions.contains_key(component) || !satisfies(version, range) {
                        problems.push(format!(
                            "{env}: {component} needs {upstream} {range}, has {version}"
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
