//! The OpenAI wire format: request bodies (unknown fields refused, as OpenAI refuses them),
//! their checks, and the JSON a client expects back, errors included.
use crate::engine::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};

/// An error as OpenAI returns it, with the HTTP status to send.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        ApiError { status: 400, message: message.into(), param: Some(param.to_string()) }
    }

    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), param: None }
    }

    pub fn body(&self) -> Value {
        let kind = match self.status {
            400 | 404 | 405 | 413 | 415 | 422 => "invalid_request_error",
            401 => "authentication_error",
            503 => "overloaded_error",
            _ => "server_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": null}})
    }
}

/// `"text"`, `["a", "b"]`, `[1, 2, 3]` or `[[1, 2], [3]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn list(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// Fields both endpoints take (OpenAI's, plus top_k, min_p and repetition_penalty).
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub n: Option<u64>,
    pub user: Option<String>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub stream_options: Option<Value>,
}

impl Common {
    /// `stream_options.include_usage`: a last chunk with the usage and no choices.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.get("include_usage")).and_then(Value::as_bool)
            == Some(true)
    }
}

const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "stop",
    "seed",
    "stream",
    "n",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "stream_options",
];

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    /// A string, `null` (an empty turn), or a list of `{"type": "text", "text": ...}` parts,
    /// joined as OpenAI's clients send them.
    #[serde(deserialize_with = "content_text")]
    pub content: String,
    pub name: Option<String>,
}

fn content_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (Some(kind), _) => {
                        return Err(D::Error::custom(format!(
                            "content part of type `{kind}` is not supported (text only)"
                        )))
                    }
                    _ => return Err(D::Error::custom("a content part needs `type` and `text`")),
                }
            }
            Ok(out)
        }
        other => {
            Err(D::Error::custom(format!("content must be a string, null or a list of parts, not {other}")))
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u64>,
    #[serde(flatten)]
    pub common: Common,
}

/// A request body: an endpoint's fields on top of [`Common`].
pub trait Body: serde::de::DeserializeOwned {
    const FIELDS: &'static [&'static str];
}

impl Body for CompletionRequest {
    const FIELDS: &'static [&'static str] = &["prompt", "logprobs", "echo"];
}

impl Body for ChatRequest {
    const FIELDS: &'static [&'static str] =
        &["messages", "max_completion_tokens", "logprobs", "top_logprobs"];
}

/// Parses a body, refusing unknown fields (as OpenAI does; serde cannot with `flatten`) and
/// turning serde's complaint into a 400 that names the field where it can.
pub fn parse<T: Body>(body: &[u8]) -> Result<T, ApiError> {
    let invalid = |e: serde_json::Error| {
        let msg = e.to_string();
        let param = msg.split('`').nth(1).map(str::to_string);
        ApiError { status: 400, message: format!("invalid request body: {msg}"), param }
    };
    let v: Value = serde_json::from_slice(body).map_err(invalid)?;
    let Value::Object(map) = &v else {
        return Err(ApiError::new(400, "the request body must be a JSON object"));
    };
    let mut map = map.clone();
    for (k, value) in map.clone() {
        if T::FIELDS.contains(&k.as_str()) || COMMON_FIELDS.contains(&k.as_str()) {
            continue;
        }
        if is_no_op(&k, &value) {
            // What ordinary clients send with its default meaning: accepted and ignored.
            map.remove(&k);
        } else if UNSUPPORTED.contains(&k.as_str()) {
            return Err(ApiError::bad(&k, format!("`{k}` is not supported by this server")));
        } else {
            return Err(ApiError::bad(&k, format!("unknown field `{k}`")));
        }
    }
    serde_json::from_value(Value::Object(map)).map_err(invalid)
}

/// OpenAI fields this server does not implement: refused by name rather than as unknown.
const UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
    "response_format",
    "parallel_tool_calls",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "service_tier",
    "suffix",
    "best_of",
    "web_search_options",
];

/// Values of known fields that ask for the default behaviour (clients send them routinely).
fn is_no_op(key: &str, v: &Value) -> bool {
    match key {
        "store" | "parallel_tool_calls" => v.is_boolean(),
        "metadata" => v.is_object() || v.is_null(),
        "response_format" => v.get("type").and_then(Value::as_str) == Some("text"),
        "tool_choice" => v.as_str() == Some("none") || v.is_null(),
        "tools" | "functions" => v.as_array().is_some_and(Vec::is_empty) || v.is_null(),
        "logit_bias" => v.as_object().is_some_and(serde_json::Map::is_empty) || v.is_null(),
        "best_of" => v.as_u64() == Some(1),
        _ => false,
    }
}

/// Stop sequences a request may give (OpenAI allows 4; lm-evaluation-harness sends 5).
pub const MAX_STOP: usize = 16;

/// A seed for a request that gives none, so that two such requests sample differently.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut r = crate::rng::SplitMix64(t ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32));
    r.next_u64()
}

/// Limits the server enforces on every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_tokens: usize,
    pub context: usize,
}

