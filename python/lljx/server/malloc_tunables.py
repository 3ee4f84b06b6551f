"""`lljx serve` runs with glibc's malloc keeping freed memory for reuse, on transparent huge pages: the process re-executes itself once with the tunables set.

Growing or shrinking the batch copies the running rows' KV caches into a new buffer
(hundreds of MB at long contexts). glibc hands such large blocks out as fresh mappings and
returns them to the kernel when freed, so every resize paid for page faults on a buffer the
size of the whole cache, and in a VM for the host backing those pages again. While 4 streams
ran and a 1,905-token prompt was read (embedded model, 2-core Xeon KVM guest), the step that
grew the batch from 4 to 8 rows took 30-630 ms, and the streams' worst gap between two tokens
went over 250 ms in about a third of the rounds:

- huge pages alone (`glibc.malloc.hugetlb=1`, where the kernel's mode is `madvise`): 16
  rounds with worst gaps of at most 195 ms, against 5 of 16 over 220 ms (up to 591 ms)
  without; later runs on the same machine still had 4-to-8-row resizes of 320-630 ms;
- with freed memory kept (`glibc.malloc.mmap_max=0`: large blocks come from the heap, and a
  trim threshold of 64 GiB, so the heap is not handed back): those resizes took 42-55 ms after
  the first round, every later round's worst gap was 146-164 ms, and the prompt's first token
  came after 2.4-2.5 s instead of 2.8-3.4 s. Throughput at 1 and 8 clients and peak RSS did
  not move (two alternating pairs each).

The cost: memory the server freed stays in the process (its resident size stays at its peak)
for the next request that needs it, as with most long-running servers' allocators.

glibc reads its tunables only at process start, so the server re-executes itself before it
loads anything. Nothing happens with other C libraries, and a tunable the user already set in
GLIBC_TUNABLES is left as they set it.
"""

from __future__ import annotations

import os
import platform
import sys

THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"

# Tunable -> value; huge pages only where the kernel gives them to regions that ask (madvise).
KEEP_FREED = {"glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": str(64 << 30)}
HUGE_PAGES = {"glibc.malloc.hugetlb": "1"}


def wanted(environ: dict[str, str] | os._Environ[str], thp_mode: str | None, libc: str) -> dict[str, str]:
    """The tunables to add: none outside glibc; huge pages only when THP_MODE's bracketed word is
    `madvise` (`always` already gives them, `never` refuses them); none the user set already."""
    if libc != "glibc":
        return {}
    chosen = {**KEEP_FREED, **(HUGE_PAGES if thp_mode is not None and "[madvise]" in thp_mode else {})}
    already = {item.split("=", 1)[0] for item in environ.get("GLIBC_TUNABLES", "").split(":") if item}
    return {name: value for name, value in chosen.items() if name not in already}


def with_tunables(environ: dict[str, str] | os._Environ[str], tunables: dict[str, str]) -> dict[str, str]:
    """The environment with `tunables` added after any already set."""
    kept = [item for item in environ.get("GLIBC_TUNABLES", "").split(":") if item]
    added = [f"{name}={value}" for name, value in tunables.items()]
    return {**environ, "GLIBC_TUNABLES": ":".join([*kept, *added])}


def reexec_with_tunables() -> None:
    """Replaces this process by itself with the tunables `wanted` adds, if any; returns
    otherwise. Call it first thing, before anything is loaded or started."""
    if sys.platform != "linux":
        return
    try:
        with open(THP_MODE) as file:
            mode: str | None = file.read()
    except OSError:
        mode = None
    tunables = wanted(os.environ, mode, platform.libc_ver()[0])
    if not tunables:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, with_tunables(os.environ, tunables))
    except OSError:
        return  # e.g. the interpreter moved: run on as started
