"""The SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import jax

from lljx.core.linear import project, project_many
from lljx.params import LayerParams


def forward(layer: LayerParams, x: jax.Array, real_rows: jax.Array | None = None) -> jax.Array:
    """real_rows: each sequence's real (unpadded) row count, as in `linear.project_many`."""
    with jax.named_scope("swiglu"):
        gate, up = project_many(x, (layer.w_gate, layer.w_up), real_rows=real_rows)
        return project(jax.nn.silu(gate) * up, layer.w_down, real_rows=real_rows)
