"""Projections x · W for every weight kind: float arrays, int8 blocks, and weights routed to the native kernel."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import jax
import jax.numpy as jnp
import numpy as np

from lljx.params import (
    Q8_BLOCK,
    GGMLWeight,
    Int8Weight,
    LayerParams,
    NativeWeight,
    Params,
    TiledInt8Weight,
    Weight,
)

# Outputs per tile of the int8 dot-product kernel's layout.
INT8_TILE = 16

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
    if isinstance(w, GGMLWeight):
        # XLA-only strategies get dense weights at build time (lljx.models.dense); a file-format
        # weight reaching XLA means a caller skipped that step.
        raise ValueError("a weight in its file's format needs lljx's native kernels; dequantize it first (lljx.models.dense)")
    if isinstance(w, Int8Weight):
        return jnp.matmul(x.astype(jnp.float32), dequantize(w)).astype(out_dtype)
    if x.dtype == jnp.float32 and w.dtype in (jnp.bfloat16, jnp.float16):
        # f32 activations over 16-bit weights (the native strategies' prompts): XLA:CPU runs a
        # 16-bit × 16-bit product accumulating in f32 about twice as fast as one on the weight
        # upcast to f32. The activations round to the weight's dtype, as in llama.cpp's F16 path.
        return jnp.einsum("...d,dv->...v", x.astype(w.dtype), w, preferred_element_type=jnp.float32).astype(out_dtype)
    if out_dtype == x.dtype:
        return x @ w
    return jnp.einsum("...d,dv->...v", x, w, preferred_element_type=out_dtype)


def project_many(
    x: jax.Array, weights: Sequence[Weight], out_dtype: jnp.dtype | None = None, real_rows: jax.Array | None = None
) -> tuple[jax.Array, ...]:
    """x · w for each weight sharing one input, e.g. Q, K and V: one native call when all are native.

    real_rows (int [batch], x [batch, seq, in] right-padded): rows past them are padding,
    which the file-format kernels skip (their results are zeros there); other paths compute
    every row.
    """
    out_dtype = out_dtype or x.dtype
    rows = prod(x.shape[:-1])
    if weights and all(isinstance(w, GGMLWeight) for w in weights):
        # Blocks in the file's format: lljx's kernels for every row count, prompts included.
        from lljx import native_kernels

        if real_rows is not None and x.ndim == 3 and x.shape[1] > 1:
            padded = native_kernels.block_matmul(x.astype(jnp.float32), weights, real_rows)  # type: ignore[arg-type]
            return tuple(y.astype(out_dtype) for y in padded)
        flat = native_kernels.block_matmul(x.reshape(rows, x.shape[-1]).astype(jnp.float32), weights)  # type: ignore[arg-type]
        return tuple(y.reshape(*x.shape[:-1], y.shape[-1]).astype(out_dtype) for y in flat)
    if rows <= NATIVE_MAX_ROWS and all(isinstance(w, NativeWeight) for w in weights):
        from lljx import native_kernels

        kernel_weights = [w.kernel_weight() for w in weights]  # type: ignore[union-attr]
        flat = native_kernels.matvec(x.reshape(rows, x.shape[-1]), kernel_weights, out_dtype)
        return tuple(y.reshape(*x.shape[:-1], y.shape[-1]) for y in flat)
    return tuple(xla_project(x, w, out_dtype) for w in weights)


def project(
    x: jax.Array, w: Weight, out_dtype: jnp.dtype | None = None, real_rows: jax.Array | None = None
) -> jax.Array:
    """x [..., in] · w [in, out] (real_rows as in `project_many`)."""
    return project_many(x, (w,), out_dtype, real_rows)[0]


def take_columns(w: Weight, ids: jax.Array) -> jax.Array:
    """Columns `ids` of an [in, out] weight as float rows [*ids.shape, in] (embedding lookup in a tied head)."""
    if isinstance(w, GGMLWeight):
        return embedding_rows(w, ids)
    if isinstance(w, NativeWeight):
        if isinstance(w.weight, jax.Array) and w.weight.dtype in (jnp.bfloat16, jnp.float16):
            # XLA:CPU gathers 16-bit tables by converting them whole to f32, and decode loops
            # hoist that conversion: a 113 MB copy per call for a 49152-token head.
            from lljx import native_kernels

            return native_kernels.columns(w.weight, ids)
        w = w.weight
    if isinstance(w, Int8Weight):
        values = jnp.take(w.values, ids, axis=1).astype(jnp.float32)  # [in, *ids]
        scales = jnp.repeat(jnp.take(w.scales, ids, axis=1), Q8_BLOCK, axis=0)
        return jnp.moveaxis(values * scales, 0, -1)
    return jnp.moveaxis(jnp.take(w, ids, axis=1), 0, -1)


def embedding_rows(table: GGMLWeight, ids: jax.Array) -> jax.Array:
    """Rows `ids` of a file-format table [vocab, d_model] as f32 [*ids.shape, d_model], dequantized in Rust."""
    from lljx import native_kernels

    return native_kernels.block_rows(table, ids)


PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def tile_int8(w: Int8Weight) -> TiledInt8Weight:
    """The int8 dot-product kernel's copy of `w`: values + 128 as uint8, reordered so each
    32-input block of 16 outputs is 512 contiguous bytes [8][16 outputs][4 inputs]."""
    n_in, n_out = w.values.shape
    if isinstance(w.values, jax.ShapeDtypeStruct):  # weights not loaded yet: shapes only
        return TiledInt8Weight(jax.ShapeDtypeStruct((n_in, n_out), jnp.uint8), w.scales)
    shifted = (np.asarray(w.values).astype(np.int16) + 128).astype(np.uint8)
    tiles = shifted.reshape(n_in // Q8_BLOCK, Q8_BLOCK // 4, 4, n_out // INT8_TILE, INT8_TILE)
    ordered = np.ascontiguousarray(tiles.transpose(0, 3, 1, 4, 2)).reshape(n_in, n_out)
    return TiledInt8Weight(jnp.asarray(ordered), w.scales)


def can_tile(w: Weight) -> bool:
    """Int8 weights whose shape fits the tiled layout (whole blocks and tiles)."""
    return isinstance(w, Int8Weight) and w.values.shape[0] % Q8_BLOCK == 0 and w.values.shape[1] % INT8_TILE == 0


def use_native_kernel(params: Params, *, int8_dot: bool | None = None) -> Params:
    """The same params with every projection and the head routed to the native kernel.

    Float weights are shared, not copied. Int8 weights also get a tiled copy for the int8
    dot-product kernel when `int8_dot` (default: when the CPU has AVX-512 VNNI); decode then
    quantizes activations to int8 per block of 32 as llama.cpp does, and prompts keep XLA's f32 path.
    """
    if int8_dot is None:
        from lljx import _native

        int8_dot = _native.int8_dot_kernel_available()

    def wrap(w: Weight) -> Weight:
        if isinstance(w, (NativeWeight, GGMLWeight)):  # file formats already go to the kernels
            return w
        return NativeWeight(w, tile_int8(w).values if int8_dot and can_tile(w) else None)  # type: ignore[arg-type]

    def wrap_layer(layer: LayerParams) -> LayerParams:
        return layer._replace(**{name: wrap(getattr(layer, name)) for name in PROJECTIONS})

    return params._replace(layers=tuple(wrap_layer(lp) for lp in params.layers), head=wrap(params.head))
