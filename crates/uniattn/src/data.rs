//! Instruction and text data: JSON arrays or JSONL of Alpaca rows (`instruction`, `input`,
//! `output`) or prompt/response rows (`input`, `output`), and plain text files. Rows are turned
//! into a prompt (no loss) and a response (loss) with the Alpaca template the reference recipe
//! uses. A malformed row is reported with its number and what was expected.
use crate::error::{Error, Result};
use crate::tokenizer::ChatMessage;
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

/// One row of a data file: an instruction pair or a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Instruction(Example),
    Chat(Vec<ChatMessage>),
}

/// `messages` with `role`/`content`, or ShareGPT `conversations` with `from`/`value`.
fn row_to_chat(v: &Value) -> Option<std::result::Result<Vec<ChatMessage>, String>> {
    let obj = v.as_object()?;
    let (list, role_key, content_key) = match (obj.get("messages"), obj.get("conversations")) {
        (Some(m), _) => (m, "role", "content"),
        (None, Some(c)) => (c, "from", "value"),
        _ => return None,
    };
    let parse = || -> std::result::Result<Vec<ChatMessage>, String> {
        let arr = list.as_array().ok_or("the conversation must be an array")?;
        let mut out = Vec::with_capacity(arr.len());
        for (i, m) in arr.iter().enumerate() {
            let get = |k: &str| {
                m.get(k).and_then(Value::as_str).ok_or(format!("message {i}: missing string '{k}'"))
            };
            let role = match get(role_key)? {
                "human" | "user" => "user",
                "gpt" | "assistant" | "chatgpt" | "bard" => "assistant",
                "system" => "system",
                r => return Err(format!("message {i}: unknown role '{r}'")),
            };
            out.push(ChatMessage { role: role.into(), content: get(content_key)?.to_string() });
        }
        if !out.iter().any(|m| m.role == "assistant") {
            return Err("the conversation has no assistant turn".into());
        }
        Ok(out)
    };
    Some(parse())
}

fn row_to_record(v: &Value) -> std::result::Result<Record, String> {
    match row_to_chat(v) {
        Some(chat) => chat.map(Record::Chat),
        None => row_to_example(v).map(Record::Instruction),
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

/// Rows of a `.json` array or a `.jsonl` file. Malformed rows stop the read with their numbers,
/// unless `skip_bad`, in which case they are returned as messages next to the good records.
pub fn read_records(path: &Path, skip_bad: bool) -> Result<(Vec<Record>, Vec<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let trimmed = text.trim_start();
    let is_array = trimmed.starts_with('[');
    let rows: Vec<NumberedRow> = if is_array {
        array_rows(&text).map_err(|e| Error::format(path, e))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, serde_json::from_str(l).map_err(|e| format!("invalid JSON: {e}"))))
            .collect()
    };
    let unit = if is_array { "row" } else { "line" };
    let mut out = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for (n, r) in rows {
        match r.and_then(|v| row_to_record(&v)) {
            Ok(e) => out.push(e),
            Err(msg) => bad.push(format!("{unit} {n}: {msg}")),
        }
    }
    if !bad.is_empty() && !skip_bad {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        return Err(Error::format(
            path,
            format!(
                "{} malformed {unit}s ({}{}); fix them or pass --skip-bad-rows",
                bad.len(),
                shown.join("; "),
                if bad.len() > 5 { "; ..." } else { "" }
            ),
        ));
    }
    if out.is_empty() {
        return Err(Error::format(path, "no usable rows"));
    }
    Ok((out, bad))
}

/// A row's number (from 1) and its value or what is wrong with it.
type NumberedRow = (usize, std::result::Result<Value, String>);

/// The rows of a JSON array, each parsed on its own so that an error names its row. A file
/// that ends inside a row (a truncated download; the ShareGPT file is one) gives that row as an
/// error, so it is refused unless bad rows are skipped; a syntax error anywhere else refuses
/// the whole file with the row, line and column.
fn array_rows(text: &str) -> std::result::Result<Vec<NumberedRow>, String> {
    let start = text.len() - text.trim_start().len();
    let line_col = |offset: usize| {
        let before = &text[..offset.min(text.len())];
        (before.matches('\n').count() + 1, offset - before.rfind('\n').map_or(0, |i| i + 1) + 1)
    };
    let mut pos = start + 1; // past '['
    let mut rows = Vec::new();
    let skip_ws = |p: usize| p + text[p..].len() - text[p..].trim_start().len();
    pos = skip_ws(pos);
    if text[pos..].starts_with(']') {
        return Ok(rows);
    }
    loop {
        let n = rows.len() + 1;
        let mut it = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                rows.push((n, Ok(v)));
                pos += it.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => {
                rows.push((
                    n,
                    Err(format!("the file ends inside this row (truncated at byte {})", text.len())),
                ));
                return Ok(rows);
            }
            Some(Err(e)) => {
                let (line, col) = line_col(pos + it.byte_offset());
                return Err(format!("invalid JSON in row {n} (near line {line}, column {col}): {e}"));
            }
            None => {
                rows.push((
                    n,
                    Err(format!("the file ends before this row (truncated at byte {})", text.len())),
                ));
                return Ok(rows);
            }
        }
        pos = skip_ws(pos);
        match text[pos..].chars().next() {
            Some(',') => pos = skip_ws(pos + 1),
            Some(']') => {
                let rest = text[pos + 1..].trim();
                if !rest.is_empty() {
                    let (line, col) = line_col(pos + 1 + text[pos + 1..].find(rest).unwrap_or(0));
                    return Err(format!(
                        "unexpected text after the array's closing ']' (line {line}, column {col})"
                    ));
                }
                return Ok(rows);
            }
            None => {
                rows.push((
                    n + 1,
                    Err(format!("the file ends after row {n} without the closing ']' (truncated?)")),
                ));
                return Ok(rows);
            }
            Some(c) => {
                let (line, col) = line_col(pos);
                return Err(format!(
                    "expected ',' or ']' after row {n}, found '{c}' (line {line}, column {col})"
                ));
            }
        }
    }
}

