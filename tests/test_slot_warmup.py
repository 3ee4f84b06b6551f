"""Compiling a server's common batch shapes ahead: which shapes, in what order, and that a step never waits behind them."""

from __future__ import annotations

import pytest

from lljx import _native
from lljx.models import load_model
from lljx.strategies import registry
from lljx.strategies.slots import CHUNK_SIZES, common_programs, long_prompt_programs


def test_common_programs_start_with_one_request_and_cover_every_batch_bucket() -> None:
    keys = common_programs(8, [256, 4096])
    assert keys[0] == ("decode", 1, 256)
    assert len(keys) == len(set(keys))
    for length in (256, 4096):
        assert [k[1] for k in keys if k[0] == "decode" and k[2] == length] == [1, 2, 4, 8]
        # Every way the loop grows or shrinks a batch by one bucket.
        for smaller, larger in ((1, 2), (2, 4), (4, 8)):
            assert ("resize", smaller, length, larger, length) in keys
            assert ("resize", larger, length, smaller, length) in keys
        # Growing to a batch comes before its decode, and a prompt can join it.
        assert keys.index(("resize", 4, length, 8, length)) < keys.index(("decode", 8, length))
        assert all(("insert", b, length, bucket) in keys for b in (1, 2, 4, 8) for bucket in CHUNK_SIZES)
        # Most rows of a batch ending in one step: it shrinks by several buckets at once.
        assert all(("resize", big, length, small, length) in keys for big, small in ((8, 2), (8, 1), (4, 1)))
        # Several clients joining one or two running rows: it grows by several buckets at once.
        assert all(("resize", small, length, big, length) in keys for big, small in ((8, 2), (8, 1), (4, 1)))
    prefills = {(k[1], k[2]) for k in keys if k[0] == "prefill"}
    assert prefills == {(bucket, chunk) for bucket in CHUNK_SIZES for chunk in CHUNK_SIZES if chunk <= bucket}
    # The scratch moves to a neighbouring bucket, either way, for a prompt that starts as the last
    # one did, and from a finished reply's (the shortest cache) into every shorter bucket.
    moves = {(k[1], k[2]) for k in keys if k[0] == "rebucket"}
    pairs = set(zip(CHUNK_SIZES, CHUNK_SIZES[1:]))
    replies = {(256, bucket) for bucket in CHUNK_SIZES if bucket < 256}
    assert moves == pairs | {(b, a) for a, b in pairs} | replies


@pytest.mark.parametrize("slots, rows", [(1, None), (2, 2), (3, 4), (8, 8), (12, 16)])
def test_short_prompts_last_chunks_read_together_for_as_many_as_the_slots(slots: int, rows: int | None) -> None:
    keys = common_programs(slots, [256])
    packed = {k[1:] for k in keys if k[0] == "prefill_rows"}
    short = CHUNK_SIZES[:-1]
    expected = {(bucket, chunk, rows) for bucket in short for chunk in CHUNK_SIZES if chunk <= bucket}
    assert packed == (set() if rows is None else expected)


def test_common_programs_grow_every_batchs_cache_from_one_length_to_the_next() -> None:
    keys = common_programs(8, [256, 512, 1024])
    assert len(keys) == len(set(keys))
    for shorter, length in ((256, 512), (512, 1024)):
        for batch in (1, 2, 4, 8):
            # Right after the batch's decode at the longer length: the two a growing row needs.
            grow = ("resize", batch, shorter, batch, length)
            assert keys.index(grow) == keys.index(("decode", batch, length)) + 1
    assert not [k for k in keys if k[0] == "resize" and k[2] == 256 and k[4] == 1024]
    assert not [k for k in common_programs(8, [256]) if k[0] == "resize" and k[2] != k[4]]


@pytest.mark.parametrize("slots, largest", [(1, 1), (3, 4), (4, 4), (5, 8)])
def test_common_programs_stop_at_the_loops_largest_batch(slots: int, largest: int) -> None:
    batches = {k[1] for k in common_programs(slots, [256]) if k[0] == "decode"}
    assert max(batches) == largest == _native.BatchLoop.cache_bucket(1) // 256 * largest


def test_cache_buckets_are_the_loops() -> None:
    assert [_native.BatchLoop.cache_bucket(n) for n in (1, 256, 257, 4096, 5000)] == [256, 256, 512, 4096, 8192]


