"""Token embedding lookup."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lljx.core.linear import embedding_rows, take_columns
from lljx.params import GGMLWeight, Params


def forward(params: Params, tokens: jax.Array) -> jax.Array:
    """tokens [batch, seq] -> vectors [batch, seq, d_model]; tied models read columns of the head."""
    with jax.named_scope("embed"):
        if params.embed is None:
            return take_columns(params.head, tokens)
        if isinstance(params.embed, GGMLWeight):
            return embedding_rows(params.embed, tokens)
        return jnp.take(params.embed, tokens, axis=0)
