//! The bad-input corpus (issue #7): every directory under `tests/bad-input/` is a small
//! cascade project that is wrong in one way, plus a `case.yaml` saying what it tests,
//! which command to run and the exit code `docs/exit-codes.md` promises (see
//! `tests/bad-input/README.md`). Each case goes through the whole CLI in-process: its
//! exit code is checked, again with `--json` (one JSON document, `error.exit_code`),
//! nothing may panic, a failure writes no lockfile, and what a user reads on stderr is an
//! insta snapshot (`snapshots/bad_input__<case>.snap`).
//!
//! Every case runs even when one fails; the test then lists all the failures.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use cascade_tests::{Run, TestProject};

/// At least this many cases (issue #7).
const MIN_CASES: usize = 30;

/// One `case.yaml`: a flat `key: value` file (one value per line; `edit` and `generate`
/// may repeat). Read by hand so the test needs no YAML library.
#[derive(Debug, Default)]
struct Case {
    name: String,
    dir: PathBuf,
    about: String,
    /// The arguments after `cascade`; `{root}` is the temp project's root.
    command: String,
    exit: i32,
    /// `build`: build `--env test` first (must succeed) and keep its lockfile as
    /// `<root>/lockfile.yaml`, after the edits.
    setup: Option<String>,
    /// `(node, field, value)`: in the lockfile's entry of `node`, the first line
    /// `field: …` gets `value` (`\n` in `value` starts a new line).
    edits: Vec<(String, String, String)>,
    /// `truncate: NODE`: the lockfile is cut just before `NODE`'s entry (after the edits),
    /// as a copy or a write interrupted exactly at a node boundary leaves it.
    truncate: Option<String>,
    /// `(kind, size, file)`: text appended to a file of the project (see `generate`).
    generate: Vec<(String, usize, String)>,
    /// A file (relative to the project root) that must not exist after the command.
    absent_file: Option<String>,
    /// `lock_recipe: NODE FILE`: after the setup build, `recipes/NODE.yaml` becomes the
    /// case's `FILE` and the lockfile's `recipe:` of `NODE` its digest: a lockfile made
    /// with a recipe this store never built (as one from another machine is), which the
    /// replay takes from today's `recipes/`.
    lock_recipe: Option<(String, String)>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bad-input")
}

fn parse_case(name: &str, dir: &Path) -> Case {
    let path = dir.join("case.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut c = Case {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        command: "build --env test".to_string(),
        exit: -1,
        ..Case::default()
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("{}:{}: not `key: value`", path.display(), n + 1));
        let words = |k: usize| -> Vec<String> {
            let w: Vec<String> = value.splitn(k, ' ').map(str::to_string).collect();
            assert_eq!(
                w.len(),
                k,
                "{}:{}: `{key}` needs {k} words",
                path.display(),
                n + 1
            );
            w
        };
        match key {
            "about" => c.about = value.to_string(),
            "command" => c.command = value.to_string(),
            "exit" => c.exit = value.parse().expect("exit code"),
            "setup" => c.setup = Some(value.to_string()),
            "edit" => {
                let w = words(3);
                c.edits
                    .push((w[0].clone(), w[1].clone(), w[2].replace("\\n", "\n")));
            }
            "generate" => {
                let w = words(3);
                c.generate
                    .push((w[0].clone(), w[1].parse().expect("size"), w[2].clone()));
            }
            "absent_file" => c.absent_file = Some(value.to_string()),
            "truncate" => c.truncate = Some(value.to_string()),
            "lock_recipe" => {
                let w = words(2);
                c.lock_recipe = Some((w[0].clone(), w[1].clone()));
            }
            other => panic!("{}:{}: unknown key `{other}`", path.display(), n + 1),
        }
    }
    assert!(!c.about.is_empty(), "{}: no `about:`", path.display());
    assert!(c.exit >= 0, "{}: no `exit:`", path.display());
    c
}

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = fs::read_dir(corpus_dir())
        .expect("tests/bad-input")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            parse_case(&name, &p)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Copies the case's project files (everything but `case.yaml`) into `to`, byte for byte.
