"""The params pytree: embeddings, one LayerParams per layer, final norm and the output head."""

from __future__ import annotations

from typing import NamedTuple

import jax


class LayerParams(NamedTuple):
    """One decoder layer's weights, or all layers stacked along axis 0.

    Projections are stored [in, out] so the forward pass is `x @ w`. Q and K output
    features are in rotate-half RoPE order within each head (the Hugging Face layout);
    GGUF loaders convert from llama.cpp's interleaved-pair order at load time.
    """

    attn_norm: jax.Array  # [d_model]
    wq: jax.Array  # [d_model, n_heads * d_head]
    wk: jax.Array  # [d_model, n_kv_heads * d_head]
    wv: jax.Array  # [d_model, n_kv_heads * d_head]
    wo: jax.Array  # [n_heads * d_head, d_model]
    ffn_norm: jax.Array  # [d_model]
    w_gate: jax.Array  # [d_model, d_ffn]
    w_up: jax.Array  # [d_model, d_ffn]
    w_down: jax.Array  # [d_ffn, d_model]


class Params(NamedTuple):
    """All weights of a model.

    Layers are kept as separate arrays, not stacked: XLA:CPU copies a slice of a stacked
    weight before each matmul in an unrolled layer loop (about 9x slower per token), while
    `lax.scan` strategies stack them once at build time with `stack_layers`.
    The head is stored [d_model, vocab], the layout XLA:CPU reads fastest. A tied model
    keeps only that array (`embed` is None) and looks embeddings up by column.
    """

    embed: jax.Array | None  # [vocab, d_model], or None when tied to the head
    layers: tuple[LayerParams, ...]
    final_norm: jax.Array  # [d_model]
    head: jax.Array  # [d_model, vocab]


def stack_layers(layers: tuple[LayerParams, ...]) -> LayerParams:
    """All layers as one LayerParams whose leaves have a leading [n_layers] axis (for lax.scan)."""
    return jax.tree.map(lambda *per_layer: jax.numpy.stack(per_layer), *layers)
