"""Faster numpy decoders for the commonest GGUF block formats (Q4_0, Q4_1, Q8_0), equal to gguf.quants' to the bit.

gguf.quants decodes every format generically, through several temporary arrays per step;
these write each block's values once into one f32 array, which makes the embedded Q4_1
model load about 2.5 times faster to decode.
"""

from __future__ import annotations

from collections.abc import Callable

import gguf.quants
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

BLOCK = 32  # values per block in all three formats


def _scale(blocks: np.ndarray, at: int) -> np.ndarray:
    """The f16 at byte `at` of every block, as f32 [n_blocks, 1]."""
    return blocks[:, at : at + 2].view(np.float16).astype(np.float32)


def _nibbles(quants: np.ndarray) -> np.ndarray:
    """[n_blocks, 16] packed bytes -> [n_blocks, 32] values 0..15: the low nibbles, then the high ones (ggml's order)."""
    values = np.empty((quants.shape[0], 2, BLOCK // 2), np.uint8)
    np.bitwise_and(quants, 0x0F, out=values[:, 0])
    np.right_shift(quants, 4, out=values[:, 1])
    return values.reshape(-1, BLOCK)


def _q4_0(blocks: np.ndarray, out: np.ndarray) -> None:
    values = _nibbles(blocks[:, 2:]).view(np.int8)
    values -= 8
    np.multiply(_scale(blocks, 0), values, out=out)


def _q4_1(blocks: np.ndarray, out: np.ndarray) -> None:
    np.multiply(_scale(blocks, 0), _nibbles(blocks[:, 4:]), out=out)
    out += _scale(blocks, 2)


def _q8_0(blocks: np.ndarray, out: np.ndarray) -> None:
    np.multiply(blocks[:, 2:].view(np.int8), _scale(blocks, 0), out=out)


DECODERS: dict[GGMLQuantizationType, Callable[[np.ndarray, np.ndarray], None]] = {
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q4_1: _q4_1,
    GGMLQuantizationType.Q8_0: _q8_0,
}


def dequantize(packed: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """Packed rows [n, bytes per row] as f32 [n, row_length]: gguf.quants.dequantize, faster for the DECODERS types."""
    if ggml_type not in DECODERS:
        return gguf.quants.dequantize(packed, ggml_type)
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    rows = packed.shape[0]
    blocks = np.ascontiguousarray(packed).reshape(-1, type_size)
    out = np.empty((blocks.shape[0], BLOCK), np.float32)
    DECODERS[ggml_type](blocks, out)
    return out.reshape(rows, -1)
