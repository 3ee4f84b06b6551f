"""lljx bench --cold: one spawn timed to its first byte with its peak memory, failures as errors, and the mode end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest

from lljx.bench import cold


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_spawn_is_timed_to_its_first_byte_and_reports_its_peak_memory():
    code = ("import sys, time; time.sleep(0.3); sys.stdout.write('7\\n'); sys.stdout.flush(); "
            "block = bytearray(200_000_000); block[::4096] = b'x' * len(block[::4096]); time.sleep(0.5)")
    start = time.perf_counter()
    ttft, rss = cold.spawn(python(code))
    whole = time.perf_counter() - start
    assert 0.3 <= ttft < whole - 0.4  # the first byte, not the exit
    assert rss >= 200_000_000  # the block it touched after printing still counts


def test_a_failing_or_silent_spawn_is_an_error_with_its_last_stderr_line():
    with pytest.raises(cold.ColdStartError, match="no such model"):
        cold.spawn(python("import sys; print('loading', file=sys.stderr); sys.exit('no such model')"))
    with pytest.raises(cold.ColdStartError, match="nothing on stdout"):
        cold.spawn(python("pass"))
    with pytest.raises(cold.ColdStartError, match="no reply within 1 s"):
        cold.spawn(python("import time; time.sleep(30)"), timeout=1)


def test_rows_alternate_between_systems_after_one_warm_up_each_and_medians_summarize_them():
    fast = cold.ColdSystem("fast", tuple(python("print(1)")), "a.gguf")
    slow = cold.ColdSystem("slow", tuple(python("import time; time.sleep(0.2); print(1)")), "b.gguf")
    seen: list[str] = []
    rows = cold.measure([fast, slow], spawns=3, threads=2, progress=seen.append)
    assert [r["system"] for r in rows] == ["fast", "slow"] * 3 and [r["spawn"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert seen[:2] == ["fast: warm-up spawn", "slow: warm-up spawn"] and len(seen) == 8
    summary = {s["system"]: s for s in cold.summarize(rows)}
    assert summary["slow"]["ttft_median_s"] > summary["fast"]["ttft_median_s"] + 0.15
    assert summary["fast"]["spawns"] == 3 and summary["fast"]["file"] == "a.gguf"
    assert summary["fast"]["ttft_min_s"] <= summary["fast"]["ttft_median_s"] <= summary["fast"]["ttft_max_s"]
    text = cold.format_cold(list(summary.values()), "table", ["machine: here"])
    assert "first token s (median)" in text and "machine: here" in text and "fresh process" in text
    assert json.loads(cold.format_cold(list(summary.values()), "json"))["cold"][0]["system"] == "fast"


@pytest.mark.slow
def test_bad_cold_options_are_one_line_errors():
    for args, fragment in ((["--spawns", "0"], "--spawns"), (["--prompt-tokens", "64"], "one built-in prompt"),
                           (["-s", "nope"], "unknown strategy 'nope'")):
        run = subprocess.run([sys.executable, "-m", "lljx.cli", "bench", "--cold", *args], capture_output=True,
                             text=True, timeout=300, check=False)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode != 0 and len(lines) == 1 and lines[0].startswith("lljx: error: "), run.stderr
        assert fragment in lines[0]


@pytest.mark.slow
def test_bench_cold_end_to_end_on_the_embedded_model(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[peers]')")
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "lljx.cli", "bench", "--cold", "--spawns", "2", "--dtype", "f32", "--peer", "llama.cpp",
         "--peer", "ollama", "--out", str(out), "--format", "json"],
        capture_output=True, text=True, timeout=900, env=os.environ.copy(), check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "ollama: skipped (cold starts are measured for lljx and llama.cpp only)" in run.stderr
    printed = json.loads(run.stdout)
    systems = {s["system"]: s for s in printed["cold"]}
    assert list(systems) == ["native-token", "llama.cpp"]
    for s in systems.values():
        assert s["spawns"] == 2 and 0 < s["ttft_median_s"] < 120 and s["peak_rss_median_mb"] > 50
    assert systems["llama.cpp"]["file"].endswith(".F32.gguf")  # f32: llama.cpp's own F32 rewrite
    assert any(note.startswith("machine: ") for note in printed["notes"])
    assert sorted(p.name for p in out.iterdir()) == ["cold.csv", "runs.json", "summary.md"]
    with open(out / "cold.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["system"] for r in table] == ["native-token", "llama.cpp"] * 2
    document = json.loads((out / "runs.json").read_text())
    assert document["settings"]["spawns"] == 2 and document["environment"]["cpu_caches"]
    assert "| native-token |" in (out / "summary.md").read_text()
