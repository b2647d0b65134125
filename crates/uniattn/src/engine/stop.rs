//! Turning generated tokens into text as they come: incremental detokenization that never
//! emits half a UTF-8 character, and stop strings that end generation before they appear.
//! Text that could still become a stop string is held back until it cannot.
use crate::error::Result;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Tokens before `prefix` are settled; decoding from `prefix` gives context for the rest.
    prefix: usize,
    read: usize,
    text: String,
    emitted: usize,
    stop: Vec<String>,
    stopped: bool,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        TextStream { stop, ..Default::default() }
    }

    /// Adds one token; returns the text that is now safe to show, and whether a stop string
    /// was reached (the text then ends just before it).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<(String, bool)> {
        if self.stopped {
            return Ok((String::new(), true));
        }
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.text.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self.stop.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min();
        let safe_end = match hit {
            Some(at) => {
                self.stopped = true;
                self.text.truncate(at);
                at
            }
            None => self.text.len() - self.held_back(),
        };
        let out = self.text[self.emitted.min(safe_end)..safe_end].to_string();
        self.emitted = self.emitted.max(safe_end);
        Ok((out, self.stopped))
    }

    /// Length of the longest tail of the text that begins some stop string.
    fn held_back(&self) -> usize {
        let t = &self.text;
        self.stop
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|p| t.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    /// Whatever was held back, once generation is over without a stop string.
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// All text so far (up to a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], words: &[&str]) -> (Vec<String>, bool, String) {
        let tok = crate::testing::tiny_tokenizer();
        let mut s = TextStream::new(stop.iter().map(|s| s.to_string()).collect());
        let mut parts = Vec::new();
        let mut stopped = false;
        for w in words {
            let id = tok.encode(w, false).unwrap()[0];
            let (t, st) = s.push(&tok, id).unwrap();
            parts.push(t);
            if st {
                stopped = true;
                break;
            }
        }
        if !stopped {
            parts.push(s.finish());
        }
        (parts, stopped, s.text().to_string())
    }

    #[test]
    fn stop_string_ends_the_text_before_it() {
        let (parts, stopped, text) = run(&["t2 t3"], &["t1", "t2", "t3", "t4"]);
        assert!(stopped);
        assert_eq!(text, "t1 ");
        // "t2" could begin the stop string, so it was held back, then dropped.
        assert_eq!(parts, ["t1", " ", ""]);
    }

    #[test]
    fn held_back_text_is_released_when_it_cannot_stop() {
        let (parts, stopped, text) = run(&["t2 t3"], &["t1", "t2", "t4", "t1"]);
        assert!(!stopped);
        assert_eq!(parts, ["t1", " ", "t2 t4", " t1", ""]);
        assert_eq!(text, "t1 t2 t4 t1");
    }
}
