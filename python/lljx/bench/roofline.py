"""The decode roofline: bytes read per decoded token, by storage format, against the read bandwidth of where they live.

Batch-1 decode reads every weight once per token plus the filled part of the KV cache, so
tok/s can never beat bandwidth / bytes-per-token. The bytes count each weight as stored
(a Q4_K tensor at its blocks' size, an F16 one at 2 bytes a weight, an untied embedding
table one row a token), and the bandwidth is measured on a buffer of that size (see
bandwidth.py), so a model that fits in a cache level gets that level's bound. A system
above 100% means the bound was measured too low: the bench measures again and, if it
still holds, says so next to the figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lljx.config import ModelConfig
from lljx.params import GGMLWeight, Int8Weight, NativeWeight, Params

if TYPE_CHECKING:
    from lljx.models.gguf_file import GGUFFile


@dataclass(frozen=True)
class Roofline:
    dtype: str
    formats: dict[str, float]  # weight bytes read per token, by storage format, largest first
    kv_bytes: float  # at the mean context of a decoded token
    context: float
    bandwidth_gbs: float
    level: str = ""  # where the working set lives: L2, L3 or DRAM
    caches: str = ""  # the CPU's cache sizes, for the reader
    threads: int = 0
    measured_bytes: int = 0  # the buffer the bandwidth was measured on
    remeasured: bool = False
    above: tuple[str, ...] = field(default=())  # systems still above the bound after measuring again

    @property
    def weight_bytes(self) -> float:
        return sum(self.formats.values())

    @property
    def bytes_per_token(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def bound_tps(self) -> float:
        return self.bandwidth_gbs * 1e9 / self.bytes_per_token if self.bytes_per_token else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["above"] = list(self.above)
        return {**out, "weight_bytes": self.weight_bytes, "bytes_per_token": self.bytes_per_token,
                "bound_tps": self.bound_tps}

    def describe(self) -> str:
        where = f" (working set in {self.level}; {self.caches})" if self.level else ""
        threads = f" with {self.threads} threads" if self.threads else ""
        on = f" on {self.measured_bytes / 1e6:.0f} MB" if self.measured_bytes else ""
        text = (
            f"decode roofline ({self.dtype}): {self.bytes_per_token / 1e6:.1f} MB read per token "
            f"({describe_formats(self.formats)} + KV cache {self.kv_bytes / 1e6:.2f} MB at {self.context:.0f} tokens "
            f"of context){where}; measured read bandwidth {self.bandwidth_gbs:.1f} GB/s{threads}{on} "
            f"-> at most {self.bound_tps:.1f} tok/s"
        )
        if self.remeasured:
            text += "; measured again because a system passed the first figure"
        if self.above:
            text += (f"; still above it: {', '.join(self.above)} (this bound is too low for this machine, "
                     "so shares over 100% are not real)")
        return text


def describe_formats(formats: dict[str, float]) -> str:
    """'Q4_K 560.2 MB + Q6_K 215.0 MB + F32 0.1 MB' (kB below a tenth of a MB)."""
    def size(n: float) -> str:
        return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"

    return " + ".join(f"{name} {size(n)}" for name, n in formats.items()) or "no weights"


def leaf_format(leaf: Any) -> str:
    """The storage format a weight is read in: its GGUF type name, Q8_0 for int8 blocks, else its dtype."""
    if isinstance(leaf, GGMLWeight):
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(leaf.ggml_type).name
    if isinstance(leaf, Int8Weight):
        return "int8"
    return str(leaf.dtype).upper().replace("FLOAT", "F").replace("BFLOAT", "BF")


def leaf_bytes(leaf: Any) -> int:
    import jax

    if isinstance(leaf, GGMLWeight):
        return int(leaf.data.nbytes) - leaf.skip  # the bytes before `skip` belong to another tensor
    return sum(int(x.nbytes) for x in jax.tree.leaves(leaf))


def format_bytes(params: Params) -> dict[str, float]:
    """Weight bytes one decoded token reads, by format: every weight once, an untied embedding table one row."""
    import jax

    sizes: dict[str, float] = {}

    def is_weight(x: Any) -> bool:
        return isinstance(x, (GGMLWeight, Int8Weight, NativeWeight))

    for leaf in jax.tree.leaves(params._replace(embed=None), is_leaf=is_weight):
        weight = leaf.weight if isinstance(leaf, NativeWeight) else leaf
        # A native int8 weight is read through its tiled copy (same bytes), never twice.
        add(sizes, leaf_format(weight), leaf_bytes(weight))
    if params.embed is not None:
        rows = params.embed.n_out if isinstance(params.embed, GGMLWeight) else params.embed.shape[0]
        add(sizes, leaf_format(params.embed), leaf_bytes(params.embed) / rows)
    return largest_first(sizes)


def add(sizes: dict[str, float], name: str, n: float) -> None:
    sizes[name] = sizes.get(name, 0.0) + n


def largest_first(sizes: dict[str, float]) -> dict[str, float]:
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def file_bytes_per_token(gf: GGUFFile) -> dict[str, float]:
    """The same count from a GGUF header, for a file as llama.cpp reads it (token_embd one row when untied)."""
    sizes: dict[str, float] = {}
    untied = "output.weight" in gf.tensors
    for name, info in gf.tensors.items():
        rows = info.n_elements // info.shape[0] if name == "token_embd.weight" and untied else 1
        add(sizes, info.type_name, info.n_bytes / rows)
    return largest_first(sizes)


def kv_bytes(config: ModelConfig, context: float) -> float:
    """Keys and values of every layer over `context` positions, at the activations' dtype."""
    return 2 * config.n_layers * config.n_kv_heads * config.d_head * config.cache_dtype.itemsize * context


def weight_bytes(params: Params) -> int:
    return int(sum(format_bytes(params).values()))


def roofline(config: ModelConfig, params: Params, context: float, bandwidth_gbs: float, **where: Any) -> Roofline:
    return Roofline(config.dtype, format_bytes(params), kv_bytes(config, context), context, bandwidth_gbs, **where)


def above_bound(summary: list[dict[str, Any]]) -> list[str]:
    """Systems whose median decode rate is over 100% of the roofline."""
    return [s["system"] for s in summary if (s.get("roofline_share") or 0.0) > 1.0]


def recheck(
    bound: Roofline, summarize: Callable[[Roofline], list[dict[str, Any]]], measure_again: Callable[[], float],
    say: Callable[[str], None],
) -> tuple[Roofline, list[dict[str, Any]]]:
    """The bound and summary, measured again when a system beat the bound, and flagged if one still does."""
    summary = summarize(bound)
    over = above_bound(summary)
    if not over:
        return bound, summary
    shares = ", ".join(f"{s['system']} {s['roofline_share']:.0%}" for s in summary if s["system"] in over)
    say(f"bench: above the {bound.bandwidth_gbs:.1f} GB/s roofline ({shares}); measuring the bandwidth again")
    bound = replace(bound, bandwidth_gbs=max(bound.bandwidth_gbs, measure_again()), remeasured=True)
    summary = summarize(bound)
    still = above_bound(summary)
    if still:
        say(f"bench: {', '.join(still)} still above the {bound.bandwidth_gbs:.1f} GB/s roofline: "
            "this bound is too low for this machine")
        bound = replace(bound, above=tuple(still))
    return bound, summary
