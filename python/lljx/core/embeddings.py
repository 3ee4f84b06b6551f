"""Token embedding lookup."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lljx.core.linear import take_columns
from lljx.params import Params


def forward(params: Params, tokens: jax.Array) -> jax.Array:
    """tokens [batch, seq] -> vectors [batch, seq, d_model]; tied models read columns of the head."""
    with jax.named_scope("embed"):
        if params.embed is None:
            return take_columns(params.head, tokens)
        return jnp.take(params.embed, tokens, axis=0)
