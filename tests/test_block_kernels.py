"""The GGUF block kernels inside jitted code: every format against float64 products of gguf's dequantized blocks, batch invariance, lookups, errors."""

from __future__ import annotations

import gguf
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from fixtures.random_llama import quantize
from lljx import _native, native_kernels
from lljx.params import GGMLWeight

Q = gguf.GGMLQuantizationType
RNG = np.random.default_rng(12)
BLOCK_FORMATS = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
FLOAT_FORMATS = [Q.F32, Q.F16, Q.BF16]
FORMATS = FLOAT_FORMATS + BLOCK_FORMATS
Q8_1_WEIGHTS = (Q.Q4_1, Q.Q5_1)
K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)


# ---- llama.cpp's activation formats, from its reference C code (x86 build) ----


def f16(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float64)


def q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quantize_row_q8_0 (AVX path) per block of 32: int8 values, the f16-rounded scale, and Q8_1's `s`."""
    blocks = np.asarray(x, np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inverse)  # float32 product, rounded half to even like _mm256_round_ps
    s = f16(d[..., 0] * q.sum(axis=-1, dtype=np.float32))
    return q.astype(np.float64), f16(d), s


def q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """quantize_row_q8_K_ref per block of 256: int8 values and the f32 scale 1 / (-127 / max)."""
    blocks = np.asarray(x, np.float32).reshape(*x.shape[:-1], -1, 256)
    first_max = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)
    with np.errstate(divide="ignore"):
        iscale = np.where(first_max != 0, np.float32(-127) / first_max, np.float32(0)).astype(np.float32)
    q = np.minimum(np.rint(blocks * iscale), 127)
    with np.errstate(divide="ignore"):
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    return q.astype(np.float64), d.astype(np.float64)


def reference(x: np.ndarray, w: GGMLWeight) -> tuple[np.ndarray, np.ndarray]:
    """What llama.cpp computes for x @ wᵀ, in float64, and the sum of |terms| (for the tolerance)."""
    qtype = Q(w.ggml_type)
    weight = stored(w)
    if qtype in FLOAT_FORMATS:
        dense = np.asarray(weight, np.float64)
        act = {Q.F32: np.asarray(x, np.float64), Q.F16: f16(x), Q.BF16: np.asarray(x.astype(ml_dtypes.bfloat16), np.float64)}[qtype]
        return act @ dense.T, np.abs(act) @ np.abs(dense).T
    dense = np.asarray(gguf.quants.dequantize(weight, qtype), np.float64)
    if qtype in K_QUANTS:
        q, d = q8_k(x)
        act = (q * d).reshape(x.shape)
        return act @ dense.T, np.abs(act) @ np.abs(dense).T
    q, d, s = q8_0(x)
    act = (q * d).reshape(x.shape)
    y = act @ dense.T
    if qtype in Q8_1_WEIGHTS:
        # llama.cpp adds each block's minimum times `s` (f16 of the unrounded scale · Σq), not times d · Σq.
        blocks = weight.reshape(w.n_out, -1, gguf.GGML_QUANT_SIZES[qtype][1])
        mins = np.asarray(blocks[:, :, 2:4].copy().view(np.float16), np.float64)[..., 0]
        y += (s - d[..., 0] * q.sum(axis=-1)) @ mins.T
    return y, np.abs(act) @ np.abs(dense).T


def weight(qtype: Q, n_out: int, n_in: int) -> GGMLWeight:
    """A random weight in `qtype`, by gguf's quantizer where it has one, else valid random blocks."""
    values = RNG.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)
    if qtype == Q.F32:
        data = values
    elif qtype == Q.F16:
        data = values.astype(np.float16)
    elif qtype == Q.BF16:
        data = values.astype(ml_dtypes.bfloat16)
    else:
        q = quantize(values, qtype, RNG)
        data = q[0] if isinstance(q, tuple) else q
    return GGMLWeight.from_rows(jnp.asarray(data), int(qtype))


def stored(w: GGMLWeight) -> np.ndarray:
    """The weight's rows as numpy: values [n_out, n_in] for float formats, else bytes [n_out, row bytes]."""
    rows = w.stored_rows()
    values = {Q.F32: np.float32, Q.F16: np.float16, Q.BF16: ml_dtypes.bfloat16}
    return rows.view(values[Q(w.ggml_type)]) if Q(w.ggml_type) in values else rows


