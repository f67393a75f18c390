//! SLSA provenance: the in-toto Statement v1 with a SLSA provenance v1 predicate that
//! `build --push --sign` makes for each pushed image, and the comparison `verify
//! LOCKFILE` makes between an attested statement and the lockfile's node.
//!
//! The statement is a function of the node as the lockfile records it (plus the
//! recipe's env names and the base image): no clock, no host name, no path, so the
//! same build gives the same bytes. Its keys are sorted (struct fields in sorted order,
//! `BTreeMap`s), one line of JSON.
//!
//! The lockfile is written after the images are signed, so its digest cannot be in
//! the statement. What makes an attestation belong to a lockfile is instead that it
//! attests exactly what the lockfile records for the node: the image, the source's
//! repository, commit and tree, the recipe and runner digests, each input's output
//! digest, the node key and the output digest ([`compare`]).

use std::collections::BTreeMap;

use cascade_lock::LockNode;

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// `buildDefinition.buildType`: what cascade's parameters mean, versioned.
pub const BUILD_TYPE: &str = "https://cascade.dev/build/v1";

/// An in-toto statement (fields in sorted order: the bytes are deterministic).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub predicate: Provenance,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub subject: Vec<ResourceDescriptor>,
}

/// The SLSA provenance v1 predicate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub build_definition: BuildDefinition,
    pub run_details: RunDetails,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    pub build_type: String,
    pub external_parameters: ExternalParameters,
    pub internal_parameters: InternalParameters,
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// What the user chose: the environment and the component.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExternalParameters {
    pub component: String,
    pub environment: String,
}

/// What cascade derived: digests as the lockfile prints them (`blake3:<hex>`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InternalParameters {
    /// The recipe's declared environment variables, names only (values may be secret).
    pub env: Vec<String>,
    /// The node key.
    pub key: String,
    /// The normalized recipe's digest.
    pub recipe: String,
    /// The runner identity's digest.
    pub runner: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunDetails {
    pub builder: Builder,
    /// The node's output digest (`name: output`).
    pub byproducts: Vec<ResourceDescriptor>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Builder {
    pub id: String,
}

/// SLSA's ResourceDescriptor, the fields cascade writes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub digest: BTreeMap<String, String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// `builder.id`: cascade and its version.
pub fn builder_id() -> String {
    format!("https://cascade.dev/cascade@{}", env!("CARGO_PKG_VERSION"))
}

/// `{"blake3": hex}` from `blake3:<hex>`, `{"sha256": hex}` from `sha256:<hex>`.
fn digest_set(printed: &str) -> BTreeMap<String, String> {
    let (algo, hex) = printed.split_once(':').unwrap_or(("unknown", printed));
    BTreeMap::from([(algo.to_string(), hex.to_string())])
}

/// The base image an image was assembled on, when it has one: a reference and its
/// manifest digest (`sha256:…`).
#[derive(Clone, Debug)]
pub(crate) struct BaseImage {
    pub uri: String,
    pub digest: String,
}

/// The statement for node `name` of `environment`, whose image is `image` (`reference`,
/// `sha256:` digest), as `lock` records it.
pub(crate) fn statement(
    environment: &str,
    name: &str,
    lock: &LockNode,
    reference: &str,
    image_digest: &str,
    env_names: Vec<String>,
    base: Option<&BaseImage>,
) -> Statement {
    let s = &lock.source;
    let mut annotations = BTreeMap::from([
        ("tree".to_string(), s.tree.clone()),
        ("version".to_string(), s.version.clone()),
    ]);
    if let Some(r) = &s.r#ref {
        annotations.insert("ref".into(), r.clone());
    }
    if let Some(d) = &s.dir {
        annotations.insert("dir".into(), d.clone());
    }
    let mut deps = vec![ResourceDescriptor {
        annotations,
        digest: BTreeMap::from([("gitCommit".to_string(), s.commit.clone())]),
        name: "source".into(),
        uri: Some(s.repo.clone()),
    }];
    for (input, digest) in &lock.inputs {
        deps.push(ResourceDescriptor {
            annotations: BTreeMap::new(),
            digest: digest_set(&digest.to_string()),
            name: format!("input:{input}"),
            uri: None,
        });
    }
    if let Some(b) = base {
        deps.push(ResourceDescriptor {
            annotations: BTreeMap::new(),
            digest: digest_set(&b.digest),
            name: "base-image".into(),
            uri: Some(b.uri.clone()),
        });
    }
    Statement {
        statement_type: STATEMENT_TYPE.into(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.into(),
                external_parameters: ExternalParameters {
                    component: name.into(),
                    environment: environment.into(),
                },
                internal_parameters: InternalParameters {
                    env: env_names,
                    key: lock.key.to_string(),
                    recipe: lock.recipe.to_string(),
                    runner: lock.runner.to_string(),
                },
                resolved_dependencies: deps,
            },
            run_details: RunDetails {
                builder: Builder { id: builder_id() },
                byproducts: vec![ResourceDescriptor {
                    annotations: BTreeMap::new(),
                    digest: digest_set(&lock.output.to_string()),
                    name: "output".into(),
                    uri: None,
                }],
            },
        },
        predicate_type: PREDICATE_TYPE.into(),
        subject: vec![ResourceDescriptor {
            annotations: BTreeMap::new(),
            digest: digest_set(image_digest),
            name: reference.into(),
            uri: None,
        }],
    }
}

