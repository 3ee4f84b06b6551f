"""Strategy: one jit per token around the whole transform and the sampler (layers unrolled)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import jax

from lljx.sampling import SamplerSettings, make_sampler
from lljx.strategies.compiled import CompiledDecoder
from lljx.strategies.steps import decode_step, prefill_step

if TYPE_CHECKING:
    from lljx.models import Model


class JitPerToken:
    name = "jit-token"
    description = "one jit per token around transform + sampler, layers unrolled"

    def build(self, model: Model, sampler: SamplerSettings) -> CompiledDecoder:
        config = model.config
        sample = make_sampler(sampler, config.vocab_size)
        prefill = jax.jit(partial(prefill_step, config, sample), static_argnums=(0,))
        # The cache (argument 2) is donated: XLA updates it in place instead of copying it per token.
        decode = jax.jit(partial(decode_step, config, sample), donate_argnums=(2,))
        return CompiledDecoder(model.params, sampler, prefill, decode)


strategy = JitPerToken()
