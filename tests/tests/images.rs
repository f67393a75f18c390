//! Images end to end on temporary git repositories: deterministic digests in any store
//! and checkout, tags, base images, the image cache, export, and what goes wrong.
//! `skopeo` (installed by .ci/run) is the independent judge of what we write.

use std::fs;
use std::process::Command;

use cascade_tests::{Run, TestProject};
use serde_json::Value;

const ENV: &str = "test";

/// `app` (a file and a script, on scratch) and `web` (a page, on app's image).
fn project(env_extra: &str, rev: &str) -> TestProject {
    let mut p = TestProject::new();
    p.write(
        "graph/environments/test.yaml",
        &format!(
            "name: test\nmode: branch\n{env_extra}sources:\n\
             \x20 app: {{ repo: ../../repos/app, ref: {rev} }}\n\
             \x20 web: {{ repo: ../../repos/web, ref: {rev} }}\n"
        ),
    );
    p.write("recipes/app.yaml", &app_recipe(""));
    p.write(
        "recipes/web.yaml",
        "runner: { host: { tools: [sh, mkdir, cp] } }\n\
         steps: [{ name: site, run: 'mkdir -p www && cp index.html www/' }]\n\
         outputs: [www]\n\
         image:\n  base: app\n  layers: [{ from: www, to: /srv/www }]\n  cmd: [--serve, /srv/www]\n",
    );
    p.commit(
        "app",
        rev,
        &[
            ("data.txt", Some("app data\n")),
            ("run.sh", Some("#!/bin/sh\necho app\n")),
        ],
        "initial",
    );
    p.commit(
        "web",
        rev,
        &[("index.html", Some("<h1>web</h1>\n"))],
        "initial",
    );
    p
}

fn app_recipe(image_extra: &str) -> String {
    format!(
        "runner: {{ host: {{ tools: [sh, mkdir, cp] }} }}\n\
         steps:\n  - name: make\n    run: |\n      mkdir -p out/bin out/share\n      cp run.sh out/bin/app\n      cp data.txt out/share/\n\
         outputs: [out]\n\
         image:\n  base: scratch\n  layers:\n    - {{ from: out/bin, to: /usr/local/bin }}\n    - {{ from: out/share, to: /usr/share/app }}\n  entrypoint: [/usr/local/bin/app]\n  ports: [8080]\n{image_extra}"
    )
}

