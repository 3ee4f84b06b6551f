"""A prompt starts after what it shares with the prompt before it, whose keys and values the scratch cache still holds.

Under lljx's row-invariant kernels a position's keys and values are the same bits however its
prompt was cut into chunks, so the reused positions are exactly what a fresh prefill computes:
every reply here must be the lone decoder's (`lljx generate`), token for token, while the stats
show the positions that were not computed again.
"""

from __future__ import annotations

import threading

import pytest

from lljx.batching import BatchEngine, chunking_invariant
from lljx.generation import Generation, messages_prompt_ids
from lljx.models import Model, load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry

pytestmark = pytest.mark.slow

GREEDY = SamplerSettings(temperature=0.0)
QUESTIONS = [
    "Why is the sky blue?",
    "What makes a prime number prime?",
    "Name three rivers in Europe and the seas they reach.",
    "How does a bicycle stay upright?",
]


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("smollm2", dtype="auto")


def reply(engine: BatchEngine, ids: list[int], budget: int) -> tuple[str, list[int], int]:
    stream = engine.stream(ids, max_tokens=budget, settings=GREEDY)
    text = "".join(stream)
    assert stream.finished is not None
    return text, stream.finished.token_ids, stream.finished.stats.prompt_cached


def lone(model: Model, ids: list[int], budget: int) -> list[int]:
    decoder = registry.build(registry.load("native-token"), model, GREEDY)
    generation = Generation(model, decoder, ids, max_tokens=budget, stop_token_ids=model.stop_token_ids, settings=GREEDY)
    list(generation)
    return generation.token_ids


def shared(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_a_conversation_starts_each_turn_after_the_last_reply_and_keeps_its_tokens(model):
    decoder = registry.build_slots(registry.load("native-token"), model)
    decoder.prepare("extract", 1, 256)  # copying a finished row out (else it compiles on first use)
    engine = BatchEngine(model, decoder, slots=4)
    try:
        messages = [{"role": "user", "content": QUESTIONS[0]}]
        previous: list[int] = []
        last: list[int] = []
        for turn in range(3):
            ids = messages_prompt_ids(model, messages)
            text, token_ids, cached = reply(engine, ids, 24)
            assert token_ids == lone(model, ids, 24), f"turn {turn}"
            # Each turn's prompt starts with the last one and its reply, which the reply's row
            # held (every token but perhaps the last, not yet fed back when it ended): as much
            # of them as the new prompt shares is reused, cut to whole 16-position chunks.
            reuse = {min(shared(previous + last[:n], ids), len(ids) - 1) // 16 * 16 for n in (len(last) - 1, len(last))} if turn else {0}
            assert cached in reuse, f"turn {turn}"
            assert turn == 0 or cached > len(previous) // 16 * 16  # part of the reply too
            previous, last = ids, token_ids
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": QUESTIONS[turn + 1]}]
        # A prompt that shares only the system prompt reuses that much, in a smaller bucket.
        ids = messages_prompt_ids(model, [{"role": "user", "content": QUESTIONS[3]}])
        text, token_ids, cached = reply(engine, ids, 16)
        assert token_ids == lone(model, ids, 16)
        assert 16 <= cached < len(ids)
    finally:
        engine.close(timeout=60)


def test_prompts_arriving_together_reuse_their_shared_start_and_keep_their_tokens(model):
    engine = BatchEngine(model, registry.build_slots(registry.load("native-token"), model), slots=4)
    prompts = [messages_prompt_ids(model, [{"role": "user", "content": q}]) for q in QUESTIONS]
    results: dict[int, tuple[list[int], int]] = {}

    def run(i: int) -> None:
        _, token_ids, cached = reply(engine, prompts[i], 20)
        results[i] = (token_ids, cached)

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        engine.close(timeout=60)
    assert len(results) == len(prompts)
    for i, ids in enumerate(prompts):
        assert results[i][0] == lone(model, ids, 20), QUESTIONS[i]
    # Prefilled one after another into one scratch: all but the first start after the system prompt.
    assert sorted(cached for _, cached in results.values())[1:] == [16] * (len(prompts) - 1)


@pytest.mark.parametrize("kept", [2, 0])
def test_conversations_taking_turns_each_start_after_their_own_last_reply(model, kept):
    """Two clients' conversations alternate: each turn finds its own last reply in a kept
    scratch. With none kept, a turn finds only the other conversation's, and the system prompt."""
    decoder = registry.build_slots(registry.load("native-token"), model)
    decoder.prepare("extract", 1, 256)
    engine = BatchEngine(model, decoder, slots=2, kept_prompts=kept)
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS[:2]]
    last: list[tuple[list[int], list[int]]] = [([], []), ([], [])]
    try:
        for turn in range(2):
            for c, messages in enumerate(conversations):
                ids = messages_prompt_ids(model, messages)
                text, token_ids, cached = reply(engine, ids, 20)
                assert token_ids == lone(model, ids, 20), f"conversation {c}, turn {turn}"
                previous, answer = last[c]
                own = shared(previous + answer[:-1], ids) // 16 * 16
                if turn == 0:
                    assert cached == (0 if c == 0 else 16), f"conversation {c}: the system prompt"
                elif kept:
                    assert cached == own > len(previous) // 16 * 16, f"conversation {c}: its own reply"
                else:
                    assert cached == 16, f"conversation {c}: only the system prompt"
                last[c] = (ids, token_ids)
                messages += [{"role": "assistant", "content": text}, {"role": "user", "content": QUESTIONS[turn + 2]}]
    finally:
        engine.close(timeout=60)


@pytest.mark.parametrize("strategy, dtype, asked", [
    ("jit-token", "auto", True),  # XLA's products throughout
    ("native-token", "f32", True),  # lljx's kernels decode, but a prompt's products go through XLA
    ("native-token", "auto", False),
])
def test_nothing_is_reused_when_positions_depend_on_their_chunking_or_when_asked(model, strategy, dtype, asked):
    if dtype != "auto":
        model = load_model("smollm2", dtype=dtype)
    decoder = registry.build_slots(registry.load(strategy), model)
    assert chunking_invariant(decoder) == (strategy == "native-token" and dtype == "auto")
    engine = BatchEngine(model, decoder, slots=1, reuse_prompts=asked)
    try:
        ids = messages_prompt_ids(model, [{"role": "user", "content": QUESTIONS[0]}])
        assert reply(engine, ids, 4)[2] == 0
        assert reply(engine, ids, 4)[2] == 0
    finally:
        engine.close(timeout=60)
