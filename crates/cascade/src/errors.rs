//! The errors of an operation, each with its exit code from the documented table:
//! 2 bad input (manifest, lockfile, CLI usage), 3 environment (tools, disk, git
//! remotes). A failed build is not an error but a report (exit 1).

use std::path::PathBuf;

use miette::Diagnostic;

use crate::ExitCode;

/// Several problems found in one pass, each its own diagnostic.
#[derive(Debug, thiserror::Error)]
#[error("{summary}")]
pub struct Problems {
    pub summary: String,
    pub items: Vec<Box<dyn Diagnostic + Send + Sync>>,
    /// The code of the whole (`cascade::manifest` when the manifests have problems too).
    pub code: Option<&'static str>,
}

impl Diagnostic for Problems {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.code
            .map(|c| Box::new(c) as Box<dyn std::fmt::Display + 'a>)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.items.iter().map(|d| &**d as &dyn Diagnostic)))
    }
}

impl Problems {
    pub fn new(what: &str, items: Vec<Box<dyn Diagnostic + Send + Sync>>) -> Self {
        let n = items.len();
        Problems {
            summary: format!("{n} {what}{}", if n == 1 { "" } else { "s" }),
            items,
            code: None,
        }
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Manifest(#[from] cascade_manifest::Diagnostics),

    /// Manifests that did not resolve, as [`Error::Manifest`], with what
    /// [`crate::pin::with_source_problems`] needs to add the problems of the
    /// environment's valid sources.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Unresolved(crate::load::Unloaded),

    #[error("no environment `{name}` in `graph/environments/`")]
    #[diagnostic(code(cascade::unknown_environment), help("{help}"))]
    UnknownEnvironment { name: String, help: String },

    #[error("could not read `{path}`")]
    #[diagnostic(code(cascade::read))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{path}` is larger than {limit}, more than {what} can be")]
    #[diagnostic(
        code(cascade::read::too_large),
        help("check the path: cascade reads at most {limit} of {what}")
    )]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        limit: String,
    },

    #[error("`{path}` holds NUL bytes, so it is not {what}")]
    #[diagnostic(
        code(cascade::read::binary),
        help("check the path: {what} is YAML text")
    )]
    NotText { path: PathBuf, what: &'static str },

    #[error("`{path}` is not UTF-8 text")]
    #[diagnostic(
        code(cascade::read::utf8),
        help("manifests are UTF-8: save the file as UTF-8 (invalid bytes are shown as �)")
    )]
    NotUtf8 {
        path: PathBuf,
        #[source_code]
        src: miette::NamedSource<String>,
        #[label("not UTF-8")]
        span: miette::SourceSpan,
    },

    #[error("`{0}` is not a cascade project (no `graph/environments/` directory)")]
    #[diagnostic(
        code(cascade::not_a_project),
        help("run cascade in a directory with `graph/` and `recipes/`, or pass `--project DIR`")
    )]
    NotAProject(PathBuf),

    /// Sources that do not resolve (unknown refs, missing repositories): bad input.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Sources(Problems),

    /// Environment problems: tools not installed, remotes unreachable.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Environment(Problems),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] cascade_store::StoreError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Lock(#[from] cascade_lock::LockError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Image(cascade_image::ImageError),

    #[error("{needed_by} needs a Docker Engine, and none answers")]
    #[diagnostic(
        code(cascade::docker),
        help("start one (`.ci/services/docker.sh` installs and starts Debian's docker.io), point DOCKER_HOST at one, or pass --skip-tests to build without running the smoke tests")
    )]
    Docker {
        needed_by: String,
        #[source]
        source: cascade_docker::DockerError,
    },

    #[error("recipe `{component}` runs its steps in a container, and no Docker Engine answers")]
    #[diagnostic(
        code(cascade::docker::containers),
        help("start one (`.ci/services/docker.sh` installs and starts Debian's docker.io), or point DOCKER_HOST at one")
    )]
    ContainerEngine {
        component: String,
        #[source]
        source: cascade_docker::DockerError,
    },

    #[error("{needed_by} run in cascade's sandbox, and this kernel refuses its namespaces")]
    #[diagnostic(
        code(cascade::sandbox),
        help("{}", cascade_exec::namespace::Refused::HELP)
    )]
    Sandbox {
        needed_by: String,
        #[source]
        source: cascade_exec::namespace::Refused,
    },

    #[error("could not load `{reference}` into Docker: {message}")]
    #[diagnostic(code(cascade::docker_load))]
    Load { reference: String, message: String },

    #[error("could not push `{reference}`")]
    #[diagnostic(code(cascade::push))]
    Push {
        reference: String,
        #[source]
        #[diagnostic_source]
        source: cascade_registry::RegistryError,
    },

    #[error("environment `{env}` has no `registry:`, so there is nowhere to push")]
    #[diagnostic(
        code(cascade::no_registry),
        help("add `registry: host:port/prefix` to `graph/environments/{env}.yaml`")
    )]
    NoRegistry { env: String },

    /// A signing or verification key that cannot be used (unreadable text, locked).
    #[error("cannot use the key in {what}")]
    #[diagnostic(code(cascade::key))]
    Key {
        what: String,
        #[source]
        #[diagnostic_source]
        source: cascade_sign::SignError,
    },

    #[error("the environment variable `{var}` named by {by} is not set")]
    #[diagnostic(
        code(cascade::key::variable),
        help("export the armored secret key in `{var}` (`export {var}=\"$(cat cascade.key)\"`), or name a key file")
    )]
    KeyVariable { var: String, by: String },

    #[error("`{path}` exists; cascade keygen never overwrites a key")]
    #[diagnostic(
        code(cascade::key::exists),
        help("choose another directory with `-o`, or move the old key pair away first")
    )]
    KeyExists { path: PathBuf },

    #[error("could not write `{path}`")]
    #[diagnostic(code(cascade::key::write))]
    WriteKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the registry has no image `{reference}`")]
    #[diagnostic(
        code(cascade::verify::no_image),
        help("check the reference, or verify by digest (`host/repo@sha256:…`) or by lockfile")
    )]
    NoSuchImage { reference: String },

    #[error("{}", refused_images(env, refused))]
    #[diagnostic(
        code(cascade::signature_required),
        help("sign them with `cascade build --push --sign KEY` (or `sign:` in the environment that builds them) using a key that `require_signature:` lists; nothing was changed")
    )]
    SignatureRequired {
        env: String,
        refused: Vec<crate::sign::RefusedImage>,
    },

    #[error("`{path}` exists and is not empty; a release bundle is written into a new directory")]
    #[diagnostic(
        code(cascade::bundle::exists),
        help("choose another directory with `-o`, or remove this one first")
    )]
    BundleExists { path: PathBuf },

    #[error(
        "`{path}` holds {lockfiles} lockfiles at its top, not one: it is not a release bundle"
    )]
    #[diagnostic(
        code(cascade::bundle::not_a_bundle),
        help(
            "`cascade release-bundle LOCKFILE -o DIR` writes a bundle with its lockfile at the top"
        )
    )]
    NotABundle { path: PathBuf, lockfiles: usize },

    #[error("could not write the release bundle at `{path}`")]
    #[diagnostic(code(cascade::bundle::write))]
    WriteBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the secret `{name}` of `{component}` cannot be read: {why}")]
    #[diagnostic(
        code(cascade::deploy::secret),
        help("set the variable or create the file that `secrets:` names (relative to the environment file's directory); its value is never printed")
    )]
    Secret {
        component: String,
        name: String,
        why: String,
    },

    #[error("a deploy of `{env}` is already running{}: held by {holder} since {since}", at.as_deref().map(|h| format!(" (lock on host `{h}`)")).unwrap_or_default())]
    #[diagnostic(
        code(cascade::deploy::locked),
        help("wait for it to end; a holder on this machine that died is recognised and its lock taken over, one on another machine must be ended there (or its lock removed with `docker volume rm cascade-lock-{env}` on that host)")
    )]
    DeployLocked {
        env: String,
        /// The host whose marker is held; `None`: this machine's lock file.
        at: Option<String>,
        holder: String,
        since: String,
    },

    #[error("could not sign `{reference}`")]
    #[diagnostic(code(cascade::sign))]
    Sign {
        reference: String,
        #[source]
        #[diagnostic_source]
        source: cascade_sign::SignError,
    },

    /// A lockfile that cannot be replayed as written: a commit gone, a recipe lost, a
    /// key that does not match its ingredients. Points at the line.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Lockfile(Box<LockfileProblem>),

    #[error("`--env {given}`, but `{lockfile}` is a lockfile of environment `{recorded}`")]
    #[diagnostic(
        code(cascade::wrong_environment),
        help("leave out --env: a replay builds the lockfile's environment")
    )]
    WrongEnvironment {
        given: String,
        lockfile: String,
        recorded: String,
    },

    #[error("this machine's tools differ from the lockfile's (--strict): {}", risks.join("; "))]
    #[diagnostic(
        code(cascade::reproducibility_risk),
        help("install the tools the lockfile was built with, or replay without --strict")
    )]
    ReproducibilityRisk { risks: Vec<String> },

    #[error("environment `{env}` has no earlier lockfile to roll back to")]
    #[diagnostic(
        code(cascade::no_previous),
        help("a rollback needs two different lockfiles in `lockfiles/`; name one with --to")
    )]
    NoPrevious { env: String },

    #[error("environment `{env}` has no `deploy:` section")]
    #[diagnostic(
        code(cascade::deploy::not_deployable),
        help("add `deploy: {{ components: {{ <component>: {{ ports: [\"18080:8080\"] }} }} }}` to `graph/environments/{env}.yaml` (docs/deploy.md)")
    )]
    NoDeploy { env: String },

    #[error("`{lockfile}` cannot be deployed: {why}")]
    #[diagnostic(
        code(cascade::deploy::lockfile),
        help("deploy a lockfile of this environment that was built with the deployed components' images")
    )]
    DeployLockfile { lockfile: String, why: String },

    #[error("a container named `{name}` exists that `cascade deploy` of `{env}` did not create")]
    #[diagnostic(
        code(cascade::deploy::foreign_container),
        help("cascade never removes containers it did not create: remove or rename it yourself, or choose another `container:` name")
    )]
    ForeignContainer { name: String, env: String },

    #[error("cannot reach the Docker Engine of host `{host}`")]
    #[diagnostic(code(cascade::deploy::host))]
    DeployHost {
        host: String,
        #[source]
        #[diagnostic_source]
        source: cascade_docker::DockerError,
    },

    #[error("the Docker Engine failed during the deploy")]
    #[diagnostic(code(cascade::deploy::engine))]
    DeployEngine {
        #[source]
        #[diagnostic_source]
        source: cascade_docker::DockerError,
    },

    #[error("environment `{env}` has no earlier deployment to roll back to")]
    #[diagnostic(
        code(cascade::deploy::no_previous),
        help("`deployments/{env}.yaml` records what was deployed; `cascade deploy --env {env} --lock FILE` deploys any lockfile")
    )]
    NoPreviousDeploy { env: String },

    #[error("no lockfile in `lockfiles/`, so nothing is known to be worth keeping")]
    #[diagnostic(
        code(cascade::nothing_to_keep),
        help("gc keeps what the newest lockfiles reference; with none it would empty the store (delete the store directory to do that)")
    )]
    NothingToKeep,

    #[error("could not collect the remote cache `{url}`: {message}")]
    #[diagnostic(
        code(cascade::remote_cache_gc),
        help("the local store was collected; the registry must answer and allow deletes (distribution: `storage.delete.enabled: true`)")
    )]
    RemoteCacheGc { url: String, message: String },

    #[error("a build is using the store `{}`", store.display())]
    #[diagnostic(
        code(cascade::store_busy),
        help("gc runs only while no build uses the store; run it again when the builds have finished")
    )]
    StoreBusy { store: PathBuf },

    #[error("`{url}` is not a remote cache address: {why}")]
    #[diagnostic(
        code(cascade::remote_cache_url),
        help("write it `oci://host[:port]/repository`, e.g. `oci://127.0.0.1:5000/cascade-cache`")
    )]
    RemoteCacheUrl { url: String, why: String },

    #[error("environment `{env}` has no lockfile yet")]
    #[diagnostic(
        code(cascade::no_lockfile),
        help("build it first (`cascade build --env {env}`), or name a lockfile with `--lock`")
    )]
    NoLockfile { env: String },

    #[error("`{component}` has no image in `{lockfile}`")]
    #[diagnostic(
        code(cascade::no_image),
        help("declare `image:` in `recipes/{component}.yaml` and build again")
    )]
    NoImage { component: String, lockfile: String },

    #[error("no component `{name}` in environment `{env}`")]
    #[diagnostic(code(cascade::unknown_component), help("{help}"))]
    UnknownComponent {
        name: String,
        env: String,
        help: String,
    },

    #[error("could not write the lockfile `{path}`")]
    #[diagnostic(code(cascade::lockfile_write))]
    WriteLock {
        path: PathBuf,
        #[source]
        source: cascade_store::StoreError,
    },

    /// `promote` refused: smoke tests that did not pass, commits the target cannot pin,
    /// versions outside the compatibility matrix. Each problem is its own diagnostic.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Promotion(Box<crate::promote::Refusal>),

    /// `release tag` refused: conflicts with the compatibility matrix, tags on other
    /// commits. Nothing was tagged.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Release(Box<crate::release::ReleaseRefusal>),

    #[error("`{channel}` is not a pre-release channel")]
    #[diagnostic(
        code(cascade::release_channel),
        help("a channel is one word of letters, digits and `-`, such as `rc`, `beta` or `prerelease`: `--pre rc` proposes `X.Y.Z-rc.N`")
    )]
    BadChannel { channel: String },

    #[error("tag `{tag}` of `{component}` could not be written; no tag of this release was kept")]
    #[diagnostic(code(cascade::release_tagging))]
    Tagging {
        component: String,
        tag: String,
        // Boxed: a `GitError` would make every `Result<_, Error>` large.
        #[source]
        source: Box<cascade_git::GitError>,
    },

    #[error("pushing tags {tags} of `{repo}` failed; the tags stay in the local repository")]
    #[diagnostic(
        code(cascade::release_push),
        help("fix the remote, then run `cascade release tag --push` again: tags already there are pushed again, none is created twice")
    )]
    PushTags {
        repo: String,
        tags: String,
        #[source]
        source: Box<cascade_git::GitError>,
    },

    #[error("promoting to `{env}` needs --approve")]
    #[diagnostic(
        code(cascade::approval_required),
        help("review the deploy plan first (the same command with --dry-run), then run it again with --approve")
    )]
    ApprovalRequired { env: String },

    #[error("`--from {from}`, but `{lockfile}` is a lockfile of environment `{recorded}`")]
    #[diagnostic(
        code(cascade::lockfile_environment),
        help("leave out --from to promote this lockfile, or name a lockfile of `{from}`")
    )]
    LockfileEnvironment {
        from: String,
        lockfile: String,
        recorded: String,
    },

    #[error("could not write `{path}`")]
    #[diagnostic(code(cascade::manifest_write))]
    WriteManifest {
        path: PathBuf,
        #[source]
        source: cascade_store::StoreError,
    },

    #[error(
        "the rewritten `{path}` did not load back ({detail}), so its old content was put back"
    )]
    #[diagnostic(
        code(cascade::promote_rewrite),
        help("this is a bug in cascade; please report it with this message")
    )]
    RewriteInvalid { path: PathBuf, detail: String },
}

