//! [IO] `cascade lock diff`: what changes between two lockfiles, node by node. It is the
//! deploy plan from one build to another, and `promote` (and a later `deploy`) shows it
//! before acting.
//!
//! The comparison ([`diff_lockfiles`]) is pure: it looks only at what the two lockfiles
//! record of each node (the pinned source, the output, the image, the smoke tests). The
//! one question that needs the world, how many commits apart two commits of the same
//! repository are, is asked through a callback, so a repository that cannot be opened
//! only leaves the count out. [`lock_diff`] is the IO around it: reading the lockfiles
//! and opening local repositories relative to `<project>/graph/environments`.

use crate::short_sha;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use cascade_git::{Distance, Git};
use cascade_lock::{LockNode, Lockfile};

use crate::lockfiles::read_lockfile;
use crate::pin::locate;
use crate::Error;

/// The difference between two lockfiles (`--json` of `cascade lock diff`, and the deploy
/// plan of `cascade promote`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LockDiff {
    /// The older lockfile as it was named (or relative to the project); null when there
    /// is none (an environment never built).
    pub from: Option<String>,
    /// The newer lockfile.
    pub to: String,
    /// In the build order of `to` (inputs first, ties by name); removed nodes where
    /// `from`'s order puts them.
    pub nodes: Vec<NodeDiff>,
    pub unchanged: usize,
    pub changed: usize,
    pub added: usize,
    pub removed: usize,
    /// The key formats of the two lockfiles (`[from, to]`) when they differ: every key
    /// differs then, even where nothing else does, so a deploy compares by output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_formats: Option<[u64; 2]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Unchanged,
    Changed,
    Added,
    Removed,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Unchanged => "unchanged",
            Change::Changed => "changed",
            Change::Added => "added",
            Change::Removed => "removed",
        })
    }
}

/// One component in either lockfile.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeDiff {
    pub name: String,
    pub change: Change,
    /// The fields that differ, in the order the message names them: `repo`, `dir`,
    /// `ref`, `version`, `commit`, `output`, `image`, `tests`. Empty unless `changed`:
    /// `repo`, `dir` and `ref` alone do not make a change (the same commit and output
    /// reached another way deploy the same thing), they are named when something else
    /// changed.
    pub fields: Vec<&'static str>,
    /// Null when `added`.
    pub before: Option<NodeState>,
    /// Null when `removed`.
    pub after: Option<NodeState>,
    /// When the commit changed within one repository and both commits are in it:
    /// commits reachable from the new one and not the old (`ahead`), and the reverse.
    pub commits_apart: Option<CommitsApart>,
    /// The text line: the changed fields (`version 0.6.1-dev.4 → 0.6.1-dev.5, commit
    /// a1b2c3d → 9f8e7d6 (1 commit), …`), or the node's state for the other changes.
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CommitsApart {
    pub ahead: usize,
    pub behind: usize,
}

/// What a lockfile records of one node, as far as a deploy is concerned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeState {
    pub repo: String,
    /// The ref as written (branch mode); null in version mode.
    #[serde(rename = "ref")]
    pub r#ref: Option<String>,
    /// Full SHA.
    pub commit: String,
    pub dir: Option<String>,
    pub version: String,
    pub output: String,
    pub image: Option<ImageState>,
    /// Smoke test → `passed` | `skipped`.
    pub tests: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageState {
    #[serde(rename = "ref")]
    pub reference: String,
    pub digest: String,
}

impl NodeState {
    pub fn of(node: &LockNode) -> NodeState {
        NodeState {
            repo: node.source.repo.clone(),
            r#ref: node.source.r#ref.clone(),
            commit: node.source.commit.clone(),
            dir: node.source.dir.clone(),
            version: node.source.version.clone(),
            output: node.output.to_string(),
            image: node.image.as_ref().map(|i| ImageState {
                reference: i.reference.clone(),
                digest: i.digest.clone(),
            }),
            tests: node
                .tests
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().to_string()))
                .collect(),
        }
    }

    /// `develop 1a2b3c4  0.6.1-dev.5` (branch mode) or `1a2b3c4  0.6.1` (version mode, or
    /// a ref that is the commit).
    pub fn summary(&self) -> String {
        match &self.r#ref {
            // A ref that is the commit itself (what `promote` writes) is named once.
            Some(r) if *r != self.commit => format!(
                "{} {}  {}",
                short_ref(r),
                short_sha(&self.commit),
                self.version
            ),
            _ => format!("{}  {}", short_sha(&self.commit), self.version),
        }
    }
}

