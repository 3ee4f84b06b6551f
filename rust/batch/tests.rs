//! The scheduler driven without a device: plans are checked, and tokens are made up per row.

use std::collections::HashSet;

use super::plan::*;
use super::*;
use crate::tokenizer::{byte_level_encode, GgufVocab};

const EOS: u32 = 0;
const SIZES: [usize; 5] = [16, 32, 64, 128, 256];

/// End of text, then one token per byte (token 1 + b is byte b).
fn tokenizer() -> Arc<Tokenizer> {
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend((0..=255u8).map(|b| byte_level_encode(&[b])));
    let mut types = vec![3];
    types.extend(std::iter::repeat_n(1, 256));
    Arc::new(
        Tokenizer::from_gguf(GgufVocab {
            model: "gpt2",
            pre: "gpt2",
            tokens: &tokens,
            merges: &[],
            token_types: &types,
            bos_id: None,
            eos_id: Some(EOS as i64),
            add_bos: false,
        })
        .unwrap(),
    )
}

fn letter(c: char) -> i64 {
    1 + c as i64
}

/// Programs that are all ready except those listed.
#[derive(Default)]
struct Fake {
    missing: HashSet<Program>,
    asked: Vec<(Program, bool)>,
    /// Programs `compiled` was asked about (which starts no compile).
    looked: Vec<Program>,
}

impl Programs for Fake {
    fn ready(&mut self, program: Program, wait: bool) -> bool {
        self.asked.push((program, wait));
        wait || !self.missing.contains(&program)
    }

    fn compiled(&mut self, program: Program) -> bool {
        self.looked.push(program);
        !self.missing.contains(&program)
    }
}

fn batch(slots: usize) -> Batch {
    Batch::new(
        tokenizer(),
        slots,
        1,
        SIZES.to_vec(),
        ChunkPolicy::new(150_000_000, 256),
    )
}

fn request(id: u64, prompt_len: usize, budget: usize) -> Request {
    Request {
        id,
        prompt: (0..prompt_len as u32).map(|i| 1 + i % 200).collect(),
        budget,
        stop_ids: vec![EOS],
        stop_strings: vec![],
        sampling: Sampling {
            temperature: 0.5,
            ..Sampling::FREE
        },
        grammar: None,
    }
}

/// The batch with the driver's order: plan and commit a step, then read the one before it
/// (every row of which output `token`).
struct Driver {
    b: Batch,
    p: Fake,
    pending: Option<InFlight>,
}

impl Driver {
    fn new(slots: usize) -> Self {
        Driver {
            b: batch(slots),
            p: Fake::default(),
            pending: None,
        }
    }

    fn step(&mut self, token: i64) -> (StepPlan, Vec<Event>) {
        let plan = self.b.plan(&mut self.p, 0);
        let flight = self.b.commit(&plan);
        let events = match self.pending.replace(flight) {
            Some(before) => self
                .b
                .route(&before, &vec![vec![token]; before.batch.max(1)], 1_000),
            None => Vec::new(),
        };
        (plan, events)
    }
}

#[test]
fn chunks_fit_their_bucket_and_budget() {
    assert_eq!(
        next_cut(40, 0, 256, &SIZES),
        Some(Cut {
            size: 64,
            real: 40,
            last: true
        })
    );
    assert_eq!(
        next_cut(40, 0, 32, &SIZES),
        Some(Cut {
            size: 32,
            real: 32,
            last: false
        })
    );
    assert_eq!(
        next_cut(40, 32, 32, &SIZES),
        Some(Cut {
            size: 16,
            real: 8,
            last: true
        })
    );
    assert_eq!(
        next_cut(5, 0, 256, &SIZES),
        Some(Cut {
            size: 16,
            real: 5,
            last: true
        })
    );
    assert_eq!(next_cut(40, 0, 8, &SIZES), None);
    assert_eq!(next_cut(40, 40, 256, &SIZES), None);
    // After 16 reused positions, the largest chunk that fits the bucket of 128, then the rest:
    // not 16, 16, 32 and 64 as when each size had to divide its start.
    assert_eq!(
        next_cut(100, 16, 256, &SIZES),
        Some(Cut {
            size: 64,
            real: 64,
            last: false
        })
    );
    assert_eq!(
        next_cut(100, 80, 256, &SIZES),
        Some(Cut {
            size: 32,
            real: 20,
            last: true
        })
    );
    // Every cut of any prompt, from any reused start, stays inside the prompt's bucket and keeps
    // its next start a multiple of the smallest chunk.
    for len in 1..600 {
        for budget in [16, 48, 64, 256] {
            for reused in (0..len).step_by(16) {
                let mut done = reused;
                while let Some(cut) = next_cut(len, done, budget, &SIZES) {
                    assert!(
                        done + cut.size <= prompt_bucket(len),
                        "{len} {budget} {done} {cut:?}"
                    );
                    done += cut.real;
                    assert_eq!(cut.last, done == len);
                    assert!(cut.last || done % 16 == 0);
                }
                assert_eq!(done, len);
            }
        }
    }
}

#[test]
fn buckets_are_powers_of_two_with_floors() {
    assert_eq!(
        (batch_bucket(0), batch_bucket(3), batch_bucket(8)),
        (1, 4, 8)
    );
    assert_eq!(
        (cache_bucket(10), cache_bucket(257), cache_bucket(4096)),
        (256, 512, 4096)
    );
    assert_eq!((prompt_bucket(3), prompt_bucket(17)), (16, 32));
}

