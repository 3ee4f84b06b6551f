"""Strategy: no jit at all, every jnp op dispatched on its own (the reference that shows why jit matters)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from lljx.sampling import SamplerSettings, make_sampler
from lljx.core import transformer
from lljx.strategies.eager import EagerDecoder
from lljx.strategies.slots import SlotDecoder, composed_slot_steps
from lljx.strategies.split import eager_split
from lljx.strategies.steps import decode_step, prefill_step

if TYPE_CHECKING:
    from lljx.models import Model


class NoJit:
    name = "no-jit"
    description = "no jit at all: every jnp op dispatched eagerly (the baseline that shows why jit matters)"

    def build(self, model: Model, sampler: SamplerSettings) -> EagerDecoder:
        sample = make_sampler(sampler, model.config.vocab_size)
        return EagerDecoder(
            model.params,
            sampler,
            prefill=partial(prefill_step, model.config, sample),
            decode=partial(decode_step, model.config, sample),
            split=eager_split(model.config, sample),
        )

    def build_slots(self, model: Model) -> SlotDecoder:
        steps = composed_slot_steps(model.config, partial(transformer.forward, model.config), jit_sampler=False)
        return SlotDecoder(model.params, steps, model.config)


strategy = NoJit()
