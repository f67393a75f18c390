//! [IO] load: read the environment, the compatibility matrix and the recipes into a
//! `SourceDb`, then parse and resolve them (pure, in cascade-manifest).

use std::fs;
use std::path::{Path, PathBuf};

use cascade_manifest::{DeclaredSource, Diagnostics, Graph, ProjectFiles, SourceDb};
use miette::Diagnostic;

use crate::{Error, Layout};

/// A project's manifests, loaded and resolved.
pub struct Project {
    pub root: PathBuf,
    pub db: SourceDb,
    pub files: ProjectFiles,
    pub graph: Graph,
    /// A graph resolved afresh that [`Project::keep_graph`] writes to the cache: where
    /// and under which key (written once the store exists, not while loading).
    pub(crate) uncached: Option<(PathBuf, cascade_core::Digest)>,
}

impl Project {
    /// Keeps a graph that was resolved afresh in the store's cache (a build, once its
    /// store is open: a crash before never leaves a half store behind).
    pub(crate) fn keep_graph(&mut self) {
        if let Some((path, key)) = self.uncached.take() {
            crate::graph_cache::put(&path, key, &self.graph);
        }
    }

    /// The environment file's directory: relative repository paths start here.
    pub fn environment_dir(&self) -> PathBuf {
        environment_dir(&self.root, &self.db, &self.files)
    }
}

fn environment_dir(root: &Path, db: &SourceDb, files: &ProjectFiles) -> PathBuf {
    let p = Path::new(db.path(files.environment));
    root.join(p.parent().unwrap_or(Path::new("")))
}

/// Manifests that did not resolve ([`Error::Unresolved`]): their problems (what it
/// renders as), and what [`crate::pin::with_source_problems`] needs to pin the
/// environment's valid sources anyway.
#[derive(Debug)]
pub struct Unloaded(Box<UnloadedParts>);

#[derive(Debug)]
pub(crate) struct UnloadedParts {
    pub(crate) diagnostics: Diagnostics,
    pub(crate) db: SourceDb,
    pub(crate) root: PathBuf,
    /// Where relative `repo:` paths start.
    pub(crate) environment_dir: PathBuf,
    pub(crate) sources: Vec<DeclaredSource>,
}

impl Unloaded {
    pub(crate) fn into_parts(self) -> UnloadedParts {
        *self.0
    }

    pub(crate) fn from_parts(parts: UnloadedParts) -> Self {
        Unloaded(Box::new(parts))
    }
}

impl std::fmt::Display for Unloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.diagnostics.fmt(f)
    }
}

impl std::error::Error for Unloaded {}

impl Diagnostic for Unloaded {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.0.diagnostics.code()
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        self.0.diagnostics.related()
    }
}

/// A manifest's bytes, bounded: `None` when it is larger than a manifest may be (its
/// size, as far as the file system says, comes with it).
fn read(root: &Path, rel: &str) -> Result<Read, Error> {
    let path = root.join(rel);
    let limit = cascade_manifest::MAX_FILE_BYTES as u64;
    match crate::bounded::read(&path, limit, false) {
        Ok(bytes) => Ok(Read::Bytes(bytes)),
        Err(crate::bounded::ReadError::TooLarge) => {
            let size = fs::metadata(&path).map_or(0, |m| m.len());
            Ok(Read::TooLarge(size.max(limit + 1)))
        }
        Err(e) => Err(e.into_error(rel, "a manifest", limit)),
    }
}

/// What reading a manifest gave: problems with its bytes are the manifest checker's
/// to report, along with every other problem.
enum Read {
    Bytes(Vec<u8>),
    TooLarge(u64),
}

fn add(db: &mut SourceDb, rel: String, read: Read) -> cascade_core::FileId {
    match read {
        Read::Bytes(b) => db.add_bytes(rel, b),
        Read::TooLarge(size) => db.add_too_large(rel, size),
    }
}

/// `bytes` as text, or a diagnostic pointing at the first byte that is not UTF-8.
pub(crate) fn utf8(shown: &str, bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|e| {
        // Point at the first bad byte: the valid prefix is the same in the lossy text,
        // where the bad bytes became one U+FFFD (3 bytes).
        let at = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
        Error::NotUtf8 {
            path: PathBuf::from(shown),
            src: miette::NamedSource::new(shown, text),
            span: (at, '\u{FFFD}'.len_utf8()).into(),
        }
    })
}

