"""A preallocated key/value cache [layers, batch, max_len, kv_heads, d_head], updated in place under donation."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig


class KVCache(NamedTuple):
    k: jax.Array
    v: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def create(config: ModelConfig, batch: int, max_len: int) -> KVCache:
    """Zeroed cache for `batch` rows of up to `max_len` positions."""
    shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.d_head)
    return KVCache(jnp.zeros(shape, config.activation_dtype), jnp.zeros(shape, config.activation_dtype))


def write(cache_layer: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write new [batch, seq, kv_heads, d_head] into one layer's cache at each row's start position."""

    def write_row(row_cache: jax.Array, row_new: jax.Array, row_start: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice(row_cache, row_new.astype(row_cache.dtype), (row_start, 0, 0))

    return jax.vmap(write_row)(cache_layer, new, start)
