use std::collections::BTreeMap;

use cascade_core::{Digest, NodeKey, OutputDigest};

use crate::{read, write, LockError, LockNode, LockSource, Lockfile};

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn node(name: &str, inputs: &[&str]) -> LockNode {
    LockNode {
        source: LockSource {
            repo: format!("../../target/ecosystem/{name}.git"),
            r#ref: Some("develop".to_string()),
            commit: "3f786850e387550fdab836ed7e6dc881de23001b".to_string(),
            tree: "a7c3e1f2a7c3e1f2a7c3e1f2a7c3e1f2a7c3e1f2".to_string(),
            dir: None,
            version: "0.2.1-dev.5".to_string(),
        },
        recipe: d(&format!("recipe {name}")),
        runner: d("host"),
        inputs: inputs
            .iter()
            .map(|i| (i.to_string(), OutputDigest(d(&format!("out {i}")))))
            .collect(),
        key: NodeKey(d(&format!("key {name}"))),
        output: OutputDigest(d(&format!("out {name}"))),
        artifacts: [(format!("out/bin/{name}"), d(&format!("bin {name}")))]
            .into_iter()
            .collect(),
        image: None,
        tests: BTreeMap::new(),
    }
}

fn small() -> Lockfile {
    let mut sdk = node("sdk", &["ottochain"]);
    sdk.source.dir = Some("packages/sdk".to_string());
    let mut ottochain = node("ottochain", &["tessellation", "metakit"]);
    ottochain.source.r#ref = None;
    ottochain.source.version = "0.6.1".to_string();
    let mut tessellation = node("tessellation", &[]);
    tessellation.artifacts.clear();
    tessellation.image = Some(crate::LockImage {
        reference: "127.0.0.1:5000/ottochain/tessellation:develop-3f78685".to_string(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        spec: Some(d("image spec")),
    });
    tessellation.tests = [
        ("smoke".to_string(), crate::TestResult::Passed),
        ("version".to_string(), crate::TestResult::Skipped),
    ]
    .into_iter()
    .collect();
    Lockfile {
        key_format: cascade_core::KEY_VERSION,
        environment: "scratch".to_string(),
        graph: d("graph"),
        nodes: [
            ("tessellation".to_string(), tessellation),
            ("sdk".to_string(), sdk),
            ("ottochain".to_string(), ottochain),
        ]
        .into_iter()
        .collect(),
    }
}

const NASTY: &[&str] = &[
    "",
    " ",
    " leading",
    "trailing ",
    "a: b",
    "a:b",
    "ends:",
    "# comment",
    "a #b",
    "\"double\"",
    "'single'",
    "back\\slash",
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "true",
    "null",
    "~",
    "1.0",
    "1",
    "0x1",
    "0o17",
    "1e3",
    "-1",
    "+1",
    ".5",
    ".inf",
    "1_000",
    "12:30",
    "2026-11-23",
    "-",
    "- item",
    "? key",
    "[a]",
    "{a: b}",
    "!tag",
    "*alias",
    "&anchor",
    "| block",
    "> folded",
    "%YAML",
    "@at",
    "`tick",
    "<<",
    "ünïcödé ✓ 🦀",
    "line\nbreak",
    "\n",
    "crlf\r\n",
    "tab\tin",
    "nul\0byte",
    "bell\u{7}",
    "del\u{7f}",
    "nel\u{85}",
    "ls\u{2028}ps\u{2029}",
    "\u{feff}bom",
    "---",
    "...",
    "a,b",
    "=",
];

fn nasty_lockfile() -> Lockfile {
    let mut lock = small();
    lock.environment = "env: with colon".to_string();
    for (i, s) in NASTY.iter().enumerate() {
        let mut n = node("x", &[]);
        n.source.repo = s.to_string();
        n.source.r#ref = Some(s.to_string());
        n.source.dir = Some(s.to_string());
        n.source.version = s.to_string();
        // The commit and tree stay ids: `read` validates them (`check_ids`), so a nasty
        // commit is the diagnostic tested in `ids_are_validated_when_read`.
        n.inputs.insert(s.to_string(), OutputDigest(d(s)));
        n.artifacts.insert(s.to_string(), d(s));
        // Node names: the nasty string itself, and made unique.
        lock.nodes.insert(s.to_string(), n.clone());
        lock.nodes.insert(format!("{s}{i}"), n);
    }
    lock
}

fn round_trip(lock: &Lockfile) {
    let text = write(lock);
    let back = match read("test.yaml", &text) {
        Ok(back) => back,
        Err(e) => panic!("{e:?}\n{text}"),
    };
    assert_eq!(&back, lock);
    assert_eq!(write(&back), text, "a second write gives the same bytes");
}

#[test]
fn round_trips() {
    round_trip(&small());
    round_trip(&Lockfile {
        key_format: cascade_core::KEY_VERSION,
        environment: "empty".to_string(),
        graph: d("g"),
        nodes: BTreeMap::new(),
    });
}

/// A commit, tree or image digest that is not an id is refused when read (later uses
/// slice them as ASCII), naming the field.
#[test]
fn ids_are_validated_when_read() {
    for (field, bad) in [("commit", "é1234567"), ("commit", ""), ("tree", "NOT-HEX")] {
        let mut lock = small();
        let n = lock.nodes.values_mut().next().unwrap();
        match field {
            "commit" => n.source.commit = bad.to_string(),
            _ => n.source.tree = bad.to_string(),
        }
        let text = write(&lock);
        let e = read("test.yaml", &text).unwrap_err();
        assert!(
            e.to_string().contains(&format!("source.{field}`")),
            "{field} = {bad:?}: {e}"
        );
    }
}

#[test]
fn round_trips_nasty_strings() {
    round_trip(&nasty_lockfile());
}

#[test]
fn round_trips_each_nasty_string_alone() {
    // One at a time too, so a failure names the string.
    for s in NASTY {
        let mut lock = small();
        lock.environment = s.to_string();
        let mut n = node("x", &[s]);
        n.source.repo = s.to_string();
        lock.nodes.insert(s.to_string(), n);
        round_trip(&lock);
    }
}

#[test]
fn round_trips_a_key_longer_than_yaml_allows_inline() {
    let mut lock = small();
    let long = format!("out/{}", "a/b: c".repeat(400));
    let mut n = node("long", &[]);
    n.artifacts.insert(long.clone(), d("long"));
    lock.nodes.insert(long.clone(), n);
    let text = write(&lock);
    assert!(text.contains("? \"out/"), "explicit key expected");
    round_trip(&lock);
}

#[test]
fn golden() {
    insta::assert_snapshot!(write(&small()));
}

#[test]
fn every_map_is_sorted() {
    // Walk the text by indentation: at each level, the keys of one map must increase
    // (except the top level, which starts with `format`).
    let text = write(&nasty_lockfile());
    let mut last: Vec<Option<String>> = Vec::new();
    for line in text.lines() {
        let level = (line.len() - line.trim_start_matches(' ').len()) / 2;
        let body = line.trim_start_matches(' ');
        if body.starts_with("? ") || body.starts_with(':') {
            continue;
        }
        let key = if let Some(quoted) = body.strip_prefix('"') {
            // The raw, escaped form; unescaping is not needed to compare plain keys, and
            // quoted keys are compared through `read` in the round-trip tests.
            let end = quoted.find("\":").unwrap_or(quoted.len());
            format!("\"{}", &quoted[..end])
        } else {
            body.split(':').next().unwrap_or("").to_string()
        };
        last.truncate(level + 1);
        last.resize(level + 1, None);
        if level > 0 && !key.starts_with('"') {
            if let Some(prev) = &last[level] {
                if !prev.starts_with('"') {
                    assert!(prev < &key, "{prev} before {key}");
                }
            }
        }
        last[level] = Some(key);
    }
    let top: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        top,
        ["format", "environment", "graph", "nodes", "node_count"]
    );
}