#[test]
fn the_chunk_budget_follows_measured_steps() {
    let mut policy = ChunkPolicy::new(150_000_000, 512);
    assert_eq!(policy.budget(4, false, &SIZES, 512), 512);
    assert_eq!(policy.budget(4, true, &SIZES, 512), 16); // nothing measured: the smallest chunk
    policy.observe(4, true, 0, 0, 30_000_000);
    policy.observe(4, true, 16, 512, 30_000_000 + 16 * 1_000_000);
    // 30 ms decode + up to 1 ms per prompt position: 64 is expected within 150 ms, 128 is not.
    assert_eq!(policy.budget(4, true, &SIZES, 512), 64);
    // Measured, 64 positions cost less than that (fixed costs are shared): 128 is tried.
    policy.observe(4, true, 64, 512, 30_000_000 + 40_000_000);
    assert_eq!(policy.budget(4, true, &SIZES, 512), 128);
    // Before any decode-only step, a larger chunk is expected to cost its whole step scaled up.
    let mut fresh = ChunkPolicy::new(150_000_000, 512);
    fresh.observe(2, true, 32, 32, 90_000_000);
    assert_eq!(fresh.budget(2, true, &SIZES, 32), 32);
    // Prefill-only steps teach nothing of steps beside decoding rows.
    fresh.observe(2, false, 256, 32, 1_000_000);
    assert_eq!(fresh.budget(2, true, &SIZES, 32), 32);
}

#[test]
fn a_prompt_bucket_not_measured_yet_is_not_budgeted_from_a_cheaper_one() {
    let mut policy = ChunkPolicy::new(150_000_000, 512);
    policy.observe(4, true, 0, 0, 30_000_000);
    // Short prompts: 0.25 ms a position, so 256 positions would fit in the 120 ms left.
    policy.observe(4, true, 32, 32, 30_000_000 + 8_000_000);
    assert_eq!(policy.budget(4, true, &SIZES, 32), 256);
    // A long prompt's positions attend over a bigger scratch cache: start from the smallest chunk.
    assert_eq!(policy.budget(4, true, &SIZES, 2048), 16);
    policy.observe(4, true, 16, 2048, 30_000_000 + 16 * 2_000_000);
    assert_eq!(policy.budget(4, true, &SIZES, 2048), 32);
    // A smaller bucket not measured yet borrows the nearest larger bucket's steps.
    assert_eq!(policy.budget(4, true, &SIZES, 512), 32);
    // A bucket's own measured steps count when cheaper than the scaled guess.
    assert_eq!(policy.budget(4, true, &SIZES, 16), 256);
}

#[test]
fn a_chunk_size_that_grew_too_slow_gives_way_and_is_tried_again_later() {
    let mut policy = ChunkPolicy::new(150_000_000, 512);
    policy.observe(8, true, 0, 0, 30_000_000);
    policy.observe(8, true, 32, 2048, 70_000_000);
    policy.observe(8, true, 64, 2048, 100_000_000);
    assert_eq!(policy.budget(8, true, &SIZES, 2048), 64);
    // Later chunks of the prompt attend over more keys: the 64s creep past the target.
    for ns in [130, 145, 160, 175, 190] {
        policy.observe(8, true, 64, 2048, ns * 1_000_000);
    }
    assert_eq!(policy.budget(8, true, &SIZES, 2048), 32);
    for _ in 0..20 {
        policy.observe(8, true, 32, 2048, 100_000_000);
    }
    assert_eq!(policy.budget(8, true, &SIZES, 2048), 32);
    // A new prompt starts cheap; once the slow 64s are stale, 64 is tried again.
    for _ in 0..40 {
        policy.observe(8, true, 32, 2048, 65_000_000);
    }
    assert_eq!(policy.budget(8, true, &SIZES, 2048), 64);
}

#[test]
fn a_slow_decode_step_beside_a_compile_does_not_make_chunks_look_free() {
    let mut policy = ChunkPolicy::new(120_000_000, 256);
    for _ in 0..10 {
        policy.observe(4, true, 0, 0, 12_000_000);
    }
    // A long prompt arrives: its programs compile beside the rows, and one step takes 245 ms.
    policy.observe(4, true, 0, 0, 245_000_000);
    for ns in [34, 28, 44] {
        policy.observe(4, true, 0, 0, ns * 1_000_000);
    }
    // A 16-position chunk took 41 ms over a 12 ms decode: 32 fits the 120 ms, 64 does not.
    policy.observe(4, true, 16, 2048, 53_000_000);
    assert_eq!(policy.budget(4, true, &SIZES, 2048), 32);
    // Once the slow steps have left the window, the estimate is what decode costs now.
    for _ in 0..16 {
        policy.observe(4, true, 0, 0, 30_000_000);
    }
    policy.observe(4, true, 16, 2048, 60_000_000);
    assert_eq!(policy.budget(4, true, &SIZES, 2048), 32);
}

#[test]
fn a_chunks_share_carries_to_other_batch_sizes_and_outlives_its_freshness_as_a_first_guess() {
    let mut policy = ChunkPolicy::new(150_000_000, 512);
    policy.observe(4, true, 0, 0, 20_000_000);
    policy.observe(8, true, 0, 0, 60_000_000);
    policy.observe(8, true, 64, 64, 110_000_000); // 50 ms over the 8-row decode
    assert_eq!(policy.budget(8, true, &SIZES, 64), 64); // 128 would take 60 + 100 ms
    assert_eq!(policy.budget(4, true, &SIZES, 64), 128); // 20 + 100 ms
    for _ in 0..100 {
        policy.observe(4, true, 0, 0, 20_000_000);
    }
    assert_eq!(policy.budget(4, true, &SIZES, 64), 128);
}