/// How many commits apart two commits of one repository (as written in the lockfiles)
/// are; `None` when that cannot be told.
pub type DistanceFn<'a> = dyn Fn(&str, &str, &str) -> Option<Distance> + 'a;

/// Compares two lockfiles node by node. `from` is `None` when there is no older one
/// (every node is `added`). `distance(repo, old_commit, new_commit)` is asked only for a
/// node whose commit changed within the same repository.
pub fn diff_lockfiles(
    from: Option<(&str, &Lockfile)>,
    to: (&str, &Lockfile),
    distance: &DistanceFn<'_>,
) -> LockDiff {
    let empty = BTreeMap::new();
    let old = from.map_or(&empty, |(_, l)| &l.nodes);
    let new = &to.1.nodes;
    let mut nodes = Vec::new();
    for name in order(old, new) {
        let before = old.get(&name).map(NodeState::of);
        let after = new.get(&name).map(NodeState::of);
        nodes.push(compare(name, before, after, distance));
    }
    let count = |c: Change| nodes.iter().filter(|n| n.change == c).count();
    LockDiff {
        from: from.map(|(p, _)| p.to_string()),
        to: to.0.to_string(),
        unchanged: count(Change::Unchanged),
        changed: count(Change::Changed),
        added: count(Change::Added),
        removed: count(Change::Removed),
        key_formats: from
            .map(|(_, l)| [l.key_format, to.1.key_format])
            .filter(|[a, b]| a != b),
        nodes,
    }
}

