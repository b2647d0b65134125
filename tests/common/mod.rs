//! Helpers shared by the end-to-end tests on real models.
#![allow(dead_code)]
use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub const SMOLLM2: &str = ".cache/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN05: &str = ".cache/models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf";
pub const QWEN15: &str = ".cache/models/qwen2.5-coder-1.5b-instruct/qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf";
pub const GEMMA3: &str = ".cache/models/gemma3-270m/gemma-3-270m.Q4_K_M.gguf";

/// The model's path. SmolLM2 is required (the test command fetches it); other models are
/// optional and `None` means the caller should say it skipped.
pub fn model(rel: &str) -> Option<PathBuf> {
    let p = root().join(rel);
    if p.exists() {
        return Some(p);
    }
    assert_ne!(rel, SMOLLM2, "{} is missing: run scripts/fetch-models.sh", p.display());
    eprintln!("note: {} not present, skipping (scripts/fetch-models.sh fetches it)", p.display());
    None
}

pub fn text(name: &str) -> String {
    let p = root().join(".cache/data").join(name);
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