#[test]
fn a_lone_request_gets_a_fresh_batch_one_row_and_its_text() {
    let mut b = batch(4);
    let mut p = Fake::default();
    b.submit(request(7, 40, 3), 0);
    let plan = b.plan(&mut p, 0);
    assert_eq!(
        plan.reset,
        Some(Shape {
            batch: 1,
            cache_len: 256
        })
    );
    assert_eq!(plan.rows, None);
    assert_eq!(plan.chunks.len(), 1);
    let chunk = &plan.chunks[0];
    assert_eq!(
        (chunk.start, chunk.bucket, chunk.size, chunk.ids.len()),
        (0, 64, 64, 40)
    );
    assert_eq!(chunk.insert.map(|(row, _)| row), Some(0));
    // Nothing streams yet, so compiles may be waited for.
    assert!(p.asked.iter().all(|&(_, wait)| wait));
    let flight = b.commit(&plan);
    assert_eq!(flight.reads, vec![(0, 7)]);

    // The next step decodes row 0 at the prompt's end, counter 1, before the first token is read.
    let plan = b.plan(&mut p, 0);
    let rows = plan.rows.clone().unwrap();
    assert_eq!(
        (rows.positions[0], rows.counters[0], rows.active[0]),
        (40, 1, true)
    );
    let next = b.commit(&plan);
    let events = b.route(&flight, &[vec![letter('h')]], 5);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].text, "h");
    let events = b.route(&next, &[vec![letter('i')]], 6);
    assert_eq!(events[0].text, "i");
    // Two tokens read and one in flight make the budget of 3: no further decode is dispatched.
    let plan = b.plan(&mut p, 0);
    assert_eq!(plan.rows, None);
    let last = b.commit(&plan);
    assert!(last.reads.is_empty());
}

#[test]
fn requests_join_a_running_batch_which_grows_and_then_compacts() {
    let mut d = Driver::new(4);
    d.b.submit(request(1, 20, 50), 0);
    d.step(letter('a'));
    d.b.submit(request(2, 10, 2), 0); // one chunk within the cautious first budget
    let (plan, _) = d.step(letter('b'));
    // The batch grows first, in a step of its own: row 0 keeps its place in a batch of 2.
    assert_eq!(
        plan.resize,
        Some((
            vec![0, 0],
            Shape {
                batch: 2,
                cache_len: 256
            }
        ))
    );
    assert!(plan.chunks.is_empty());
    assert_eq!(plan.rows.as_ref().unwrap().active, vec![true, false]);
    // Then the new request's prompt takes row 1.
    let (plan, _) = d.step(letter('b'));
    assert_eq!(plan.resize, None);
    assert_eq!(plan.chunks[0].insert.map(|(row, _)| row), Some(1));
    assert_eq!(plan.rows.as_ref().unwrap().active, vec![true, false]);
    // Request 2 decodes its second token while its first is read: its budget of 2 is then spent.
    let (plan, _) = d.step(letter('c'));
    assert_eq!(plan.rows.as_ref().unwrap().active, vec![true, true]);
    let (plan, events) = d.step(letter('d'));
    assert_eq!(plan.rows.as_ref().unwrap().active, vec![true, false]);
    assert!(events
        .iter()
        .any(|e| e.id == 2 && matches!(e.end, Some(End::Done(_)))));
    assert_eq!(d.b.in_slots(), 1);
    // Request 1 is alone again: its row moves to a batch of one.
    let (plan, _) = d.step(letter('e'));
    assert_eq!(
        plan.resize,
        Some((
            vec![0],
            Shape {
                batch: 1,
                cache_len: 256
            }
        ))
    );
    assert_eq!(plan.rows.as_ref().unwrap().active, vec![true]);
}

#[test]
fn past_the_slots_requests_wait_in_order() {
    let mut d = Driver::new(2);
    for id in 1..=3 {
        d.b.submit(request(id, 20, 1), 0);
    }
    let (plan, _) = d.step(letter('x'));
    let joined: Vec<u64> = plan.chunks.iter().map(|c| c.id).collect();
    assert_eq!(joined, vec![1, 2]);
    assert_eq!(
        plan.reset,
        Some(Shape {
            batch: 2,
            cache_len: 256
        })
    );
    let (plan, events) = d.step(letter('y'));
    assert!(plan.chunks.is_empty()); // both slots are held until their tokens are read
    assert_eq!(events.len(), 2); // both ended at their one-token budget
    assert_eq!((d.b.in_slots(), d.b.live()), (0, 1));
    let (plan, _) = d.step(letter('z'));
    assert_eq!(plan.chunks[0].id, 3);
}

#[test]
fn a_cancelled_request_frees_its_row_and_its_tokens_in_flight_are_dropped() {
    let mut b = batch(4);
    let mut p = Fake::default();
    b.submit(request(1, 20, 50), 0);
    b.submit(request(2, 20, 50), 0);
    let plan = b.plan(&mut p, 0);
    let flight = b.commit(&plan);
    assert_eq!(b.cancel(2), Some(0));
    assert_eq!(b.cancel(2), None);
    let events = b.route(&flight, &[vec![letter('a')], vec![letter('b')]], 1);
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1]);
    let plan = b.plan(&mut p, 0);
    assert_eq!(plan.rows.as_ref().unwrap().active, vec![true]);
}

