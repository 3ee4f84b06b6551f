"""The preallocated key/value cache: per layer K [batch, kv_heads, max_len, d_head] and V transposed, updated in place."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig


class KVCache(NamedTuple):
    """Keys and values, either one array per layer (tuples) or all layers stacked on axis 0 (for lax.scan).

    K is [batch, kv_heads, max_len, d_head] and V [batch, kv_heads, d_head, max_len]: both of
    attention's batched dots then contract their operands' last axes, the layout XLA:CPU reads
    in place; with positions first (or V untransposed) XLA copied every layer's cache per token.
    Separate per-layer arrays let each layer's write land in its own donated buffer, where a
    stacked cache written by an unrolled loop was copied whole.
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]

    @property
    def max_len(self) -> int:
        first = self.k[0] if isinstance(self.k, tuple) else self.k
        return first.shape[-2]


def layer_shapes(config: ModelConfig, batch: int, max_len: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One layer's K and V shapes."""
    return (batch, config.n_kv_heads, max_len, config.d_head), (batch, config.n_kv_heads, config.d_head, max_len)


def create(config: ModelConfig, batch: int, max_len: int, *, stacked: bool = False) -> KVCache:
    """Zeroed cache for `batch` rows of up to `max_len` positions; `stacked` for lax.scan over layers."""
    k_shape, v_shape = layer_shapes(config, batch, max_len)
    dtype = config.cache_dtype
    if stacked:
        n = config.n_layers
        return KVCache(jnp.zeros((n, *k_shape), dtype), jnp.zeros((n, *v_shape), dtype))
    layers = range(config.n_layers)
    return KVCache(tuple(jnp.zeros(k_shape, dtype) for _ in layers), tuple(jnp.zeros(v_shape, dtype) for _ in layers))


def widen(cache: KVCache, max_len: int) -> KVCache:
    """The same cache holding up to max_len positions (>= its own), the new ones zero."""
    def pad(a: jax.Array, axis: int) -> jax.Array:
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, max_len - a.shape[axis])
        return jnp.pad(a, widths)

    if cache.max_len == max_len:
        return cache
    if isinstance(cache.k, tuple):
        return KVCache(tuple(pad(k, -2) for k in cache.k), tuple(pad(v, -1) for v in cache.v))
    return KVCache(pad(cache.k, -2), pad(cache.v, -1))


def write_keys(cache_k: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write new keys [batch, seq, kv_heads, d_head] into one layer's K at each row's start position."""
    return _write_rows(cache_k, jnp.swapaxes(new, 1, 2), start, axis=2)


def write_values(cache_v: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write new values [batch, seq, kv_heads, d_head] into one layer's (transposed) V."""
    return _write_rows(cache_v, new.transpose(0, 2, 3, 1), start, axis=3)


def _write_rows(cache: jax.Array, new: jax.Array, start: jax.Array, *, axis: int) -> jax.Array:
    # One in-place update per row (batch is static and small), rather than a scatter.
    new = new.astype(cache.dtype)
    for row in range(cache.shape[0]):
        index = [row, 0, 0, 0]
        index[axis] = start[row]
        cache = jax.lax.dynamic_update_slice(cache, new[row : row + 1], tuple(index))
    return cache
