"""The Rust token loop: stop strings across tokens, split characters, budgets, end of sequence, lookahead."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import pytest

from lljx.generation import Generation, GenerationError, chat_prompt_ids
from lljx.models import load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry
from lljx.strategies.api import DecodeState


@pytest.fixture(scope="module")
def model():
    return load_model(None, dtype="f32")


class ScriptedDecoder:
    """A decoder that emits a fixed script of token ids (k per call), counting its device calls.

    The loop under test is real; only the transformer is replaced, so each case can put
    exactly the tokens it needs at exactly the step it needs.
    """

    compile_seconds = 0.0

    def __init__(self, script: list[int], per_call: int = 1) -> None:
        self.script, self.per_call, self.calls = script, per_call, 0

    def prepare(self, plan, batch=1) -> None:
        pass

    def _state(self, start: int) -> DecodeState:
        chunk = self.script[start : start + self.per_call]
        chunk = chunk + [-1] * (self.per_call - len(chunk))
        return DecodeState(jnp.asarray([chunk], jnp.int32), None, jnp.asarray([start + self.per_call]), None, None)

    def prefill(self, prompt_ids, plan, settings=None) -> DecodeState:
        self.calls += 1
        return self._state(0)

    def decode(self, previous: DecodeState) -> DecodeState:
        self.calls += 1
        return self._state(int(previous.position[0]))


def run(model, script, *, max_tokens=64, stop=(), per_call=1):
    decoder = ScriptedDecoder(script, per_call)
    generation = Generation(model, decoder, [1, 2, 3], max_tokens=max_tokens,
                            stop_token_ids=model.stop_token_ids, stop_strings=stop)
    chunks = list(generation)
    return chunks, generation, decoder


def ids(model, text):
    return model.tokenizer.encode(text)


def test_text_streams_and_matches_decode(model):
    script = ids(model, "Hello there, general knowledge!")
    chunks, generation, _ = run(model, script + [model.tokenizer.eos_id])
    assert "".join(chunks) == model.tokenizer.decode(script)
    assert generation.token_ids == script and generation.stats.stop_reason == "stop"


def test_stop_string_split_across_tokens_is_never_printed(model):
    script = ids(model, "The answer is forty-two. Done")
    pieces = [model.tokenizer.decode([t]) for t in script]
    # A stop string made of the end of one token and the start of the next.
    i = next(i for i in range(len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    chunks, generation, _ = run(model, script, stop=[stop])
    text = "".join(chunks)
    full = model.tokenizer.decode(script)
    assert text == full[: full.index(stop)]
    assert generation.stats.stop_reason == "stop"
    assert not any(stop in c for c in chunks)


def test_multibyte_character_split_across_tokens_arrives_whole(model):
    text = "ok 🦀🙂 日本"
    script = ids(model, text)
    assert len(script) > len(text.split()), "the emoji must span several byte tokens for this test to mean anything"
    chunks, _, _ = run(model, script)
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)
    assert "🦀" in "".join(c for c in chunks if "🦀" in c)


def test_budget_of_one_token_makes_no_decode_call(model):
    chunks, generation, decoder = run(model, ids(model, "one two three"), max_tokens=1)
    assert generation.stats.gen_tokens == 1 and generation.stats.stop_reason == "length"
    assert decoder.calls == 1, "only the prefill: nothing may be dispatched past the budget"
    assert "".join(chunks) == model.tokenizer.decode(generation.token_ids)


def test_end_of_sequence_as_first_token(model):
    chunks, generation, decoder = run(model, [model.tokenizer.eos_id, 42, 43])
    assert chunks == [] and generation.stats.gen_tokens == 0 and generation.stats.stop_reason == "stop"
    assert generation.stats.ttft_ns > 0


def test_lookahead_dispatches_one_step_ahead(model):
    script = ids(model, "a b c d e f")
    _, generation, decoder = run(model, script + [model.tokenizer.eos_id])
    # The prefill gives the first token and one decode gives each later one (the end token
    # included); one more decode was dispatched before that end token was read.
    assert decoder.calls == 1 + len(script) + 1


@pytest.mark.parametrize("per_call", [3, 8])
def test_several_tokens_per_call_with_unused_slots(model, per_call):
    script = ids(model, "several tokens arrive per device call here")
    chunks, generation, _ = run(model, script + [model.tokenizer.eos_id], per_call=per_call)
    assert "".join(chunks) == model.tokenizer.decode(script)
    assert generation.stats.tokens_read == len(script) + 1
    chunks, generation, _ = run(model, script, max_tokens=5, per_call=per_call)
    assert generation.stats.gen_tokens == 5 and generation.token_ids == script[:5]


def test_close_stops_early(model):
    script = ids(model, "word " * 40)
    decoder = ScriptedDecoder(script)
    generation = Generation(model, decoder, [1, 2], max_tokens=64, stop_token_ids=())
    iterator = iter(generation)
    next(iterator)
    generation.close()
    assert list(iterator) == [] and decoder.calls <= 3


def test_stats_are_consistent(model):
    _, generation, _ = run(model, ids(model, "timing every token matters") + [model.tokenizer.eos_id])
    stats = generation.stats
    assert len(stats.token_ns) == stats.tokens_read
    assert stats.total_ns >= stats.prefill_ns + stats.decode_ns - 1000
    assert stats.decode_tps > 0 and stats.prompt_tokens == 3


def test_invalid_requests(model):
    decoder = ScriptedDecoder([5])
    with pytest.raises(GenerationError, match="empty"):
        Generation(model, decoder, [], max_tokens=4)
    with pytest.raises(GenerationError, match="at least 1"):
        Generation(model, decoder, [1], max_tokens=0)
    with pytest.raises(GenerationError, match="context is 8192"):
        Generation(model, decoder, [1] * 9000, max_tokens=4)


def test_context_limits_the_budget(model):
    short = dataclasses.replace(model, config=dataclasses.replace(model.config, context_length=8))
    chunks, generation, _ = run(short, list(range(100, 130)), max_tokens=50)
    assert generation.stats.gen_tokens == 5 and generation.stats.stop_reason == "length"


@pytest.mark.slow
def test_same_bucket_prompts_do_not_recompile(model):
    from jax import monitoring

    compiles = []

    def record(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    monitoring.register_event_duration_secs_listener(record)
    try:
        decoder = registry.load("jit-token").build(model, SamplerSettings(temperature=0))
        first = chat_prompt_ids(model, "What is two plus two?")
        second = chat_prompt_ids(model, "What is three plus five, exactly?")
        assert len(first) != len(second) and len(first) > 16 and len(second) <= 64
        list(Generation(model, decoder, first, max_tokens=4, stop_token_ids=model.stop_token_ids))
        seen = len(compiles)
        list(Generation(model, decoder, second, max_tokens=4, stop_token_ids=model.stop_token_ids))
        assert seen >= 2 and len(compiles) == seen
    finally:
        monitoring.unregister_event_duration_listener(record)


def test_an_id_outside_the_vocabulary_is_an_error_not_a_crash(model):
    from lljx.tokenizer import TokenizerError

    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        run(model, [42, 10**6])


@pytest.mark.parametrize("budget", [1, 2, 5, 8, 9])
def test_budgets_smaller_than_a_multi_token_call(model, budget):
    """A first call carrying one real token in eight slots must not end a budget of up to eight."""
    script = ids(model, "one two three four five six seven eight nine ten eleven")
    decoder = ScriptedDecoder(script, per_call=8)
    # The prefill's one real token sits in the last of eight slots, as fused-loop lays it out.
    first = decoder._state
    decoder._state = lambda start: (
        DecodeState(jnp.asarray([[-1] * 7 + script[:1]], jnp.int32), None, jnp.asarray([1]), None, None)
        if start == 0 else first(start)
    )
    generation = Generation(model, decoder, [1, 2], max_tokens=budget, stop_token_ids=())
    list(generation)
    assert generation.token_ids == script[:budget] and generation.stats.stop_reason == "length"


@pytest.mark.slow
def test_fast_start_compiles_decode_in_the_background_and_changes_no_token(model):
    """`lljx generate` starts the first token before the decode step is compiled; same tokens, same compile count."""
    prompt = chat_prompt_ids(model, "What is two plus two?")
    runs = []
    for fast_start in (False, True, True):
        decoder = registry.load("jit-token").build(model, SamplerSettings(temperature=0))
        generation = Generation(model, decoder, prompt, max_tokens=12, stop_token_ids=(), fast_start=fast_start)
        "".join(generation)
        assert decoder.compilations == 2 and generation.stats.compile_ns > 0
        runs.append(generation.token_ids)
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 12

    # A one-token budget compiles no decode step; the next generation that needs one compiles it.
    decoder = registry.load("jit-token").build(model, SamplerSettings(temperature=0))
    one = Generation(model, decoder, prompt, max_tokens=1, stop_token_ids=(), fast_start=True)
    "".join(one)
    assert decoder.compilations == 1 and one.token_ids == runs[0][:1]
    more = Generation(model, decoder, prompt, max_tokens=12, stop_token_ids=(), fast_start=True)
    "".join(more)
    assert decoder.compilations == 2 and more.token_ids == runs[0]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32", "bf16", "int8"])
def test_programs_compiled_while_the_weights_load_serve_the_loaded_model(dtype, random_llama):
    """`lljx generate`'s head start: weights as shapes, a prefill compiled on them, adopted after loading."""
    import jax

    from lljx.models import load_model, load_model_early
    from lljx.strategies.api import plan_for

    gguf_path, _ = random_llama
    skeleton, loading = load_model_early(str(gguf_path), dtype=dtype)
    model = loading.result()
    shapes = lambda p: jax.tree.map(lambda x: (tuple(x.shape), x.dtype), p)  # noqa: E731
    assert jax.tree.structure(skeleton.params) == jax.tree.structure(model.params)
    assert shapes(skeleton.params) == shapes(model.params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(skeleton.params))

    settings = SamplerSettings(temperature=0)
    prompt = [1, 5, 9, 2, 7]
    for name in ("native-token", "jit-token"):
        early = registry.load(name).build(skeleton, settings)
        early.prepare_prefill_first(plan_for(len(prompt), 6, model.config.context_length))
        decoder = registry.load(name).build(model, settings)
        assert decoder.adopt_programs(early)
        generation = Generation(model, decoder, prompt, max_tokens=6, stop_token_ids=())
        "".join(generation)
        assert decoder.compilations == 2  # the adopted prefill and decode step, nothing compiled again
        reference = Generation(load_model(str(gguf_path), dtype=dtype), registry.load(name).build(model, settings),
                               prompt, max_tokens=6, stop_token_ids=())
        "".join(reference)
        assert generation.token_ids == reference.token_ids, name
    # Weights of another shape are refused, and that decoder compiles its own programs.
    other = registry.load("jit-token").build(load_model(None, dtype=dtype), settings)
    assert not other.adopt_programs(registry.load("jit-token").build(skeleton, settings))