#[test]
fn a_shape_still_compiling_keeps_the_batch_as_it_is() {
    let mut d = Driver::new(4);
    d.b.submit(request(1, 20, 50), 0);
    d.step(letter('a'));
    let grown = Shape {
        batch: 2,
        cache_len: 256,
    };
    d.p.missing.insert(Program::Decode(grown));
    d.b.submit(request(2, 10, 50), 0);
    let (plan, _) = d.step(letter('a'));
    // Row 0 decodes on; the new prompt's last (only) chunk waits, with its slot held.
    assert_eq!(plan.resize, None);
    assert!(plan.chunks.is_empty());
    assert_eq!(plan.rows.as_ref().unwrap().active, vec![true]);
    assert!(d.p.asked.contains(&(Program::Decode(grown), false)));
    d.p.missing.clear();
    let (plan, _) = d.step(letter('a'));
    assert_eq!(plan.resize.map(|(_, shape)| shape), Some(grown));
    let (plan, _) = d.step(letter('a'));
    assert_eq!(plan.chunks[0].insert.map(|(row, _)| row), Some(1));
}

#[test]
fn a_rows_cache_grows_as_it_fills_it_in_a_step_of_its_own() {
    let mut d = Driver::new(4);
    // A budget that may fill 4,000 positions starts with the cache its prompt needs.
    d.b.submit(request(1, 30, 3970), 0);
    let (plan, _) = d.step(letter('a'));
    assert_eq!(plan.reset.map(|s| s.cache_len), Some(256));
    let mut grown = Vec::new();
    for _ in 0..1200 {
        let position = match d.b.live[0].phase {
            Phase::Decoding { position, .. } => position,
            _ => unreachable!("the prompt joined in the first step"),
        };
        let (plan, _) = d.step(letter('a'));
        if let Some((source, shape)) = plan.resize {
            assert_eq!(source, vec![0]);
            assert!(plan.chunks.is_empty());
            grown.push((position, shape.cache_len));
        }
        // The row decodes in every step, growing ones included.
        assert!(plan.rows.as_ref().unwrap().active[0]);
        assert!((position as i32) < plan.shape.unwrap().cache_len as i32);
    }
    // It grows to twice the length once 64 positions (or a sixteenth) from the end.
    assert_eq!(grown, vec![(193, 512), (449, 1024), (961, 2048)]);
}

#[test]
fn rows_at_the_end_of_their_cache_wait_for_the_longer_one_only_then() {
    let mut d = Driver::new(4);
    d.b.submit(request(1, 30, 1000), 0);
    d.b.submit(request(2, 30, 1000), 0);
    let (plan, _) = d.step(letter('a'));
    let short = plan.reset.unwrap();
    assert_eq!(
        short,
        Shape {
            batch: 2,
            cache_len: 256
        }
    );
    let long = Shape {
        batch: 2,
        cache_len: 512,
    };
    d.p.missing.insert(Program::Resize(short, long));
    // While the longer cache compiles, the rows decode on into the end of theirs.
    for _ in 0..226 {
        let (plan, _) = d.step(letter('a'));
        assert_eq!(plan.resize, None);
        let rows = plan.rows.unwrap();
        assert!(rows.positions.iter().all(|&p| p < 256));
        assert_eq!(rows.active, vec![true, true]);
    }
    assert!(d.p.asked.contains(&(Program::Resize(short, long), false)));
    // Their next tokens would not fit: no row decodes until the longer cache is ready.
    for _ in 0..3 {
        let (plan, _) = d.step(letter('a'));
        assert_eq!((plan.resize, plan.rows), (None, None));
    }
    d.p.missing.clear();
    let (plan, _) = d.step(letter('a'));
    assert_eq!(plan.resize.map(|(_, shape)| shape), Some(long));
    let rows = plan.rows.unwrap();
    assert_eq!(
        (rows.positions, rows.active),
        (vec![256, 256], vec![true, true])
    );
}

#[test]
fn a_running_row_grows_its_cache_while_a_joining_prompts_batch_compiles() {
    let mut d = Driver::new(4);
    d.b.submit(request(1, 177, 96), 0);
    d.step(letter('a'));
    let two = Shape {
        batch: 2,
        cache_len: 512,
    };
    d.p.missing.insert(Program::Decode(two));
    d.p.missing.insert(Program::Decode(Shape {
        batch: 2,
        cache_len: 256,
    }));
    d.b.submit(request(2, 40, 120), 0);
    let mut grown = None;
    for step in 0..100 {
        let (plan, _) = d.step(letter('a'));
        if let Some((_, shape)) = plan.resize {
            grown = Some((step, shape));
            break;
        }
    }
    // At position 193 the row's cache doubles alone; the prompt waits for its batch.
    assert_eq!(
        grown,
        Some((
            16,
            Shape {
                batch: 1,
                cache_len: 512
            }
        ))
    );
}

#[test]
fn a_step_drawing_more_tokens_than_the_margin_grows_the_cache_for_them() {
    let mut b = Batch::new(
        tokenizer(),
        4,
        200,
        SIZES.to_vec(),
        ChunkPolicy::new(150_000_000, 256),
    );
    let mut p = Fake::default();
    b.submit(request(1, 130, 1000), 0);
    let plan = b.plan(&mut p, 0);
    assert_eq!(plan.reset.map(|s| s.cache_len), Some(256));
    b.commit(&plan);
    // 200 tokens from position 130 need 330 positions: the cache doubles before they are drawn.
    let plan = b.plan(&mut p, 0);
    assert_eq!(plan.resize.map(|(_, s)| s.cache_len), Some(512));
    assert_eq!(plan.rows.unwrap().active, vec![true]);
}