/// Reads `recipes/<stem>.yaml` for every stem, on all cores (big graphs have thousands
/// of small files), keeping the order.
fn read_all(root: &Path, stems: Vec<String>) -> Result<Vec<(String, String, Read)>, Error> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = stems.len().div_ceil(threads).max(64);
    std::thread::scope(|s| {
        let handles: Vec<_> = stems
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|stem| {
                            let rel = Layout::recipe_rel(stem);
                            read(root, &rel).map(|text| (stem.clone(), rel, text))
                        })
                        .collect::<Result<Vec<_>, Error>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(stems.len());
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(out)
    })
}

fn yaml_stems(dir: &Path) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".yaml") {
            // The entry's type comes with the listing; only a link needs a stat.
            let file = match e.file_type() {
                Ok(t) if !t.is_symlink() => t.is_file(),
                _ => e.path().is_file(),
            };
            if file && !stem.starts_with('.') {
                out.push(stem.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads and resolves the project at `root` for environment `env`.
pub fn load(root: &Path, env: &str) -> Result<Project, Error> {
    load_with(root, env, None)
}

/// [`load`], taking the resolved graph from `store`'s cache when the manifests are
/// the ones it was resolved from; when they are not, the graph is kept there if
/// `keep` (a build; a plan writes nothing to the store).
pub fn load_cached(root: &Path, env: &str, store: &Path, keep: bool) -> Result<Project, Error> {
    load_with(root, env, Some((store, keep)))
}

fn load_with(root: &Path, env: &str, store: Option<(&Path, bool)>) -> Result<Project, Error> {
    let layout = Layout::new(root);
    let envs_dir = layout.environments();
    if !envs_dir.is_dir() {
        return Err(Error::NotAProject(root.to_path_buf()));
    }
    let available = yaml_stems(&envs_dir)?;
    if !available.iter().any(|e| e == env) {
        let help = if available.is_empty() {
            "there are no environments; add `graph/environments/<name>.yaml`".to_string()
        } else {
            format!("the environments are: {}", available.join(", "))
        };
        return Err(Error::UnknownEnvironment {
            name: env.to_string(),
            help,
        });
    }
    let mut db = SourceDb::new();
    let env_rel = Layout::environment_rel(env);
    let environment = add(&mut db, env_rel.clone(), read(root, &env_rel)?);
    let compat_rel = Layout::COMPATIBILITY;
    let compatibility = if root.join(compat_rel).is_file() {
        Some(add(
            &mut db,
            compat_rel.to_string(),
            read(root, compat_rel)?,
        ))
    } else {
        None
    };
    let mut recipes = Vec::new();
    for (stem, rel, read) in read_all(root, yaml_stems(&layout.recipes())?)? {
        recipes.push((stem, add(&mut db, rel, read)));
    }
    let files = ProjectFiles {
        environment,
        compatibility,
        recipes,
    };
    let cache = store.and_then(|(store, keep)| {
        let key = crate::graph_cache::key(env, &db)?;
        Some((crate::graph_cache::path(store, root, env), key, keep))
    });
    if let Some(graph) = cache
        .as_ref()
        .and_then(|(path, key, _)| crate::graph_cache::get(path, key))
    {
        return Ok(Project {
            root: root.to_path_buf(),
            db,
            files,
            graph,
            uncached: None,
        });
    }
    let graph = match cascade_manifest::resolve(&db, &files) {
        Ok(graph) => graph,
        Err(unresolved) => {
            let environment_dir = environment_dir(root, &db, &files);
            return Err(Error::Unresolved(Unloaded(Box::new(UnloadedParts {
                diagnostics: unresolved.diagnostics,
                db,
                root: root.to_path_buf(),
                environment_dir,
                sources: unresolved.sources,
            }))));
        }
    };
    Ok(Project {
        root: root.to_path_buf(),
        db,
        files,
        graph,
        uncached: cache.and_then(|(path, key, keep)| keep.then_some((path, key))),
    })
}
