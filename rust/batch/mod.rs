//! Continuous batching's host side, plain data: requests join and leave a batch of slots between
//! steps, each with its own detokenizer, stop strings, budget, grammar and stats.
//!
//! Each step is planned here (`plan`), dispatched by the driver in `py`, recorded (`commit`),
//! and the step before it is read back afterwards (`route`), so the device always has the next
//! step queued. A prompt is prefilled in chunks into a scratch cache, within a per-step budget
//! (after what it shares with the prompt a scratch holds, when `reuse_prompts`: the last one
//! prefilled, or one of those kept beside it, each an earlier prompt or a finished reply), then
//! inserted into a free row; the batch's rows and cache length are buckets that grow when
//! requests join or rows near the end of the cache, and shrink when requests leave. A shape
//! whose programs are still compiling is not used until they are, so running rows never wait
//! for a compile, but for a row that reached the end of its cache before the longer one was
//! ready: its next tokens have nowhere else to go.

pub mod plan;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::constrain::RowConstraint;
use crate::error::Result;
use crate::token_loop::{Stats, StopReason, TokenLoop};
use crate::tokenizer::Tokenizer;
use plan::{batch_bucket, cache_bucket, grow_margin, next_cut, prompt_bucket, MIN_BUCKET};
pub use plan::{ChunkPolicy, Shape};

/// One row's sampler: its request's raw PRNG key data and settings (temperature 0: greedy).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub key: [u32; 2],
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
}

impl Sampling {
    /// What a free row samples with: greedy, so an all-free batch pays for no draw.
    pub const FREE: Sampling = Sampling {
        key: [0, 0],
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
}

/// A request as submitted.
pub struct Request {
    pub id: u64,
    pub prompt: Vec<u32>,
    pub budget: usize,
    pub stop_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    pub sampling: Sampling,
    pub grammar: Option<RowConstraint>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Prefilling {
        done: usize,
    },
    Decoding {
        row: usize,
        position: usize,
        counter: usize,
    },
}

struct Live {
    id: u64,
    prompt: Vec<u32>,
    budget: usize,
    sampling: Sampling,
    grammar: Option<RowConstraint>,
    core: TokenLoop,
    phase: Phase,
    /// Prompt positions taken from the scratch cache as an earlier prompt left them.
    cached: usize,
    submitted_ns: u64,
    admitted_ns: u64,
}

impl Live {
    /// Cache positions this request may fill at most.
    fn most(&self) -> usize {
        self.prompt.len() + self.budget
    }

    /// Cache positions its row needs now: what it has filled (its prompt, or its decode
    /// position) and room to grow, never past `most`. A batch's cache follows its rows' reach,
    /// not what they may fill one day: an Ollama client that sets no num_predict may fill the
    /// whole context, but most replies end within a few hundred tokens, and every resize
    /// copies the whole cache (8 rows of 4,096 positions are 755 MB for the embedded model).
    fn reach(&self) -> usize {
        let filled = match self.phase {
            Phase::Decoding { position, .. } => position,
            _ => self.prompt.len(),
        };
        self.most().min(filled + grow_margin(filled))
    }
}

/// How a request ended.
#[derive(Debug)]
pub enum End {
    Done(Box<Finished>),
    Failed(String),
    Cancelled,
}

#[derive(Debug)]
pub struct Finished {
    pub stats: Stats,
    pub token_ids: Vec<u32>,
    /// Time from submission to a slot.
    pub queue_ns: u64,
    /// Prompt positions not computed: an earlier prompt's, reused from the scratch cache.
    pub prompt_cached: usize,
}

/// Text for one request, and its end when it ended.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub text: String,
    pub end: Option<End>,
}

/// A program the driver may need, with its shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    Decode(Shape),
    Forward(Shape),
    Sample(usize),
    Insert(Shape, usize),
    InsertLogits(Shape, usize),
    Prefill(usize, usize),
    Resize(Shape, Shape),
    /// The scratch cache of one prompt bucket copied into (or cut to) another's.
    Rebucket(usize, usize),
    /// One row of a batch's cache copied out as the scratch (of the cache's length).
    Extract(Shape),
}

