"""Strategy: one jit per token around the whole transform and the sampler (layers unrolled)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lljx.sampling import SamplerSettings
from lljx.strategies.batched import per_token_slots
from lljx.strategies.compiled import CompiledDecoder, per_token_decoder
from lljx.strategies.slots import SlotDecoder

if TYPE_CHECKING:
    from lljx.models import Model


class JitPerToken:
    name = "jit-token"
    description = "one jit per token around transform + sampler, layers unrolled"

    def build(self, model: Model, sampler: SamplerSettings) -> CompiledDecoder:
        return per_token_decoder(model, sampler)

    def build_slots(self, model: Model) -> SlotDecoder:
        return per_token_slots(model)


strategy = JitPerToken()
