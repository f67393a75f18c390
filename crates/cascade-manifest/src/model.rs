//! The validated model: what the manifests mean once every field has been checked.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use cascade_core::{DecodeError, Decoder, Digest, Encoder, FileId, Span};

use crate::range::VersionRange;

/// The resolved build graph of one environment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Graph {
    pub environment: Environment,
    /// Topological order (inputs first); ties broken by name, so the order is deterministic.
    pub components: Vec<Component>,
    /// The rules of `graph/compatibility.yaml` whose two components are both in the
    /// graph, sorted by (component, upstream). Checked by [`crate::check_compatibility`].
    pub compatibility: Vec<Constraint>,
}

impl Graph {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.components.iter().position(|c| c.name == name)
    }
}

/// `graph/environments/<env>.yaml`, minus its sources (which live in the components).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Environment {
    pub name: String,
    pub mode: Mode,
    pub registry: Option<String>,
    pub tag: Option<String>,
    /// `oci://host/repository`: where builds of this environment share results.
    pub remote_cache: Option<String>,
    /// `grpc[s]://host:port[/instance]`: a REAPI engine, the shared cache (and, with
    /// `--remote-exec`, the executor); wins over `remote_cache`.
    pub remote: Option<String>,
    /// `sign:`: the key that signs pushed images, a file (relative to the environment
    /// file's directory) or `env:VAR`.
    pub sign: Option<KeyLocation>,
    /// `require_signature:`: public key files (relative to the environment file's
    /// directory); when not empty, `promote` to this environment and `deploy` of it
    /// refuse any image that one of them has not signed and attested.
    pub require_signature: Vec<String>,
    /// `notify:`: webhook URLs (`https://…`, or `http://` on loopback), in the order
    /// written, each sent a JSON event per release, promotion, failed build and deploy.
    pub notify: Vec<String>,
    /// `deploy:`: how the environment runs on a Docker Engine (`cascade deploy`).
    pub deploy: Option<Deploy>,
    pub file: FileId,
}

/// Where a signing key is: its text is never in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyLocation {
    /// A file, as written (relative paths start at the environment file's directory).
    File(String),
    /// `env:VAR`: the armored key is the variable's value.
    Env(String),
}

impl KeyLocation {
    /// `env:VAR` or a path, as `--sign` and `sign:` take them; `None` when empty or when
    /// `VAR` is not a variable name.
    pub fn parse(s: &str) -> Option<KeyLocation> {
        match s.strip_prefix("env:") {
            Some(var) => {
                let ok = var
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                ok.then(|| KeyLocation::Env(var.to_string()))
            }
            None if s.is_empty() => None,
            None => Some(KeyLocation::File(s.to_string())),
        }
    }
}

/// An environment's `deploy:` section, checked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deploy {
    /// `unix:///path` or `tcp://127.0.0.1:PORT`; `None`: `DOCKER_HOST`, else the local socket.
    pub engine: Option<String>,
    /// The fleet, in the order written: each host a Docker Engine. Without `hosts:`, one
    /// host named [`LOCAL_HOST`] on `engine`.
    pub hosts: Vec<DeployHost>,
    /// How many hosts of one component are replaced at once (default 1).
    pub max_unavailable: u32,
    /// Sorted by component name; `cascade deploy` orders them by the graph.
    pub components: Vec<DeployComponent>,
}

/// How one component runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeployComponent {
    pub component: String,
    /// The container's name (default `<env>-<component>`); with replicas, `<name>-<i>`.
    pub container: String,
    pub ports: Vec<PortMap>,
    pub env: BTreeMap<String, String>,
    pub volumes: Vec<Volume>,
    /// `no`, `always`, `unless-stopped` or `on-failure` (default `unless-stopped`).
    pub restart: String,
    pub replicas: u32,
    pub health: Option<HealthCheck>,
    /// The hosts it runs on (`replicas` containers on each), in the fleet's order.
    pub hosts: Vec<String>,
    /// Values read at deploy time and passed to its containers as variables; only a
    /// digest of each is ever recorded.
    pub secrets: BTreeMap<String, SecretSource>,
}

/// The host name of a `deploy:` without `hosts:`.
pub const LOCAL_HOST: &str = "local";

/// One Docker Engine of a fleet.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeployHost {
    pub name: String,
    /// `ssh://user@host[:port]`, `unix:///path` or `tcp://127.0.0.1:PORT`; `None`: the
    /// default engine (`DOCKER_HOST`, else the local socket).
    pub engine: Option<String>,
}

/// Where a secret comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SecretSource {
    /// A variable of cascade's own environment.
    Env(String),
    /// A file, relative to the environment file's directory.
    File(String),
}

