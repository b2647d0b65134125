//! Records -> token ids with a loss mask: prompts and user turns carry no loss, responses and
//! assistant turns (with their end-of-turn token) do. Deterministic shuffling from a seed.
use crate::data::{Example, Record};
use crate::error::Result;
use crate::tokenizer::{ChatMessage, Tokenizer};

/// One training sequence: `ids[i]` is a target when `mask[i]`. A packed sequence also lists
/// the lengths of the documents it holds (empty for one document).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenizedExample {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
    pub docs: Vec<usize>,
}

impl TokenizedExample {
    /// Tokens that carry loss (as targets of the previous position).
    pub fn targets(&self) -> usize {
        self.mask.iter().skip(1).filter(|&&m| m).count()
    }
}

/// Alpaca / prompt-response: the prompt is masked by its own token count, as the reference
/// recipe (Stanford Alpaca's `preprocess`) does; the response ends with EOS.
fn instruction(tok: &Tokenizer, ex: &Example) -> Result<TokenizedExample> {
    let n_prompt = tok.encode(&ex.prompt, true)?.len();
    let mut ids = tok.encode(&ex.text(), true)?;
    ids.extend(tok.eos_ids.first());
    let mask = (0..ids.len()).map(|i| i >= n_prompt).collect();
    Ok(TokenizedExample { ids, mask, docs: vec![] })
}

/// A conversation through the chat template: each assistant turn is the text between the
/// rendering of the conversation up to it (with the generation prompt) and including it.
fn chat(tok: &Tokenizer, msgs: &[ChatMessage]) -> Result<TokenizedExample> {
    let full = tok.apply_chat_template(msgs, false)?;
    let ids = tok.encode(&full, true)?;
    let mut mask = vec![false; ids.len()];
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let start = tok.encode(&tok.apply_chat_template(&msgs[..i], true)?, true)?.len();
        let end = tok.encode(&tok.apply_chat_template(&msgs[..=i], false)?, true)?.len();
        for flag in mask.iter_mut().take(end.min(ids.len())).skip(start) {
            *flag = true;
        }
    }
    Ok(TokenizedExample { ids, mask, docs: vec![] })
}

/// Tokenizes records, truncating each to `max_len`; examples with nothing to learn are dropped.
pub fn tokenize(tok: &Tokenizer, records: &[Record], max_len: usize) -> Result<Vec<TokenizedExample>> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let mut ex = match r {
            Record::Instruction(e) => instruction(tok, e)?,
            Record::Chat(m) => chat(tok, m)?,
        };
        ex.ids.truncate(max_len);
        ex.mask.truncate(max_len);
        if ex.targets() > 0 {
            out.push(ex);
        }
    }
    Ok(out)
}

/// Plain text for continued pre-training: consecutive `max_len` pieces, every token a target.
pub fn text_chunks(tok: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<TokenizedExample>> {
    let ids = tok.encode(text, true)?;
    Ok(ids
        .chunks(max_len.max(2))
        .filter(|c| c.len() >= 2)
        .map(|c| TokenizedExample { ids: c.to_vec(), mask: vec![true; c.len()], docs: vec![] })
        .collect())
}

/// Packs examples, in order, into sequences of at most `max_len` tokens. Each document keeps
/// its own positions and attention (see `Transformer::hidden_packed`); its first token is
/// never a target, so nothing is predicted across a document boundary.
pub fn pack(examples: Vec<TokenizedExample>, max_len: usize) -> Vec<TokenizedExample> {
    let mut out: Vec<TokenizedExample> = Vec::new();
    let mut cur = TokenizedExample::default();
    for mut e in examples {
        if !cur.ids.is_empty() && cur.ids.len() + e.ids.len() > max_len {
            out.push(std::mem::take(&mut cur));
        }
        e.mask[0] = false;
        cur.docs.push(e.ids.len());
        cur.ids.extend(e.ids);
        cur.mask.extend(e.mask);
    }
    if !cur.ids.is_empty() {
        out.push(cur);
    }
    out
}
