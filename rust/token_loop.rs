//! The host side of the token loop: turns token ids read back from the device into
//! streamed text, applies stop tokens, stop strings and the token budget, and times it.
//!
//! The device calls themselves (prefill, decode) are driven from `py.rs`; everything
//! here is plain data so it is tested without Python.

use std::collections::HashSet;
use std::sync::Arc;

use crate::detokenize::StreamDecoder;
use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Why a generation ended, in Ollama's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// The token budget (or the context) ran out.
    Length,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Stop => "stop",
            StopReason::Length => "length",
        }
    }
}

/// Holds back text that may be the start of a stop string, and finds stop strings that
/// span several tokens.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopStrings {
            stops,
            held: String::new(),
        }
    }

    /// Adds text; returns what may be shown now and whether a stop string was found
    /// (in which case nothing from the stop string on is ever shown).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = first_stop {
            let shown = self.held[..at].to_owned();
            self.held.clear();
            return (shown, true);
        }
        let keep = self.longest_suffix_that_starts_a_stop();
        let cut = self.held.len() - keep;
        let shown = self.held[..cut].to_owned();
        self.held.drain(..cut);
        (shown, false)
    }

    /// The held text once the generation ended without a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn longest_suffix_that_starts_a_stop(&self) -> usize {
        // Byte offsets of char boundaries only, so the held part is always valid text.
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let suffix = &self.held[i..];
                self.stops.iter().any(|stop| stop.starts_with(suffix))
            })
            .map_or(0, |i| self.held.len() - i)
    }
}

/// Timings and counts of one generation, in nanoseconds like Ollama's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Tokens generated and shown (a final stop token is not counted).
    pub gen_tokens: usize,
    /// Tokens read back from the device, counting a final stop token.
    pub tokens_read: usize,
    pub ttft_ns: u64,
    pub prefill_ns: u64,
    pub decode_ns: u64,
    pub total_ns: u64,
    /// Time between consecutive tokens becoming available on the host.
    pub token_ns: Vec<u64>,
    /// Time the grammar took to compute each step's token mask (constrained generations only).
    pub mask_ns: Vec<u64>,
    pub stop_reason: Option<StopReason>,
}

/// What one batch of token ids produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub text: String,
    pub finished: bool,
}

/// The host-side state of one generation.
#[derive(Debug)]
pub struct TokenLoop {
    detokenizer: StreamDecoder,
    stop_strings: StopStrings,
    stop_ids: HashSet<u32>,
    budget: usize,
    pub stats: Stats,
    pub token_ids: Vec<u32>,
    last_ns: u64,
    finished: bool,
}

impl TokenLoop {
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        prompt_tokens: usize,
        budget: usize,
        stop_ids: impl IntoIterator<Item = u32>,
        stop_strings: Vec<String>,
    ) -> Self {
        TokenLoop {
            detokenizer: StreamDecoder::new(tokenizer, false),
            stop_strings: StopStrings::new(stop_strings),
            stop_ids: stop_ids.into_iter().collect(),
            budget,
            stats: Stats {
                prompt_tokens,
                ..Stats::default()
            },
            token_ids: Vec::new(),
            last_ns: 0,
            finished: budget == 0,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether another decode call is worth dispatching before the tokens in flight are
    /// read: true unless the budget is certain to end with them. A call may carry one real
    /// token in several slots (the rest unused), so only one is counted on; at most one
    /// call too many is made at the end of a multi-token strategy's budget.
    pub fn wants_more(&self) -> bool {
        !self.finished && self.stats.gen_tokens + 1 < self.budget
    }

    /// Takes the token ids of one device call (negative ids are unused slots), read back
    /// `now_ns` after the generation started.
    pub fn on_tokens(&mut self, ids: &[i64], now_ns: u64) -> Result<Step> {
        let mut step = Step::default();
        if self.finished {
            step.finished = true;
            return Ok(step);
        }
        let real: Vec<u32> = ids
            .iter()
            .filter(|&&id| id >= 0)
            .map(|&id| u32::try_from(id).unwrap_or(u32::MAX))
            .collect();
        if self.stats.tokens_read == 0 {
            self.stats.ttft_ns = now_ns;
            self.stats.prefill_ns = now_ns;
        }
        if real.is_empty() {
            // A decoder that stopped by itself (every slot unused).
            return Ok(self.finish(StopReason::Stop, false, step));
        }
        let each = (now_ns.saturating_sub(self.last_ns)) / real.len() as u64;
        self.last_ns = now_ns;
        for id in real {
            self.stats.tokens_read += 1;
            self.stats.token_ns.push(each);
            self.stats.decode_ns = now_ns.saturating_sub(self.stats.prefill_ns);
            if self.stop_ids.contains(&id) {
                return Ok(self.finish(StopReason::Stop, false, step));
            }
            let piece = self.detokenizer.push(id)?;
            self.stats.gen_tokens += 1;
            self.token_ids.push(id);
            let (shown, hit_stop) = self.stop_strings.push(&piece);
            step.text.push_str(&shown);
            if hit_stop {
                return Ok(self.finish(StopReason::Stop, true, step));
            }
            if self.stats.gen_tokens >= self.budget {
                return Ok(self.finish(StopReason::Length, false, step));
            }
        }
        Ok(step)
    }

    /// Ends the generation with `reason` unless it already ended; returns the held text.
    pub fn end(&mut self, reason: StopReason) -> Step {
        if self.finished {
            return Step {
                text: String::new(),
                finished: true,
            };
        }
        self.finish(reason, false, Step::default())
    }

    pub fn set_total(&mut self, total_ns: u64) {
        self.stats.total_ns = total_ns;
    }

    fn finish(&mut self, reason: StopReason, by_stop_string: bool, mut step: Step) -> Step {
        self.finished = true;
        self.stats.stop_reason = Some(reason);
        if !by_stop_string {
            // No stop string came, so text held back as a possible stop prefix is real output;
            // a character cut off at the end is flushed as U+FFFD like any decoder would.
            let tail = self.detokenizer.flush();
            let (shown, hit) = self.stop_strings.push(&tail);
            step.text.push_str(&shown);
            if !hit {
                step.text.push_str(&self.stop_strings.flush());
            }
        }
        step.finished = true;
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_across_pushes_is_never_shown() {
        let mut stops = StopStrings::new(vec!["</end>".into()]);
        assert_eq!(stops.push("hello </"), ("hello ".into(), false));
        assert_eq!(stops.push("en"), (String::new(), false));
        assert_eq!(stops.push("d> after"), (String::new(), true));
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let mut stops = StopStrings::new(vec!["STOP".into()]);
        assert_eq!(stops.push("ST"), (String::new(), false));
        assert_eq!(stops.push("ART"), ("START".into(), false));
        assert_eq!(stops.push("S"), (String::new(), false));
        assert_eq!(stops.flush(), "S");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_text_is_cut_on_char_boundaries() {
        let mut stops = StopStrings::new(vec!["é!".into(), "b".into()]);
        assert_eq!(stops.push("aé"), ("a".into(), false));
        assert_eq!(stops.push("!b"), (String::new(), true));
        let mut stops = StopStrings::new(vec!["日本".into()]);
        assert_eq!(stops.push("今日"), ("今".into(), false));
        assert_eq!(stops.push("は"), ("日は".into(), false));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut stops = StopStrings::new(vec![String::new()]);
        assert_eq!(stops.push("abc"), ("abc".into(), false));
    }
}
