"""`lljx bench serve`: the load figures from known request timings, and a short run against a real `lljx serve`."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

from lljx.bench.load import Point, Targets, Timed, percentiles, summarize
from serve_process import start_server, stop_server


def lljx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lljx.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OLLAMA_HOST": ""})


def test_summary_of_known_timings():
    fast = Timed(0, 0, sent=0.0, chunks=[0.1, 0.2, 0.3, 0.4], ended=0.4, output_tokens=4)
    slow = Timed(1, 1, sent=0.5, chunks=[2.5, 3.0], ended=3.0, output_tokens=2)
    failed = Timed(2, 0, sent=1.0, ended=1.0, error="503: server busy")
    point = summarize(Point(3, rate=2.0), [fast, slow, failed], wall=4.0, targets=Targets(ttft_ms=500, tpot_ms=200))
    assert point["completed"] == 2 and point["failed"] == 1 and point["errors"] == ["503: server busy"]
    assert point["request_throughput"] == 0.5 and point["output_tok_s"] == 1.5
    assert point["goodput"] == 0.25 and point["good_fraction"] == pytest.approx(1 / 3, abs=1e-3)  # only `fast` meets both
    assert point["ttft_ms"]["p50"] == pytest.approx(1050.0)  # (100 + 2000) / 2
    assert fast.tpot == pytest.approx(0.1) and slow.tpot == pytest.approx(0.5)
    assert point["itl_ms"]["p99"] == pytest.approx(488.0)  # gaps 100, 100, 100, 500, interpolated
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


def test_bad_levels_and_an_unreachable_server_are_one_line_errors():
    bad = lljx("bench", "serve", "--rate", "2,x")
    assert bad.returncode == 2 and "--rate" in bad.stderr and bad.stdout == ""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gone = lljx("bench", "serve", "--host", f"127.0.0.1:{port}", "--warmup", "1", "--timeout", "20")
    assert gone.returncode == 1 and gone.stdout == ""
    errors = [line for line in gone.stderr.splitlines() if line.startswith("lljx: error:")]
    assert len(errors) == 1 and "no warm-up request" in errors[0]


@pytest.mark.slow
def test_a_short_sweep_against_a_real_lljx_serve(tmp_path):
    (tmp_path / "serve").mkdir()
    server = start_server(tmp_path / "serve", "--port", "0", "--parallel", "2", "--dtype", "auto")
    try:
        run = lljx("bench", "serve", "--host", server.url, "--rate", "4", "--concurrency", "2", "--requests", "4",
                   "--max-tokens", "8", "--warmup", "2", "--prompts", "4", "--out", str(tmp_path / "out"), "--format", "json")
    finally:
        stop_server(server)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert [p["point"] for p in printed] == ["rate 4/s", "concurrency 2"]
    document = json.loads((tmp_path / "out" / "load.json").read_text())
    for point in document["points"]:
        assert point["completed"] == 4 and point["failed"] == 0
        assert point["output_tok_s"] > 0 and point["request_throughput"] > 0
        assert 0 < point["ttft_ms"]["p50"] <= point["ttft_ms"]["p90"] <= point["ttft_ms"]["p99"]
        assert point["tpot_ms"]["p50"] > 0 and point["itl_ms"]["p50"] > 0
    with open(tmp_path / "out" / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["ok"] == "True" and int(r["output_tokens"]) <= 8 for r in rows)
    assert (tmp_path / "out" / "latency.png").stat().st_size > 10_000
    assert "| rate 4/s |" in (tmp_path / "out" / "summary.md").read_text()
