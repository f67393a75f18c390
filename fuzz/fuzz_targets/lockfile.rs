//! cargo-fuzz target `lockfile`: see `fuzz/harness.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../render.rs"]
mod render;

fuzz_target!(|data: &[u8]| {
    harness::lockfile(data, &render::Miette);
});
