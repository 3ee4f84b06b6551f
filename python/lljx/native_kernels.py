"""lljx's Rust kernels inside jitted JAX code on CPU (matrix products over [in, out] and GGUF-format weights, attention, RMSNorm, embedding lookups, argmax): registration and calls."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lljx import _native
from lljx.params import GGMLWeight, Int8Weight, TiledInt8Weight

TARGET = "lljx_matvec"
ATTEND_TARGET = "lljx_attend"
COLUMNS_TARGET = "lljx_columns"
ARGMAX_TARGET = "lljx_argmax"
RMS_NORM_TARGET = "lljx_rms_norm"
BLOCK_MATMUL_TARGET = "lljx_block_matmul"
BLOCK_ROWS_TARGET = "lljx_block_rows"


@functools.cache
def register() -> None:
    """Registers the handlers with XLA's CPU backend once per process."""
    jax.ffi.register_ffi_target(TARGET, _native.matvec_ffi_handler(), platform="cpu")
    jax.ffi.register_ffi_target(ATTEND_TARGET, _native.attend_ffi_handler(), platform="cpu")
    jax.ffi.register_ffi_target(COLUMNS_TARGET, _native.columns_ffi_handler(), platform="cpu")
    jax.ffi.register_ffi_target(ARGMAX_TARGET, _native.argmax_ffi_handler(), platform="cpu")
    jax.ffi.register_ffi_target(RMS_NORM_TARGET, _native.rms_norm_ffi_handler(), platform="cpu")
    jax.ffi.register_ffi_target(BLOCK_MATMUL_TARGET, _native.block_matmul_ffi_handler(), platform="cpu")
    jax.ffi.register_ffi_target(BLOCK_ROWS_TARGET, _native.block_rows_ffi_handler(), platform="cpu")


def check_available() -> None:
    """Raises a one-line error when the kernel cannot run: it is a CPU kernel."""
    backend = jax.default_backend()
    if backend != "cpu":
        raise ValueError(f"the native matvec kernel runs on CPU only; the default JAX backend here is {backend}")


def matvec(
    x: jax.Array, weights: Sequence[jax.Array | Int8Weight | TiledInt8Weight], out_dtype: jnp.dtype
) -> list[jax.Array]:
    """x [rows, in] · each weight [in, out_i] in one call; outputs [rows, out_i] at out_dtype."""
    register()
    rows = x.shape[0]
    operands: list[jax.Array] = [x]
    results = []
    for w in weights:
        if isinstance(w, (Int8Weight, TiledInt8Weight)):
            operands += [w.values, w.scales]
            n_out = w.values.shape[1]
        else:
            operands.append(w)
            n_out = w.shape[1]
        results.append(jax.ShapeDtypeStruct((rows, n_out), out_dtype))
    return list(jax.ffi.ffi_call(TARGET, results)(*operands))


