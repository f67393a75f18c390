//! The architecture invariants of ARCHITECTURE.md, checked against `cargo metadata`
//! and the sources, so that they stay true: every crate's dependencies (an allow-list,
//! so a new one is added on purpose), the layering of the workspace crates, no file
//! system or process access in the pure crates, no column formatting outside the CLI,
//! the `//!` headers and sections, and the links of the Markdown documentation.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Package name → its normal and build (non-dev) dependencies.
fn dependencies() -> BTreeMap<String, Vec<String>> {
    metadata()
        .into_iter()
        .map(|(name, (_, deps))| (name, deps))
        .collect()
}

/// Every workspace package: name → (its directory, its normal dependencies).
fn metadata() -> BTreeMap<String, (std::path::PathBuf, Vec<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = xtask::workspace_root();
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut map = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["name"].as_str().map(str::to_string))
            .collect();
        let dir = Path::new(p["manifest_path"].as_str().expect("manifest path"))
            .parent()
            .expect("package dir")
            .to_path_buf();
        map.insert(
            p["name"].as_str().unwrap_or_default().to_string(),
            (dir, deps),
        );
    }
    map
}

fn assert_only(deps: &BTreeMap<String, Vec<String>>, dep: &str, allowed: &[&str]) {
    for (pkg, ds) in deps {
        if ds.iter().any(|d| d == dep) {
            assert!(
                allowed.contains(&pkg.as_str()),
                "`{pkg}` must not depend on `{dep}`"
            );
        }
    }
}

#[test]
fn pure_crates_do_no_io() {
    let deps = dependencies();
    for pure in ["cascade-core", "cascade-manifest", "cascade-lock"] {
        let ds = deps
            .get(pure)
            .unwrap_or_else(|| panic!("no package {pure}"));
        for io in [
            "git2",
            "bollard",
            "tokio",
            "reqwest",
            "cascade-store",
            "cascade-exec",
            "cascade-git",
            "tempfile",
        ] {
            assert!(
                !ds.iter().any(|d| d == io),
                "pure crate `{pure}` depends on `{io}`"
            );
        }
    }
}

#[test]
fn one_crate_per_outside_concern() {
    let deps = dependencies();
    // Only cascade-git talks to git (xtask writes the example's repositories; tests make theirs).
    assert_only(&deps, "git2", &["cascade-git", "xtask", "cascade-tests"]);
    // Only the manifest and lockfile crates know which YAML library we use.
    assert_only(
        &deps,
        "serde-saphyr",
        &["cascade-manifest", "cascade-lock", "xtask"],
    );
    // Nothing is async (see ARCHITECTURE.md: the scheduler is a thread pool), but the
    // Docker and REAPI clients, which keep their runtimes private behind blocking APIs.
    assert_only(&deps, "tokio", &["cascade-docker", "cascade-reapi"]);
    assert_only(&deps, "bollard", &["cascade-docker"]);
    assert_only(&deps, "tonic", &["cascade-reapi"]);
    // HTTP: the registry client, the smoke tests' probe and the webhooks.
    assert_only(
        &deps,
        "ureq",
        &["cascade-registry", "cascade-docker", "cascade-notify"],
    );
    // Only the CLI renders and parses arguments, and draws progress.
    assert_only(&deps, "clap", &["cascade-cli", "xtask"]);
    // The cryptography lives in one crate.
    assert_only(&deps, "pgp", &["cascade-sign"]);
    assert_only(&deps, "ed25519-dalek", &["cascade-sign"]);
    assert_only(&deps, "indicatif", &["cascade-cli"]);
    // Only the image crate writes tar, gzip and sha256 (OCI's digests); the bench gzips
    // the same bytes as a baseline.
    for dep in ["tar", "sha2"] {
        assert_only(&deps, dep, &["cascade-image"]);
    }
    assert_only(&deps, "flate2", &["cascade-image", "xtask"]);
    // The layer encoder: miniz_oxide itself, not whichever backend flate2 was built with.
    assert_only(&deps, "miniz_oxide", &["cascade-image"]);
    // SHA-1 only for what SPDX requires of a release bundle's file list.
    assert_only(&deps, "sha1", &["cascade"]);
}