#[test]
fn a_long_prompt_is_prefilled_within_the_budget_while_others_decode() {
    let mut d = Driver::new(4);
    d.b.submit(request(1, 20, 500), 0);
    d.step(letter('a'));
    d.b.submit(request(2, 2000, 10), 0);
    // The batch grows for the prompt first (a row, and a cache for 2,010 positions), alone.
    let (plan, _) = d.step(letter('a'));
    assert_eq!(
        plan.resize.map(|(_, shape)| shape),
        Some(Shape {
            batch: 2,
            cache_len: 2048
        })
    );
    assert!(plan.chunks.is_empty());
    // Decode steps of 30 ms, and 32-position chunks of this bucket adding 70 ms: 32 fit.
    d.b.policy.observe(2, true, 0, 0, 30_000_000);
    d.b.policy.observe(2, true, 32, 2048, 100_000_000);
    let mut prefilled = Vec::new();
    loop {
        let (plan, _) = d.step(letter('a'));
        assert!(plan.rows.as_ref().unwrap().active[0]);
        assert_eq!(plan.resize, None);
        prefilled.push(plan.chunks.iter().map(|c| c.size).sum::<usize>());
        if plan.chunks.iter().any(|c| c.insert.is_some()) {
            break;
        }
    }
    assert!(prefilled.iter().all(|&p| p <= 32), "{prefilled:?}");
    // The last chunk (16 positions) is read with its step's tokens, so it waits a step for the
    // chunk before it, which runs ahead of that step's decode, to be out of the way.
    let steps = 2000usize.div_ceil(32);
    assert_eq!(prefilled.len(), steps + 1);
    assert_eq!(prefilled[steps - 1], 0);
    assert_eq!(prefilled[steps], 16);
}

#[test]
fn a_long_prompt_asks_ahead_for_its_chunk_sizes_and_its_fresh_batch_without_waiting() {
    let mut d = Driver::new(4);
    d.b.submit(request(1, 20, 500), 0);
    d.step(letter('a'));
    d.step(letter('a'));
    d.p.asked.clear();
    d.b.submit(request(2, 2000, 10), 0);
    d.step(letter('a'));
    let alone = Shape {
        batch: 1,
        cache_len: 2048,
    };
    let mut wanted: Vec<Program> = SIZES.iter().map(|&s| Program::Prefill(2048, s)).collect();
    wanted.extend([Program::Decode(alone), Program::Insert(alone, 2048)]);
    for program in wanted {
        assert!(
            d.p.asked.contains(&(program, false)),
            "{program:?} not asked for: {:?}",
            d.p.asked
        );
    }
    // A prompt read in one chunk asks for nothing past what its step needs.
    let mut d = Driver::new(4);
    d.b.submit(request(1, 200, 10), 0);
    d.step(letter('a'));
    assert!(
        !d.p.asked
            .iter()
            .any(|(p, _)| matches!(p, Program::Prefill(256, 16))),
        "{:?}",
        d.p.asked
    );
}

#[test]
fn a_short_prompt_is_read_in_one_chunk_when_even_the_smallest_is_over_the_target() {
    let mut d = Driver::new(4);
    d.b.submit(request(1, 20, 500), 0);
    d.step(letter('a'));
    // Decode steps of 100 ms, and 16-position chunks adding 100 ms: past the 150 ms target.
    d.b.policy.observe(2, true, 0, 0, 100_000_000);
    d.b.policy.observe(2, true, 16, 64, 200_000_000);
    d.b.submit(request(2, 40, 10), 0);
    d.step(letter('a')); // the batch grows first
    let (plan, _) = d.step(letter('a'));
    assert_eq!(plan.chunks.len(), 1);
    assert_eq!((plan.chunks[0].size, plan.chunks[0].ids.len()), (64, 40));
    assert!(plan.chunks[0].insert.is_some());
    // A long prompt still goes a smallest chunk at a time, its last ones too.
    d.b.policy.observe(2, true, 16, 1024, 200_000_000);
    d.b.submit(request(3, 1000, 10), 0);
    let mut sizes = Vec::new();
    let mut inserted = false;
    for _ in 0..200 {
        let (plan, _) = d.step(letter('a'));
        sizes.extend(plan.chunks.iter().map(|c| c.size));
        inserted |= plan.chunks.iter().any(|c| c.insert.is_some());
        if inserted {
            break;
        }
    }
    assert!(inserted);
    assert_eq!(sizes.iter().sum::<usize>(), 1008);
    assert!(sizes.iter().all(|&s| s == 16), "{sizes:?}");
}

#[test]
fn a_finished_request_ends_with_stats_and_its_queue_time() {
    let mut b = batch(1);
    let mut p = Fake::default();
    b.submit(request(1, 10, 5), 100);
    b.submit(request(2, 10, 5), 200);
    let mut done = Vec::new();
    for _ in 0..20 {
        let plan = b.plan(&mut p, 5_000);
        let flight = b.commit(&plan);
        for event in b.route(&flight, &vec![vec![EOS as i64]; flight.batch.max(1)], 9_000) {
            if let Some(End::Done(finished)) = event.end {
                done.push((event.id, finished));
            }
        }
    }
    assert_eq!(done.len(), 2);
    let (id, first) = &done[0];
    assert_eq!(*id, 1);
    assert_eq!(first.stats.stop_reason, Some(StopReason::Stop));
    assert_eq!(first.stats.gen_tokens, 0);
    assert_eq!(first.stats.total_ns, 4_000);
    assert_eq!(first.queue_ns, 4_900);
}

/// A request for `prompt`, drawing up to `budget` tokens.
fn asking(id: u64, prompt: Vec<u32>, budget: usize) -> Request {
    Request {
        prompt,
        ..request(id, 0, budget)
    }
}

