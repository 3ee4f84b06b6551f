"""Samplers: greedy, temperature, top-k, top-p, min-p, seeding and validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljx.sampling import (
    SamplerSettings,
    SamplingError,
    apply_min_p,
    apply_token_mask,
    apply_top_p,
    make_sampler,
    mask_words,
    unpack_token_mask,
)

LOGITS = jnp.log(jnp.asarray([[0.05, 0.5, 0.3, 0.1, 0.05]], jnp.float32))


def draw(settings: SamplerSettings, n: int = 400) -> np.ndarray:
    sample = jax.jit(make_sampler(settings, LOGITS.shape[-1]))
    keys = jax.random.split(jax.random.key(settings.seed), n)
    knobs = settings.knobs()
    return np.asarray(jax.vmap(lambda k: sample(LOGITS, k, knobs))(keys))[:, 0]


def test_greedy_is_argmax():
    assert draw(SamplerSettings(temperature=0), 3).tolist() == [1, 1, 1]


def test_top_k_limits_candidates():
    assert set(draw(SamplerSettings(temperature=1.0, top_k=2, top_p=1.0)).tolist()) == {1, 2}


def test_top_p_keeps_smallest_prefix_reaching_mass():
    # 0.5 alone is below 0.7; 0.5 + 0.3 reaches it, so exactly tokens 1 and 2 remain.
    assert set(draw(SamplerSettings(temperature=1.0, top_k=0, top_p=0.7)).tolist()) == {1, 2}


def test_min_p_drops_unlikely_tokens():
    # min_p 0.5 keeps tokens with p >= 0.25: only 1 and 2.
    assert set(draw(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5)).tolist()) == {1, 2}


def test_masked_logits_are_minus_infinity():
    sorted_logits = jnp.sort(LOGITS, axis=-1)[:, ::-1]
    assert np.isneginf(np.asarray(apply_top_p(sorted_logits, 0.5))).sum() == 4
    assert np.isneginf(np.asarray(apply_min_p(sorted_logits, 0.9))).sum() == 4


def test_temperature_sharpens_and_flattens():
    cold = draw(SamplerSettings(temperature=0.05, top_k=0, top_p=1.0))
    hot = draw(SamplerSettings(temperature=5.0, top_k=0, top_p=1.0))
    assert (cold == 1).mean() > 0.99
    assert len(set(hot.tolist())) == 5


def test_frequencies_follow_probabilities():
    counts = np.bincount(draw(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0), 4000), minlength=5) / 4000
    np.testing.assert_allclose(counts, [0.05, 0.5, 0.3, 0.1, 0.05], atol=0.03)


def test_seed_reproduces_and_differs():
    a = draw(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, seed=1))
    b = draw(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, seed=1))
    c = draw(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, seed=2))
    assert (a == b).all() and (a != c).any()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.2}, "min_p"),
        ({"min_p": 1.2}, "min_p"),
        ({"seed": -5}, "seed"),
    ],
)
def test_invalid_settings_are_rejected(kwargs, word):
    with pytest.raises(SamplingError, match=word):
        SamplerSettings(**kwargs)


def test_knobs_change_without_recompiling():
    """Temperature, top-p and min-p are traced values: one compiled sampler serves them all."""
    base = SamplerSettings(temperature=1.0, top_k=3, top_p=1.0)
    sample = jax.jit(make_sampler(base, LOGITS.shape[-1]))
    key = jax.random.key(0)
    for settings in (base, SamplerSettings(temperature=0.3, top_k=3, top_p=0.5, min_p=0.1)):
        sample(LOGITS, key, settings.knobs())
    assert sample._cache_size() == 1


def pack_mask(allowed: np.ndarray) -> np.ndarray:
    """Booleans [rows, vocab] -> the packed u32 layout (bit t%32 of word t/32), written independently of the sampler."""
    rows, vocab = allowed.shape
    words = np.zeros((rows, -(-vocab // 32)), np.uint32)
    for r, t in zip(*np.nonzero(allowed)):
        words[r, t // 32] |= np.uint32(1) << np.uint32(t % 32)
    return words


def test_token_masks_unpack_bit_t_mod_32_of_word_t_div_32():
    rng = np.random.default_rng(0)
    allowed = rng.random((3, 75)) < 0.3
    allowed[:, [0, 31, 32, 63, 64, 74]] = True  # word edges and the last, partial word
    unpacked = np.asarray(unpack_token_mask(jnp.asarray(pack_mask(allowed)), 75))
    assert unpacked.dtype == bool and (unpacked == allowed).all()
    assert mask_words(75) == 3 and mask_words(64) == 2


def test_masked_greedy_takes_the_best_allowed_token():
    allowed = np.array([[True, False, True, True, False]])
    masked = apply_token_mask(LOGITS, jnp.asarray(pack_mask(allowed)))
    assert np.isneginf(np.asarray(masked)[~allowed]).all()
    assert int(make_sampler(SamplerSettings(temperature=0), 5)(masked, jax.random.key(0), SamplerSettings().knobs())[0]) == 2


@pytest.mark.parametrize("settings", [
    SamplerSettings(temperature=1.5, top_k=3, top_p=1.0),
    SamplerSettings(temperature=1.0, top_k=0, top_p=0.95, min_p=0.0),
    SamplerSettings(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05),
])
def test_sampling_under_a_mask_never_draws_a_disallowed_token(settings):
    vocab = 300
    logits = jax.random.normal(jax.random.key(1), (2, vocab)) * 3
    allowed = np.zeros((2, vocab), bool)
    allowed[0, [5, 70, 299]] = True  # a few unlikely tokens among many likelier ones
    allowed[1, :] = True
    allowed[1, np.argsort(-np.asarray(logits[1]))[:10]] = False  # the ten likeliest are banned
    sample = jax.jit(lambda key: make_sampler(settings, vocab)(apply_token_mask(logits, pack_mask(allowed)), key, settings.knobs()))
    drawn = np.asarray(jax.vmap(sample)(jax.random.split(jax.random.key(2), 300)))
    assert all(allowed[0, t] for t in drawn[:, 0]) and all(allowed[1, t] for t in drawn[:, 1])
    if settings.top_p == 1.0:
        assert len(set(drawn[:, 0])) > 1  # a real draw among the allowed, not one forced pick