#[test]
fn every_crate_has_a_header_and_an_architecture_section() {
    let root = xtask::workspace_root();
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let packages = metadata();
    assert!(packages.len() >= 10, "{packages:?}");
    for (name, (dir, _)) in &packages {
        let lib = dir.join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).unwrap_or_default();
        assert!(
            text.trim_start().starts_with("//!"),
            "{} has no //! header",
            lib.display()
        );
        assert!(
            arch.lines()
                .any(|l| l.starts_with('#') && l.contains(&format!("`{name}`"))),
            "ARCHITECTURE.md has no section for `{name}`"
        );
    }
}

/// Every workspace package and the only dependencies (normal and build; dev-dependencies
/// are the tests' business) it may have. A dependency that is not listed fails: add it
/// here on purpose, with the same care as the comment `Cargo.toml` wants beside it. A
/// listed one that is gone fails too, so the list stays the truth.
const ALLOWED: &[(&str, &[&str])] = &[
    ("cascade-core", &["blake3", "hex", "serde", "thiserror"]),
    (
        "cascade-manifest",
        &[
            "cascade-core",
            "globset",
            "miette",
            "petgraph",
            "semver",
            "serde",
            "serde-saphyr",
            "strsim",
            "thiserror",
        ],
    ),
    (
        "cascade-lock",
        &[
            "cascade-core",
            "miette",
            "serde",
            "serde-saphyr",
            "thiserror",
        ],
    ),
    (
        "cascade-git",
        &[
            "blake3",
            "git2",
            "globset",
            "miette",
            "semver",
            "serde",
            "strsim",
            "tempfile",
            "thiserror",
        ],
    ),
    (
        "cascade-store",
        &[
            "blake3",
            "cascade-core",
            "libc",
            "miette",
            "serde",
            "tempfile",
            "thiserror",
        ],
    ),
    (
        "cascade-exec",
        &[
            "blake3",
            "cascade-core",
            "landlock",
            "libc",
            "miette",
            "rustix",
            "thiserror",
        ],
    ),
    (
        "cascade-image",
        &[
            "crc32fast",
            "flate2",
            "hex",
            "miette",
            "miniz_oxide",
            "serde",
            "serde_json",
            "sha2",
            "tar",
            "tempfile",
            "thiserror",
            "time",
        ],
    ),
    (
        "cascade-registry",
        &[
            "base64",
            "cascade-image",
            "miette",
            "serde",
            "serde_json",
            "thiserror",
            "ureq",
        ],
    ),
    (
        "cascade-docker",
        &[
            "bollard",
            "bytes",
            "futures-util",
            "miette",
            "tempfile",
            "thiserror",
            "tokio",
            "ureq",
        ],
    ),
    (
        "cascade-reapi",
        &[
            "bazel-remote-apis",
            "cascade-image",
            "futures-util",
            "miette",
            "prost",
            "thiserror",
            "tokio",
            "tokio-stream",
            "tonic",
            "tonic-prost",
            "uuid",
        ],
    ),
    ("cascade-notify", &["serde", "ureq"]),
    (
        "cascade-sign",
        &[
            "base64",
            "ed25519-dalek",
            "miette",
            "pgp",
            "rand",
            "serde",
            "serde_json",
            "thiserror",
        ],
    ),
    (
        "cascade",
        &[
            "blake3",
            "cascade-core",
            "cascade-docker",
            "cascade-exec",
            "cascade-git",
            "cascade-image",
            "cascade-lock",
            "cascade-manifest",
            "cascade-notify",
            "cascade-reapi",
            "cascade-registry",
            "cascade-sign",
            "cascade-store",
            "hex",
            "libc",
            "miette",
            "postcard",
            "semver",
            "serde",
            "serde_json",
            "sha1",
            "similar",
            "tempfile",
            "thiserror",
        ],
    ),
    (
        "cascade-cli",
        &[
            "cascade",
            "cascade-exec",
            "clap",
            "indicatif",
            "miette",
            "serde",
            "serde_json",
            "signal-hook",
            "strsim",
            "time",
        ],
    ),
    (
        "xtask",
        &[
            "cascade-cli",
            "cascade-docker",
            "cascade-image",
            "cascade-reapi",
            "clap",
            "flate2",
            "git2",
            "libc",
            "semver",
            "serde",
            "serde-saphyr",
            "serde_json",
            "tempfile",
        ],
    ),
    (
        "cascade-tests",
        &[
            "cascade-cli",
            "cascade-core",
            "cascade-docker",
            "cascade-lock",
            "cascade-reapi",
            "cascade-store",
            "git2",
            "libc",
            "serde_json",
            "tempfile",
            "xtask",
        ],
    ),
];

