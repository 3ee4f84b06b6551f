"""Strategy: separate jits for the transform and for the sampler, two dispatches per token."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import jax

from lljx.sampling import SamplerKnobs, SamplerSettings, make_sampler
from lljx.strategies.api import DecodeState, LogitsState
from lljx.core import transformer
from lljx.strategies.eager import EagerDecoder
from lljx.strategies.slots import SlotDecoder, composed_slot_steps
from lljx.strategies.split import SplitStep
from lljx.strategies.steps import decode_logits, masked_sample, prefill_logits, sample_next

if TYPE_CHECKING:
    from lljx.models import Model


class JitSplit:
    name = "jit-split"
    description = "two jits per token: one around the transform, one around the sampler"

    def build(self, model: Model, sampler: SamplerSettings) -> EagerDecoder:
        config = model.config
        transform_prompt = jax.jit(partial(prefill_logits, config), static_argnums=(0,))
        # Donate the cache (argument 2) so the transform updates it in place.
        transform_token = jax.jit(partial(decode_logits, config), donate_argnums=(2,))
        sampler_fn = make_sampler(sampler, config.vocab_size)
        sample = jax.jit(partial(sample_next, sampler_fn))

        def prefill(cache_len, params, padded_ids, prompt_len, key, knobs: SamplerKnobs) -> DecodeState:
            logits, cache = transform_prompt(cache_len, params, padded_ids, prompt_len)
            token, key = sample(logits, key, knobs)
            return DecodeState(token, cache, jax.numpy.asarray(prompt_len), key, knobs)

        def decode(params, tokens, cache, position, key, knobs: SamplerKnobs) -> DecodeState:
            logits, cache = transform_token(params, tokens, cache, position)
            token, key = sample(logits, key, knobs)
            return DecodeState(token, cache, position + 1, key, knobs)

        def prefill_split(cache_len, params, padded_ids, prompt_len, key, knobs: SamplerKnobs) -> LogitsState:
            logits, cache = transform_prompt(cache_len, params, padded_ids, prompt_len)
            return LogitsState(logits, cache, jax.numpy.asarray(prompt_len), key, knobs)

        def forward(params, tokens, cache, position, key, knobs: SamplerKnobs) -> LogitsState:
            logits, cache = transform_token(params, tokens, cache, position)
            return LogitsState(logits, cache, position + 1, key, knobs)

        split = SplitStep(prefill_split, forward, jax.jit(partial(masked_sample, sampler_fn)))
        return EagerDecoder(model.params, sampler, prefill, decode, split)

    def build_slots(self, model: Model) -> SlotDecoder:
        # One jit around the transform (the cache, argument 3, donated), another around the sampler.
        transform = jax.jit(partial(transformer.forward, model.config), donate_argnums=(3,))
        return SlotDecoder(model.params, composed_slot_steps(model.config, transform), model.config)


strategy = JitSplit()
