"""Named shardings of a model's params over the mesh axis, and their placement.

Q, K and V and the FFN's gate and up are split by output columns (whole heads, FFN hidden
units), the attention output and FFN down projections by input rows, so XLA adds one
all-reduce after each; the head and the embedding table are split by vocabulary. Norms are
replicated, and so is any weight whose split axis the mesh does not divide (a vocabulary
of an odd size). The KV cache follows the K and V projections' split, by KV head.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lljx.params import Int8Weight, LayerParams, Params, Weight
from lljx.parallel.mesh import AXIS

BY_OUTPUTS = ("wq", "wk", "wv", "w_gate", "w_up")
BY_INPUTS = ("wo", "w_down")
REPLICATED = PartitionSpec()


def split_spec(shape: tuple[int, ...], axis: int, size: int) -> PartitionSpec:
    """Split `axis` over the mesh when `size` divides it, else replicate."""
    if shape[axis] % size:
        return REPLICATED
    return PartitionSpec(*(AXIS if a == axis else None for a in range(len(shape))))


def weight_spec(w: Weight, axis: int, size: int) -> Any:
    """The spec of one weight; an int8 weight's scales split along with its values (blocks of 32 inputs)."""
    if isinstance(w, Int8Weight):
        values, scales = split_spec(w.values.shape, axis, size), split_spec(w.scales.shape, axis, size)
        if REPLICATED in (values, scales):
            return Int8Weight(REPLICATED, REPLICATED)
        return Int8Weight(values, scales)
    if not hasattr(w, "shape") or len(w.shape) != 2:
        raise TypeError(f"cannot shard a weight of type {type(w).__name__}")
    return split_spec(tuple(w.shape), axis, size)


def layer_specs(lp: LayerParams, size: int) -> LayerParams:
    """A PartitionSpec where each of one layer's arrays is."""
    return LayerParams(
        attn_norm=REPLICATED, ffn_norm=REPLICATED,
        **{name: weight_spec(getattr(lp, name), 1, size) for name in BY_OUTPUTS},
        **{name: weight_spec(getattr(lp, name), 0, size) for name in BY_INPUTS},
    )


def param_specs(params: Params, size: int) -> Params:
    """A PartitionSpec for every array of `params` (the same tree, specs where the arrays are)."""
    embed = None if params.embed is None else weight_spec(params.embed, 0, size)
    return Params(
        embed=embed, layers=tuple(layer_specs(lp, size) for lp in params.layers), final_norm=REPLICATED,
        head=weight_spec(params.head, 1, size),
    )


def place(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """Each array of `tree` laid out over `mesh` by its spec (shapes only stay shapes, with their shardings)."""
    return jax.tree.map(lambda x, spec: put(x, NamedSharding(mesh, spec)), tree, specs)


def put(x: Any, sharding: NamedSharding) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    # Devices of other processes: each process puts its own shards, cut from its copy of the weights.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def split_fraction(params: Params) -> float:
    """The share of the weights' bytes that is split over the mesh (the rest is replicated)."""
    total = split = 0
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        total += leaf.nbytes
        if isinstance(sharding, NamedSharding) and any(axis is not None for axis in sharding.spec):
            split += leaf.nbytes
    return split / total if total else 0.0