/// The layering of ARCHITECTURE.md's code map: a workspace crate depends only on crates
/// of a lower layer. 0: no cascade dependency at all; 1: on the shared vocabulary
/// (`cascade-core`, or `cascade-image` for sha256); 2: `cascade`, the one crate that
/// combines the others; 3: the CLI; then the repository's tooling and its tests.
const LAYERS: &[(&str, u8)] = &[
    ("cascade-core", 0),
    ("cascade-git", 0),
    ("cascade-image", 0),
    ("cascade-docker", 0),
    ("cascade-notify", 0),
    ("cascade-sign", 0),
    ("cascade-manifest", 1),
    ("cascade-lock", 1),
    ("cascade-store", 1),
    ("cascade-exec", 1),
    ("cascade-registry", 1),
    ("cascade-reapi", 1),
    ("cascade", 2),
    ("cascade-cli", 3),
    ("xtask", 4),
    ("cascade-tests", 5),
];

/// The crates ARCHITECTURE.md calls pure: no IO, text in and values out.
const PURE: &[&str] = &["cascade-core", "cascade-manifest", "cascade-lock"];

#[test]
fn every_dependency_is_on_the_allow_list() {
    let deps = dependencies();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut problems = Vec::new();
    for (pkg, ds) in &deps {
        let Some(list) = allowed.get(pkg.as_str()) else {
            problems.push(format!(
                "`{pkg}` is not in tidy.rs's ALLOWED (nor LAYERS): add it, and a section to ARCHITECTURE.md"
            ));
            continue;
        };
        for d in ds {
            if !list.contains(&d.as_str()) {
                problems.push(format!(
                    "`{pkg}` depends on `{d}`, which its allow-list in tidy.rs does not name: add it on purpose (and say why in Cargo.toml)"
                ));
            }
        }
        for d in *list {
            if !ds.iter().any(|x| x == d) {
                problems.push(format!(
                    "`{pkg}` no longer depends on `{d}`: remove it from its allow-list in tidy.rs"
                ));
            }
        }
    }
    for pkg in allowed.keys() {
        if !deps.contains_key(*pkg) {
            problems.push(format!(
                "tidy.rs lists `{pkg}`, which is not a workspace package"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn workspace_crates_depend_only_downwards() {
    let deps = dependencies();
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut problems = Vec::new();
    for (pkg, ds) in &deps {
        let Some(&mine) = layer.get(pkg.as_str()) else {
            problems.push(format!("`{pkg}` has no layer in tidy.rs's LAYERS"));
            continue;
        };
        for d in ds {
            // Only workspace crates have a layer; anything else is the allow-list's.
            if let Some(&theirs) = layer.get(d.as_str()) {
                if theirs >= mine {
                    problems.push(format!(
                        "`{pkg}` (layer {mine}) must not depend on `{d}` (layer {theirs})"
                    ));
                }
                if PURE.contains(&pkg.as_str()) && !PURE.contains(&d.as_str()) {
                    problems.push(format!(
                        "pure crate `{pkg}` depends on `{d}`, which is not pure"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Whether `text` names the path `needle` (`fs::` but not `refs::`).
fn names(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(i, _)| {
        !text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

#[test]
fn pure_crates_touch_no_files_processes_or_network() {
    let packages = metadata();
    let mut problems = Vec::new();
    for pure in PURE {
        let (dir, _) = &packages[*pure];
        for file in rust_files(&dir.join("src")) {
            let text = std::fs::read_to_string(&file).expect("read source");
            for io in [
                "std::fs",
                "fs::",
                "File::",
                "std::process",
                "std::env",
                "std::net::Tcp",
                "std::net::Udp",
                "std::os::unix::net",
            ] {
                if names(&text, io) {
                    problems.push(format!("{} (pure) uses `{io}`", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The column-formatting specs in `text`: `{:<12}`, `{name:>8}`, `{:^w$}`, `{:1$}`,
/// `{x:10}` (a width or an alignment: a table for people). Zero-padded widths
/// (`{b:02x}`, `{i:06}`) are number encodings, not columns, and are not counted.
fn column_specs(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'{' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'{') {
            i += 2;
            continue;
        }
        let rest = &text[i + 1..];
        let Some(end) = rest.find('}') else { break };
        let inner = &rest[..end];
        i += 1;
        let Some((arg, spec)) = inner.split_once(':') else {
            continue;
        };
        if end > 40
            || !arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            continue;
        }
        let chars: Vec<char> = spec.chars().collect();
        let aligned = chars.first().is_some_and(|c| "<>^".contains(*c))
            || chars.get(1).is_some_and(|c| "<>^".contains(*c));
        let mut k = 0;
        while chars.get(k).is_some_and(|c| "+-#".contains(*c)) {
            k += 1;
        }
        let width = match chars.get(k) {
            Some('0') => false,
            Some(c) if c.is_ascii_digit() => true,
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let name: String = chars[k..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                chars.get(k + name.len()) == Some(&'$')
            }
            _ => false,
        };
        if aligned || width {
            found.push(format!("{{{inner}}}"));
        }
    }
    found
}

/// Column formatting that is still outside the CLI, file → how many specs. Rendering
/// belongs to `cascade-cli` (ARCHITECTURE.md). Empty since the build and replay events
/// became structured (#21), and it stays so: emit a structured event instead.
const KNOWN_COLUMN_FORMATTING: &[(&str, usize)] = &[];

#[test]
fn no_column_formatting_outside_the_cli() {
    let root = xtask::workspace_root();
    let packages = metadata();
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, (dir, _)) in &packages {
        // The CLI renders; xtask prints its own tables; the tests are not shipped.
        if ["cascade-cli", "xtask", "cascade-tests"].contains(&name.as_str()) {
            continue;
        }
        for file in rust_files(&dir.join("src")) {
            let text = std::fs::read_to_string(&file).expect("read source");
            let specs = column_specs(&text);
            if !specs.is_empty() {
                let rel = file.strip_prefix(&root).unwrap_or(&file);
                found.insert(rel.display().to_string(), specs);
            }
        }
    }
    let known: BTreeMap<&str, usize> = KNOWN_COLUMN_FORMATTING.iter().copied().collect();
    let mut problems = Vec::new();
    for (file, specs) in &found {
        match known.get(file.as_str()) {
            Some(&n) if n == specs.len() => {}
            Some(&n) if specs.len() < n => problems.push(format!(
                "{file}: {} column spec(s) left, KNOWN_COLUMN_FORMATTING says {n}: lower it",
                specs.len()
            )),
            _ => problems.push(format!(
                "{file} formats columns ({}): only cascade-cli renders text for people; emit a structured event instead",
                specs.join(", ")
            )),
        }
    }
    for file in known.keys() {
        if !found.contains_key(*file) {
            problems.push(format!(
                "{file} no longer formats columns: remove it from KNOWN_COLUMN_FORMATTING"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn column_specs_are_recognised() {
    let found =
        column_specs(r#"x {:<8} {name:>12} {:^w$} {:1$} {n:10} {b:02x} {:.1} {} {{:<3}} {a:?}"#);
    assert_eq!(
        found,
        ["{:<8}", "{name:>12}", "{:^w$}", "{:1$}", "{n:10}"],
        "{found:?}"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a Markdown file outside its fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

#[test]
fn documentation_links_resolve() {
    let root = xtask::workspace_root();
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read markdown");
        for line in prose(&text) {
            for (i, _) in line.match_indices("](") {
                let rest = &line[i + 2..];
                let Some(end) = rest.find(')') else { continue };
                let target = &rest[..end];
                if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                    continue;
                }
                let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
                let dest = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().expect("dir").join(path)
                };
                let shown = file.strip_prefix(&root).unwrap_or(file).display();
                if !dest.exists() {
                    problems.push(format!("{shown}: `{target}` does not exist"));
                    continue;
                }
                if !fragment.is_empty() && dest.extension().is_some_and(|x| x == "md") {
                    let body = std::fs::read_to_string(&dest).expect("read link target");
                    let known = prose(&body)
                        .into_iter()
                        .filter(|l| l.starts_with('#'))
                        .any(|l| anchor(l.trim_start_matches('#')) == fragment);
                    if !known {
                        problems.push(format!("{shown}: `{target}` names no heading"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The longest a function in `crates/*/src` may be, in lines from `fn` to its closing
/// brace: about two screens. A longer one is split along the steps its own comments
/// number (ARCHITECTURE.md, "Conventions").
const FUNCTION_LINES: usize = 120;

/// The functions still longer than [`FUNCTION_LINES`], with their length today: each
/// may shrink (then lower its number, or remove it once it fits), never grow, and none
/// may join. Empty: every long function was split along its steps (issue #21).
const LONG_FUNCTIONS: &[(&str, &str, usize)] = &[];

/// Every function in `text` with a body, as rustfmt lays it out: its name and its
/// length in lines, from the `fn` line to the closing brace at the same indentation.
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let mut rest = body;
        while let Some(r) = [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
        {
            rest = r;
        }
        let Some(after) = rest.strip_prefix("fn ") else {
            continue;
        };
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The signature ends at the first line that opens the body, ends a declaration
        // without one, or holds a whole one-line body.
        let Some(open) = lines[i..].iter().position(|l| {
            let t = l.trim_end();
            t.ends_with('{') || t.ends_with(';') || t.ends_with('}')
        }) else {
            continue;
        };
        if !lines[i + open].trim_end().ends_with('{') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = lines[i + open + 1..].iter().position(|l| *l == close) {
            out.push((name, open + end + 2));
        }
    }
    out
}

#[test]
fn function_lengths_are_measured() {
    let text = "fn a() {\n    x();\n}\n\n    pub(crate) fn b(\n        y: u8,\n    ) -> u8 {\n        y\n    }\nfn c();\nfn d() {}\n";
    assert_eq!(
        function_lengths(text),
        [("a".to_string(), 3), ("b".to_string(), 5)]
    );
}

#[test]
fn no_function_is_longer_than_two_screens() {
    let root = xtask::workspace_root();
    let mut found: BTreeMap<(String, String), usize> = BTreeMap::new();
    for file in rust_files(&root.join("crates")) {
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        if !rel.contains("/src/") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        for (name, len) in function_lengths(&text) {
            if len > FUNCTION_LINES {
                let longest = found.entry((rel.clone(), name)).or_default();
                *longest = (*longest).max(len);
            }
        }
    }
    let mut problems = Vec::new();
    for &(file, name, allowed) in LONG_FUNCTIONS {
        match found.remove(&(file.to_string(), name.to_string())) {
            None => problems.push(format!(
                "{file}: `{name}` is {FUNCTION_LINES} lines or fewer now (or gone): remove it from LONG_FUNCTIONS"
            )),
            Some(len) if len > allowed => problems.push(format!(
                "{file}: `{name}` grew to {len} lines (LONG_FUNCTIONS allows {allowed}): split it along its steps"
            )),
            Some(len) if len < allowed => problems.push(format!(
                "{file}: `{name}` is {len} lines now: lower LONG_FUNCTIONS to {len}"
            )),
            Some(_) => {}
        }
    }
    for ((file, name), len) in found {
        problems.push(format!(
            "{file}: `{name}` is {len} lines, more than {FUNCTION_LINES}: split it along the steps its comments number, into named functions or a small struct carrying the shared arguments"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_too_many_arguments_allow() {
    // Spelled in two halves so this file does not match itself.
    let needle = concat!("clippy::too_many", "_arguments");
    let root = xtask::workspace_root();
    let mut problems = Vec::new();
    for dir in ["crates", "tests", "xtask", "fuzz"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("read source");
            if text.contains(needle) {
                let rel = file.strip_prefix(&root).unwrap_or(&file);
                problems.push(format!(
                    "{} allows `{needle}`: carry the shared arguments in a small struct instead",
                    rel.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
