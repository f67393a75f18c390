//! Where a repository lives: opened in place (paths, `file://`) or fetched into a bare
//! mirror under the cache dir (every other URL).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use git2::{Repository, RepositoryOpenFlags};

use crate::GitError;

/// The branches and tags of a remote, mirrored under the same names, so a mirror
/// resolves refs exactly like the repository it mirrors. `+`: a force-pushed branch
/// follows the remote.
const MIRROR_REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Location {
    Local(PathBuf),
    Remote(String),
}

/// Classifies a location as written. `file://` is local unless `fetch_file_urls`.
pub(crate) fn classify(location: &str, fetch_file_urls: bool) -> Location {
    if let Some(rest) = location.strip_prefix("file://") {
        if fetch_file_urls {
            return Location::Remote(location.to_string());
        }
        // `file://localhost/path` and `file:///path` both name `/path`.
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        return Location::Local(PathBuf::from(percent_decode(path)));
    }
    if location.contains("://") || is_scp_like(location) {
        return Location::Remote(location.to_string());
    }
    Location::Local(PathBuf::from(location))
}

/// `user@host:path` (scp syntax for ssh), as opposed to a path that contains a colon:
/// a colon before any slash, after a non-empty host.
fn is_scp_like(location: &str) -> bool {
    match (location.find(':'), location.find('/')) {
        (Some(colon), slash) => colon > 0 && slash.is_none_or(|s| colon < s),
        _ => false,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The URL without the `user:password@` of its authority, for messages: credentials
/// must never reach a terminal or a log.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..authority_start], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Removes the URL's credentials from a message libgit2 wrote about it.
pub(crate) fn redact_message(message: &str, url: &str) -> String {
    let redacted = redact(url);
    let mut message = message.replace(url, &redacted);
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let userinfo = &rest[..at];
            if !userinfo.is_empty() {
                message = message.replace(userinfo, "***");
            }
        }
    }
    message
}

/// The path to open for `location` and its name for messages; fetches a remote first.
pub(crate) fn prepare(
    location: &str,
    cache_dir: &Path,
    fetch_file_urls: bool,
    fetch: bool,
) -> Result<(PathBuf, String), GitError> {
    match classify(location, fetch_file_urls) {
        Location::Local(path) => Ok((path, location.to_string())),
        // Offline: the mirror as it is (opening it fails when there is none).
        Location::Remote(url) if !fetch => Ok((mirror_path(&url, cache_dir), redact(&url))),
        Location::Remote(url) => {
            let path = mirror(&url, cache_dir)?;
            Ok((path, redact(&url)))
        }
    }
}

/// Opens exactly the repository at `path` (bare or not), never a parent directory's:
/// a path that is not a repository is an error even inside some other checkout.
pub(crate) fn open_repository(path: &Path, display: &str) -> Result<Repository, GitError> {
    Repository::open_ext(
        path,
        RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&std::ffi::OsStr>(),
    )
    .map_err(|source| GitError::NotARepository {
        location: display.to_string(),
        source,
    })
}

/// Where the mirror of `url` is kept.
fn mirror_path(url: &str, cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("{}.git", blake3::hash(url.as_bytes()).to_hex()))
}

