//! Per-row token masks for one batch: each row follows its own grammar (or none), and
//! every step fills one packed bitset per row, [rows, mask_words] u32, bit t%32 of word
//! t/32 set when token t is allowed, the layout the device-side sampler unpacks.

use std::time::Instant;

use llguidance::Matcher;

use crate::constrain::grammars::Grammar;
use crate::error::{Error, Result};

/// What a row's mask allows at one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Exactly this token: it needs no sampling.
    Only(u32),
    /// Several tokens (or, for a row without a grammar, all of them).
    Several,
}

/// One row's grammar state through a generation.
pub struct RowConstraint {
    matcher: Matcher,
}

impl RowConstraint {
    pub fn new(grammar: &Grammar) -> Self {
        RowConstraint {
            matcher: grammar.matcher.clone(),
        }
    }

    /// Advances the grammar by a generated token.
    pub fn consume(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(|e| {
            Error::Grammar(format!(
                "token {token} does not fit the grammar: {}",
                first_line(&e.to_string())
            ))
        })
    }

    /// The grammar is complete and nothing may follow, so the reply is over.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// Writes the allowed tokens into `out` (one row of mask words).
    pub fn fill(&mut self, out: &mut [u32]) -> Result<Allowed> {
        let mask = self.matcher.compute_mask().map_err(|e| {
            Error::Grammar(format!(
                "the grammar failed to compute a mask: {}",
                first_line(&e.to_string())
            ))
        })?;
        let words = mask.as_slice();
        let shared = words.len().min(out.len());
        out[..shared].copy_from_slice(&words[..shared]);
        out[shared..].fill(0);
        allowed(out)
    }
}

fn first_line(message: &str) -> &str {
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(message)
}

/// Whether a mask allows exactly one token, and which; an empty mask is an error.
fn allowed(mask: &[u32]) -> Result<Allowed> {
    let mut found = None;
    for (i, &word) in mask.iter().enumerate() {
        match (word.count_ones(), found) {
            (0, _) => {}
            (1, None) => found = Some(i as u32 * 32 + word.trailing_zeros()),
            _ => return Ok(Allowed::Several),
        }
    }
    found
        .map(Allowed::Only)
        .ok_or_else(|| Error::Grammar("the grammar allows no token here".into()))
}

/// The rows of one batch, each with its grammar or none, and the mask buffer they fill.
pub struct Masks {
    rows: Vec<Option<RowConstraint>>,
    words: usize,
    buffer: Vec<u32>,
}

impl Masks {
    pub fn new(rows: Vec<Option<RowConstraint>>, mask_words: usize) -> Self {
        let buffer = vec![u32::MAX; rows.len() * mask_words];
        Masks {
            rows,
            words: mask_words,
            buffer,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    pub fn mask_words(&self) -> usize {
        self.words
    }

    pub fn row_mut(&mut self, row: usize) -> Option<&mut RowConstraint> {
        self.rows.get_mut(row).and_then(Option::as_mut)
    }

    /// Fills every row's mask (a row without a grammar allows everything) and returns what
    /// each row allows, with the time it took in nanoseconds.
    pub fn fill(&mut self) -> Result<(Vec<Allowed>, u64)> {
        let start = Instant::now();
        let mut allowed = Vec::with_capacity(self.rows.len());
        for (row, out) in self
            .rows
            .iter_mut()
            .zip(self.buffer.chunks_exact_mut(self.words.max(1)))
        {
            allowed.push(match row {
                Some(constraint) => constraint.fill(out)?,
                None => {
                    out.fill(u32::MAX);
                    Allowed::Several
                }
            });
        }
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok((allowed, ns))
    }

    /// The masks the last `fill` wrote, [rows, mask_words] row-major.
    pub fn words(&self) -> &[u32] {
        &self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bit_names_its_token_and_no_bits_is_an_error() {
        assert_eq!(allowed(&[0, 1 << 5, 0]).unwrap(), Allowed::Only(37));
        assert_eq!(allowed(&[0, 0, 1 << 31]).unwrap(), Allowed::Only(95));
        assert_eq!(allowed(&[1, 1, 0]).unwrap(), Allowed::Several);
        assert_eq!(allowed(&[0b11, 0]).unwrap(), Allowed::Several);
        assert!(allowed(&[0, 0]).is_err());
    }
}
