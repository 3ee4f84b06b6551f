"""RMSNorm, computed in f32 whatever the activation dtype."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


# Up to this many rows are normalised as separate ops in one program (a batch's decode rows);
# more (a long prompt's) in a loop, so programs stay small.
MAX_UNROLLED_ROWS = 64


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, *, row_invariant: bool = False) -> jax.Array:
    """Scale x by the reciprocal root-mean-square of its last axis, then by weight.

    `row_invariant` (batched decoding, see `ModelConfig.row_invariant`): several rows (of one
    position each) are normalised one row at a time, each by the ops that normalise a lone
    row, so each row's numbers are the ones it gets alone. (XLA:CPU vectorises the
    reduction differently for 1 row and for 8, which moved batched replies off their lone ones.)
    """
    rows = math.prod(x.shape[:-1])
    if row_invariant and rows > 1 and (x.ndim == 2 or x.shape[-2] == 1):
        with jax.named_scope("rms_norm_rows"):
            flat = x.reshape(rows, 1, x.shape[-1])
            if rows <= MAX_UNROLLED_ROWS:  # a batch's rows side by side: no loop to run, same numbers
                return jnp.concatenate([_rms_norm(flat[i], weight, eps) for i in range(rows)]).reshape(x.shape)
            return jax.lax.map(lambda row: _rms_norm(row, weight, eps), flat).reshape(x.shape)
    return _rms_norm(x, weight, eps)


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    with jax.named_scope("rms_norm"):
        x32 = x.astype(jnp.float32)
        scale = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
        return (x32 * scale * weight.astype(jnp.float32)).astype(x.dtype)
