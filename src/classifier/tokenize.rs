//! Turns a prompt (or the end of a conversation) into the token ids the encoder reads.
//!
//! The model reads at most `max_tokens` tokens. A long prompt keeps its head (what is asked,
//! usually stated first) and its tail (the question after a pasted document or stack trace,
//! usually stated last), and drops the middle. A conversation is encoded as a pair: segment A is
//! the last user turn, segment B the most recent part of the conversation before it, so the
//! model can tell "rewrite your previous answer" with history from the same words without.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::ClassifierError;

/// How prompts are cut to the model's length; stored in the model's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruncationConfig {
    /// Tokens the model reads, special tokens included.
    pub max_tokens: usize,
    /// Of the prompt's own tokens, how many come from its head when it is too long; the rest of
    /// the budget goes to its tail.
    pub head_tokens: usize,
    /// At most this many tokens of earlier conversation (segment B).
    pub context_tokens: usize,
    /// Whether each line break (a run of whitespace holding one or more newlines) is read as a
    /// `¶` token. The WordPiece pre-tokenizer drops whitespace, so without it "Rewrite this
    /// sentence:\n\nWe found ..." reads the same as an instruction that runs on with no
    /// material. Models trained before this field existed lack it: false.
    #[serde(default)]
    pub mark_line_breaks: bool,
}

impl Default for TruncationConfig {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            head_tokens: 64,
            context_tokens: 40,
            mark_line_breaks: true,
        }
    }
}

/// One message of a conversation, reduced to its role and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

impl Turn {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What the classifier judges: the text of the request, and the conversation before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// The turn whose work is being judged (the last user message).
    pub text: String,
    /// Earlier conversation rendered as `role: text` lines, oldest first; empty when there is none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context: String,
}

impl Prompt {
    /// A prompt with no conversation before it.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            context: String::new(),
        }
    }

    /// The last user turn of `turns`, with every other turn as context. A conversation with no
    /// user turn is judged on its last turn.
    pub fn from_turns(turns: &[Turn]) -> Self {
        let last_user = turns
            .iter()
            .rposition(|t| t.role == "user")
            .or(turns.len().checked_sub(1));
        let Some(index) = last_user else {
            return Self::default();
        };
        let mut context = String::new();
        for (i, turn) in turns.iter().enumerate() {
            if i == index || turn.content.trim().is_empty() {
                continue;
            }
            if !context.is_empty() {
                context.push('\n');
            }
            context.push_str(&turn.role);
            context.push_str(": ");
            context.push_str(turn.content.trim());
        }
        Self {
            text: turns[index].content.clone(),
            context,
        }
    }

    /// Whether there is nothing to judge.
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
    }
}

/// Token ids for one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Whether part of the prompt or its context was dropped to fit.
    pub truncated: bool,
}

/// The tokenizer, with truncation to the model's budget.
#[derive(Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    config: TruncationConfig,
    cls: u32,
    sep: u32,
}

/// Bytes of text kept per token of budget before tokenising: enough for any script (a CJK
/// character is 3 bytes and one token), while a 1 MB prompt costs no more than a short one.
const BYTES_PER_TOKEN: usize = 12;

impl PromptTokenizer {
    pub fn from_file(path: &Path, config: TruncationConfig) -> Result<Self, ClassifierError> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| ClassifierError::Tokenizer {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        // The upstream file pads and truncates every input to 128 tokens; we do both ourselves.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ClassifierError::Tokenizer {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| ClassifierError::Tokenizer {
                    path: path.display().to_string(),
                    message: format!("vocabulary has no {token} token"),
                })
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        if config.max_tokens < 8 || config.head_tokens + 3 > config.max_tokens {
            return Err(ClassifierError::Config(format!(
                "truncation: max_tokens {} must exceed head_tokens {} + 3",
                config.max_tokens, config.head_tokens
            )));
        }
        Ok(Self {
            tokenizer,
            config,
            cls,
            sep,
        })
    }

    pub fn config(&self) -> &TruncationConfig {
        &self.config
    }

    /// Token ids of `text` without special tokens, limited to `head + tail` tokens.
    fn pieces(
        &self,
        text: &str,
        head: usize,
        tail: usize,
    ) -> Result<(Vec<u32>, bool), ClassifierError> {
        let budget = (head + tail) * BYTES_PER_TOKEN;
        let (clipped, mut truncated) = clip_middle(text, head * BYTES_PER_TOKEN, budget);
        let clipped = if self.config.mark_line_breaks {
            mark_line_breaks(clipped)
        } else {
            clipped
        };
        let encoding = self
            .tokenizer
            .encode(clipped.as_ref(), false)
            .map_err(|e| ClassifierError::Tokenize(e.to_string()))?;
        let ids = encoding.get_ids();
        if ids.len() <= head + tail {
            return Ok((ids.to_vec(), truncated));
        }
        truncated = true;
        let mut kept = Vec::with_capacity(head + tail);
        kept.extend_from_slice(&ids[..head]);
        kept.extend_from_slice(&ids[ids.len() - tail..]);
        Ok((kept, truncated))
    }

    /// Encodes one prompt as `[CLS] text [SEP]`, or `[CLS] text [SEP] context [SEP]`.
    pub fn encode(&self, prompt: &Prompt) -> Result<Encoded, ClassifierError> {
        let cfg = &self.config;
        let context = prompt.context.trim();
        let context_budget = if context.is_empty() {
            0
        } else {
            cfg.context_tokens
        };
        // Specials: [CLS] and [SEP], plus a second [SEP] when there is context.
        let specials = if context_budget > 0 { 3 } else { 2 };
        let text_budget = cfg.max_tokens - specials - context_budget;
        let head = cfg.head_tokens.min(text_budget);
        let (text_ids, mut truncated) =
            self.pieces(prompt.text.trim(), head, text_budget - head)?;

        let mut ids = Vec::with_capacity(cfg.max_tokens);
        ids.push(self.cls);
        ids.extend_from_slice(&text_ids);
        ids.push(self.sep);
        let mut type_ids = vec![0u32; ids.len()];
        if context_budget > 0 {
            // The turns nearest the prompt matter most: keep the context's tail. Unused text
            // budget goes to the context.
            let spare = text_budget - text_ids.len();
            let (ctx_ids, ctx_truncated) = self.pieces(context, 0, context_budget + spare)?;
            truncated |= ctx_truncated;
            ids.extend_from_slice(&ctx_ids);
            ids.push(self.sep);
            type_ids.resize(ids.len(), 1);
        }
        Ok(Encoded {
            ids,
            type_ids,
            truncated,
        })
    }
}

