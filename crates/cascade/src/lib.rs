//! cascade: the operations users run (`build`, …), the one place that combines the
//! manifest, git, store, exec and lock crates. Everything that touches the world goes
//! through here; the stages keep the names of ARCHITECTURE.md: load → parse/resolve →
//! pin → key → execute → store → lock → publish.

mod bounded;
mod build;
mod bundle;
mod cache;
mod check;
mod container;
mod deploy;
mod diff;
mod errors;
mod execute;
mod exit;
mod gc;
mod graph_cache;
mod image;
mod layout;
mod load;
mod lockfiles;
mod notify;
mod pin;
mod plan;
mod promote;
mod provenance;
mod publish;
mod reapi;
mod release;
mod remote;
mod replay;
mod rootfs;
mod short;
mod sign;
mod smoke;
mod snapshot;
mod timings;
mod workdir;
mod worker;

pub use build::{build, BuildOptions, BuildReport, Event, FailureCause, NodeReport, NodeStatus};
pub use bundle::{
    bundle_lockfile, release_bundle, BundleFile, BundleOptions, BundleProblem, BundleReport,
    BundleVerdict, SumsSignature,
};
pub use cache::{cache_stats, cache_verify, BuildStat, CacheStats, VerifyResult};
pub use cascade_git::conventional::{Bump, PreMajor};
pub use cascade_manifest::{KeyLocation, LOCAL_HOST};
pub use cascade_notify::{Delivery, Outcome};
pub use check::{FileChange, FileDiff, Mismatch, Mismatched};
pub use deploy::{
    deploy, history_path, interrupt_deploy, read_history, rollback_deploy, rollback_target, status,
    ComponentReport, ContainerStatus, DeployAction, DeployChange, DeployEvent, DeployFailure,
    DeployOptions, DeployOutcome, DeployReport, Health, PlannedComponent, ReplacedContainer,
    StatusReport, Straggler,
};
pub use diff::{
    diff_lockfiles, lock_diff, Change, CommitsApart, DiffFrom, DiffOptions, DistanceFn, ImageState,
    LockDiff, NodeDiff, NodeState,
};
pub use errors::{Error, LockfileProblem, Problems};
pub use execute::ExecutorKind;
pub use exit::ExitCode;
pub use gc::{gc, GcOptions, GcResult};
pub use image::{export_image, platform, ImageRef};
pub use layout::Layout;
pub use load::{load, Project};
pub use lockfiles::{
    all_lockfiles, lockfiles_of, newest_lockfile, previous_lockfile, read_lockfile,
};
pub use notify::{notify, EventComponent, EventKind, NotifyEvent, EVENT_FORMAT};
pub use pin::{pin_all, Pinned};
pub use plan::{
    plan, InputChange, Plan, PlanNode, PlanOptions, PlanState, Reason, ReasonKind, RootCause,
    SourcePoint, Why, WhyNode,
};
pub use promote::{
    promote, PinField, PromoteOptions, PromoteReport, PromotedSource, Refusal, NEEDS_APPROVAL,
};
pub use provenance::Difference;
pub use publish::{cleanup_containers, PublishOptions, PushedImage, TestReport, TestStatus};
pub use reapi::RemoteRun;
pub use release::{
    changelog, prepend_section, release_plan, release_tag, BranchMove, ChangelogWrite,
    ComponentRelease, Conflict, ReleaseCommit, ReleaseOptions, ReleasePlan, ReleaseRefusal,
    ReleaseStatus, TagAction, TagOutcome, TagReport,
};
pub use remote::{RemoteMode, RemoteOptions, RemoteReport};
pub use replay::{ReplayOptions, ReplayReport};
pub use short::{short_digest, short_sha};
pub use sign::{
    keygen, verify, AttestationVerdict, ImageVerdict, KeyPair, Signed, Verdict, VerifyOptions,
    VerifyReport, VerifyTarget,
};
pub use worker::{worker, WorkerEvent, WorkerOptions};
