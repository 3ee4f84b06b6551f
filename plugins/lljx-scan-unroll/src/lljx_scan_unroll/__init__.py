"""The `scan-unroll` strategy: stacked layers under lax.scan with several layers unrolled per iteration."""

from __future__ import annotations

from typing import Any

from lljx.params import stack_layers
from lljx.sampling import SamplerSettings
from lljx.strategies import CompiledDecoder, SlotDecoder, per_token_decoder, per_token_slots

MAX_UNROLL = 6


def unroll_for(n_layers: int) -> int:
    """The largest divisor of n_layers up to MAX_UNROLL, so every scan iteration is the same size."""
    return max(u for u in range(1, min(MAX_UNROLL, n_layers) + 1) if n_layers % u == 0)


class ScanUnroll:
    name = "scan-unroll"
    description = "layers under lax.scan with several unrolled per iteration (a plugin package)"

    def build(self, model: Any, sampler: SamplerSettings) -> CompiledDecoder:
        stacked = model.params._replace(layers=stack_layers(model.params.layers))
        unroll = unroll_for(model.config.n_layers)
        return per_token_decoder(model, sampler, params=stacked, scan_layers=True, scan_unroll=unroll)

    def build_slots(self, model: Any) -> SlotDecoder:
        """Many requests at once, through lljx's shared batched builder with the same layer options."""
        stacked = model.params._replace(layers=stack_layers(model.params.layers))
        unroll = unroll_for(model.config.n_layers)
        return per_token_slots(model, params=stacked, scan_layers=True, scan_unroll=unroll)


strategy = ScanUnroll()
