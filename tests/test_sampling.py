"""Samplers: greedy, temperature, top-k, top-p, min-p, seeding and validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lljx.sampling import SamplerSettings, SamplingError, apply_min_p, apply_top_p, make_sampler

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