impl DeployComponent {
    /// The names of its containers, one per replica.
    pub fn container_names(&self) -> Vec<String> {
        if self.replicas == 1 {
            vec![self.container.clone()]
        } else {
            (1..=self.replicas)
                .map(|i| format!("{}-{i}", self.container))
                .collect()
        }
    }
}

/// A published port: `host_ip:host_port` → the container's `container`/tcp.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PortMap {
    /// `127.0.0.1` unless written.
    pub host_ip: String,
    /// `None`: the engine picks one.
    pub host_port: Option<u16>,
    pub container: u16,
}

/// A bind mount (absolute `source`) or a named volume, at `target`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// Probed after a container starts: it must pass before the deploy goes on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    /// The longest delay between attempts (delays double up to it).
    pub interval: Duration,
    /// One attempt's limit.
    pub timeout: Duration,
    /// Failed attempts after the start period before the container is unhealthy.
    pub retries: u32,
    /// Failures during this time after the start do not count.
    pub start_period: Duration,
}

/// How an environment's sources are pinned.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Sources follow refs (branches, tags or commits).
    Branch,
    /// Sources pin released versions (tags `v<version>` or `<version>`).
    Version,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Branch => "branch",
            Mode::Version => "version",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node of the graph.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Component {
    pub name: String,
    pub source: SourceSpec,
    pub recipe: Recipe,
    pub recipe_file: FileId,
    /// Indices into `Graph::components` of the recipe's inputs, sorted by name.
    pub inputs: Vec<usize>,
    /// The component whose image this one's is based on: built first, but not an input
    /// (its output does not enter this node's key).
    pub image_base: Option<usize>,
    /// The component in whose image this one's steps run (`runner: { container: { image:
    /// <component> } }`): built first, and its image's digest is this node's runner
    /// identity, so it rebuilds this node exactly when that image changes.
    pub runner_image: Option<usize>,
    /// Where each of a host runner's `tools:` is written in the recipe (for a tool this
    /// machine lacks); empty for a recipe that is not a file (a replay's, from the store).
    pub tool_spans: BTreeMap<String, Span>,
}

impl Component {
    /// What must be done before this node starts: its inputs, its image's base and the
    /// image its steps run in.
    pub fn deps(&self) -> Vec<usize> {
        let mut d = self.inputs.clone();
        for extra in [self.image_base, self.runner_image].into_iter().flatten() {
            if !d.contains(&extra) {
                d.push(extra);
            }
        }
        d
    }
}

/// A component's source as the environment declares it, whether or not its recipe is
/// valid.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeclaredSource {
    pub component: String,
    pub spec: SourceSpec,
}

/// Where a component's code comes from, as written in the environment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceSpec {
    /// As written: a path relative to the environment file, a `file://` URL or any URL.
    pub repo: String,
    pub repo_span: Span,
    pub rev: Rev,
    /// The `ref:` or `version:` value, for diagnostics such as [`crate::unknown_ref`].
    pub rev_span: Span,
    /// A sub-directory, normalized (relative, no `.` or `..`, no trailing `/`).
    pub dir: Option<String>,
    /// The `dir:` value, for diagnostics (a sub-directory the tree lacks).
    pub dir_span: Option<Span>,
    /// `version_tags:`, the tag pattern with `{version}` in it (`web-v{version}` for a
    /// component of a monorepo); `None` for the default, `v{version}` or `{version}`.
    pub version_tags: Option<String>,
}

/// What to pin a source at.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rev {
    /// Branch mode: a branch, a tag or a commit.
    Ref(String),
    /// Version mode: a version, written `v4.0.0` or `4.0.0` (the tag may be either).
    Version(semver::Version),
}

/// A compatibility rule: `component` requires `upstream`'s version to be in `range`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Constraint {
    pub component: String,
    pub upstream: String,
    pub range: VersionRange,
    /// The range string in `graph/compatibility.yaml`.
    pub span: Span,
}

/// `recipes/<component>.yaml`, normalized.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    /// Upstream component names, sorted.
    pub inputs: Vec<String>,
    /// Where the steps run.
    pub runner: RunnerDecl,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// In order.
    pub steps: Vec<Step>,
    /// Sorted, relative, normalized (no `.`, no trailing `/`).
    pub outputs: Vec<String>,
    /// `image:`; not part of [`Recipe::canonical`].
    pub image: Option<ImageDecl>,
    /// `tests:`, by name; not part of [`Recipe::canonical`].
    pub tests: Vec<SmokeTest>,
    /// `stamp:`, sorted: what the steps see of the pinned commit (and so what its key
    /// covers). Empty: nothing, and a commit that leaves the source alone rebuilds
    /// nothing.
    pub stamp: Vec<Stamp>,
    /// `source:`: which files of the source are exported and keyed.
    pub filter: SourceFilter,
    /// `changelog:`: the file `cascade release tag` writes each release's section into;
    /// not part of [`Recipe::canonical`].
    pub changelog: Option<Changelog>,
}

