//! A property test over mutated lockfiles (issue #21): a real lockfile of a small build,
//! mutated (cut short, lines dropped, repeated, swapped or re-indented, values replaced
//! by hostile ones), goes through `lock diff` both ways, `plan --against` and
//! `build --lock --check`, the CLI's own entry point. Whatever the mutation, nothing
//! panics, every failure is an error with an exit code of the table (1, 2 or 3) and a
//! message, and a failed replay writes no lockfile.
//!
//! Deterministic and bounded: a fixed seed and a fixed number of cases (CI runs it as an
//! ordinary test, in well under a minute on two cores).

use std::fs;
use std::path::Path;

use cascade_tests::{Run, TestProject};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const CASES: u32 = 512;
const SEED: [u8; 32] = *b"cascade #21: mutated lockfiles!!";

/// core → app (app has an image), built once.
fn project() -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 core: { repo: ../../repos/core, ref: develop }\n\
         \x20 app:  { repo: ../../repos/app,  ref: develop }\n",
    );
    p.write(
        "recipes/core.yaml",
        "inputs: []\nrunner: { host: { tools: [sh, mkdir] } }\nsteps:\n  - name: make\n    run: mkdir -p out && echo core > out/out.txt\noutputs: [out/out.txt]\n",
    );
    p.write(
        "recipes/app.yaml",
        "inputs: [core]\nrunner: { host: { tools: [sh, cat, mkdir] } }\nsteps:\n  - name: make\n    run: mkdir -p out && cat inputs/core/out/out.txt > out/out.txt\noutputs: [out/out.txt]\nimage:\n  base: scratch\n  layers: [{ from: out/out.txt, to: /srv/out.txt }]\n",
    );
    for name in ["core", "app"] {
        let data = format!("{name} data\n");
        p.commit(name, "develop", &[("data.txt", Some(&data))], "initial");
    }
    p
}

/// Values a hand, a bad disk or an attacker may leave in a lockfile.
const HOSTILE: &[&str] = &[
    "",
    "~",
    "é",
    "\"ééééééééééééééééééééééééééééééééééééééééé\"",
    "0000000000000000000000000000000000000000",
    "ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ",
    "blake3:zzzz",
    "blake3:0000000000000000000000000000000000000000000000000000000000000000",
    "sha256:é",
    "[]",
    "{}",
    "*a",
    "&a x",
    "!!binary AAAA",
    "\"\\u0000\"",
    "-1",
    "99999999999999999999999",
    "cascade-lock/9",
    "../../../etc/passwd",
    "{ a: [ b: { c",
];