fn image(r: &Run, node: &str) -> (String, String) {
    let n = r.node(node);
    (
        n["image"]["ref"].as_str().unwrap_or_default().to_string(),
        n["image"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn lockfile_text(p: &TestProject, r: &Run) -> String {
    let rel = r.json()["lockfile"].as_str().unwrap().to_string();
    fs::read_to_string(p.root.join(rel)).unwrap()
}

/// Runs skopeo, or says why it cannot (a failure in CI, which installs it).
fn skopeo(args: &[&str]) -> Option<Value> {
    if Command::new("skopeo").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "skopeo is missing; .ci/run installs it"
        );
        eprintln!("skipping the skopeo check: skopeo is not installed");
        return None;
    }
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn images_are_byte_identical_in_any_store_and_checkout_and_recorded_in_the_lockfile() {
    let a = project("registry: 127.0.0.1:5000/team\n", "develop");
    let b = project("registry: 127.0.0.1:5000/team\n", "develop");
    assert_ne!(a.root, b.root);
    let ra = a.build(ENV, 0);
    let rb = b.build(ENV, 0);
    for node in ["app", "web"] {
        let (ref_a, dig_a) = image(&ra, node);
        let (ref_b, dig_b) = image(&rb, node);
        assert_eq!(dig_a, dig_b, "{node}: same inputs, same image digest");
        assert_eq!(ref_a, ref_b);
        assert!(dig_a.starts_with("sha256:") && dig_a.len() == 71, "{dig_a}");
    }
    let commit = ra.node("app")["commit"].as_str().unwrap().to_string();
    assert_eq!(
        image(&ra, "app").0,
        format!("127.0.0.1:5000/team/app:develop-{}", &commit[..7])
    );
    // The lockfile records reference and digest, and is byte-identical too.
    let (la, lb) = (lockfile_text(&a, &ra), lockfile_text(&b, &rb));
    assert_eq!(la, lb);
    let lock = cascade_lock::read("lock.yaml", &la).unwrap();
    let app = lock.nodes["app"].image.as_ref().unwrap();
    assert_eq!(app.digest, image(&ra, "app").1);
    assert_eq!(app.reference, image(&ra, "app").0);

    // skopeo reads the store's layout and agrees on the digest and the contents.
    let layout = format!(
        "oci:{}:{}",
        a.root.join("cache/oci").display(),
        app.reference
    );
    if let Some(v) = skopeo(&["inspect", &layout]) {
        assert_eq!(v["Digest"], app.digest.as_str());
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    }
    let web = lock.nodes["web"].image.as_ref().unwrap();
    let layout = format!(
        "oci:{}:{}",
        a.root.join("cache/oci").display(),
        web.reference
    );
    if let Some(v) = skopeo(&["inspect", &layout]) {
        assert_eq!(v["Digest"], web.digest.as_str());
        // app's two layers, then web's own.
        assert_eq!(v["Layers"].as_array().unwrap().len(), 3);
        let config = skopeo(&["inspect", "--config", &layout]).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/usr/local/bin/app"])
        );
        assert_eq!(
            config["config"]["Cmd"],
            serde_json::json!(["--serve", "/srv/www"])
        );
        let created = config["created"].as_str().unwrap();
        assert_eq!(
            created, "2026-01-01T01:00:00Z",
            "the commit time, never the clock"
        );
    }
}

/// The image says where it came from; the commit and the version only when the recipe
/// stamps them (else they would change the image at every commit).
#[test]
fn the_annotations_say_where_the_image_came_from() {
    let p = project("", "develop");
    let r = p.build(ENV, 0);
    let (reference, digest) = image(&r, "app");
    assert_eq!(
        reference,
        format!(
            "app:develop-{}",
            &r.node("app")["commit"].as_str().unwrap()[..7]
        )
    );
    let layout = format!("oci:{}:{reference}", p.root.join("cache/oci").display());
    let Some(raw) = skopeo(&["inspect", "--raw", &layout]) else {
        return;
    };
    let a = &raw["annotations"];
    assert_eq!(a["org.opencontainers.image.source"], "../../repos/app");
    assert_eq!(a["org.opencontainers.image.title"], "app");
    assert_eq!(
        a["org.opencontainers.image.created"],
        "2026-01-01T00:00:00Z"
    );
    assert!(a["org.opencontainers.image.revision"].is_null(), "{a}");
    assert!(a["org.opencontainers.image.version"].is_null(), "{a}");
    assert!(digest.starts_with("sha256:"));

    p.write(
        "recipes/app.yaml",
        &format!("stamp: [commit, version]\n{}", app_recipe("")),
    );
    let r = p.build(ENV, 0);
    let (reference, stamped) = image(&r, "app");
    assert_ne!(stamped, digest);
    let layout = format!("oci:{}:{reference}", p.root.join("cache/oci").display());
    let raw = skopeo(&["inspect", "--raw", &layout]).unwrap();
    let a = &raw["annotations"];
    assert_eq!(
        a["org.opencontainers.image.revision"],
        r.node("app")["commit"]
    );
    assert_eq!(
        a["org.opencontainers.image.version"],
        r.node("app")["version"]
    );
}

#[test]
fn tags_follow_the_mode_and_template_and_are_valid_tags() {
    let p = project("tag: \"{component}-{ref}.{short_sha}\"\n", "feature/new_ui");
    let r = p.build(ENV, 0);
    let sha = r.node("app")["commit"].as_str().unwrap().to_string();
    assert_eq!(
        image(&r, "app").0,
        format!("app:app-feature-new-ui.{}", &sha[..7])
    );

    // Version mode: the version is the tag.
    let mut v = project("", "main");
    let sha = v.commit("app", "main", &[("data.txt", Some("v2\n"))], "v2");
    v.tag("app", "v1.2.3", &sha);
    let web = v.commit("web", "main", &[("index.html", Some("v2\n"))], "v2");
    v.tag("web", "v0.1.0", &web);
    v.write(
        "graph/environments/test.yaml",
        "name: test\nmode: version\nsources:\n\
         \x20 app: { repo: ../../repos/app, version: 1.2.3 }\n\
         \x20 web: { repo: ../../repos/web, version: 0.1.0 }\n",
    );
    let r = v.build(ENV, 0);
    assert_eq!(image(&r, "app").0, "app:1.2.3");
    assert_eq!(image(&r, "web").0, "web:0.1.0");
}

#[test]
fn an_image_change_makes_a_new_image_without_running_a_step() {
    let p = project("", "develop");
    let first = p.build(ENV, 0);
    p.write(
        "recipes/app.yaml",
        &app_recipe("  labels: { team: platform }\n"),
    );
    let second = p.build(ENV, 0);
    assert_eq!(second.json()["built"], 0, "{}", second.stderr);
    assert_ne!(image(&first, "app").1, image(&second, "app").1);
    // web's image is based on app's, so it changes too; its steps did not run either.
    assert_ne!(image(&first, "web").1, image(&second, "web").1);
    // And back: the old image is found again, identical.
    p.write("recipes/app.yaml", &app_recipe(""));
    let third = p.build(ENV, 0);
    assert_eq!(image(&first, "app"), image(&third, "app"));
    assert_eq!(image(&first, "web"), image(&third, "web"));
}

#[test]
fn a_layer_whose_source_is_missing_fails_the_node_and_writes_no_lockfile() {
    let p = project("", "develop");
    p.write(
        "recipes/app.yaml",
        &app_recipe("").replace("{ from: out/share, to", "{ from: out/missing, to"),
    );
    let r = p.build(ENV, 1);
    let app = r.node("app");
    assert_eq!(app["status"], "failed");
    assert_eq!(app["cause"], "output", "{app}");
    assert!(
        app["error"].as_str().unwrap().contains("out/missing"),
        "{app}"
    );
    assert_eq!(r.node("web")["status"], "skipped");
    assert!(p.lockfiles().is_empty());
}

/// A link may point into another layer (judged from where it lands in the image), but
/// not above the image's root; the failure names the link as the recipe does.
#[test]
fn a_symlink_may_point_into_another_layer_but_not_out_of_the_image() {
    let p = project("", "develop");
    let recipe = |link: &str, to: &str| {
        app_recipe("")
            .replace("[sh, mkdir, cp]", "[sh, mkdir, cp, ln]")
            .replace(
                "cp data.txt out/share/\n",
                &format!("cp data.txt out/share/\n      ln -s {link} out/bin/data\n"),
            )
            .replace("to: /usr/local/bin }", &format!("to: {to} }}"))
    };
    p.write(
        "recipes/app.yaml",
        &recipe("../../share/app/data.txt", "/usr/local/bin"),
    );
    let ok = p.build(ENV, 0);
    assert!(
        ok.node("app")["image"]["digest"].is_string(),
        "{}",
        ok.stdout
    );

    // The same link from a layer placed at `/bin` climbs above the image's root.
    p.write(
        "recipes/app.yaml",
        &recipe("../../share/app/data.txt", "/bin"),
    );
    let r = p.build(ENV, 1);
    let app = r.node("app");
    assert_eq!(app["status"], "failed");
    assert_eq!(app["cause"], "output", "{app}");
    let err = app["error"].as_str().unwrap();
    assert!(
        err.contains("symlink `out/bin/data` points outside the image"),
        "{err}"
    );
    assert!(!err.contains("/tmp") && !err.contains(".tmp"), "{err}");
}

#[test]
fn a_pinned_base_that_is_not_in_the_store_says_how_to_import_it() {
    let p = project("", "develop");
    let digest = "0".repeat(64);
    p.write(
        "recipes/app.yaml",
        &app_recipe("").replace(
            "base: scratch",
            &format!("base: \"debian@sha256:{digest}\""),
        ),
    );
    let r = p.build(ENV, 3);
    let err = r.node("app")["error"].as_str().unwrap().to_string();
    assert!(err.contains("is not in the store"), "{err}");
    assert!(err.contains("skopeo copy"), "{err}");
}

#[test]
fn export_writes_an_archive_skopeo_and_docker_read() {
    let p = project("", "develop");
    let r = p.build(ENV, 0);
    let (reference, digest) = image(&r, "web");
    let out = p.root.join("web.tar");
    let e = p.run(&[
        "image",
        "export",
        "web",
        "--env",
        ENV,
        "--store",
        &p.root.join("cache").display().to_string(),
        "-o",
        &out.display().to_string(),
        "--json",
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_eq!(e.json()["digest"], digest.as_str());
    assert_eq!(e.json()["ref"], reference.as_str());
    let mut names: Vec<String> = tar_names(&out);
    names.sort();
    assert!(names.contains(&"index.json".to_string()), "{names:?}");
    assert!(names.contains(&"manifest.json".to_string()), "{names:?}");
    assert!(names.contains(&format!("blobs/sha256/{}", &digest[7..])));
    if let Some(v) = skopeo(&["inspect", &format!("oci-archive:{}", out.display())]) {
        assert_eq!(v["Digest"], digest.as_str());
    }
    // An unknown component, an environment never built: bad input, exit 2.
    let export = |p: &TestProject, node: &str| {
        p.run(&[
            "image",
            "export",
            node,
            "--env",
            ENV,
            "--store",
            &p.root.join("cache").display().to_string(),
            "-o",
            &p.root.join("x.tar").display().to_string(),
        ])
    };
    let unknown = export(&p, "nope");
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no component `nope`"),
        "{}",
        unknown.stderr
    );
    let fresh = project("", "develop");
    let never = export(&fresh, "app");
    assert_eq!(never.code, 2, "{}", never.stderr);
    assert!(
        never.stderr.contains("has no lockfile yet"),
        "{}",
        never.stderr
    );
}

fn tar_names(path: &std::path::Path) -> Vec<String> {
    let out = Command::new("tar").arg("tf").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn gc_removes_old_images_and_keeps_the_newest_exportable() {
    let p = project("", "develop");
    let first = p.build(ENV, 0);
    p.write(
        "recipes/app.yaml",
        &app_recipe("  labels: { team: platform }\n"),
    );
    let second = p.build(ENV, 0);
    let blob = |r: &Run| {
        let d = image(r, "app").1;
        p.root.join("cache/oci/blobs/sha256").join(&d[7..])
    };
    assert!(blob(&first).exists() && blob(&second).exists());
    let store = p.root.join("cache").display().to_string();
    let r = p.run(&["gc", "--keep", "1", "--store", &store]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !blob(&first).exists(),
        "the old image's manifest is collected"
    );
    assert!(blob(&second).exists());
    let out = p.root.join("app.tar").display().to_string();
    let e = p.run(&[
        "image", "export", "app", "--env", ENV, "--store", &store, "-o", &out,
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
}
