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
            400 | 404 | 405 | 413 | 422 => "invalid_request_error",
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

/// Sampling fields shared by both endpoints, with OpenAI's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub stream: bool,
    pub n: Option<u64>,
    pub user: Option<String>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub stream_options: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub n: Option<u64>,
    pub user: Option<String>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub stream_options: Option<Value>,
}

/// Parses a body, turning serde's complaint into a 400 that names the field where it can.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let param = msg.split('`').nth(1).map(str::to_string);
        ApiError { status: 400, message: format!("invalid request body: {msg}"), param }
    })
}

/// Limits the server enforces on every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_tokens: usize,
    pub context: usize,
}

#[allow(clippy::too_many_arguments)]
fn sampling(
    limits: &Limits,
    default_max: usize,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f64>,
    stop: Option<Stop>,
    seed: Option<u64>,
    n: Option<u64>,
    penalties: (Option<f64>, Option<f64>),
) -> Result<SamplingParams, ApiError> {
    if n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n", "only n = 1 is supported"));
    }
    if penalties.0.is_some_and(|p| p != 0.0) {
        return Err(ApiError::bad("frequency_penalty", "not supported; use repetition_penalty"));
    }
    if penalties.1.is_some_and(|p| p != 0.0) {
        return Err(ApiError::bad("presence_penalty", "not supported; use repetition_penalty"));
    }
    let max_new = max_tokens.map_or(default_max as u64, |m| m);
    if max_new > limits.max_tokens as u64 {
        return Err(ApiError::bad(
            "max_tokens",
            format!("{max_new} exceeds this server's limit of {}", limits.max_tokens),
        ));
    }
    let stop = stop.map(Stop::list).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::bad("stop", "at most 4 stop sequences"));
    }
    let p = SamplingParams {
        temperature: temperature.unwrap_or(1.0),
        top_k: top_k.unwrap_or(0).min(u32::MAX as u64) as usize,
        top_p: top_p.unwrap_or(1.0),
        min_p: min_p.unwrap_or(0.0),
        repetition_penalty: repetition_penalty.unwrap_or(1.0),
        seed: seed.unwrap_or(0),
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

impl CompletionRequest {
    pub fn sampling(&self, limits: &Limits) -> Result<SamplingParams, ApiError> {
        if self.logprobs.is_some_and(|k| k > 5) {
            return Err(ApiError::bad("logprobs", "at most 5"));
        }
        sampling(
            limits,
            16,
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.top_k,
            self.min_p,
            self.repetition_penalty,
            self.stop.clone(),
            self.seed,
            self.n,
            (self.frequency_penalty, self.presence_penalty),
        )
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
        let default_max = limits.max_tokens.min(512);
        sampling(
            limits,
            default_max,
            self.max_completion_tokens.or(self.max_tokens),
            self.temperature,
            self.top_p,
            self.top_k,
            self.min_p,
            self.repetition_penalty,
            self.stop.clone(),
            self.seed,
            self.n,
            (self.frequency_penalty, self.presence_penalty),
        )
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
}