#[test]
fn unknown_fields_are_errors() {
    let text = write(&small());
    for (from, to) in [
        ("environment:", "surprise: 1\nenvironment:"),
        ("    recipe:", "    surprise: 1\n    recipe:"),
        ("      commit:", "      surprise: 1\n      commit:"),
    ] {
        let bad = text.replacen(from, to, 1);
        match read("lockfiles/x.yaml", &bad) {
            Err(LockError::Invalid { message, span, .. }) => {
                assert!(message.contains("surprise"), "{message}");
                let span = span.expect("a label");
                assert_eq!(&bad[span.offset()..span.offset() + 8], "surprise");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn format_1_is_still_read() {
    let mut old = small();
    old.key_format = 1;
    for n in old.nodes.values_mut() {
        n.image = None;
        n.tests.clear();
    }
    let text = write(&old).replacen("cascade-lock/2", "cascade-lock/1", 1);
    assert_eq!(read("old.yaml", &text).unwrap(), old);
}

/// Keys of format 1 are written and read as `cascade-lock/2`, those of format 2 as
/// `cascade-lock/4` (or `/3`, read only): a lockfile says which rules its keys were made
/// with.
#[test]
fn the_format_line_tells_the_key_format() {
    let mut old = small();
    old.key_format = 1;
    let text = write(&old);
    assert!(text.starts_with("format: cascade-lock/2\n"), "{text}");
    assert_eq!(read("old.yaml", &text).unwrap().key_format, 1);
    let text = write(&small());
    assert!(text.starts_with("format: cascade-lock/4\n"), "{text}");
    assert_eq!(read("new.yaml", &text).unwrap().key_format, 2);
    let three = without_count(&text).replacen("cascade-lock/4", "cascade-lock/3", 1);
    assert_eq!(read("three.yaml", &three).unwrap(), small());
}

/// `text` as `cascade-lock/3` had it: without the last line.
fn without_count(text: &str) -> String {
    let cut = text.trim_end_matches('\n').rfind('\n').unwrap() + 1;
    assert!(text[cut..].starts_with("node_count: "), "{text}");
    text[..cut].to_string()
}

/// A `cascade-lock/4` file cut short is refused, wherever the cut is: exactly between
/// two nodes (which still parses as YAML), inside the last node's tests, or just before
/// the count. A count that differs from the nodes is refused too, with a label.
#[test]
fn truncation_is_detected() {
    let text = write(&small());
    let lines: Vec<&str> = text.lines().collect();
    let mut refused = 0;
    for keep in 1..lines.len() {
        let cut = lines[..keep].join("\n") + "\n";
        match read("cut.yaml", &cut) {
            Ok(lock) => panic!("{keep} lines read as {} nodes:\n{cut}", lock.nodes.len()),
            Err(LockError::Invalid { .. } | LockError::MissingFormat { .. }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(refused, lines.len() - 1);
    let count = text.replacen("node_count: 3", "node_count: 4", 1);
    match read("edited.yaml", &count) {
        Err(LockError::Invalid { message, span, .. }) => {
            assert!(
                message.contains("says 4 nodes but the file holds 3"),
                "{message}"
            );
            let span = span.expect("a label");
            assert_eq!(&count[span.offset()..span.offset() + span.len()], "4");
        }
        other => panic!("{other:?}"),
    }
    // An older format does not claim a count.
    let three = text.replacen("cascade-lock/4", "cascade-lock/3", 1);
    assert!(matches!(
        read("three.yaml", &three),
        Err(LockError::Invalid { .. })
    ));
}

#[test]
fn wrong_format_is_an_error_naming_it() {
    let text = write(&small()).replacen("cascade-lock/4", "cascade-lock/5", 1);
    // A newer format may have fields this one does not know: the format is the error.
    let text = text.replacen("nodes:", "future: true\nnodes:", 1);
    match read("lockfiles/x.yaml", &text) {
        Err(e @ LockError::UnsupportedFormat { .. }) => {
            let shown = e.to_string();
            assert!(shown.contains("`cascade-lock/5`"), "{shown}");
            assert!(shown.contains("lockfiles/x.yaml"), "{shown}");
            let LockError::UnsupportedFormat { span, .. } = e else {
                unreachable!()
            };
            let span = span.expect("a label");
            assert_eq!(
                &text[span.offset()..span.offset() + span.len()],
                "cascade-lock/5"
            );
        }
        other => panic!("{other:?}"),
    }
    let missing = write(&small()).replacen("format: cascade-lock/4\n", "", 1);
    assert!(matches!(
        read("x", &missing),
        Err(LockError::MissingFormat { .. })
    ));
}

#[test]
fn bad_digests_are_errors_with_a_label() {
    let text = write(&small());
    let bad = text.replacen("graph: blake3:", "graph: sha256:", 1);
    match read("x.yaml", &bad) {
        Err(LockError::Invalid { message, span, .. }) => {
            assert!(message.contains("blake3:<64 hex digits>"), "{message}");
            let span = span.expect("a label");
            let line_start = bad[..span.offset()].rfind('\n').map_or(0, |i| i + 1);
            assert!(
                bad[line_start..].starts_with("graph:"),
                "label on the graph line"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_render_with_the_file_name() {
    let text = write(&small()).replacen("    recipe:", "    surprise: 1\n    recipe:", 1);
    let err = read("lockfiles/scratch-20261123T101500Z.yaml", &text).expect_err("invalid");
    let mut shown = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut shown, &err)
        .expect("render");
    assert!(
        shown.contains("lockfiles/scratch-20261123T101500Z.yaml"),
        "{shown}"
    );
    assert!(shown.contains("surprise"), "{shown}");
}

#[test]
fn every_truncation_is_handled() {
    // Small enough to try every prefix, with quoted scalars and escapes to cut through.
    // (Two nodes: each prefix costs a parse, and the parser is slow in debug builds.)
    let mut lock = small();
    lock.nodes.retain(|name, _| name == "sdk");
    let mut n = node("nasty", &["yes"]);
    n.source.repo = "a: \"b\"\n\u{85}é #c".to_string();
    lock.nodes.insert("on".to_string(), n);
    let text = write(&lock);
    let mut ok = 0;
    for (i, _) in text.char_indices() {
        if read("t.yaml", &text[..i]).is_ok() {
            ok += 1;
        }
    }
    // Some prefixes end between whole nodes and are valid lockfiles; most are not.
    assert!(ok < text.len() / 10, "{ok}");
    assert!(read("t.yaml", &text).is_ok());
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let fixed = [
        "",
        "\n",
        "---\n...\n",
        "format",
        "format:",
        "format: cascade-lock/1",
        "format: [cascade-lock/1]",
        "format: {a: 1}",
        "format: cascade-lock/1\nformat: cascade-lock/1\n",
        "format: cascade-lock/1\nenvironment: x\ngraph: blake3:00\nnodes: {}\n",
        "format: cascade-lock/1\nenvironment: x\ngraph: blake3:00\nnodes: []\n",
        "- a\n- b\n",
        "a: &a [*a]\n",
        "a: &x [1]\nb: [*x, *x, *x]\n",
        "\t\tformat: x",
        "format: cascade-lock/1\n---\nformat: cascade-lock/1\n",
        "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
        "\u{feff}format: cascade-lock/1",
        "\0\0\0",
        "%YAML 9.9\n---\nx: 1",
        "!!binary aGVsbG8=",
    ];
    for text in fixed {
        assert!(read("g.yaml", text).is_err(), "{text:?}");
    }
    let deep = "[".repeat(100_000);
    assert!(read("g.yaml", &deep).is_err());

    // Deterministic pseudo-random bytes and mutations of a valid file.
    let valid = write(&small());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"ab:- \n\t\"'#&*!|>{}[],?%@`0123456789.\\";
    for _ in 0..500 {
        let len = (next() % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let _ = read("g.yaml", &String::from_utf8_lossy(&bytes));

        let mut mutated = valid.clone().into_bytes();
        for _ in 0..3 {
            let at = (next() % mutated.len() as u64) as usize;
            mutated[at] = alphabet[(next() % alphabet.len() as u64) as usize];
        }
        let _ = read("g.yaml", &String::from_utf8_lossy(&mutated));
    }
}

#[test]
fn syntax_errors_point_at_their_place() {
    let text = "format: cascade-lock/1\nnodes: [\n";
    match read("x.yaml", text) {
        Err(LockError::Invalid { span, .. }) => {
            let span = span.expect("a label");
            assert_eq!(span.offset(), text.find('[').expect("bracket"));
        }
        other => panic!("{other:?}"),
    }
}

/// A big lockfile is written in parts on several threads: the same bytes on one thread
/// or many, whatever the split, and it reads back to the same value.
#[test]
fn a_big_lockfile_is_the_same_bytes_on_any_number_of_threads() {
    let mut lock = small();
    for i in 0..1_000 {
        let name = format!("p{i:04}");
        let inputs = [format!("p{:04}", i / 2)];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        lock.nodes
            .insert(name.clone(), node(&name, &inputs[..i.min(1)]));
    }
    let header = crate::Header {
        key_format: lock.key_format,
        environment: &lock.environment,
        graph: lock.graph,
    };
    let views = || -> Vec<(&str, crate::NodeView<'_>)> {
        lock.nodes
            .iter()
            .map(|(n, v)| (n.as_str(), v.view()))
            .collect()
    };
    let one = crate::write::write_in(&header, views(), 1);
    for threads in [2, 3, 4, 7] {
        assert!(
            crate::write::write_in(&header, views(), threads) == one,
            "{threads} threads wrote other bytes"
        );
    }
    // Nodes handed over in another order are written in the order of their names.
    let mut shuffled = views();
    shuffled.reverse();
    shuffled.swap(0, 500);
    assert!(crate::write_nodes(&header, shuffled) == one);
    assert_eq!(write(&lock), one);
    assert_eq!(read("big.yaml", &one).expect("reads back"), lock);
}

/// A view and the node it was made from are the same lockfile entry both ways.
#[test]
fn a_node_and_its_view_are_one_entry() {
    let lock = small();
    for node in lock.nodes.values() {
        assert_eq!(&node.view().to_node(), node);
    }
}
