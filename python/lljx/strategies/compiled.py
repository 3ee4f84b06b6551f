"""A decoder built from a jitted prefill and decode pair, compiled ahead of time per static shape."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from lljx.config import ModelConfig
from lljx.params import Params
from lljx.sampling import SamplerSettings, make_sampler
from lljx.strategies.api import DecodePlan, DecodeState, LogitsState
from lljx.strategies.eager import check_structure, pad_prompt
from lljx.strategies.split import SplitStep, jitted_split, require_split, sampled
from lljx.strategies.steps import decode_step, initial_key, prefill_step

if TYPE_CHECKING:
    from lljx.models import Model

Executable = Any  # jax.stages.Compiled

# XLA:CPU options for a program whose first run matters most (see `prepare_prefill_first`).
FIRST_RUN_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}
# Up to this prompt bucket the first prefill runs faster without YNN fusions (embedded model,
# 2-core VM, first run with / without: 32 tokens 0.34 / 0.12 s f32, 0.41 / 0.21 s bf16; 128
# tokens 0.56 / 0.24 f32, 0.55 / 0.34 bf16, 0.73 / 0.33 int8); at 512 bf16 YNN wins (1.07 / 1.15).
FIRST_RUN_MAX_BUCKET = 128


class CompiledDecoder:
    """Runs `prefill(params, padded_ids, prompt_len, key, knobs)` and `decode(params, *state)`.

    Both are jitted by the strategy; here they are lowered and compiled once per shape
    (prefill per prompt bucket and cache length, decode per cache length) so compile time
    is counted apart from generation, and a new prompt in a seen bucket never recompiles.
    The split step of constrained generation (`split`, jitted too) is compiled the same way,
    only when a constrained generation first needs it, so unconstrained ones never pay for it.
    """

    def __init__(
        self,
        params: Params,
        sampler: SamplerSettings,
        prefill: Callable[..., DecodeState],
        decode: Callable[..., DecodeState],
        split: SplitStep | None = None,
    ) -> None:
        self.params = params
        self.settings = sampler
        self._prefill_jit = prefill
        self._decode_jit = decode
        self._split = split
        self._prefills: dict[tuple[int, int, int], Executable] = {}
        self._decodes: dict[tuple[int, int], Executable] = {}
        # The split step's programs: prefill per (batch, bucket, cache), forward per (batch, cache), sample per batch.
        self._split_prefills: dict[tuple[int, int, int], Executable] = {}
        self._forwards: dict[tuple[int, int], Executable] = {}
        self._samples: dict[int, Executable] = {}
        self._forward_exec: Executable | None = None
        self._sample_exec: Executable | None = None
        self._pending: dict[tuple[int, int], Future[Executable]] = {}
        self._deferred: dict[tuple[int, int], DecodePlan] = {}
        self._decode_key: tuple[int, int] | None = None
        self._decode_exec: Executable | None = None
        self._lock = threading.Lock()
        self._counts_into: CompiledDecoder = self
        self.compile_seconds = 0.0
        self.compilations = 0

    def prepare(self, plan: DecodePlan, batch: int = 1, *, masked: bool = False) -> None:
        """Compile what `plan` needs (`masked`: the split step), unless already compiled; adds to compile_seconds."""
        if masked:
            self._prepare_split(plan, batch)
            return
        self._prepare_prefill(plan, batch)
        key = (batch, plan.cache_len)
        self._deferred.pop(key, None)
        if key not in self._decodes:
            self._decodes[key] = self._pending.pop(key).result() if key in self._pending else self._compile_decode(plan, batch)

    def prepare_prefill_first(self, plan: DecodePlan, batch: int = 1, *, decode: bool = True) -> None:
        """Compile the prefill now and the decode step on a background thread, so the first token
        does not wait for the second program (process start to first token); `decode` waits for it.
        With `decode` False (a one-token budget, or weights still loading) no decode step is started.

        A short prompt's prefill is compiled for a quick first run: without XLA:CPU's YNN
        fusions, whose one-time setup on a program's first run costs more than they save on a
        prompt run once (see FIRST_RUN_MAX_BUCKET)."""
        quick = plan.prompt_bucket <= FIRST_RUN_MAX_BUCKET
        self._prepare_prefill(plan, batch, compiler_options=FIRST_RUN_OPTIONS if quick else None)
        key = (batch, plan.cache_len)
        if key in self._decodes or key in self._pending:
            return
        if decode:
            self._deferred.pop(key, None)
            self._pending[key] = _background().submit(self._compile_decode, plan, batch)
        else:
            self._deferred[key] = plan  # compiled by the first decode() that needs it

    def adopt_programs(self, early: CompiledDecoder) -> bool:
        """Take the programs `early` (the same strategy, built on shapes-only weights while the
        real ones loaded) compiled, if its weights have exactly this decoder's pytree, shapes
        and dtypes; says whether it did. Their compile time is added to this decoder's."""

        def avals(params: Params) -> Any:
            return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), params)

        if jax.tree.structure(early.params) != jax.tree.structure(self.params) or avals(early.params) != avals(self.params):
            return False
        self._prefills.update(early._prefills)
        self._decodes.update(early._decodes)
        self._split_prefills.update(early._split_prefills)
        self._forwards.update(early._forwards)
        self._samples.update(early._samples)
        self._pending.update(early._pending)
        self._deferred.update(early._deferred)
        with early._lock:
            # A decode step still compiling in the background counts here when it finishes.
            early._counts_into = self
            seconds, programs = early.compile_seconds, early.compilations
        self._count(seconds, programs)
        return True

    def _prepare_prefill(self, plan: DecodePlan, batch: int, compiler_options: dict[str, Any] | None = None) -> None:
        key = (batch, plan.prompt_bucket, plan.cache_len)
        if key in self._prefills:
            return
        start = time.perf_counter()
        lowered = self._prefill_jit.lower(plan.cache_len, self.params, *self._prefill_shapes(plan, batch))  # type: ignore[attr-defined]
        options = compiler_options if jax.default_backend() == "cpu" else None
        self._prefills[key] = lowered.compile(compiler_options=options)
        self._count(time.perf_counter() - start)

    def _compile_decode(self, plan: DecodePlan, batch: int) -> Executable:
        start = time.perf_counter()
        prefill = self._prefills.get((batch, plan.prompt_bucket, plan.cache_len))
        if prefill is not None:
            state = output_shapes(prefill)
        else:
            state = jax.eval_shape(self._prefill_jit, plan.cache_len, self.params, *self._prefill_shapes(plan, batch))
        compiled = self._decode_jit.lower(self.params, *state).compile()  # type: ignore[attr-defined]
        self._count(time.perf_counter() - start)
        return compiled

    def _prepare_split(self, plan: DecodePlan, batch: int) -> None:
        key, cached = (batch, plan.prompt_bucket, plan.cache_len), (batch, plan.cache_len)
        if key in self._split_prefills and cached in self._forwards and batch in self._samples:
            return
        start, programs = time.perf_counter(), 0
        shapes = self._prefill_shapes(plan, batch)
        split = require_split(self._split)
        if key not in self._split_prefills:
            self._split_prefills[key] = split.prefill.lower(plan.cache_len, self.params, *shapes).compile()  # type: ignore[attr-defined]
            programs += 1
        state = output_shapes(self._split_prefills[key])
        if cached not in self._forwards:
            tokens = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
            lowered = split.forward.lower(self.params, tokens, state.cache, state.position, state.key, state.knobs)  # type: ignore[attr-defined]
            self._forwards[cached] = lowered.compile()
            programs += 1
        if batch not in self._samples:
            mask = jax.ShapeDtypeStruct((batch, -(-state.logits.shape[-1] // 32)), jnp.uint32)
            self._samples[batch] = split.sample.lower(state.logits, state.key, state.knobs, mask).compile()  # type: ignore[attr-defined]
            programs += 1
        self._count(time.perf_counter() - start, programs)

    def _prefill_shapes(self, plan: DecodePlan, batch: int) -> tuple[Any, ...]:
        ids = jax.ShapeDtypeStruct((batch, plan.prompt_bucket), jnp.int32)
        lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
        key = jax.eval_shape(initial_key, 0)
        knobs = jax.tree.map(lambda x: jax.ShapeDtypeStruct((), jnp.float32), self.settings.knobs())
        return ids, lengths, key, knobs

    def _count(self, seconds: float, programs: int = 1) -> None:
        with self._lock:
            target = self._counts_into
            if target is self:
                self.compile_seconds += seconds
                self.compilations += programs
                return
        target._count(seconds, programs)

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> DecodeState:
        settings = check_structure(self.settings, settings)
        padded, lengths = pad_prompt(prompt_ids, plan)
        batch = padded.shape[0]
        key = (batch, plan.cache_len)
        if key in self._pending or key in self._deferred:
            self._prepare_prefill(plan, batch)
        else:
            self.prepare(plan, batch)
        self._decode_key = key
        self._decode_exec = self._decodes.get(key)
        run = self._prefills[(batch, plan.prompt_bucket, plan.cache_len)]
        return run(self.params, padded, lengths, initial_key(settings.seed), settings.knobs())

    def decode(self, previous: DecodeState) -> DecodeState:
        if self._decode_exec is None:
            if self._decode_key is None:
                raise RuntimeError("decode() called before prefill()")
            key = self._decode_key
            pending = self._pending.pop(key, None)
            if pending is not None:
                self._decodes[key] = pending.result()
            elif key in self._deferred:
                self._decodes[key] = self._compile_decode(self._deferred.pop(key), key[0])
            self._decode_exec = self._decodes[key]
        return self._decode_exec(self.params, *previous)

    def prefill_logits(
        self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None
    ) -> LogitsState:
        settings = check_structure(self.settings, settings)
        padded, lengths = pad_prompt(prompt_ids, plan)
        batch = padded.shape[0]
        self._prepare_split(plan, batch)
        self._forward_exec = self._forwards[(batch, plan.cache_len)]
        self._sample_exec = self._samples[batch]
        run = self._split_prefills[(batch, plan.prompt_bucket, plan.cache_len)]
        return run(self.params, padded, lengths, initial_key(settings.seed), settings.knobs())

    def forward(self, previous: DecodeState) -> LogitsState:
        if self._forward_exec is None:
            raise RuntimeError("forward() called before prefill_logits()")
        return self._forward_exec(self.params, *previous)

    def sample(self, state: LogitsState, mask: np.ndarray) -> DecodeState:
        if self._sample_exec is None:
            raise RuntimeError("sample() called before prefill_logits()")
        tokens, key = self._sample_exec(state.logits, state.key, state.knobs, mask)
        return sampled(state, tokens, key)

    def force(self, state: LogitsState, tokens: np.ndarray) -> DecodeState:
        return sampled(state, tokens, state.key)


def output_shapes(executable: Executable) -> Any:
    """A compiled program's outputs as shapes with their shardings, to lower the programs that take them.

    On a device mesh the shardings matter: `jax.eval_shape` knows none, and a program lowered
    from its shapes alone would expect its inputs on one device."""
    return jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=o.sharding), executable.out_info)


_BACKGROUND: ThreadPoolExecutor | None = None


def _background() -> ThreadPoolExecutor:
    """One thread for compiles that run while the first token is computed."""
    global _BACKGROUND
    if _BACKGROUND is None:
        _BACKGROUND = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lljx-compile")
    return _BACKGROUND


def per_token_decoder(
    model: Model, sampler: SamplerSettings, *, params: Params | None = None, config: ModelConfig | None = None,
    argmax: Callable[[jax.Array], jax.Array] | None = None, **layer_options: int,
) -> CompiledDecoder:
    """One jit around transform + sampler per token: `prefill_step` and `decode_step` with the cache donated.

    `params` and `config` replace the model's (a strategy's own layout, e.g. stacked layers,
    or f32 activations), `argmax` replaces greedy sampling's `jnp.argmax`, and `layer_options` (scan_layers, scan_unroll) pass through to the transformer.
    """
    config = config or model.config
    sample = make_sampler(sampler, config.vocab_size, argmax=argmax)
    prefill = jax.jit(partial(prefill_step, config, sample, **layer_options), static_argnums=(0,))
    # The cache (argument 2 after params and tokens) is donated: XLA updates it in place, never copies it.
    decode = jax.jit(partial(decode_step, config, sample, **layer_options), donate_argnums=(2,))
    split = jitted_split(config, sample, **layer_options)
    return CompiledDecoder(model.params if params is None else params, sampler, prefill, decode, split)