/// Steps until no request is left; the finished ones' (id, prompt positions reused).
fn run_out(d: &mut Driver) -> Vec<(u64, usize)> {
    let mut done = Vec::new();
    for _ in 0..64 {
        for event in d.step(letter('a')).1 {
            if let Some(End::Done(finished)) = event.end {
                done.push((event.id, finished.prompt_cached));
            }
        }
        if d.b.live() == 0 && d.pending.is_none() {
            break;
        }
        if d.b.live() == 0 {
            d.pending = None;
        }
    }
    done
}

/// The first chunk the next steps plan for request `id`.
fn first_chunk(d: &mut Driver, id: u64) -> Chunk {
    (0..8)
        .find_map(|_| {
            d.step(letter('a'))
                .0
                .chunks
                .into_iter()
                .find(|c| c.id == id)
        })
        .expect("a chunk of the request")
}

#[test]
fn a_prompt_starts_after_what_it_shares_with_the_last_prompt_in_the_scratch() {
    let mut d = Driver::new(2);
    d.b.reuse_prompts = true;
    // Replies are not copied out of their rows here: the scratch keeps the last prompt.
    d.p.missing.insert(Program::Extract(Shape {
        batch: 1,
        cache_len: 256,
    }));
    let a: Vec<u32> = (1..=40).collect();
    d.b.submit(asking(1, a.clone(), 3), 0);
    assert_eq!(run_out(&mut d), vec![(1, 0)]);

    // Shares 37 positions: the first 32 (whole smallest chunks) are taken as they are.
    let mut b = a[..37].to_vec();
    b.extend(100..113);
    d.b.submit(asking(2, b.clone(), 3), 0);
    let chunk = first_chunk(&mut d, 2);
    assert_eq!((chunk.start, chunk.rebucket, chunk.bucket), (32, None, 64));
    assert_eq!(chunk.ids, b[32..].to_vec());
    assert_eq!(run_out(&mut d), vec![(2, 32)]);

    // The same prompt again still computes its last token (its logits draw the first one).
    d.b.submit(asking(3, b.clone(), 3), 0);
    assert_eq!(first_chunk(&mut d, 3).start, 48);
    run_out(&mut d);

    // A prompt of another bucket moves the scratch over first, waiting for that program
    // while nothing decodes.
    let mut c = b[..40].to_vec();
    c.extend(150..250);
    d.p.asked.clear();
    d.b.submit(asking(4, c.clone(), 3), 0);
    let chunk = first_chunk(&mut d, 4);
    assert_eq!(
        (chunk.start, chunk.rebucket, chunk.bucket),
        (32, Some(64), 256)
    );
    assert!(d.p.asked.contains(&(Program::Rebucket(64, 256), true)));
    assert_eq!(run_out(&mut d), vec![(4, 32)]);

    // Sharing less than a smallest chunk reuses nothing.
    d.b.submit(
        asking(5, c[..15].iter().chain(&[7; 30]).copied().collect(), 3),
        0,
    );
    assert_eq!(first_chunk(&mut d, 5).start, 0);
    assert_eq!(run_out(&mut d), vec![(5, 0)]);
}

#[test]
fn beside_decoding_rows_a_prompt_does_not_wait_for_the_scratch_to_move() {
    let mut d = Driver::new(2);
    d.b.reuse_prompts = true;
    let a: Vec<u32> = (1..=40).collect();
    d.b.submit(asking(1, a.clone(), 3), 0);
    run_out(&mut d);
    d.b.submit(asking(2, a.iter().chain(&[9]).copied().collect(), 50), 0);
    d.step(letter('a'));
    d.step(letter('a'));
    let mut long = a.clone();
    long.extend(100..200);
    d.p.missing.insert(Program::Rebucket(64, 256));
    d.b.submit(asking(3, long, 3), 0);
    let chunk = first_chunk(&mut d, 3);
    assert_eq!((chunk.start, chunk.rebucket), (0, None));
    assert!(d.p.looked.contains(&Program::Rebucket(64, 256)));
    assert!(!d
        .p
        .asked
        .iter()
        .any(|&(p, _)| p == Program::Rebucket(64, 256)));
}

#[test]
fn nothing_is_reused_when_off_after_a_failure_or_once_the_scratch_is_dropped() {
    let a: Vec<u32> = (1..=40).collect();
    let start_after = |setup: &dyn Fn(&mut Driver)| {
        let mut d = Driver::new(1);
        d.b.reuse_prompts = true;
        d.b.submit(asking(1, a.clone(), 3), 0);
        run_out(&mut d);
        setup(&mut d);
        d.b.submit(asking(2, a.clone(), 3), 0);
        first_chunk(&mut d, 2).start
    };
    assert_eq!(start_after(&|_| {}), 32);
    assert_eq!(start_after(&|d| d.b.reuse_prompts = false), 0);
    assert_eq!(start_after(&|d| d.b.forget_scratch()), 0);
    assert_eq!(
        start_after(&|d| {
            d.b.fail_all("gone");
        }),
        0
    );
}

#[test]
fn a_finished_reply_is_copied_out_of_its_row_for_the_next_turn_to_start_after() {
    let mut d = Driver::new(2);
    d.b.reuse_prompts = true;
    let a: Vec<u32> = (1..=40).collect();
    d.b.submit(asking(1, a.clone(), 20), 0);
    let mut copied = None;
    for _ in 0..64 {
        let (plan, _) = d.step(letter('a'));
        if let Some(&copy) = plan.extract.first() {
            copied = Some(copy);
            break;
        }
    }
    // The reply's row, copied out in the step after its end was read (the batch still there),
    // into the scratch that held its prompt.
    assert_eq!(copied, Some((0, None)));
    assert!(d.p.looked.contains(&Program::Extract(Shape {
        batch: 1,
        cache_len: 256
    })));
    // Every token it drew was fed back before its end was read: the next turn shares them all.
    let mut next = a.clone();
    next.extend(std::iter::repeat_n(letter('a') as u32, 20));
    next.extend(150..170);
    d.b.submit(asking(2, next.clone(), 3), 0);
    let chunk = first_chunk(&mut d, 2);
    assert_eq!(
        (chunk.start, chunk.rebucket, chunk.bucket),
        (48, Some(256), 128)
    );
    assert_eq!(run_out(&mut d), vec![(2, 48)]);
}

