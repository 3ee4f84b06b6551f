"""llama.cpp's `Llama` for the bench's peer and the tests' oracle, with its weight repacking off where that crashes.

Where the CPU reports Intel AMX, llama.cpp repacks quantized weights for it at load, and on
some Sapphire Rapids VMs its AMX matrix product then crashes the whole process at the first
evaluation (llama.cpp issue 20824, closed without a fix). Whether it does is probed once
per file, CPU and llama-cpp-python version, in a child process (`llamacpp_child` on a
16-token prompt), and cached. Where the probe crashed, llama.cpp loads the weights as the
file stores them (no extra buffer types, llama.cpp's `--no-repack`), so it runs, without
its AMX kernels; everywhere else it loads as it would by default.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .cache import cache_dir, read_json, write_json
from .environment import cpu_model

CHILD = Path(__file__).with_name("llamacpp_child.py")
PROBES = "llamacpp-repack.json"
MAX_PROBES = 64  # test files come and go; the oldest verdicts are dropped past this many
PROBE_TIMEOUT_S = 900.0


def cpu_has_amx() -> bool:
    """Whether the kernel reports AMX int8 tiles (the only CPUs where llama.cpp repacks for AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_int8" in line.split() for line in text.splitlines())


def probe_key(path: str | Path) -> str:
    import llama_cpp

    path = Path(path)
    stat = path.stat()
    return f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns} | {cpu_model()} | {llama_cpp.__version__}"


def probe(path: str | Path, threads: int = 2) -> bool:
    """Whether llama.cpp, repacking as by default, evaluates a short prompt on `path` in a child and exits cleanly."""
    argv = [sys.executable, str(CHILD), str(path), str(threads), "64", json.dumps(list(range(1, 17)))]
    try:
        run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False
    return run.returncode == 0


def repacking_runs(path: str | Path) -> bool:
    """Whether llama.cpp may repack `path`'s weights here: always without AMX, else as probed (cached)."""
    if not cpu_has_amx():
        return True
    key = probe_key(path)
    store = cache_dir() / PROBES
    verdicts = read_json(store)
    verdicts = verdicts if isinstance(verdicts, dict) else {}
    if isinstance(verdicts.get(key), bool):
        return verdicts[key]
    runs = probe(path)
    verdicts[key] = runs
    write_json(store, dict(list(verdicts.items())[-MAX_PROBES:]))
    return runs


def Llama(model_path: str | Path, **kwargs: Any) -> Any:  # noqa: N802 - stands in for llama_cpp.Llama
    """llama_cpp.Llama(model_path=..., **kwargs), loaded without repacking where `repacking_runs` says it crashes."""
    import llama_cpp

    from .llamacpp_child import without_repacking

    path = Path(model_path)
    if kwargs.get("vocab_only") or repacking_runs(path):
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    with without_repacking():
        return llama_cpp.Llama(model_path=str(path), **kwargs)
