//! The arithmetic of a batched step: bucketed shapes, how a prompt is cut into chunks, and how
//! many prompt tokens a step may take while other rows decode (learned from measured steps).

use std::collections::{HashMap, VecDeque};

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

/// Room a row that has filled `filled` positions keeps ahead of it: the cache grows once a row
/// comes this close to its end, early enough to compile the longer shape on the background
/// thread while the row decodes on (at least 64 positions, and a sixteenth more for long rows,
/// so that a 1,905-token prompt still fits a cache of 2,048).
pub fn grow_margin(filled: usize) -> usize {
    (filled / 16).max(64)
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

/// The next chunk of a prompt of `len` tokens with `done` already prefilled (a multiple of the
/// smallest size), within `budget` positions, from the ascending chunk `sizes` (powers of two).
/// A chunk never runs past the prompt's bucket; the smallest always fits, the bucket being a
/// multiple of it too. Only that binds a chunk's start: a prompt that reused 16 positions is not
/// held to chunks of 16, 32, 64... as it would be were each size to divide its start (a
/// 358-token prompt read in five chunks after a 16-position system prompt, slower than all of
/// it in two). None when the budget holds no chunk.
pub fn next_cut(len: usize, done: usize, budget: usize, sizes: &[usize]) -> Option<Cut> {
    let remaining = len.checked_sub(done).filter(|&r| r > 0)?;
    let bucket = prompt_bucket(len);
    let largest = sizes
        .iter()
        .copied()
        .filter(|&s| s <= budget && done + s <= bucket)
        .max()?;
    if remaining <= largest {
        let size = sizes
            .iter()
            .copied()
            .find(|&s| s >= remaining && done + s <= bucket)
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
/// With rows decoding, a step's prompt chunk delays each of their next tokens, so a step
/// prefills the most positions whose whole step, decode included, is expected within
/// `target_ns`: a decode step's time plus the chunk's share. Both are measured rather than
/// modelled (a step's time is the gap between reading it and reading the one before, when the
/// device ran them back to back): decode per batch size, and the share per prompt bucket and
/// chunk size as the running excess of recent steps over their decode (the cheapest of the
/// last `DECODE_WINDOW` decode-only steps). A chunk's rows attend over every key before them,
/// so the same chunk grows dearer as its prompt advances; the running share follows, and a
/// size that got too slow gives way to the next smaller one.
///
/// A size not measured lately is expected to cost the next smaller size's share scaled up by
/// positions (an overestimate: a chunk's fixed costs do not grow with it), or what a larger
/// bucket's chunk of that size took, whichever is less; failing both, what it took when last
/// measured; failing that, the step takes the smallest chunk. With nothing decoding, a step
/// takes `idle_budget` positions.
#[derive(Clone, Debug)]
pub struct ChunkPolicy {
    pub target_ns: u64,
    pub idle_budget: usize,
    /// Per batch: the latest steps that only decoded, oldest first.
    decode_ns: HashMap<usize, VecDeque<f64>>,
    /// Per (prompt bucket, positions): a chunk's share of a step beside decoding rows.
    shares: HashMap<(usize, usize), Measured>,
    /// Steps observed so far: the clock that ages measurements.
    observed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Measured {
    ns: f64,
    at: u64,
}

/// Weight of a new measurement in the running estimates.
const SMOOTHING: f64 = 0.3;

/// Decode-only steps remembered per batch size; the cheapest of them is the decode estimate.
/// Such a step is only ever slowed by what runs beside it (a background compile sharing the
/// cores, a long prompt being tokenized, a collection), so its cost is the low end, and an
/// estimate too high is the dangerous error: a chunk's share, measured against it, comes out
/// near zero and the next step takes the largest chunk. A running mean did exactly that: one
/// 245 ms step beside a compile took the 4-row estimate from 12 to 69 ms, 16-position chunks
/// then measured free, and a 1,905-token prompt went in 256-position steps of 190-250 ms. A
/// row's decode grows dearer only slowly with its cache, so a short window follows it.
const DECODE_WINDOW: usize = 16;

/// Steps after which a measurement is stale: the prompt it came from has moved on (or ended),
/// so it no longer keeps a larger size from being tried again.
const FRESH_STEPS: u64 = 48;

impl ChunkPolicy {
    pub fn new(target_ns: u64, idle_budget: usize) -> Self {
        ChunkPolicy {
            target_ns,
            idle_budget,
            decode_ns: HashMap::new(),
            shares: HashMap::new(),
            observed: 0,
        }
    }

    /// A decode step of `batch` rows, the cheapest recent one, or else the dearest smaller
    /// batch's (a lower bound: it leaves more of a step to its chunk, so larger chunks are
    /// expected dearer).
    fn decode(&self, batch: usize) -> f64 {
        self.decode_ns
            .iter()
            .filter(|&(&b, _)| b <= batch)
            .max_by_key(|&(&b, _)| b)
            .map_or(0.0, |(_, recent)| {
                recent.iter().copied().fold(f64::INFINITY, f64::min)
            })
    }

    /// The positions a step may prefill, for prompts of bucket `bucket`, while `batch` rows
    /// decode (`decoding`), or none decode.
    pub fn budget(&self, batch: usize, decoding: bool, sizes: &[usize], bucket: usize) -> usize {
        let smallest = sizes.first().copied().unwrap_or(MIN_BUCKET);
        if !decoding {
            return self.idle_budget.max(smallest);
        }
        let room = self.target_ns as f64 - self.decode(batch);
        let mut chosen = smallest;
        let mut previous: Option<(usize, f64)> = None;
        for &size in sizes {
            let scaled = previous.map(|(smaller, share)| share * size as f64 / smaller as f64);
            let share = match (
                self.share(bucket, size, true),
                scaled,
                self.larger_bucket(bucket, size),
            ) {
                (Some(share), _, _) => share,
                (None, Some(a), Some(b)) => a.min(b),
                (None, Some(share), None) | (None, None, Some(share)) => share,
                (None, None, None) => match self.share(bucket, size, false) {
                    Some(share) => share,
                    None => continue, // only a larger size was measured
                },
            };
            if share > room {
                break;
            }
            chosen = size;
            previous = Some((size, share));
        }
        chosen
    }

    /// Whether, with `batch` rows decoding, even the smallest chunk of `bucket` is expected to
    /// take the step past the target (as measured; unmeasured is not).
    pub fn over_target(&self, batch: usize, sizes: &[usize], bucket: usize) -> bool {
        let smallest = sizes.first().copied().unwrap_or(MIN_BUCKET);
        let share = self
            .share(bucket, smallest, true)
            .or_else(|| self.larger_bucket(bucket, smallest))
            .or_else(|| self.share(bucket, smallest, false));
        share.is_some_and(|share| share > self.target_ns as f64 - self.decode(batch))
    }

    /// The share of a chunk of `size` in `bucket`: a recent one's, or (`fresh` false) any.
    fn share(&self, bucket: usize, size: usize, fresh: bool) -> Option<f64> {
        self.shares
            .get(&(bucket, size))
            .filter(|m| !fresh || self.observed - m.at <= FRESH_STEPS)
            .map(|m| m.ns)
    }

    /// The nearest larger bucket's recent share for `size` positions: its chunks cost at least as much.
    fn larger_bucket(&self, bucket: usize, size: usize) -> Option<f64> {
        self.shares
            .iter()
            .filter(|&(&(k, s), m)| s == size && k > bucket && self.observed - m.at <= FRESH_STEPS)
            .min_by_key(|&(&(k, _), _)| k)
            .map(|(_, m)| m.ns)
    }

    /// A step of `batch` rows that decoded (or not) and prefilled `chunk` positions of prompts
    /// in bucket `bucket` (the largest, if several) took `ns`.
    pub fn observe(&mut self, batch: usize, decoded: bool, chunk: usize, bucket: usize, ns: u64) {
        self.observed += 1;
        let ns = ns as f64;
        if !decoded {
            return; // a step beside no decoding rows says little of one beside them
        }
        if chunk == 0 {
            let recent = self.decode_ns.entry(batch).or_default();
            if recent.len() == DECODE_WINDOW {
                recent.pop_front();
            }
            recent.push_back(ns);
            return;
        }
        let share = (ns - self.decode(batch)).max(0.0);
        let now = self.observed;
        let entry = self
            .shares
            .entry((bucket, pow2(chunk)))
            .or_insert(Measured { ns: share, at: now });
        if now - entry.at > FRESH_STEPS {
            entry.ns = share; // stale: start over
        } else {
            entry.ns += SMOOTHING * (share - entry.ns);
        }
        entry.at = now;
    }
}
