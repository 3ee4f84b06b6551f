"""`lljx serve` runs with glibc's malloc asking for transparent huge pages: the process re-executes itself once with the tunable set.

Growing or shrinking the batch copies every running row's KV cache into a freshly allocated
buffer (hundreds of MB at long contexts), and with 4 KiB pages most of that step is page
faults. While 4 streams ran and a 1,905-token prompt was read (embedded model, 2-core Xeon,
16 rounds each way), the worst gap between two of their tokens went over 220 ms in 5 rounds
(up to 591 ms) with 4 KiB pages, and stayed at or under 195 ms in all 16 with huge pages;
the prompt's first token came about 10% sooner too.

glibc reads its tunables only at process start, and Linux offers no per-process switch to
huge pages for memory already being handed out by malloc, so the server re-executes itself
with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` before it loads anything. Nothing happens where
it would not help: other C libraries, kernels whose transparent huge pages are `always` (already
in use) or `never`, or a GLIBC_TUNABLES that already says what to do about huge pages.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def wanted(environ: dict[str, str] | os._Environ[str], thp_mode: str | None, libc: str) -> bool:
    """Whether a re-execution would turn huge pages on: glibc, the kernel's mode `madvise` (the
    bracketed word of THP_MODE), and no choice made in GLIBC_TUNABLES yet."""
    if libc != "glibc" or thp_mode is None or "[madvise]" not in thp_mode:
        return False
    return TUNABLE not in environ.get("GLIBC_TUNABLES", "")


def with_tunable(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The environment with the huge-page tunable added to any tunables already set."""
    tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    return {**environ, "GLIBC_TUNABLES": ":".join([*tunables, f"{TUNABLE}=1"])}


def reexec_with_huge_pages() -> None:
    """Replaces this process by itself with huge pages on, when that would help (see `wanted`);
    returns otherwise. Call it first thing, before anything is loaded or started."""
    if sys.platform != "linux":
        return
    try:
        with open(THP_MODE) as file:
            mode: str | None = file.read()
    except OSError:
        mode = None
    if not wanted(os.environ, mode, platform.libc_ver()[0]):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, with_tunable(os.environ))
    except OSError:
        return  # e.g. the interpreter moved: run on with 4 KiB pages
