"""Memory read bandwidth for the roofline: lljx's read kernel, the engines' thread count, a buffer the size of a token's reads.

A model whose bytes per token fit in L3 reads them from L3 at every token, so its bound is
L3's bandwidth, not DRAM's: the buffer measured is the working set itself (capped where
every size reads from DRAM alike, so an 8B model's 16 GB need no second 16 GB). Results are
cached per CPU, thread count and size class (the cache level and a power-of-two size), in
bandwidth.json in lljx's cache; `remeasure` replaces an entry when a system beat it.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lljx.bench.cache import cache_dir, read_json, write_json
from lljx.bench.caches import DRAM, CacheLevel, human_bytes, last_level_bytes, working_set_level

BANDWIDTH_FILE = "bandwidth.json"
SECONDS = 1.0  # of reading; the kernel reports its fastest unit of a few milliseconds
RECHECK_SECONDS = 4.0
DRAM_CAP_BYTES = 1 << 30
DRAM_CAP_LLC = 8  # past 8x the last cache level, reads come from DRAM whatever the size


@dataclass(frozen=True)
class Measured:
    """One bandwidth figure and what it was measured on."""

    gbs: float
    bytes: int  # the buffer read
    level: str  # where that buffer lives: L2, L3 or DRAM
    threads: int
    seconds: float  # spent measuring
    measured: str  # date
    size_class: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def buffer_bytes(working_set: float, levels: list[CacheLevel]) -> int:
    """The buffer to measure: the working set, capped far past the last cache level."""
    cap = max(DRAM_CAP_BYTES, DRAM_CAP_LLC * last_level_bytes(levels))
    return int(min(max(working_set, 4096), cap))


def size_class(nbytes: int, levels: list[CacheLevel]) -> str:
    """'L3 <= 32 MiB', 'DRAM <= 512 MiB', or 'DRAM' for every size past the cap."""
    level = working_set_level(nbytes, levels)
    if level == DRAM and nbytes >= max(DRAM_CAP_BYTES, DRAM_CAP_LLC * last_level_bytes(levels)):
        return DRAM
    return f"{level} <= {human_bytes(1 << max(12, (nbytes - 1).bit_length()))}"


def cache_key(cpu: str, threads: int, klass: str) -> str:
    return f"{cpu} / {threads} threads / {klass}"


def measure(nbytes: int, threads: int, levels: list[CacheLevel], *, seconds: float = SECONDS) -> Measured:
    """Read bandwidth of `threads` threads over an `nbytes` buffer: the fastest few milliseconds of `seconds`."""
    from lljx import _native

    gbs, read, _ = _native.read_bandwidth(nbytes, threads, seconds=seconds)
    return Measured(gbs, read, working_set_level(read, levels), threads, seconds, datetime.date.today().isoformat(),
                    size_class(nbytes, levels))


def cached(cpu: str, threads: int, working_set: float, levels: list[CacheLevel], *,
           cache: Path | None = None) -> Measured:
    """The bandwidth for this CPU, thread count and working set's size class: measured once, then cached."""
    nbytes = buffer_bytes(working_set, levels)
    key = cache_key(cpu, threads, size_class(nbytes, levels))
    path = (cache or cache_dir()) / BANDWIDTH_FILE
    known = read_json(path)
    entry = known.get(key) if isinstance(known, dict) else None
    if isinstance(entry, dict):
        try:
            found = Measured(**entry)
            if found.gbs > 0:
                return found
        except TypeError:
            pass  # an entry from an older lljx: measured again below
    return store(path, key, measure(nbytes, threads, levels))


def remeasure(cpu: str, threads: int, working_set: float, levels: list[CacheLevel], previous: Measured, *,
              cache: Path | None = None) -> Measured:
    """Measure again, longer, and keep whichever figure is higher (a busy machine only ever lowers it)."""
    nbytes = buffer_bytes(working_set, levels)
    again = measure(nbytes, threads, levels, seconds=RECHECK_SECONDS)
    best = again if again.gbs > previous.gbs else previous
    return store((cache or cache_dir()) / BANDWIDTH_FILE, cache_key(cpu, threads, size_class(nbytes, levels)), best)


def store(path: Path, key: str, found: Measured) -> Measured:
    known = read_json(path)
    known = known if isinstance(known, dict) else {}
    known[key] = found.as_dict()
    write_json(path, known)
    return found
