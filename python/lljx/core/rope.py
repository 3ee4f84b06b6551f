"""Rotary position embeddings in rotate-half form, with Llama 3 frequency scaling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lljx.config import Llama3RopeScaling, ModelConfig


def llama3_scaled(inv_freq: np.ndarray, scaling: Llama3RopeScaling) -> np.ndarray:
    """Llama 3.1's rule: keep high frequencies, divide low ones by `factor`, blend in between."""
    low_wavelen = scaling.original_context_length / scaling.low_freq_factor
    high_wavelen = scaling.original_context_length / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_context_length / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    return np.where(wavelen < high_wavelen, inv_freq, np.where(wavelen > low_wavelen, inv_freq / scaling.factor, blended))


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """Per-pair angular frequencies [d_head // 2] in f64; a trace-time constant under jit."""
    exponents = np.arange(0, config.d_head, 2, dtype=np.float64) / config.d_head
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_freq_factors is not None:
        return inv_freq / np.asarray(config.rope_freq_factors, dtype=np.float64)
    if config.rope_scaling is not None:
        return llama3_scaled(inv_freq, config.rope_scaling)
    return inv_freq


def rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [batch, seq, d_head // 2] in f32 for integer positions [batch, seq]."""
    inv_freq = jnp.asarray(inverse_frequencies(config), dtype=jnp.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [batch, seq, heads, d_head]: the first half of each head pairs with the second."""
    with jax.named_scope("rope"):
        half = x.shape[-1] // 2
        x32 = x.astype(jnp.float32)
        x1, x2 = x32[..., :half], x32[..., half:]
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        rotated = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
        return rotated.astype(x.dtype)
