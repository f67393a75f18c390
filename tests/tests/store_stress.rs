//! The store under injected corruption: every damaged entry is found by `cache verify`,
//! never used by a build, and rebuilt; a clean store has no false positives.

use std::fs;
use std::path::{Path, PathBuf};

use cascade_tests::TestProject;

const ENV: &str = "test";
/// Corruptions per run (about 10 s); CASCADE_STRESS_CORRUPTIONS raises it for a longer run.
const CORRUPTIONS: usize = 200;

fn project() -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 base: { repo: ../../repos/base, ref: develop }\n\
         \x20 app:  { repo: ../../repos/app,  ref: develop }\n",
    );
    let recipe = |inputs: &str, cat: &str| {
        format!(
            "inputs: [{inputs}]\nrunner: {{ host: {{ tools: [sh, cat, mkdir] }} }}\nsteps:\n  - name: make\n    run: |\n      mkdir -p out/a/b\n      cat {cat} data.txt > out/out.txt\n      cat data.txt data.txt > out/a/b/twice.txt\n      echo log line\noutputs: [out]\n"
        )
    };
    p.write("recipes/base.yaml", &recipe("", ""));
    p.write(
        "recipes/app.yaml",
        &recipe("base", "inputs/base/out/out.txt"),
    );
    for name in ["base", "app"] {
        let data = format!("{name} data\n");
        p.commit(name, "develop", &[("data.txt", Some(&data))], "initial");
    }
    p
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for kind in ["blobs", "trees", "keys", "actions"] {
        let mut stack = vec![dir.join(kind)];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// A small deterministic generator, so a failure names a reproducible round.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn every_injected_corruption_is_detected_never_used_and_rebuilt() {
    let p = project();
    let first = p.build(ENV, 0);
    let outputs = |r: &cascade_tests::Run| {
        (
            r.node("base")["output"].clone(),
            r.node("app")["output"].clone(),
        )
    };
    let expected = outputs(&first);
    let store = p.root.join("cache");
    let store_s = store.display().to_string();
    let verify = |repair: bool| {
        let mut args = vec!["cache", "verify", "--json", "--store", &store_s];
        if repair {
            args.push("--repair");
        }
        p.run(&args)
    };
    let clean = verify(false);
    assert_eq!(
        clean.code, 0,
        "no false positives on a clean store: {}",
        clean.stdout
    );

    let rounds: usize = std::env::var("CASCADE_STRESS_CORRUPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CORRUPTIONS);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..rounds {
        let all = files(&store);
        let victim = all[rng.below(all.len())].clone();
        let bytes = fs::read(&victim).unwrap();
        let how = rng.below(4);
        let mut damaged = vec![victim.clone()];
        match how {
            // A flipped bit.
            0 if !bytes.is_empty() => {
                let mut b = bytes.clone();
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
                fs::write(&victim, b).unwrap();
            }
            // Truncated.
            1 if bytes.len() > 1 => fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap(),
            // Swapped with another entry of other content.
            2 => {
                let other = all
                    .iter()
                    .find(|o| **o != victim && fs::read(o).unwrap() != bytes)
                    .cloned()
                    .unwrap();
                let theirs = fs::read(&other).unwrap();
                fs::write(&victim, &theirs).unwrap();
                fs::write(&other, &bytes).unwrap();
                damaged.push(other);
            }
            // Emptied.
            _ => fs::write(&victim, b"").unwrap(),
        }
        let found = verify(false);
        assert_eq!(found.code, 1, "round {round}: not detected: {victim:?}");
        let listed: Vec<String> = found.json()["corrupt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap().to_string())
            .collect();
        for d in &damaged {
            assert!(
                listed.contains(&d.display().to_string()),
                "round {round}: {d:?} not listed in {listed:?}"
            );
        }
        assert_eq!(
            listed.len(),
            damaged.len(),
            "round {round}: false positives"
        );
        // A build never uses a damaged entry: it rebuilds what it must and gets the same
        // outputs (the read that meets the damage removes it).
        let r = p.build(ENV, 0);
        assert_eq!(outputs(&r), expected, "round {round}");
        let after = verify(true);
        assert!(after.code == 0 || after.code == 1, "{}", after.stderr);
        let r = p.build(ENV, 0);
        assert_eq!(outputs(&r), expected, "round {round}");
        assert_eq!(
            verify(false).code,
            0,
            "round {round}: the store is whole again"
        );
    }
}

/// 8 builds at once on one store, for several rounds: all succeed, every key is built
/// exactly once (the others wait for its lock and find the result), none at the same
/// time as another build of it, and the store verifies clean.
#[test]
fn eight_concurrent_builds_on_one_store_build_each_key_once() {
    let mut p = TestProject::new();
    let marks_dir = cascade_tests::step_writable_dir();
    let marks = marks_dir.path().to_path_buf();
    let names = ["a", "b", "c", "d", "e", "f"];
    let mut env = String::from("name: test\nmode: branch\nsources:\n");
    for n in names {
        env.push_str(&format!("  {n}: {{ repo: ../../repos/{n}, ref: main }}\n"));
    }
    p.write("graph/environments/test.yaml", &env);
    for (i, n) in names.iter().enumerate() {
        // a ← b ← c, a ← d, and e, f on their own: some chains, some parallel work.
        let inputs = match *n {
            "b" => "a",
            "c" => "b",
            "d" => "a",
            _ => "",
        };
        p.write(
            &format!("recipes/{n}.yaml"),
            &format!(
                "inputs: [{inputs}]\nrunner: {{ host: {{ tools: [sh, mkdir, rmdir, sleep, cat] }} }}\nstamp: [commit]\nenv: {{ MARKS: {} }}\nsteps:\n  - name: make\n    run: |\n      mkdir \"$MARKS/running-$CASCADE_COMPONENT-$CASCADE_COMMIT\" || echo overlap >> \"$MARKS/overlaps\"\n      echo ran >> \"$MARKS/ran-$CASCADE_COMPONENT-$CASCADE_COMMIT\"\n      sleep 0.2\n      mkdir -p out\n      cat data.txt > out/x\n      rmdir \"$MARKS/running-$CASCADE_COMPONENT-$CASCADE_COMMIT\"\noutputs: [out]\n",
                marks.display()
            ),
        );
        let data = format!("{n} {i}\n");
        p.commit(n, "main", &[("data.txt", Some(&data))], "initial");
    }
    let store = p.root.join("cache");
    for round in 0..3 {
        if round > 0 {
            // Move two sources: their nodes and what depends on them rebuild.
            let data = format!("a round {round}\n");
            p.commit("a", "main", &[("data.txt", Some(&data))], "next");
            let data = format!("f round {round}\n");
            p.commit("f", "main", &[("data.txt", Some(&data))], "next");
        }
        let reports: Vec<cascade::BuildReport> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let (root, store) = (p.root.clone(), store.clone());
                    s.spawn(move || {
                        cascade::build(
                            &cascade::BuildOptions {
                                project: root,
                                env: ENV.into(),
                                store,
                                jobs: 2,
                                keep_going: false,
                                stamp: format!("20260101T00000{t}Z"),
                                tools: cascade_exec::Tools::from_env(),
                                publish: cascade::PublishOptions::default(),
                                replay: cascade::ReplayOptions::default(),
                                remote: cascade::RemoteOptions::default(),
                                executor: cascade::ExecutorKind::default(),
                                work_dir: None,
                                exiting: false,
                                sign: None,
                            },
                            &|_| {},
                        )
                        .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &reports {
            assert!(r.success(), "round {round}: {:?}", r.nodes);
        }
        let built: usize = reports.iter().map(|r| r.built).sum();
        // Later rounds: a and f moved; b and d take a as input; c is spared by early
        // cutoff (b's output does not depend on a's).
        let expected = if round == 0 { 6 } else { 4 };
        assert_eq!(
            built, expected,
            "round {round}: each changed key built once in all"
        );
    }
    assert!(
        !marks.join("overlaps").exists(),
        "a key was built twice at the same time"
    );
    // Steps run, per component, over the three rounds: exactly the builds counted above
    // (a and f move every round; b and d follow a; c and e only once).
    let mut runs: std::collections::BTreeMap<String, usize> = Default::default();
    for e in fs::read_dir(&marks).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if let Some(rest) = name.strip_prefix("ran-") {
            let comp = rest.split('-').next().unwrap().to_string();
            *runs.entry(comp).or_default() += fs::read_to_string(e.path()).unwrap().lines().count();
        }
    }
    let expected: std::collections::BTreeMap<String, usize> =
        [("a", 3), ("b", 3), ("c", 1), ("d", 3), ("e", 1), ("f", 3)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(runs, expected);
    let store_s = store.display().to_string();
    let v = p.run(&["cache", "verify", "--store", &store_s]);
    assert_eq!(v.code, 0, "{}", v.stdout);
}
