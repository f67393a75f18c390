//! Where things live in a project: one value for the directory names that every
//! operation and the CLI share, so none of them spells a path of its own.

use std::path::{Path, PathBuf};

/// A project's directories and files, relative to its root.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The directory of the environment files (relative to the project).
    pub const ENVIRONMENTS: &'static str = "graph/environments";
    /// The compatibility matrix (relative to the project; optional).
    pub const COMPATIBILITY: &'static str = "graph/compatibility.yaml";
    /// The directory of the recipes, one per component (relative to the project).
    pub const RECIPES: &'static str = "recipes";
    /// The lockfiles builds write (relative to the project).
    pub const LOCKFILES: &'static str = "lockfiles";
    /// The deploy histories and locks (relative to the project).
    pub const DEPLOYMENTS: &'static str = "deployments";
    /// The store when no `--store` (or `CASCADE_STORE`) names one (relative to the
    /// project).
    pub const DEFAULT_STORE: &'static str = "cache";

    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `graph/`, `graph/environments/` and `recipes/`: what a change to the manifests
    /// touches.
    pub fn manifest_dirs(&self) -> [PathBuf; 3] {
        [self.root.join("graph"), self.environments(), self.recipes()]
    }

    pub fn environments(&self) -> PathBuf {
        self.root.join(Self::ENVIRONMENTS)
    }

    /// `graph/environments/<env>.yaml`, relative (as diagnostics name it).
    pub fn environment_rel(env: &str) -> String {
        format!("{}/{env}.yaml", Self::ENVIRONMENTS)
    }

    pub fn recipes(&self) -> PathBuf {
        self.root.join(Self::RECIPES)
    }

    /// `recipes/<component>.yaml`, relative (as diagnostics and git history name it).
    pub fn recipe_rel(component: &str) -> String {
        format!("{}/{component}.yaml", Self::RECIPES)
    }

    pub fn lockfiles(&self) -> PathBuf {
        self.root.join(Self::LOCKFILES)
    }

    pub fn deployments(&self) -> PathBuf {
        self.root.join(Self::DEPLOYMENTS)
    }

    /// `deployments/<env>.yaml`, relative (as reports name it).
    pub fn history_rel(env: &str) -> String {
        format!("{}/{env}.yaml", Self::DEPLOYMENTS)
    }

    pub fn history(&self, env: &str) -> PathBuf {
        self.root.join(Self::history_rel(env))
    }

    /// The store a command uses: the one it was given, else `<project>/cache`.
    pub fn store(&self, given: Option<&Path>) -> PathBuf {
        given.map_or_else(|| self.root.join(Self::DEFAULT_STORE), Path::to_path_buf)
    }
}

/// The mirrors of fetched git repositories inside a store (as `Store::git_dir` names
/// it, for the operations that read them without opening the store).
pub(crate) fn store_git_dir(store: &Path) -> PathBuf {
    store.join("git")
}
