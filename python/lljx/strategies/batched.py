"""Builders of batched decoders (slots) shared by the built-in strategies and open to plugins.

A strategy serves many requests at once by offering `build_slots(model) -> SlotDecoder`
beside `build`; one that does not is served one request at a time, from a queue.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import jax

from lljx.config import ModelConfig
from lljx.core import transformer
from lljx.params import Params
from lljx.strategies.slots import SlotDecoder, jitted_slot_steps

if TYPE_CHECKING:
    from lljx.models import Model


def per_token_slots(
    model: Model, *, params: Params | None = None, config: ModelConfig | None = None,
    argmax: Callable[[jax.Array], jax.Array] | None = None, **layer_options: int,
) -> SlotDecoder:
    """One jit per step around transform + sampler, as `per_token_decoder` (same arguments)."""
    config = config or model.config
    transform = partial(transformer.forward, config, **layer_options)
    steps = jitted_slot_steps(config, transform, argmax=argmax, stacked=bool(layer_options.get("scan_layers")))
    return SlotDecoder(model.params if params is None else params, steps, config)


def k_token_slots(
    model: Model, k: int, *, params: Params | None = None, config: ModelConfig | None = None,
    argmax: Callable[[jax.Array], jax.Array] | None = None,
) -> SlotDecoder:
    """Up to k tokens per row in each dispatch, an on-device loop that ends once every row stopped."""
    config = config or model.config
    transform = partial(transformer.forward, config)
    steps = jitted_slot_steps(config, transform, width=k, stop_ids=model.stop_token_ids, argmax=argmax)
    return SlotDecoder(model.params if params is None else params, steps, config)
