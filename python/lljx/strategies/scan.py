"""Strategy: layers stacked and run under `lax.scan` inside one jit per token (flat compile time in depth)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lljx.params import stack_layers
from lljx.sampling import SamplerSettings
from lljx.strategies.batched import per_token_slots
from lljx.strategies.compiled import CompiledDecoder, per_token_decoder
from lljx.strategies.slots import SlotDecoder

if TYPE_CHECKING:
    from lljx.models import Model


class Scan:
    name = "scan"
    description = "one jit per token with the layers stacked under lax.scan (one compiled layer body)"

    def build(self, model: Model, sampler: SamplerSettings) -> CompiledDecoder:
        # A stacked copy of the layer weights, made once here; scan slices it per iteration.
        stacked = model.params._replace(layers=stack_layers(model.params.layers))
        return per_token_decoder(model, sampler, params=stacked, scan_layers=True)

    def build_slots(self, model: Model) -> SlotDecoder:
        stacked = model.params._replace(layers=stack_layers(model.params.layers))
        return per_token_slots(model, params=stacked, scan_layers=True)


strategy = Scan()
