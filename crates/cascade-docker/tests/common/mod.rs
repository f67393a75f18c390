//! Helpers shared by the engine tests: finding the engine (skip locally, fail in CI),
//! building the busybox test image with cascade-image, and checking through bollard
//! directly that a test left nothing behind.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use cascade_docker::{Docker, LABEL};
use cascade_image::{
    assemble, export_archive, ConfigSpec, ImageBuilt, ImageSpec, LayerEntry, LayerSpec, OciLayout,
};

/// Where the test image's statically linked busybox comes from (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
/// What `/www/version` holds.
pub const VERSION: &str = "cascade-docker-test 1.2.3";
/// What `/www/index.html` holds.
pub const INDEX: &str = "<h1>cascade smoke test</h1>";

const HINT: &str = "run .ci/services/docker.sh";

/// The engine, or `None` (after saying so) when there is none and this is not CI.
/// With `CI=true` a missing engine or busybox is a failure.
pub fn engine() -> Option<Docker> {
    let (what, why) = match (Docker::connect(), busybox_problem()) {
        (Err(e), _) => ("no Docker engine", e.to_string()),
        (Ok(_), Some(p)) => ("no static busybox", p),
        (Ok(docker), None) => return Some(docker),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{what} ({why}): {HINT} (it installs docker.io and busybox-static and starts dockerd)"
        );
    }
    eprintln!("skipping: {what} ({HINT})\n  {why}");
    None
}

fn busybox_problem() -> Option<String> {
    let bytes = match fs::read(BUSYBOX) {
        Ok(b) => b,
        Err(_) => return Some(format!("no {BUSYBOX} (install busybox-static)")),
    };
    // A dynamically linked busybox cannot run in a scratch image: it has a PT_INTERP
    // program header (its loader).
    has_interpreter(&bytes)
        .then(|| format!("{BUSYBOX} is dynamically linked (install busybox-static)"))
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header (unknown
/// layouts count as having one).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
    };
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return true;
    };
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP))
}

/// The test image: busybox, `/www` with `index.html` and `version`, and a command that
/// logs a line and then serves `/www` on port 8080.
pub struct TestImage {
    pub dir: tempfile::TempDir,
    pub built: ImageBuilt,
    pub archive: PathBuf,
    pub tag: String,
}

/// Builds the test image with cascade-image and exports it as a `docker load` archive.
pub fn build_image(tag: &str) -> TestImage {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    fs::create_dir_all(&www).unwrap();
    fs::write(www.join("index.html"), INDEX).unwrap();
    fs::write(www.join("version"), format!("{VERSION}\n")).unwrap();
    let layout = OciLayout::open_or_create(dir.path().join("layout")).unwrap();
    let mut entries = vec![LayerEntry::file("bin/busybox", BUSYBOX)];
    for applet in ["sh", "httpd", "cat", "echo"] {
        entries.push(LayerEntry::symlink(format!("bin/{applet}"), "busybox"));
    }
    entries.push(LayerEntry::file("www/index.html", www.join("index.html")));
    entries.push(LayerEntry::file("www/version", www.join("version")));
    let spec = ImageSpec {
        config: ConfigSpec {
            cmd: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo starting; exec httpd -f -v -p 8080 -h /www".into(),
            ]),
            env: vec!["PATH=/bin".into()],
            exposed_ports: ["8080".to_string()].into(),
            ..ConfigSpec::default()
        },
        layers: vec![LayerSpec {
            entries,
            created_by: "cascade-docker tests: busybox httpd".into(),
            comment: None,
        }],
        source_date_epoch: 1_700_000_000,
        ..ImageSpec::default()
    };
    let built = assemble(&layout, &spec).unwrap();
    let archive = dir.path().join("image.tar");
    export_archive(&layout, &built.manifest_digest, tag, &archive).unwrap();
    TestImage {
        dir,
        built,
        archive,
        tag: tag.to_string(),
    }
}

/// The tag of the test image, built and loaded once per test binary.
pub const TAG: &str = "cascade-docker-test/busybox-httpd:1";

pub fn loaded_image(docker: &Docker) -> &'static str {
    static LOADED: OnceLock<()> = OnceLock::new();
    LOADED.get_or_init(|| {
        let image = build_image(TAG);
        docker.load_archive(&image.archive).unwrap();
    });
    TAG
}

/// A runtime and a bollard client of the tests' own, to look at the engine without
/// going through the code under test.
pub fn inspector() -> (tokio::runtime::Runtime, bollard::Docker) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        bollard::Docker::connect_with_defaults()
            .unwrap()
            .negotiate_version()
            .await
            .unwrap()
    });
    (rt, client)
}

fn label_filter(extra: (&str, &str)) -> HashMap<String, Vec<String>> {
    HashMap::from([
        (
            "label".to_string(),
            vec![format!("{}={}", LABEL.0, LABEL.1)],
        ),
        (extra.0.to_string(), vec![extra.1.to_string()]),
    ])
}

/// Fails if a container or network labelled `cascade=1` and named `name` still exists.
pub fn assert_no_leftovers(name: &str) {
    assert!(name.starts_with("cascade-smoke-"), "{name}");
    let (rt, client) = inspector();
    rt.block_on(async {
        let filters = label_filter(("name", name));
        let containers = client
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap();
        assert!(containers.is_empty(), "containers left: {containers:?}");
        let networks = client
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .unwrap();
        assert!(networks.is_empty(), "networks left: {networks:?}");
    });
}

/// Fails if a container this process created (by its `cascade.pid` label) still exists.
pub fn assert_no_containers_of_this_process() {
    let (rt, client) = inspector();
    rt.block_on(async {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!(
                "{}={}",
                cascade_docker::LABEL_PID,
                std::process::id()
            )],
        )]);
        let containers = client
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap();
        assert!(containers.is_empty(), "containers left: {containers:?}");
    });
}

/// The id of the running cascade container whose environment holds `token`, waiting
/// up to 10 s for it to appear.
pub fn find_container_by_env(token: &str) -> Option<String> {
    let (rt, client) = inspector();
    rt.block_on(async {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}={}", LABEL.0, LABEL.1)],
        )]);
        for _ in 0..100 {
            let containers = client
                .list_containers(Some(
                    ListContainersOptionsBuilder::new()
                        .filters(&filters)
                        .build(),
                ))
                .await
                .unwrap();
            for c in containers {
                let Some(id) = c.id else { continue };
                let Ok(inspect) = client.inspect_container(&id, None).await else {
                    continue;
                };
                let env = inspect.config.and_then(|c| c.env).unwrap_or_default();
                if env.iter().any(|e| e == token) {
                    return Some(id);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    })
}

/// A token unique to one test, to put in a container's environment.
pub fn token(test: &str) -> String {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(test);
    format!(
        "CASCADE_TEST_TOKEN={test}-{}-{random:016x}",
        std::process::id()
    )
}