/// The mark read for a line break: BERT's vocabulary has it as a token of its own.
pub const LINE_BREAK: char = '\u{b6}';

/// Replaces each run of whitespace that holds a newline with ` ¶ `.
fn mark_line_breaks(text: std::borrow::Cow<'_, str>) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\n', '\r']) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest: &str = &text;
    while let Some(start) = rest.find(['\n', '\r']) {
        out.push_str(rest[..start].trim_end());
        out.push(' ');
        out.push(LINE_BREAK);
        out.push(' ');
        rest = rest[start..].trim_start();
    }
    out.push_str(rest);
    out.into()
}

/// Keeps the first `head` bytes and the last `budget - head` bytes of `text` (on character
/// boundaries), joined by a space, when it is longer than `budget`.
fn clip_middle(text: &str, head: usize, budget: usize) -> (std::borrow::Cow<'_, str>, bool) {
    if text.len() <= budget {
        return (text.into(), false);
    }
    let mut head_end = head.min(text.len());
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - (budget - head).min(text.len());
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let tail_start = tail_start.max(head_end);
    let mut out = String::with_capacity(head_end + 1 + text.len() - tail_start);
    out.push_str(&text[..head_end]);
    out.push(' ');
    out.push_str(&text[tail_start..]);
    (out.into(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_middle_respects_char_boundaries() {
        let text = "é".repeat(100);
        let (clipped, truncated) = clip_middle(&text, 11, 21);
        assert!(truncated);
        assert!(clipped.len() <= 23);
        assert!(clipped.starts_with('é') && clipped.ends_with('é'));
    }

    #[test]
    fn line_breaks_become_one_mark_per_run() {
        let mark = |s: &str| mark_line_breaks(s.into()).into_owned();
        assert_eq!(mark("one line"), "one line");
        assert_eq!(
            mark("Rewrite this:\n\n  We found it.\r\nDone\n"),
            "Rewrite this: \u{b6} We found it. \u{b6} Done \u{b6} "
        );
        assert_eq!(mark("\n\nhi"), " \u{b6} hi");
    }

    #[test]
    fn clip_middle_keeps_short_text() {
        let (clipped, truncated) = clip_middle("short", 2, 10);
        assert_eq!(clipped, "short");
        assert!(!truncated);
    }

    #[test]
    fn conversation_uses_last_user_turn() {
        let prompt = Prompt::from_turns(&[
            Turn::new("system", "You are terse."),
            Turn::new("user", "Write a haiku about rain."),
            Turn::new("assistant", "Rain on tin roofs..."),
            Turn::new("user", "Make it about snow instead."),
        ]);
        assert_eq!(prompt.text, "Make it about snow instead.");
        assert!(prompt.context.starts_with("system: You are terse."));
        assert!(prompt.context.ends_with("assistant: Rain on tin roofs..."));
    }

    #[test]
    fn conversation_without_user_turn_uses_last_turn() {
        let prompt = Prompt::from_turns(&[Turn::new("system", "Summarise the news.")]);
        assert_eq!(prompt.text, "Summarise the news.");
        assert!(prompt.context.is_empty());
        assert!(Prompt::from_turns(&[]).is_empty());
    }
}
