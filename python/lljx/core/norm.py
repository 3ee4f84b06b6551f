"""RMSNorm, computed in f32 whatever the activation dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, *, row_invariant: bool = False) -> jax.Array:
    """Scale x by the reciprocal root-mean-square of its last axis, then by weight.

    `row_invariant` (lljx's kernels, see `ModelConfig.row_invariant`): f32 rows are normalised
    by lljx's kernel, each row alone in one fixed order, so a request's numbers are the ones it
    gets alone in a batch of any size. (XLA:CPU vectorises the reduction differently for 1 row
    and for 8, which moved batched replies off their lone ones; normalising each row as its own
    XLA op cost three ops per row.)
    """
    if row_invariant and x.dtype == jnp.float32:
        from lljx import native_kernels

        with jax.named_scope("rms_norm_rows"):
            return native_kernels.rms_norm(x, weight, eps)
    return _rms_norm(x, weight, eps)


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    with jax.named_scope("rms_norm"):
        x32 = x.astype(jnp.float32)
        scale = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
        return (x32 * scale * weight.astype(jnp.float32)).astype(x.dtype)
