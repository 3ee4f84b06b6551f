"""A decoder built from a jitted prefill and decode pair, compiled ahead of time per static shape."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from lljx.config import ModelConfig
from lljx.params import Params
from lljx.sampling import SamplerSettings, make_sampler
from lljx.strategies.api import DecodePlan, DecodeState
from lljx.strategies.eager import check_structure, pad_prompt
from lljx.strategies.steps import decode_step, prefill_step

if TYPE_CHECKING:
    from lljx.models import Model

Executable = Any  # jax.stages.Compiled


class CompiledDecoder:
    """Runs `prefill(params, padded_ids, prompt_len, key, knobs)` and `decode(params, *state)`.

    Both are jitted by the strategy; here they are lowered and compiled once per shape
    (prefill per prompt bucket and cache length, decode per cache length) so compile time
    is counted apart from generation, and a new prompt in a seen bucket never recompiles.
    """

    def __init__(
        self,
        params: Params,
        sampler: SamplerSettings,
        prefill: Callable[..., DecodeState],
        decode: Callable[..., DecodeState],
    ) -> None:
        self.params = params
        self.settings = sampler
        self._prefill_jit = prefill
        self._decode_jit = decode
        self._prefills: dict[tuple[int, int, int], Executable] = {}
        self._decodes: dict[tuple[int, int], Executable] = {}
        self._decode_exec: Executable | None = None
        self.compile_seconds = 0.0
        self.compilations = 0

    def prepare(self, plan: DecodePlan, batch: int = 1) -> None:
        """Compile what `plan` needs, unless already compiled; adds to compile_seconds."""
        prefill_key = (batch, plan.prompt_bucket, plan.cache_len)
        if prefill_key in self._prefills and (batch, plan.cache_len) in self._decodes:
            return
        start = time.perf_counter()
        ids = jax.ShapeDtypeStruct((batch, plan.prompt_bucket), jnp.int32)
        lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
        key = jax.eval_shape(jax.random.key, 0)
        knobs = jax.tree.map(lambda x: jax.ShapeDtypeStruct((), jnp.float32), self.settings.knobs())
        if prefill_key not in self._prefills:
            lowered = self._prefill_jit.lower(plan.cache_len, self.params, ids, lengths, key, knobs)  # type: ignore[attr-defined]
            self._prefills[prefill_key] = lowered.compile()
            self.compilations += 1
        if (batch, plan.cache_len) not in self._decodes:
            state = jax.eval_shape(self._prefill_jit, plan.cache_len, self.params, ids, lengths, key, knobs)
            lowered = self._decode_jit.lower(self.params, *state)  # type: ignore[attr-defined]
            self._decodes[(batch, plan.cache_len)] = lowered.compile()
            self.compilations += 1
        self.compile_seconds += time.perf_counter() - start

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> DecodeState:
        settings = check_structure(self.settings, settings)
        padded, lengths = pad_prompt(prompt_ids, plan)
        batch = padded.shape[0]
        self.prepare(plan, batch)
        self._decode_exec = self._decodes[(batch, plan.cache_len)]
        run = self._prefills[(batch, plan.prompt_bucket, plan.cache_len)]
        return run(self.params, padded, lengths, jax.random.key(settings.seed), settings.knobs())

    def decode(self, previous: DecodeState) -> DecodeState:
        if self._decode_exec is None:
            raise RuntimeError("decode() called before prefill()")
        return self._decode_exec(self.params, *previous)


def per_token_decoder(
    model: Model, sampler: SamplerSettings, *, params: Params | None = None, config: ModelConfig | None = None,
    **layer_options: int,
) -> CompiledDecoder:
    """One jit around transform + sampler per token: `prefill_step` and `decode_step` with the cache donated.

    `params` and `config` replace the model's (a strategy's own layout, e.g. stacked layers,
    or f32 activations) and `layer_options` (scan_layers, scan_unroll) pass through to the transformer.
    """
    config = config or model.config
    sample = make_sampler(sampler, config.vocab_size)
    prefill = jax.jit(partial(prefill_step, config, sample, **layer_options), static_argnums=(0,))
    # The cache (argument 2 after params and tokens) is donated: XLA updates it in place, never copies it.
    decode = jax.jit(partial(decode_step, config, sample, **layer_options), donate_argnums=(2,))
    return CompiledDecoder(model.params if params is None else params, sampler, prefill, decode)
