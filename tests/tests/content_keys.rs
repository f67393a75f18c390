//! Keys by content (key format 2): a commit rebuilds only the components whose exported
//! tree it changed, or that stamp the commit. On temporary repositories, through the
//! real sandbox.

use cascade_tests::{Run, TestProject};

/// A step that records what it saw: the files of its source, the stamps in its
/// environment and `SOURCE_DATE_EPOCH`.
fn recipe(inputs: &[&str], extra: &str) -> String {
    let cats: String = inputs
        .iter()
        .map(|i| format!(" inputs/{i}/out/files"))
        .collect();
    format!(
        "inputs: [{}]\n\
         runner: {{ host: {{ tools: [sh, mkdir, cat, find, sort] }} }}\n\
         {extra}\
         steps:\n  - name: make\n    run: |\n\
         \x20     mkdir -p out\n\
         \x20     find . -path ./inputs -prune -o -path ./out -prune -o -type f -print | sort > out/files\n\
         \x20     cat{cats} /dev/null >> out/files\n\
         \x20     echo \"commit=${{CASCADE_COMMIT-unset}} version=${{CASCADE_VERSION-unset}} time=${{CASCADE_COMMIT_TIME-unset}}\" > out/stamps\n\
         \x20     echo \"$SOURCE_DATE_EPOCH\" > out/epoch\n\
         outputs: [out]\n",
        inputs.join(", ")
    )
}

fn statuses(r: &Run) -> Vec<(String, String)> {
    r.statuses()
}