/// Whether a program can run now; one that cannot starts compiling. With `wait`, nothing
/// streams, so the answer may wait for the compile.
pub trait Programs {
    fn ready(&mut self, program: Program, wait: bool) -> bool;

    /// Whether a program can run now, starting no compile: for work a step may go without
    /// (a compile beside running streams takes a core from them).
    fn compiled(&mut self, program: Program) -> bool;

    /// Asks for a program a later step will likely need, without waiting: it compiles behind
    /// the ones a step waits for.
    fn ask(&mut self, program: Program) {
        self.ready(program, false);
    }
}

/// Per-row inputs of a decode (or forward, or sample) over the batch's rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rows {
    pub positions: Vec<i32>,
    pub active: Vec<bool>,
    pub counters: Vec<i32>,
    pub sampling: Vec<Sampling>,
}

/// One chunk to prefill, and where its prompt joins the batch when the chunk ends it.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub id: u64,
    pub ids: Vec<u32>,
    pub start: usize,
    pub bucket: usize,
    pub size: usize,
    pub insert: Option<(usize, Sampling)>,
    /// The scratch's bucket when it must first be moved into `bucket` (a reused prefix).
    pub rebucket: Option<usize>,
    /// Before this chunk and its move, the scratch trades places with kept scratch `i`: the
    /// prompt continues what that one holds, or starts afresh in it so that what the scratch
    /// held is kept.
    pub swap: Option<usize>,
    /// Then the scratch becomes a copy of kept scratch `j`: the prompt shares a prefix with
    /// what that one holds, and the rest of it (another conversation's) is kept.
    pub copy: Option<usize>,
}

/// What a scratch cache holds: its bucket, the ids of the prompt positions computed in it (from
/// 0; positions past them hold an older prompt's or padding), and the step it was last used in.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    bucket: usize,
    ids: Vec<u32>,
    used: u64,
}

/// The scratch and the kept scratches, as the scheduler expects the driver to hold them.
#[derive(Clone, Debug, Default, PartialEq)]
struct Scratches {
    active: Option<Held>,
    kept: Vec<Option<Held>>,
}

impl Scratches {
    /// Scratch `into` (None: the active one) is now `held`.
    fn put(&mut self, into: Option<usize>, held: Held) {
        match into {
            Some(i) => self.kept[i] = Some(held),
            None => self.active = Some(held),
        }
    }

    /// Runs `chunk` (at step `now`): its swap and copy, then its positions written.
    fn run(&mut self, chunk: &Chunk, now: u64) {
        if let Some(i) = chunk.swap {
            std::mem::swap(&mut self.active, &mut self.kept[i]);
        }
        if let Some(j) = chunk.copy {
            if let Some(held) = self.kept[j].as_mut() {
                held.used = now; // read: it stays ahead of those not used since
            }
            self.active = self.kept[j].clone();
        }
        self.active = Some(held_after(self.active.take(), chunk, now));
    }
}

/// What the scratch holds once `chunk` has run on it at step `now`, from `held` before: the
/// driver starts a fresh scratch for a chunk of another bucket unless the chunk moves the old
/// one over.
fn held_after(held: Option<Held>, chunk: &Chunk, now: u64) -> Held {
    let mut ids = match held {
        Some(h) if h.bucket == chunk.bucket || chunk.rebucket == Some(h.bucket) => h.ids,
        _ => Vec::new(),
    };
    if ids.len() < chunk.start {
        // Not the positions before this chunk: claim nothing rather than a gap.
        ids.clear();
    } else {
        ids.truncate(chunk.start);
        ids.extend_from_slice(&chunk.ids);
    }
    Held {
        bucket: chunk.bucket,
        ids,
        used: now,
    }
}