impl Statement {
    /// The statement's bytes: one line of JSON, keys sorted.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, vectors and string maps always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The subject's `sha256:` digest, if it has exactly one subject with one.
    pub fn subject_digest(&self) -> Option<String> {
        match self.subject.as_slice() {
            [s] => s.digest.get("sha256").map(|h| format!("sha256:{h}")),
            _ => None,
        }
    }
}

/// One way an attested statement differs from what is expected of it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// What differs (`subject`, `source`, `input:lib`, `key`…).
    pub field: String,
    /// The attested value (JSON), `null` when the statement lacks it.
    pub attested: String,
    /// The expected value (JSON), `null` when it should not be there.
    pub expected: String,
}

/// Compares an attested statement with the one `expected` says the node must have.
/// The recipe's env names and the base image are not recorded in the lockfile, so they
/// are not compared.
pub(crate) fn compare(attested: &Statement, expected: &Statement) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut check = |field: &str, a: String, e: String| {
        if a != e {
            out.push(Difference {
                field: field.into(),
                attested: a,
                expected: e,
            });
        }
    };
    check(
        "_type/predicateType",
        json(&(&attested.statement_type, &attested.predicate_type)),
        json(&(&expected.statement_type, &expected.predicate_type)),
    );
    check("subject", json(&attested.subject), json(&expected.subject));
    let (a, e) = (
        &attested.predicate.build_definition,
        &expected.predicate.build_definition,
    );
    check("buildType", json(&a.build_type), json(&e.build_type));
    check(
        "externalParameters",
        json(&a.external_parameters),
        json(&e.external_parameters),
    );
    let (ai, ei) = (&a.internal_parameters, &e.internal_parameters);
    check("key", json(&ai.key), json(&ei.key));
    check("recipe", json(&ai.recipe), json(&ei.recipe));
    check("runner", json(&ai.runner), json(&ei.runner));
    // Sources and inputs, by name; the base image is not in the lockfile.
    let by_name = |deps: &[ResourceDescriptor]| -> BTreeMap<String, String> {
        deps.iter()
            .filter(|d| d.name != "base-image")
            .map(|d| (d.name.clone(), json(d)))
            .collect()
    };
    let (ad, ed) = (
        by_name(&a.resolved_dependencies),
        by_name(&e.resolved_dependencies),
    );
    let names: std::collections::BTreeSet<&String> = ad.keys().chain(ed.keys()).collect();
    for n in names {
        let null = || "null".to_string();
        check(
            n,
            ad.get(n).cloned().unwrap_or_else(null),
            ed.get(n).cloned().unwrap_or_else(null),
        );
    }
    check(
        "byproducts",
        json(&attested.predicate.run_details.byproducts),
        json(&expected.predicate.run_details.byproducts),
    );
    out
}

/// JSON of anything serializable, for [`Difference`]s.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
