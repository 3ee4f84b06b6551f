"""One pre-norm decoder layer: x + attention(norm(x)), then + SwiGLU(norm(x))."""

from __future__ import annotations

import jax

from lljx.config import ModelConfig
from lljx.core import attention, ffn
from lljx.core.norm import rms_norm
from lljx.params import LayerParams


def forward(
    config: ModelConfig,
    layer: LayerParams,
    x: jax.Array,
    positions: jax.Array,
    rope: tuple[jax.Array, jax.Array],
    cache_k: jax.Array,
    cache_v: jax.Array,
    real_rows: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns the layer's output and its updated cache slices; real_rows [batch] (optional)
    is each row's unpadded length, which the projections need not go past."""
    with jax.named_scope("decoder_layer"):
        attn_out, cache_k, cache_v = attention.forward(
            config, layer, rms_norm(x, layer.attn_norm, config.norm_eps, row_invariant=config.row_invariant), positions, rope, cache_k, cache_v, real_rows
        )
        x = x + attn_out
        x = x + ffn.forward(layer, rms_norm(x, layer.ffn_norm, config.norm_eps, row_invariant=config.row_invariant), real_rows)
        return x, cache_k, cache_v
