"""RMSNorm, computed in f32 whatever the compute dtype so small models stay stable at 16 bits."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """Scale x by the reciprocal root-mean-square of its last axis, then by weight."""
    with jax.named_scope("rms_norm"):
        x32 = x.astype(jnp.float32)
        scale = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
        return (x32 * scale * weight.astype(jnp.float32)).astype(x.dtype)
