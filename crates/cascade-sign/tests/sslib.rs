//! The judge is a tool we did not write: securesystemslib (PyPI) verifies the DSSE
//! envelopes cascade-sign makes, with the public key in the form
//! `PublicKey::sslib_json` writes, and refuses a changed payload and another key.
//! Its virtualenv is `.ci/services/sslib.sh`'s (run here when missing); without Python or
//! PyPI this skips, except with `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use cascade_sign::dsse;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The virtualenv's python, after `.ci/services/sslib.sh` made sure it exists.
fn sslib_python() -> Option<PathBuf> {
    let state = std::env::var_os("CASCADE_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/cascade-services"));
    let ok = Command::new("bash")
        .arg(root().join(".ci/services/sslib.sh"))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "securesystemslib is required with CI=true (.ci/services/sslib.sh failed)"
        );
        eprintln!("skipping: securesystemslib is not available (.ci/services/sslib.sh)");
        return None;
    }
    Some(state.join("sslib-venv/bin/python"))
}

/// (success, stdout, stderr) of the judge on an envelope and a key file.
fn judge(python: &Path, envelope: &Path, key: &Path) -> (bool, String, String) {
    let o = Command::new(python)
        .arg(root().join("tests/judges/dsse_verify.py"))
        .args([envelope, key])
        .output()
        .expect("run python");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn securesystemslib_verifies_our_envelopes_and_refuses_a_changed_one() {
    let Some(python) = sslib_python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let key = cascade_sign::generate("t").expect("key");
    let other = cascade_sign::generate("o").expect("key");
    let body = br#"{"_type":"https://in-toto.io/Statement/v1","subject":[]}"#;
    let env = dsse::sign(&key, dsse::IN_TOTO_PAYLOAD_TYPE, body).expect("sign");
    let env_file = dir.path().join("env.json");
    std::fs::write(&env_file, env.to_bytes()).expect("write");
    let key_file = dir.path().join("key.json");
    std::fs::write(&key_file, key.public().sslib_json().expect("ed25519")).expect("write");
    let other_file = dir.path().join("other.json");
    std::fs::write(&other_file, other.public().sslib_json().expect("ed25519")).expect("write");

    let (ok, out, err) = judge(&python, &env_file, &key_file);
    assert!(ok, "securesystemslib refused our envelope: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["payload"]["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(v["payloadType"], dsse::IN_TOTO_PAYLOAD_TYPE);

    let (ok, _, _) = judge(&python, &env_file, &other_file);
    assert!(!ok, "securesystemslib accepted another key");

    let mut tampered = env.clone();
    let mut changed = body.to_vec();
    changed[10] ^= 1;
    tampered.payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&changed)
    };
    std::fs::write(&env_file, tampered.to_bytes()).expect("write");
    let (ok, _, _) = judge(&python, &env_file, &key_file);
    assert!(!ok, "securesystemslib accepted a changed payload");
}
