"""The decode roofline: bytes read per decoded token against the machine's measured memory read bandwidth.

Batch-1 decode reads every weight once per token plus the filled part of the KV cache, so
tok/s can never beat bandwidth / bytes-per-token; a system's share of that bound says how
much of the machine it uses, whatever the model size.
"""

from __future__ import annotations

import datetime
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lljx.bench.cache import cache_dir, read_json, write_json
from lljx.config import ModelConfig
from lljx.params import Params

BANDWIDTH_BYTES = 1 << 30  # well past every cache level, so reads come from DRAM
BANDWIDTH_TRIES = 5
BANDWIDTH_FILE = "bandwidth.json"


@dataclass(frozen=True)
class Roofline:
    dtype: str
    weight_bytes: int
    kv_bytes: float  # at the mean context of a decoded token
    context: float
    bandwidth_gbs: float

    @property
    def bytes_per_token(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def bound_tps(self) -> float:
        return self.bandwidth_gbs * 1e9 / self.bytes_per_token if self.bytes_per_token else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_token": self.bytes_per_token, "bound_tps": self.bound_tps}

    def describe(self) -> str:
        return (
            f"decode roofline ({self.dtype}): {self.bytes_per_token / 1e6:.1f} MB read per token "
            f"(weights {self.weight_bytes / 1e6:.1f} MB + KV cache {self.kv_bytes / 1e6:.2f} MB "
            f"at {self.context:.0f} tokens of context); measured read bandwidth {self.bandwidth_gbs:.1f} GB/s "
            f"-> at most {self.bound_tps:.1f} tok/s"
        )


def weight_bytes(params: Params) -> int:
    """Bytes of weights one decoded token reads: all of them, except that an untied embedding table gives one row.

    Every leaf counts at its stored size: f32 norms 4 bytes a weight, an Int8Weight 1 byte a
    weight plus its f32 scales (4 bytes per 32 weights).
    """
    import jax

    total = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    if params.embed is not None:
        total -= params.embed.nbytes - params.embed.nbytes // params.embed.shape[0]
    return int(total)


def kv_bytes(config: ModelConfig, context: float) -> float:
    """Keys and values of every layer over `context` positions, at the compute dtype."""
    return 2 * config.n_layers * config.n_kv_heads * config.d_head * config.jnp_dtype.itemsize * context


def roofline(config: ModelConfig, params: Params, context: float, bandwidth_gbs: float) -> Roofline:
    return Roofline(config.dtype, weight_bytes(params), kv_bytes(config, context), context, bandwidth_gbs)


def measure_bandwidth(nbytes: int = BANDWIDTH_BYTES, threads: int = 1, tries: int = BANDWIDTH_TRIES) -> float:
    """Read bandwidth in GB/s: summing an f32 array split over `threads` (numpy drops the GIL), best of `tries`."""
    data = np.ones(max(nbytes // 4, threads), dtype=np.float32)  # written once here, so no page faults while timed
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(tries):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def bandwidth_key(cpu: str, threads: int) -> str:
    return f"{cpu} / {threads} threads"


def today() -> str:
    return datetime.date.today().isoformat()


def cached_bandwidth(cpu: str, threads: int, *, cache: Path | None = None) -> float:
    """The measured bandwidth for this CPU model and thread count, measuring once and caching it.

    Delete bandwidth.json in the cache to measure again (say, after a run on a busy machine).
    """
    path = (cache or cache_dir()) / BANDWIDTH_FILE
    key = bandwidth_key(cpu, threads)
    known = read_json(path)
    known = known if isinstance(known, dict) else {}
    entry = known.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("gbs"), (int, float)) and entry["gbs"] > 0:
        return float(entry["gbs"])
    gbs = measure_bandwidth(threads=threads)
    known[key] = {"gbs": gbs, "bytes": BANDWIDTH_BYTES, "tries": BANDWIDTH_TRIES, "measured": today()}
    write_json(path, known)
    return gbs
