"""Projections x · W for every weight kind: float arrays, int8 blocks, and weights routed to the native kernel."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import jax
import jax.numpy as jnp

from lljx.params import Q8_BLOCK, Int8Weight, LayerParams, NativeWeight, Params, Weight

# Up to this many rows (batch × tokens) the native kernel runs; more rows (prefill) go to XLA,
# whose matrix-matrix products reuse each weight across rows.
NATIVE_MAX_ROWS = 8


def dequantize(w: Int8Weight, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """The float [in, out] matrix an Int8Weight stands for."""
    n_in, n_out = w.values.shape
    blocks = w.values.reshape(n_in // Q8_BLOCK, Q8_BLOCK, n_out).astype(jnp.float32) * w.scales[:, None, :]
    return blocks.reshape(n_in, n_out).astype(dtype)


def xla_project(x: jax.Array, w: Weight, out_dtype: jnp.dtype | None = None) -> jax.Array:
    """x [..., in] · w [in, out] with XLA's dot; int8 weights are dequantized first."""
    out_dtype = out_dtype or x.dtype
    if isinstance(w, NativeWeight):
        w = w.weight
    if isinstance(w, Int8Weight):
        return jnp.matmul(x.astype(jnp.float32), dequantize(w)).astype(out_dtype)
    if out_dtype == x.dtype:
        return x @ w
    return jnp.einsum("...d,dv->...v", x, w, preferred_element_type=out_dtype)


def project_many(x: jax.Array, weights: Sequence[Weight], out_dtype: jnp.dtype | None = None) -> tuple[jax.Array, ...]:
    """x · w for each weight sharing one input, e.g. Q, K and V: one native call when all are native."""
    out_dtype = out_dtype or x.dtype
    rows = prod(x.shape[:-1])
    if rows <= NATIVE_MAX_ROWS and all(isinstance(w, NativeWeight) for w in weights):
        from lljx import native_kernels

        flat = native_kernels.matvec(x.reshape(rows, x.shape[-1]), [w.weight for w in weights], out_dtype)  # type: ignore[union-attr]
        return tuple(y.reshape(*x.shape[:-1], y.shape[-1]) for y in flat)
    return tuple(xla_project(x, w, out_dtype) for w in weights)


def project(x: jax.Array, w: Weight, out_dtype: jnp.dtype | None = None) -> jax.Array:
    """x [..., in] · w [in, out]."""
    return project_many(x, (w,), out_dtype)[0]


def take_columns(w: Weight, ids: jax.Array) -> jax.Array:
    """Columns `ids` of an [in, out] weight as float rows [*ids.shape, in] (embedding lookup in a tied head)."""
    if isinstance(w, NativeWeight):
        w = w.weight
    if isinstance(w, Int8Weight):
        values = jnp.take(w.values, ids, axis=1).astype(jnp.float32)  # [in, *ids]
        scales = jnp.repeat(jnp.take(w.scales, ids, axis=1), Q8_BLOCK, axis=0)
        return jnp.moveaxis(values * scales, 0, -1)
    return jnp.moveaxis(jnp.take(w, ids, axis=1), 0, -1)


PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def use_native_kernel(params: Params) -> Params:
    """The same params with every projection and the head routed to the native kernel (no copies)."""

    def wrap(w: Weight) -> Weight:
        return w if isinstance(w, NativeWeight) else NativeWeight(w)

    def wrap_layer(layer: LayerParams) -> LayerParams:
        return layer._replace(**{name: wrap(getattr(layer, name)) for name in PROJECTIONS})

    return params._replace(layers=tuple(wrap_layer(lp) for lp in params.layers), head=wrap(params.head))
