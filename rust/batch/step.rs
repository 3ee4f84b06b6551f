//! One batched step: planning it (rows, chunks, shape), recording it once dispatched, reading
//! back the step before it, and the grammar masks of a split step.

use super::*;

/// A prompt of at most this many smallest chunks is read in one chunk when even the smallest
/// is over the step target.
const SHORT_REST: usize = 4;

/// How a prompt's prefill starts: after a prefix a scratch holds (moved from another bucket first
/// when one is given), afresh, or not yet (that move is compiling); `swap` names the kept scratch
/// that trades places with the active one first, and `copy` the one the active one then copies.
enum Reuse {
    From {
        start: usize,
        rebucket: Option<usize>,
        swap: Option<usize>,
        copy: Option<usize>,
    },
    Fresh {
        swap: Option<usize>,
    },
    Wait,
}

/// Where a finished prompt goes: the batch's shape after this step and which rows are taken.
struct Placement {
    shape: Option<Shape>,
    fresh: bool,
    taken: Vec<bool>,
    occupied: usize,
    /// Planned inserts: (index into the plan's chunks, prompt bucket, cache need).
    inserts: Vec<(usize, usize, usize)>,
    masked: bool,
    max_batch: usize,
}

impl Placement {
    fn step_ready(&self, shape: Shape, programs: &mut impl Programs, wait: bool) -> bool {
        if self.masked {
            programs.ready(Program::Forward(shape), wait)
                && programs.ready(Program::Sample(shape.batch), wait)
        } else {
            programs.ready(Program::Decode(shape), wait)
        }
    }

    fn insert_ready(
        &self,
        shape: Shape,
        bucket: usize,
        programs: &mut impl Programs,
        wait: bool,
    ) -> bool {
        let program = if self.masked {
            Program::InsertLogits(shape, bucket)
        } else {
            Program::Insert(shape, bucket)
        };
        programs.ready(program, wait)
    }

    /// A row for a prompt of `bucket` that may fill `need` positions, growing the batch (or
    /// starting a fresh one) when the current one has no room and the programs are ready.
    fn place(
        &mut self,
        need: usize,
        bucket: usize,
        chunks: &mut [Chunk],
        programs: &mut impl Programs,
        wait: bool,
    ) -> Option<usize> {
        if let Some(shape) = self.shape {
            if need <= shape.cache_len && self.insert_ready(shape, bucket, programs, wait) {
                if let Some(row) = self.taken.iter().position(|t| !t) {
                    self.taken[row] = true;
                    return Some(row);
                }
            }
        }
        let count = self.occupied + self.inserts.len() + 1;
        let needs = self
            .inserts
            .iter()
            .map(|&(_, _, n)| n)
            .chain([need])
            .max()
            .unwrap_or(need);
        let fresh = self.occupied == 0;
        let shape = match (self.shape, fresh) {
            (Some(old), false) => Shape {
                batch: old.batch.max(batch_bucket(count)).min(self.max_batch),
                cache_len: old.cache_len.max(cache_bucket(needs)),
            },
            _ => Shape {
                batch: batch_bucket(count).min(self.max_batch),
                cache_len: cache_bucket(needs),
            },
        };
        if count > shape.batch || Some(shape) == self.shape {
            return None;
        }
        let resize_ready = fresh || programs.ready(Program::Resize(self.shape?, shape), wait);
        let buckets: Vec<usize> = self
            .inserts
            .iter()
            .map(|&(_, b, _)| b)
            .chain([bucket])
            .collect();
        if !(resize_ready
            && self.step_ready(shape, programs, wait)
            && buckets
                .iter()
                .all(|&b| self.insert_ready(shape, b, programs, wait)))
        {
            return None;
        }
        if fresh {
            // A fresh batch: the prompts planned so far take its first rows.
            self.taken = vec![false; shape.batch];
            for (i, &(chunk, _, _)) in self.inserts.iter().enumerate() {
                if let Some((row, _)) = chunks[chunk].insert.as_mut() {
                    *row = i;
                }
                self.taken[i] = true;
            }
        } else {
            self.taken.resize(shape.batch, false);
        }
        self.shape = Some(shape);
        self.fresh = fresh;
        let row = self.taken.iter().position(|t| !t)?;
        self.taken[row] = true;
        Some(row)
    }
}

