"""The CPU's data caches (size of each, how many the cores in use have) and which level a working set fits in.

Read from /sys/devices/system/cpu/cpuN/cache/ on Linux, for the CPUs this process may run
on: two cores with a private 1 MiB L2 each hold 2 MiB in L2, while an L3 shared by both
holds its size once. Elsewhere nothing is known and every working set is called DRAM.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SYSFS_CPUS = Path("/sys/devices/system/cpu")
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
DRAM = "DRAM"


@dataclass(frozen=True)
class CacheLevel:
    """One level of data cache as the CPUs in use see it."""

    name: str  # "L1d", "L2", "L3"
    size: int  # bytes in one instance
    instances: int  # distinct instances among the CPUs in use (private caches: one per core)

    @property
    def total(self) -> int:
        return self.size * self.instances

    def describe(self) -> str:
        return f"{self.name} {human_bytes(self.size)}" + (f" x{self.instances}" if self.instances > 1 else "")


def human_bytes(n: float) -> str:
    """Binary units as CPU vendors give cache sizes: 48 KiB, 1 MiB, 32 MiB, 1.5 GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n:.0f} B"


def parse_size(text: str) -> int:
    """sysfs sizes: '48K', '1024K', '32768K' (and plain byte counts)."""
    text = text.strip().upper()
    if text and text[-1] in UNITS:
        return int(text[:-1]) * UNITS[text[-1]]
    return int(text)


def cpus_in_use() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cache_levels(cpus: Iterable[int] | None = None, root: Path = SYSFS_CPUS) -> list[CacheLevel]:
    """Data and unified caches of `cpus` (default: those this process may use), smallest level first."""
    instances: dict[tuple[str, int], set[str]] = {}
    for cpu in cpus_in_use() if cpus is None else cpus:
        for index in sorted((root / f"cpu{cpu}" / "cache").glob("index*")):
            try:
                kind = (index / "type").read_text().strip()
                if kind == "Instruction":
                    continue
                level = int((index / "level").read_text())
                size = parse_size((index / "size").read_text())
                shared = (index / "shared_cpu_list").read_text().strip()
            except (OSError, ValueError):
                continue
            name = f"L{level}d" if kind == "Data" else f"L{level}"
            instances.setdefault((name, size), set()).add(shared)
    levels = [CacheLevel(name, size, len(shared)) for (name, size), shared in instances.items()]
    return sorted(levels, key=lambda c: (c.name[:2], c.size))


def working_set_level(nbytes: float, levels: Sequence[CacheLevel]) -> str:
    """The smallest cache level whose capacity over the cores in use holds `nbytes`, else DRAM.

    L1 is left out: a decode step's weights never live there between tokens.
    """
    for level in sorted((c for c in levels if not c.name.startswith("L1")), key=lambda c: c.total):
        if nbytes <= level.total:
            return level.name
    return DRAM


def last_level_bytes(levels: Sequence[CacheLevel]) -> int:
    """Capacity of the largest cache over the cores in use (0 when unknown)."""
    return max((c.total for c in levels), default=0)


def describe_caches(levels: Sequence[CacheLevel]) -> str:
    return ", ".join(c.describe() for c in levels) if levels else "cache sizes unknown"
