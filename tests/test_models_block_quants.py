"""models.block_quants: the fast Q4_0, Q4_1 and Q8_0 decoders give gguf.quants' values to the bit."""

from __future__ import annotations

import gguf.quants
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lljx.models import block_quants

SPECIAL_SCALES = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, np.inf, -np.inf, np.nan, 6e-8], np.float16)


def random_rows(ggml_type: GGMLQuantizationType, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """Packed rows of random bytes whose f16 scales are finite and small, plus some special ones."""
    _, type_size = GGML_QUANT_SIZES[ggml_type]
    rng = np.random.default_rng(seed)
    packed = rng.integers(0, 256, size=(rows * blocks_per_row, type_size), dtype=np.uint8)
    scale_bytes = 4 if ggml_type == GGMLQuantizationType.Q4_1 else 2  # Q4_1 also stores a minimum
    scales = rng.normal(0, 0.05, size=(packed.shape[0], scale_bytes // 2)).astype(np.float16)
    scales.flat[: len(SPECIAL_SCALES)] = SPECIAL_SCALES
    packed[:, :scale_bytes] = scales.view(np.uint8).reshape(packed.shape[0], scale_bytes)
    return packed.reshape(rows, blocks_per_row * type_size)


@pytest.mark.parametrize("ggml_type", list(block_quants.DECODERS))
@pytest.mark.parametrize(("rows", "blocks_per_row"), [(1, 1), (7, 3), (64, 18)])
def test_fast_decoders_equal_gguf_quants(ggml_type, rows, blocks_per_row):
    packed = random_rows(ggml_type, rows, blocks_per_row, seed=rows)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = gguf.quants.dequantize(packed, ggml_type)
        got = block_quants.dequantize(packed, ggml_type)
        every_other_row = block_quants.dequantize(packed[::2], ggml_type)  # a view, not contiguous
    assert got.dtype == np.float32 and got.shape == expected.shape == (rows, blocks_per_row * 32)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(every_other_row, expected[::2])


def test_other_types_fall_back_to_gguf_quants():
    packed = random_rows(GGMLQuantizationType.Q5_0, 3, 2, seed=0)
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_array_equal(
            block_quants.dequantize(packed, GGMLQuantizationType.Q5_0),
            gguf.quants.dequantize(packed, GGMLQuantizationType.Q5_0),
        )
