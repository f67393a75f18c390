//! Pins the canonical encoding: if this test changes, every node key in every store
//! and lockfile changes with it, so bump `KEY_VERSION` and say so in docs/encoding.md.

use std::collections::BTreeMap;

use cascade_core::{
    BlobDigest, Digest, KeyIngredients, OutputDigest, RunnerIdentity, SourceIdentity,
};

pub fn sample() -> KeyIngredients {
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "metakit".to_string(),
        OutputDigest(Digest::of(b"metakit-out")),
    );
    inputs.insert(
        "tessellation".to_string(),
        OutputDigest(Digest::of(b"tess-out")),
    );
    let mut tools = BTreeMap::new();
    tools.insert("cc".to_string(), BlobDigest(Digest::of(b"cc")));
    tools.insert("sh".to_string(), BlobDigest(Digest::of(b"sh")));
    let mut env = BTreeMap::new();
    env.insert("OPT".to_string(), "-O2".to_string());
    KeyIngredients {
        component: "ottochain".into(),
        recipe: Digest::of(b"recipe"),
        source: SourceIdentity {
            repo: "../../target/ecosystem/ottochain.git".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree: "89abcdef0123456789abcdef0123456789abcdef".into(),
            dir: None,
            version: "0.6.1-dev.5".into(),
            commit_time: 1_700_000_000,
        },
        inputs,
        runner: RunnerIdentity::Host { tools },
        env,
    }
}

#[test]
fn key_test_vector() {
    let k = sample();
    let bytes = k.encode();
    // The whole encoding is pinned by its digest; the first bytes by value, so a
    // change of header is obvious when it fails.
    assert_eq!(&bytes[..8], &16u64.to_le_bytes());
    assert_eq!(&bytes[8..24], b"cascade/node-key");
    assert_eq!(bytes.len(), 650, "encoding length changed");
    assert_eq!(
        k.key().to_string(),
        "blake3:3e82b793a1b1fd96b984e940de2245f09460271c00bd7284447b54e104d03189"
    );
    assert_eq!(KeyIngredients::decode(&bytes).unwrap(), k);
}

#[test]
fn every_ingredient_changes_the_key() {
    let base = sample().key();
    let mut variants: Vec<(&str, KeyIngredients)> = Vec::new();
    let mut k = sample();
    k.component = "metakit".into();
    variants.push(("component", k));
    let mut k = sample();
    k.recipe = Digest::of(b"other recipe");
    variants.push(("recipe", k));
    let mut k = sample();
    k.source.repo = "other.git".into();
    variants.push(("repo", k));
    let mut k = sample();
    k.source.commit = "1".repeat(40);
    variants.push(("commit", k));
    let mut k = sample();
    k.source.tree = "2".repeat(40);
    variants.push(("tree", k));
    let mut k = sample();
    k.source.dir = Some("packages/sdk".into());
    variants.push(("dir", k));
    let mut k = sample();
    k.source.version = "0.6.1".into();
    variants.push(("version", k));
    let mut k = sample();
    k.source.commit_time += 1;
    variants.push(("commit_time", k));
    let mut k = sample();
    k.inputs
        .insert("metakit".into(), OutputDigest(Digest::of(b"changed")));
    variants.push(("input digest", k));
    let mut k = sample();
    k.inputs.remove("metakit");
    variants.push(("input removed", k));
    let mut k = sample();
    if let RunnerIdentity::Host { tools } = &mut k.runner {
        tools.insert("cc".into(), BlobDigest(Digest::of(b"cc 13")));
    }
    variants.push(("tool digest", k));
    let mut k = sample();
    k.runner = RunnerIdentity::Container {
        image: format!("sha256:{}", "a".repeat(64)),
    };
    variants.push(("container runner", k));
    let mut k = sample();
    k.runner = RunnerIdentity::Container {
        image: format!("sha256:{}", "b".repeat(64)),
    };
    variants.push(("runner image", k));
    let mut k = sample();
    k.env.insert("OPT".into(), "-O3".into());
    variants.push(("env value", k));
    let mut k = sample();
    k.env.insert("EXTRA".into(), String::new());
    variants.push(("env added", k));
    let mut seen = std::collections::BTreeSet::new();
    seen.insert(base);
    for (what, k) in variants {
        assert!(
            seen.insert(k.key()),
            "changing {what} did not change the key"
        );
    }
}

/// A container runner is its image's digest; the host runner's encoding (and so every
/// host key, pinned above) is unchanged by the container variant.
#[test]
fn container_runners_round_trip() {
    let mut k = sample();
    k.runner = RunnerIdentity::Container {
        image: format!("sha256:{}", "c".repeat(64)),
    };
    let bytes = k.encode();
    assert_eq!(KeyIngredients::decode(&bytes).unwrap(), k);
    assert_ne!(k.runner.digest(), sample().runner.digest());
    for n in 0..bytes.len() {
        assert!(
            KeyIngredients::decode(&bytes[..n]).is_err(),
            "truncated at {n}"
        );
    }
}