impl Batch {
    fn decoding(&self) -> Vec<(usize, u64)> {
        self.live
            .iter()
            .filter_map(|l| match l.phase {
                Phase::Decoding { row, .. } if l.core.wants_more() => Some((row, l.id)),
                _ => None,
            })
            .collect()
    }

    /// Plans the next step; programs that are not compiled yet are left out (and start compiling).
    pub fn plan(&mut self, programs: &mut impl Programs, now_ns: u64) -> StepPlan {
        self.admit(now_ns);
        let masked = self
            .live
            .iter()
            .any(|l| l.phase != Phase::Waiting && l.grammar.is_some());
        let decoding = self.decoding();
        let idle = decoding.is_empty();
        let occupied = self.rows.iter().filter(|r| r.is_some()).count();
        let mut place = Placement {
            shape: self.shape,
            fresh: false,
            taken: self.rows.iter().map(Option::is_some).collect(),
            occupied,
            inserts: Vec::new(),
            masked,
            max_batch: batch_bucket(self.slots),
        };
        let batch = self.shape.map_or(1, |s| s.batch);
        // Budgeted for the largest prompt bucket on its way in: its positions cost the most.
        let bucket = self
            .live
            .iter()
            .filter(|l| matches!(l.phase, Phase::Prefilling { .. }))
            .map(|l| prompt_bucket(l.prompt.len()))
            .max()
            .unwrap_or(MIN_BUCKET);
        let mut budget = self.policy.budget(batch, !idle, &self.chunk_sizes, bucket);
        if !idle && self.grow_ahead(&mut place, programs) {
            budget = 0; // this step copies the cache: no prompt chunk shares it
        }
        // Even the smallest chunk takes the step past the target (a 1B model's 8-row decode on
        // 2 cores nearly fills it, and a 16-position chunk there costs as much again, mostly
        // for decoding the weights' tiles once per call). A short prompt's rest is then read
        // in one chunk: the step is long either way, and one long step delays the other rows
        // less than three or four (1B, 8 clients: 36-token prompts took three steps of
        // 200-300 ms each). Not a long prompt's rest: its chunks cost per position, and its
        // last 64 in one chunk made the streams' longest gap (embedded model, 2 cores, a
        // 1,905-token prompt beside 4 streams: 0.35 s against 0.13 s for a 16-position step).
        let smallest = self.chunk_sizes.first().copied().unwrap_or(MIN_BUCKET);
        let over = !idle && self.policy.over_target(batch, &self.chunk_sizes, bucket);
        let gathering = self.gathering(now_ns);
        let mut chunks: Vec<Chunk> = Vec::new();
        // What the scratches will hold as the step's copies and chunks run on them, in order.
        let mut scratches = self.scratches.clone();
        let extract = self.take_parked(&mut scratches, programs);
        'requests: for live in self.live.iter() {
            let Phase::Prefilling { mut done } = live.phase else {
                continue;
            };
            if gathering && done == 0 {
                continue;
            }
            let bucket = prompt_bucket(live.prompt.len());
            let (mut rebucket, mut swap, mut copy) = (None, None, None);
            if done == 0 {
                match self.reusable(&scratches, &live.prompt, bucket, programs, idle) {
                    Reuse::From {
                        start,
                        rebucket: from,
                        swap: kept,
                        copy: copied,
                    } => (done, rebucket, swap, copy) = (start, from, kept, copied),
                    Reuse::Fresh { swap: kept } => swap = kept,
                    Reuse::Wait => break 'requests,
                }
            }
            if over && budget > 0 && live.prompt.len() <= SHORT_REST * smallest {
                budget = budget.max(SHORT_REST * smallest);
            }
            loop {
                let Some(cut) = next_cut(live.prompt.len(), done, budget, &self.chunk_sizes) else {
                    break 'requests;
                };
                if !programs.ready(Program::Prefill(bucket, cut.size), idle) {
                    break 'requests;
                }
                // A chunk that ends its prompt is read with the step's tokens, after the
                // positions the step before left behind: together they must fit the budget, or
                // the prompt ends a step later. When not even the smallest chunk fits, waiting
                // would not bring the step within the target, only delay the prompt.
                if cut.last && !idle && !over && self.behind + cut.size > budget {
                    break 'requests;
                }
                let mut insert = None;
                if cut.last {
                    match place.place(live.reach(), bucket, &mut chunks, programs, idle) {
                        Some(row) => insert = Some((row, live.sampling)),
                        None => break 'requests,
                    }
                    place.inserts.push((chunks.len(), bucket, live.reach()));
                }
                let chunk = Chunk {
                    id: live.id,
                    ids: live.prompt[done..done + cut.real].to_vec(),
                    start: done,
                    bucket,
                    size: cut.size,
                    insert,
                    rebucket: rebucket.take(),
                    swap: swap.take(),
                    copy: copy.take(),
                };
                scratches.run(&chunk, self.steps);
                chunks.push(chunk);
                budget -= cut.size;
                done += cut.real;
                if cut.last {
                    continue 'requests;
                }
            }
        }
        self.ask_ahead(programs, masked);
        let mut plan = StepPlan {
            masked,
            chunks,
            extract,
            scratches,
            ..StepPlan::default()
        };
        let mut remap: Option<Vec<Option<usize>>> = None;
        if place.shape != self.shape {
            let shape = place.shape.expect("a placed prompt has a shape");
            if place.fresh {
                plan.reset = Some(shape);
            } else {
                let old = self.shape.expect("a grown batch had a shape").batch;
                let source: Vec<Option<usize>> =
                    (0..shape.batch).map(|r| (r < old).then_some(r)).collect();
                plan.resize = Some((source.iter().map(|s| s.unwrap_or(0)).collect(), shape));
                remap = Some(source);
            }
        } else if let Some((source, shape)) = place
            .inserts
            .is_empty()
            .then(|| self.shrink(programs, idle))
            .flatten()
        {
            plan.resize = Some((source.iter().map(|s| s.unwrap_or(0)).collect(), shape));
            remap = Some(source);
            place.shape = Some(shape);
        }
        plan.shape = if self.live.is_empty() {
            None
        } else {
            place.shape
        };
        // Rows that decode, indexed as in the batch after the resize.
        let new_row = |row: usize| match &remap {
            Some(source) => source.iter().position(|&s| s == Some(row)),
            None => Some(row),
        };
        // A row at the end of its cache while the longer one compiles: no row decodes until it is
        // ready (a row left out of a decode would still have a token drawn and written into its
        // place). The margin a row keeps ahead of it makes this a rare wait.
        let advance = if masked { 1 } else { self.width };
        let decoding = match place.shape {
            Some(shape) if self.row_at_end(advance, shape.cache_len) => Vec::new(),
            _ => decoding,
        };
        plan.decoding = decoding
            .iter()
            .filter_map(|&(row, id)| new_row(row).map(|r| (r, id)))
            .collect();
        if let (false, Some(shape)) = (plan.decoding.is_empty(), place.shape) {
            plan.rows = Some(self.rows_for(shape, &plan.decoding, &[]));
        }
        plan.remap = remap;
        plan
    }

    /// The replies that ended, to copy out of their rows before this step, each with the scratch
    /// it goes into: their prompts and the tokens whose keys and values the rows hold. Only rows
    /// not taken again, once the copy's program is compiled (the warm-up compiles it; none
    /// starts here). A reply goes into the scratch whose prompt it continues (a conversation's
    /// last turn), else an empty one, else the least recently used; never into the active
    /// scratch while a prompt is part-way through it. A reply not copied now is dropped.
    fn take_parked(
        &mut self,
        scratches: &mut Scratches,
        programs: &mut impl Programs,
    ) -> Vec<(usize, Option<usize>)> {
        let parked = std::mem::take(&mut self.parked);
        let Some(shape) = self.shape.filter(|_| !parked.is_empty()) else {
            return Vec::new();
        };
        if !programs.compiled(Program::Extract(shape)) {
            return Vec::new();
        }
        let busy = self
            .live
            .iter()
            .any(|l| matches!(l.phase, Phase::Prefilling { done } if done > 0));
        let mut copies = Vec::new();
        for (row, ids) in parked {
            if self.rows.get(row).is_none_or(Option::is_some) {
                continue;
            }
            let Some(into) = reply_target(scratches, &ids, busy) else {
                continue;
            };
            let held = Held {
                bucket: shape.cache_len,
                ids,
                used: self.steps,
            };
            scratches.put(into, held);
            copies.push((row, into));
        }
        copies
    }

    /// Where a prompt of `bucket` may start its prefill from what the scratches hold: after the
    /// longest prefix it shares with one of them (the active one on a tie), cut to whole
    /// smallest chunks (so the smallest chunk always fits after it) and short of the prompt's
    /// last token, whose logits draw its first token; with the bucket the scratch must be moved
    /// from when it is another. That program is waited for (`wait`: nothing decodes, and its
    /// compile is a fraction of a second against a prefix's prefill); beside decoding rows it
    /// is used only if compiled (the warm-up compiles those between neighbouring buckets), else
    /// the prompt starts afresh. A fresh prompt goes into the least recently used scratch, so
    /// the active one's prompt is kept when a kept scratch is older.
    fn reusable(
        &self,
        scratches: &Scratches,
        prompt: &[u32],
        bucket: usize,
        programs: &mut impl Programs,
        wait: bool,
    ) -> Reuse {
        let fresh = Reuse::Fresh {
            swap: oldest_kept(scratches),
        };
        if !self.reuse_prompts {
            return fresh;
        }
        let smallest = self.chunk_sizes.first().copied().unwrap_or(MIN_BUCKET);
        let shared_with = |held: &Held| {
            let shared = held
                .ids
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count();
            let start = shared.min(prompt.len().saturating_sub(1)) / smallest * smallest;
            (start, shared)
        };
        let best = std::iter::once((None, scratches.active.as_ref()))
            .chain((scratches.kept.iter().enumerate()).map(|(i, held)| (Some(i), held.as_ref())))
            .filter_map(|(at, held)| held.map(|h| (at, h, shared_with(h))))
            .filter(|&(_, _, (start, _))| start > 0)
            .max_by_key(|&(at, _, (start, _))| (start, at.is_none()));
        let Some((at, held, (start, shared))) = best else {
            return fresh;
        };
        // Positions past the shared ones would be overwritten: another conversation's, kept by
        // copying the scratch into one used less lately, when there is one.
        let spare = (held.ids.len() > shared)
            .then(|| spare_scratch(scratches, at, held.used))
            .flatten();
        let (swap, copy) = match (at, spare) {
            (_, None) => (at, None),
            (None, Some(spare)) => (spare, spare),
            (Some(_), Some(spare)) => (spare, at),
        };
        let from = |rebucket| Reuse::From {
            start,
            rebucket,
            swap,
            copy,
        };
        if held.bucket == bucket {
            return from(None);
        }
        let program = Program::Rebucket(held.bucket, bucket);
        match wait {
            true if programs.ready(program, true) => from(Some(held.bucket)),
            true => Reuse::Wait,
            false if programs.compiled(program) => from(Some(held.bucket)),
            false => fresh,
        }
    }

    /// Asks, without waiting, for the programs a prompt longer than one chunk will meet on its
    /// way in, behind the ones this step asked for: every chunk size of its bucket (the budget
    /// picks among them as costs are measured, and its last chunk may be any), and the programs
    /// that place it alone in a fresh batch, as it is once the rows running now have ended.
    /// They compile while its first chunks run, not one after another once it is read: a
    /// 2,250-token prompt to the embedded model waited 6 s after its last chunk for its last
    /// chunk size, then the decode and insert of its fresh batch, compiled in turn.
    fn ask_ahead(&self, programs: &mut impl Programs, masked: bool) {
        let largest = self.chunk_sizes.last().copied().unwrap_or(MIN_BUCKET);
        for live in &self.live {
            if !matches!(live.phase, Phase::Prefilling { .. }) || live.prompt.len() <= largest {
                continue;
            }
            let bucket = prompt_bucket(live.prompt.len());
            for &size in self.chunk_sizes.iter().filter(|&&s| s <= bucket) {
                programs.ask(Program::Prefill(bucket, size));
            }
            let alone = Shape {
                batch: 1,
                cache_len: cache_bucket(live.reach()),
            };
            if masked {
                programs.ask(Program::Forward(alone));
                programs.ask(Program::Sample(alone.batch));
                programs.ask(Program::InsertLogits(alone, bucket));
            } else {
                programs.ask(Program::Decode(alone));
                programs.ask(Program::Insert(alone, bucket));
            }
        }
    }

    /// While rows decode, the batch grows in a step of its own for the next prompt on its way in
    /// (a row, or a longer cache), before the prompt's chunks, and for running rows that near
    /// the end of the cache: growing copies every running row's cache, which for long contexts
    /// costs as much as a chunk, and the step that ends a long prompt would otherwise pay for
    /// both. Returns whether `place` now holds the grown shape.
    ///
    /// A longer shape still compiling is not used until it is ready, as for a new batch size
    /// (its programs were asked for as soon as a row's `reach` passed the cache's end).
    fn grow_ahead<P: Programs>(&self, place: &mut Placement, programs: &mut P) -> bool {
        let Some(shape) = self.shape else {
            return false;
        };
        let coming = self
            .live
            .iter()
            .find(|l| matches!(l.phase, Phase::Prefilling { .. }));
        let running: Vec<&Live> = self
            .live
            .iter()
            .filter(|l| matches!(l.phase, Phase::Decoding { .. }))
            .collect();
        let occupied = self.rows.iter().filter(|r| r.is_some()).count();
        // A step's tokens must fit too, however many it draws per row.
        let advance = if place.masked { 1 } else { self.width };
        let step_end = |l: &Live| match l.phase {
            Phase::Decoding { position, .. } => (position + advance).min(l.most()),
            _ => 0,
        };
        let grown = |coming: Option<&Live>| {
            let reach = running
                .iter()
                .map(|l| l.reach().max(step_end(l)))
                .chain(coming.map(Live::reach))
                .max()
                .unwrap_or(0);
            let extra_row = usize::from(coming.is_some() && occupied >= shape.batch);
            let grown = Shape {
                batch: shape
                    .batch
                    .max(batch_bucket(occupied + extra_row))
                    .min(place.max_batch),
                cache_len: shape.cache_len.max(cache_bucket(reach)),
            };
            (grown != shape && occupied + extra_row <= grown.batch).then_some(grown)
        };
        let try_grow = |grown: Shape, bucket: Option<usize>, programs: &mut P| {
            programs.ready(Program::Resize(shape, grown), false)
                && place.step_ready(grown, programs, false)
                && bucket.is_none_or(|b| place.insert_ready(grown, b, programs, false))
        };
        let bucket = coming.map(|l| prompt_bucket(l.prompt.len()));
        let chosen = grown(coming)
            .filter(|&g| try_grow(g, bucket, programs))
            .or_else(|| grown(None).filter(|&g| try_grow(g, None, programs)));
        let Some(grown) = chosen else {
            return false;
        };
        place.shape = Some(grown);
        place.taken.resize(grown.batch, false);
        true
    }

    /// Whether a running row's next `advance` tokens would not fit a cache of `cache_len`
    /// positions, though it may fill a longer one (the last step of a row whose budget ends
    /// there runs on, writing nothing past the end, and its extra tokens are dropped).
    fn row_at_end(&self, advance: usize, cache_len: usize) -> bool {
        self.live.iter().any(|l| match l.phase {
            Phase::Decoding { position, .. } => {
                position + advance > cache_len && cache_bucket(l.most()) > cache_len
            }
            _ => false,
        })
    }

    /// A smaller batch when its running rows fit in half of it (and no prompt is on its way in).
    fn shrink(
        &self,
        programs: &mut impl Programs,
        wait: bool,
    ) -> Option<(Vec<Option<usize>>, Shape)> {
        let shape = self.shape?;
        let occupied: Vec<usize> = (0..self.rows.len())
            .filter(|&r| self.rows[r].is_some())
            .collect();
        let coming = self
            .live
            .iter()
            .filter(|l| matches!(l.phase, Phase::Prefilling { .. }))
            .count();
        if occupied.is_empty() {
            return None;
        }
        let need = self
            .live
            .iter()
            .filter(|l| matches!(l.phase, Phase::Decoding { .. }))
            .map(Live::reach)
            .max()?;
        let smaller = Shape {
            batch: batch_bucket(occupied.len() + coming),
            cache_len: cache_bucket(need).min(shape.cache_len),
        };
        if smaller.batch >= shape.batch {
            return None;
        }
        let masked = self
            .live
            .iter()
            .any(|l| l.phase != Phase::Waiting && l.grammar.is_some());
        let step = if masked {
            programs.ready(Program::Forward(smaller), wait)
                && programs.ready(Program::Sample(smaller.batch), wait)
        } else {
            programs.ready(Program::Decode(smaller), wait)
        };
        if !(step && programs.ready(Program::Resize(shape, smaller), wait)) {
            return None;
        }
        let mut source: Vec<Option<usize>> = occupied.into_iter().map(Some).collect();
        source.resize(smaller.batch, None);
        Some((source, smaller))
    }

    /// Per-row inputs for `shape`: `decoding` rows at their positions, `joining` ones drawing their
    /// first token, free rows greedy at position 0.
    fn rows_for(&self, shape: Shape, decoding: &[(usize, u64)], joining: &[(usize, u64)]) -> Rows {
        let mut rows = Rows {
            positions: vec![0; shape.batch],
            active: vec![false; shape.batch],
            counters: vec![0; shape.batch],
            sampling: vec![Sampling::FREE; shape.batch],
        };
        let last = shape.cache_len.saturating_sub(1);
        for &(row, id) in decoding.iter().chain(joining) {
            let Some(live) = self.live.iter().find(|l| l.id == id) else {
                continue;
            };
            let (position, counter) = match live.phase {
                Phase::Decoding {
                    position, counter, ..
                } => (position, counter),
                _ => (0, 0),
            };
            rows.positions[row] = position.min(last) as i32;
            rows.active[row] = true;
            rows.counters[row] = counter as i32;
            rows.sampling[row] = live.sampling;
        }
        rows
    }

    /// Records a dispatched plan: the batch's new layout, rows advanced, prompts joined.
    /// Returns what its tokens hold, to read after the next step is dispatched.
    pub fn commit(&mut self, plan: &StepPlan) -> InFlight {
        if let Some(shape) = plan.reset {
            self.rows = vec![None; shape.batch];
        } else if let Some(source) = &plan.remap {
            let old = std::mem::take(&mut self.rows);
            self.rows = source
                .iter()
                .map(|s| s.and_then(|r| old.get(r).copied().flatten()))
                .collect();
            for live in self.live.iter_mut() {
                if let Phase::Decoding { row, .. } = &mut live.phase {
                    match source.iter().position(|&s| s == Some(*row)) {
                        Some(new) => *row = new,
                        None => unreachable!("a compacted batch keeps every running row"),
                    }
                }
            }
        }
        self.shape = plan.shape;
        if self.shape.is_none() {
            self.rows.clear();
        }
        // A split step draws one token per row, whatever the strategy's decode step does.
        let advance = if plan.masked { 1 } else { self.width };
        let mut reads = Vec::new();
        for &(row, id) in &plan.decoding {
            if let Some(live) = self.live.iter_mut().find(|l| l.id == id) {
                if let Phase::Decoding {
                    position, counter, ..
                } = &mut live.phase
                {
                    *position += advance;
                    *counter += advance;
                    reads.push((row, id));
                }
            }
        }
        self.scratches = plan.scratches.clone();
        self.steps += 1;
        let mut chunk_tokens = 0;
        let mut chunk_bucket = 0;
        let inserted = plan.chunks.iter().any(|c| c.insert.is_some());
        self.behind = if inserted {
            0
        } else {
            plan.chunks.iter().map(|c| c.size).sum()
        };
        for chunk in &plan.chunks {
            chunk_tokens += chunk.size;
            chunk_bucket = chunk_bucket.max(chunk.bucket);
            let Some(live) = self.live.iter_mut().find(|l| l.id == chunk.id) else {
                continue;
            };
            if live.phase == (Phase::Prefilling { done: 0 }) {
                live.cached = chunk.start;
            }
            if let Some((row, _)) = chunk.insert {
                live.phase = Phase::Decoding {
                    row,
                    position: live.prompt.len(),
                    counter: 1,
                };
                self.rows[row] = Some(chunk.id);
                reads.push((row, chunk.id));
            } else if let Phase::Prefilling { done } = &mut live.phase {
                *done = chunk.start + chunk.ids.len();
            }
        }
        InFlight {
            reads,
            batch: self.shape.map_or(0, |s| s.batch),
            resized: plan.resize.is_some(),
            decoded: plan.rows.is_some(),
            chunk_tokens,
            inserted,
            chunk_bucket,
        }
    }

    /// The rows a split step samples: the decoding ones and the prompts that joined in it.
    pub fn sample_rows(&self, flight: &InFlight) -> Option<Rows> {
        let shape = self.shape?;
        let (joining, decoding): (Vec<_>, Vec<_>) = flight.reads.iter().partition(|&&(_, id)| {
            self.live
                .iter()
                .any(|l| l.id == id && matches!(l.phase, Phase::Decoding { counter: 1, .. }))
        });
        let mut rows = self.rows_for(shape, &decoding, &joining);
        // Recorded already: the counters this step draws with are one lower (zero for a prompt that joined).
        for &(row, _) in &decoding {
            rows.counters[row] -= 1;
        }
        for &(row, _) in &joining {
            rows.counters[row] = 0;
        }
        Some(rows)
    }

    /// Takes the tokens [rows][width] of the step `flight` describes, read `now_ns` into the
    /// engine's clock: text for each request, and the ends of those that ended.
    pub fn route(&mut self, flight: &InFlight, tokens: &[Vec<i64>], now_ns: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut ended = 0;
        for &(row, id) in &flight.reads {
            let Some(at) = self.live.iter().position(|l| l.id == id) else {
                continue;
            };
            let Some(ids) = tokens.get(row) else { continue };
            let live = &mut self.live[at];
            match take_tokens(live, ids, now_ns) {
                Ok((text, false)) => {
                    if !text.is_empty() {
                        events.push(Event {
                            id,
                            text,
                            end: None,
                        });
                    }
                }
                Ok((text, true)) => {
                    ended += 1;
                    let live = self.remove(id).expect("found above");
                    if self.reuse_prompts {
                        self.parked.extend(parked_reply(&live));
                    }
                    events.push(Event {
                        id,
                        text,
                        end: Some(End::Done(Box::new(finished(live, now_ns)))),
                    });
                }
                Err(error) => {
                    self.remove(id);
                    events.push(Event {
                        id,
                        text: String::new(),
                        end: Some(End::Failed(error.to_string())),
                    });
                }
            }
        }
        self.expect_returns(ended, now_ns);
        events
    }

    /// Each row's packed token mask [batch][words] for a split step: a row with a grammar gets
    /// its grammar's, every other row allows everything. A grammar that fails ends its request.
    pub fn masks(&mut self, words: usize) -> (Vec<u32>, Vec<Event>) {
        let batch = self.shape.map_or(0, |s| s.batch);
        let mut buffer = vec![u32::MAX; batch * words];
        let mut failed = Vec::new();
        for live in self.live.iter_mut() {
            let (Phase::Decoding { row, .. }, Some(grammar)) = (live.phase, live.grammar.as_mut())
            else {
                continue;
            };
            let start = std::time::Instant::now();
            let result = grammar.fill(&mut buffer[row * words..(row + 1) * words]);
            live.core
                .stats
                .mask_ns
                .push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
            if let Err(error) = result {
                failed.push((live.id, error.to_string()));
            }
        }
        let events = failed
            .into_iter()
            .map(|(id, message)| {
                self.remove(id);
                Event {
                    id,
                    text: String::new(),
                    end: Some(End::Failed(message)),
                }
            })
            .collect();
        (buffer, events)
    }
}