/// Every name of both lockfiles in build order: inputs and runner images first (the
/// edges of `new`, and `old`'s for a node only `old` has), the smallest ready name
/// first, as the graph orders components. A cycle (a hand-edited lockfile) leaves the
/// rest in name order.
fn order(old: &BTreeMap<String, LockNode>, new: &BTreeMap<String, LockNode>) -> Vec<String> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    // A node that runs in another node's image records that image as its runner: the
    // lockfile's one trace of the edge (it is not an input).
    let runner_of: BTreeMap<cascade_core::Digest, &String> = names
        .iter()
        .filter_map(|n| {
            let image = new.get(*n).or_else(|| old.get(*n))?.image.as_ref()?;
            let runner = cascade_core::RunnerIdentity::Container {
                image: image.digest.clone(),
            };
            Some((runner.digest(), *n))
        })
        .collect();
    let deps: BTreeMap<String, BTreeSet<String>> = names
        .iter()
        .map(|n| {
            let node = new.get(*n).or_else(|| old.get(*n));
            let inputs = node
                .map(|node| {
                    node.inputs
                        .keys()
                        .chain(runner_of.get(&node.runner).copied())
                        .filter(|i| names.contains(i) && *i != *n)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            ((*n).clone(), inputs)
        })
        .collect();
    let (mut order, left) = crate::lockfiles::build_order(&deps);
    order.extend(left);
    order
}

fn compare(
    name: String,
    before: Option<NodeState>,
    after: Option<NodeState>,
    distance: &DistanceFn<'_>,
) -> NodeDiff {
    let (b, a) = match (&before, &after) {
        (Some(b), Some(a)) => (b, a),
        (None, Some(a)) => {
            let message = a.summary();
            return NodeDiff {
                name,
                change: Change::Added,
                fields: Vec::new(),
                before,
                after,
                commits_apart: None,
                message,
            };
        }
        (Some(b), None) => {
            let message = b.summary();
            return NodeDiff {
                name,
                change: Change::Removed,
                fields: Vec::new(),
                before,
                after,
                commits_apart: None,
                message,
            };
        }
        (None, None) => unreachable!("a name comes from one of the lockfiles"),
    };
    let commits_apart = (b.commit != a.commit && b.repo == a.repo)
        .then(|| distance(&a.repo, &b.commit, &a.commit))
        .flatten()
        .map(|d| CommitsApart {
            ahead: d.ahead,
            behind: d.behind,
        });
    let mut fields = Vec::new();
    let mut parts = Vec::new();
    if b.repo != a.repo {
        fields.push("repo");
        parts.push(format!("repo {} → {}", b.repo, a.repo));
    }
    if b.dir != a.dir {
        fields.push("dir");
        let d = |d: &Option<String>| d.clone().unwrap_or_else(|| "(root)".into());
        parts.push(format!("dir {} → {}", d(&b.dir), d(&a.dir)));
    }
    if b.r#ref != a.r#ref {
        fields.push("ref");
        let r = |r: &Option<String>| r.as_deref().map_or("(none)".into(), short_ref);
        parts.push(format!("ref {} → {}", r(&b.r#ref), r(&a.r#ref)));
    }
    if b.version != a.version {
        fields.push("version");
        parts.push(format!("version {} → {}", b.version, a.version));
    }
    if b.commit != a.commit {
        fields.push("commit");
        let mut s = format!("commit {} → {}", short_sha(&b.commit), short_sha(&a.commit));
        if let Some(d) = commits_apart {
            s.push_str(&apart(d));
        }
        parts.push(s);
    }
    if b.output != a.output {
        fields.push("output");
        parts.push(format!(
            "output {} → {}",
            short(&b.output),
            short(&a.output)
        ));
    }
    if b.image != a.image {
        fields.push("image");
        parts.push(image_change(b.image.as_ref(), a.image.as_ref()));
    }
    if b.tests != a.tests {
        fields.push("tests");
        parts.extend(test_changes(&b.tests, &a.tests));
    }
    // Where the code came from (`repo`, `dir`, `ref`) is context: the same commit with
    // the same output reached another way deploys the same thing.
    let context = ["repo", "dir", "ref"];
    let (change, message) = if fields.iter().all(|f| context.contains(f)) {
        fields.clear();
        (Change::Unchanged, a.summary())
    } else {
        (Change::Changed, parts.join(", "))
    };
    NodeDiff {
        name,
        change,
        fields,
        before,
        after,
        commits_apart,
        message,
    }
}

/// ` (1 commit)`, ` (2 commits back)`, ` (3 ahead, 1 behind)`, or nothing.
fn apart(d: CommitsApart) -> String {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    match (d.ahead, d.behind) {
        (0, 0) => String::new(),
        (a, 0) => format!(" ({a} commit{})", plural(a)),
        (0, b) => format!(" ({b} commit{} back)", plural(b)),
        (a, b) => format!(" ({a} ahead, {b} behind)"),
    }
}

fn image_change(b: Option<&ImageState>, a: Option<&ImageState>) -> String {
    match (b, a) {
        (Some(b), Some(a)) if b.reference == a.reference => format!(
            "image {} {} → {}",
            a.reference,
            short(&b.digest),
            short(&a.digest)
        ),
        (Some(b), Some(a)) if b.digest == a.digest => {
            format!("image {} → {} (same digest)", b.reference, a.reference)
        }
        (Some(b), Some(a)) => format!(
            "image {} → {} ({} → {})",
            b.reference,
            a.reference,
            short(&b.digest),
            short(&a.digest)
        ),
        (None, Some(a)) => format!("image added {} ({})", a.reference, short(&a.digest)),
        (Some(b), None) => format!("image removed {}", b.reference),
        (None, None) => String::new(),
    }
}

fn test_changes(b: &BTreeMap<String, String>, a: &BTreeMap<String, String>) -> Vec<String> {
    let names: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    names
        .into_iter()
        .filter_map(|n| match (b.get(n), a.get(n)) {
            (Some(x), Some(y)) if x == y => None,
            (Some(x), Some(y)) => Some(format!("test {n} {x} → {y}")),
            (None, Some(y)) => Some(format!("test {n} added ({y})")),
            (Some(_), None) => Some(format!("test {n} removed")),
            (None, None) => None,
        })
        .collect()
}

/// A ref that is a full commit SHA (what `promote` writes) is shortened like one.
pub(crate) fn short_ref(r: &str) -> String {
    if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
        short_sha(r).to_string()
    } else {
        r.to_string()
    }
}

fn short(d: &str) -> String {
    crate::short_digest(&d)
}

/// Commit distances in the repositories as a project's environment files name them:
/// relative paths start at `<project>/graph/environments`. Only local repositories (paths
/// and `file://` URLs) are opened, unless `remote` is set: `promote` has fetched them
/// already, and `lock diff`'s `git` is offline (it reads the mirrors the store has).
pub(crate) fn distances<'a>(git: &'a Git, env_dir: &'a Path, remote: bool) -> Box<DistanceFn<'a>> {
    Box::new(move |repo: &str, old: &str, new: &str| {
        let local = repo.starts_with("file://") || !repo.contains("://");
        if !local && !remote {
            return None;
        }
        git.distance(&locate(repo, env_dir), old, new)
    })
}

/// What `cascade lock diff` compares.
#[derive(Clone, Debug)]
pub enum DiffFrom {
    /// A lockfile, as named on the command line.
    File(PathBuf),
    /// The newest lockfile of this environment (`--env`).
    Newest(String),
}

pub struct DiffOptions {
    /// The project whose `graph/environments` relative repository paths start from.
    pub project: PathBuf,
    /// The store whose mirrors of remote sources count commits apart (only read).
    pub store: PathBuf,
    pub from: DiffFrom,
    pub to: PathBuf,
}

/// `cascade lock diff`: reads both lockfiles (a missing or malformed one is an error,
/// exit 2) and compares them.
pub fn lock_diff(opts: &DiffOptions) -> Result<LockDiff, Error> {
    let (from_path, from_shown) = match &opts.from {
        DiffFrom::File(p) => (p.clone(), p.display().to_string()),
        DiffFrom::Newest(env) => crate::lockfiles::newest_shown(&opts.project, env)?,
    };
    let to_shown = opts.to.display().to_string();
    let old = read_lockfile(&from_path, &from_shown)?;
    let new = read_lockfile(&opts.to, &to_shown)?;
    let env_dir = crate::Layout::new(&opts.project).environments();
    // Offline: a diff never fetches, so remotes are counted only from the mirrors the
    // store (the one this command was given) has.
    let git = Git::offline(crate::layout::store_git_dir(&opts.store));
    let distance = distances(&git, &env_dir, true);
    Ok(diff_lockfiles(
        Some((&from_shown, &old)),
        (&to_shown, &new),
        &*distance,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's entry in lockfile text (parsed, so the tests do not depend on every
    /// field of the structs).
    fn node(name: &str, commit: char, output: &str, inputs: &[&str], tests: &str) -> String {
        let d = |s: &str| cascade_core::Digest::of(s.as_bytes()).to_string();
        let inputs = if inputs.is_empty() {
            " {}".to_string()
        } else {
            inputs
                .iter()
                .map(|i| format!("\n      {i}: {}", d(i)))
                .collect()
        };
        format!(
            "  {name}:\n    artifacts: {{}}\n    inputs:{inputs}\n    key: {}\n    output: {}\n    recipe: {}\n    runner: {}\n    source:\n      commit: {}\n      ref: develop\n      repo: ../../repos/x\n      tree: {}\n      version: 0.1.0\n{tests}",
            d(output),
            d(output),
            d("recipe"),
            d("runner"),
            commit.to_string().repeat(40),
            "f".repeat(40),
        )
    }

    fn lock(nodes: &[String]) -> Lockfile {
        let text = format!(
            "format: cascade-lock/2\nenvironment: test\ngraph: {}\nnodes:\n{}",
            cascade_core::Digest::of(b"graph"),
            nodes.concat()
        );
        cascade_lock::read("test.yaml", &text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }

    fn no_distance(_: &str, _: &str, _: &str) -> Option<Distance> {
        None
    }

    /// A node that runs in another node's image comes after it, though that image is
    /// not among its inputs: the lockfile's runner digest is the edge.
    #[test]
    fn a_runner_image_comes_before_the_nodes_that_run_in_it() {
        let image = format!("sha256:{}", "ab".repeat(32));
        let runner = cascade_core::RunnerIdentity::Container {
            image: image.clone(),
        }
        .digest();
        let toolchain = node("zz-toolchain", 'a', "t", &[], "").replace(
            "    artifacts: {}\n",
            &format!("    artifacts: {{}}\n    image:\n      digest: {image}\n      ref: x/zz-toolchain:1\n"),
        );
        let app = node("app", 'a', "app", &[], "").replace(
            &format!("runner: {}", cascade_core::Digest::of(b"runner")),
            &format!("runner: {runner}"),
        );
        let l = lock(&[app, toolchain]);
        assert_eq!(order(&BTreeMap::new(), &l.nodes), ["zz-toolchain", "app"]);
    }

    #[test]
    fn every_kind_of_change_in_build_order() {
        let old = lock(&[
            node("app", 'a', "app", &["zeta"], ""),
            node("gone", 'a', "g", &[], ""),
            node("zeta", 'a', "z", &[], ""),
        ]);
        let new = lock(&[
            node(
                "app",
                'b',
                "app2",
                &["zeta"],
                "    tests:\n      smoke: passed\n",
            ),
            node("fresh", 'c', "f", &["app"], ""),
            node("zeta", 'a', "z", &[], ""),
        ]);
        let d = diff_lockfiles(Some(("old", &old)), ("new", &new), &|_, _, _| {
            Some(Distance {
                ahead: 2,
                behind: 0,
            })
        });
        let names: Vec<(&str, Change)> = d
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.change))
            .collect();
        assert_eq!(
            names,
            [
                ("gone", Change::Removed),
                ("zeta", Change::Unchanged),
                ("app", Change::Changed),
                ("fresh", Change::Added),
            ]
        );
        let app = &d.nodes[2];
        assert_eq!(app.fields, ["commit", "output", "tests"]);
        assert!(
            app.message
                .starts_with("commit aaaaaaa → bbbbbbb (2 commits), output blake3:"),
            "{}",
            app.message
        );
        assert!(app.message.ends_with(", test smoke added (passed)"));
        assert_eq!(
            app.commits_apart,
            Some(CommitsApart {
                ahead: 2,
                behind: 0
            })
        );
        assert_eq!((d.unchanged, d.changed, d.added, d.removed), (1, 1, 1, 1));
        assert_eq!(d.nodes[1].message, "develop aaaaaaa  0.1.0");
    }

    #[test]
    fn no_distance_across_repositories_and_none_without_a_baseline() {
        let old = lock(&[node("a", 'a', "x", &[], "")]);
        let mut new = lock(&[node("a", 'b', "x", &[], "")]);
        if let Some(n) = new.nodes.get_mut("a") {
            n.source.repo = "../../repos/y".into();
        }
        let asked = std::cell::Cell::new(false);
        let d = diff_lockfiles(Some(("old", &old)), ("new", &new), &|_, _, _| {
            asked.set(true);
            None
        });
        assert!(!asked.get());
        assert_eq!(d.nodes[0].fields, ["repo", "commit"]);
        assert_eq!(d.nodes[0].commits_apart, None);

        let fresh = diff_lockfiles(None, ("new", &new), &no_distance);
        assert_eq!(fresh.from, None);
        assert_eq!(fresh.added, 1);
    }

    #[test]
    fn another_ref_to_the_same_commit_is_no_change() {
        let old = lock(&[node("a", 'a', "x", &[], "")]);
        let mut new = old.clone();
        if let Some(n) = new.nodes.get_mut("a") {
            n.source.r#ref = Some("a".repeat(40));
        }
        let d = diff_lockfiles(Some(("old", &old)), ("new", &new), &no_distance);
        assert_eq!(d.nodes[0].change, Change::Unchanged);
        assert!(d.nodes[0].fields.is_empty());
        assert_eq!(d.nodes[0].message, "aaaaaaa  0.1.0");
    }

    #[test]
    fn a_cycle_still_lists_every_node() {
        let l = lock(&[
            node("a", 'a', "a", &["b"], ""),
            node("b", 'a', "b", &["a"], ""),
        ]);
        let d = diff_lockfiles(Some(("x", &l)), ("y", &l), &no_distance);
        assert_eq!(d.nodes.len(), 2);
        assert_eq!(d.unchanged, 2);
    }

    #[test]
    fn full_shas_as_refs_are_shortened() {
        assert_eq!(short_ref(&"a".repeat(40)), "aaaaaaa");
        assert_eq!(short_ref("develop"), "develop");
        assert_eq!(short("sha256:0123456789abcdef"), "sha256:0123456789ab…");
    }
}
