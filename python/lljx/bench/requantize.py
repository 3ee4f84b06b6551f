"""A GGUF rewritten at F32, F16 or Q8_0 by llama.cpp's own quantizer, cached by the source's size and mtime.

llama.cpp then runs the same weights lljx dequantizes, at the precision lljx computes in
(Q8_0 for int8, whose blocks lljx computes exactly as llama.cpp does), so the comparison is
engine against engine rather than Q4 against f32.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from lljx.bench.cache import cache_dir

# llama.cpp file types, by the names llama.cpp gives them.
FTYPES = {
    "F32": "LLAMA_FTYPE_ALL_F32",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
# The GGUF type matching a compute dtype: llama.cpp's CPU path has no BF16 matmul worth
# comparing against, and F16 reads the same bytes per weight.
GGUF_TYPE = {"f32": "F32", "f16": "F16", "bf16": "F16", "int8": "Q8_0"}


class RequantizeError(RuntimeError):
    """llama.cpp could not write the requested GGUF."""


def cached_name(source: Path, ftype: str) -> str:
    """The cache key: a changed source file (size or mtime) gets a new conversion."""
    stat = source.stat()
    return f"{source.stem}.{stat.st_size}.{int(stat.st_mtime)}.{ftype}.gguf"


def requantized(source: Path, ftype: str, *, cache: Path | None = None) -> Path:
    """`source` as a GGUF of type `ftype` (a key of FTYPES), converted once and cached.

    Needs llama-cpp-python (ImportError otherwise). Writes through a per-process partial
    file and renames it, so concurrent callers never read a half-written model.
    """
    if ftype not in FTYPES:
        raise ValueError(f"unknown GGUF type {ftype!r}; expected one of {', '.join(FTYPES)}")
    import llama_cpp

    target = (cache or cache_dir()) / cached_name(source, ftype)
    if target.exists():
        return target
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[ftype])
    params.allow_requantize = True
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    # The quantizer logs every tensor through llama-cpp-python's logger; errors still show.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        if rc != 0:
            raise RequantizeError(f"llama.cpp could not convert {source.name} to {ftype} (code {rc})")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
