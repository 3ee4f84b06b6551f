"""The Rust matvec kernel inside jitted code: every weight kind against XLA's dot, threads, shapes, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lljx import _native, native_kernels
from lljx.core import linear
from lljx.params import Q8_BLOCK, Int8Weight, NativeWeight, TiledInt8Weight

RNG = np.random.default_rng(7)


def random_int8(n_in: int, n_out: int) -> Int8Weight:
    values = RNG.integers(-127, 128, size=(n_in, n_out), dtype=np.int8)
    scales = (RNG.random((n_in // Q8_BLOCK, n_out), dtype=np.float32) * 0.02).astype(np.float32)
    return Int8Weight(jnp.asarray(values), jnp.asarray(scales))


def exact(x: jax.Array, w) -> np.ndarray:
    """x · w in float64 from the exact values the kernel sees."""
    dense = linear.dequantize(w) if isinstance(w, Int8Weight) else w
    return np.asarray(x, np.float64) @ np.asarray(dense.astype(jnp.float32), np.float64)


# Shapes: Llama-like, output widths not a multiple of 16, a wide head-like output (4 rows per pass),
# and input counts that leave a part of a 4-row pass.
SHAPES = [(576, (576, 192, 192)), (64, (7,)), (96, (200, 33)), (128, (5000,)), (66, (48,))]


@pytest.mark.parametrize("n_in,outs", SHAPES)
@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("rows", [1, 3])
def test_float_weights_match_float64(n_in, outs, dtype, rows):
    jdt = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}[dtype]
    x = jnp.asarray(RNG.standard_normal((rows, n_in), dtype=np.float32)).astype(jdt)
    weights = [jnp.asarray(RNG.standard_normal((n_in, n), dtype=np.float32) / np.sqrt(n_in)).astype(jdt) for n in outs]
    got = jax.jit(lambda x, *w: native_kernels.matvec(x, w, jnp.float32))(x, *weights)
    for y, w in zip(got, weights):
        assert y.shape == (rows, w.shape[1]) and y.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(y), exact(x, w), rtol=0, atol=2e-5)


@pytest.mark.parametrize("n_in,outs", [(576, (576, 192)), (64, (7, 5000)), (1536, (576,))])
def test_int8_weights_match_float64(n_in, outs):
    x = jnp.asarray(RNG.standard_normal((2, n_in), dtype=np.float32))
    weights = [random_int8(n_in, n) for n in outs]
    got = jax.jit(lambda x, w: native_kernels.matvec(x, w, jnp.float32))(x, weights)
    for y, w in zip(got, weights):
        want = exact(x, w)
        np.testing.assert_allclose(np.asarray(y), want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float16])
def quantized_activations(x: np.ndarray) -> np.ndarray:
    """x as the int8 dot-product kernel sees it: per block of 32, int8 values (ties to even) times max |x| / 127."""
    blocks = np.asarray(x, np.float32).reshape(*x.shape[:-1], -1, Q8_BLOCK)
    scale = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    inverse = np.where(scale != 0, np.float32(1) / np.where(scale != 0, scale, np.float32(1)), np.float32(0))
    return (np.rint(blocks * inverse.astype(np.float32)) * scale).reshape(x.shape)


needs_int8_dot = pytest.mark.skipif(
    not _native.int8_dot_kernel_available(), reason="this CPU has no AVX-512 VNNI for the int8 dot-product kernel"
)


@needs_int8_dot
@pytest.mark.parametrize("n_in,outs", [(576, (576, 192, 192)), (64, (16, 5008)), (1536, (576,))])
@pytest.mark.parametrize("rows", [1, 3])
def test_tiled_int8_weights_are_the_int8_product_on_block_quantized_activations(n_in, outs, rows):
    x = RNG.standard_normal((rows, n_in), dtype=np.float32)
    x[0, :Q8_BLOCK] = 0.0  # an all-zero block has scale 0
    weights = [random_int8(n_in, n) for n in outs]
    tiled = [linear.tile_int8(w) for w in weights]
    assert all(t.values.dtype == jnp.uint8 and t.values.shape == w.values.shape for t, w in zip(tiled, weights))
    got = jax.jit(lambda x, w: native_kernels.matvec(x, w, jnp.float32))(jnp.asarray(x), tiled)
    for y, w in zip(got, weights):
        want = exact(jnp.asarray(quantized_activations(x)), w)
        np.testing.assert_allclose(np.asarray(y), want, rtol=0, atol=2e-6 * np.abs(want).max())
        # The activations' rounding stays small next to the product itself.
        np.testing.assert_allclose(np.asarray(y), exact(jnp.asarray(x), w), rtol=0, atol=0.02 * np.abs(want).max())


def test_use_native_kernel_tiles_int8_weights_only_when_asked(tiny_params):
    from lljx.models.quantize import from_rows

    layer = tiny_params.layers[0]
    int8_wq = from_rows(np.asarray(layer.wq).T)
    params = tiny_params._replace(layers=(layer._replace(wq=int8_wq), *tiny_params.layers[1:]))
    tiled = linear.use_native_kernel(params, int8_dot=True).layers[0]
    assert isinstance(tiled.wq.kernel_weight(), TiledInt8Weight) and tiled.wq.weight is int8_wq
    assert tiled.wq.kernel_weight().scales is int8_wq.scales  # shared, passed to compiled code once
    assert tiled.wk.packed is None and tiled.wk.weight is layer.wk  # float weights are shared, never copied
    assert linear.use_native_kernel(params, int8_dot=False).layers[0].wq.packed is None

    w, f = random_int8(64, 32), jnp.ones((64, 32), jnp.float32)
    x = jnp.asarray(RNG.standard_normal((1, 64), dtype=np.float32))
    packed = NativeWeight(w, linear.tile_int8(w).values)
    assert isinstance(packed.kernel_weight(), TiledInt8Weight)
    if _native.int8_dot_kernel_available():
        text = jax.jit(lambda x: linear.project(x, packed)).lower(x).as_text()
        assert "ui8" in text and "lljx_matvec" in text
    # Prompts (many rows) multiply the original int8 weight with XLA, unquantized activations.
    many = jnp.asarray(RNG.standard_normal((1, 9, 64), dtype=np.float32))
    np.testing.assert_allclose(linear.project(many, packed), linear.xla_project(many, w), rtol=1e-5, atol=1e-6)
    assert not linear.can_tile(f) and not linear.can_tile(random_int8(64, 24)) and linear.can_tile(w)


@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_outputs_are_rounded_f32_sums(out_dtype):
    x = jnp.asarray(RNG.standard_normal((1, 256), dtype=np.float32))
    w = jnp.asarray(RNG.standard_normal((256, 300), dtype=np.float32) / 16)
    (y,) = jax.jit(lambda x, w: native_kernels.matvec(x, [w], out_dtype))(x, w)
    (sums,) = jax.jit(lambda x, w: native_kernels.matvec(x, [w], jnp.float32))(x, w)
    assert y.dtype == out_dtype
    np.testing.assert_allclose(np.asarray(sums), exact(x, w), rtol=1e-5, atol=1e-5)
    # Rounded once, from the same f32 sums: rounding the float64 product instead is off by one
    # 16-bit step wherever the f32 sum and the exact one straddle a rounding boundary.
    np.testing.assert_array_equal(np.asarray(y), np.asarray(sums.astype(out_dtype)))


def test_project_many_routes_few_rows_to_the_kernel_and_many_to_xla():
    w = jnp.asarray(RNG.standard_normal((64, 48), dtype=np.float32))
    native = NativeWeight(w)
    few = jnp.ones((1, 2, 64), jnp.float32)
    many = jnp.ones((1, linear.NATIVE_MAX_ROWS + 1, 64), jnp.float32)
    assert "lljx_matvec" in jax.jit(lambda x: linear.project(x, native)).lower(few).as_text()
    assert "lljx_matvec" not in jax.jit(lambda x: linear.project(x, native)).lower(many).as_text()
    np.testing.assert_allclose(linear.project(few, native), few @ w, rtol=1e-5)
    np.testing.assert_allclose(linear.project(many, native), many @ w, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_prompts_over_16_bit_weights_multiply_16_bit_activations_accumulating_in_f32(dtype):
    """The native strategies' prompt path: f32 activations round to the weight's dtype, the sum stays f32."""
    w = jnp.asarray(RNG.standard_normal((96, 40), dtype=np.float32) / 10).astype(dtype)
    x = jnp.asarray(RNG.standard_normal((1, 12, 96), dtype=np.float32))
    y = linear.project(x, NativeWeight(w))
    assert y.dtype == jnp.float32
    rounded = np.asarray(x.astype(dtype).astype(jnp.float32), np.float64)
    np.testing.assert_allclose(np.asarray(y), rounded @ np.asarray(w.astype(jnp.float32), np.float64), rtol=0, atol=1e-5)
    hlo = jax.jit(lambda x: linear.project(x, NativeWeight(w))).lower(x).as_text()
    name = "bf16" if dtype == jnp.bfloat16 else "f16"
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert len(dots) == 1 and f"(tensor<1x12x96x{name}>, tensor<96x40x{name}>) -> tensor<1x12x40xf32>" in dots[0]


def test_int8_xla_path_matches_the_kernel():
    w = random_int8(128, 96)
    x = jnp.asarray(RNG.standard_normal((1, 128), dtype=np.float32))
    np.testing.assert_allclose(linear.project(x, NativeWeight(w)), linear.xla_project(x, w), rtol=1e-5, atol=1e-6)


def test_one_thread_and_the_pool_agree():
    """Splitting rows across threads only changes the order of the partial sums."""
    script = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from lljx import native_kernels\n"
        "r = np.random.default_rng(3)\n"
        "x = jnp.asarray(r.standard_normal((1, 1024), dtype=np.float32))\n"
        "w = jnp.asarray(r.standard_normal((1024, 4096), dtype=np.float32))\n"
        "y = native_kernels.matvec(x, [w], jnp.float32)[0]\n"
        "import sys; sys.stdout.buffer.write(np.asarray(y).tobytes())\n"
    )

    def run(threads: str) -> np.ndarray:
        env = {**os.environ, "LLJX_MATVEC_THREADS": threads}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout
        return np.frombuffer(out, np.float32)

    one, pool = run("1"), run("0")
    np.testing.assert_allclose(one, pool, rtol=1e-5, atol=1e-4)


def test_mismatched_shapes_are_an_error_not_a_crash():
    native_kernels.register()
    x = jnp.ones((1, 64), jnp.float32)
    w = jnp.ones((32, 16), jnp.float32)
    call = jax.ffi.ffi_call(native_kernels.TARGET, [jax.ShapeDtypeStruct((1, 16), jnp.float32)])
    with pytest.raises(Exception, match="weight 0 has 32 inputs, x has 64"):
        jax.block_until_ready(jax.jit(call)(x, w))
    values = jnp.ones((64, 16), jnp.int8)
    with pytest.raises(Exception, match="needs f32 scales"):
        jax.block_until_ready(jax.jit(call)(x, values, jnp.ones((3, 16), jnp.float32)))
    with pytest.raises(Exception, match="no scales"):
        jax.block_until_ready(jax.jit(call)(x, values))
    tiled = jnp.ones((64, 24), jnp.uint8)
    wide = jax.ffi.ffi_call(native_kernels.TARGET, [jax.ShapeDtypeStruct((1, 24), jnp.float32)])
    with pytest.raises(Exception, match="multiples of 16"):
        jax.block_until_ready(jax.jit(wide)(x, tiled, jnp.ones((2, 24), jnp.float32)))


def test_kernel_strategies_refuse_other_backends(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match="runs on CPU only"):
        native_kernels.check_available()


def attention_inputs(batch: int, kv_heads: int, rep: int, d: int, max_len: int):
    q = jnp.asarray(RNG.standard_normal((batch, 1, kv_heads * rep, d), dtype=np.float32))
    k = jnp.asarray(RNG.standard_normal((batch, kv_heads, max_len, d), dtype=np.float32))
    v = jnp.asarray(RNG.standard_normal((batch, kv_heads, d, max_len), dtype=np.float32))
    return q, k, v


def rope_inputs(config, positions):
    from lljx.core.rope import rope_tables

    cos, sin = rope_tables(config, positions[:, None])
    return cos, sin


@pytest.mark.parametrize("cache_dtype", [jnp.float32, jnp.float16])
@pytest.mark.parametrize("kv_heads,rep,d", [(3, 3, 64), (1, 1, 16), (2, 4, 24)])
def test_attention_kernel_rotates_writes_the_cache_then_matches_xla(kv_heads, rep, d, cache_dtype):
    from lljx.config import ModelConfig
    from lljx.core import kv_cache
    from lljx.core.attention import attend_xla
    from lljx.core.rope import apply_rope

    max_len = 40
    config = ModelConfig(
        vocab_size=8, d_model=kv_heads * rep * d, n_layers=1, n_heads=kv_heads * rep, n_kv_heads=kv_heads,
        d_head=d, d_ffn=8, rope_theta=1e4, norm_eps=1e-5, context_length=max_len, tie_embeddings=True,
    )
    q, k, v = attention_inputs(2, kv_heads, rep, d, max_len)
    k, v = k.astype(cache_dtype), v.astype(cache_dtype)
    new_k = jnp.asarray(RNG.standard_normal((2, 1, kv_heads, d), dtype=np.float32))
    new_v = jnp.asarray(RNG.standard_normal((2, 1, kv_heads, d), dtype=np.float32))
    kernel = jax.jit(native_kernels.attend)
    for rows in ([0, 5], [39, 17], [12, 12]):
        positions = jnp.asarray(rows, jnp.int32)
        cos, sin = rope_inputs(config, positions)
        want_k = kv_cache.write_keys(k, apply_rope(new_k, cos, sin), positions)
        want_v = kv_cache.write_values(v, new_v, positions)
        got, got_k, got_v = kernel(q[:, 0], new_k[:, 0], new_v[:, 0], k, v, positions, cos[:, 0], sin[:, 0])
        assert got_k.dtype == got_v.dtype == cache_dtype
        # A rotated key may differ from XLA's by an f32 rounding, which f16 can round either way.
        tolerance = 1e-6 if cache_dtype == jnp.float32 else 1e-3
        np.testing.assert_allclose(np.asarray(got_k, np.float32), np.asarray(want_k, np.float32), rtol=tolerance, atol=tolerance)
        np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
        want = attend_xla(config, apply_rope(q, cos, sin), got_k, got_v, positions[:, None])
        np.testing.assert_allclose(np.asarray(got).reshape(2, -1), np.asarray(want)[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache_dtype", [jnp.float32, jnp.float16])
@pytest.mark.parametrize("start,chunk", [(0, 16), (21, 5), (48, 16)])
def test_a_prompt_chunk_attends_causally_over_one_shared_cache_row_as_xla_does(start, chunk, cache_dtype):
    """q rows of one prompt's chunk share one cache row: every key is written, then each row
    attends up to its own position; what XLA's prompt path computes over the whole bucket."""
    from lljx.config import ModelConfig
    from lljx.core import kv_cache
    from lljx.core.attention import attend_xla
    from lljx.core.rope import apply_rope, rope_tables

    kv_heads, rep, d, max_len = 3, 3, 64, 64
    config = ModelConfig(
        vocab_size=8, d_model=kv_heads * rep * d, n_layers=1, n_heads=kv_heads * rep, n_kv_heads=kv_heads,
        d_head=d, d_ffn=8, rope_theta=1e4, norm_eps=1e-5, context_length=max_len, tie_embeddings=True,
    )
    _, k, v = attention_inputs(1, kv_heads, rep, d, max_len)  # earlier chunks' keys, and stale ones past
    k, v = k.astype(cache_dtype), v.astype(cache_dtype)
    q = jnp.asarray(RNG.standard_normal((1, chunk, kv_heads * rep, d), dtype=np.float32))
    new_k = jnp.asarray(RNG.standard_normal((1, chunk, kv_heads, d), dtype=np.float32))
    new_v = jnp.asarray(RNG.standard_normal((1, chunk, kv_heads, d), dtype=np.float32))
    positions = (start + jnp.arange(chunk, dtype=jnp.int32))[None]
    cos, sin = rope_tables(config, positions)
    got, got_k, got_v = jax.jit(native_kernels.attend)(q[0], new_k[0], new_v[0], k, v, positions[0], cos[0], sin[0])
    want_k = kv_cache.write_keys(k, apply_rope(new_k, cos, sin), positions[:, 0])
    want_v = kv_cache.write_values(v, new_v, positions[:, 0])
    tolerance = 1e-6 if cache_dtype == jnp.float32 else 1e-3
    np.testing.assert_allclose(np.asarray(got_k, np.float32), np.asarray(want_k, np.float32), rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
    want = attend_xla(config, apply_rope(q, cos, sin), got_k, got_v, positions)
    np.testing.assert_allclose(np.asarray(got).reshape(1, chunk, -1), np.asarray(want), rtol=2e-5, atol=2e-5)


def test_padding_rows_of_a_prompt_chunk_write_and_attend_nothing():
    """Rows at position -1 (a prompt right-padded to its bucket) leave the cache as it was and give
    zeros; the real rows give what they give without the padding."""
    kv_heads, rep, d, max_len, real, chunk = 2, 3, 16, 32, 5, 8
    _, k, v = attention_inputs(1, kv_heads, rep, d, max_len)
    q = jnp.asarray(RNG.standard_normal((chunk, kv_heads * rep, d), dtype=np.float32))
    new_k = jnp.asarray(RNG.standard_normal((chunk, kv_heads, d), dtype=np.float32))
    new_v = jnp.asarray(RNG.standard_normal((chunk, kv_heads, d), dtype=np.float32))
    angles = jnp.asarray(RNG.standard_normal((chunk, d // 2), dtype=np.float32))
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    start = 7
    padded = jnp.where(jnp.arange(chunk) < real, start + jnp.arange(chunk), -1).astype(jnp.int32)
    out, got_k, got_v = jax.jit(native_kernels.attend)(q, new_k, new_v, k, v, padded, cos, sin)
    alone, want_k, want_v = jax.jit(native_kernels.attend)(
        q[:real], new_k[:real], new_v[:real], k, v, start + jnp.arange(real, dtype=jnp.int32), cos[:real], sin[:real])
    np.testing.assert_array_equal(np.asarray(out)[:real], np.asarray(alone))
    assert not np.asarray(out)[real:].any()
    np.testing.assert_array_equal(np.asarray(got_k), np.asarray(want_k))  # nothing written past the real rows
    np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
    with pytest.raises(Exception, match="position -2 is outside the cache"):
        jax.jit(native_kernels.attend)(q, new_k, new_v, k, v, padded.at[-1].set(-2), cos, sin).block_until_ready()


def test_attention_kernel_writes_a_donated_cache_in_place():
    q, k, v = attention_inputs(1, 2, 2, 16, 8)
    new = jnp.ones((1, 2, 16), jnp.float32)
    cos, sin = jnp.ones((1, 8), jnp.float32), jnp.zeros((1, 8), jnp.float32)
    step = jax.jit(native_kernels.attend, donate_argnums=(3, 4))
    args = (q[:, 0], new, new, k, v, jnp.asarray([3], jnp.int32), cos, sin)
    text = step.lower(*args).compile().as_text()
    assert "copy(" not in text.split("ENTRY")[1], "the cache was copied rather than written in place"
    _, k2, v2 = step(*args)
    assert np.all(np.asarray(k2)[0, :, 3] == 1) and np.all(np.asarray(v2)[0, :, :, 3] == 1)


@pytest.mark.parametrize(
    "v_dtype,position,message",
    [
        (jnp.float16, 1, "the caches must be both f32 or both f16, got f32 and f16"),
        (jnp.float32, 8, "position 8 is outside the cache of 8"),
    ],
)
def test_attention_kernel_rejects_bad_calls(v_dtype, position, message):
    q, k, v = attention_inputs(1, 1, 2, 16, 8)
    new = jnp.zeros((1, 1, 16), jnp.float32)
    table = jnp.zeros((1, 8), jnp.float32)
    call = jax.jit(native_kernels.attend)
    with pytest.raises(Exception, match=message):
        jax.block_until_ready(call(q[:, 0], new, new, k, v.astype(v_dtype), jnp.asarray([position], jnp.int32), table, table))


@pytest.mark.parametrize("d", [576, 33, 16])
def test_rms_norm_kernel_matches_xla_and_is_the_same_in_any_batch(d):
    from lljx.core.norm import rms_norm

    x = jnp.asarray(RNG.standard_normal((8, d), dtype=np.float32) * 3)
    weight = jnp.asarray(RNG.standard_normal(d, dtype=np.float32))
    got = jax.jit(lambda x, w: rms_norm(x, w, 1e-5, row_invariant=True))(x, weight)
    np.testing.assert_allclose(np.asarray(got), np.asarray(rms_norm(x, weight, 1e-5)), rtol=2e-6, atol=2e-6)
    for rows in (1, 3):
        alone = jax.jit(lambda x, w: native_kernels.rms_norm(x, w, 1e-5))(x[:rows], weight)
        np.testing.assert_array_equal(np.asarray(alone), np.asarray(got)[:rows])


def test_rms_norm_kernel_rejects_a_weight_of_another_width():
    with pytest.raises(Exception, match=r"weight must be \[8\], got \[6\]"):
        jax.block_until_ready(native_kernels.rms_norm(jnp.ones((2, 8)), jnp.ones(6), 1e-5))


def test_native_params_decode_like_xla(tiny_config, tiny_params):
    """Prefill (XLA attention) then decode steps (kernel attention and matvec) equal the all-XLA path."""
    from dataclasses import replace

    from lljx.core import kv_cache, transformer
    from lljx.core.linear import use_native_kernel

    config = replace(tiny_config, activations="f32")
    native = use_native_kernel(tiny_params)
    ids = [5, 9, 2, 7, 7, 1, 3]

    def run(params):
        cache = kv_cache.create(config, 1, 16)
        logits, cache = transformer.forward(config, params, jnp.asarray([ids[:4]]), jnp.arange(4)[None], cache, jnp.array([3]))
        out = [logits]
        for pos in range(4, len(ids)):
            step = jax.jit(transformer.forward, static_argnums=0)
            logits, cache = step(config, params, jnp.asarray([[ids[pos]]]), jnp.array([[pos]]), cache, jnp.array([0]))
            out.append(logits)
        return np.concatenate([np.asarray(o) for o in out])

    np.testing.assert_allclose(run(native), run(tiny_params), rtol=1e-4, atol=1e-4)
    step_text = jax.jit(transformer.forward, static_argnums=0).lower(
        config, native, jnp.asarray([[1]]), jnp.array([[4]]), kv_cache.create(config, 1, 16), jnp.array([0])
    ).as_text()
    assert "lljx_attend" in step_text and "lljx_matvec" in step_text


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_columns_kernel_reads_the_same_values_as_take(dtype):
    table = jnp.asarray(RNG.standard_normal((48, 300), dtype=np.float32)).astype(dtype)
    ids = jnp.asarray([[0, 299, 17], [5, 5, 123]], jnp.int32)
    got = jax.jit(native_kernels.columns)(table, ids)
    assert got.shape == (2, 3, 48) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.moveaxis(jnp.take(table, ids, axis=1), 0, -1), np.float32))
    with pytest.raises(Exception, match="id 300 is outside the table of 300"):
        jax.block_until_ready(jax.jit(native_kernels.columns)(table, jnp.asarray([300], jnp.int32)))


def test_a_decode_loop_never_converts_a_16_bit_tied_head_to_f32(tiny_config, tiny_params):
    """XLA:CPU gathers a bf16 table by converting all of it, hoisted out of the loop; the native
    strategies read embedding columns with the kernel instead."""
    from lljx.core import embeddings
    from lljx.core.linear import use_native_kernel

    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16) if a.ndim == 2 else a, tiny_params)
    assert params.embed is None  # tied: embeddings are columns of the head
    native = use_native_kernel(params)
    vocab, d = tiny_config.vocab_size, tiny_config.d_model

    def loop(p, token):
        body = lambda i, t: jnp.argmax(embeddings.forward(p, t[None, None])[0, 0].astype(jnp.float32)).astype(jnp.int32) % vocab
        return jax.lax.fori_loop(0, 4, body, token)

    plain = jax.jit(loop).lower(params, jnp.int32(3)).compile().as_text()
    assert f"f32[{d},{vocab}]" in plain  # what XLA does on its own
    compiled = jax.jit(loop).lower(native, jnp.int32(3)).compile().as_text()
    assert f"f32[{d},{vocab}]" not in compiled and "lljx_columns" in compiled
    assert int(jax.jit(loop)(native, jnp.int32(3))) == int(jax.jit(loop)(params, jnp.int32(3)))


def test_argmax_kernel_is_jnp_argmax():
    logits = RNG.standard_normal((4, 49152), dtype=np.float32)
    logits[1, [7, 900]] = 50.0  # a tie: the first index wins
    logits[2, [33, 40000]] = np.nan  # NaN counts as the largest, the first one wins
    logits[3] = -np.inf
    got = jax.jit(native_kernels.argmax)(jnp.asarray(logits))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))


@pytest.mark.slow
def test_native_strategies_sample_greedily_with_the_argmax_kernel():
    from lljx.models import load_model
    from lljx.sampling import SamplerSettings
    from lljx.strategies import registry
    from lljx.strategies.api import plan_for

    model = load_model(None, dtype="bf16")
    for name in ("native-token", "native-loop"):
        decoder = registry.load(name).build(model, SamplerSettings(temperature=0))
        plan = plan_for(5, 8, model.config.context_length)
        decoder.prepare(plan)
        assert all("lljx_argmax" in e.as_text() for e in decoder._decodes.values()), name
