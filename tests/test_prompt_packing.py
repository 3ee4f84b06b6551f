"""Prompts arriving together are read in one pass: each prompt's last chunk is a row of one prefill.

Under lljx's row-invariant kernels a row's sums do not depend on the rows beside it, so a
packed prompt's logits and keys and values must be the bits its own prefill computes, and every
reply the lone decoder's (`lljx generate`), token for token.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from lljx.batching import BatchEngine
from lljx.generation import messages_prompt_ids
from lljx.models import Model, load_model
from lljx.strategies import registry, slot_steps
from lljx.strategies.slots import SlotDecoder
from test_prompt_reuse import GREEDY, QUESTIONS, lone

pytestmark = pytest.mark.slow

EIGHT_QUESTIONS = QUESTIONS + [
    "What is the capital of Australia?",
    "Explain photosynthesis in one sentence.",
    "Why do cats purr?",
    "How far away is the Moon?",
]


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("smollm2", dtype="auto")


def prefill(decoder: SlotDecoder, scratch, ids: list[int], start: int, size: int):
    padded = np.zeros((1, size), np.int32)
    padded[0, : len(ids)] = ids
    return decoder._run(("prefill", scratch.max_len, size), decoder.params, scratch, padded, np.int32(start), np.int32(len(ids) - 1))


def test_a_packed_row_is_the_bits_of_its_own_prefill(model):
    decoder = registry.build_slots(registry.load("native-token"), model)
    rng = np.random.default_rng(0)
    system = rng.integers(0, 49152, 16).tolist()
    _, base = prefill(decoder, decoder._empty_scratch(64), system, 0, 16)
    # (ids, start, scratch, its own chunk size): two prompts after the shared 16 positions (one
    # ending mid-chunk, one filling it), one from position 0 in a fresh scratch, and one whose
    # own chunk is 16 positions near the bucket's end, padded here to the group's 32 (its
    # padding runs past the bucket).
    rows = [(rng.integers(0, 49152, 20).tolist(), 16, base, 32), (rng.integers(0, 49152, 32).tolist(), 16, base, 32),
            (rng.integers(0, 49152, 9).tolist(), 0, decoder._empty_scratch(64), 16),
            (rng.integers(0, 49152, 10).tolist(), 48, base, 16)]
    alone = [prefill(decoder, slot_steps.copy_scratch(scratch), ids, start, size) for ids, start, scratch, size in rows]
    ids = np.zeros((4, 32), np.int32)
    for i, (row_ids, _, _, _) in enumerate(rows):
        ids[i, : len(row_ids)] = row_ids
    starts = np.array([start for _, start, _, _ in rows], np.int32)
    lasts = np.array([len(row_ids) - 1 for row_ids, _, _, _ in rows], np.int32)
    logits, scratches = decoder._run(
        ("prefill_rows", 64, 32, 4), decoder.params, tuple(scratch for _, _, scratch, _ in rows), ids, starts, lasts
    )
    for i, (one, scratch) in enumerate(alone):
        np.testing.assert_array_equal(np.asarray(logits[i]), np.asarray(one), err_msg=f"row {i} logits")
        for got, want in zip(scratches[i].k + scratches[i].v, scratch.k + scratch.v):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"row {i} cache")
    # The base scratch was read, not written: a kept scratch a row starts from stays as it was.
    _, again = prefill(decoder, decoder._empty_scratch(64), system, 0, 16)
    for got, want in zip(base.k + base.v, again.k + again.v):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.fixture(scope="module")
def warm(model: Model):
    """An 8-slot engine after a server's warm-up for short replies, packed prompts included (else
    every step would wait for a program the burst needs first, and take one prompt)."""
    decoder = registry.build_slots(registry.load("native-token"), model)
    engine = BatchEngine(model, decoder, slots=8)
    engine.warm_up(needs=[256], long_prompts=False)
    deadline = time.monotonic() + 300
    while engine.compiling and time.monotonic() < deadline:
        time.sleep(0.1)
    yield decoder, engine
    engine.close(timeout=60)


def run_wave(decoder: SlotDecoder, engine: BatchEngine, prompts: list[list[int]], budget: int) -> tuple[list[list[int]], int]:
    """The replies to prompts that all arrive before the engine plans its next step, and how many
    of them were read beside others."""
    before = decoder.packed_prompts
    with engine._inbox.lock:
        streams = [engine.stream(ids, max_tokens=budget, settings=GREEDY) for ids in prompts]
    replies = []
    for stream in streams:
        list(stream)
        assert stream.finished is not None
        replies.append(stream.finished.token_ids)
    return replies, decoder.packed_prompts - before


def test_prompts_arriving_together_are_read_in_one_pass_and_keep_their_tokens(model, warm):
    decoder, engine = warm
    waves = [[messages_prompt_ids(model, [{"role": "user", "content": f"{mark}{q}"}]) for q in EIGHT_QUESTIONS]
             for mark in ("", "Briefly: ")]
    packed = []
    replies = []
    for prompts in waves:
        wave_replies, wave_packed = run_wave(decoder, engine, prompts, 12)
        replies += wave_replies
        packed.append(wave_packed)
    for ids, token_ids in zip(waves[0] + waves[1], replies):
        assert token_ids == lone(model, ids, 12), model.tokenizer.decode(ids)
    # First wave: the first prompt is read alone (the others start from the system prompt it
    # leaves), as is any whose rest takes two chunks; the others together. Second wave: the
    # first moves a finished reply's scratch into its bucket, and joins them.
    assert packed[0] >= len(EIGHT_QUESTIONS) // 2, packed
    assert packed[1] > packed[0], packed


def test_a_few_prompts_are_read_one_by_one_until_a_pass_of_their_size_compiles(model, warm):
    decoder, engine = warm
    pairs = [[messages_prompt_ids(model, [{"role": "user", "content": f"{mark}{q}"}]) for q in EIGHT_QUESTIONS[4:6]]
             for mark in ("Shortly: ", "Quickly: ")]
    # The same lengths, so the second pair needs the pass the first one asked for.
    assert [len(ids) for ids in pairs[0]] == [len(ids) for ids in pairs[1]]
    # A kept system prompt for both prompts of a pair to start from (on a fresh engine the first
    # prompt of a wave is read alone and leaves it).
    run_wave(decoder, engine, [messages_prompt_ids(model, [{"role": "user", "content": "Hello!"}])], 4)
    # Two prompts in the warmed 8-row pass cost more than each alone: they are read one by one,
    # and the 2-row pass compiles beside them for the next pair.
    first, packed = run_wave(decoder, engine, pairs[0], 8)
    assert packed == 0
    asked = [key for key in (*decoder._programs, *decoder._pending) if key[0] == "prefill_rows" and key[3] == 2]
    assert asked, "no 2-row pass was asked for"
    for key in asked:
        if key in decoder._pending:
            decoder._pending[key].result(timeout=300)
    second, packed = run_wave(decoder, engine, pairs[1], 8)
    assert packed == 2
    for ids, token_ids in zip(pairs[0] + pairs[1], first + second):
        assert token_ids == lone(model, ids, 8), model.tokenizer.decode(ids)


def test_prompts_sent_as_replies_end_are_read_in_one_pass(model, warm):
    """Clients in a closed loop send their next prompt as their reply ends, a few milliseconds
    apart: the engine waits for as many as ended (within `gather_ms`) and reads them together."""
    decoder, engine = warm
    first = [messages_prompt_ids(model, [{"role": "user", "content": f"Now: {q}"}]) for q in EIGHT_QUESTIONS[:4]]
    run_wave(decoder, engine, first, 6)
    after = [messages_prompt_ids(model, [{"role": "user", "content": f"Next: {q}"}]) for q in EIGHT_QUESTIONS[:4]]
    before = decoder.packed_prompts
    streams = []
    for ids in after:
        streams.append(engine.stream(ids, max_tokens=6, settings=GREEDY))
        time.sleep(0.005)
    for ids, stream in zip(after, streams):
        list(stream)
        assert stream.finished is not None
        assert stream.finished.token_ids == lone(model, ids, 6), model.tokenizer.decode(ids)
    assert decoder.packed_prompts - before == len(after)
