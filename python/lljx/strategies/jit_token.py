"""Strategy: one jit per token around the whole transform and the sampler (layers unrolled)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from lljx.sampling import SamplerSettings, make_sampler
from lljx.strategies.api import DecodePlan, DecodeState
from lljx.strategies.steps import decode_step, prefill_step

if TYPE_CHECKING:
    from lljx.models import Model


class JitPerTokenDecoder:
    def __init__(self, model: Model, sampler: SamplerSettings, *, scan_layers: bool = False) -> None:
        config = model.config
        self.params = model.params
        self.settings = sampler
        sample = make_sampler(sampler, config.vocab_size)
        self._prefill = jax.jit(
            partial(prefill_step, config, sample, scan_layers=scan_layers), static_argnums=(0,)
        )
        # The cache (argument 2) is donated: XLA updates it in place instead of copying it per token.
        self._decode = jax.jit(partial(decode_step, config, sample, scan_layers=scan_layers), donate_argnums=(2,))

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan) -> DecodeState:
        ids = np.atleast_2d(np.asarray(prompt_ids, dtype=np.int32))
        padded = np.zeros((ids.shape[0], plan.prompt_bucket), dtype=np.int32)
        padded[:, : ids.shape[1]] = ids
        prompt_len = np.full((ids.shape[0],), ids.shape[1], dtype=np.int32)
        key = jax.random.key(self.settings.seed)
        return self._prefill(plan.cache_len, self.params, jnp.asarray(padded), jnp.asarray(prompt_len), key)

    def decode(self, previous: DecodeState) -> DecodeState:
        return self._decode(self.params, previous.tokens, previous.cache, previous.position, previous.key)


class JitPerToken:
    name = "jit-token"
    description = "one jit per token around transform + sampler, layers unrolled"

    def build(self, model: Model, sampler: SamplerSettings) -> JitPerTokenDecoder:
        return JitPerTokenDecoder(model, sampler)


strategy = JitPerToken()