def attend(
    q: jax.Array, new_k: jax.Array, new_v: jax.Array, cache_k: jax.Array, cache_v: jax.Array, positions: jax.Array,
    cos: jax.Array, sin: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decode attention with the rotary embedding and the cache write: q [batch, heads, d_head] and
    the new keys [batch, kv_heads, d_head] are rotated by each row's cos and sin [batch, d_head / 2];
    the keys and new values go into K [batch, kv_heads, max_len, d_head] and V [batch, kv_heads,
    d_head, max_len] at each row's position [batch]; then q attends up to it. All f32 but the
    caches, which may both be f16 instead. Returns the output and both caches, updated in place
    when their buffers are donated. With caches of one row and q of several (a prompt chunk at
    positions [chunk]), every row's key and value is written first, then each row attends up to
    its own position. A row at position -1 is padding: it writes and attends nothing (zeros out)."""
    register()
    results = (
        jax.ShapeDtypeStruct(q.shape, jnp.float32),
        jax.ShapeDtypeStruct(cache_k.shape, cache_k.dtype),
        jax.ShapeDtypeStruct(cache_v.shape, cache_v.dtype),
    )
    call = jax.ffi.ffi_call(ATTEND_TARGET, results, input_output_aliases={3: 1, 4: 2})
    out, cache_k, cache_v = call(
        q, new_k, new_v, cache_k, cache_v, positions.astype(jnp.int32), cos.astype(jnp.float32), sin.astype(jnp.float32)
    )
    return out, cache_k, cache_v


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm of f32 x [..., d] by weight [d], each row summed in one fixed order whatever the batch."""
    register()
    call = jax.ffi.ffi_call(RMS_NORM_TARGET, jax.ShapeDtypeStruct(x.shape, jnp.float32))
    return call(x.astype(jnp.float32), weight.astype(jnp.float32), eps=np.float32(eps))


def columns(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Columns `ids` [...] of a float [in, out] table as f32 rows [..., in] (tied embeddings)."""
    register()
    flat = ids.reshape(-1).astype(jnp.int32)
    call = jax.ffi.ffi_call(COLUMNS_TARGET, jax.ShapeDtypeStruct((flat.shape[0], table.shape[0]), jnp.float32))
    return call(table, flat).reshape(*ids.shape, table.shape[0])


def argmax(logits: jax.Array) -> jax.Array:
    """`jnp.argmax(logits, axis=-1)` as int32 over f32 logits [batch, vocab], in a few microseconds."""
    register()
    rows = logits.reshape(-1, logits.shape[-1]).astype(jnp.float32)
    out = jax.ffi.ffi_call(ARGMAX_TARGET, jax.ShapeDtypeStruct((rows.shape[0],), jnp.int32))(rows)
    return out.reshape(logits.shape[:-1])


@functools.cache
def block_kernel_types() -> frozenset[int]:
    """The ggml type ids `block_matmul` and `block_rows` accept on this CPU."""
    return frozenset(_native.block_kernel_types())


def _check_block_type(w: GGMLWeight) -> None:
    if int(w.ggml_type) not in block_kernel_types():
        import gguf

        name = gguf.GGMLQuantizationType(w.ggml_type).name
        raise ValueError(f"the block kernels have no {name} kernel; dequantize that weight instead")


def block_matmul(
    x: jax.Array, weights: Sequence[GGMLWeight], real_rows: jax.Array | None = None
) -> list[jax.Array]:
    """x f32 [..., n_in] times each GGUF-format weight ([n_out, n_in] as stored) in one call: f32 [..., n_out_i].

    The weights share x (Q/K/V, or gate/up); x is rounded once per activation format, the
    way llama.cpp rounds activations for each weight type (Q8_0, Q8_1, Q8_K, f16, bf16).
    Few rows stream the weights once; many rows take the cache-tiled GEMM path. A row's
    result does not depend on the other rows of the call.

    real_rows (int [batch], for x [batch, seq, n_in] right-padded): sequence b's first
    real_rows[b] rows are multiplied; the padding's results are zeros, computed by no product.
    """
    register()
    if not weights:
        raise ValueError("block_matmul needs at least one weight")
    n_in = x.shape[-1]
    for w in weights:
        _check_block_type(w)
        if w.n_in != n_in:
            raise ValueError(f"a weight takes {w.n_in} inputs but x has {n_in}")
    lead = tuple(x.shape[:-1])
    results = [jax.ShapeDtypeStruct((*lead, w.n_out), jnp.float32) for w in weights]
    types = np.asarray([int(w.ggml_type) for w in weights], dtype=np.int32)
    skips = np.asarray([int(w.skip) for w in weights], dtype=np.int32)
    call = jax.ffi.ffi_call(BLOCK_MATMUL_TARGET, results)
    data = tuple(w.data for w in weights)
    if real_rows is None:
        return list(call(x.astype(jnp.float32), *data, ggml_types=types, skips=skips, real_rows=np.int32(0)))
    if x.ndim != 3 or real_rows.shape != x.shape[:1]:
        raise ValueError(f"real_rows [batch] needs x [batch, seq, n_in]; got {real_rows.shape} and {x.shape}")
    counts = real_rows.astype(jnp.int32)
    return list(call(x.astype(jnp.float32), counts, *data, ggml_types=types, skips=skips, real_rows=np.int32(1)))


def block_rows(w: GGMLWeight, ids: jax.Array) -> jax.Array:
    """Rows `ids` (any shape) of a GGUF-format table as f32 [*ids.shape, n_in], bit-equal to gguf's dequantize."""
    register()
    _check_block_type(w)
    call = jax.ffi.ffi_call(BLOCK_ROWS_TARGET, jax.ShapeDtypeStruct((*ids.shape, w.n_in), jnp.float32))
    return call(w.data, ids.astype(jnp.int32), ggml_type=np.int32(w.ggml_type), skip=np.int32(w.skip))
