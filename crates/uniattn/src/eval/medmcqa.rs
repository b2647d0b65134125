//! MedMCQA as post-training data: the eval package's validation questions split by question id
//! into a held-out evaluation part and a training part, the latter as Alpaca rows (question and
//! options in, answer letter and explanation out). The split is a pure function of the seed.
use super::mc_task::McTask;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub struct Split {
    /// Alpaca rows (`instruction`, `input`, `output`, `source`).
    pub train: Vec<Value>,
    pub heldout_ids: Vec<String>,
}

const INSTRUCTION: &str =
    "Answer the medical multiple-choice question with the letter of the correct option, then explain why.";

/// The questions of `oe_eval_tasks/medmcqa/<variant>` with their `doc` fields, by id.
fn read_docs(path: &Path) -> Result<BTreeMap<String, Value>> {
    let mut docs = BTreeMap::new();
    super::tasks::for_each_gz_json_line(path, |_, row: Value| {
        if let Some(id) = row["doc"]["id"].as_str() {
            docs.entry(id.to_string()).or_insert_with(|| row["doc"].clone());
        }
        Ok(())
    })?;
    Ok(docs)
}

fn alpaca(doc: &Value) -> Option<Value> {
    let q = doc["question"].as_str()?;
    let opts: Vec<&str> =
        ["opa", "opb", "opc", "opd"].iter().map(|k| doc[*k].as_str()).collect::<Option<_>>()?;
    let cop = doc["cop"].as_u64()? as usize;
    let letter = ["A", "B", "C", "D"].get(cop)?;
    let input = format!("{q}\nA. {}\nB. {}\nC. {}\nD. {}", opts[0], opts[1], opts[2], opts[3]);
    let mut output = format!("Answer: {letter}. {}", opts[cop]);
    if let Some(e) = doc["exp"].as_str().filter(|e| !e.trim().is_empty()) {
        output += &format!("\nExplanation: {}", e.trim());
    }
    Some(json!({"instruction": INSTRUCTION, "input": input, "output": output, "source": "medmcqa"}))
}

/// Splits MedMCQA (the `tasks_dir/medmcqa/rc_5shot` requests): `heldout` ids chosen by a
/// seeded hash of each id, every other question becomes a training row.
pub fn split(tasks_dir: &Path, heldout: usize, seed: u64) -> Result<Split> {
    crate::cache::require_tasks_dir(tasks_dir)?;
    let path = tasks_dir.join("medmcqa/rc_5shot/requests.jsonl.gz");
    let docs = read_docs(&path)?;
    if heldout >= docs.len() {
        return Err(Error::invalid(format!(
            "--heldout {heldout}: MedMCQA has only {} questions",
            docs.len()
        )));
    }
    let rank = |id: &str| {
        let h =
            id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        SplitMix64(h ^ seed).next_u64()
    };
    let mut ids: Vec<&String> = docs.keys().collect();
    ids.sort_by_key(|id| (rank(id), id.to_string()));
    let mut heldout_ids: Vec<String> = ids[..heldout].iter().map(|s| s.to_string()).collect();
    heldout_ids.sort();
    let train = ids[heldout..].iter().filter_map(|id| alpaca(&docs[*id])).collect();
    Ok(Split { train, heldout_ids })
}

/// A split file's held-out ids (`{"heldout_ids": [...]}`).
fn heldout_ids(split_file: &Path) -> Result<std::collections::HashSet<String>> {
    let text = std::fs::read_to_string(split_file).map_err(|e| Error::io(split_file, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(split_file, e.to_string()))?;
    Ok(v["heldout_ids"]
        .as_array()
        .ok_or_else(|| Error::format(split_file, "expected a \"heldout_ids\" array"))?
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect())
}

/// Keeps the split's held-out questions (what evaluation scores).
pub fn restrict(task: &mut McTask, split_file: &Path) -> Result<()> {
    task.retain_ids(&heldout_ids(split_file)?, true);
    if task.items.is_empty() {
        return Err(Error::format(split_file, format!("none of its ids is a question of {}", task.name)));
    }
    Ok(())
}

/// Keeps the questions the split does not hold out (its training part), e.g. to choose a plan
/// in the evaluation's format without looking at the evaluation's questions.
pub fn exclude(task: &mut McTask, split_file: &Path) -> Result<()> {
    task.retain_ids(&heldout_ids(split_file)?, false);
    if task.items.is_empty() {
        return Err(Error::format(split_file, format!("it holds out every question of {}", task.name)));
    }
    Ok(())
}
