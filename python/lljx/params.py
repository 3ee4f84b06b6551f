"""The params pytree: embeddings, one LayerParams per layer, final norm and the output head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

import jax
import numpy as np

Q8_BLOCK = 32  # inputs sharing one int8 scale, as in llama.cpp's Q8_0


class Int8Weight(NamedTuple):
    """An [in, out] projection as int8 values with one f32 scale per 32 consecutive inputs of each output.

    The same numbers as a GGUF Q8_0 tensor (blocks run along the input dimension), laid out
    [in, out] like the float weights: `values[k, n] * scales[k // 32, n]` is weight (k, n).
    """

    values: jax.Array  # int8 [in, out]
    scales: jax.Array  # f32 [in // 32, out]


class TiledInt8Weight(NamedTuple):
    """An Int8Weight's numbers in the order lljx's int8 dot-product kernel (AVX-512 VNNI) streams.

    Per 32-input block and 16-output tile, 512 bytes: [8 groups of 4 inputs][16 outputs][4 inputs],
    each value stored + 128 as uint8 (see `lljx.core.linear.tile_int8`). The kernel multiplies
    them with the activations quantized to int8 per block of 32, as llama.cpp does for Q8_0.
    """

    values: jax.Array  # uint8 [in, out], in tile order
    scales: jax.Array  # f32 [in // 32, out], as in Int8Weight


class NativeWeight(NamedTuple):
    """A weight to multiply with lljx's own CPU matrix-vector kernel when only a few rows come in (decode).

    Wrapping shares the array; nothing is copied, except `packed`: an int8 weight's values in the
    layout of the int8 dot-product kernel (`TiledInt8Weight.values`; the scales stay shared with
    `weight`, so each array is passed to compiled code once), when the CPU has that kernel.
    Prompts (many rows) still multiply `weight` with XLA. Strategies that use the kernel wrap
    the projections at build time (see `lljx.core.linear.use_native_kernel`).
    """

    weight: jax.Array | Int8Weight
    packed: jax.Array | None = None

    def kernel_weight(self) -> jax.Array | Int8Weight | TiledInt8Weight:
        """What the native kernel multiplies by."""
        if self.packed is not None and isinstance(self.weight, Int8Weight):
            return TiledInt8Weight(self.packed, self.weight.scales)
        return self.weight


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class GGMLWeight:
    """A weight kept exactly as its GGUF file stores it, [out, in] with blocks along each output row.

    `data` is flat uint8: `skip` bytes to ignore, then the tensor's `n_out` rows as the file
    holds them (blocks for Q4_K, Q8_0..., little-endian values for F32, F16, BF16). On CPU it is
    a view of the memory-mapped file: XLA adopts host memory only from a 64-byte boundary,
    and GGUF aligns tensors to 32, so the view starts at the boundary at or before the tensor
    and `skip` (0-63) says where the tensor begins. `ggml_type` (a `gguf.GGMLQuantizationType`
    value), `n_in`, `n_out` and `skip` are static under jit. lljx's Rust kernels multiply the
    blocks in place; XLA-only code dequantizes them.
    """

    data: jax.Array
    ggml_type: int = field(metadata=dict(static=True))
    n_in: int = field(metadata=dict(static=True))
    n_out: int = field(metadata=dict(static=True))
    skip: int = field(default=0, metadata=dict(static=True))

    @classmethod
    def from_rows(cls, rows: Any, ggml_type: int) -> GGMLWeight:
        """A weight from its stored rows: uint8 [n_out, bytes per row], or values [n_out, n_in] for float types."""
        n_out = int(rows.shape[0])
        if rows.dtype == np.uint8:
            from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            n_in = int(rows.shape[1]) // type_size * block
        else:
            n_in = int(rows.shape[1])
        flat = rows.reshape(-1)
        if flat.dtype != np.uint8:
            is_numpy = isinstance(flat, np.ndarray)
            flat = flat.view(np.uint8) if is_numpy else jax.lax.bitcast_convert_type(flat, np.uint8).reshape(-1)
        return cls(flat, int(ggml_type), n_in, n_out)

    def stored_rows(self) -> np.ndarray:
        """The stored rows as numpy, uint8 [n_out, bytes per row] (a view of `data` on CPU)."""
        raw = np.asarray(self.data)[self.skip :]
        return raw.reshape(self.n_out, -1)

    @property
    def shape(self) -> tuple[int, int]:
        """(in, out), the orientation of every other weight kind."""
        return (self.n_in, self.n_out)


Weight = Union[jax.Array, Int8Weight, NativeWeight, GGMLWeight]  # what `lljx.core.linear` multiplies by


class LayerParams(NamedTuple):
    """One decoder layer's weights, or all layers stacked along axis 0.

    Projections are stored [in, out] so the forward pass is `x @ w`. Q and K output
    features are in rotate-half RoPE order within each head (the Hugging Face layout);
    GGUF loaders convert from llama.cpp's interleaved-pair order at load time.
    """

    attn_norm: jax.Array  # [d_model]
    wq: Weight  # [d_model, n_heads * d_head]
    wk: Weight  # [d_model, n_kv_heads * d_head]
    wv: Weight  # [d_model, n_kv_heads * d_head]
    wo: Weight  # [n_heads * d_head, d_model]
    ffn_norm: jax.Array  # [d_model]
    w_gate: Weight  # [d_model, d_ffn]
    w_up: Weight  # [d_model, d_ffn]
    w_down: Weight  # [d_ffn, d_model]


class Params(NamedTuple):
    """All weights of a model.

    Layers are kept as separate arrays, not stacked: XLA:CPU copies a slice of a stacked
    weight before each matmul in an unrolled layer loop (about 9x slower per token), while
    `lax.scan` strategies stack them once at build time with `stack_layers`.
    The head is stored [d_model, vocab], the layout XLA:CPU reads fastest. A tied model
    keeps only that array (`embed` is None) and looks embeddings up by column.
    """

    embed: jax.Array | GGMLWeight | None  # [vocab, d_model], or None when tied to the head
    layers: tuple[LayerParams, ...]
    final_norm: jax.Array  # [d_model]
    head: Weight  # [d_model, vocab]


def stack_layers(layers: tuple[LayerParams, ...]) -> LayerParams:
    """All layers as one LayerParams whose leaves have a leading [n_layers] axis (for lax.scan)."""
    return jax.tree.map(lambda *per_layer: jax.numpy.stack(per_layer), *layers)