def block_width(qtype: Q) -> int:
    return gguf.GGML_QUANT_SIZES[qtype][0]


def matmul(x: np.ndarray, weights: list[GGMLWeight]) -> list[np.ndarray]:
    got = jax.jit(lambda x, ws: native_kernels.block_matmul(x, ws))(jnp.asarray(x), weights)
    return [np.asarray(y) for y in got]


def check(x: np.ndarray, w: GGMLWeight, y: np.ndarray) -> None:
    want, scale = reference(x, w)
    assert y.shape == want.shape and y.dtype == np.float32
    n_blocks = max(1, w.n_in // max(block_width(Q(w.ggml_type)), 16))
    np.testing.assert_allclose(y, want, rtol=0, atol=float(4e-7 * np.sqrt(n_blocks) * scale.max() + 1e-30))


# ---- products ----


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: Q(q).name)
@pytest.mark.parametrize("rows", [1, 3, 9, 64])
def test_each_format_equals_the_float64_product_llama_cpp_computes(qtype, rows):
    n_in = 2 * max(block_width(qtype), 256)
    weights = [weight(qtype, n, n_in) for n in (33, 7, 200)]
    x = RNG.standard_normal((rows, n_in), dtype=np.float32)
    x[0, :32] = 0.0  # an all-zero block has scale 0
    for w, y in zip(weights, matmul(x, weights)):
        check(x, w, y)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_1], ids=lambda q: Q(q).name)
def test_odd_widths_one_block_and_many(qtype):
    for n_in in ([block_width(qtype)] if qtype not in FLOAT_FORMATS else [1, 7, 33]) + [block_width(qtype) * 40]:
        w = weight(qtype, 5, n_in)
        x = RNG.standard_normal((2, n_in), dtype=np.float32)
        check(x, w, matmul(x, [w])[0])


def test_weights_of_different_formats_share_one_call():
    n_in = 512
    weights = [weight(q, n, n_in) for q, n in [(Q.Q4_K, 48), (Q.Q6_K, 16), (Q.Q8_0, 40), (Q.F16, 9), (Q.Q4_1, 32)]]
    x = RNG.standard_normal((4, n_in), dtype=np.float32)
    for w, y in zip(weights, matmul(x, weights)):
        check(x, w, y)


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: Q(q).name)
def test_a_rows_result_does_not_depend_on_the_other_rows(qtype):
    """Batch invariance: the same row gives bit-identical outputs alone, among 8 (decode path) or among 100 (GEMM)."""
    n_in = 512
    w = weight(qtype, 40, n_in)
    x = RNG.standard_normal((100, n_in), dtype=np.float32)
    alone = [matmul(x[i : i + 1], [w])[0][0] for i in (0, 5, 99)]
    eight = matmul(x[:8], [w])[0]
    hundred = matmul(x, [w])[0]
    np.testing.assert_array_equal(alone[0], eight[0])
    np.testing.assert_array_equal(alone[1], eight[5])
    np.testing.assert_array_equal(eight, hundred[:8])
    np.testing.assert_array_equal(alone[2], hundred[99])


def test_leading_dimensions_are_kept():
    w = weight(Q.Q4_0, 16, 64)
    x = RNG.standard_normal((2, 3, 64), dtype=np.float32)
    (y,) = jax.jit(lambda x: native_kernels.block_matmul(x, [w]))(jnp.asarray(x))
    assert y.shape == (2, 3, 16)
    np.testing.assert_array_equal(np.asarray(y).reshape(6, 16), matmul(x.reshape(6, 64), [w])[0])


@pytest.mark.parametrize("qtype", [Q.F16, Q.Q4_K, Q.Q8_0], ids=lambda q: q.name)
def test_padding_past_the_real_rows_is_skipped_and_zero(qtype):
    """Right-padded sequences: the real rows are bit-equal to a call over every row; the padding is 0."""
    w = weight(qtype, 40, 512)
    x = RNG.standard_normal((3, 20, 512), dtype=np.float32)
    real = np.asarray([13, 20, 0], np.int32)
    every = matmul(x.reshape(60, 512), [w])[0].reshape(3, 20, 40)
    (got,) = jax.jit(lambda x, n: native_kernels.block_matmul(x, [w], n))(jnp.asarray(x), jnp.asarray(real))
    got = np.asarray(got)
    for b, n in enumerate(real):
        np.testing.assert_array_equal(got[b, :n], every[b, :n])
        assert not got[b, n:].any()
    (one,) = jax.jit(lambda x, n: native_kernels.block_matmul(x, [w], n))(jnp.asarray(x[:1]), jnp.asarray([50], np.int32))
    np.testing.assert_array_equal(np.asarray(one)[0], every[0])
    with pytest.raises(ValueError, match="real_rows"):
        native_kernels.block_matmul(jnp.asarray(x[0]), [w], jnp.asarray(real))


