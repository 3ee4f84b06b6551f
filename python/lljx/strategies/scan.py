"""Strategy: layers stacked and run under `lax.scan` inside one jit per token (flat compile time in depth)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import jax

from lljx.params import stack_layers
from lljx.sampling import SamplerSettings, make_sampler
from lljx.strategies.compiled import CompiledDecoder
from lljx.strategies.steps import decode_step, prefill_step

if TYPE_CHECKING:
    from lljx.models import Model


class Scan:
    name = "scan"
    description = "one jit per token with the layers stacked under lax.scan (one compiled layer body)"

    def build(self, model: Model, sampler: SamplerSettings) -> CompiledDecoder:
        config = model.config
        sample = make_sampler(sampler, config.vocab_size)
        # A stacked copy of the layer weights, made once here; scan slices it per iteration.
        params = model.params._replace(layers=stack_layers(model.params.layers))
        prefill = jax.jit(partial(prefill_step, config, sample, scan_layers=True), static_argnums=(0,))
        decode = jax.jit(partial(decode_step, config, sample, scan_layers=True), donate_argnums=(2,))
        return CompiledDecoder(params, sampler, prefill, decode)


strategy = Scan()