@pytest.mark.slow
def test_a_step_waits_for_its_own_shape_not_for_the_warm_up() -> None:
    model = load_model("smollm2", dtype="auto")
    decoder = registry.build_slots(registry.load("native-token"), model)
    queued = common_programs(8, [256, 512])
    decoder.warm(queued)
    assert decoder.warming == len(queued) or decoder.warming >= len(queued) - 1  # one may have started
    wanted = queued[-1]  # the last one queued
    decoder.prepare(*wanted)
    assert decoder.ready(*wanted)
    # It jumped the queue: most of the warm-up is still to do.
    assert decoder.warming > len(queued) // 2
    decoder.stop_warming()
    assert decoder.warming <= 1  # the compile in progress, if any


@pytest.mark.slow
def test_warm_up_waits_while_its_gate_is_shut() -> None:
    import threading
    import time

    model = load_model("smollm2", dtype="auto")
    decoder = registry.build_slots(registry.load("native-token"), model)
    open_gate = threading.Event()
    queued = [("resize", 1, 256, 2, 256), ("resize", 2, 256, 1, 256)]
    decoder.warm(queued, when=open_gate.is_set)
    time.sleep(1.0)
    assert decoder.warming == len(queued)  # shut: nothing compiled
    open_gate.set()
    deadline = time.monotonic() + 120
    while decoder.warming and time.monotonic() < deadline:
        time.sleep(0.05)
    assert decoder.warming == 0 and all(decoder.ready(*key) for key in queued)


@pytest.mark.slow
def test_the_engine_lets_warm_up_compiles_start_only_after_a_quiet_spell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client sending its next request right after the last one must not find a core taken by
    a compile that started in between (a compile cannot be stopped once started)."""
    import time

    from lljx import batching
    from lljx.batching import BatchEngine
    from lljx.sampling import SamplerSettings

    monkeypatch.setattr(batching, "WARM_AFTER_IDLE_S", 0.5)
    model = load_model("smollm2", dtype="auto")
    engine = BatchEngine(model, registry.build_slots(registry.load("native-token"), model), slots=2)
    try:
        stream = engine.stream(model.tokenizer.encode("Hi"), max_tokens=2, settings=SamplerSettings(temperature=0.0))
        list(stream)
        assert stream.finished is not None
        assert not engine._idle()  # just ended: a next request may be on its way
        time.sleep(0.6)
        assert engine._idle()
    finally:
        engine.close(timeout=60)


def test_default_slots_count_the_cache_the_decoder_keeps() -> None:
    """The native strategies keep an f16 cache under f32 activations, so a server's default slot
    count comes from the decoder's config, not the model's: a model whose 8 full f32 contexts
    would pass a quarter of memory, but whose f16 ones would not, gets 8 slots."""
    import os
    from dataclasses import replace

    import jax.numpy as jnp

    from lljx.batching import DEFAULT_CONTEXT, slots_for

    model = load_model(None, dtype="f32")
    decoder = registry.build_slots(registry.load("native-token"), model)
    assert model.config.cache_dtype == jnp.float32 and decoder.config.cache_dtype == jnp.float16
    # Layers that put 8 full f16 contexts at a fifth of this machine's memory: f32 ones take two fifths.
    quarter = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    c = decoder.config
    per_layer = 8 * DEFAULT_CONTEXT * 2 * c.n_kv_heads * c.d_head * 2
    layers = max(1, int(quarter * 0.8) // per_layer)
    decoder.config = replace(c, n_layers=layers, context_length=DEFAULT_CONTEXT)
    assert slots_for(decoder, None) == 8
    decoder.config = replace(decoder.config, kv_cache="f32")
    assert slots_for(decoder, None) == 4
    assert slots_for(decoder, 3) == 3  # --parallel, or OLLAMA_NUM_PARALLEL


def test_long_prompt_programs_cover_each_bucket_past_the_chunks_alone_and_beside_running_rows() -> None:
    keys = long_prompt_programs(8, 256, 4096)
    assert len(keys) == len(set(keys))
    assert {k[1] for k in keys if k[0] == "prefill"} == {512, 1024, 2048, 4096}  # shortest first
    assert keys[0] == ("scratch", 512) and keys.index(("scratch", 1024)) > keys.index(("prefill", 512, 256))
    for bucket in (512, 1024, 2048, 4096):
        assert all(("prefill", bucket, chunk) in keys for chunk in CHUNK_SIZES)
        for batch, grown in ((1, 2), (2, 4), (4, 8), (8, 8)):
            assert ("resize", batch, 256, grown, bucket) in keys
            assert ("decode", grown, bucket) in keys and ("insert", grown, bucket, bucket) in keys
        assert ("decode", 1, bucket) in keys and ("insert", 1, bucket, bucket) in keys
        assert ("rebucket", bucket // 2, bucket) in keys and ("rebucket", bucket, bucket // 2) in keys
    assert not [k for k in long_prompt_programs(4, 256, 1024) if k[0] == "decode" and k[1] > 4 or k[-1] > 1024]


@pytest.mark.slow
def test_after_the_warm_up_a_long_prompt_beside_a_running_stream_waits_for_no_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiling while streams run takes a core from them (2 cores: their gaps grew from 0.15
    to 0.4 s): once an idle server has warmed up, a long prompt joining a stream runs only
    programs compiled before it came. Only the in-place forms of resizes may compile then (they
    are used once a spare cache exists, and compile in the idle CPU class)."""
    import threading
    import time

    from lljx import batching
    from lljx.batching import BatchEngine
    from lljx.sampling import SamplerSettings

    monkeypatch.setattr(batching, "WARM_AFTER_IDLE_S", 0.0)
    monkeypatch.setattr(batching, "DEFAULT_CONTEXT", 512)  # long prompts up to the 512 bucket
    model = load_model("smollm2", dtype="auto")
    decoder = registry.build_slots(registry.load("native-token"), model)
    compiled: list[tuple] = []
    compile = decoder._compile
    decoder._compile = lambda key: (compiled.append(key), compile(key))[1]  # type: ignore[method-assign]
    engine = BatchEngine(model, decoder, slots=2)
    try:
        engine.warm_up(needs=[256])
        deadline = time.monotonic() + 600
        while engine.compiling and time.monotonic() < deadline:
            time.sleep(0.1)
        assert engine.compiling == 0
        assert ("prefill", 512, 16) in compiled and ("resize", 1, 256, 2, 512) in compiled
        compiled.clear()
        greedy = SamplerSettings(temperature=0.0)
        running = engine.stream(model.tokenizer.encode("Count from 1 to 100."), max_tokens=120, settings=greedy)
        tokens = iter(running)
        next(tokens)
        long_prompt = model.tokenizer.encode(" ".join(f"Item {i} is a fruit." for i in range(50)))
        assert 256 < len(long_prompt) <= 448  # the 512 bucket, with its reach in a 512 cache
        joined = engine.stream(long_prompt, max_tokens=4, settings=greedy)
        rest = threading.Thread(target=lambda: list(tokens))
        rest.start()
        assert "".join(joined)
        rest.join(120)
        waited = [key for key in compiled if key[0] != "resize_into"]
        assert not waited, f"compiled while the stream ran: {waited}"
    finally:
        engine.close(timeout=60)


