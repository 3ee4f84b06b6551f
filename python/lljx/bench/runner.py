"""Run systems over prompts: warm each up once, then prompts x repeats, one row per run, every rate guarded.

A system is anything with `warm_up()` and `run(prompt)` returning a `Stats` in the units
lljx's Rust loop reports; lljx strategies are systems here, the peers live in peers.py.
Greedy runs keep the model's stop tokens (a chat model must not run past its end of turn),
so a reply may be shorter than the budget: rows record gen_tokens, and every rate counts
what was actually generated. A rate with nothing measurable behind it is None, never 0 or inf.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import jax
import numpy as np

from lljx.generation import Generation, Stats, rate
from lljx.sampling import SamplerSettings

if TYPE_CHECKING:
    from lljx.models import Model

# The measurement protocol's columns, in this order, then the extras.
COLUMNS = (
    "system", "prompt_id", "prompt_tokens", "gen_tokens", "ttft_s", "prefill_tps", "decode_tps", "e2e_tps",
    "compile_s", "dtype", "model", "threads", "repeat",
)
EXTRA_COLUMNS = (
    "kind", "load_s", "warmup_s", "row_compile_s", "tokens_read", "stop_reason", "prefill_s", "decode_s", "total_s",
    # Ollama's own numbers (None for other systems): the server-side view beside the client clock.
    "eval_count", "eval_duration_s", "prompt_eval_count", "prompt_eval_duration_s", "server_decode_tps",
    "server_prefill_tps",
    # Constrained runs (`--schema`): compiling or finding the grammar, and its mask time per token.
    "grammar_ms", "mask_p50_us", "mask_p99_us",
)
ALL_COLUMNS = COLUMNS + EXTRA_COLUMNS

WARMUP_TOKENS = 16  # enough decode steps to run every compiled executable once


@dataclass(frozen=True)
class Prompt:
    id: int
    text: str
    ids: tuple[int, ...]  # the chat-templated token ids lljx runs; llama.cpp gets the same


@dataclass
class Measurement:
    """One run of one prompt: timings in the Stats units, plus columns only some systems have."""

    stats: Stats
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Readiness:
    """What getting a system ready cost, kept out of every rate."""

    load_s: float = 0.0  # weights into memory
    compile_s: float = 0.0  # XLA compile (lljx); load plus a first short generation (llama.cpp, Ollama)
    warmup_s: float = 0.0  # the whole warm-up, wall clock


class System(Protocol):
    name: str
    kind: str
    dtype: str
    model: str
    threads: int | None

    def warm_up(self) -> Readiness: ...

    def run(self, prompt: Prompt) -> Measurement: ...

    def close(self) -> None: ...


def measured_rate(value: float) -> float | None:
    """None where `rate` found too little to time (one token, a sub-microsecond span)."""
    # A summary must not average a non-measurement in as 0 tok/s.
    return value if value > 0 else None


def make_row(system: System, ready: Readiness, prompt: Prompt, repeat: int, measured: Measurement) -> dict[str, Any]:
    s = measured.stats
    row: dict[str, Any] = {column: None for column in ALL_COLUMNS}
    row.update(
        system=system.name, prompt_id=prompt.id, prompt_tokens=s.prompt_tokens, gen_tokens=s.gen_tokens,
        ttft_s=s.ttft_ns / 1e9, prefill_tps=measured_rate(s.prefill_tps), decode_tps=measured_rate(s.decode_tps),
        e2e_tps=measured_rate(rate(s.gen_tokens, s.total_ns)),
        compile_s=ready.compile_s, dtype=system.dtype, model=system.model, threads=system.threads, repeat=repeat,
        kind=system.kind, load_s=ready.load_s, warmup_s=ready.warmup_s, row_compile_s=s.compile_ns / 1e9,
        tokens_read=s.tokens_read, stop_reason=s.stop_reason,
        prefill_s=s.prefill_ns / 1e9, decode_s=s.decode_ns / 1e9, total_s=s.total_ns / 1e9,
    )
    if s.mask_ns:
        row.update(grammar_ms=s.grammar_ns / 1e6, mask_p50_us=s.mask_p50_ns / 1e3, mask_p99_us=s.mask_p99_ns / 1e3)
    row.update(measured.extra)
    return row


Progress = Callable[[Prompt, int], None]


def run_system(
    system: System, prompts: Sequence[Prompt], repeat: int, progress: Progress | None = None
) -> Iterator[dict[str, Any]]:
    """Warm up, then yield a row per prompt per repeat (repeat-major, so repeats see a warm machine alike)."""
    ready = system.warm_up()
    # JAX, the model and its compiled programs stay for the run: a full collection walking them
    # mid-run would land in some prompt's timings.
    gc.collect()
    gc.freeze()
    for r in range(repeat):
        for prompt in prompts:
            if progress is not None:
                progress(prompt, r)
            yield make_row(system, ready, prompt, r, system.run(prompt))


def wait_for_device() -> None:
    """Return once the device has run everything dispatched so far.

    The token loop dispatches a decode call ahead of the tokens it reads, so a run can end
    with one call still computing that nobody needs (a whole 8-token loop for fused-loop);
    left alone it would delay the next prompt's prefill. XLA runs a device's computations
    in the order they were dispatched, so a trivial one queued now finishes last.
    """
    jax.block_until_ready(_increment(np.int32(0)))


@jax.jit
def _increment(x: jax.Array) -> jax.Array:
    return x + 1


SCHEMA_SUFFIX = "+schema"


class StrategySystem:
    """An lljx strategy on an already loaded model, greedy, through the Rust token loop; with a
    `schema`, every reply is constrained to it (the system is named `<strategy>+schema`)."""

    kind = "strategy"

    def __init__(
        self, name: str, model: Model, *, prompts: Sequence[Prompt], warmup: Prompt, max_tokens: int,
        seed: int, threads: int, load_s: float, schema: dict[str, Any] | None = None,
    ) -> None:
        self.strategy = name
        self.name = name + (SCHEMA_SUFFIX if schema is not None else "")
        self.schema = schema
        self.model_ = model
        from lljx.strategies import registry

        self.dtype = registry.weights_dtype(registry.load(name), model)
        self.model = model.name
        self.file = model.path
        self.threads = threads
        self.prompts = prompts
        self.warmup = warmup
        self.max_tokens = max_tokens
        self.settings = SamplerSettings(temperature=0.0, seed=seed)
        self.load_s = load_s
        self.decoder: Any = None

    def generation(self, prompt: Prompt, max_tokens: int) -> Generation:
        from lljx.structured import compile_schema

        # Compiled per run like a server request's (after the first, a cache lookup), inside the timings.
        grammar = None if self.schema is None else compile_schema(self.model_, self.schema)
        return Generation(
            self.model_, self.decoder, prompt.ids, max_tokens=max_tokens,
            stop_token_ids=self.model_.stop_token_ids, settings=self.settings, grammar=grammar,
        )

    def warm_up(self) -> Readiness:
        from lljx.strategies import registry

        self.decoder = registry.build(registry.load(self.strategy), self.model_, self.settings)
        start = time.perf_counter()
        # Compile every shape the prompts need (constructing a Generation compiles, iterating runs),
        # then run each executable once.
        for prompt in self.prompts:
            self.generation(prompt, self.max_tokens).close()
        for _ in self.generation(self.warmup, min(self.max_tokens, WARMUP_TOKENS)):
            pass
        wait_for_device()
        return Readiness(self.load_s, self.decoder.compile_seconds, time.perf_counter() - start)

    def run(self, prompt: Prompt) -> Measurement:
        generation = self.generation(prompt, self.max_tokens)
        for _ in generation:
            pass
        wait_for_device()  # outside the timed loop: the next prompt starts on an idle device
        return Measurement(generation.stats)

    def close(self) -> None:
        self.decoder = None  # drop the compiled executables before the next system compiles its own
