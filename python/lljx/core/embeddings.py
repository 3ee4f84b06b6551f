"""Token embedding lookup."""

from __future__ import annotations

import jax
import jax.numpy as jnp


from lljx.params import Params


def forward(params: Params, tokens: jax.Array) -> jax.Array:
    """tokens [batch, seq] -> vectors [batch, seq, d_model]; tied models read columns of the head."""
    with jax.named_scope("embed"):
        if params.embed is None:
            return jnp.moveaxis(jnp.take(params.head, tokens, axis=1), 0, -1)
        return jnp.take(params.embed, tokens, axis=0)