/// Brings the mirror of `url` up to date and returns its path.
///
/// The first fetch goes into a temp dir next to the mirror, renamed into place only when
/// it succeeded, so a failed or interrupted first fetch leaves nothing behind. Later
/// fetches update the mirror in place; libgit2 writes objects before it moves refs, so a
/// failed update leaves the previous refs, each pointing at complete objects.
fn mirror(url: &str, cache_dir: &Path) -> Result<PathBuf, GitError> {
    let path = mirror_path(url, cache_dir);
    if path.exists() {
        let repo = open_repository(&path, &redact(url))?;
        fetch(&repo, url)?;
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| GitError::io(cache_dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(cache_dir)
        .map_err(|e| GitError::io(cache_dir, e))?;
    let repo = Repository::init_bare(tmp.path()).map_err(|e| GitError::git(&redact(url), e))?;
    fetch(&repo, url)?;
    drop(repo);
    // Not `keep()`: on failure the temp dir must still be removed.
    match std::fs::rename(tmp.path(), &path) {
        Ok(()) => {
            // Renamed away: there is nothing left for the guard to delete.
            let _ = tmp.keep();
            Ok(path)
        }
        // Another process finished the same first fetch meanwhile: use its mirror (ours
        // is deleted by the guard).
        Err(_) if path.is_dir() => Ok(path),
        Err(e) => Err(GitError::io(&path, e)),
    }
}

/// `git` (the command) in `dir`, for what crosses a network: fetching a mirror and
/// pushing tags. libgit2 is built without TLS and SSH: with them, its start-up loaded
/// OpenSSL's whole CA bundle (40 ms of CPU here) in every build that pins anything,
/// fetching or not. git also finds credentials, proxies, `insteadOf` and ssh settings
/// exactly as the user's own git does (cargo's `net.git-fetch-with-cli`, for the same
/// reasons). It never prompts: a missing credential is an error, not a hang.
pub(crate) fn git_command(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    c
}

/// Runs `command` (from [`git_command`]), for what it printed and how it ended.
pub(crate) fn run_git(mut command: Command, what: &str) -> Result<Output, String> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("the `git` command was not found: {what} with git; install it")
        }
        _ => format!("could not run git: {e}"),
    })
}

/// Why a git command failed: the end of what it said, credentials in `url` removed.
pub(crate) fn git_failure(out: &Output, url: &str) -> String {
    let said = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = match lines.len() {
        0 => format!("git exited with {}", out.status),
        n => lines[n.saturating_sub(3)..].join("; "),
    };
    redact_message(&message, url)
}

fn fetch(repo: &Repository, url: &str) -> Result<(), GitError> {
    let mut command = git_command(repo.path());
    // Branches deleted upstream disappear from the mirror, as they would in a clone;
    // tags come with the refspecs, all of them, not only those on fetched branches.
    command
        .args([
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--no-write-fetch-head",
        ])
        .arg("--")
        .arg(url)
        .args(MIRROR_REFSPECS);
    let failed = |message| GitError::FetchFailed {
        url: redact(url),
        message,
    };
    let out = run_git(command, "remote repositories are fetched").map_err(failed)?;
    match out.status.success() {
        true => Ok(()),
        false => Err(failed(git_failure(&out, url))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_locations() {
        assert_eq!(
            classify("/srv/repo.git", false),
            Location::Local("/srv/repo.git".into())
        );
        assert_eq!(
            classify("file:///srv/my%20repo", false),
            Location::Local("/srv/my repo".into())
        );
        assert_eq!(
            classify("file://localhost/srv/r", false),
            Location::Local("/srv/r".into())
        );
        assert_eq!(
            classify("file:///srv/r", true),
            Location::Remote("file:///srv/r".into())
        );
        assert_eq!(
            classify("https://example.com/r.git", false),
            Location::Remote("https://example.com/r.git".into())
        );
        assert_eq!(
            classify("git@example.com:org/r.git", false),
            Location::Remote("git@example.com:org/r.git".into())
        );
        assert_eq!(
            classify("relative/dir:with/colon", false),
            Location::Local("relative/dir:with/colon".into())
        );
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("https://user:s3cret@example.com/r.git"),
            "https://example.com/r.git"
        );
        assert_eq!(
            redact("https://tok@en@example.com/a@b"),
            "https://example.com/a@b"
        );
        assert_eq!(
            redact("https://example.com/r.git"),
            "https://example.com/r.git"
        );
        assert_eq!(redact("/local/path"), "/local/path");
        let message = redact_message(
            "failed to reach https://user:s3cret@example.com/r.git (user:s3cret)",
            "https://user:s3cret@example.com/r.git",
        );
        assert!(!message.contains("s3cret"), "{message}");
    }
}
