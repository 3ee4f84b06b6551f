//! Streaming detokenization: turns token ids into text as they arrive without ever
//! emitting half a UTF-8 character.
//!
//! Byte-level tokens can end in the middle of a character (an emoji is often two or
//! four byte tokens), so text is released only up to the last complete character.
//! Bytes that can no longer start or continue a valid character become U+FFFD as soon as
//! that is certain, using the same rule as `String::from_utf8_lossy`, so the streamed
//! pieces always concatenate to exactly what decoding all ids at once gives.

use std::sync::Arc;

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Incremental UTF-8 decoding of a byte stream.
#[derive(Clone, Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns all text that is now certain.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    // The error vouches for this prefix, so the fallback is never taken.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..valid]).unwrap_or_default(),
                    );
                    match e.error_len() {
                        // Invalid whatever follows: replace it now.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + n;
                        }
                        // A character that more bytes may still complete: wait for them.
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Bytes held back because they may be the start of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

/// Token ids in, text out, for one generated sequence.
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special: bool,
    utf8: Utf8Stream,
}

impl StreamDecoder {
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special: bool) -> Self {
        StreamDecoder {
            tokenizer,
            skip_special,
            utf8: Utf8Stream::new(),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Adds one token; returns the text it completes (often empty mid-character).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let tokenizer = &self.tokenizer;
        if self.skip_special && tokenizer.is_special(id)? {
            return Ok(String::new());
        }
        Ok(self.utf8.push(tokenizer.token_bytes(id)?))
    }

    /// Ends the sequence, releasing whatever is held back.
    pub fn flush(&mut self) -> String {
        self.utf8.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = Utf8Stream::new();
        let mut out: Vec<String> = chunks.iter().map(|c| s.push(c)).collect();
        out.push(s.flush());
        out
    }

    #[test]
    fn holds_back_a_character_split_across_tokens() {
        let emoji = "😀".as_bytes();
        let out = stream(&[b"a", &emoji[..1], &emoji[1..3], &emoji[3..], b"b"]);
        assert_eq!(out, ["a", "", "", "😀", "b", ""]);
    }

    #[test]
    fn every_split_of_valid_text_concatenates_to_the_text() {
        let text = "héllo 世界 👩‍👩‍👧 🇯🇵 ok".as_bytes();
        for cut1 in 0..text.len() {
            for cut2 in cut1..text.len() {
                let out = stream(&[&text[..cut1], &text[cut1..cut2], &text[cut2..]]);
                assert!(out.iter().all(|s| !s.contains('\u{FFFD}')));
                assert_eq!(out.concat().as_bytes(), text);
            }
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_once_certain() {
        let mut s = Utf8Stream::new();
        // F0 9F could start an emoji: wait. 'x' proves it never will.
        assert_eq!(s.push(&[0xF0, 0x9F]), "");
        assert_eq!(s.pending(), &[0xF0, 0x9F]);
        assert_eq!(s.push(b"x"), "\u{FFFD}x");
        // A lone continuation byte can never be valid: replaced at once.
        assert_eq!(s.push(&[0x80, b'y']), "\u{FFFD}y");
        // Unfinished at the end of the stream.
        assert_eq!(s.push(&[0xE4, 0xB8]), "");
        assert_eq!(s.flush(), "\u{FFFD}");
        assert_eq!(s.flush(), "");
    }

    /// A vocabulary of the 256 single bytes plus one control token, as GGUF data.
    fn byte_tokenizer() -> Arc<Tokenizer> {
        use crate::tokenizer::{byte_level_encode, GgufVocab};
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_level_encode(&[b])).collect();
        tokens.push("<|eot_id|>".into());
        let mut types = vec![1; 256];
        types.push(3);
        let vocab = GgufVocab {
            model: "gpt2",
            pre: "llama-bpe",
            tokens: &tokens,
            merges: &[],
            token_types: &types,
            bos_id: None,
            eos_id: Some(256),
            add_bos: false,
        };
        Arc::new(Tokenizer::from_gguf(vocab).unwrap())
    }

    #[test]
    fn decoder_streams_byte_tokens_and_skips_specials_on_request() {
        let tok = byte_tokenizer();
        let ids: Vec<u32> = "é😀".bytes().map(u32::from).chain([256]).collect();
        let mut d = StreamDecoder::new(tok.clone(), false);
        let out: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
        assert_eq!(out, ["", "é", "", "", "", "😀", "<|eot_id|>"]);
        assert_eq!(out.concat(), tok.decode(&ids, false).unwrap());
        let mut d = StreamDecoder::new(tok.clone(), true);
        assert_eq!(d.push(256).unwrap(), "");
        assert!(d.push(257).is_err());
        assert_eq!(d.flush(), "");
    }

    #[test]
    fn streaming_invalid_bytes_matches_lossy_decoding() {
        // Byte-at-a-time over a mix of valid, truncated and stray bytes.
        let bytes: Vec<u8> = [
            &b"ok "[..],
            &[0xE4, 0xB8],
            b" ",
            &[0xF0, 0x9F, 0x98, 0x80],
            &[0xC0, 0xAF],
            &[0xED, 0xA0, 0x80],
            &[0xF4, 0x90],
            b"!",
            &[0xE2, 0x82],
        ]
        .concat();
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        for b in &bytes {
            out.push_str(&s.push(std::slice::from_ref(b)));
        }
        out.push_str(&s.flush());
        assert_eq!(out, String::from_utf8_lossy(&bytes));
    }
}