#[derive(Clone, Debug)]
enum Mutation {
    /// Cut at this byte (rounded down to a character boundary).
    Truncate(usize),
    DropLine(usize),
    RepeatLine(usize),
    SwapLines(usize, usize),
    /// Add or remove two spaces of indentation.
    Indent(usize, bool),
    /// The value after `: ` (or the whole line) becomes a hostile one.
    Value(usize, usize),
    /// Arbitrary text inserted at a byte.
    Insert(usize, String),
    /// The value keeps its shape (a commit id stays 40 hex digits, a digest stays a
    /// digest) but changes, or a plain value becomes other text: the file still reads,
    /// and the commands' own code meets it.
    Reshape(usize, u64, String),
    /// A mapping key (a node, an input, an artifact) renamed.
    RenameKey(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => any::<usize>().prop_map(Mutation::DropLine),
        1 => any::<usize>().prop_map(Mutation::RepeatLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(a, b)| Mutation::Indent(a, b)),
        1 => (any::<usize>(), 0..HOSTILE.len()).prop_map(|(a, b)| Mutation::Value(a, b)),
        1 => (any::<usize>(), "[ -~é\n:{}\\[\\]]{0,12}").prop_map(|(a, s)| Mutation::Insert(a, s)),
        8 => (any::<usize>(), any::<u64>(), "[a-z0-9./_-]{0,12}")
            .prop_map(|(a, h, s)| Mutation::Reshape(a, h, s)),
        4 => (any::<usize>(), "[a-z][a-z0-9_-]{0,8}").prop_map(|(a, s)| Mutation::RenameKey(a, s)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len().max(1);
    let boundary = |at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match m {
        Mutation::Truncate(at) => return text[..boundary(*at)].to_string(),
        Mutation::Insert(at, s) => {
            let at = boundary(*at);
            return format!("{}{s}{}", &text[..at], &text[at..]);
        }
        Mutation::DropLine(i) => {
            lines.remove(i % n);
        }
        Mutation::RepeatLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
        Mutation::Indent(i, more) => {
            let l = &mut lines[i % n];
            *l = if *more {
                format!("  {l}")
            } else {
                l.strip_prefix("  ").unwrap_or(l).to_string()
            };
        }
        Mutation::Reshape(i, h, plain) => {
            let l = &mut lines[i % n];
            if let Some((k, v)) = l.split_once(": ") {
                let hex = |len: usize| -> String {
                    let x = blake3::hash(&h.to_le_bytes()).to_hex();
                    x.chars().cycle().take(len).collect()
                };
                let new = if let Some(d) = v.strip_prefix("blake3:") {
                    format!("blake3:{}", hex(d.len()))
                } else if let Some(d) = v.strip_prefix("sha256:") {
                    format!("sha256:{}", hex(d.len()))
                } else if v.len() == 40 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    hex(40)
                } else if k.trim() == "node_count" {
                    (h % 4).to_string()
                } else {
                    plain.clone()
                };
                *l = format!("{k}: {new}");
            }
        }
        Mutation::RenameKey(i, name) => {
            let l = &mut lines[i % n];
            if let Some((k, v)) = l.split_once(':') {
                let indent = k.len() - k.trim_start().len();
                if indent > 0 {
                    *l = format!("{}{name}:{v}", " ".repeat(indent));
                }
            }
        }
        Mutation::Value(i, v) => {
            let l = &mut lines[i % n];
            *l = match l.split_once(": ") {
                Some((k, _)) => format!("{k}: {}", HOSTILE[*v]),
                None => HOSTILE[*v].to_string(),
            };
        }
    }
    lines.join("\n") + "\n"
}

/// A run that failed did so as an error of the table, said on stderr.
fn proper(what: &str, r: &Run) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(r.code, 0..=3),
        "{what}: exit {}\n{}",
        r.code,
        r.stderr
    );
    if r.code != 0 {
        prop_assert!(
            !r.stderr.trim().is_empty(),
            "{what}: exit {} in silence",
            r.code
        );
    }
    Ok(())
}

#[test]
fn mutated_lockfiles_are_errors_never_panics() {
    let p = project();
    let built = p.build("test", 0);
    let good = p.root.join(built.json()["lockfile"].as_str().unwrap());
    let text = fs::read_to_string(&good).unwrap();
    let bad = p.root.join("mutated.yaml");
    let (good_s, bad_s) = (path(&good), path(&bad));

    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &SEED);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = proptest::collection::vec(mutation(), 1..4);
    // How many mutated files were read and went on into the commands' own code.
    let reached = std::cell::Cell::new([0u32; 3]);
    let outcome = runner.run(&strategy, |ms| {
        let mutated = ms.iter().fold(text.clone(), |t, m| apply(&t, m));
        fs::write(&bad, &mutated).unwrap();
        let mut n = reached.get();
        let diff = p.run(&["lock", "diff", &bad_s, &good_s]);
        proper("lock diff", &diff)?;
        proper(
            "lock diff",
            &p.run(&["lock", "diff", &good_s, &bad_s, "--json"]),
        )?;
        let plan = p.run(&["plan", "--env", "test", "--against", &bad_s]);
        proper("plan --against", &plan)?;
        let before = p.lockfiles();
        let r = p.run(&["build", "--lock", &bad_s, "--check"]);
        proper("build --lock --check", &r)?;
        for (i, run) in [&diff, &plan, &r].into_iter().enumerate() {
            n[i] += u32::from(!run.stderr.contains("not a valid lockfile"));
        }
        reached.set(n);
        if r.code != 0 {
            prop_assert_eq!(p.lockfiles(), before, "a failed replay wrote a lockfile");
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    // The test means something only if many mutations get past reading.
    let [diff, plan, replay] = reached.get();
    eprintln!("past read: lock diff {diff}, plan {plan}, build --lock {replay} of {CASES}");
    assert!(
        diff.min(plan).min(replay) >= CASES / 10,
        "{:?}",
        reached.get()
    );
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
