"""The JAX core against itself and against plain numpy: cache, padding, GQA, RoPE, scan vs unroll."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, random_params
from lljx.config import Llama3RopeScaling
from lljx.core import kv_cache, transformer
from lljx.core.rope import apply_rope, inverse_frequencies, llama3_scaled
from lljx.params import stack_layers


def prefill_then_decode_logits(config, params, ids, split, *, scan=False):
    """Logits at each position from prefilling ids[:split] then feeding the rest one by one."""
    if scan:
        params = params._replace(layers=stack_layers(params.layers))
    cache = kv_cache.create(config, 1, 64, stacked=scan)
    tokens = jnp.asarray([ids[:split]])
    positions = jnp.arange(split)[None]
    logits, cache = transformer.forward(config, params, tokens, positions, cache, jnp.array([split - 1]), scan_layers=scan)
    out = [logits[0]]
    for pos in range(split, len(ids)):
        logits, cache = transformer.forward(
            config, params, jnp.asarray([[ids[pos]]]), jnp.array([[pos]]), cache, jnp.array([0]), scan_layers=scan
        )
        out.append(logits[0])
    return np.stack(out)


def test_incremental_decode_matches_full_forward(tiny_config, tiny_params):
    ids = [5, 17, 3, 88, 42, 7, 7, 60, 1, 33]
    full = transformer.all_logits(tiny_config, tiny_params, jnp.asarray([ids]), kv_cache.create(tiny_config, 1, 64))[0]
    stepwise = prefill_then_decode_logits(tiny_config, tiny_params, ids, 4)
    np.testing.assert_allclose(stepwise, np.asarray(full[3:]), rtol=2e-5, atol=2e-5)


def test_scan_equals_unrolled(tiny_config, tiny_params):
    ids = [9, 8, 7, 6, 5, 4]
    a = prefill_then_decode_logits(tiny_config, tiny_params, ids, 3, scan=False)
    b = prefill_then_decode_logits(tiny_config, tiny_params, ids, 3, scan=True)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_right_padding_does_not_change_logits(tiny_config, tiny_params):
    ids = [11, 22, 33, 44, 55]
    cache = kv_cache.create(tiny_config, 1, 64)
    exact, _ = transformer.forward(tiny_config, tiny_params, jnp.asarray([ids]), jnp.arange(5)[None], cache, jnp.array([4]))
    padded_ids = jnp.asarray([ids + [0] * 11])
    padded, _ = transformer.forward(tiny_config, tiny_params, padded_ids, jnp.arange(16)[None], cache, jnp.array([4]))
    np.testing.assert_allclose(np.asarray(padded), np.asarray(exact), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_a_prompt_attends_over_its_bucket_then_its_cache_widens(tiny_config, tiny_params, scan):
    """prefill_logits attends over the prompt's bucket only; the widened cache equals the one a
    prefill into the whole cache leaves (zeros past the bucket), and decoding on from it agrees."""
    from lljx.strategies.steps import decode_logits, prefill_logits

    params = tiny_params._replace(layers=stack_layers(tiny_params.layers)) if scan else tiny_params
    ids = jnp.asarray([[5, 9, 2, 7, 7, 1, 3, 0]])
    logits, cache = prefill_logits(tiny_config, 32, params, ids, jnp.array([7]), scan_layers=scan)
    assert cache.max_len == 32
    whole = kv_cache.create(tiny_config, 1, 32, stacked=scan)
    want, want_cache = transformer.forward(
        tiny_config, params, ids, jnp.arange(8)[None], whole, jnp.array([6]), scan_layers=scan
    )
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-5, atol=1e-5)
    for got, expected in zip(jax.tree.leaves(cache), jax.tree.leaves(want_cache)):
        assert got.shape == expected.shape
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    step, _ = decode_logits(tiny_config, params, jnp.asarray([[4]]), cache, jnp.array([7]), scan_layers=scan)
    step_want, _ = decode_logits(tiny_config, params, jnp.asarray([[4]]), want_cache, jnp.array([7]), scan_layers=scan)
    np.testing.assert_allclose(np.asarray(step), np.asarray(step_want), rtol=1e-5, atol=1e-5)


def test_batch_rows_are_independent_with_per_row_positions(tiny_config, tiny_params):
    a, b = [1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]  # b is 3 tokens, right-padded
    cache = kv_cache.create(tiny_config, 2, 64)
    batched, _ = transformer.forward(
        tiny_config, tiny_params, jnp.asarray([a, b]), jnp.broadcast_to(jnp.arange(6), (2, 6)), cache, jnp.array([5, 2])
    )
    single_cache = kv_cache.create(tiny_config, 1, 64)
    la, _ = transformer.forward(tiny_config, tiny_params, jnp.asarray([a]), jnp.arange(6)[None], single_cache, jnp.array([5]))
    lb, _ = transformer.forward(tiny_config, tiny_params, jnp.asarray([b[:3]]), jnp.arange(3)[None], single_cache, jnp.array([2]))
    np.testing.assert_allclose(np.asarray(batched), np.concatenate([la, lb]), rtol=1e-5, atol=1e-5)


def test_gqa_equals_attention_with_repeated_kv_heads(tiny_config, tiny_params):
    """Duplicating each kv head n_rep times and running as plain multi-head attention changes nothing."""
    rep = tiny_config.n_rep
    mha = dataclasses.replace(tiny_config, n_kv_heads=tiny_config.n_heads)
    dh = tiny_config.d_head

    def repeat_heads(w):  # [d, kvh*dh] -> [d, h*dh], head i uses kv head i // rep
        d, _ = w.shape
        return jnp.repeat(w.reshape(d, -1, dh), rep, axis=1).reshape(d, -1)

    layers = tuple(lp._replace(wk=repeat_heads(lp.wk), wv=repeat_heads(lp.wv)) for lp in tiny_params.layers)
    mha_params = tiny_params._replace(layers=layers)
    ids = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]])
    a = transformer.all_logits(tiny_config, tiny_params, ids, kv_cache.create(tiny_config, 1, 16))
    b = transformer.all_logits(mha, mha_params, ids, kv_cache.create(mha, 1, 16))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_llama3_rope_scaling_bands():
    """High frequencies are kept, low ones divided by the factor, the band between blended."""
    scaling = Llama3RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context_length=8192)
    inv = 1.0 / (500000.0 ** (np.arange(0, 128, 2) / 128))
    scaled = llama3_scaled(inv, scaling)
    wavelen = 2 * np.pi / inv
    high = wavelen < 8192 / 4
    low = wavelen > 8192 / 1
    np.testing.assert_allclose(scaled[high], inv[high])
    np.testing.assert_allclose(scaled[low], inv[low] / 8)
    mid = ~(high | low)
    assert mid.any() and np.all(scaled[mid] < inv[mid]) and np.all(scaled[mid] > inv[mid] / 8)


def test_explicit_freq_factors_divide_frequencies():
    factors = tuple(float(i + 1) for i in range(TINY.d_head // 2))
    cfg = dataclasses.replace(TINY, rope_scaling=None, rope_freq_factors=factors)
    base = dataclasses.replace(TINY, rope_scaling=None)
    np.testing.assert_allclose(inverse_frequencies(cfg), inverse_frequencies(base) / np.array(factors))


def test_rotate_half_rope_matches_complex_rotation():
    """Rotate-half RoPE is the complex rotation of pairs (x[j], x[j + d/2]) by position * freq."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 5, 2, 8)).astype(np.float32)
    inv = inverse_frequencies(TINY)
    pos = np.arange(5)
    angles = pos[:, None] * inv[None, :]
    got = apply_rope(jnp.asarray(x), jnp.asarray(np.cos(angles))[None], jnp.asarray(np.sin(angles))[None])
    z = (x[..., :4] + 1j * x[..., 4:]) * np.exp(1j * angles)[None, :, None, :]
    want = np.concatenate([z.real, z.imag], axis=-1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_16bit_compute_tracks_f32(dtype):
    cfg16 = TINY.with_dtype(dtype)
    p32, p16 = random_params(TINY), random_params(cfg16)
    ids = jnp.asarray([[3, 1, 4, 1, 5, 9]])
    a = transformer.all_logits(TINY, p32, ids, kv_cache.create(TINY, 1, 16))
    b = transformer.all_logits(cfg16, p16, ids, kv_cache.create(cfg16, 1, 16))
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b))) < 0.15 * float(jnp.max(jnp.abs(a)))


def test_untied_head_is_used(tiny_config):
    untied = dataclasses.replace(tiny_config, tie_embeddings=False)
    params = random_params(untied)
    assert params.embed is not None
    ids = jnp.asarray([[1, 2, 3]])
    logits = transformer.all_logits(untied, params, ids, kv_cache.create(untied, 1, 8))
    zeroed = transformer.all_logits(untied, params._replace(head=params.head * 0), ids, kv_cache.create(untied, 1, 8))
    assert float(jnp.abs(logits).max()) > 0 and float(jnp.abs(zeroed).max()) == 0
