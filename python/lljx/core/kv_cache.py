"""The preallocated key/value cache: per layer [batch, kv_heads, max_len, d_head], updated in place under donation."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig


class KVCache(NamedTuple):
    """Keys and values, either one array per layer (tuples) or all layers stacked on axis 0 (for lax.scan).

    Heads come before positions so attention's batched dots read each head's keys in place:
    with positions first, XLA transposed a copy of every layer's cache on every token.
    Separate per-layer arrays let each layer's write land in its own donated buffer, where a
    stacked cache written by an unrolled loop was copied whole.
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]

    @property
    def max_len(self) -> int:
        first = self.k[0] if isinstance(self.k, tuple) else self.k
        return first.shape[-2]


def create(config: ModelConfig, batch: int, max_len: int, *, stacked: bool = False) -> KVCache:
    """Zeroed cache for `batch` rows of up to `max_len` positions; `stacked` for lax.scan over layers."""
    shape = (batch, config.n_kv_heads, max_len, config.d_head)
    dtype = config.activation_dtype
    if stacked:
        full = (config.n_layers, *shape)
        return KVCache(jnp.zeros(full, dtype), jnp.zeros(full, dtype))
    layers = range(config.n_layers)
    return KVCache(tuple(jnp.zeros(shape, dtype) for _ in layers), tuple(jnp.zeros(shape, dtype) for _ in layers))


def write(cache_layer: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write new [batch, seq, kv_heads, d_head] into one layer's cache at each row's start position."""
    new = jnp.swapaxes(new, 1, 2).astype(cache_layer.dtype)  # [batch, kv_heads, seq, d_head]
    # One in-place update per row (batch is static and small), rather than a scatter.
    for row in range(cache_layer.shape[0]):
        cache_layer = jax.lax.dynamic_update_slice(cache_layer, new[row : row + 1], (row, 0, start[row], 0))
    return cache_layer
