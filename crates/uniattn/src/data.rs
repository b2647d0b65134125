//! Instruction and text data: JSON arrays or JSONL of Alpaca rows (`instruction`, `input`,
//! `output`) or prompt/response rows (`input`, `output`), and plain text files. Rows are turned
//! into a prompt (no loss) and a response (loss) with the Alpaca template the reference recipe
//! uses. A malformed row is reported with its number and what was expected.
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// One training or calibration example: the model reads `prompt` and learns `response`.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub response: String,
}

impl Example {
    pub fn text(&self) -> String {
        format!("{}{}", self.prompt, self.response)
    }
}

const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// The Alpaca prompt (Stanford Alpaca's `PROMPT_DICT`).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        ALPACA_NO_INPUT.replace("{instruction}", instruction)
    } else {
        ALPACA_WITH_INPUT.replace("{instruction}", instruction).replace("{input}", input)
    }
}

fn row_to_example(v: &Value) -> std::result::Result<Example, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let s = |k: &str| -> std::result::Result<Option<&str>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("field '{k}' must be a string")),
        }
    };
    let output = s("output")?.ok_or("missing field 'output'")?;
    let (instruction, input) = (s("instruction")?, s("input")?);
    let prompt = match (instruction, input) {
        (Some(i), inp) => alpaca_prompt(i, inp.unwrap_or("")),
        (None, Some(inp)) => alpaca_prompt(inp, ""),
        (None, None) => return Err("expected 'instruction' (Alpaca) or 'input' (prompt/response)".into()),
    };
    Ok(Example { prompt, response: output.to_string() })
}

/// Reads instruction rows from a `.json` array or a `.jsonl` file.
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let trimmed = text.trim_start();
    let rows: Vec<(usize, std::result::Result<Value, String>)> = if trimmed.starts_with('[') {
        let v: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        v.as_array()
            .expect("starts with [")
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| (i + 1, Ok(r)))
            .collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| format!("invalid JSON: {e}"))))
            .collect()
    };
    let unit = if trimmed.starts_with('[') { "row" } else { "line" };
    let mut out = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for (n, r) in rows {
        match r.and_then(|v| row_to_example(&v)) {
            Ok(e) => out.push(e),
            Err(msg) => bad.push(format!("{unit} {n}: {msg}")),
        }
    }
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        return Err(Error::format(
            path,
            format!(
                "{} malformed {unit}s ({}{})",
                bad.len(),
                shown.join("; "),
                if bad.len() > 5 { "; ..." } else { "" }
            ),
        ));
    }
    if out.is_empty() {
        return Err(Error::format(path, "no rows"));
    }
    Ok(out)
}

/// Calibration or evaluation texts: instruction rows rendered with their prompt, or the
/// paragraphs of a plain text file (blank-line separated).
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "json" || ext == "jsonl" {
        return Ok(read_examples(path)?.iter().map(Example::text).collect());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let paras: Vec<String> =
        text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect();
    if paras.is_empty() {
        return Err(Error::format(path, "no text"));
    }
    Ok(paras)
}

/// Parses a row range `a..b` (end exclusive).
pub fn parse_range(s: &str) -> Result<std::ops::Range<usize>> {
    s.split_once("..")
        .and_then(|(a, b)| Some(a.trim().parse().ok()?..b.trim().parse().ok()?))
        .filter(|r: &std::ops::Range<usize>| r.start < r.end)
        .ok_or_else(|| {
            Error::invalid(format!("range '{s}': expected START..END with START < END, e.g. 0..256"))
        })
}

/// `items[range]`, or an error saying how many there are.
pub fn select<T: Clone>(items: &[T], range: &std::ops::Range<usize>, what: &Path) -> Result<Vec<T>> {
    if range.end > items.len() {
        return Err(Error::format(
            what,
            format!("rows {}..{} requested, but the file has {}", range.start, range.end, items.len()),
        ));
    }
    Ok(items[range.clone()].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("uniattn-data-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn alpaca_and_prompt_response_rows() {
        let p = write(
            "ok.json",
            r#"[{"instruction": "Add.", "input": "1+1", "output": "2"}, {"input": "Hi", "output": "Hello"}]"#,
        );
        let ex = read_examples(&p).unwrap();
        assert!(ex[0].prompt.contains("### Instruction:\nAdd.\n\n### Input:\n1+1\n\n### Response:\n"));
        assert_eq!(ex[0].response, "2");
        assert!(ex[1].prompt.contains("### Instruction:\nHi\n\n### Response:\n"));
    }

    #[test]
    fn malformed_rows_are_numbered() {
        let p = write(
            "bad.jsonl",
            "{\"input\": \"a\", \"output\": \"b\"}\n{\"input\": 3, \"output\": \"b\"}\nnot json\n",
        );
        let err = read_examples(&p).unwrap_err().to_string();
        assert!(err.contains("2 malformed lines"), "{err}");
        assert!(err.contains("line 2: field 'input' must be a string"), "{err}");
        assert!(err.contains("line 3: invalid JSON"), "{err}");
        let p = write("noout.json", r#"[{"instruction": "x"}]"#);
        let err = read_examples(&p).unwrap_err().to_string();
        assert!(err.contains("row 1: missing field 'output'"), "{err}");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("3..9").unwrap(), 3..9);
        assert!(parse_range("9..3").is_err());
        assert!(select(&[1, 2, 3], &(1..5), Path::new("f.json")).unwrap_err().to_string().contains("has 3"));
    }

    #[test]
    fn real_calibration_files_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
        for f in ["pmc_llama_instructions_1000.json", "tulu3_sft_filtered_1000.json"] {
            let ex = read_examples(&dir.join(f)).unwrap();
            assert_eq!(ex.len(), 1000, "{f}");
        }
    }
}