fn status_of(r: &Run, node: &str) -> String {
    r.node(node)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn plan(p: &TestProject) -> Run {
    let r = p.run(&["plan", "--env", "test", "--json"]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn messages(r: &Run, node: &str) -> Vec<String> {
    r.node(node)["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["message"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Two components in sub-directories of one repository (`ui`: `web/`, `admin/`), and
/// `site`, which takes `web` as an input, in its own. `admin` has an image.
fn monorepo() -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 web:   { repo: ../../repos/ui, ref: main, dir: web, version_tags: \"web-v{version}\" }\n\
         \x20 admin: { repo: ../../repos/ui, ref: main, dir: admin, version_tags: \"admin-v{version}\" }\n\
         \x20 site:  { repo: ../../repos/site, ref: main }\n",
    );
    p.write("recipes/web.yaml", &recipe(&[], ""));
    p.write(
        "recipes/admin.yaml",
        &format!(
            "{}image:\n  base: scratch\n  layers:\n    - {{ from: out, to: /srv/admin }}\n",
            recipe(&[], "")
        ),
    );
    p.write("recipes/site.yaml", &recipe(&["web"], ""));
    let first = p.commit(
        "ui",
        "main",
        &[
            ("web/web.c", Some("int web;\n")),
            ("admin/admin.c", Some("int admin;\n")),
            ("README.md", Some("ui\n")),
        ],
        "initial",
    );
    p.tag("ui", "web-v1.2.0", &first);
    p.tag("ui", "admin-v0.3.0", &first);
    p.commit(
        "site",
        "main",
        &[("site.c", Some("int site;\n"))],
        "initial",
    );
    p
}

#[test]
fn a_commit_to_one_sub_directory_rebuilds_only_that_component_and_its_dependents() {
    let mut p = monorepo();
    let first = p.build("test", 0);
    assert!(
        statuses(&first).iter().all(|(_, s)| s == "built"),
        "{:?}",
        statuses(&first)
    );
    // Each component versions by its own tags.
    assert_eq!(first.node("web")["version"], "1.2.0");
    assert_eq!(first.node("admin")["version"], "0.3.0");
    let admin_image = first.node("admin")["image"]["digest"].clone();
    assert!(admin_image.is_string(), "{}", first.stdout);
    let lock = std::fs::read_to_string(&p.lockfiles()[0]).unwrap();
    assert!(lock.starts_with("format: cascade-lock/4\n"), "{lock}");

    // Only web/ changes.
    p.commit(
        "ui",
        "main",
        &[("web/web.c", Some("int web = 2;\n"))],
        "web: two",
    );
    let planned = plan(&p);
    assert_eq!(planned.node("web")["state"], "rebuild");
    assert_eq!(planned.node("site")["state"], "pending");
    assert_eq!(planned.node("admin")["state"], "cached");
    let web = messages(&planned, "web");
    assert!(
        web.iter().any(|m| m.starts_with("source web: tree ")
            && m.contains("main ")
            && m.ends_with("(1 commit)")),
        "{web:?}"
    );
    assert_eq!(
        messages(&planned, "admin"),
        [format!(
            "source admin: main {} → {} (1 commit), commit moved, tree unchanged",
            &first.node("admin")["commit"].as_str().unwrap()[..7],
            &planned.node("admin")["commit"].as_str().unwrap()[..7],
        )]
    );

    let second = p.build("test", 0);
    assert_eq!(status_of(&second, "web"), "built");
    assert_eq!(status_of(&second, "site"), "built");
    assert_eq!(status_of(&second, "admin"), "cached");
    assert_eq!(second.node("admin")["image"]["digest"], admin_image);
    assert_eq!(
        second.node("admin")["output"],
        first.node("admin")["output"]
    );
    // The version moved with the repository (a commit since admin's tag) but does not
    // reach an unstamped key.
    assert_eq!(second.node("admin")["version"], "0.3.1-dev.1");

    // A README at the root touches neither sub-directory: nothing is built.
    p.commit("ui", "main", &[("README.md", Some("ui, again\n"))], "docs");
    let third = p.build("test", 0);
    assert!(
        statuses(&third).iter().all(|(_, s)| s == "cached"),
        "{:?}",
        statuses(&third)
    );
}

/// `SOURCE_DATE_EPOCH` is the time of the newest commit that changed the exported
/// tree, so an image is the same at a later commit that did not touch it.
#[test]
fn the_epoch_is_when_the_exported_tree_last_changed() {
    let mut p = monorepo();
    let first = p.build("test", 0);
    let epoch = p.output_file(&first, "admin", "out/epoch");
    // TestProject's clock: the first commit is 2026-01-01T00:00:00Z, one hour apart.
    assert_eq!(epoch.trim(), "1767225600");
    p.commit(
        "ui",
        "main",
        &[("web/web.c", Some("int web = 3;\n"))],
        "web",
    );
    p.commit(
        "ui",
        "main",
        &[("admin/admin.c", Some("int admin = 2;\n"))],
        "admin",
    );
    let second = p.build("test", 0);
    assert_eq!(status_of(&second, "admin"), "built");
    // ui's commits: initial (t0), site's initial (t0+1h, another repo), web (t0+2h),
    // admin (t0+3h).
    let admin = p.output_file(&second, "admin", "out/epoch");
    assert_eq!(admin.trim(), (1767225600 + 3 * 3600).to_string());
    let web = p.output_file(&second, "web", "out/epoch");
    assert_eq!(web.trim(), (1767225600 + 2 * 3600).to_string());
}

/// One repository with sources and docs; `lib` keeps only `src/**` and the Makefile,
/// minus markdown; `stamped` keeps the same files and stamps the commit.
fn filtered() -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        "name: test\nmode: branch\nsources:\n\
         \x20 lib:     { repo: ../../repos/lib, ref: main }\n\
         \x20 stamped: { repo: ../../repos/lib, ref: main }\n",
    );
    let filter = "source:\n  include: [\"src/**\", Makefile]\n  exclude: [\"**/*.md\"]\n";
    p.write("recipes/lib.yaml", &recipe(&[], filter));
    p.write(
        "recipes/stamped.yaml",
        &recipe(&[], &format!("{filter}stamp: [commit]\n")),
    );
    p.commit(
        "lib",
        "main",
        &[
            ("src/lib.c", Some("int lib;\n")),
            ("src/NOTES.md", Some("notes\n")),
            ("Makefile", Some("all:\n")),
            ("README.md", Some("lib\n")),
            ("docs/guide.txt", Some("guide\n")),
        ],
        "initial",
    );
    p
}

#[test]
fn a_filtered_source_exports_and_keys_only_its_files() {
    let mut p = filtered();
    let first = p.build("test", 0);
    assert_eq!(
        p.output_file(&first, "lib", "out/files"),
        "./Makefile\n./src/lib.c\n"
    );
    // An unstamped step sees nothing of the commit; a stamped one sees what it asked.
    assert_eq!(
        p.output_file(&first, "lib", "out/stamps"),
        "commit=unset version=unset time=unset\n"
    );
    let commit = first.node("stamped")["commit"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        p.output_file(&first, "stamped", "out/stamps"),
        format!("commit={commit} version=unset time=unset\n")
    );

    // Only files the filter drops: the unstamped recipe is cached, the stamped one
    // rebuilds (its key covers the commit).
    p.commit(
        "lib",
        "main",
        &[
            ("README.md", Some("lib, documented\n")),
            ("src/NOTES.md", Some("more notes\n")),
            ("docs/guide.txt", Some("a longer guide\n")),
        ],
        "docs",
    );
    let planned = plan(&p);
    assert_eq!(planned.node("lib")["state"], "cached");
    assert_eq!(planned.node("stamped")["state"], "rebuild");
    let second = p.build("test", 0);
    assert_eq!(status_of(&second, "lib"), "cached");
    assert_eq!(status_of(&second, "stamped"), "built");
    assert_eq!(second.node("lib")["key"], first.node("lib")["key"]);

    // A kept file: both rebuild.
    p.commit(
        "lib",
        "main",
        &[("src/lib.c", Some("int lib = 1;\n"))],
        "code",
    );
    let third = p.build("test", 0);
    assert_eq!(status_of(&third, "lib"), "built");
    assert_eq!(status_of(&third, "stamped"), "built");
}

#[test]
fn a_filter_pattern_that_matches_nothing_is_a_warning() {
    let mut p = filtered();
    p.write(
        "recipes/lib.yaml",
        &recipe(&[], "source:\n  include: [\"src/**\", \"lib/**\"]\n"),
    );
    let r = p.build("test", 0);
    let warnings = r.node("lib")["warnings"].clone();
    assert_eq!(
        warnings,
        serde_json::json!([
            "the source filter pattern `lib/**` matches no file of the source tree"
        ]),
        "{}",
        r.stdout
    );
    // Nothing else was lost: the pattern that matches keeps its files.
    assert_eq!(
        p.output_file(&r, "lib", "out/files"),
        "./src/NOTES.md\n./src/lib.c\n"
    );
    let planned = plan(&p);
    assert_eq!(
        planned.json()["warnings"],
        serde_json::json!([
            "lib: the source filter pattern `lib/**` matches no file of the source tree"
        ])
    );
    let _ = p.commit("lib", "main", &[("lib/x.c", Some("x\n"))], "lib/");
    let again = p.build("test", 0);
    assert!(again.node("lib")["warnings"].is_null(), "{}", again.stdout);
}

/// A lockfile of key format 2 replays bit for bit, from scratch, with the filter and the
/// epoch it was built with, after the repository moved on.
#[test]
fn a_format_3_lockfile_replays_with_check() {
    let mut p = filtered();
    p.build("test", 0);
    let lock = p.lockfiles()[0].clone();
    p.commit(
        "lib",
        "main",
        &[("src/lib.c", Some("int lib = 9;\n"))],
        "later",
    );
    let r = p.run(&[
        "build",
        "--lock",
        lock.to_str().unwrap(),
        "--check",
        "--json",
    ]);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(
        r.json()["replay"]["mismatches"],
        serde_json::json!([]),
        "{}",
        r.stdout
    );
}

/// `lock diff` across key formats: every key differs, so it compares sources, outputs
/// and images, and says why the keys differ.
#[test]
fn lock_diff_compares_across_key_formats() {
    let p = filtered();
    p.build("test", 0);
    let new = p.lockfiles()[0].clone();
    // The same build as a lockfile of format 2 says it: keys of format 1.
    let text = std::fs::read_to_string(&new).unwrap();
    let old = p.root.join("old.yaml");
    // `cascade-lock/2` has no node count.
    let text = text.replacen("cascade-lock/4", "cascade-lock/2", 1);
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("node_count: "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&old, text).unwrap();
    let (o, n) = (old.display().to_string(), new.display().to_string());
    let r = p.run(&["lock", "diff", &o, &n, "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.json()["key_formats"], serde_json::json!([1, 2]));
    assert_eq!(r.json()["unchanged"], 2, "{}", r.stdout);
    let text = p.run(&["lock", "diff", &o, &n]);
    assert!(
        text.stdout.contains(
            "keys: format 1 → 2 (every key differs; sources, outputs and images compared)"
        ),
        "{}",
        text.stdout
    );
    // Lockfiles of one format say nothing of it.
    let r = p.run(&["lock", "diff", &n, &n, "--json"]);
    assert!(r.json()["key_formats"].is_null(), "{}", r.stdout);
}