/// A recipe's `changelog:`: a path relative to the source's `dir:` (the exported tree),
/// normalized (no `.`, no trailing `/`), never `..` or absolute.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Changelog {
    pub path: String,
    /// The value in the recipe file, for `release`'s diagnostics.
    pub span: Span,
}

/// One thing a recipe may stamp its steps with, as Bazel's `--stamp` does.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Stamp {
    /// `CASCADE_COMMIT`: the full SHA of the commit pinned.
    Commit,
    /// `CASCADE_VERSION`: the component's version.
    Version,
    /// `CASCADE_COMMIT_TIME`: the pinned commit's committer time.
    Time,
}

impl Stamp {
    pub const ALL: [Stamp; 3] = [Stamp::Commit, Stamp::Version, Stamp::Time];

    pub fn as_str(self) -> &'static str {
        match self {
            Stamp::Commit => "commit",
            Stamp::Version => "version",
            Stamp::Time => "time",
        }
    }

    pub fn parse(s: &str) -> Option<Stamp> {
        Stamp::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A recipe's `source: { include: [...], exclude: [...] }`: globs relative to the
/// exported tree, sorted and without repeats. Both empty: the whole tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl SourceFilter {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// A recipe's `runner:`: where its steps run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RunnerDecl {
    /// `host: { tools: [...], sets: [...] }`, each sorted: on this machine, with only
    /// these tools (and the members of these [`TOOL_SETS`] found here) on PATH.
    Host {
        tools: Vec<String>,
        sets: Vec<String>,
    },
    /// `container: { image: … }`: each step in a fresh container of this image, with the
    /// network off and only the work directory writable.
    Container { image: RunnerImage },
}

/// Named sets of host tools (`runner: { host: { sets: [posix, cc] } }`), the way Nix's
/// stdenv and Bazel's toolchains name what a build expects: a set stands for those of
/// its members that are found on PATH, each still keyed by its own content digest.
pub const TOOL_SETS: &[(&str, &[&str])] = &[
    (
        "posix",
        &[
            "[", "awk", "basename", "cat", "chmod", "cmp", "comm", "cp", "cut", "date", "dd",
            "diff", "dirname", "echo", "egrep", "env", "expr", "false", "fgrep", "find", "grep",
            "gzip", "head", "id", "install", "join", "ln", "ls", "make", "mkdir", "mktemp", "mv",
            "nproc", "od", "paste", "patch", "printf", "pwd", "readlink", "realpath", "rm",
            "rmdir", "sed", "seq", "sh", "sleep", "sort", "split", "stat", "tail", "tar", "tee",
            "test", "touch", "tr", "true", "tsort", "uname", "uniq", "wc", "xargs", "zcat",
        ],
    ),
    (
        "cc",
        &[
            "addr2line",
            "ar",
            "as",
            "c++",
            "cc",
            "cpp",
            "g++",
            "gcc",
            "ld",
            "nm",
            "objcopy",
            "objdump",
            "pkg-config",
            "ranlib",
            "readelf",
            "size",
            "strings",
            "strip",
        ],
    ),
];

/// The members of the tool set `name`, if it is one.
pub fn tool_set(name: &str) -> Option<&'static [&'static str]> {
    TOOL_SETS.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// The image a container runner runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RunnerImage {
    /// The image another component of the graph builds (its `image:`).
    Component(String),
    /// `name@sha256:<hex>`: an image pinned by its manifest digest, in the store's image
    /// layout or the local Docker Engine.
    Pinned { name: String, digest: String },
}

impl fmt::Display for RunnerImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerImage::Component(c) => f.write_str(c),
            RunnerImage::Pinned { name, digest } => write!(f, "{name}@{digest}"),
        }
    }
}

/// A recipe's `image:`: how its outputs become an OCI image. Not part of the recipe
/// digest (an image change does not rerun the steps); it has its own canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageDecl {
    pub base: ImageBase,
    /// In order: later layers win.
    pub layers: Vec<LayerDecl>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// Sorted, unique.
    pub ports: Vec<u16>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImageBase {
    Scratch,
    /// Another component's image, built in the same graph.
    Component(String),
    /// `name@sha256:<hex>`: an image pinned by digest, present in the store.
    Pinned {
        name: String,
        digest: String,
    },
}