impl Error {
    /// The process exit code for this error (docs/exit-codes.md).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Manifest(_)
            | Error::Unresolved(_)
            | Error::UnknownEnvironment { .. }
            | Error::NotAProject(_)
            | Error::Read { .. }
            | Error::TooLarge { .. }
            | Error::NotText { .. }
            | Error::NotUtf8 { .. }
            | Error::Sources(_)
            | Error::Lock(_)
            | Error::UnknownComponent { .. }
            | Error::NoLockfile { .. }
            | Error::NoImage { .. }
            | Error::NoRegistry { .. }
            | Error::Key { .. }
            | Error::KeyVariable { .. }
            | Error::KeyExists { .. }
            | Error::BundleExists { .. }
            | Error::Secret { .. }
            | Error::NotABundle { .. }
            | Error::NoSuchImage { .. }
            | Error::Lockfile(_)
            | Error::WrongEnvironment { .. }
            | Error::NoPrevious { .. }
            | Error::NothingToKeep
            | Error::Promotion(_)
            | Error::Release(_)
            | Error::BadChannel { .. }
            | Error::ApprovalRequired { .. }
            | Error::LockfileEnvironment { .. }
            | Error::RewriteInvalid { .. }
            | Error::RemoteCacheUrl { .. }
            | Error::NoDeploy { .. }
            | Error::DeployLockfile { .. }
            | Error::NoPreviousDeploy { .. } => ExitCode::BadInput,
            Error::Environment(_)
            | Error::Store(_)
            | Error::WriteLock { .. }
            | Error::WriteManifest { .. }
            | Error::Image(_)
            | Error::Docker { .. }
            | Error::ContainerEngine { .. }
            | Error::Sandbox { .. }
            | Error::Load { .. }
            | Error::Push { .. }
            | Error::Sign { .. }
            | Error::WriteKey { .. }
            | Error::WriteBundle { .. }
            | Error::DeployLocked { .. }
            | Error::ReproducibilityRisk { .. }
            | Error::StoreBusy { .. }
            | Error::RemoteCacheGc { .. }
            | Error::ForeignContainer { .. }
            | Error::DeployHost { .. }
            | Error::DeployEngine { .. }
            | Error::Tagging { .. }
            | Error::PushTags { .. } => ExitCode::Environment,
            // A check that failed, as a failed smoke test does.
            Error::SignatureRequired { .. } => ExitCode::Failed,
        }
    }
}