/// One row's tokens into its request: text, and whether it ended. A grammar takes every token
/// it allowed, and a reply ends once its grammar is complete.
fn take_tokens(live: &mut Live, ids: &[i64], now_ns: u64) -> Result<(String, bool)> {
    let mut step = live
        .core
        .on_tokens(ids, now_ns.saturating_sub(live.admitted_ns))?;
    let out_of_budget = step.finished && live.core.stats.stop_reason == Some(StopReason::Length);
    if let Some(grammar) = live
        .grammar
        .as_mut()
        .filter(|_| !step.finished || out_of_budget)
    {
        for &id in ids.iter().filter(|&&id| id >= 0) {
            grammar.consume(u32::try_from(id).unwrap_or(u32::MAX))?;
        }
        if grammar.is_complete() && out_of_budget {
            live.core.stats.stop_reason = Some(StopReason::Stop);
        } else if grammar.is_complete() {
            step.text.push_str(&live.core.end(StopReason::Stop).text);
            step.finished = true;
        }
    }
    Ok((step.text, step.finished))
}

/// The scratch a finished reply (`ids`) goes into: None for the active one (unless `busy`), or
/// a kept one's index. The one whose prompt the reply continues, the longest such, else an empty
/// one, else the least recently used; None inside when none may take it.
fn reply_target(scratches: &Scratches, ids: &[u32], busy: bool) -> Option<Option<usize>> {
    let candidates: Vec<(Option<usize>, Option<&Held>)> = (!busy)
        .then_some((None, scratches.active.as_ref()))
        .into_iter()
        .chain((scratches.kept.iter().enumerate()).map(|(i, held)| (Some(i), held.as_ref())))
        .collect();
    let continued = candidates
        .iter()
        .filter_map(|&(at, held)| held.map(|h| (at, h)))
        .filter(|(_, h)| ids.starts_with(&h.ids))
        .max_by_key(|(_, h)| h.ids.len())
        .map(|(at, _)| at);
    continued
        .or_else(|| {
            candidates
                .iter()
                .find(|(_, h)| h.is_none())
                .map(|&(at, _)| at)
        })
        .or_else(|| {
            (candidates.iter())
                .min_by_key(|(_, h)| h.map_or(0, |h| h.used))
                .map(|&(at, _)| at)
        })
}