#[test]
fn a_reply_is_not_copied_out_over_a_prompt_part_way_through_the_scratch() {
    for kept in [0, 1] {
        let mut d = Driver::new(2);
        d.b.reuse_prompts = true;
        d.b.keep_scratches(kept);
        d.b.submit(asking(1, (1..=20).collect(), 2), 0);
        d.step(letter('a'));
        d.step(letter('a'));
        // A long prompt arrives while the first reply runs; a budget of 16 positions a step
        // keeps it part-way through the scratch when that reply ends.
        d.b.policy = ChunkPolicy::new(150_000_000, 16);
        d.b.submit(asking(2, (100..400).collect(), 2), 0);
        let mut copies = Vec::new();
        for _ in 0..12 {
            copies.extend(d.step(letter('a')).0.extract);
        }
        // Without a kept scratch the reply is dropped; with one it goes there.
        let expected = if kept == 0 {
            vec![]
        } else {
            vec![(0, Some(0))]
        };
        assert_eq!(copies, expected, "{kept} kept");
    }
}

/// `prompt`, a 20-token reply of 'a's, and a new question: a conversation's next turn.
fn next_turn(prompt: &[u32]) -> Vec<u32> {
    let reply = std::iter::repeat_n(letter('a') as u32, 20);
    prompt
        .iter()
        .copied()
        .chain(reply)
        .chain(200..220)
        .collect()
}

#[test]
fn each_conversation_continues_from_the_scratch_its_last_reply_went_into() {
    let a: Vec<u32> = (1..=40).collect();
    let b: Vec<u32> = (101..=140).collect();
    for kept in [0, 2] {
        let mut d = Driver::new(2);
        d.b.reuse_prompts = true;
        d.b.keep_scratches(kept);
        d.b.submit(asking(1, a.clone(), 20), 0);
        run_out(&mut d);
        d.b.submit(asking(2, b.clone(), 20), 0);
        run_out(&mut d);
        // Each next turn shares its prompt and reply (60 positions): 48 are taken as they are,
        // from the kept scratch its reply went into, when there is one.
        d.b.submit(asking(3, next_turn(&a), 3), 0);
        let chunk = first_chunk(&mut d, 3);
        let (start, swapped) = (chunk.start, chunk.swap.is_some());
        assert_eq!(run_out(&mut d), vec![(3, start)]);
        d.b.submit(asking(4, next_turn(&b), 3), 0);
        let chunk = first_chunk(&mut d, 4);
        let expected = if kept == 0 { (0, false) } else { (48, true) };
        assert_eq!((start, swapped), expected, "{kept} kept");
        assert_eq!((chunk.start, chunk.swap.is_some()), expected, "{kept} kept");
        assert_eq!(run_out(&mut d), vec![(4, chunk.start)]);
    }
}

#[test]
fn the_least_recently_used_conversation_makes_way() {
    let mut d = Driver::new(2);
    d.b.reuse_prompts = true;
    d.b.keep_scratches(1);
    let prompts: Vec<Vec<u32>> = (0..3u32)
        .map(|c| (1 + 60 * c..41 + 60 * c).collect())
        .collect();
    for (id, prompt) in (1..).zip(&prompts) {
        d.b.submit(asking(id, prompt.clone(), 20), 0);
        run_out(&mut d);
    }
    // Two scratches for three conversations: the first one's went to the third.
    d.b.submit(asking(4, next_turn(&prompts[1]), 3), 0);
    assert_eq!(run_out(&mut d), vec![(4, 48)]);
    d.b.submit(asking(5, next_turn(&prompts[2]), 3), 0);
    assert_eq!(run_out(&mut d), vec![(5, 48)]);
    d.b.submit(asking(6, next_turn(&prompts[0]), 3), 0);
    assert_eq!(run_out(&mut d), vec![(6, 0)]);
}

#[test]
fn replies_ending_in_one_step_each_go_into_a_scratch_of_their_own() {
    let mut d = Driver::new(4);
    d.b.reuse_prompts = true;
    d.b.keep_scratches(4);
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|c| (1 + 60 * c..41 + 60 * c).collect())
        .collect();
    for (id, prompt) in (1..).zip(&prompts) {
        d.b.submit(asking(id, prompt.clone(), 20), 0);
    }
    run_out(&mut d);
    for (id, prompt) in (5..).zip(&prompts) {
        d.b.submit(asking(id, next_turn(prompt), 3), 0);
        assert_eq!(run_out(&mut d), vec![(id, 48)], "conversation {id}");
    }
}