/// `SignatureRequired`'s message: one line per refused image.
fn refused_images(env: &str, refused: &[crate::sign::RefusedImage]) -> String {
    let mut out = format!("`{env}` requires images signed by its keys; refused:");
    for r in refused {
        out.push_str(&format!("\n  `{}` (`{}`): {}", r.node, r.reference, r.why));
    }
    out
}

/// One problem with a lockfile's content, labelled at its line.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(cascade::lockfile))]
pub struct LockfileProblem {
    pub message: String,
    #[source_code]
    pub src: miette::NamedSource<String>,
    #[label("{label}")]
    pub span: Option<miette::SourceSpan>,
    pub label: String,
    #[help]
    pub help: Option<String>,
}

impl LockfileProblem {
    /// A problem about `needle` (a value) in the entry of `node` of the lockfile `text`
    /// shown as `path`: the label goes on the first occurrence of `needle` after the
    /// node's key, or on the node's key.
    pub fn at(
        path: &str,
        text: &str,
        node: &str,
        needle: &str,
        message: String,
        label: &str,
        help: Option<String>,
    ) -> Error {
        Error::Lockfile(Box::new(LockfileProblem {
            message,
            src: miette::NamedSource::new(path, text.to_string()),
            span: Self::span(text, node, needle),
            label: label.to_string(),
            help,
        }))
    }

    /// Where [`LockfileProblem::at`] puts its label: the first occurrence of `needle`
    /// after the key of `node` in the lockfile `text`, or that key; `None` when the
    /// lockfile has no entry for `node`.
    pub(crate) fn span(text: &str, node: &str, needle: &str) -> Option<miette::SourceSpan> {
        let start = text.find(&format!("\n  {node}:\n")).map(|i| i + 3)?;
        let (offset, len) = match text[start..].find(needle).filter(|_| !needle.is_empty()) {
            Some(off) => (start + off, needle.len()),
            None => (start, node.len()),
        };
        Some(miette::SourceSpan::new(offset.into(), len))
    }
}
