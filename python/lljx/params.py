"""The params pytree: embeddings, layers stacked along a leading axis, final norm and an optional head."""

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
    """All weights of a model; `head` is None when the output projection is tied to `embed`."""

    embed: jax.Array  # [vocab, d_model]
    layers: LayerParams  # each leaf has a leading [n_layers] axis
    final_norm: jax.Array  # [d_model]
    head: jax.Array | None  # [d_model, vocab] or None when tied