impl Common {
    /// Checks the values and builds the sampling parameters; `max_tokens` overrides
    /// `self.max_tokens` when given (chat's `max_completion_tokens`).
    fn sampling(
        &self,
        limits: &Limits,
        default_max: usize,
        max_tokens: Option<u64>,
    ) -> Result<SamplingParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad("n", "only n = 1 is supported"));
        }
        if self.frequency_penalty.is_some_and(|p| p != 0.0) {
            return Err(ApiError::bad("frequency_penalty", "not supported; use repetition_penalty"));
        }
        if self.presence_penalty.is_some_and(|p| p != 0.0) {
            return Err(ApiError::bad("presence_penalty", "not supported; use repetition_penalty"));
        }
        let max_new = max_tokens.or(self.max_tokens).unwrap_or(default_max as u64);
        if max_new > limits.max_tokens as u64 {
            return Err(ApiError::bad(
                "max_tokens",
                format!("{max_new} exceeds this server's limit of {}", limits.max_tokens),
            ));
        }
        let stop = self.stop.clone().map(Stop::list).unwrap_or_default();
        if stop.len() > MAX_STOP {
            return Err(ApiError::bad("stop", format!("at most {MAX_STOP} stop sequences")));
        }
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0).min(u32::MAX as u64) as usize,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(fresh_seed),
            max_new_tokens: max_new as usize,
            stop,
            ignore_eos: false,
        };
        p.validate().map_err(|e| {
            let msg = e.to_string();
            let field = msg.split(':').next().unwrap_or("").to_string();
            ApiError::bad(&field, msg)
        })?;
        Ok(p)
    }
}

impl CompletionRequest {
    pub fn sampling(&self, limits: &Limits) -> Result<SamplingParams, ApiError> {
        if self.logprobs.is_some_and(|k| k > 5) {
            return Err(ApiError::bad("logprobs", "at most 5"));
        }
        self.common.sampling(limits, 16, None)
    }
}

impl ChatRequest {
    pub fn sampling(&self, limits: &Limits) -> Result<SamplingParams, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad("messages", "at least one message is needed"));
        }
        if self.top_logprobs.is_some_and(|k| k > 5) {
            return Err(ApiError::bad("top_logprobs", "at most 5"));
        }
        self.common.sampling(limits, limits.max_tokens.min(512), self.max_completion_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_tokens: 100, context: 256 };

    fn completion(body: &str) -> Result<SamplingParams, ApiError> {
        parse::<CompletionRequest>(body.as_bytes())?.sampling(&LIMITS)
    }

    #[test]
    fn bad_requests_name_the_field() {
        let e = completion(r#"{"prompt": "x", "max_tokens": -1}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("invalid value"), "{e:?}");
        let e = completion(r#"{"prompt": "x", "max_tokens": 1000000}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = completion(r#"{"prompt": "x", "bogus": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown field") && e.param.as_deref() == Some("bogus"), "{e:?}");
        let e = completion(r#"{"prompt": "x", "top_p": 0}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_p"));
        let e = completion(r#"{"prompt": "x", "n": 2}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        let e = completion(r#"{"prompt": "x", "temperature": 1e999}"#).unwrap_err();
        assert_eq!(e.status, 400);
        let e = completion(r#"{"prompt": 5}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(completion(r#"{"prompt": [[1, 2], [3]], "stop": "\n", "seed": 3}"#).is_ok());
    }

    #[test]
    fn what_ordinary_clients_send_is_accepted() {
        // lm-evaluation-harness sends five stop sequences.
        let p = completion(r#"{"prompt": "x", "stop": ["a", "b", "c", "d", "e"], "seed": 1}"#).unwrap();
        assert_eq!((p.stop.len(), p.seed), (5, 1));
        let e =
            completion(&format!(r#"{{"prompt": "x", "stop": {:?}}}"#, vec!["s"; MAX_STOP + 1])).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stop"));
        // No seed: two requests sample differently.
        assert_ne!(
            completion(r#"{"prompt": "x"}"#).unwrap().seed,
            completion(r#"{"prompt": "x"}"#).unwrap().seed
        );
        let chat = |b: &str| parse::<ChatRequest>(b.as_bytes());
        let r = chat(
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}], "store": false, "metadata": {"k": "v"},
                "response_format": {"type": "text"}, "parallel_tool_calls": true, "tool_choice": "none",
                "logit_bias": {}, "tools": []}"#,
        )
        .unwrap();
        assert_eq!((r.messages[0].content.as_str(), r.messages[1].content.as_str()), ("ab", ""));
        // Features we do not have are refused by name, not as unknown fields.
        for (body, field) in [
            (r#"{"messages": [], "tools": [{"type": "function"}]}"#, "tools"),
            (r#"{"messages": [], "response_format": {"type": "json_object"}}"#, "response_format"),
            (r#"{"messages": [], "logit_bias": {"1": 5}}"#, "logit_bias"),
        ] {
            let e = chat(body).unwrap_err();
            assert!(e.message.contains("not supported") && e.param.as_deref() == Some(field), "{e:?}");
        }
        let e = chat(r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#).unwrap_err();
        assert!(e.message.contains("image_url") && e.message.contains("not supported"), "{e:?}");
    }
}