@pytest.mark.slow
def test_a_composed_strategys_slots_serve_a_prompt_without_compiled_programs() -> None:
    """Strategies whose slot steps are Python compositions (per-layer jits here) run the same
    step code without the compiled programs: a fresh prompt scratch must come from the step's
    own function."""
    from lljx.batching import BatchEngine
    from lljx.sampling import SamplerSettings

    model = load_model("smollm2", dtype="auto")
    decoder = registry.build_slots(registry.load("jit-layer"), model)
    assert decoder is not None and not decoder.steps.compiled
    engine = BatchEngine(model, decoder, slots=2)
    try:
        stream = engine.stream(model.tokenizer.encode("Hi there"), max_tokens=3, settings=SamplerSettings(temperature=0.0))
        assert "".join(stream)
        assert stream.finished is not None and len(stream.finished.token_ids) == 3
    finally:
        engine.close(timeout=60)


@pytest.mark.parametrize("strategy, dtype, packed", [("native-token", "auto", True), ("jit-token", "auto", False)])
def test_the_engine_warms_packed_prompts_only_where_a_row_is_the_bits_of_its_own_prefill(
    monkeypatch: pytest.MonkeyPatch, strategy: str, dtype: str, packed: bool
) -> None:
    """XLA's products give a row other sums beside other rows: there, prompts are read one by one."""
    from lljx.batching import BatchEngine

    model = load_model("smollm2", dtype=dtype)
    decoder = registry.build_slots(registry.load(strategy), model)
    warmed: list[tuple] = []
    monkeypatch.setattr(decoder, "warm", lambda keys, when=None: warmed.extend(keys))
    engine = BatchEngine(model, decoder, slots=4)
    try:
        engine.warm_up(needs=[256], long_prompts=False)
    finally:
        engine.close(timeout=60)
    assert any(k[0] == "prefill" for k in warmed)
    assert any(k[0] == "prefill_rows" for k in warmed) == packed