/// The scratch to give up for a copy of scratch `at` (None: the active one), last used at step
/// `used`: an empty one, else the least recently used, when used before it; None inside for the
/// active one.
fn spare_scratch(scratches: &Scratches, at: Option<usize>, used: u64) -> Option<Option<usize>> {
    std::iter::once((None, scratches.active.as_ref()))
        .chain((scratches.kept.iter().enumerate()).map(|(i, held)| (Some(i), held.as_ref())))
        .filter(|&(other, _)| other != at)
        .min_by_key(|(_, h)| h.map_or(0, |h| h.used + 1))
        .filter(|(_, h)| h.is_none_or(|h| h.used < used))
        .map(|(other, _)| other)
}

/// The kept scratch a fresh prompt goes into, trading places with the active one: an empty one,
/// else the least recently used, when the active one holds a prompt used since.
fn oldest_kept(scratches: &Scratches) -> Option<usize> {
    let active = scratches.active.as_ref()?;
    let (at, oldest) = (scratches.kept.iter().enumerate())
        .min_by_key(|(_, h)| h.as_ref().map_or(0, |h| h.used + 1))?;
    oldest
        .as_ref()
        .is_none_or(|h| h.used < active.used)
        .then_some(at)
}

/// A finished reply's row and the ids of the positions it holds: the prompt, then each token
/// the device has fed back (written at the prompt's length plus its index, below the row's
/// position).
fn parked_reply(live: &Live) -> Option<(usize, Vec<u32>)> {
    let Phase::Decoding { row, position, .. } = live.phase else {
        return None;
    };
    let fed = position.saturating_sub(live.prompt.len());
    let tokens = &live.core.token_ids[..live.core.token_ids.len().min(fed)];
    Some((row, [live.prompt.as_slice(), tokens].concat()))
}

fn finished(mut live: Live, now_ns: u64) -> Finished {
    live.core.set_total(now_ns.saturating_sub(live.admitted_ns));
    Finished {
        stats: live.core.stats,
        token_ids: live.core.token_ids,
        queue_ns: live.admitted_ns.saturating_sub(live.submitted_ns),
        prompt_cached: live.cached,
    }
}
