//! The token environment llguidance needs, built from lljx's own tokenizer: every token's
//! bytes in a trie, special tokens marked so no grammar can spell them, and canonical
//! tokenization for forced text.
//!
//! Built from `Tokenizer` rather than a tokenizer.json so it serves GGUF vocabularies and
//! tiktoken files alike (and needs no second copy of the `tokenizers` crate).

use std::sync::Arc;

use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

pub struct TokenEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenEnv {
    /// `stop_ids` end a generation (the first is the trie's EOS); a grammar allows them only
    /// where it may end. `logit_vocab` is the model's output width, which may pad the
    /// tokenizer's vocabulary: the padding ids stand for no bytes and are never allowed.
    pub fn new(tokenizer: Arc<Tokenizer>, stop_ids: &[u32], logit_vocab: usize) -> Result<Self> {
        let n = tokenizer.vocab_size().max(logit_vocab);
        let words: Vec<Vec<u8>> = (0..n as u32).map(|id| token_word(&tokenizer, id)).collect();
        let mut stops: Vec<u32> = stop_ids.to_vec();
        if stops.is_empty() {
            stops.extend(tokenizer.eos_id());
        }
        if let Some(&bad) = stops.iter().find(|&&id| id as usize >= n) {
            return Err(Error::Grammar(format!(
                "stop token {bad} is outside the vocabulary of {n} tokens"
            )));
        }
        let Some(&eos) = stops.first() else {
            return Err(Error::Grammar(
                "the model has no end-of-sequence token to end a constrained reply with".into(),
            ));
        };
        let n = u32::try_from(n).map_err(|_| Error::Grammar("vocabulary too large".into()))?;
        let trie = TokTrie::from(&TokRxInfo::new(n, eos), &words).with_eos_tokens(&stops);
        Ok(TokenEnv { trie, tokenizer })
    }
}

/// The bytes llguidance sees for one id: special tokens behind its marker byte (0xFF, never
/// part of UTF-8 text), ids the tokenizer lacks as no bytes at all.
fn token_word(tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
    match (tokenizer.token_bytes(id), tokenizer.is_special(id)) {
        (Ok(bytes), Ok(true)) => [&[TokTrie::SPECIAL_TOKEN_MARKER], bytes].concat(),
        (Ok(bytes), _) => bytes.to_vec(),
        (Err(_), _) => Vec::new(),
    }
}

impl TokenizerEnv for TokenEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Text goes through the real tokenizer (canonical ids, which forced tokens need);
        // bytes that are not UTF-8 fall back to the longest trie matches.
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}
