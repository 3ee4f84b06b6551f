"""Decode GGUF tensor bytes to numpy at the compute dtype, a few rows at a time so no full f32 copy exists."""

from __future__ import annotations

from io import BufferedReader

import gguf.quants
import ml_dtypes
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lljx.models import block_quants
from lljx.models.errors import ModelFileError
from lljx.models.gguf_file import TensorInfo

# Float weights at each compute dtype; int8 is weight-only, so what is not int8 stays f32.
NP_DTYPES: dict[str, np.dtype] = {
    "auto": np.dtype(np.float32),
    "f32": np.dtype(np.float32),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f16": np.dtype(np.float16),
    "int8": np.dtype(np.float32),
}

# A stored float type (torch_dtype names, safetensors and Meta checkpoint dtypes) -> the dtype
# `--dtype auto` keeps it at.
STORED_DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "BF16": "bf16", "F16": "f16", "F32": "f32"}

# Float formats numpy can view directly: cast once into the output, never through f32.
_VIEWABLE: dict[GGMLQuantizationType, np.dtype] = {
    GGMLQuantizationType.F32: np.dtype(np.float32),
    GGMLQuantizationType.F16: np.dtype(np.float16),
    GGMLQuantizationType.BF16: np.dtype(ml_dtypes.bfloat16),
    GGMLQuantizationType.F64: np.dtype(np.float64),
}

# Dequantized rows are f32; about 1M elements (4 MB) per step keeps the scratch in cache.
CHUNK_ELEMENTS = 1 << 20


def is_supported(ggml_type: GGMLQuantizationType) -> bool:
    """True when this module can decode the type: a plain float, or any block format gguf.quants decodes."""
    if ggml_type in _VIEWABLE:
        return True
    codec = getattr(gguf.quants, ggml_type.name, None)
    return isinstance(codec, type) and "dequantize_blocks" in vars(codec)


def supported_types() -> list[str]:
    return [t.name for t in GGMLQuantizationType if is_supported(t)]


def read_raw(f: BufferedReader, path: str, info: TensorInfo) -> np.ndarray:
    """The tensor's bytes, read into memory (not mapped, so the file can change or vanish afterwards)."""
    buf = np.empty(info.n_bytes, dtype=np.uint8)
    f.seek(info.offset)
    got = f.readinto(buf.data)
    if got != info.n_bytes:
        raise ModelFileError(
            path, f"tensor {info.name!r}: read {got} of {info.n_bytes} bytes (file changed or truncated)"
        )
    return buf


def packed_rows(raw: np.ndarray, info: TensorInfo, row_order: np.ndarray | None = None) -> np.ndarray:
    """The tensor's bytes as [rows, bytes per row] (rows = ggml's outermost axes), rows picked by `row_order`.

    Permuting rows works on the packed bytes: quantization blocks run along a row, so a row
    moves as a unit.
    """
    row_length = info.shape[0]
    rows = info.n_elements // row_length if row_length else 0
    block, type_size = GGML_QUANT_SIZES[info.ggml_type]
    packed = raw.reshape(rows, row_length // block * type_size)
    return packed if row_order is None else packed[row_order]


def rows_to_f32(packed: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    """Some packed rows [n, bytes per row] of a tensor of `ggml_type` as f32 [n, row_length]."""
    if ggml_type in _VIEWABLE:
        return packed.view(_VIEWABLE[ggml_type]).astype(np.float32)
    # Hostile files can hold inf/NaN scales; they decode to inf/NaN, which is not our call to reject.
    with np.errstate(over="ignore", invalid="ignore"):
        return block_quants.dequantize(packed, ggml_type)


def decode(
    raw: np.ndarray,
    info: TensorInfo,
    out: np.ndarray,
    *,
    transpose: bool = False,
    row_order: np.ndarray | None = None,
) -> np.ndarray:
    """Write the tensor's values into `out` (any float dtype) and return it.

    The numpy view of a GGUF tensor is [rows, row_length] (ggml's ne reversed). `row_order`
    picks rows before anything else (see `packed_rows`); `transpose` writes
    [row_length, rows], i.e. [in, out] for a projection.
    """
    row_length = info.shape[0]
    rows = info.n_elements // row_length if row_length else 0
    packed = packed_rows(raw, info, row_order)
    expected = (row_length, rows) if transpose else (rows, row_length)
    if out.size != rows * row_length:
        raise ValueError(f"output holds {out.size} values, tensor {info.name} has {rows * row_length}")
    out2 = out.reshape(expected)

    step = max(1, CHUNK_ELEMENTS // max(1, row_length))
    if info.ggml_type in _VIEWABLE:
        values = packed.view(_VIEWABLE[info.ggml_type])
        if not transpose:
            out2[...] = values
            return out
        # A block of rows at a time, widened while contiguous: one strided cast of a whole embedding table
        # (128256 x 2048 at f16) took 12 s instead of 2.
        for r0 in range(0, rows, step):
            out2[:, r0 : r0 + step] = values[r0 : r0 + step].astype(out.dtype, copy=False).T
        return out

    for r0 in range(0, rows, step):
        chunk = rows_to_f32(packed[r0 : r0 + step], info.ggml_type)
        if transpose:
            out2[:, r0 : r0 + step] = chunk.T
        else:
            out2[r0 : r0 + step] = chunk
    return out
