"""Token embedding lookup."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def forward(embed: jax.Array, tokens: jax.Array) -> jax.Array:
    """tokens [batch, seq] -> vectors [batch, seq, d_model]."""
    with jax.named_scope("embed"):
        return jnp.take(embed, tokens, axis=0)