/// One step, in the order the driver dispatches it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepPlan {
    /// Start from a fresh batch of free rows of this shape.
    pub reset: Option<Shape>,
    /// Rows of the new batch taken from the old one (row i from `source[i]`), and the new shape.
    pub resize: Option<(Vec<usize>, Shape)>,
    /// The rows to decode, when any row is running.
    pub rows: Option<Rows>,
    pub chunks: Vec<Chunk>,
    /// Split step: forward, then a sample under each row's mask (some row has a grammar).
    pub masked: bool,
    /// Before anything else, these rows of the batch's cache are copied out, each into a
    /// scratch (None: the active one, else that kept one): finished replies' prompts and
    /// tokens, for the next prompt (a conversation's next turn) to start from.
    pub extract: Vec<(usize, Option<usize>)>,
    /// The scratches once the step has run.
    scratches: Scratches,
    pub shape: Option<Shape>,
    decoding: Vec<(usize, u64)>,
    remap: Option<Vec<Option<usize>>>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.rows.is_none() && self.chunks.is_empty() && self.extract.is_empty()
    }
}

/// A dispatched step whose tokens are read next: which request each row's tokens belong to.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    pub reads: Vec<(usize, u64)>,
    pub batch: usize,
    /// The step grew or compacted the batch first (its time is not a decode step's).
    pub resized: bool,
    pub decoded: bool,
    pub chunk_tokens: usize,
    /// A chunk ended a prompt: the tokens read wait for the step's chunks too (otherwise they
    /// run after its decode, and delay the next step's read instead).
    pub inserted: bool,
    /// The largest prompt bucket among the step's chunks (0 without chunks).
    pub chunk_bucket: usize,
}

/// The scheduler: requests, slots and the device batch's layout.
pub struct Batch {
    tokenizer: Arc<Tokenizer>,
    slots: usize,
    width: usize,
    chunk_sizes: Vec<usize>,
    live: Vec<Live>,
    shape: Option<Shape>,
    rows: Vec<Option<u64>>,
    pub policy: ChunkPolicy,
    /// Prompt positions the last step queued behind its decode, ending no prompt: the device
    /// runs them before the next step's decode, so they delay that step's tokens.
    behind: usize,
    /// Whether a prompt starts from what the scratch holds of its beginning. Only for decoders
    /// whose rows' numbers do not depend on how the positions were chunked (row-invariant
    /// kernels): there the reused positions are the very bits a fresh prefill computes.
    pub reuse_prompts: bool,
    /// The scratch, and those kept beside it: each the cache of an earlier prompt (or a
    /// conversation's last turn) for later prompts to start from.
    scratches: Scratches,
    /// Replies that ended, still in their rows: the row, and the ids of the positions it filled.
    parked: Vec<(usize, Vec<u32>)>,
    /// Steps committed: the clock of the scratches' use.
    steps: u64,
    /// How long prompts wait for the clients of rows that just ended (0: never; see `Gather`).
    pub gather_ns: u64,
    gather: Option<Gather>,
}

/// Rows that ended lately, whose clients may send their next prompts at once (a closed loop:
/// `lljx bench serve`, agents, a notebook's pool). Prompts that have not started wait until as
/// many have arrived as rows ended, or until `until_ns`, so that they are read in one pass:
/// eight clients of the 1B shape whose replies ended in one step sent their next prompts over
/// the next second, and each was read alone (100-180 ms apiece, against 40-70 ms in a pass of
/// eight) while the batch ran one, two and four rows in between.
#[derive(Clone, Copy, Debug)]
struct Gather {
    until_ns: u64,
    expected: usize,
}

