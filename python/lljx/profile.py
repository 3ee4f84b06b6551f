"""Profile a strategy's generation path with pyinstrument (and optionally jax.profiler), compiled beforehand.

The Rust token loop reads tokens back with `block_until_ready` and `numpy.asarray`, both
native calls a sampling profiler cannot see: the wait would land on whatever Python frame
drives the loop. So the decoder is wrapped in `ProbedDecoder`, whose token arrays
(`DeviceTokens`) do the same two calls from named Python methods. Nothing else changes:
the same strategy, decoder, `Generation` and Rust loop that `generate` and `bench` run.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from lljx import parallel
from lljx.generation import Generation, Stats, chat_prompt_ids
from lljx.sampling import SamplerSettings
from lljx.strategies import registry
from lljx.strategies.api import DecodePlan, Decoder, DecodeState

if TYPE_CHECKING:
    import jax
    from pyinstrument.session import Session

    from lljx.models import Model
    from lljx.strategies.api import Strategy

# Greedy with a fixed seed, as `bench` runs strategies, so a profile and a bench row describe the same work.
SETTINGS = SamplerSettings(temperature=0.0, seed=0)


def builtin_prompts() -> tuple[str, ...]:
    """The benchmark's built-in prompts, so `profile` and `bench` ask the same questions."""
    from lljx.bench.prompts import BUILTIN

    return tuple(BUILTIN)


class DeviceTokens:
    """Token ids still on the device; the token loop's readback calls run in these named frames."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def block_until_ready(self) -> DeviceTokens:
        """Waiting for the device: everything dispatched so far finishes inside this frame."""
        self.array.block_until_ready()
        return self

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The copy to the host, after the wait."""
        return np.asarray(self.array, dtype=dtype)


class ProbedDecoder:
    """A strategy's decoder whose results carry `DeviceTokens`, so readback shows up in profiles."""

    def __init__(self, inner: Decoder) -> None:
        self.inner = inner

    @property
    def compile_seconds(self) -> float:
        return self.inner.compile_seconds

    @compile_seconds.setter
    def compile_seconds(self, value: float) -> None:
        self.inner.compile_seconds = value

    def prepare(self, plan: DecodePlan, batch: int = 1) -> None:
        self.inner.prepare(plan, batch)

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> DecodeState:
        return expose(self.inner.prefill(prompt_ids, plan, settings))

    def decode(self, previous: DecodeState) -> DecodeState:
        tokens = previous.tokens
        inner_tokens = tokens.array if isinstance(tokens, DeviceTokens) else tokens
        return expose(self.inner.decode(previous._replace(tokens=inner_tokens)))


def expose(state: DecodeState) -> DecodeState:
    # The token loop needs only shape, block_until_ready and __array__ of `tokens`, which DeviceTokens has.
    return state._replace(tokens=cast("jax.Array", DeviceTokens(state.tokens)))


@dataclass
class StrategyProfile:
    """One strategy's profiled run: the pyinstrument session, per-prompt Stats and what came before it."""

    strategy: str
    session: Session
    stats: list[Stats]
    compile_s: float
    warmup_s: float
    # Files of the strategy's own code (its module and its decoder's), as profile paths.
    own_files: list[str]
    jax_trace_dir: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gen_tokens(self) -> int:
        return sum(s.gen_tokens for s in self.stats)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens over the profiled wall time (prompt encoding and prefill included)."""
        return self.gen_tokens / self.session.duration if self.session.duration > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        rates = [s.decode_tps for s in self.stats if s.decode_tps > 0]
        return sum(rates) / len(rates) if rates else 0.0


def stream_tokens(generation: Generation) -> str:
    """Drive the Rust token loop. This frame's own time is the loop's native work: detokenizing, stop checks."""
    text = []
    for chunk in generation:  # a plain loop, not join(), so the loop's time stays in this frame
        text.append(chunk)  # noqa: PERF402
    return "".join(text)


def generate_one(model: Model, decoder: Decoder, prompt: str, max_tokens: int) -> Stats:
    """What `generate` does for one prompt: chat template, encode, run the loop."""
    ids = chat_prompt_ids(model, prompt)
    generation = Generation(
        model, decoder, ids, max_tokens=max_tokens, stop_token_ids=model.stop_token_ids, settings=SETTINGS
    )
    stream_tokens(generation)
    return generation.stats


def generate_all(model: Model, decoder: Decoder, prompts: Sequence[str], max_tokens: int) -> list[Stats]:
    """The profiled region: every prompt in turn, as `bench` runs them."""
    stats = []
    for prompt in prompts:  # a loop, not a comprehension, so no <listcomp> frame in the flamegraph
        stats.append(generate_one(model, decoder, prompt, max_tokens))
    return stats


def compile_and_warm(model: Model, decoder: Decoder, prompts: Sequence[str], max_tokens: int) -> None:
    """Compile every prompt's shapes (building a Generation compiles) and run one generation to warm caches."""
    for prompt in prompts:
        Generation(model, decoder, chat_prompt_ids(model, prompt), max_tokens=max_tokens, settings=SETTINGS).close()
    generate_one(model, decoder, prompts[0], max_tokens)


