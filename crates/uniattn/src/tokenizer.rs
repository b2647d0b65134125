//! Text <-> tokens through the Hugging Face `tokenizers` crate, plus the model's chat template.
//! For GGUF files the tokenizer is rebuilt from the embedded vocabulary as the `tokenizer.json`
//! that transformers would write: byte-level BPE with merges for GPT-2-style vocabularies
//! (SmolLM2, Qwen2), SentencePiece-style BPE with merges derived from scores (Gemma).
use crate::error::{Error, Result};
use serde_json::{json, Value as Json};
use std::path::Path;

/// One chat message for the template.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend BOS when encoding a document (GGUF `add_bos_token`; true for Gemma).
    pub add_bos: bool,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub chat_template: Option<String>,
    /// The `tokenizer.json` text, kept so that it can be written next to a converted model.
    pub json: String,
}

/// The base budget of template instructions (minijinja fuel) for rendering a chat.
pub const CHAT_TEMPLATE_FUEL: u64 = 1_000_000;

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("tokenizer: {e}"))
}

impl Tokenizer {
    pub(crate) fn from_json_text(
        json: String,
        path: &Path,
        add_bos: bool,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| tok_err(path, e))?;
        Ok(Tokenizer { inner, add_bos, bos_id, eos_ids, chat_template, json })
    }

    /// Loads `tokenizer.json` (+ `tokenizer_config.json` for BOS, EOS and the chat template).
    pub fn from_hf_folder(dir: &Path, bos_id: Option<u32>, eos_ids: Vec<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let json = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Json = match std::fs::read_to_string(&cfg_path) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| Error::format(&cfg_path, format!("invalid JSON: {e}")))?,
            Err(_) => json!({}),
        };
        let template = cfg.get("chat_template").and_then(Json::as_str).map(str::to_string);
        let add_bos = cfg.get("add_bos_token").and_then(Json::as_bool).unwrap_or(false);
        let mut t = Self::from_json_text(json, &path, add_bos, bos_id, eos_ids, template)?;
        // tokenizer_config.json names the tokens; prefer it where config.json had no ids.
        let id_of =
            |k: &str, t: &Tokenizer| cfg.get(k).and_then(Json::as_str).and_then(|s| t.inner.token_to_id(s));
        if t.bos_id.is_none() {
            t.bos_id = id_of("bos_token", &t);
        }
        if t.eos_ids.is_empty() {
            t.eos_ids = id_of("eos_token", &t).into_iter().collect();
        }
        // The tokenizer.json post-processor may add BOS itself; we add it explicitly instead.
        let _ = t.inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        Ok(t)
    }

    pub fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::invalid(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if with_bos && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::invalid(format!("tokenizer: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Renders `messages` with the model's chat template (Jinja, as transformers does), with
    /// its work bounded (see [`CHAT_TEMPLATE_FUEL`]).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::invalid("this model has no chat template; pass a raw prompt instead"))?;
        let mut env = minijinja::Environment::new();
        // A template is data from the model file: bound its work (a real one spends a few
        // thousand instructions per message) so a hostile loop ends with an error, not a hang.
        env.set_fuel(Some(CHAT_TEMPLATE_FUEL + 50_000 * messages.len() as u64));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| Error::invalid(format!("chat template: {e}")))?;
        let tok = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => tok(self.bos_id),
                    eos_token => tok(self.eos_ids.first().copied()),
                })
            })
            .map_err(|e| Error::invalid(format!("chat template: {e}")))
    }

    /// The text a model sees for one user turn: the chat template with a generation prompt
    /// when the model has one and `raw` is off, else the text itself.
    pub fn render_prompt(&self, system: Option<&str>, user: &str, raw: bool) -> Result<String> {
        if raw || self.chat_template.is_none() {
            return Ok(user.to_string());
        }
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(ChatMessage { role: "system".into(), content: s.into() });
        }
        msgs.push(ChatMessage { role: "user".into(), content: user.into() });
        self.apply_chat_template(&msgs, true)
    }

    /// The `tokenizer.json` a folder gets: the one read, plus a post-processor that adds BOS
    /// where this tokenizer adds it and the file has none (a tokenizer made from GGUF
    /// metadata), so that other loaders (transformers' tokenizer, `tokenizers`) start
    /// sequences as uniattn does. uniattn itself drops the post-processor on load.
    fn json_for_folder(&self) -> String {
        let bos = self.bos_id.and_then(|i| self.inner.id_to_token(i).map(|t| (i, t)));
        let (true, Some((id, bos))) = (self.add_bos, bos) else { return self.json.clone() };
        let Ok(mut v) = serde_json::from_str::<Json>(&self.json) else { return self.json.clone() };
        if v.get("post_processor").is_some_and(|p| !p.is_null()) {
            return self.json.clone();
        }
        let special = |type_id: u32| json!({"SpecialToken": {"id": bos, "type_id": type_id}});
        let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
        v["post_processor"] = json!({
            "type": "TemplateProcessing",
            "single": [special(0), seq("A", 0)],
            "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [id], "tokens": [bos]}},
        });
        v.to_string()
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into a model folder.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tok = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let cfg = json!({
            "add_bos_token": self.add_bos,
            "bos_token": tok(self.bos_id),
            "eos_token": tok(self.eos_ids.first().copied()),
            "chat_template": self.chat_template,
        });
        crate::fs::write_atomic(&dir.join("tokenizer.json"), self.json_for_folder().as_bytes())?;
        crate::fs::write_atomic(
            &dir.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&cfg).expect("json").as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_tokenizer_with_template as with_template;

    /// A tokenizer that adds BOS writes a tokenizer.json whose post-processor adds it (for
    /// other loaders), and reading the folder back adds it once, not twice.
    #[test]
    fn a_saved_folder_starts_sequences_with_bos_once() {
        let t = crate::testing::tiny_tokenizer();
        let with_bos =
            Tokenizer::from_json_text(t.json.clone(), Path::new("tiny"), true, Some(1), vec![31], None)
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        with_bos.save(dir.path()).unwrap();
        let written = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(written.encode("t5 t7", true).unwrap().get_ids(), [1, 5, 7], "the file's post-processor");
        let back = Tokenizer::from_hf_folder(dir.path(), None, vec![]).unwrap();
        assert_eq!(back.encode("t5 t7", true).unwrap(), [1, 5, 7]);
        // Without BOS the file is written as it was read.
        t.save(dir.path()).unwrap();
        let plain = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(plain.encode("t5 t7", true).unwrap().get_ids(), [5, 7]);
    }

    #[test]
    fn a_chat_template_that_loops_for_ever_ends_with_an_error() {
        let msgs = [ChatMessage { role: "user".into(), content: "hi".into() }];
        let ok = with_template(Some("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"));
        assert_eq!(ok.apply_chat_template(&msgs, false).unwrap(), "<user>hi");
        let hostile = with_template(Some(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}",
        ));
        let t0 = std::time::Instant::now();
        let err = hostile.apply_chat_template(&msgs, false).unwrap_err().to_string();
        assert!(err.contains("chat template") && err.contains("fuel"), "{err}");
        assert!(t0.elapsed().as_secs() < 10, "bounded: {:?}", t0.elapsed());
    }
}
