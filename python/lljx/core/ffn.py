"""The SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import jax

from lljx.params import LayerParams


def forward(layer: LayerParams, x: jax.Array) -> jax.Array:
    with jax.named_scope("swiglu"):
        return (jax.nn.silu(x @ layer.w_gate) * (x @ layer.w_up)) @ layer.w_down