impl Batch {
    /// `slots` requests run at once (more wait); each step yields `width` tokens per row;
    /// prompts are prefilled in chunks of `chunk_sizes` (ascending powers of two).
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        slots: usize,
        width: usize,
        chunk_sizes: Vec<usize>,
        policy: ChunkPolicy,
    ) -> Self {
        Batch {
            tokenizer,
            slots: slots.max(1),
            width: width.max(1),
            chunk_sizes,
            live: Vec::new(),
            shape: None,
            rows: Vec::new(),
            policy,
            behind: 0,
            reuse_prompts: false,
            scratches: Scratches::default(),
            parked: Vec::new(),
            steps: 0,
            gather_ns: 0,
            gather: None,
        }
    }

    /// Keeps `count` scratches beside the one prompts are prefilled in (each one row of cache):
    /// several conversations each start their next turn after their last, not only the one
    /// prefilled last. The least recently used makes way.
    pub fn keep_scratches(&mut self, count: usize) {
        self.scratches.kept = vec![None; count];
    }

    /// The driver dropped its scratch caches (the batch went idle without prompts to keep).
    pub fn forget_scratch(&mut self) {
        let kept = self.scratches.kept.len();
        self.scratches = Scratches::default();
        self.keep_scratches(kept);
    }

    pub fn submit(&mut self, request: Request, now_ns: u64) {
        let core = TokenLoop::new(
            self.tokenizer.clone(),
            request.prompt.len(),
            request.budget,
            request.stop_ids,
            request.stop_strings,
        );
        self.live.push(Live {
            id: request.id,
            prompt: request.prompt,
            budget: request.budget,
            sampling: request.sampling,
            grammar: request.grammar,
            core,
            phase: Phase::Waiting,
            cached: 0,
            submitted_ns: now_ns,
            admitted_ns: now_ns,
        });
    }

    /// Ends a request at once (a client went away): the tokens it had generated, or None when
    /// it is not here.
    pub fn cancel(&mut self, id: u64) -> Option<usize> {
        self.remove(id).map(|l| l.core.stats.gen_tokens)
    }

    /// Every live request ends with `message` (the device state is gone); the batch starts afresh.
    pub fn fail_all(&mut self, message: &str) -> Vec<Event> {
        self.shape = None;
        self.gather = None;
        self.forget_scratch();
        self.parked.clear();
        self.rows.clear();
        self.live
            .drain(..)
            .map(|l| Event {
                id: l.id,
                text: String::new(),
                end: Some(End::Failed(message.to_owned())),
            })
            .collect()
    }

    /// Requests submitted and not ended.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Requests holding a slot (prefilling or decoding).
    pub fn in_slots(&self) -> usize {
        self.live
            .iter()
            .filter(|l| l.phase != Phase::Waiting)
            .count()
    }

    pub fn shape(&self) -> Option<Shape> {
        self.shape
    }

    fn remove(&mut self, id: u64) -> Option<Live> {
        let at = self.live.iter().position(|l| l.id == id)?;
        let live = self.live.remove(at);
        if let Phase::Decoding { row, .. } = live.phase {
            self.rows[row] = None;
        }
        Some(live)
    }

    /// `ended` replies finished at `now_ns`: their clients' next prompts are waited for.
    fn expect_returns(&mut self, ended: usize, now_ns: u64) {
        if ended == 0 || self.gather_ns == 0 {
            return;
        }
        match &mut self.gather {
            Some(g) if now_ns < g.until_ns => g.expected += ended,
            _ => {
                self.gather = Some(Gather {
                    until_ns: now_ns.saturating_add(self.gather_ns),
                    expected: ended,
                })
            }
        }
    }

    /// Whether prompts not yet started wait this step for more to arrive: fewer have come than
    /// rows ended lately, and the wait has time left. Once either fails the wait is over.
    fn gathering(&mut self, now_ns: u64) -> bool {
        let Some(g) = self.gather else {
            return false;
        };
        let arrived = self
            .live
            .iter()
            .filter(|l| matches!(l.phase, Phase::Waiting | Phase::Prefilling { done: 0 }))
            .count();
        let free = self.slots.saturating_sub(self.decoding_count());
        if now_ns < g.until_ns && arrived < g.expected.min(free) {
            return true;
        }
        self.gather = None;
        false
    }

    fn decoding_count(&self) -> usize {
        self.live
            .iter()
            .filter(|l| matches!(l.phase, Phase::Decoding { .. }))
            .count()
    }

    fn admit(&mut self, now_ns: u64) {
        let mut free = self.slots.saturating_sub(self.in_slots());
        for live in self.live.iter_mut().filter(|l| l.phase == Phase::Waiting) {
            if free == 0 {
                break;
            }
            live.phase = Phase::Prefilling { done: 0 };
            live.admitted_ns = now_ns;
            free -= 1;
        }
    }
}

mod step;
