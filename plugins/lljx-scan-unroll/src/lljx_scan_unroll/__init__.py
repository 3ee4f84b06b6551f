"""The `scan-unroll` strategy: stacked layers under lax.scan with several layers unrolled per iteration."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax

from lljx.params import stack_layers
from lljx.sampling import SamplerSettings, make_sampler
from lljx.strategies import CompiledDecoder, decode_step, prefill_step

MAX_UNROLL = 6


def unroll_for(n_layers: int) -> int:
    """The largest divisor of n_layers up to MAX_UNROLL, so every scan iteration is the same size."""
    return max(u for u in range(1, min(MAX_UNROLL, n_layers) + 1) if n_layers % u == 0)


class ScanUnroll:
    name = "scan-unroll"
    description = "layers under lax.scan with several unrolled per iteration (a plugin package)"

    def build(self, model: Any, sampler: SamplerSettings) -> CompiledDecoder:
        config = model.config
        sample = make_sampler(sampler, config.vocab_size)
        options = {"scan_layers": True, "scan_unroll": unroll_for(config.n_layers)}
        params = model.params._replace(layers=stack_layers(model.params.layers))
        prefill = jax.jit(partial(prefill_step, config, sample, **options), static_argnums=(0,))
        decode = jax.jit(partial(decode_step, config, sample, **options), donate_argnums=(2,))
        return CompiledDecoder(params, sampler, prefill, decode)


strategy = ScanUnroll()
