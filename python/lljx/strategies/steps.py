"""Prefill and decode step functions shared by the built-in strategies (pure; jit is the strategy's choice)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig
from lljx.core import kv_cache, transformer
from lljx.params import Params
from lljx.sampling import Sampler, SamplerKnobs
from lljx.strategies.api import DecodeState


def prefill_step(
    config: ModelConfig,
    sample: Sampler,
    cache_len: int,
    params: Params,
    padded_ids: jax.Array,
    prompt_len: jax.Array,
    key: jax.Array,
    knobs: SamplerKnobs,
    *,
    scan_layers: bool = False,
) -> DecodeState:
    """Run a right-padded prompt [batch, bucket] through a fresh cache and sample the first token."""
    batch, bucket = padded_ids.shape
    positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32), (batch, bucket))
    cache = kv_cache.create(config, batch, cache_len)
    logits, cache = transformer.forward(
        config, params, padded_ids, positions, cache, prompt_len - 1, scan_layers=scan_layers
    )
    key, step_key = jax.random.split(key)
    token = sample(logits, step_key, knobs)
    return DecodeState(token[:, None], cache, prompt_len.astype(jnp.int32), key, knobs)


def decode_step(
    config: ModelConfig,
    sample: Sampler,
    params: Params,
    tokens: jax.Array,
    cache: kv_cache.KVCache,
    position: jax.Array,
    key: jax.Array,
    knobs: SamplerKnobs,
    *,
    scan_layers: bool = False,
) -> DecodeState:
    """Feed the newest token of each row at its position and sample the next one."""
    last = tokens[:, -1:]
    logits, cache = transformer.forward(
        config, params, last, position[:, None], cache, jnp.zeros_like(position), scan_layers=scan_layers
    )
    key, step_key = jax.random.split(key)
    token = sample(logits, step_key, knobs)
    return DecodeState(token[:, None], cache, position + 1, key, knobs)