# ---- embedding rows ----


@pytest.mark.parametrize("qtype", FORMATS, ids=lambda q: Q(q).name)
def test_rows_are_bit_equal_to_gguf_dequantize(qtype):
    w = weight(qtype, 37, 256)
    ids = np.asarray([[0, 36, 5], [5, 17, 1]], np.int32)
    got = np.asarray(jax.jit(native_kernels.block_rows)(w, jnp.asarray(ids)))
    data = stored(w)
    dense = data.astype(np.float32) if qtype in FLOAT_FORMATS else gguf.quants.dequantize(data, qtype)
    assert got.shape == (2, 3, 256) and got.dtype == np.float32
    np.testing.assert_array_equal(got, dense[ids])


# ---- errors ----


@pytest.mark.parametrize("bad_id", [-1, 37])
def test_an_id_outside_the_table_is_an_error(bad_id):
    w = weight(Q.Q8_0, 37, 64)
    with pytest.raises(Exception, match="outside the table of 37 rows"):
        jax.jit(native_kernels.block_rows)(w, jnp.asarray([1, bad_id])).block_until_ready()


def test_types_without_a_kernel_are_refused_by_name():
    assert set(native_kernels.block_kernel_types()) == {int(q) for q in FORMATS}
    w = GGMLWeight(jnp.zeros(4 * 66, jnp.uint8), int(Q.IQ2_XXS), 256, 4)
    with pytest.raises(ValueError, match="no IQ2_XXS kernel"):
        native_kernels.block_matmul(jnp.zeros((1, 256)), [w])


def test_shapes_that_do_not_fit_are_errors_not_crashes():
    good = weight(Q.Q4_K, 16, 256)
    with pytest.raises(ValueError, match="takes 256 inputs but x has 512"):
        native_kernels.block_matmul(jnp.zeros((2, 512)), [good])
    cases = [
        (GGMLWeight(good.data[:-100], int(Q.Q4_K), 256, 16), "144 bytes, which do not divide"),  # truncated
        (GGMLWeight(good.data, int(Q.Q6_K), 256, 16), "210 bytes, which do not divide"),  # wrong type for the bytes
        (GGMLWeight(jnp.zeros(16 * 256, jnp.float32), int(Q.F16), 256, 16), "must be uint8"),
        (GGMLWeight(jnp.zeros((16, 144), jnp.uint8), int(Q.Q4_K), 256, 16), "must be flat"),
        (GGMLWeight(good.data, int(Q.Q4_K), 256, 16, 2), "skip 2 must be a multiple of 4"),
        (GGMLWeight(jnp.zeros(16 * 300, jnp.uint8), int(Q.Q4_0), 300, 16), "whole blocks of 32"),
    ]
    for w, message in cases:
        with pytest.raises(Exception, match=message):
            xx = jnp.zeros((2, w.n_in), jnp.float32)
            jax.jit(lambda x, w: native_kernels.block_matmul(x, [w]))(xx, w)[0].block_until_ready()


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.F16], ids=lambda q: q.name)
def test_skipped_leading_bytes_are_not_read(qtype):
    # A view of a mapped file starts at the 64-byte boundary before its tensor; the bytes before are another tensor's.
    w = weight(qtype, 24, 256)
    shifted = GGMLWeight(jnp.concatenate([jnp.full(32, 0x7B, jnp.uint8), w.data]), w.ggml_type, w.n_in, w.n_out, 32)
    x = RNG.standard_normal((3, 256), dtype=np.float32)
    np.testing.assert_array_equal(matmul(x, [shifted])[0], matmul(x, [w])[0])
    ids = jnp.asarray([0, 23, 7], jnp.int32)
    np.testing.assert_array_equal(native_kernels.block_rows(shifted, ids), native_kernels.block_rows(w, ids))


def test_block_kernel_types_lists_ggml_ids():
    assert all(isinstance(t, int) for t in _native.block_kernel_types())
