"""RMSNorm, computed in f32 whatever the compute dtype so small models stay stable at 16 bits."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, *, native: bool = False) -> jax.Array:
    """Scale x by the reciprocal root-mean-square of its last axis, then by weight.

    `native` (batched decoding over lljx's kernels, on CPU; see `ModelConfig.row_invariant`):
    lljx's kernel, whose rows never depend on each other, so a batched request's numbers are the
    ones it gets alone.
    """
    if native and x.dtype == jnp.float32 and jax.default_backend() == "cpu":
        from lljx import native_kernels

        with jax.named_scope("rms_norm"):
            return native_kernels.rms_norm(x, weight, eps)
    with jax.named_scope("rms_norm"):
        x32 = x.astype(jnp.float32)
        scale = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
        return (x32 * scale * weight.astype(jnp.float32)).astype(x.dtype)
