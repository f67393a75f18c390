//! Pins the canonical encoding: if this test changes, every node key in every store
//! and lockfile changes with it, so bump `KEY_VERSION` and say so in docs/encoding.md.
//! Format 1 is pinned as it always was: old lockfiles replay with it.

use std::collections::BTreeMap;

use cascade_core::{
    BlobDigest, ContentIdentity, Digest, KeyIngredients, OutputDigest, RunnerIdentity,
    SourceIdentity, SourceKey,
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
        source: SourceKey::Commit(SourceIdentity {
            repo: "../../target/ecosystem/ottochain.git".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree: "89abcdef0123456789abcdef0123456789abcdef".into(),
            dir: None,
            version: "0.6.1-dev.5".into(),
            commit_time: 1_700_000_000,
        }),
        inputs,
        runner: RunnerIdentity::Host { tools },
        env,
    }
}

/// The same node in key format 2, unstamped.
pub fn sample_v2() -> KeyIngredients {
    KeyIngredients {
        source: SourceKey::Content(ContentIdentity {
            content: "89abcdef0123456789abcdef0123456789abcdef".into(),
            epoch: 1_699_999_000,
            commit: None,
            version: None,
            commit_time: None,
        }),
        ..sample()
    }
}

fn v1(k: &mut KeyIngredients) -> &mut SourceIdentity {
    match &mut k.source {
        SourceKey::Commit(s) => s,
        SourceKey::Content(_) => unreachable!("sample() is format 1"),
    }
}

fn v2(k: &mut KeyIngredients) -> &mut ContentIdentity {
    match &mut k.source {
        SourceKey::Content(s) => s,
        SourceKey::Commit(_) => unreachable!("sample_v2() is format 2"),
    }
}

#[test]
fn key_test_vector_format_2() {
    let k = sample_v2();
    let bytes = k.encode();
    assert_eq!(&bytes[8..24], b"cascade/node-key");
    assert_eq!(&bytes[24..32], &2u64.to_le_bytes());
    assert_eq!(
        k.key().to_string(),
        "blake3:0dd09d70d18968ec6a969a984fdaf48d5f60bca7ad8ab03165354b1fcca66dad"
    );
    assert_eq!(KeyIngredients::decode(&bytes).unwrap(), k);
}

/// In format 2 the commit, the version and the commit time reach the key only when
/// stamped, each on its own; the content and the epoch always do.
#[test]
fn format_2_keys_content_epoch_and_stamps_only() {
    let base = sample_v2();
    let mut seen = std::collections::BTreeSet::new();
    seen.insert(base.key());
    let mut variants: Vec<(&str, KeyIngredients)> = Vec::new();
    let mut k = sample_v2();
    v2(&mut k).content = "2".repeat(40);
    variants.push(("content", k));
    let mut k = sample_v2();
    v2(&mut k).epoch += 1;
    variants.push(("epoch", k));
    let mut k = sample_v2();
    v2(&mut k).commit = Some("1".repeat(40));
    variants.push(("stamped commit", k));
    let mut k = sample_v2();
    v2(&mut k).version = Some("0.6.1".into());
    variants.push(("stamped version", k));
    let mut k = sample_v2();
    v2(&mut k).commit_time = Some(1_700_000_000);
    variants.push(("stamped time", k));
    let mut k = sample_v2();
    v2(&mut k).commit_time = Some(1_700_000_001);
    variants.push(("another stamped time", k));
    for (what, k) in variants {
        assert_eq!(KeyIngredients::decode(&k.encode()).unwrap(), k, "{what}");
        assert!(
            seen.insert(k.key()),
            "changing {what} did not change the key"
        );
    }
    // The same ingredients in format 1 give another key: formats never collide.
    assert_ne!(sample().key(), sample_v2().key());
    let bytes = sample_v2().encode();
    for n in 0..bytes.len() {
        assert!(
            KeyIngredients::decode(&bytes[..n]).is_err(),
            "truncated at {n}"
        );
    }
    let mut other = bytes.clone();
    other[24] = 3;
    assert!(
        KeyIngredients::decode(&other).is_err(),
        "an unknown format is refused"
    );
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
    v1(&mut k).repo = "other.git".into();
    variants.push(("repo", k));
    let mut k = sample();
    v1(&mut k).commit = "1".repeat(40);
    variants.push(("commit", k));
    let mut k = sample();
    v1(&mut k).tree = "2".repeat(40);
    variants.push(("tree", k));
    let mut k = sample();
    v1(&mut k).dir = Some("packages/sdk".into());
    variants.push(("dir", k));
    let mut k = sample();
    v1(&mut k).version = "0.6.1".into();
    variants.push(("version", k));
    let mut k = sample();
    v1(&mut k).commit_time += 1;
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
