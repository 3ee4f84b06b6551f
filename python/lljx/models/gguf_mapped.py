"""GGUF weights kept in the file's own formats (`--dtype auto`): memory-mapped views wrapped as GGMLWeight.

Nothing is decoded: each projection, the head and the embedding table stay the blocks the
file holds (Q4_K, Q6_K, Q8_0, F16...), which lljx's Rust kernels multiply in place. A tensor
is handed to JAX as a view of the mapping (from the 64-byte boundary before it; see
GGMLWeight.skip), so its pages are shared with the page cache and read from disk only when
first touched. The few exceptions are copied: Q and K rows re-ordered for rotate-half RoPE
(about 0.5% of a Llama's weights), and a type without a kernel, which is dequantized to F16
with a warning. The RMSNorm weights (a few KB) are decoded to f32.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lljx.models import dequant
from lljx.models.arrays import ALIGNMENT, aligned_empty, to_device
from lljx.models.gguf_file import GGUFFile, TensorInfo

FALLBACK_TYPE = GGMLQuantizationType.F16


class FormatFallbackWarning(UserWarning):
    """A tensor's format has no kernel, so it was dequantized to F16 at load."""


def kernel_types() -> frozenset[int]:
    """The ggml types lljx's kernels multiply on this CPU."""
    from lljx import _native

    return frozenset(_native.block_kernel_types())


def stored_bytes(ggml_type: GGMLQuantizationType, n_elements: int) -> int:
    """Bytes a tensor of this type and size takes in a GGUF file."""
    block, type_size = GGML_QUANT_SIZES[ggml_type]
    return n_elements // block * type_size


def worth_populating(size: int) -> bool:
    """Whether to map every page of a file up front: where it fits comfortably in memory, the
    kernel maps them in one pass (on the loading thread, while the programs compile) instead of
    the first prompt taking a page fault per 4 KB (a 2.5 GB file: 0.4 s against 0.6-0.8 s)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return False
    return size <= memory // 2


def map_file(f: Any, size: int) -> mmap.mmap:
    """A read-only shared mapping of `f`, its pages mapped in up front when `worth_populating`.

    The pages are mapped by madvise with the GIL released, so the programs that trace on the
    main thread meanwhile are not held up; where the kernel has no MADV_POPULATE_READ, by
    MAP_POPULATE (which holds the GIL)."""
    from lljx import _native

    mapping = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    if not worth_populating(size) or _native.populate_pages(mapping):
        return mapping
    mapping.close()
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)


class MappedFile:
    """One read-only mapping of a GGUF file, and the GGMLWeight arrays made from it.

    Views keep the mapping alive (numpy holds a reference to it); the file object is closed
    at once. `copied_bytes` counts what could not be a view.
    """

    def __init__(self, gf: GGUFFile, supported: frozenset[int]) -> None:
        self.gf = gf
        self.supported = supported
        self.copied_bytes = 0
        self.fallbacks: list[tuple[TensorInfo, int]] = []
        with open(gf.path, "rb") as f:
            # The header reader checked every tensor's extent against this size, so no view
            # reaches past the end of the file (a read there would be SIGBUS, not an error).
            self.map = map_file(f, gf.file_size)
        if len(self.map) != gf.file_size:
            raise gf.error(f"file changed size while loading ({gf.file_size} -> {len(self.map)} bytes)")

    def rows(self, info: TensorInfo) -> np.ndarray:
        """The tensor's stored rows [n_out, bytes per row], a view of the mapping."""
        return dequant.packed_rows(np.frombuffer(self.map, np.uint8, count=info.n_bytes, offset=info.offset), info)

    def weight(self, info: TensorInfo, row_order: np.ndarray | None = None) -> Any:
        """A GGMLWeight of the tensor [n_out = ggml ne1, n_in = ne0], rows re-ordered by `row_order`."""
        from lljx.params import GGMLWeight

        n_in = info.shape[0]
        n_out = info.n_elements // n_in
        ggml_type = info.ggml_type
        if ggml_type not in self.supported:
            return GGMLWeight(to_device(self._fallback(info, row_order)), int(FALLBACK_TYPE), n_in, n_out)
        if row_order is not None or info.offset % 4:
            # A copy: rows move as units, blocks run along them. (A file aligned to less than
            # 4 bytes is copied too, so the kernels' float values never straddle their size.)
            rows = self.rows(info) if row_order is None else self.rows(info)[row_order]
            return GGMLWeight(to_device(self._aligned_copy(rows.reshape(-1))), int(ggml_type), n_in, n_out)
        # The view starts at the 64-byte boundary at or before the tensor (the mapping itself
        # is page-aligned), so XLA adopts it as it is; `skip` says where the tensor begins.
        skip = info.offset % ALIGNMENT
        view = np.frombuffer(self.map, np.uint8, count=skip + info.n_bytes, offset=info.offset - skip)
        return GGMLWeight(to_device(view), int(ggml_type), n_in, n_out, skip)

    def _aligned_copy(self, flat: np.ndarray) -> np.ndarray:
        out = aligned_empty(flat.shape, flat.dtype)
        out[...] = flat
        self.copied_bytes += out.nbytes
        return out

    def _fallback(self, info: TensorInfo, row_order: np.ndarray | None) -> np.ndarray:
        n_in = info.shape[0]
        out = aligned_empty((info.n_elements // n_in, n_in), np.dtype(np.float16))
        dequant.decode(self.rows(info).reshape(-1), info, out, row_order=row_order)
        self.copied_bytes += out.nbytes
        self.fallbacks.append((info, out.nbytes))
        return out.reshape(-1).view(np.uint8)

    def warn_fallbacks(self) -> None:
        """One warning naming every tensor dequantized to F16 for want of a kernel, if any was."""
        if not self.fallbacks:
            return
        types = sorted({info.type_name for info, _ in self.fallbacks})
        names = ", ".join(info.name for info, _ in self.fallbacks[:4]) + (", ..." if len(self.fallbacks) > 4 else "")
        size = sum(n for _, n in self.fallbacks)
        warnings.warn(
            f"{self.gf.path}: {len(self.fallbacks)} tensors ({names}) are {'/'.join(types)}, which lljx's kernels "
            f"do not read; dequantized to F16 at load ({size / 1e6:.1f} MB)",
            FormatFallbackWarning,
            stacklevel=3,
        )


def abstract_weight(info: TensorInfo, supported: frozenset[int], *, reordered: bool) -> Any:
    """The GGMLWeight `MappedFile.weight` would give (`reordered`: given a row order), as shapes only."""
    from lljx.params import GGMLWeight

    n_in = info.shape[0]
    n_out = info.n_elements // n_in
    if info.ggml_type not in supported:
        ggml_type, skip = FALLBACK_TYPE, 0
    else:
        ggml_type, skip = info.ggml_type, 0 if reordered or info.offset % 4 else info.offset % ALIGNMENT
    size = skip + stored_bytes(ggml_type, info.n_elements)
    return GGMLWeight(jax.ShapeDtypeStruct((size,), np.dtype(np.uint8)), int(ggml_type), n_in, n_out, skip)


def weight_reader(gf: GGUFFile, *, abstract: bool) -> tuple[Callable[[TensorInfo, np.ndarray | None], Any], Callable[[], None]]:
    """A function (tensor, row order) -> GGMLWeight for the file (or its shapes-only twin), and one to
    call once every weight is read (it warns about formats that had no kernel)."""
    supported = kernel_types()
    if abstract:
        return (lambda info, row_order=None: abstract_weight(info, supported, reordered=row_order is not None)), lambda: None
    files = MappedFile(gf, supported)
    return files.weight, files.warn_fallbacks
