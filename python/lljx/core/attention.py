"""Grouped-query self-attention over the KV cache, causal by absolute position."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig
from lljx.core import kv_cache
from lljx.core.linear import project, project_many
from lljx.core.rope import apply_rope
from lljx.params import GGMLWeight, LayerParams, NativeWeight

# KV cache dtypes lljx's decode attention kernel reads (with f32 queries).
NATIVE_CACHE_DTYPES = (jnp.float32, jnp.float16)


def forward(
    config: ModelConfig,
    layer: LayerParams,
    x: jax.Array,
    positions: jax.Array,
    rope: tuple[jax.Array, jax.Array],
    cache_k: jax.Array,
    cache_v: jax.Array,
    real_rows: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Attend x [batch, seq, d_model] at positions [batch, seq]; returns output and the updated layer cache.

    The new keys and values are written at each row's first position, so a row's prompt
    may be right-padded: padded keys sit after every real query and are masked by causality,
    then overwritten by the tokens decoded next. real_rows [batch] (each row's real length)
    lets the projections skip the padding.
    """
    batch, seq, _ = x.shape
    h, kvh, d = config.n_heads, config.n_kv_heads, config.d_head
    with jax.named_scope("qkv"):
        q, k, v = project_many(x, (layer.wq, layer.wk, layer.wv), real_rows=real_rows)
        q, k, v = q.reshape(batch, seq, h, d), k.reshape(batch, seq, kvh, d), v.reshape(batch, seq, kvh, d)
    cos, sin = rope
    native = uses_native_kernels(layer) and q.dtype == jnp.float32 and cache_k.dtype in NATIVE_CACHE_DTYPES
    if native and seq == 1:
        from lljx import native_kernels

        with jax.named_scope("attend"):  # the kernel rotates q and k and writes k and v first
            out, cache_k, cache_v = native_kernels.attend(
                q[:, 0], k[:, 0], v[:, 0], cache_k, cache_v, positions[:, 0], cos[:, 0], sin[:, 0]
            )
            out = out.reshape(batch, 1, h * d)
    elif native:
        # Prompt chunks, one per row (several prompts read in one pass): each row attends
        # within its own cache row, exactly as that chunk alone would.
        with jax.named_scope("attend_chunk"):
            rows = [
                _attend_chunk(q[i], k[i], v[i], cache_k[i : i + 1], cache_v[i : i + 1], positions[i], cos[i], sin[i],
                              None if real_rows is None else real_rows[i])
                for i in range(batch)
            ]
            out = jnp.stack([row[0] for row in rows]).reshape(batch, seq, h * d)
            if batch > 1:
                cache_k = jnp.concatenate([row[1] for row in rows])
                cache_v = jnp.concatenate([row[2] for row in rows])
            else:
                cache_k, cache_v = rows[0][1], rows[0][2]
    else:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        with jax.named_scope("kv_write"):
            cache_k = kv_cache.write_keys(cache_k, k, positions[:, 0])
            cache_v = kv_cache.write_values(cache_v, v, positions[:, 0])
        with jax.named_scope("attend"):
            out = attend_xla(config, q, cache_k, cache_v, positions).astype(x.dtype)
    with jax.named_scope("attn_out"):
        return project(out, layer.wo, real_rows=real_rows), cache_k, cache_v


def _attend_chunk(
    q: jax.Array, k: jax.Array, v: jax.Array, cache_k: jax.Array, cache_v: jax.Array, positions: jax.Array,
    cos: jax.Array, sin: jax.Array, real_rows: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One prompt's chunk q [seq, heads, d_head] against its cache row [1, ...] by the native kernel.

    Its rows share the cache row, and each attends only up to its own position (XLA scored
    every query against the whole bucket). Padding rows (position -1) write and attend nothing:
    they would attend up to their padded positions."""
    from lljx import native_kernels

    if real_rows is not None:
        positions = jnp.where(jnp.arange(positions.shape[0]) < real_rows, positions, -1)
    return native_kernels.attend(q, k, v, cache_k, cache_v, positions, cos, sin)


def uses_native_kernels(layer: LayerParams) -> bool:
    """A layer whose projections go to the native matvec kernel also attends with the native kernel."""
    return isinstance(layer.wq, (NativeWeight, GGMLWeight))


def attend_xla(
    config: ModelConfig, q: jax.Array, cache_k: jax.Array, cache_v: jax.Array, positions: jax.Array
) -> jax.Array:
    """q [batch, seq, heads, d_head] against the layer's cache, causal by position; [batch, seq, heads * d_head]."""
    batch, seq, h, d = q.shape
    kvh = config.n_kv_heads
    # [batch, kv_heads, n_rep, seq, d_head]: each KV head's queries against its cache rows.
    q = q.reshape(batch, seq, kvh, config.n_rep, d).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkrsd,bktd->bkrst", q, cache_k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(d)
    key_pos = jnp.arange(cache_k.shape[2])
    visible = key_pos[None, None, :] <= positions[:, :, None]  # [batch, seq, max_len]
    scores = jnp.where(visible[:, None, None, :, :], scores, -jnp.inf)
    # Probabilities stay in the activations' precision over a narrower cache (f32 over f16).
    probs = jax.nn.softmax(scores, axis=-1).astype(jnp.promote_types(cache_v.dtype, q.dtype))
    out = jnp.einsum("bkrst,bkdt->bkrsd", probs, cache_v, preferred_element_type=jnp.float32)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, seq, h * d)
