"""Weight-only int8 at load time: every projection as llama.cpp's Q8_0 blocks, unpacked into an Int8Weight.

The numbers are llama.cpp's own: float rows go through `gguf.quants` (bit-exact with
ggml's `quantize_row_q8_0_ref`: d = max|x| / 127 per 32 inputs, stored as f16, values
rounded half away from zero from x * (1 / d)), and a GGUF tensor that is already Q8_0 is
taken verbatim. So `--dtype int8` runs the very weights llama.cpp runs from the same model
requantized to Q8_0.
"""

from __future__ import annotations

import os

import gguf.quants
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lljx.models import dequant
from lljx.models.arrays import aligned_empty, to_device
from lljx.models.errors import ModelFileError
from lljx.models.gguf_file import TensorInfo
from lljx.params import Q8_BLOCK, Int8Weight

Q8_0 = GGMLQuantizationType.Q8_0
SCALE_BYTES = 2  # the f16 `d` at the start of each 34-byte block
# Rows quantized per step: about 1M f32 inputs (4 MB) of scratch, like the dequantizer.
CHUNK_ELEMENTS = 1 << 20

assert GGML_QUANT_SIZES[Q8_0] == (Q8_BLOCK, SCALE_BYTES + Q8_BLOCK)


def check_inputs(path: str | os.PathLike[str], name: str, n_in: int) -> None:
    """A ModelFileError (a ValueError) naming the tensor when its inputs do not split into 32-wide blocks."""
    if n_in % Q8_BLOCK:
        raise ModelFileError(
            path,
            f"tensor {name!r} has {n_in} inputs per output, not a multiple of {Q8_BLOCK}, so it cannot be int8 (Q8_0)",
        )


def quantize_rows(rows: np.ndarray) -> np.ndarray:
    """f32 rows [n, k] (k a multiple of 32) as packed Q8_0 blocks [n, k / 32 * 34], as llama.cpp writes them."""
    # Weights with inf or NaN give NaN blocks, as in llama.cpp; rejecting them is not the loader's call.
    with np.errstate(invalid="ignore", over="ignore"):
        return gguf.quants.quantize(np.asarray(rows, dtype=np.float32), Q8_0)


def unpack(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed Q8_0 rows [n, k / 32 * 34] -> (int8 values [n, k], f32 scales [n, k / 32]); exact, no rounding."""
    n = blocks.shape[0]
    b = np.ascontiguousarray(blocks).reshape(n, -1, SCALE_BYTES + Q8_BLOCK)
    scales = np.ascontiguousarray(b[:, :, :SCALE_BYTES]).view(np.float16)[:, :, 0].astype(np.float32)
    values = np.ascontiguousarray(b[:, :, SCALE_BYTES:]).view(np.int8).reshape(n, -1)
    return values, scales


class Int8Builder:
    """An Int8Weight [in, out] filled a few output rows at a time, so no full f32 copy of the weight exists."""

    def __init__(self, n_out: int, n_in: int) -> None:
        self.values = aligned_empty((n_in, n_out), np.dtype(np.int8))
        self.scales = aligned_empty((n_in // Q8_BLOCK, n_out), np.dtype(np.float32))
        self.step = max(1, CHUNK_ELEMENTS // max(1, n_in))

    def put_blocks(self, start: int, blocks: np.ndarray) -> None:
        """Packed Q8_0 blocks of output rows start, start + 1, ..."""
        values, scales = unpack(blocks)
        self.values[:, start : start + len(values)] = values.T
        self.scales[:, start : start + len(scales)] = scales.T

    def put_rows(self, start: int, rows: np.ndarray) -> None:
        """Float output rows [n, in] starting at `start`, quantized here."""
        self.put_blocks(start, quantize_rows(rows))

    def build(self) -> Int8Weight:
        return Int8Weight(values=to_device(self.values), scales=to_device(self.scales))


def from_rows(rows: np.ndarray) -> Int8Weight:
    """An [out, in] float weight (any float dtype, e.g. a safetensors tensor) as an Int8Weight [in, out]."""
    n_out, n_in = rows.shape
    out = Int8Builder(n_out, n_in)
    for r0 in range(0, n_out, out.step):
        out.put_rows(r0, rows[r0 : r0 + out.step])
    return out.build()


def from_gguf(raw: np.ndarray, info: TensorInfo, row_order: np.ndarray | None = None) -> Int8Weight:
    """A GGUF projection's bytes as an Int8Weight [in, out]: Q8_0 blocks verbatim, any other type requantized.

    `row_order` permutes outputs (the Q/K RoPE reordering); a Q8_0 block lies within one
    output row, so blocks move with their row unchanged.
    """
    n_in = info.shape[0]
    packed = dequant.packed_rows(raw, info, row_order)
    out = Int8Builder(len(packed), n_in)
    for r0 in range(0, len(packed), out.step):
        chunk = packed[r0 : r0 + out.step]
        if info.ggml_type == Q8_0:
            out.put_blocks(r0, chunk)
        else:
            out.put_rows(r0, dequant.rows_to_f32(chunk, info.ggml_type))
    return out.build()
