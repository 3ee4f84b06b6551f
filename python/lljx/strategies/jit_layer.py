"""Strategy: one jit per decoder layer (one executable shared by all layers), plus jits for embed and head."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig
from lljx.core import embeddings, head, kv_cache, layer
from lljx.core.rope import rope_tables
from lljx.params import LayerParams, Params
from lljx.sampling import SamplerKnobs, SamplerSettings, make_sampler
from lljx.strategies.api import DecodeState, LogitsState
from lljx.strategies.eager import EagerDecoder
from lljx.strategies.slots import SlotDecoder, composed_slot_steps
from lljx.strategies.split import SplitStep
from lljx.strategies.steps import masked_sample, sample_next

if TYPE_CHECKING:
    from lljx.models import Model


def layer_step(
    config: ModelConfig, weights: LayerParams, x: jax.Array, positions: jax.Array, cache_k: jax.Array, cache_v: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    return layer.forward(config, weights, x, positions, rope_tables(config, positions), cache_k, cache_v)


def empty_cache_slice(config: ModelConfig, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
    """One layer's zeroed K and V caches; a named function so profiles and traces say what it is."""
    with jax.named_scope("new_cache_slice"):
        k_shape, v_shape = kv_cache.layer_shapes(config, batch, length)
        return jnp.zeros(k_shape, config.cache_dtype), jnp.zeros(v_shape, config.cache_dtype)


def head_logits(config: ModelConfig, params: Params, x: jax.Array, last_index: jax.Array) -> jax.Array:
    """The logits at each row's `last_index` position."""
    last = jnp.take_along_axis(x, last_index[:, None, None], axis=1)[:, 0]
    return head.forward(config, params, last)


def head_step(
    config: ModelConfig, sample, params: Params, x: jax.Array, last_index: jax.Array, key: jax.Array, knobs: SamplerKnobs
) -> tuple[jax.Array, jax.Array]:
    return sample_next(sample, head_logits(config, params, x, last_index), key, knobs)


def layer_stack(config: ModelConfig) -> Callable[[Params, jax.Array, jax.Array, kv_cache.KVCache], tuple[jax.Array, kv_cache.KVCache]]:
    """Embed, then every layer through one jitted layer step (its cache slices donated): hidden states and cache."""
    embed = jax.jit(embeddings.forward)
    # The layer's two cache slices (arguments 3 and 4) are donated and updated in place.
    run_layer = jax.jit(partial(layer_step, config), donate_argnums=(3, 4))

    def forward(params: Params, tokens: jax.Array, positions: jax.Array, cache: kv_cache.KVCache):
        x = embed(params, tokens)
        ks, vs = [], []
        for weights, cache_k, cache_v in zip(params.layers, cache.k, cache.v):
            x, cache_k, cache_v = run_layer(weights, x, positions, cache_k, cache_v)
            ks.append(cache_k)
            vs.append(cache_v)
        # The cache is a tuple of per-layer arrays here, so no layer's update copies the others.
        return x, kv_cache.KVCache(tuple(ks), tuple(vs))

    return forward


class JitPerLayer:
    name = "jit-layer"
    description = "one jit per decoder layer (one executable reused by every layer), plus embed and head jits"

    def build_slots(self, model: Model) -> SlotDecoder:
        config = model.config
        forward = layer_stack(config)
        logits_at = jax.jit(partial(head_logits, config))

        def transform(params: Params, tokens, positions, cache: kv_cache.KVCache, last_index):
            x, cache = forward(params, tokens, positions, cache)
            return logits_at(params, x, last_index), cache

        return SlotDecoder(model.params, composed_slot_steps(config, transform), config)

    def build(self, model: Model, sampler: SamplerSettings) -> EagerDecoder:
        config = model.config
        forward = layer_stack(config)
        sample = make_sampler(sampler, config.vocab_size)
        finish = jax.jit(partial(head_step, config, sample))
        logits_at = jax.jit(partial(head_logits, config))
        new_cache_slice = jax.jit(partial(empty_cache_slice, config), static_argnums=(0, 1))

        def prompt_layers(cache_len, params, padded_ids, prompt_len):
            batch, bucket = padded_ids.shape
            positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32), (batch, bucket))
            empty = [new_cache_slice(batch, cache_len) for _ in range(config.n_layers)]
            fresh = kv_cache.KVCache(tuple(k for k, _ in empty), tuple(v for _, v in empty))
            lengths = jnp.asarray(prompt_len)
            x, cache = forward(params, padded_ids, positions, fresh)
            return x, cache, lengths

        def prefill(cache_len, params, padded_ids, prompt_len, key, knobs) -> DecodeState:
            x, cache, lengths = prompt_layers(cache_len, params, padded_ids, prompt_len)
            token, key = finish(params, x, lengths - 1, key, knobs)
            return DecodeState(token, cache, lengths, key, knobs)

        def decode(params, tokens, cache, position, key, knobs) -> DecodeState:
            x, cache = forward(params, tokens[:, -1:], position[:, None], cache)
            token, key = finish(params, x, jnp.zeros_like(position), key, knobs)
            return DecodeState(token, cache, position + 1, key, knobs)

        def prefill_split(cache_len, params, padded_ids, prompt_len, key, knobs) -> LogitsState:
            x, cache, lengths = prompt_layers(cache_len, params, padded_ids, prompt_len)
            return LogitsState(logits_at(params, x, lengths - 1), cache, lengths, key, knobs)

        def forward_logits(params, tokens, cache, position, key, knobs) -> LogitsState:
            x, cache = forward(params, tokens[:, -1:], position[:, None], cache)
            return LogitsState(logits_at(params, x, jnp.zeros_like(position)), cache, position + 1, key, knobs)

        split = SplitStep(prefill_split, forward_logits, jax.jit(partial(masked_sample, sample)))
        return EagerDecoder(model.params, sampler, prefill, decode, split)


strategy = JitPerLayer()
