"""What a run happened on: CPU, cores, cache sizes, threads, device, package versions, git commit, date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED = ("lljx", "jax", "jaxlib", "numpy", "llama-cpp-python", "ollama")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def threads() -> int:
    """The cores this process may run on: what XLA's CPU pool sizes itself to, and what llama.cpp is given."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine(environment: dict[str, Any]) -> str:
    """'AMD EPYC, 2 cores (2 used), L1d 48 KiB x2, L2 1 MiB x2, L3 32 MiB': what a figure was measured on."""
    return (f"{environment['cpu']}, {environment['cores']} cores ({environment['threads']} used), "
            f"{environment['cpu_caches']}")


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device() -> str:
    import jax

    first = jax.devices()[0]
    return f"{first.platform}: {first.device_kind} x{jax.device_count()}"


def git_commit() -> str | None:
    """The commit of the lljx source tree when it is a git checkout (an editable install); '+dirty' if edited."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def collect() -> dict[str, Any]:
    """Everything above as one JSON-ready record."""
    from lljx.bench.caches import cache_levels, describe_caches

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads(),
        "cpu_caches": describe_caches(cache_levels()),
        "device": device(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": sys.version.split()[0],
        **{package.replace("-", "_"): version(package) for package in VERSIONED},
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def shown_path(path: object) -> str:
    """A file's path as published results show it: the home folder as `~`, an installed package's
    folder as `<site-packages>`, so committed figures name no machine's layout."""
    import site
    from pathlib import Path

    text = str(path)
    for root in sorted({*site.getsitepackages(), site.getusersitepackages()}, key=len, reverse=True):
        if text.startswith(root.rstrip("/") + "/"):
            return "<site-packages>" + text[len(root.rstrip("/")) :]
    home = str(Path.home())
    return "~" + text[len(home) :] if text.startswith(home.rstrip("/") + "/") else text