fn copy_project(from: &Path, to: &Path, top: bool) {
    for e in fs::read_dir(from).expect("read case dir") {
        let e = e.expect("entry");
        let name = e.file_name();
        if top && (name == "case.yaml" || name == "README.md") {
            continue;
        }
        let dest = to.join(&name);
        if e.file_type().expect("file type").is_dir() {
            fs::create_dir_all(&dest).expect("mkdir");
            copy_project(&e.path(), &dest, false);
        } else {
            fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// Every repository an environment names as `../../repos/<name>` gets the same history:
/// `main` with one commit tagged `v1.0.0`, and `develop` one commit further (so branch
/// mode derives `1.0.1-dev.1` on `develop`). Fixed dates: fixed SHAs.
fn make_repos(p: &mut TestProject) {
    let mut names = BTreeSet::new();
    for e in fs::read_dir(p.root.join("graph/environments"))
        .into_iter()
        .flatten()
    {
        let bytes = fs::read(e.expect("entry").path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for part in text.split("../../repos/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    for name in names {
        let v1 = p.commit(
            &name,
            "main",
            &[("data.txt", Some(&format!("{name} 1\n")))],
            "feat: first",
        );
        p.tag(&name, "v1.0.0", &v1);
        p.commit(
            &name,
            "develop",
            &[("data.txt", Some(&format!("{name} 2\n")))],
            "feat: second",
        );
    }
}

/// Appends generated text to a file of the project: inputs too big to commit, or
/// clearer as a rule than as bytes.
fn generate(root: &Path, kind: &str, n: usize, file: &str) {
    let path = root.join(file);
    let mut text = fs::read(&path).unwrap_or_default();
    let add = match kind {
        // `inputs: [[[…]]]` on one line.
        "nest-one-line" => format!("inputs: {}{}\n", "[".repeat(n), "]".repeat(n)),
        // The same, one bracket per line (indented, as flow content in a block must be).
        "nest-lines" => format!("inputs:\n{}{}", " [\n".repeat(n), " ]\n".repeat(n)),
        // `a:` mappings, each one more space in.
        "nest-block" => (0..n).map(|i| format!("{}a:\n", " ".repeat(i))).collect(),
        // Comment lines up to `n` bytes in all.
        "big" => {
            let line = "# padding padding padding padding padding padding padding padding\n";
            let mut s = String::with_capacity(n + line.len());
            while text.len() + s.len() < n {
                s.push_str(line);
            }
            s
        }
        "long-line" => format!("env:\n  LONG: \"{}\"\n", "x".repeat(n)),
        // `n` unknown inputs, one per line.
        "many-inputs" => std::iter::once("inputs:\n".to_string())
            .chain((0..n).map(|i| format!("  - ghost{i}\n")))
            .collect(),
        // `lib` once as an anchor, then `n` aliases of it, one per line.
        "alias-flood" => std::iter::once("inputs:\n  - &a lib\n".to_string())
            .chain((0..n).map(|_| "  - *a\n".to_string()))
            .collect(),
        other => panic!("unknown generator `{other}`"),
    };
    text.extend_from_slice(add.as_bytes());
    fs::write(&path, text).expect("write generated file");
}

/// Makes the case's `file` the recipe of `node` and returns its digest, as a lockfile
/// records it.
fn lock_recipe(case: &Case, p: &TestProject, node: &str, file: &str) -> String {
    let text = fs::read_to_string(case.dir.join(file)).expect("the case's recipe");
    let rel = format!("recipes/{node}.yaml");
    fs::write(p.root.join(&rel), &text).expect("write the recipe");
    let mut db = cascade_manifest::SourceDb::new();
    let id = db.add(rel, text);
    let recipe = cascade_manifest::recipe_alone(&db, id, node)
        .unwrap_or_else(|| panic!("{file} is not a valid recipe of `{node}`"));
    recipe.digest().to_string()
}

/// Applies `(node, field, value)` edits to a lockfile's text.
fn edit_lockfile(text: &str, edits: &[(String, String, String)]) -> String {
    let mut text = text.to_string();
    for (node, field, value) in edits {
        let head = format!("\n  {node}:\n");
        let start = text
            .find(&head)
            .unwrap_or_else(|| panic!("no node `{node}` in:\n{text}"))
            + head.len();
        let mut at = start;
        let mut done = false;
        for line in text[start..].split_inclusive('\n') {
            let indent = line.len() - line.trim_start().len();
            if indent <= 2 {
                break;
            }
            if let Some(rest) = line.trim_start().strip_prefix(&format!("{field}:")) {
                let value_at = at + line.len() - rest.len();
                let end = at + line.trim_end_matches('\n').len();
                text.replace_range(value_at..end, &format!(" {value}"));
                done = true;
                break;
            }
            at += line.len();
        }
        assert!(done, "no `{field}:` in node `{node}` of:\n{text}");
    }
    text
}

fn args(case: &Case, root: &Path) -> Vec<String> {
    case.command
        .split_whitespace()
        .map(|w| w.replace("{root}", &root.display().to_string()))
        .collect()
}

fn run(p: &TestProject, args: &[String]) -> Run {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    p.run(&a)
}

/// A regex for `path` as miette may print it in a help text: wrapped at width 100, so
/// with a line break and indentation anywhere inside. (`TestProject::redact` catches the
/// path only when it is on one line.) The wrapping itself still depends on the temp
/// directory's length, which is `/tmp/.tmpXXXXXX` on Linux machines and CI.
fn wrapped(path: &str) -> String {
    path.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect::<Vec<_>>()
        .join("(?:\n *)?")
}

/// What the snapshot shows: the case, the command, the exit code and stderr.
fn rendered(case: &Case, p: &TestProject, r: &Run) -> String {
    format!(
        "about: {}\ncommand: cascade {}\nexit: {}\n--- stderr\n{}",
        case.about,
        p.redact(&args(case, &p.root).join(" ")),
        r.code,
        p.redact(&r.stderr)
    )
}

fn check(case: &Case) {
    let mut p = TestProject::new();
    copy_project(&case.dir, &p.root, true);
    make_repos(&mut p);
    for (kind, n, file) in &case.generate {
        generate(&p.root, kind, *n, file);
    }
    if let Some(setup) = &case.setup {
        assert_eq!(setup, "build", "unknown setup `{setup}`");
        let r = p.run(&["build", "--env", "test"]);
        assert_eq!(r.code, 0, "setup build failed:\n{}", r.stderr);
        let lock = p
            .lockfiles()
            .pop()
            .expect("the setup build wrote a lockfile");
        let text = fs::read_to_string(lock).expect("read lockfile");
        let mut edits = case.edits.clone();
        if let Some((node, file)) = &case.lock_recipe {
            edits.push((
                node.clone(),
                "recipe".into(),
                lock_recipe(case, &p, node, file),
            ));
        }
        let mut text = edit_lockfile(&text, &edits);
        if let Some(node) = &case.truncate {
            let at = text
                .find(&format!("\n  {node}:\n"))
                .unwrap_or_else(|| panic!("no node `{node}` in:\n{text}"));
            text.truncate(at + 1);
        }
        fs::write(p.root.join("lockfile.yaml"), text).expect("write lockfile.yaml");
    } else {
        assert!(case.edits.is_empty(), "`edit:` needs `setup: build`");
        assert!(case.truncate.is_none(), "`truncate:` needs `setup: build`");
        assert!(
            case.lock_recipe.is_none(),
            "`lock_recipe:` needs `setup: build`"
        );
    }
    let before = p.lockfiles();
    let args = args(case, &p.root);

    let r = run(&p, &args);
    let shown = rendered(case, &p, &r);
    assert!(!r.stderr.contains("panicked"), "a panic:\n{shown}");
    assert_eq!(r.code, case.exit, "exit code:\n{shown}");
    if r.code != 0 {
        assert_eq!(p.lockfiles(), before, "a failure wrote a lockfile");
    }
    if let Some(f) = &case.absent_file {
        assert!(!p.root.join(f).exists(), "`{f}` was written:\n{shown}");
    }

    // The same with --json: one JSON document on stdout, the same exit code.
    let mut json_args = args.clone();
    json_args.push("--json".into());
    let j = run(&p, &json_args);
    assert_eq!(j.code, case.exit, "exit code with --json:\n{}", j.stderr);
    let doc = j.json();
    match case.exit {
        2 | 3 => assert_eq!(doc["error"]["exit_code"], case.exit, "{doc}"),
        1 => assert!(
            j.with_status("failed").len() == 1,
            "one failed node expected: {doc}"
        ),
        _ => assert!(doc["error"].is_null(), "{doc}"),
    }

    let root = wrapped(&p.root.display().to_string());
    insta::with_settings!({
        description => case.about.clone(),
        omit_expression => true,
        filters => vec![
            (root.as_str(), "[ROOT]"),
            (r"blake3:[0-9a-f]{64}", "blake3:[DIGEST]"),
            (r"blake3:[0-9a-f]{12}…", "blake3:[DIGEST]…"),
            (r"\b\d{8}T\d{6}Z\b", "[STAMP]"),
            (r"\b\d+\.\ds\b", "[TIME]"),
            (r"/build-[A-Za-z0-9]{6}/", "/build-[RANDOM]/"),
        ],
    }, {
        insta::assert_snapshot!(case.name.as_str(), shown);
    });
}

#[test]
fn every_bad_input_case_gives_its_exit_code_and_diagnostic() {
    let cases = cases();
    assert!(
        cases.len() >= MIN_CASES,
        "only {} cases in tests/bad-input",
        cases.len()
    );
    let mut failed = Vec::new();
    for case in &cases {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(case))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", case.name));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n\n")
    );
}

/// The corpus holds no stray snapshot: each `bad_input__*.snap` has its case.
#[test]
fn every_snapshot_has_a_case() {
    let names: BTreeSet<String> = cases().into_iter().map(|c| c.name).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    for e in fs::read_dir(dir).expect("snapshots").flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = f
            .strip_prefix("bad_input__")
            .and_then(|s| s.strip_suffix(".snap"))
        {
            assert!(names.contains(stem), "{f} has no case in tests/bad-input");
        }
    }
}