#[test]
fn a_prompt_sharing_only_a_system_prompt_takes_a_copy_and_leaves_the_other_conversation() {
    let system: Vec<u32> = (1..=20).collect();
    let with = |question: std::ops::Range<u32>| -> Vec<u32> {
        system.iter().copied().chain(question).collect()
    };
    let (a, b) = (with(100..120), with(150..170));
    for kept in [0, 1] {
        let mut d = Driver::new(2);
        d.b.reuse_prompts = true;
        d.b.keep_scratches(kept);
        d.b.submit(asking(1, a.clone(), 20), 0);
        run_out(&mut d);
        // The system prompt's first 16 positions are reused either way; with a scratch to
        // spare, from a copy of the one holding the first conversation's reply.
        d.b.submit(asking(2, b.clone(), 3), 0);
        let chunk = first_chunk(&mut d, 2);
        let expected = if kept == 0 {
            (None, None)
        } else {
            (Some(0), Some(0))
        };
        assert_eq!(
            (chunk.start, chunk.swap, chunk.copy),
            (16, expected.0, expected.1)
        );
        assert_eq!(run_out(&mut d), vec![(2, 16)]);
        // The first conversation's next turn still finds its reply when one was kept.
        d.b.submit(asking(3, next_turn(&a), 3), 0);
        let reused = if kept == 0 { 16 } else { 48 };
        assert_eq!(run_out(&mut d), vec![(3, reused)], "{kept} kept");
    }
}

/// Plans, commits and reads one step at `now` (every row outputs `token`): the step's chunks'
/// request ids and the ids that ended.
fn step_at(b: &mut Batch, p: &mut Fake, now: u64, token: i64) -> (Vec<u64>, Vec<u64>, bool) {
    let plan = b.plan(p, now);
    let decoded = plan.rows.is_some();
    let chunks = plan.chunks.iter().map(|c| c.id).collect();
    let flight = b.commit(&plan);
    let ended = b
        .route(&flight, &vec![vec![token]; flight.batch.max(1)], now)
        .into_iter()
        .filter(|e| matches!(e.end, Some(End::Done(_))))
        .map(|e| e.id)
        .collect();
    (chunks, ended, decoded)
}

const MS: u64 = 1_000_000;

/// A batch of 4 slots that waits up to 50 ms for returning clients, whose requests 1 and 2 (one
/// token each) ended at 1 ms.
fn two_ended() -> (Batch, Fake) {
    let mut b = batch(4);
    b.gather_ns = 50 * MS;
    let mut p = Fake::default();
    b.submit(request(1, 20, 1), 0);
    b.submit(request(2, 20, 1), 0);
    let (chunks, ended, _) = step_at(&mut b, &mut p, MS, letter('a'));
    assert_eq!((chunks, ended), (vec![1, 2], vec![1, 2]));
    (b, p)
}

#[test]
fn prompts_arriving_as_replies_end_wait_for_the_other_clients_and_go_in_one_step() {
    let (mut b, mut p) = two_ended();
    b.submit(request(3, 20, 5), 2 * MS);
    let (chunks, _, _) = step_at(&mut b, &mut p, 3 * MS, letter('a'));
    assert!(
        chunks.is_empty(),
        "the first client back waits for the second"
    );
    b.submit(request(4, 20, 5), 4 * MS);
    let (chunks, _, _) = step_at(&mut b, &mut p, 5 * MS, letter('a'));
    assert_eq!(chunks, vec![3, 4]);
    // The wait is over (and no reply ended since): a later prompt goes at once.
    // (Growing the batch for it may take a step of its own first.)
    b.submit(request(5, 20, 1), 6 * MS);
    let started = (7..10).any(|ms| step_at(&mut b, &mut p, ms * MS, letter('a')).0 == vec![5]);
    assert!(started, "request 5 waited");
}

#[test]
fn a_client_that_does_not_return_holds_the_others_no_longer_than_the_wait() {
    let (mut b, mut p) = two_ended();
    b.submit(request(3, 20, 1), 2 * MS);
    for now in [10 * MS, 50 * MS] {
        assert!(step_at(&mut b, &mut p, now, letter('a')).0.is_empty());
    }
    let (chunks, _, _) = step_at(&mut b, &mut p, 51 * MS, letter('a'));
    assert_eq!(chunks, vec![3]);
}

#[test]
fn a_lone_clients_next_prompt_and_a_queue_never_wait() {
    let mut b = batch(4);
    b.gather_ns = 50 * MS;
    let mut p = Fake::default();
    b.submit(request(1, 20, 1), 0);
    assert_eq!(step_at(&mut b, &mut p, MS, letter('a')).1, vec![1]);
    b.submit(request(2, 20, 1), 2 * MS);
    assert_eq!(step_at(&mut b, &mut p, 3 * MS, letter('a')).0, vec![2]);
    // Requests queued past the slots are there already when rows end: they fill them at once.
    let mut b = batch(1);
    b.gather_ns = 50 * MS;
    b.submit(request(1, 20, 1), 0);
    b.submit(request(2, 20, 1), 0);
    b.submit(request(3, 20, 1), 0);
    assert_eq!(step_at(&mut b, &mut p, MS, letter('a')).0, vec![1]);
    assert_eq!(step_at(&mut b, &mut p, 2 * MS, letter('a')).0, vec![2]);
}

#[test]
fn rows_still_running_decode_while_returning_prompts_wait() {
    let mut b = batch(4);
    b.gather_ns = 50 * MS;
    let mut p = Fake::default();
    b.submit(request(1, 20, 1), 0);
    b.submit(request(2, 20, 1), 0);
    b.submit(request(9, 20, 30), 0);
    let (chunks, ended, _) = step_at(&mut b, &mut p, MS, letter('a'));
    assert_eq!((chunks, ended), (vec![1, 2, 9], vec![1, 2]));
    b.submit(request(3, 20, 1), 2 * MS);
    let (chunks, _, decoded) = step_at(&mut b, &mut p, 3 * MS, letter('a'));
    assert!(chunks.is_empty() && decoded);
    b.submit(request(4, 20, 1), 4 * MS);
    // Beside a decoding row the step's budget may hold only the first of them.
    let (chunks, _, _) = step_at(&mut b, &mut p, 5 * MS, letter('a'));
    assert_eq!(chunks.first(), Some(&3));
}
