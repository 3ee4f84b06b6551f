//! The arithmetic of a batched step: bucketed shapes, how a prompt is cut into chunks, and how
//! many prompt tokens a step may take while other rows decode (learned from measured steps).

use std::collections::HashMap;

/// Positions every row of a batch can hold, and its rows; both buckets, so few programs compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub batch: usize,
    pub cache_len: usize,
}

/// The smallest cache any batch gets: short chats share one shape.
pub const MIN_CACHE: usize = 256;
/// The smallest prompt bucket (and chunk).
pub const MIN_BUCKET: usize = 16;

/// The next power of two >= n (at least 1).
pub fn pow2(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// Rows for `n` requests: 1, 2, 4, 8...
pub fn batch_bucket(n: usize) -> usize {
    pow2(n)
}

/// A cache holding `need` positions, from MIN_CACHE up by powers of two.
pub fn cache_bucket(need: usize) -> usize {
    pow2(need).max(MIN_CACHE)
}

/// A prompt of `len` tokens is prefilled into a scratch cache of this many positions.
pub fn prompt_bucket(len: usize) -> usize {
    pow2(len).max(MIN_BUCKET)
}

/// One chunk of a prompt: `size` positions (a chunk length a program exists for), of which
/// `real` hold prompt tokens; `last` when it ends the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    pub size: usize,
    pub real: usize,
    pub last: bool,
}

/// The next chunk of a prompt of `len` tokens with `done` already prefilled, within `budget`
/// positions, from the ascending chunk `sizes` (powers of two). A chunk's size divides its
/// start, so it never runs past the prompt's bucket: every earlier chunk was at least as big, or
/// the start is a multiple of it. None when the budget holds no chunk.
pub fn next_cut(len: usize, done: usize, budget: usize, sizes: &[usize]) -> Option<Cut> {
    let remaining = len.checked_sub(done).filter(|&r| r > 0)?;
    let bucket = prompt_bucket(len);
    let largest = sizes
        .iter()
        .copied()
        .filter(|&s| s <= budget && s <= bucket && done.is_multiple_of(s))
        .max()?;
    if remaining <= largest {
        let size = sizes
            .iter()
            .copied()
            .find(|&s| s >= remaining && done.is_multiple_of(s))
            .unwrap_or(largest);
        return Some(Cut {
            size,
            real: remaining,
            last: true,
        });
    }
    Some(Cut {
        size: largest,
        real: largest,
        last: false,
    })
}

/// How many prompt positions a step may prefill.
///
/// With rows decoding, a step's prompt chunk delays each of their next tokens, so the chunk is
/// the largest whose estimated time, added to a decode step's, stays within `target_ns`; the
/// estimates come from measured steps (a step's time is the gap between reading it and reading
/// the one before, when the device ran them back to back). A prompt token's cost grows with the
/// prompt's bucket (each chunk attends over the bucket's scratch cache), so it is learned per
/// bucket: a bucket not measured yet borrows the estimate of a larger one, or starts from the
/// smallest chunk. With nothing decoding, a step takes `idle_budget` positions.
#[derive(Clone, Debug)]
pub struct ChunkPolicy {
    pub target_ns: u64,
    pub idle_budget: usize,
    decode_ns: HashMap<usize, f64>,
    /// Per prompt bucket: the cost of one prompt position in a chunk.
    token_ns: HashMap<usize, f64>,
}

/// Weight of a new measurement in the running estimates.
const SMOOTHING: f64 = 0.3;

impl ChunkPolicy {
    pub fn new(target_ns: u64, idle_budget: usize) -> Self {
        ChunkPolicy {
            target_ns,
            idle_budget,
            decode_ns: HashMap::new(),
            token_ns: HashMap::new(),
        }
    }

    /// The positions a step may prefill, for prompts of bucket `bucket`, while `batch` rows
    /// decode (`decoding`), or none decode.
    pub fn budget(&self, batch: usize, decoding: bool, sizes: &[usize], bucket: usize) -> usize {
        let smallest = sizes.first().copied().unwrap_or(MIN_BUCKET);
        if !decoding {
            return self.idle_budget.max(smallest);
        }
        let per_token = self.token_ns.get(&bucket).copied().or_else(|| {
            // A larger bucket's positions cost at least as much: a safe first guess.
            self.token_ns
                .iter()
                .filter(|&(&b, _)| b > bucket)
                .min_by_key(|&(&b, _)| b)
                .map(|(_, &ns)| ns)
        });
        let Some(per_token) = per_token else {
            return smallest; // nothing measured yet: the cautious choice
        };
        let decode = self.decode_ns.get(&batch).copied().unwrap_or(0.0);
        let room = self.target_ns as f64 - decode;
        sizes
            .iter()
            .copied()
            .filter(|&s| s as f64 * per_token <= room)
            .max()
            .unwrap_or(smallest)
    }

    /// A step of `batch` rows that decoded (or not) and prefilled `chunk` positions of prompts
    /// in bucket `bucket` (the largest, if several) took `ns`.
    pub fn observe(&mut self, batch: usize, decoded: bool, chunk: usize, bucket: usize, ns: u64) {
        let ns = ns as f64;
        let blend = |old: Option<f64>, new: f64| match old {
            Some(old) => old + SMOOTHING * (new - old),
            None => new,
        };
        if chunk == 0 {
            if decoded {
                let old = self.decode_ns.get(&batch).copied();
                self.decode_ns.insert(batch, blend(old, ns));
            }
            return;
        }
        let decode = if decoded {
            match self.decode_ns.get(&batch) {
                Some(&d) => d,
                None => return, // the split is unknown until a decode-only step was seen
            }
        } else {
            0.0
        };
        let per_token = ((ns - decode) / chunk as f64).max(0.0);
        let old = self.token_ns.get(&bucket).copied();
        self.token_ns.insert(bucket, blend(old, per_token));
    }
}
