"""models.arrays: aligned host arrays, handed to JAX without a copy on CPU."""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest

from lljx.models.arrays import ALIGNMENT, aligned_empty, to_device


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int8])
@pytest.mark.parametrize("shape", [(), (0,), (3,), (5, 7), (576, 1536), (2, 3, 4)])
def test_aligned_empty_is_aligned_contiguous_and_of_the_asked_shape(shape, dtype):
    for _ in range(3):  # whatever offset the allocator hands out
        a = aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == np.dtype(dtype) and a.flags.c_contiguous and a.flags.writeable
        assert a.size == 0 or a.ctypes.data % ALIGNMENT == 0


def test_to_device_keeps_the_values_and_on_cpu_shares_the_memory():
    a = aligned_empty((64, 96), np.float32)
    a[...] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    x = to_device(a)
    np.testing.assert_array_equal(np.asarray(x), a)
    if jax.default_backend() == "cpu":
        assert x.unsafe_buffer_pointer() == a.ctypes.data  # adopted, not copied
    unaligned = np.arange(7, dtype=np.float32)[1:]
    np.testing.assert_array_equal(np.asarray(to_device(unaligned)), unaligned)  # a buffer XLA copies is fine too