/// Instruction rows (calibration): every row must be an instruction pair.
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    let (records, _) = read_records(path, false)?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Record::Instruction(e) => Ok(e),
            Record::Chat(_) => Err(Error::format(
                path,
                format!("row {}: a conversation; calibration takes instruction rows or text", i + 1),
            )),
        })
        .collect()
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

    /// A file named `*-{name}` holding `text`, removed when the returned path drops.
    fn write(name: &str, text: &str) -> tempfile::TempPath {
        let p = tempfile::Builder::new().suffix(&format!("-{name}")).tempfile().unwrap().into_temp_path();
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
        assert!(err.contains("2 malformed lines") && err.contains("--skip-bad-rows"), "{err}");
        let (ok, bad) = read_records(&p, true).unwrap();
        assert_eq!((ok.len(), bad.len()), (1, 2));
        assert!(err.contains("line 2: field 'input' must be a string"), "{err}");
        assert!(err.contains("line 3: invalid JSON"), "{err}");
        let p = write("noout.json", r#"[{"instruction": "x"}]"#);
        let err = read_examples(&p).unwrap_err().to_string();
        assert!(err.contains("row 1: missing field 'output'"), "{err}");
    }

    #[test]
    fn chat_rows_and_truncated_arrays() {
        let p = write(
            "chat.json",
            r#"[{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
               {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
               {"conversations": [{"from": "human", "value": "cut"#,
        );
        // A truncated file is refused by default, and its cut row reported when skipped.
        let err = read_records(&p, false).unwrap_err().to_string();
        assert!(err.contains("row 3: the file ends inside this row"), "{err}");
        let (recs, bad) = read_records(&p, true).unwrap();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(recs.len(), 2);
        let Record::Chat(m) = &recs[0] else { panic!("not a chat") };
        assert_eq!(
            (m[0].role.as_str(), m[1].role.as_str(), m[1].content.as_str()),
            ("user", "assistant", "Hello")
        );
        let p = write("noasst.jsonl", r#"{"messages": [{"role": "user", "content": "x"}]}"#);
        let err = read_records(&p, false).unwrap_err().to_string();
        assert!(err.contains("line 1: the conversation has no assistant turn"), "{err}");
    }

    #[test]
    fn a_syntax_error_mid_array_refuses_the_file_with_its_row() {
        let row = r#"{"input": "a", "output": "b"}"#;
        for (name, text, want) in [
            (
                "mid.json",
                format!("[{row},\n{row},\n{{\"input\": \"x\" \"output\": 1}},\n{row}]"),
                "row 3 (near line 3",
            ),
            ("comma.json", format!("[{row} {row}]"), "expected ',' or ']' after row 1"),
            ("tail.json", format!("[{row}] garbage"), "after the array's closing ']'"),
        ] {
            let p = write(name, &text);
            for skip in [false, true] {
                let err = read_records(&p, skip).unwrap_err().to_string();
                assert!(err.contains(want), "{name}: {err}");
            }
        }
        // Cut after a complete row: the missing ']' is reported, never silently accepted.
        let p = write("cut.json", &format!("[{row},\n{row}"));
        let err = read_records(&p, false).unwrap_err().to_string();
        assert!(err.contains("without the closing ']'"), "{err}");
        let p = write("empty.json", "[ ]");
        assert!(read_records(&p, false).unwrap_err().to_string().contains("no usable rows"));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("3..9").unwrap(), 3..9);
        assert!(parse_range("9..3").is_err());
        assert!(select(&[1, 2, 3], &(1..5), Path::new("f.json")).unwrap_err().to_string().contains("has 3"));
    }

    #[test]
    fn real_calibration_files_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
        for f in ["pmc_llama_instructions_1000.json", "tulu3_sft_filtered_1000.json"] {
            let ex = read_examples(&dir.join(f)).unwrap();
            assert_eq!(ex.len(), 1000, "{f}");
        }
    }
}
