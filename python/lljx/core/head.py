"""Final norm and output projection to vocabulary logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lljx.config import ModelConfig
from lljx.core.linear import project
from lljx.core.norm import rms_norm
from lljx.params import Params


def forward(config: ModelConfig, params: Params, x: jax.Array) -> jax.Array:
    """x [..., d_model] -> f32 logits [..., vocab]."""
    with jax.named_scope("head"):
        x = rms_norm(x, params.final_norm, config.norm_eps, row_invariant=config.row_invariant)
        return project(x, params.head, jnp.float32)
