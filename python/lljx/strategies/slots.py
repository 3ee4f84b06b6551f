"""Batched decoders (continuous batching): a strategy's slot steps, compiled per shape, dispatched one step at a time.

A `SlotDecoder` serves B slots of one cache. The host (the Rust batch loop) plans each step
and calls `step`: grow or compact the batch, decode every running row, prefill prompt chunks
into a scratch cache and insert finished prompts at a slot index. Nothing is read back here.
Programs compile ahead of time per shape; `ready` says whether one is compiled and, if not,
compiles it on a background thread, so running streams never wait for a new shape. `warm`
queues the shapes a server meets most behind those a step waits for, so later arrivals find
them compiled.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lljx.config import ModelConfig
from lljx.params import Params
from lljx.sampling import RowSampling, mask_words, sample_rows
from lljx.strategies import slot_steps
from lljx.strategies.slot_steps import SlotState, Transform
from lljx.strategies.spare_caches import SpareCaches

# Prompt chunk lengths a step may prefill (static shapes; a prompt's last chunk is padded).
CHUNK_SIZES = (16, 32, 64, 128, 256)


# Prompts one pass prefills at most (compiled per count; a group pads up to the next).
PACKED_ROWS = (2, 4, 8, 16)


class _Row(NamedTuple):
    """The scratch a prompt of the pending group leaves once the group has run (its index)."""

    index: int


@dataclass
class _Packed:
    """A prompt's last chunk waiting to run beside others': the scratch it starts from
    (`borrowed` where something else still holds it), its ids and where they start, and the
    slot and sampler row it goes into."""

    initial: Any
    borrowed: bool
    ids: list[int]
    start: int
    bucket: int
    size: int
    insert: tuple[int, dict[str, Sequence[Any]]]


@dataclass(frozen=True)
class SlotSteps:
    """One strategy's slot functions (see `slot_steps`), jitted where the strategy puts its jits.

    `compiled`: every function is one `jax.jit`, compiled ahead of time per shape; otherwise
    they are Python compositions (of smaller jits, or none) run as they are.
    """

    decode: Callable[..., Any]  # (params, tokens, cache, positions, active, rows) -> (tokens, cache)
    forward: Callable[..., Any]  # (params, tokens, cache, positions) -> (logits, cache)
    prefill: Callable[..., Any]  # (params, scratch, ids, start, last) -> (chunk_logits, scratch)
    insert: Callable[..., Any]  # (tokens, cache, scratch, chunk_logits, slot, row) -> (tokens, cache)
    insert_logits: Callable[..., Any]  # (logits, cache, scratch, chunk_logits, slot) -> (logits, cache)
    sample: Callable[..., Any]  # (logits, rows, mask) -> tokens
    resize: Callable[..., Any]  # (tokens, cache, source_rows, cache_len) -> (tokens, cache)
    resize_into: Callable[..., Any]  # (tokens, cache, source_rows, spare_cache) -> (tokens, cache)
    empty: Callable[..., Any]  # (batch, cache_len) -> (tokens, cache)
    empty_scratch: Callable[..., Any]  # (bucket) -> scratch
    width: int  # tokens per row per step
    compiled: bool
    # (params, scratches, ids, starts, lasts) -> (chunk_logits per row, scratches): several prompts'
    # last chunks in one pass; None where the steps are compositions (they prefill one by one).
    prefill_rows: Callable[..., Any] | None = None


def _bookkeeping(config: ModelConfig, sample: slot_steps.RowSampler, width: int, stacked: bool) -> dict[str, Any]:
    """The steps every strategy jits the same way: they move rows and draw tokens, no transform."""
    return dict(
        insert=jax.jit(partial(slot_steps.insert, sample), donate_argnums=(1,)),
        insert_logits=jax.jit(slot_steps.insert_logits, donate_argnums=(0, 1)),
        sample=jax.jit(partial(slot_steps.sample_masked, sample, width)),
        resize=jax.jit(slot_steps.resize, static_argnums=(3,)),
        resize_into=jax.jit(slot_steps.resize_into, donate_argnums=(3,), keep_unused=True),
        empty=jax.jit(partial(slot_steps.empty_batch, config, width=width, stacked=stacked), static_argnums=(0, 1)),
        empty_scratch=jax.jit(partial(slot_steps.empty_scratch, config, stacked=stacked), static_argnums=(0,)),
    )


def row_sampler(argmax: Callable[[jax.Array], jax.Array] | None = None) -> slot_steps.RowSampler:
    return partial(sample_rows, argmax=argmax)


def jitted_slot_steps(
    config: ModelConfig, transform: Transform, *, width: int = 1, stop_ids: Sequence[int] = (),
    argmax: Callable[[jax.Array], jax.Array] | None = None, stacked: bool = False,
) -> SlotSteps:
    """One jit per step around transform + sampler (width 1), or around a `lax.while_loop` of
    `width` tokens that ends early once every row stopped; caches are donated."""
    sample = row_sampler(argmax)
    if width == 1:
        decode = partial(slot_steps.decode, transform, sample)
    else:
        decode = partial(slot_steps.decode_k, transform, sample, width, tuple(stop_ids))
    return SlotSteps(
        decode=jax.jit(decode, donate_argnums=(2,)),
        forward=jax.jit(partial(slot_steps.decode_logits, transform), donate_argnums=(2,)),
        prefill=jax.jit(partial(slot_steps.prefill_chunk, transform), donate_argnums=(1,)),
        # Not donated: rows may start from one scratch, or from one a kept scratch still holds.
        prefill_rows=jax.jit(partial(slot_steps.prefill_rows, transform)),
        width=width, compiled=True, **_bookkeeping(config, sample, width, stacked),
    )


def composed_slot_steps(
    config: ModelConfig, transform: Transform, *, jit_sampler: bool = True, stacked: bool = False
) -> SlotSteps:
    """Steps composed in Python around a transform that is itself a composition (of per-layer or
    per-component jits, or eager ops); the sampler jitted on its own, or eager too."""
    sample = row_sampler()
    draw = jax.jit(sample) if jit_sampler else sample
    steps = _bookkeeping(config, draw, 1, stacked)
    if not jit_sampler:
        steps["sample"] = partial(slot_steps.sample_masked, sample, 1)
    return SlotSteps(
        decode=partial(slot_steps.decode, transform, draw),
        forward=partial(slot_steps.decode_logits, transform),
        prefill=partial(slot_steps.prefill_chunk, transform),
        width=1, compiled=False, **steps,
    )


def _rows(values: dict[str, Sequence[Any]]) -> RowSampling:
    return RowSampling(
        keys=np.asarray(values["keys"], np.uint32).reshape(-1, 2),
        counters=np.asarray(values["counters"], np.int32),
        temperature=np.asarray(values["temperature"], np.float32),
        top_k=np.asarray(values["top_k"], np.int32),
        top_p=np.asarray(values["top_p"], np.float32),
        min_p=np.asarray(values["min_p"], np.float32),
    )


class SlotDecoder:
    """Dispatches batched steps over `params` with a strategy's `SlotSteps`; reads nothing back."""

    def __init__(self, params: Params, steps: SlotSteps, config: ModelConfig, *, chunk_sizes: Sequence[int] = CHUNK_SIZES):
        self.params = params
        self.steps = steps
        self.config = config
        self.width = steps.width
        self.chunk_sizes = tuple(chunk_sizes)
        self.compile_seconds = 0.0
        self.compilations = 0
        self._programs: dict[tuple[Any, ...], Any] = {}
        self._pending: dict[tuple[Any, ...], Future[Any]] = {}
        self._lock = threading.Lock()
        self._vocab: int | None = None
        self._spares = SpareCaches()
        self.packed_prompts = 0  # prompts whose last chunk ran beside others' in one pass

    # ---- programs ----

    def ready(self, kind: str, *shape: int) -> bool:
        """Whether the program `kind` for `shape` can run now without compiling; a missing one starts
        compiling on a background thread. Kinds and shapes: decode / forward (batch, cache_len),
        sample (batch), insert / insert_logits (batch, cache_len, bucket), prefill (bucket, chunk),
        scratch (bucket: a zeroed prompt cache), resize / resize_into (batch, cache_len, new_batch,
        new_cache_len), rebucket (bucket, new_bucket: a scratch moved into another bucket), extract
        (batch, cache_len: a row of the cache copied out as the scratch). A resize
        to a shape with a spare cache runs in place (`_resize`), so it is that program a step waits for."""
        if not self.steps.compiled:
            return True
        key = self._key(kind, shape)
        with self._lock:
            if key in self._programs:
                return True
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = _background().submit(URGENT, self._compile, key)
                return False
        if not pending.done():
            _background().hurry(pending)  # a warm-up item a step now waits for
        if pending.done():
            self._adopt(key)
            return True
        return False

    def compiled(self, kind: str, *shape: int) -> bool:
        """Whether `kind` for `shape` can run now, starting no compile (for work a step may skip)."""
        return self._compiled(self._key(kind, shape))

    def ask(self, kind: str, *shape: int) -> None:
        """Start compiling `kind` for `shape` if it is missing, behind every program a step waits
        for and ahead of the warm-up: a prompt on its way in will likely need it."""
        if not self.steps.compiled:
            return
        key = self._key(kind, shape)
        with self._lock:
            if key not in self._programs and key not in self._pending:
                self._pending[key] = _background().submit(AHEAD, self._compile, key)

    def prepare(self, kind: str, *shape: int) -> None:
        """Compile `kind` for `shape` now (or wait for its background compile)."""
        if self.steps.compiled:
            self.ready(kind, *shape)
            self._adopt(self._key(kind, shape))

    def _key(self, kind: str, shape: tuple[int, ...]) -> tuple[Any, ...]:
        if kind == "resize" and (shape[2], shape[3]) in self._spares:
            return ("resize_into", *shape)
        return (kind, *shape)

    def warm(self, keys: Sequence[tuple[Any, ...]], when: Callable[[], bool] | None = None) -> None:
        """Compile `keys` on the background thread, in order, whenever no step waits for a
        compile and `when()` says so (e.g. nothing is running)."""
        if not self.steps.compiled:
            return
        with self._lock:
            for key in keys:
                if key not in self._programs and key not in self._pending:
                    self._pending[key] = _background().submit(WARM, self._compile, key, gate=when)

    def stop_warming(self) -> None:
        """Drop the queued warm-up compiles (the one in progress finishes)."""
        with self._lock:
            for key, pending in list(self._pending.items()):
                if pending.cancel():
                    del self._pending[key]

    @property
    def warming(self) -> int:
        """Programs queued or compiling on the background thread."""
        with self._lock:
            return sum(not pending.done() for pending in self._pending.values())

    def _compiled(self, key: tuple[Any, ...]) -> bool:
        """Whether `key` can run now without compiling; unlike `ready`, starts no compile."""
        if not self.steps.compiled:
            return True
        with self._lock:
            if key in self._programs:
                return True
            pending = self._pending.get(key)
        if pending is None or not pending.done():
            return False
        self._adopt(key)
        return True

    def _adopt(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            program = self._programs.get(key)
            pending = self._pending.get(key)
        if program is not None:
            return program
        program = pending.result() if pending is not None else self._compile(key)
        with self._lock:
            self._programs[key] = program
            self._pending.pop(key, None)
        return program

    def _compile(self, key: tuple[Any, ...]) -> Any:
        start = time.perf_counter()
        function, args = self._abstract(key)
        program = function.lower(*args).compile()
        with self._lock:
            self.compile_seconds += time.perf_counter() - start
            self.compilations += 1
        return program

    def _abstract(self, key: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        """The jitted step and abstract arguments of one program."""
        kind, *shape = key
        steps = self.steps

        def batch(b: int, length: int) -> tuple[Any, Any]:
            return jax.eval_shape(steps.empty, b, length)

        def rows(b: int) -> RowSampling:
            return RowSampling(
                jax.ShapeDtypeStruct((b, 2), jnp.uint32), *(jax.ShapeDtypeStruct((b,), t) for t in
                (jnp.int32, jnp.float32, jnp.int32, jnp.float32, jnp.float32)),
            )

        def ints(*dims: int) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(tuple(dims), jnp.int32)

        scalar = ints()
        vocab = self.vocab
        if kind in ("decode", "forward"):
            b, length = shape
            tokens, cache = batch(b, length)
            if kind == "forward":
                return steps.forward, (self.params, tokens, cache, ints(b))
            return steps.decode, (self.params, tokens, cache, ints(b), jax.ShapeDtypeStruct((b,), jnp.bool_), rows(b))
        if kind == "sample":
            (b,) = shape
            mask = jax.ShapeDtypeStruct((b, mask_words(vocab)), jnp.uint32)
            return steps.sample, (jax.ShapeDtypeStruct((b, vocab), jnp.float32), rows(b), mask)
        if kind in ("insert", "insert_logits"):
            b, length, bucket = shape
            tokens, cache = batch(b, length)
            scratch = jax.eval_shape(steps.empty_scratch, bucket)
            chunk_logits = jax.ShapeDtypeStruct((1, vocab), jnp.float32)
            if kind == "insert_logits":
                logits = jax.ShapeDtypeStruct((b, vocab), jnp.float32)
                return steps.insert_logits, (logits, cache, scratch, chunk_logits, scalar)
            return steps.insert, (tokens, cache, scratch, chunk_logits, scalar, rows(1))
        if kind == "scratch":
            (bucket,) = shape
            return steps.empty_scratch, (bucket,)
        if kind == "prefill":
            bucket, chunk = shape
            scratch = jax.eval_shape(steps.empty_scratch, bucket)
            return steps.prefill, (self.params, scratch, ints(1, chunk), scalar, scalar)
        if kind == "prefill_rows":
            bucket, chunk, n = shape
            scratch = jax.eval_shape(steps.empty_scratch, bucket)
            return steps.prefill_rows, (self.params, (scratch,) * n, ints(n, chunk), ints(n), ints(n))
        if kind == "extract":
            b, length = shape
            return jax.jit(slot_steps.extract_row), (batch(b, length)[1], scalar)
        if kind == "rebucket":
            old, new = shape
            tokens = jax.ShapeDtypeStruct((1, self.width), jnp.int32)
            return steps.resize, (tokens, jax.eval_shape(steps.empty_scratch, old), ints(1), new)
        if kind in ("resize", "resize_into"):
            b, length, new_b, new_length = shape
            tokens, cache = batch(b, length)
            if kind == "resize_into":
                return steps.resize_into, (tokens, cache, ints(new_b), batch(new_b, new_length)[1])
            return steps.resize, (tokens, cache, ints(new_b), new_length)
        raise ValueError(f"unknown slot program {kind!r}")

    @property
    def vocab(self) -> int:
        """The logits' width (the head's outputs)."""
        if self._vocab is None:
            scratch = jax.eval_shape(self.steps.empty_scratch, self.chunk_sizes[0])
            ids = jax.ShapeDtypeStruct((1, self.chunk_sizes[0]), jnp.int32)
            scalar = jax.ShapeDtypeStruct((), jnp.int32)
            logits, _ = jax.eval_shape(self.steps.prefill, self.params, scratch, ids, scalar, scalar)
            self._vocab = int(logits.shape[-1])
        return self._vocab

    def _run(self, key: tuple[Any, ...], *args: Any) -> Any:
        """Run one program; the eager steps take the static arguments the compiled ones leave out."""
        if not self.steps.compiled:
            function = getattr(self.steps, key[0])
            return function(*args, *((key[-1],) if key[0] == "resize" else ()))
        return self._adopt(key)(*args)

    # ---- steps ----

    def empty(self, batch: int, cache_len: int, carry: SlotState | None = None) -> SlotState:
        """A batch of free rows; a prompt partly prefilled in `carry` (its scratch) stays."""
        tokens, cache = self.steps.empty(batch, cache_len)
        if carry is None:
            return SlotState(tokens, cache)
        return SlotState(tokens, cache, carry.scratch, carry.chunk_logits, kept=carry.kept)

    def idle(self, carry: SlotState | None = None) -> SlotState:
        """No batch (nothing decodes): only the scratches, kept from `carry` (a prompt being
        prefilled, or earlier ones for later prompts to start from)."""
        if carry is None:
            return SlotState(None, None)  # type: ignore[arg-type]
        return SlotState(None, None, carry.scratch, carry.chunk_logits, kept=carry.kept)  # type: ignore[arg-type]

    def step(
        self, state: SlotState, resize: tuple[Sequence[int], int] | None, rows: dict[str, Sequence[Any]] | None,
        chunks: Sequence[tuple[Sequence[int], int, int, int, tuple[int, dict[str, Sequence[Any]]] | None, int | None, int | None, int | None]],
        masked: bool = False,
    ) -> SlotState:
        """Dispatch one step, in order: `resize` (source rows, cache length) the batch; decode the
        rows described by `rows` (per-row lists: positions, active and the `RowSampling` fields), or
        only their forward pass when `masked` (the split step; `sample` follows); then prefill each
        chunk (ids, start, bucket, size, insert, rebucket, swap, copy), inserting the prompt at
        `insert`'s slot with its sampler row when the chunk ends it. A chunk first trades the
        scratch for kept scratch `swap`, then takes a copy of kept scratch `copy` as the scratch,
        when those are given. It continues what the scratch holds (the prompt's earlier
        chunks, or a prefix an earlier prompt left), first moved from the bucket `rebucket` when
        that is given; a fresh scratch starts a prompt at position 0."""
        tokens, cache, scratch, chunk_logits = state.tokens, state.cache, state.scratch, state.chunk_logits
        kept = list(state.kept)
        if resize is not None:
            tokens, cache = self._resize(tokens, cache, *resize)
        # No batch yet: only prompt chunks that end no prompt (placing one makes a batch first).
        b, length = (0, 0) if tokens is None else (tokens.shape[0], cache.max_len)
        logits = None
        if rows is not None:
            positions = np.asarray(rows["positions"], np.int32)
            if masked:
                logits, cache = self._run(("forward", b, length), self.params, tokens, cache, positions)
            else:
                active = np.asarray(rows["active"], np.bool_)
                tokens, cache = self._run(("decode", b, length), self.params, tokens, cache, positions, active, _rows(rows))
        elif masked:
            logits = jnp.zeros((b, self.vocab), jnp.float32)
        group: list[_Packed] = []  # prompts whose last chunk waits to run with the others

        def place(slot: int, row: dict[str, Sequence[Any]], scratch: Any, chunk_logits: Any) -> None:
            nonlocal tokens, cache, logits
            if masked:
                logits, cache = self._run(("insert_logits", b, length, scratch.max_len), logits, cache, scratch, chunk_logits, np.int32(slot))
            else:
                tokens, cache = self._run(
                    ("insert", b, length, scratch.max_len), tokens, cache, scratch, chunk_logits, np.int32(slot), _rows(row)
                )

        def flush() -> None:
            nonlocal scratch, chunk_logits, kept
            if not group:
                return
            finals, row_logits = self._prefill_group(group)
            scratch = finals[scratch.index] if isinstance(scratch, _Row) else scratch
            kept = [finals[k.index] if isinstance(k, _Row) else k for k in kept]
            for packed, final, one in zip(group, finals, row_logits):
                place(*packed.insert, final, one)
            chunk_logits = row_logits[-1]
            group.clear()

        for ids, start, bucket, size, insert, rebucket, swap, copy in chunks:
            if swap is not None:
                kept += [None] * (swap + 1 - len(kept))
                scratch, kept[swap] = kept[swap], scratch
            packed = self._packable(group, ids, start, bucket, size, insert, rebucket, scratch if copy is None else kept[copy], copy is not None)
            if packed is not None:
                group.append(packed)
                scratch = _Row(len(group) - 1)  # holds this prompt once the group has run
                continue
            flush()
            if copy is not None:
                scratch = slot_steps.copy_scratch(kept[copy])
            if rebucket is not None:
                if scratch is None or scratch.max_len != rebucket:
                    raise RuntimeError(f"a prompt reuses a scratch of {rebucket} positions that is not there")
                scratch = self._rebucket(scratch, rebucket, bucket)
            elif scratch is None or scratch.max_len != bucket:
                if start > 0:
                    raise RuntimeError(f"a chunk at position {start} continues a prompt the scratch does not hold")
                scratch = self._empty_scratch(bucket)
            padded = np.zeros((1, size), np.int32)
            padded[0, : len(ids)] = ids
            chunk_logits, scratch = self._run(
                ("prefill", bucket, size), self.params, scratch, padded, np.int32(start), np.int32(len(ids) - 1)
            )
            if insert is not None:
                place(*insert, scratch, chunk_logits)
        flush()
        return SlotState(tokens, cache, scratch, chunk_logits, logits, tuple(kept))

    def packed_rows(self, bucket: int, size: int) -> int:
        """How many prompts' last chunks of `size` in `bucket` one pass can prefill now (the most
        rows of a compiled `prefill_rows` program), 0 where none is compiled."""
        if self.steps.prefill_rows is None:
            return 0
        return max((rows for rows in PACKED_ROWS if self._compiled(("prefill_rows", bucket, size, rows))), default=0)

    def _packable(
        self, group: list[_Packed], ids: Sequence[int], start: int, bucket: int, size: int, insert: Any,
        rebucket: int | None, source: Any, borrowed: bool,
    ) -> _Packed | None:
        """The chunk as one more row of `group`, or None where it must run on its own: it ends no
        prompt, is of another bucket than the group, or continues a prompt of the group past where
        that one started (its own prefill would read that prompt's new positions), or from another
        bucket. Where it continues one that started later or as late, the positions it reads are
        that prompt's before the group runs, so it starts from those. A scratch from another
        bucket is moved first (into a new one; the one it came from stays)."""
        if insert is None:
            return None
        if group and group[0].bucket != bucket:
            return None
        # Chunks of one bucket share the longest one's size: a shorter chunk's padding writes
        # and attends nothing, and the products skip it.
        if len(group) >= self.packed_rows(bucket, max([size, *(packed.size for packed in group)])):
            return None
        if isinstance(source, _Row):
            earlier = group[source.index]
            if start > earlier.start or rebucket is not None:
                return None
            source, borrowed = earlier.initial, True
        if rebucket is not None:
            if source is None or source.max_len != rebucket:
                return None  # the sequential path says why
            source, borrowed = self._rebucket(source, rebucket, bucket), False  # a new scratch
        if source is None or source.max_len != bucket:
            if start > 0:
                return None  # the sequential path says why
            source, borrowed = self._empty_scratch(bucket), False
        return _Packed(source, borrowed, list(ids), start, bucket, size, insert)

    def _prefill_group(self, group: list[_Packed]) -> tuple[list[Any], list[Any]]:
        """Each prompt of `group` prefilled from its first scratch: their final scratches and
        logits [1, vocab], in one pass for two or more (padded with one-token rows up to a
        compiled program's rows), else alone."""
        first = group[0]
        size = max(packed.size for packed in group)
        rows = min((r for r in PACKED_ROWS if r >= len(group) and self._compiled(("prefill_rows", first.bucket, size, r))), default=0)
        fitting = next((r for r in PACKED_ROWS if r >= len(group)), PACKED_ROWS[-1])
        if len(group) > 1 and rows != fitting:
            # The pass for this many prompts compiles beside the streams, for the next group.
            self.ask("prefill_rows", first.bucket, size, fitting)
        if len(group) == 1 or not rows or rows > 2 * len(group):
            # The padding would cost more than it shares: two prompts in the 8-row pass took 92 ms,
            # one by one 62 ms, in a pass of two 50 ms (embedded model, 2-core Xeon).
            return self._prefill_each(group)
        ids = np.zeros((rows, size), np.int32)
        starts = np.zeros(rows, np.int32)
        lasts = np.zeros(rows, np.int32)
        for i, packed in enumerate(group):
            ids[i, : len(packed.ids)] = packed.ids
            starts[i], lasts[i] = packed.start, len(packed.ids) - 1
        initials = tuple(packed.initial for packed in group) + (first.initial,) * (rows - len(group))
        row_logits, finals = self._run(("prefill_rows", first.bucket, size, rows), self.params, initials, ids, starts, lasts)
        self.packed_prompts += len(group)
        return list(finals[: len(group)]), list(row_logits[: len(group)])

    def _prefill_each(self, group: list[_Packed]) -> tuple[list[Any], list[Any]]:
        """Each prompt of `group` prefilled on its own, in order: their final scratches and logits.
        Borrowed scratches are copied before any prefill donates the one they share."""
        initials = [slot_steps.copy_scratch(packed.initial) if packed.borrowed else packed.initial for packed in group]
        finals, logits = [], []
        for packed, scratch in zip(group, initials):
            padded = np.zeros((1, packed.size), np.int32)
            padded[0, : len(packed.ids)] = packed.ids
            one, scratch = self._run(
                ("prefill", packed.bucket, packed.size), self.params, scratch, padded, np.int32(packed.start),
                np.int32(len(packed.ids) - 1),
            )
            finals.append(scratch)
            logits.append(one)
        return finals, logits

    def extract(self, state: SlotState, row: int, into: int | None = None) -> SlotState:
        """`state` with row `row` of its batch's cache as the scratch, or as kept scratch `into`
        (of the cache's length): a finished reply's keys and values, for the next prompt to start
        from."""
        b, length = state.tokens.shape[0], state.cache.max_len
        slot = np.int32(row)
        if self.steps.compiled:
            scratch = self._adopt(("extract", b, length))(state.cache, slot)
        else:
            scratch = slot_steps.extract_row(state.cache, slot)
        if into is None:
            return state._replace(scratch=scratch)
        kept = list(state.kept) + [None] * (into + 1 - len(state.kept))
        kept[into] = scratch
        return state._replace(kept=tuple(kept))

    def _rebucket(self, scratch: Any, old: int, new: int) -> Any:
        """The scratch of `old` positions in one of `new` (padded, or cut: a prompt of the new
        bucket reuses only positions it holds), by the batch's resize over its one row."""
        tokens = jnp.full((1, self.width), slot_steps.NO_TOKEN, jnp.int32)
        rows = np.zeros(1, np.int32)
        if not self.steps.compiled:
            return self.steps.resize(tokens, scratch, rows, new)[1]
        return self._adopt(("rebucket", old, new))(tokens, scratch, rows)[1]

    def _empty_scratch(self, bucket: int) -> Any:
        """A fresh scratch for prompts of `bucket`: its program when warmed up, else the jitted
        function, which compiles on the engine's thread (0.1-0.2 s a bucket, a stall of every
        stream the first time a prompt of a new bucket arrives)."""
        if self.steps.compiled and self._compiled(("scratch", bucket)):
            return self._adopt(("scratch", bucket))()
        return self.steps.empty_scratch(bucket)

    def _resize(self, tokens: Any, cache: Any, source: Sequence[int], new_len: int) -> tuple[Any, Any]:
        """The batch's rows `source` in a cache of `new_len` positions: written into a spare of
        that shape when there is one and its program is compiled (see `spare_caches`); the old
        cache becomes a spare, and resizes to its shape start compiling their in-place form."""
        old = (tokens.shape[0], cache.max_len)
        new = (len(source), new_len)
        shape = (*old, *new)
        rows = np.asarray(source, np.int32)
        if new in self._spares and self._compiled(("resize_into", *shape)):
            resized = self._run(("resize_into", *shape), tokens, cache, rows, self._spares.take(new))
        else:
            resized = self._run(("resize", *shape), tokens, cache, rows)
        self._spares.keep(old, cache)
        if self.steps.compiled:
            # Ahead of the warm-up and not gated on idleness: a busy server would never get them,
            # and each takes one core for about 0.1 s where a resize into fresh pages took 0.5 s.
            with self._lock:
                targets = [key for key in self._programs if key[0] == "resize" and key[3:] == old]
                for key in targets:
                    into = ("resize_into", *key[1:])
                    if into not in self._programs and into not in self._pending:
                        self._pending[into] = _background().submit(URGENT, self._compile, into)
        return resized

    def sample(self, state: SlotState, rows: dict[str, Sequence[Any]], mask: np.ndarray) -> SlotState:
        """The split step's second half: every row's token under its packed mask [B, words]."""
        if state.logits is None:
            raise RuntimeError("sample() needs a masked step() first")
        tokens = self._run(("sample", state.tokens.shape[0]), state.logits, _rows(rows), mask)
        return state._replace(tokens=tokens, logits=None)


def common_programs(slots: int, cache_lens: Sequence[int], chunk_sizes: Sequence[int] = CHUNK_SIZES) -> list[tuple[Any, ...]]:
    """The programs a server with `slots` meets most, most likely first: one request's decode,
    prefill and insert, then each larger batch with the resize that reaches it, then smaller
    prefill chunks (taken while rows decode), shrinking, and the largest prompt bucket (each
    bucket with its scratch), growing and shrinking by several buckets at once, the scratch's
    moves, and the copy of a finished row. Short prompts' last chunks also get the pass that reads several at
    once, for as many as the slots. Each of the ascending `cache_lens` after the first also gets the
    resize that grows every batch's cache to it from the one before, as rows fill their caches.
    Shapes follow the batch loop's buckets (rows 1, 2, 4...; prompt buckets from the smallest
    chunk)."""
    batches = list(_powers(1, 1 << max(0, slots - 1).bit_length()))
    buckets = list(chunk_sizes)
    short = buckets[:-1] or buckets
    keys: list[tuple[Any, ...]] = []
    for shorter, length in zip([None, *cache_lens], cache_lens):
        grow = [] if shorter is None else [("resize", batch, shorter, batch, length) for batch in batches]
        keys += [("decode", 1, length), *grow[:1]]
        keys += [key for bucket in short for key in (("scratch", bucket), ("prefill", bucket, bucket))]
        keys += [("insert", 1, length, bucket) for bucket in short]
        for (smaller, batch), grown in zip(itertools.pairwise(batches), grow[1:] or [None] * len(batches)):
            keys += [("resize", smaller, length, batch, length), ("decode", batch, length)]
            keys += [] if grown is None else [grown]
            keys += [("insert", batch, length, bucket) for bucket in short]
    keys += [("prefill", bucket, chunk) for bucket in buckets for chunk in chunk_sizes if chunk < bucket]
    # Several short prompts arriving together are read in one pass (padded up to `packed`).
    packed = next((rows for rows in PACKED_ROWS if rows >= slots), PACKED_ROWS[-1])
    if slots > 1:
        keys += [("prefill_rows", bucket, chunk, packed) for bucket in short for chunk in chunk_sizes if chunk <= bucket]
    for length in cache_lens:
        keys += [("resize", batch, length, smaller, length) for smaller, batch in itertools.pairwise(batches)]
        keys += [("insert", batch, length, buckets[-1]) for batch in batches]
    # Shrinking by more than one bucket, when most rows of a batch end in one step (8 clients
    # with the same budget leave one or two rows running): 0.15-0.5 s compiles beside them.
    keys += [("resize", batch, length, smaller, length) for length in cache_lens
             for smaller, batch in itertools.combinations(batches, 2) if batch > 2 * smaller]
    # Growing by more than one bucket, when several clients join one or two running rows: a
    # fresh server's first 2 -> 8 copied its cache into fresh pages (0.19 s) while every stream
    # waited, and only then compiled its in-place form.
    keys += [("resize", smaller, length, batch, length) for length in cache_lens
             for smaller, batch in itertools.combinations(batches, 2) if batch > 2 * smaller]
    keys += [("scratch", buckets[-1]), ("prefill", buckets[-1], buckets[-1])]
    keys += _rebuckets(buckets)
    # A finished reply's scratch has the batch's cache length; a short prompt sharing its system
    # prompt moves it into its own bucket (while nothing decodes, it waited for that compile).
    keys += [("rebucket", cache_lens[0], bucket) for bucket in buckets if bucket < cache_lens[0]]
    keys += [("extract", batch, length) for length in cache_lens for batch in batches]
    return list(dict.fromkeys(keys))


def _rebuckets(buckets: Sequence[int]) -> list[tuple[Any, ...]]:
    """Moving the scratch between neighbouring prompt buckets, both ways: a conversation's next
    turn reuses its last prompt from the bucket below, and a new one reuses the system prompt a
    longer one left."""
    pairs = list(itertools.pairwise(buckets))
    return [("rebucket", a, b) for a, b in pairs] + [("rebucket", b, a) for a, b in pairs]


def long_prompt_programs(
    slots: int, running_len: int, longest: int, chunk_sizes: Sequence[int] = CHUNK_SIZES,
) -> list[tuple[Any, ...]]:
    """The programs a prompt longer than the largest chunk meets, for each prompt bucket up to
    `longest`, shortest first: its chunks' prefill at every size, then the batch it joins, with
    its cache grown to the bucket: alone (decode and insert at one row), or beside rows that
    decode at `running_len`, with or without a row more (the resize, decode and insert). A
    2,000-token prompt arriving while 4 streams ran compiled nine of these while they ran: on
    2 cores their gaps grew from 0.15 to 0.4 s. Each bucket also gets the moves of the scratch
    between it and the bucket below (`_rebuckets`), and each batch at its length the copy of a
    finished reply's row into the scratch."""
    batches = list(_powers(1, 1 << max(0, slots - 1).bit_length()))
    keys: list[tuple[Any, ...]] = []
    for bucket in _powers(2 * chunk_sizes[-1], longest):
        keys += [("scratch", bucket), *(("prefill", bucket, chunk) for chunk in chunk_sizes)]
        keys += [("decode", 1, bucket), ("insert", 1, bucket, bucket)]
        for batch in batches:
            grown = min(2 * batch, batches[-1])
            keys += [("resize", batch, running_len, grown, bucket), ("decode", grown, bucket), ("insert", grown, bucket, bucket)]
            keys += [("resize", batch, running_len, batch, bucket)]
        keys += _rebuckets([bucket // 2, bucket])
        keys += [("extract", batch, bucket) for batch in batches]
    return list(dict.fromkeys(keys))


def _powers(first: int, last: int) -> Iterator[int]:
    while first <= last:
        yield first
        first *= 2


# Compile order: what a step waits for, what a prompt on its way in will likely need, warm-up.
URGENT, AHEAD, WARM = 0, 1, 2


Gate = Callable[[], bool]


class _Compiler:
    """One thread compiles new shapes while the batch keeps running: programs a step waits for
    first, then those asked for ahead, then warm-up programs in the order queued, each only when
    its gate says so (its engine is idle), so warming up never takes a core from running
    streams. The thread runs at the lowest CPU priority (`_yield_to_steps`)."""

    def __init__(self) -> None:
        self._queue: list[tuple[int, int, Future[Any], Callable[..., Any], tuple[Any, ...], Gate | None]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lljx-slot-compile", daemon=True)
        self._thread.start()
        # XLA aborts the process when it is torn down mid-compile: let the current one finish.
        atexit.register(self.close)

    def close(self, timeout: float = 60.0) -> None:
        """Drop what is queued and wait for the compile in progress."""
        with self._ready:
            self._closed = True
            for entry in self._queue:
                entry[2].cancel()
            self._queue.clear()
            self._ready.notify()
        self._thread.join(timeout)

    def submit(self, priority: int, function: Callable[..., Any], *args: Any, gate: Gate | None = None) -> Future[Any]:
        future: Future[Any] = Future()
        if self._closed:
            future.cancel()
            return future
        self._push(priority, future, function, args, gate)
        return future

    def hurry(self, future: Future[Any]) -> None:
        """Move a queued warm-up or asked-ahead item ahead of the others, past any gate (its
        older entry is skipped later)."""
        with self._ready:
            entries = [entry for entry in self._queue if entry[2] is future]
            if entries and all(entry[0] != URGENT for entry in entries):
                _, _, _, function, args, _ = entries[0]
                self._push(URGENT, future, function, args, None)

    def _push(
        self, priority: int, future: Future[Any], function: Callable[..., Any], args: tuple[Any, ...], gate: Gate | None
    ) -> None:
        with self._ready:
            heapq.heappush(self._queue, (priority, next(self._order), future, function, args, gate))
            self._ready.notify()

    def _next(self) -> tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None:
        """The next item to compile (None once closed), waiting while the first one's gate is shut."""
        with self._ready:
            while not self._closed:
                if not self._queue:
                    self._ready.wait()
                    continue
                _, _, future, function, args, gate = self._queue[0]
                if future.running() or future.done():
                    heapq.heappop(self._queue)  # a hurried item's older entry, or one cancelled
                elif gate is None or gate():
                    heapq.heappop(self._queue)
                    return future, function, args
                else:
                    self._ready.wait(0.05)  # the engine is busy: look again shortly
        return None

    def _run(self) -> None:
        _yield_to_steps()
        while (item := self._next()) is not None:
            future, function, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # noqa: BLE001 - the step that waits for it raises it
                future.set_exception(error)


def _yield_to_steps() -> None:
    """The idle CPU class for the calling (compile) thread and the threads it starts, or the
    lowest priority where that is refused: a compile takes a core for a second or more, and on
    a small machine the running streams' steps need every core (2 cores, a 2,000-token prompt
    arriving while 4 streams ran: the streams' gaps grew from 0.1 to 0.3-1.9 s while its
    programs compiled at normal priority, and to 0.4-0.7 s at nice 19, which still takes a core
    whenever a step's threads wait a moment; an idle-class thread runs only on a free core)."""
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, 19)
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: compiles share the cores as before


_BACKGROUND: _Compiler | None = None
_BACKGROUND_LOCK = threading.Lock()


def _background() -> _Compiler:
    global _BACKGROUND
    with _BACKGROUND_LOCK:
        if _BACKGROUND is None:
            _BACKGROUND = _Compiler()
        return _BACKGROUND
