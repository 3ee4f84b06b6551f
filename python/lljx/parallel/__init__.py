"""Tensor parallelism on a JAX mesh: the process-wide layout, and models placed on it.

`configure(size)` is called once (by the CLI's --tensor-parallel, after `jax.distributed`
when there are several processes); from then on `strategies.registry.build` hands every
strategy a model whose heads are padded for the mesh (`heads`) and whose weights are
sharded over it (`shard`). A strategy's jitted functions stay as they are: XLA inserts
the collectives, and the KV cache follows the K and V projections' split.
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from lljx.parallel.mesh import AXIS, Layout, MeshError, make_layout

if TYPE_CHECKING:
    from lljx.config import ModelConfig
    from lljx.models import Model
    from lljx.sampling import SamplerSettings
    from lljx.strategies.api import Decoder, Strategy

__all__ = [
    "AXIS", "Layout", "MeshError", "active", "check_strategy", "configure", "describe", "is_writer", "build_on_mesh", "placed",
    "record", "refuses", "reset",
]

_ACTIVE: Layout | None = None
_PLACED: weakref.WeakKeyDictionary[Model, tuple[Layout, Model]] = weakref.WeakKeyDictionary()


def configure(size: int) -> Layout | None:
    """Make a mesh of `size` devices the layout every decoder is built on from now on (1: none)."""
    global _ACTIVE
    layout = make_layout(size)
    _ACTIVE = layout if layout.size > 1 else None
    return _ACTIVE


def reset() -> None:
    """Back to one device (tests)."""
    global _ACTIVE
    _ACTIVE = None


def active() -> Layout | None:
    """The layout set by `configure`, or None on one device."""
    return _ACTIVE


def refuses(strategy: Strategy) -> bool:
    """Whether a strategy cannot run on a mesh: its weights are read only by lljx's one-device CPU kernels."""
    from lljx.strategies.registry import reads_file_formats

    return reads_file_formats(strategy)


def check_strategy(strategy: Strategy) -> None:
    """Refuse, in one line, a strategy that cannot run on a mesh (see `refuses`)."""
    if refuses(strategy):
        raise MeshError(
            f"strategy '{strategy.name}' multiplies with lljx's CPU kernels, which run on one device; "
            "with --tensor-parallel use an XLA strategy (jit-token, jit-split, jit-layer, scan, fused-loop)"
        )


def placed(model: Model, layout: Layout) -> Model:
    """`model` on `layout`: weights in a file's format made dense (f32), heads and FFN padded for the
    mesh, every array sharded over it; made once per model and layout.

    This runs one layer at a time, so a model never needs its dense weights whole beside the
    sharded ones (a Llama 3.2 1B is 5 GB at f32)."""
    cached = _PLACED.get(model)
    if cached is not None and cached[0] == layout:
        return cached[1]
    from lljx.models.dense import DENSE_DTYPE, dense_leaves, has_file_formats
    from lljx.parallel.heads import pad_layer, padded_config, plan_heads
    from lljx.parallel.shard import REPLICATED, layer_specs, place, weight_spec

    config, params, size = model.config, model.params, layout.size
    dense = has_file_formats(params)
    plan = plan_heads(config, size)
    layers = []
    for lp in params.layers:
        lp = pad_layer(dense_leaves(lp) if dense else lp, plan, config.d_head)
        layers.append(place(lp, layer_specs(lp, size), layout.mesh))
    head = dense_leaves(params.head) if dense else params.head
    embed = dense_leaves(params.embed, transpose=False) if dense else params.embed
    sharded = params._replace(
        layers=tuple(layers),
        head=place(head, weight_spec(head, 1, size), layout.mesh),
        embed=None if embed is None else place(embed, weight_spec(embed, 0, size), layout.mesh),
        final_norm=place(params.final_norm, REPLICATED, layout.mesh),
    )
    config = padded_config(config.with_dtype(DENSE_DTYPE) if dense else config, plan)
    twin = replace(model, params=sharded, config=config)
    # The tokenizer and chat template, once built, are shared rather than built again.
    twin.__dict__.update({k: v for k, v in model.__dict__.items() if k in ("tokenizer", "chat")})
    _PLACED[model] = (layout, twin)
    return twin


def build_on_mesh(strategy: Strategy, model: Model, sampler: SamplerSettings, layout: Layout) -> Decoder:
    """The decoder of `strategy` for `model` placed on `layout` (a strategy that cannot run there is
    refused). On CPU it keeps one collective program in flight (`decoder.OneAtATime`); in `lljx serve`
    on process 0 of several its calls are relayed to the other processes (`relay`)."""
    from lljx.parallel import relay

    check_strategy(strategy)
    decoder = strategy.build(placed(model, layout), sampler)
    if layout.devices[0].platform == "cpu":
        from lljx.parallel.decoder import OneAtATime

        decoder = OneAtATime(decoder)  # type: ignore[assignment]
    return relay.relayed(decoder, strategy, model, sampler)


def is_writer() -> bool:
    """Whether this process writes output and files: process 0 of several, or the only one."""
    from lljx.parallel.distributed import is_writer as writer

    return writer()


def describe(config: ModelConfig | None = None) -> str | None:
    """The mesh in a line, with what it changed in `config`'s heads (None on one device)."""
    layout = active()
    if layout is None:
        return None
    from lljx.parallel.heads import plan_heads

    changed = plan_heads(config, layout.size).describe() if config is not None else ""
    return layout.describe() + (f"; {changed}" if changed else "")


def record(config: ModelConfig | None = None) -> dict[str, Any] | None:
    """The mesh as runs.json and profile metadata keep it (None on one device)."""
    layout = active()
    if layout is None:
        return None
    from lljx.parallel.heads import plan_heads

    kept = layout.as_dict()
    if config is not None:
        plan = plan_heads(config, layout.size)
        kept.update(heads=plan.padded_heads, kv_heads=plan.padded_kv_heads, d_ffn=plan.d_ffn_padded,
                    padding=plan.describe() or None)
    return kept
