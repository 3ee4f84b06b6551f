"""`lljx bench --cold`: time to first token and peak memory of fresh processes, `lljx generate -n 1` against llama.cpp's equivalent.

Each spawn is timed from just before the process starts to the first byte it writes to
stdout (the first token), and its peak resident memory comes from the kernel when it exits
(wait4's rusage). Both read the same model file with the same threads and the same prompt
ids. One untimed spawn of each comes first, so the file is in the page cache and lljx's
compiled programs in its persistent cache, as for any second run; the spawns then
alternate between the systems so both see the machine alike, and medians are reported.
"""

from __future__ import annotations

import json
import math
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lljx.bench import environment
from lljx.bench.llamacpp_load import repacking_runs

CHILD = Path(__file__).with_name("llamacpp_child.py")
COLUMNS = ("system", "spawn", "ttft_s", "peak_rss_mb", "file", "threads")


class ColdStartError(RuntimeError):
    """A spawned process failed; the message carries the last line it wrote to stderr."""


@dataclass(frozen=True)
class ColdSystem:
    """One thing to spawn: a name, its command line and the model file it reads."""

    name: str
    argv: tuple[str, ...]
    file: str


def lljx_command() -> list[str]:
    """The `lljx` console script of this environment, else the same entry point through -m."""
    script = Path(sys.executable).with_name("lljx")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lljx.cli"]


def lljx_system(strategy: str, model_file: str, dtype: str, prompt: str) -> ColdSystem:
    argv = [*lljx_command(), "generate", "-n", "1", "--temperature", "0", "--model", model_file,
            "--dtype", dtype, "--strategy", strategy, prompt]
    return ColdSystem(strategy, tuple(argv), model_file)


def llamacpp_system(model_file: str, threads: int, ids: Sequence[int]) -> ColdSystem:
    n_ctx = math.ceil((len(ids) + 1) / 256) * 256
    argv = [sys.executable, str(CHILD), model_file, str(threads), str(n_ctx), json.dumps(list(ids))]
    if not repacking_runs(Path(model_file)):
        argv.append("no-repack")
    return ColdSystem("llama.cpp", tuple(argv), model_file)


def spawn(argv: Sequence[str], *, timeout: float = 1800.0) -> tuple[float, int]:
    """(seconds from spawn to the first byte on stdout, peak RSS in bytes) of one run of `argv`."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        first_at = None
        with process.stdout:
            fd = process.stdout.fileno()
            # Read until the child closes stdout, so it never blocks on a full pipe.
            while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                if not os.read(fd, 1 << 16):
                    break
                first_at = first_at or time.perf_counter()
            else:
                process.kill()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wrote = first_at is not None and process.returncode == 0
        if not wrote or time.monotonic() > deadline:
            errors.seek(0)
            lines = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {process.returncode}, nothing on stdout"
            if time.monotonic() > deadline:
                reason = f"no reply within {timeout:.0f} s"
            raise ColdStartError(f"{Path(argv[0]).name} {' '.join(argv[1:3])}...: {reason}")
    assert first_at is not None
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    return first_at - start, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def measure(systems: Sequence[ColdSystem], spawns: int, threads: int,
            progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One warm-up spawn per system, then `spawns` rounds over all of them; one row per timed spawn."""
    rows: list[dict[str, Any]] = []
    for system in systems:
        if progress is not None:
            progress(f"{system.name}: warm-up spawn")
        spawn(system.argv)
    for i in range(spawns):
        for system in systems:
            if progress is not None:
                progress(f"{system.name}: spawn {i + 1}/{spawns}")
            ttft, rss = spawn(system.argv)
            rows.append({"system": system.name, "spawn": i, "ttft_s": ttft, "peak_rss_mb": rss / 1e6,
                         "file": environment.shown_path(system.file), "threads": threads})
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per system, in the order they ran: medians (and range) of time to first token and peak RSS."""
    out = []
    for name in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == name]
        ttft = [r["ttft_s"] for r in mine]
        rss = [r["peak_rss_mb"] for r in mine]
        out.append({
            "system": name, "spawns": len(mine), "ttft_median_s": statistics.median(ttft), "ttft_min_s": min(ttft),
            "ttft_max_s": max(ttft), "peak_rss_median_mb": statistics.median(rss), "peak_rss_max_mb": max(rss),
            "file": mine[0]["file"],
        })
    return out


def display(summary: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["system", "spawns", "first token s (median)", "min", "max", "peak RSS MB (median)", "max RSS MB"]
    cells = [[s["system"], str(s["spawns"]), f"{s['ttft_median_s']:.3f}", f"{s['ttft_min_s']:.3f}",
              f"{s['ttft_max_s']:.3f}", f"{s['peak_rss_median_mb']:.0f}", f"{s['peak_rss_max_mb']:.0f}"]
             for s in summary]
    return headers, cells


NOTE = ("cold start: each spawn a fresh process, timed from the spawn to the first token on stdout; "
        "peak RSS from the kernel at exit (mapped model pages count once touched); the model file in the page "
        "cache and lljx's compilation cache warm (one untimed spawn each first)")


def format_cold(summary: Sequence[dict[str, Any]], fmt: str, notes: Sequence[str] = ()) -> str:
    from lljx.bench import report

    if fmt == "json":
        return json.dumps({"cold": list(summary), "notes": [NOTE, *notes]}, indent=2)
    if fmt == "csv":
        return report.as_csv(summary, list(summary[0]) if summary else ["system"]).rstrip("\n")
    headers, cells = display(summary)
    table = report.markdown(headers, cells) if fmt == "md" else report.aligned(headers, cells)
    return ("\n\n" if fmt == "md" else "\n").join([table, *([""] if fmt != "md" else []), NOTE, *notes])


def write_cold(out: Path, document: dict[str, Any], rows: Sequence[dict[str, Any]],
               summary: Sequence[dict[str, Any]]) -> list[Path]:
    """cold.csv (one row per spawn), runs.json (rows, summary, settings, environment) and summary.md."""
    from lljx.bench import report

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "cold.csv", out / "runs.json", out / "summary.md"]
    paths[0].write_text(report.as_csv(rows, list(COLUMNS)), encoding="utf-8")
    paths[1].write_text(json.dumps({**document, "cold": list(summary), "rows": list(rows)}, indent=1) + "\n",
                        encoding="utf-8")
    settings = document["settings"]
    lines = [f"# lljx bench --cold: {settings['model']} at {settings['dtype']}", "",
             f"Command: `{document['command']}`", "", format_cold(summary, "md", document.get("notes", ())), "",
             "| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in settings.items()), "",
             "| environment | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in document["environment"].items())]
    paths[2].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths
