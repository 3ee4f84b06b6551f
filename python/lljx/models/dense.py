"""File-format weights dequantized once into the dense layouts XLA-only code multiplies.

Weights loaded at `--dtype auto` stay in their GGUF formats (GGMLWeight), which only lljx's
Rust kernels read. A strategy that runs on XLA alone gets a dense twin of the model instead:
[in, out] projections and head, a [vocab, d_model] embedding table, at f32 (XLA:CPU's fast
path), decoded on the host by the same numpy code the explicit dtypes load with.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from gguf import GGMLQuantizationType

from lljx.models import dequant
from lljx.models.arrays import aligned_empty, to_device
from lljx.models.gguf_file import TensorInfo
from lljx.params import GGMLWeight, LayerParams, Params

if TYPE_CHECKING:
    from lljx.models import Model

DENSE_DTYPE = "f32"


def has_file_formats(params: Params) -> bool:
    """Whether any weight is still in its file's format."""
    return any(isinstance(leaf, GGMLWeight) for leaf in jax.tree.leaves(params, is_leaf=_is_ggml))


def _is_ggml(x: Any) -> bool:
    return isinstance(x, GGMLWeight)


def dense_weight(w: GGMLWeight, dtype: np.dtype, *, transpose: bool) -> jax.Array:
    """`w` [n_out, n_in] dequantized to `dtype`, as [n_in, n_out] when `transpose` (shapes only stay shapes)."""
    shape = (w.n_in, w.n_out) if transpose else (w.n_out, w.n_in)
    if isinstance(w.data, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(shape, dtype)  # type: ignore[return-value]
    ggml_type = GGMLQuantizationType(w.ggml_type)
    raw = w.stored_rows().reshape(-1)
    info = TensorInfo(name="", ggml_type=ggml_type, shape=(w.n_in, w.n_out), offset=0, n_bytes=raw.nbytes)
    out = dequant.decode(raw, info, aligned_empty(shape, dtype), transpose=transpose)
    return to_device(out)


def dense_params(params: Params, dtype: str = DENSE_DTYPE) -> Params:
    """`params` with every GGMLWeight dequantized: projections and head [in, out], embeddings [vocab, d]."""
    dt = dequant.NP_DTYPES[dtype]
    jobs: list[tuple[GGMLWeight, bool]] = []

    def later(w: Any, transpose: bool) -> Any:
        if isinstance(w, GGMLWeight):
            jobs.append((w, transpose))
            return len(jobs) - 1
        return None

    slots = [
        {name: later(getattr(layer, name), True) for name in LayerParams._fields} for layer in params.layers
    ]
    head_slot, embed_slot = later(params.head, True), later(params.embed, False)
    # numpy releases the GIL in the decode arithmetic, so weights decode in parallel on all cores.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        dense = list(pool.map(lambda job: dense_weight(job[0], dt, transpose=job[1]), jobs))

    def pick(original: Any, slot: int | None) -> Any:
        return original if slot is None else dense[slot]

    layers = tuple(
        layer._replace(**{name: pick(getattr(layer, name), slot[name]) for name in LayerParams._fields})
        for layer, slot in zip(params.layers, slots)
    )
    return params._replace(layers=layers, head=pick(params.head, head_slot), embed=pick(params.embed, embed_slot))


def dense_model(model: Model, dtype: str = DENSE_DTYPE) -> Model:
    """The same model with dense weights at `dtype` (the model itself when none is in a file format)."""
    if not has_file_formats(model.params):
        return model
    twin = replace(model, params=dense_params(model.params, dtype), config=model.config.with_dtype(dtype))
    # The tokenizer and chat template, once built, are the same objects: not built twice.
    twin.__dict__.update({k: v for k, v in model.__dict__.items() if k in ("tokenizer", "chat")})
    return twin