/// `{ from: <output path>, to: <absolute path in the image>, mode: "0755" }`
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerDecl {
    /// Normalized; a declared output or a path inside one.
    pub from: String,
    /// Absolute, normalized.
    pub to: String,
    /// Overrides the files' modes (directories stay 0755).
    pub mode: Option<u32>,
}

const IMAGE_DOMAIN: &str = "cascade/image-decl";
const IMAGE_VERSION: u64 = 1;

impl ImageDecl {
    /// Canonical encoding; its blake3 identifies the image declaration.
    pub fn canonical(&self) -> Vec<u8> {
        let mut e = Encoder::new(IMAGE_DOMAIN, IMAGE_VERSION);
        e.nested(1, |e| match &self.base {
            ImageBase::Scratch => {
                e.str(0, "scratch");
            }
            ImageBase::Component(c) => {
                e.str(0, "component").str(1, c);
            }
            ImageBase::Pinned { name, digest } => {
                e.str(0, "pinned").str(1, name).str(2, digest);
            }
        });
        e.list(2, self.layers.iter(), |e, l| {
            e.str(0, &l.from).str(1, &l.to);
            if let Some(m) = l.mode {
                e.u64(2, u64::from(m));
            }
        });
        if let Some(v) = &self.entrypoint {
            e.strs(3, v.iter().map(String::as_str));
        }
        if let Some(v) = &self.cmd {
            e.strs(4, v.iter().map(String::as_str));
        }
        e.map(5, &self.env);
        e.opt_str(6, self.workdir.as_deref());
        e.list(7, self.ports.iter(), |e, p| {
            e.u64(0, u64::from(*p));
        });
        e.opt_str(8, self.user.as_deref());
        e.map(9, &self.labels);
        e.finish()
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical())
    }

    /// Reads back [`ImageDecl::canonical`], for replaying a lockfile.
    pub fn decode_canonical(bytes: &[u8]) -> Result<ImageDecl, DecodeError> {
        let mut d = Decoder::new(bytes, IMAGE_DOMAIN, IMAGE_VERSION)?;
        let mut b = d.nested(1)?;
        let base = match b.str(0)? {
            "scratch" => ImageBase::Scratch,
            "component" => ImageBase::Component(b.str(1)?.to_string()),
            "pinned" => ImageBase::Pinned {
                name: b.str(1)?.to_string(),
                digest: b.str(2)?.to_string(),
            },
            _ => return Err(DecodeError::Malformed(1)),
        };
        b.end()?;
        let mut layers = Vec::new();
        for mut l in d.list(2)? {
            let from = l.str(0)?.to_string();
            let to = l.str(1)?.to_string();
            let mode = if l.end().is_ok() {
                None
            } else {
                let m = l.u64(2)?;
                l.end()?;
                Some(u32::try_from(m).map_err(|_| DecodeError::Malformed(2))?)
            };
            layers.push(LayerDecl { from, to, mode });
        }
        let entrypoint = d.opt_strs(3)?;
        let cmd = d.opt_strs(4)?;
        let env = d.map(5)?;
        let workdir = d.opt_str(6)?.map(str::to_string);
        let mut ports = Vec::new();
        for mut p in d.list(7)? {
            ports.push(u16::try_from(p.u64(0)?).map_err(|_| DecodeError::Malformed(7))?);
            p.end()?;
        }
        let user = d.opt_str(8)?.map(str::to_string);
        let labels = d.map(9)?;
        d.end()?;
        Ok(ImageDecl {
            base,
            layers,
            entrypoint,
            cmd,
            env,
            workdir,
            ports,
            user,
            labels,
        })
    }
}