@contextlib.contextmanager
def jax_trace(directory: Path | None) -> Iterator[None]:
    """A jax.profiler trace with a Perfetto file, or nothing when no directory is given."""
    if directory is None:
        yield
        return
    import jax

    directory.mkdir(parents=True, exist_ok=True)
    options = jax.profiler.ProfileOptions()
    # jax's Python tracer and pyinstrument both need the interpreter's one profile hook, and
    # pyinstrument already covers Python; the trace keeps XLA's host and device events.
    options.python_tracer_level = 0
    with jax.profiler.trace(str(directory), create_perfetto_trace=True, profiler_options=options):
        yield


def own_files(strategy: Strategy, decoder: Decoder) -> list[str]:
    """The source files of the strategy object and of its decoder class: 'its own functions' live there."""
    from lljx.profile_report import portable_path

    files = []
    # On a CPU mesh the strategy's decoder comes wrapped (lljx.parallel.decoder): its own class is inside.
    for obj in (type(strategy), type(getattr(decoder, "inner", decoder))):
        with contextlib.suppress(TypeError, OSError):
            files.append(portable_path(inspect.getfile(obj)))
    return sorted(set(files))


def profile_strategy(
    model: Model,
    strategy: Strategy,
    prompts: Sequence[str],
    *,
    max_tokens: int,
    interval: float = 0.001,
    jax_trace_dir: Path | None = None,
) -> StrategyProfile:
    """Compile and warm up outside the profile, then profile `generate_all` over the prompts."""
    from pyinstrument import Profiler

    from lljx.profile_report import portable_session

    if not prompts:
        raise ValueError("at least one prompt is needed")
    if not interval > 0:
        raise ValueError(f"the sampling interval must be positive, got {interval}")
    inner = registry.build(strategy, model, SETTINGS)
    decoder = ProbedDecoder(inner)
    start = time.perf_counter()
    compile_and_warm(model, decoder, prompts, max_tokens)
    warmup_s = time.perf_counter() - start
    compile_s = decoder.compile_seconds

    description = f"lljx profile --strategy {strategy.name}: {len(prompts)} prompts x {max_tokens} tokens"
    profiler = Profiler(interval=interval, async_mode="disabled")
    with jax_trace(jax_trace_dir):
        profiler.start(target_description=description)
        try:
            stats = generate_all(model, decoder, prompts, max_tokens)
        finally:
            session = profiler.stop()
    compiled_inside = decoder.compile_seconds - compile_s
    profile = StrategyProfile(
        strategy=strategy.name,
        session=portable_session(session),
        stats=stats,
        compile_s=compile_s,
        warmup_s=warmup_s,
        own_files=own_files(strategy, inner),
        jax_trace_dir=jax_trace_dir,
    )
    profile.meta = {
        "strategy": strategy.name,
        "model": model.name,
        "dtype": model.config.dtype,
        "prompts": len(prompts),
        "max_tokens": max_tokens,
        "gen_tokens": profile.gen_tokens,
        "tokens_per_second": profile.tokens_per_second,
        "decode_tps": profile.decode_tps,
        "compile_s": compile_s,
        "compiled_inside_s": compiled_inside,
        "own_files": profile.own_files,
        "mesh": parallel.record(model.config),
    }
    return profile