/// One of a recipe's `tests:`: a smoke test run against its image in Docker.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SmokeTest {
    pub name: String,
    pub probe: Probe,
    pub expect: Expect,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Probe {
    Http {
        port: u16,
        path: String,
    },
    /// Run inside the running container.
    Command(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Expect {
    /// HTTP status (default 200).
    pub status: Option<u16>,
    /// The body (HTTP) or stdout (command) contains this, after `{commit}`, `{short_sha}`,
    /// `{version}` and `{component}` are replaced.
    pub body_contains: Option<String>,
    /// A command's exit code (default 0).
    pub exit_code: Option<i64>,
}

/// The placeholders a test's `body_contains` may use.
pub const TEST_PLACEHOLDERS: [&str; 4] = ["commit", "short_sha", "version", "component"];

/// One step of a recipe: a shell script.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub name: String,
    pub run: String,
}

const RECIPE_DOMAIN: &str = "cascade/recipe";
const RECIPE_VERSION: u64 = 1;

impl Recipe {
    /// The host runner's tools; none for a container runner.
    pub fn tools(&self) -> &[String] {
        match &self.runner {
            RunnerDecl::Host { tools, .. } => tools,
            RunnerDecl::Container { .. } => &[],
        }
    }

    /// The tool sets of a host runner.
    pub fn sets(&self) -> &[String] {
        match &self.runner {
            RunnerDecl::Host { sets, .. } => sets,
            RunnerDecl::Container { .. } => &[],
        }
    }

    /// Canonical encoding (cascade_core::Encoder, domain "cascade/recipe", version 1) of
    /// everything but the timeout, the image, the tests and the changelog; its blake3 is
    /// the recipe digest. They are left out because they cannot change the steps'
    /// output: the image has its own identity ([`ImageDecl::canonical`]), tests only
    /// pass or fail, and the changelog file is written by `release tag` outside what the
    /// source filter exports (which `release` checks), so the keys stay the same.
    /// A container runner's image is a last field, written only for container runners,
    /// so the digest of every host recipe is what it was before containers existed; so
    /// are a host runner's tool sets (field 7), written only when there are some, the
    /// stamps (field 8) and the source filter (field 9, 0 include, 1 exclude).
    pub fn canonical(&self) -> Vec<u8> {
        let mut e = Encoder::new(RECIPE_DOMAIN, RECIPE_VERSION);
        e.strs(1, self.inputs.iter().map(String::as_str));
        e.strs(2, self.tools().iter().map(String::as_str));
        e.map(3, &self.env);
        e.list(4, self.steps.iter(), |e, s| {
            e.str(0, &s.name).str(1, &s.run);
        });
        e.strs(5, self.outputs.iter().map(String::as_str));
        if let RunnerDecl::Container { image } = &self.runner {
            e.nested(6, |e| match image {
                RunnerImage::Component(c) => {
                    e.str(0, "component").str(1, c);
                }
                RunnerImage::Pinned { name, digest } => {
                    e.str(0, "pinned").str(1, name).str(2, digest);
                }
            });
        }
        if !self.sets().is_empty() {
            e.strs(7, self.sets().iter().map(String::as_str));
        }
        if !self.stamp.is_empty() {
            e.strs(8, self.stamp.iter().map(|s| s.as_str()));
        }
        if !self.filter.is_empty() {
            e.nested(9, |e| {
                e.strs(0, self.filter.include.iter().map(String::as_str))
                    .strs(1, self.filter.exclude.iter().map(String::as_str));
            });
        }
        e.finish()
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical())
    }

    /// Reads back [`Recipe::canonical`] (the timeout, image, tests and changelog, not
    /// encoded, are empty), so an old
    /// recipe kept in the store by digest can be compared with today's.
    pub fn decode_canonical(bytes: &[u8]) -> Result<Recipe, DecodeError> {
        let mut d = Decoder::new(bytes, RECIPE_DOMAIN, RECIPE_VERSION)?;
        let inputs = d.strs(1)?;
        let tools = d.strs(2)?;
        let env = d.map(3)?;
        let mut steps = Vec::new();
        for mut s in d.list(4)? {
            steps.push(Step {
                name: s.str(0)?.to_string(),
                run: s.str(1)?.to_string(),
            });
            s.end()?;
        }
        let outputs = d.strs(5)?;
        let runner = if d.peek_tag() == Some(6) {
            let mut c = d.nested(6)?;
            let image = match c.str(0)? {
                "component" => RunnerImage::Component(c.str(1)?.to_string()),
                "pinned" => RunnerImage::Pinned {
                    name: c.str(1)?.to_string(),
                    digest: c.str(2)?.to_string(),
                },
                _ => return Err(DecodeError::Malformed(6)),
            };
            c.end()?;
            if !tools.is_empty() {
                return Err(DecodeError::Malformed(2));
            }
            RunnerDecl::Container { image }
        } else {
            let sets = if d.peek_tag() == Some(7) {
                d.strs(7)?
            } else {
                Vec::new()
            };
            RunnerDecl::Host { tools, sets }
        };
        let stamp = match d.peek_tag() {
            Some(8) => d
                .strs(8)?
                .iter()
                .map(|s| Stamp::parse(s).ok_or(DecodeError::Malformed(8)))
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        let filter = match d.peek_tag() {
            Some(9) => {
                let mut f = d.nested(9)?;
                let filter = SourceFilter {
                    include: f.strs(0)?,
                    exclude: f.strs(1)?,
                };
                f.end()?;
                filter
            }
            _ => SourceFilter::default(),
        };
        d.end()?;
        Ok(Recipe {
            inputs,
            runner,
            env,
            timeout: None,
            steps,
            outputs,
            image: None,
            tests: Vec::new(),
            stamp,
            filter,
            changelog: None,
        })
    }

    /// What changed from `old` to `self`, field by field, in the order of the recipe
    /// file: `inputs`, `runner.host.tools` (or `runner.container.image`, or `runner` when
    /// it moved between host and container), `env.NAME`, `steps[i].name|run`, `outputs`.
    /// Only fields that are part of the digest are compared (not the timeout), so an
    /// empty list means the two digests are equal.
    pub fn diff(&self, old: &Recipe) -> Vec<FieldChange> {
        let mut out = Vec::new();
        let mut push = |field: String, change| out.push(FieldChange { field, change });
        if self.inputs != old.inputs {
            push("inputs".into(), Change::Changed);
        }
        match (&self.runner, &old.runner) {
            (RunnerDecl::Host { tools: a, sets: sa }, RunnerDecl::Host { tools: b, sets: sb }) => {
                if a != b {
                    push("runner.host.tools".into(), Change::Changed)
                }
                if sa != sb {
                    push("runner.host.sets".into(), Change::Changed)
                }
            }
            (RunnerDecl::Container { image: a }, RunnerDecl::Container { image: b }) if a != b => {
                push("runner.container.image".into(), Change::Changed)
            }
            (RunnerDecl::Host { .. }, RunnerDecl::Container { .. })
            | (RunnerDecl::Container { .. }, RunnerDecl::Host { .. }) => {
                push("runner".into(), Change::Changed)
            }
            _ => {}
        }
        for (name, value) in &self.env {
            match old.env.get(name) {
                None => push(format!("env.{name}"), Change::Added),
                Some(v) if v != value => push(format!("env.{name}"), Change::Changed),
                Some(_) => {}
            }
        }
        for name in old.env.keys().filter(|n| !self.env.contains_key(*n)) {
            push(format!("env.{name}"), Change::Removed);
        }
        for i in 0..self.steps.len().max(old.steps.len()) {
            match (self.steps.get(i), old.steps.get(i)) {
                (Some(_), None) => push(format!("steps[{i}]"), Change::Added),
                (None, Some(_)) => push(format!("steps[{i}]"), Change::Removed),
                (Some(new), Some(was)) => {
                    if new.name != was.name {
                        push(format!("steps[{i}].name"), Change::Changed);
                    }
                    if new.run != was.run {
                        push(format!("steps[{i}].run"), Change::Changed);
                    }
                }
                (None, None) => {}
            }
        }
        if self.outputs != old.outputs {
            push("outputs".into(), Change::Changed);
        }
        if self.stamp != old.stamp {
            push("stamp".into(), Change::Changed);
        }
        if self.filter.include != old.filter.include {
            push("source.include".into(), Change::Changed);
        }
        if self.filter.exclude != old.filter.exclude {
            push("source.exclude".into(), Change::Changed);
        }
        out
    }
}

/// One field of a recipe that differs between two versions of it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldChange {
    /// The field's path as written in the recipe file: `steps[1].run`, `env.RUST_LOG`.
    pub field: String,
    pub change: Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe {
            inputs: vec!["a".into(), "b".into()],
            runner: RunnerDecl::Host {
                tools: vec!["cc".into(), "sh".into()],
                sets: vec![],
            },
            env: [("OPT".to_string(), "-O2".to_string())].into(),
            timeout: Some(Duration::from_secs(30)),
            steps: vec![
                Step {
                    name: "build".into(),
                    run: "make".into(),
                },
                Step {
                    name: "test".into(),
                    run: "make test".into(),
                },
            ],
            outputs: vec!["out".into()],
            image: None,
            tests: Vec::new(),
            stamp: Vec::new(),
            filter: SourceFilter::default(),
            changelog: None,
        }
    }

    fn host_tools(r: &mut Recipe) -> &mut Vec<String> {
        match &mut r.runner {
            RunnerDecl::Host { tools, .. } => tools,
            RunnerDecl::Container { .. } => panic!("a host recipe"),
        }
    }

    fn container(image: RunnerImage) -> Recipe {
        Recipe {
            runner: RunnerDecl::Container { image },
            ..recipe()
        }
    }

    #[test]
    fn container_runners_round_trip_and_change_the_digest() {
        let pinned = RunnerImage::Pinned {
            name: "debian".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
        };
        let digests: Vec<Digest> = [
            recipe(),
            container(RunnerImage::Component("toolchain".into())),
            container(RunnerImage::Component("other".into())),
            container(pinned.clone()),
        ]
        .iter()
        .map(|r| {
            let back = Recipe::decode_canonical(&r.canonical()).unwrap();
            assert_eq!(
                back,
                Recipe {
                    timeout: None,
                    ..r.clone()
                }
            );
            r.digest()
        })
        .collect();
        let unique: std::collections::BTreeSet<_> = digests.iter().collect();
        assert_eq!(unique.len(), digests.len(), "{digests:?}");
        // A truncation never decodes to the recipe (cut right before the runner's field,
        // it is another, host, recipe: blobs are found by digest, so that cannot mix up).
        let r = container(pinned);
        let bytes = r.canonical();
        for n in 0..bytes.len() {
            let back = Recipe::decode_canonical(&bytes[..n]);
            assert!(back.as_ref().map_or(true, |b| b.runner != r.runner), "{n}");
        }
    }

    #[test]
    fn diff_names_the_runner() {
        let fields = |new: &Recipe, old: &Recipe| -> Vec<String> {
            new.diff(old).iter().map(|c| c.field.clone()).collect()
        };
        let a = container(RunnerImage::Component("toolchain".into()));
        let b = container(RunnerImage::Component("other".into()));
        assert_eq!(fields(&a, &b), ["runner.container.image"]);
        assert_eq!(fields(&a, &recipe()), ["runner"]);
        assert_eq!(fields(&recipe(), &a), ["runner"]);
        assert!(fields(&a, &a).is_empty());
    }

    #[test]
    fn every_ingredient_changes_the_digest_but_the_timeout() {
        let base = recipe().digest();
        type Change = (&'static str, fn(&mut Recipe));
        let changes: Vec<Change> = vec![
            ("input", |r| r.inputs[1] = "c".into()),
            ("no input", |r| r.inputs.clear()),
            ("tool", |r| host_tools(r).push("ar".into())),
            ("container runner", |r| {
                r.runner = RunnerDecl::Container {
                    image: RunnerImage::Component("toolchain".into()),
                }
            }),
            ("env value", |r| {
                r.env.insert("OPT".into(), "-O3".into());
            }),
            ("env name", |r| {
                r.env.insert("OPT2".into(), "-O2".into());
            }),
            ("step run", |r| r.steps[1].run.push(' ')),
            ("step name", |r| r.steps[0].name = "compile".into()),
            ("step order", |r| r.steps.reverse()),
            ("output", |r| r.outputs[0] = "out/bin".into()),
            ("extra output", |r| r.outputs.push("lib".into())),
        ];
        for (what, change) in changes {
            let mut r = recipe();
            change(&mut r);
            assert_ne!(r.digest(), base, "changing the {what} kept the digest");
        }
        let mut r = recipe();
        r.timeout = None;
        assert_eq!(r.digest(), base, "the timeout is not an ingredient");
        assert_eq!(recipe().digest(), base, "deterministic");
    }

    #[test]
    fn canonical_round_trips_without_the_timeout() {
        let r = recipe();
        let back = Recipe::decode_canonical(&r.canonical()).unwrap();
        assert_eq!(back, Recipe { timeout: None, ..r });
        assert!(Recipe::decode_canonical(b"garbage").is_err());
        let bytes = recipe().canonical();
        assert!(Recipe::decode_canonical(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn image_declarations_round_trip() {
        let mut decl = ImageDecl {
            base: ImageBase::Pinned {
                name: "debian".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
            },
            layers: vec![
                LayerDecl {
                    from: "out/bin".into(),
                    to: "/usr/bin".into(),
                    mode: Some(0o755),
                },
                LayerDecl {
                    from: "out/share".into(),
                    to: "/usr/share".into(),
                    mode: None,
                },
            ],
            entrypoint: Some(vec!["/usr/bin/x".into()]),
            cmd: None,
            env: [("A".to_string(), "1".to_string())].into(),
            workdir: Some("/srv".into()),
            ports: vec![80, 443],
            user: None,
            labels: [("l".to_string(), "v".to_string())].into(),
        };
        assert_eq!(
            ImageDecl::decode_canonical(&decl.canonical()).unwrap(),
            decl
        );
        decl.base = ImageBase::Component("base".into());
        decl.entrypoint = None;
        decl.cmd = Some(vec!["--serve".into()]);
        assert_eq!(
            ImageDecl::decode_canonical(&decl.canonical()).unwrap(),
            decl
        );
        decl.base = ImageBase::Scratch;
        assert_eq!(
            ImageDecl::decode_canonical(&decl.canonical()).unwrap(),
            decl
        );
        assert!(ImageDecl::decode_canonical(&recipe().canonical()).is_err());
    }

    #[test]
    fn diff_names_each_changed_field() {
        let fields = |r: &Recipe| -> Vec<String> {
            r.diff(&recipe())
                .iter()
                .map(|c| format!("{} {}", c.field, c.change))
                .collect()
        };
        assert!(recipe().diff(&recipe()).is_empty());
        let mut r = recipe();
        r.timeout = None;
        assert!(r.diff(&recipe()).is_empty(), "the timeout is not compared");
        r.steps[1].run = "make check".into();
        r.env.insert("RUST_LOG".into(), "debug".into());
        r.env.remove("OPT");
        assert_eq!(
            fields(&r),
            [
                "env.RUST_LOG added",
                "env.OPT removed",
                "steps[1].run changed"
            ]
        );
        let mut r = recipe();
        r.steps.push(Step {
            name: "lint".into(),
            run: "true".into(),
        });
        r.steps[0].name = "compile".into();
        r.outputs.push("lib".into());
        host_tools(&mut r).push("ar".into());
        r.env.insert("OPT".into(), "-O3".into());
        assert_eq!(
            fields(&r),
            [
                "runner.host.tools changed",
                "env.OPT changed",
                "steps[0].name changed",
                "steps[2] added",
                "outputs changed"
            ]
        );
    }

    #[test]
    fn fields_do_not_run_into_each_other() {
        // The same strings in different fields give different digests.
        let mut a = recipe();
        a.inputs = vec!["x".into()];
        a.runner = RunnerDecl::Host {
            tools: vec![],
            sets: vec![],
        };
        let mut b = recipe();
        b.inputs = vec![];
        b.runner = RunnerDecl::Host {
            tools: vec!["x".into()],
            sets: vec![],
        };
        assert_ne!(a.digest(), b.digest());
    }

    /// Tool sets enter the recipe digest and decode back; a recipe without sets keeps
    /// the digest it had before sets existed (the field is not written).
    #[test]
    fn tool_sets_round_trip_and_leave_old_digests_alone() {
        let without = recipe();
        let mut with = recipe();
        if let RunnerDecl::Host { sets, .. } = &mut with.runner {
            sets.push("posix".into());
        }
        assert_ne!(without.digest(), with.digest());
        let back = Recipe::decode_canonical(&with.canonical()).unwrap();
        assert_eq!(back.sets(), ["posix".to_string()]);
        assert!(!without.canonical().windows(5).any(|w| w == b"posix"));
        assert!(tool_set("posix").unwrap().contains(&"sed"));
        assert!(tool_set("cc").unwrap().contains(&"ar"));
        assert!(tool_set("gnu").is_none());
    }

    /// Stamps and the source filter enter the digest and decode back, with a container
    /// runner too; a recipe with neither keeps the digest it had before they existed.
    #[test]
    fn stamps_and_filters_round_trip_and_leave_old_digests_alone() {
        let plain = recipe();
        let old = plain.digest();
        let mut stamped = recipe();
        stamped.stamp = vec![Stamp::Commit, Stamp::Version];
        let mut filtered = recipe();
        filtered.filter = SourceFilter {
            include: vec!["src/**".into()],
            exclude: vec!["**/*.md".into()],
        };
        let mut both = container(RunnerImage::Component("toolchain".into()));
        both.stamp = vec![Stamp::Time];
        both.filter.exclude = vec!["docs/**".into()];
        let mut digests = std::collections::BTreeSet::new();
        for r in [&plain, &stamped, &filtered, &both] {
            assert!(digests.insert(r.digest()));
            let back = Recipe::decode_canonical(&r.canonical()).unwrap();
            assert_eq!(back.stamp, r.stamp);
            assert_eq!(back.filter, r.filter);
            assert_eq!(back.digest(), r.digest());
        }
        assert_eq!(plain.digest(), old);
        assert!(!plain.canonical().windows(6).any(|w| w == b"commit"));
        // Include and exclude are separate fields: the same glob in each differs.
        let mut inc = recipe();
        inc.filter.include = vec!["a".into()];
        let mut exc = recipe();
        exc.filter.exclude = vec!["a".into()];
        assert_ne!(inc.digest(), exc.digest());
        let fields: Vec<String> = stamped.diff(&plain).into_iter().map(|f| f.field).collect();
        assert_eq!(fields, ["stamp"]);
        let fields: Vec<String> = filtered.diff(&plain).into_iter().map(|f| f.field).collect();
        assert_eq!(fields, ["source.include", "source.exclude"]);
    }

    #[test]
    fn a_changelog_leaves_the_digest_alone() {
        let mut with = recipe();
        with.changelog = Some(Changelog {
            path: "CHANGELOG.md".into(),
            span: Span {
                file: FileId(0),
                offset: 0,
                len: 0,
            },
        });
        // `release tag` writes the file outside what the filter exports: keys of
        // recipes that declare one stay what they were.
        assert_eq!(with.canonical(), recipe().canonical());
        assert_eq!(with.diff(&recipe()), Vec::new());
    }
}
