"""`lljx serve` end to end: a real server on loopback driven by the official `ollama` client and raw httpx.

One server runs for the whole module (the embedded model at f32, one slot: requests queue as
they did before batching; tests/test_server_batching.py serves several at once).
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest

from serve_process import Server, start_server, stop_server

pytestmark = pytest.mark.slow

MODEL = "smollm2"
GREEDY = {"temperature": 0, "num_predict": 16}
PROMPTS = [  # chat prompts of 33-64 tokens with the template
    "Why is the sky blue?",
    "List three fruits and their colors.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a prime number is.",
    "Name two planets in the solar system.",
    "How do birds fly?",
    "Give me a synonym for happy.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve"), "--port", "0", "--parallel", "1")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def first_two(server: Server) -> tuple[ollama.GenerateResponse, ollama.GenerateResponse]:
    """The very first request (loads the model and compiles) and the same request again."""
    with server.client() as client:
        return tuple(client.generate(model=MODEL, prompt=PROMPTS[0], options=GREEDY) for _ in range(2))


def test_root_version_and_tags(server):
    assert httpx.get(server.url).text == "Ollama is running"
    assert httpx.get(f"{server.url}/api/version").json()["version"]
    with server.client() as client:
        models = client.list().models
    names = [m.model for m in models]
    assert "smollm2-135m-instruct" in names
    entry = models[names.index("smollm2-135m-instruct")]
    assert entry.size > 0 and len(entry.digest) == 64 and entry.modified_at is not None
    assert entry.details.family == "llama" and entry.details.parameter_size == "135M"
    assert entry.details.quantization_level == "Q4_1" and entry.details.format == "gguf"


def test_show_reads_details_and_model_info_from_the_gguf(server):
    with server.client() as client:
        shown = client.show(MODEL)
        assert shown.details.family == "llama"
        assert shown.modelinfo["llama.context_length"] == 8192
        assert shown.modelinfo["llama.block_count"] == 30
        assert shown.modelinfo["general.parameter_count"] > 100_000_000
        assert shown.modelinfo["tokenizer.ggml.tokens"] is None  # only with verbose, as Ollama does
        assert "<|im_start|>" in shown.template and "completion" in shown.capabilities
        assert client.show(MODEL + ":latest").details.family == "llama"
        with pytest.raises(ollama.ResponseError) as missing:
            client.show("no-such-model")
    assert missing.value.status_code == 404
    verbose = httpx.post(f"{server.url}/api/show", json={"model": MODEL, "verbose": True}, timeout=60).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 49152


def test_load_is_slow_once_then_fast(first_two):
    first, second = first_two
    assert first.response == second.response and first.response
    assert first.load_duration > 0.5e9  # loading weights (and compiling)
    assert second.load_duration < 0.05e9  # already loaded and compiled
    assert second.load_duration * 20 < first.load_duration


def test_generate_reports_ollama_metrics(first_two):
    _, reply = first_two
    assert reply.done and reply.done_reason == "length" and reply.eval_count == GREEDY["num_predict"]
    assert reply.prompt_eval_count == 36 and reply.prompt_eval_duration > 0 and reply.eval_duration > 0
    assert reply.total_duration >= reply.prompt_eval_duration + reply.eval_duration
    assert 1 < reply.eval_count / reply.eval_duration * 1e9 < 10_000  # a plausible tokens per second
    assert reply.context is not None and len(reply.context) == reply.prompt_eval_count + reply.eval_count
    assert reply.created_at.endswith("Z") and reply.model == MODEL


def test_streamed_text_equals_non_streamed_at_temperature_0(server, first_two):
    with server.client() as client:
        parts = list(client.generate(model=MODEL, prompt=PROMPTS[0], options=GREEDY, stream=True))
        chat_parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": PROMPTS[1]}], options=GREEDY, stream=True))
        chat_whole = client.chat(model=MODEL, messages=[{"role": "user", "content": PROMPTS[1]}], options=GREEDY)
    assert "".join(p.response for p in parts) == first_two[0].response
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].response == ""
    assert parts[-1].eval_count == GREEDY["num_predict"] and parts[-1].done_reason == "length"
    assert "".join(p.message.content for p in chat_parts) == chat_whole.message.content
    assert chat_whole.message.role == "assistant" and chat_whole.eval_count and chat_whole.eval_duration
    assert chat_parts[-1].done and chat_parts[-1].message.content == ""


def test_chat_with_history_system_and_raw_generate(server):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    raw = ("The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. "
           "Once upon a time, in a small village by the sea, there lived an old fisherman who")
    system = "You are a pirate. Answer every question in one short sentence, the way a pirate would."
    with server.client() as client:
        chat = client.chat(model=MODEL, messages=messages, options=GREEDY)
        plain = client.generate(model=MODEL, prompt=raw, raw=True, options=GREEDY)
        pirate = client.generate(model=MODEL, prompt="Name a color.", system=system, options=GREEDY)
    assert chat.prompt_eval_count == 44 and chat.message.content
    assert plain.prompt_eval_count == 39 and plain.response
    assert pirate.prompt_eval_count > 32 and pirate.response


def test_stop_strings_and_num_ctx(server):
    with server.client() as client:
        whole = client.generate(model=MODEL, prompt=PROMPTS[2], options={"temperature": 0, "num_predict": 24})
        word = whole.response.split()[2]
        cut = client.generate(model=MODEL, prompt=PROMPTS[2], options={"temperature": 0, "num_predict": 24, "stop": [word]})
        with pytest.raises(ollama.ResponseError) as small:
            client.generate(model=MODEL, prompt=PROMPTS[2], options={"num_ctx": 8, "num_predict": 4})
    assert cut.done_reason == "stop" and word not in cut.response and whole.response.startswith(cut.response)
    assert small.value.status_code == 400 and "num_ctx" in small.value.error


def test_sampling_options_are_honoured_and_seeded(server):
    options = {"temperature": 1.2, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 11, "num_predict": 12}
    with server.client() as client:
        first = client.generate(model=MODEL, prompt=PROMPTS[3], options=options)
        again = client.generate(model=MODEL, prompt=PROMPTS[3], options=options)
        other = [client.generate(model=MODEL, prompt=PROMPTS[3], options={**options, "seed": s}).response for s in (12, 13)]
    assert first.response == again.response and first.response
    assert any(text != first.response for text in other)


def test_ps_lists_the_loaded_model(server, first_two):
    with server.client() as client:
        loaded = client.ps().models
    assert [m.model for m in loaded] == ["smollm2-135m-instruct"]
    assert loaded[0].size > 100_000_000 and loaded[0].context_length == 8192 and loaded[0].details.family == "llama"


def test_eight_concurrent_clients_get_what_they_would_get_alone(server, first_two):
    def ask(i: int) -> str:
        with server.client() as client:
            if i % 2:
                return client.chat(model=MODEL, messages=[{"role": "user", "content": PROMPTS[i]}], options=GREEDY).message.content
            return "".join(p.response for p in client.generate(model=MODEL, prompt=PROMPTS[i], options=GREEDY, stream=True))

    alone = [ask(i) for i in range(8)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8), timeout=600))
    assert together == alone
    assert time.monotonic() - started < 300


def wait_for_log(server: Server, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and text not in server.log_text():
        time.sleep(0.1)
    return server.log_text()


def test_a_client_that_disconnects_stops_its_generation(server, first_two):
    body = {"model": MODEL, "prompt": "Count from 1 to 300, separated by commas.",
            "options": {"temperature": 0, "num_predict": 200}}
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{server.url}/api/generate", json=body) as reply:
        assert reply.headers["content-type"] == "application/x-ndjson"
        lines = reply.iter_lines()
        assert [json.loads(next(lines))["done"] for _ in range(3)] == [False] * 3
        # A second client queues behind the first and leaves before its turn.
        with httpx.Client(timeout=1) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post(f"{server.url}/api/generate", json=body)
    log = wait_for_log(server, "stopped (client disconnected)")
    stopped = re.findall(r"generation stopped \(client disconnected\) after (\d+) tokens", log)
    assert stopped and int(stopped[-1]) < 200
    # The queued one never ran: it leaves the queue with no token generated.
    assert re.search(r"generation stopped \(client disconnected\) after 0 tokens", log)
    with server.client() as client:  # the worker is free again
        assert client.generate(model=MODEL, prompt=PROMPTS[0], options=GREEDY).response == first_two[0].response


def post(server: Server, path: str, content: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=120)


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [
    ("/api/generate", b'{"model": "smollm2", "prompt": ', 400, "invalid JSON"),
    ("/api/chat", b"[1, 2]", 400, "JSON object"),
    ("/api/generate", b'{"prompt": "hi"}', 400, "model is required"),
    ("/api/chat", b'{"model": "smollm2", "messages": [{"content": "hi"}]}', 400, "messages[0].role"),
    ("/api/generate", b'{"model": "smollm2", "prompt": "hi", "options": {"temperature": "hot"}}', 400, "temperature"),
    ("/api/generate", b'{"model": "smollm2", "prompt": "hi", "options": {"top_p": 7}}', 400, "top_p"),
    ("/api/generate", b'{"model": "smollm2", "prompt": 3}', 400, "prompt"),
    ("/api/generate", b'{"model": "smollm2", "prompt": "hi", "format": "yaml"}', 400, "format"),
    ("/api/generate", b'{"model": "no-such-model", "prompt": "hi"}', 404, "not found"),
    ("/api/chat", b'{"model": "/etc/passwd", "messages": [{"role": "user", "content": "hi"}]}', 404, "not found"),
    ("/api/show", b'{"model": "no-such-model"}', 404, "not found"),
    ("/api/nothing", b"{}", 404, "Not Found"),
])
def test_bad_requests_get_json_errors(server, path, body, status, fragment):
    reply = post(server, path, body, **{"content-type": "application/json"})
    assert reply.status_code == status
    assert fragment in reply.json()["error"]


def test_bad_requests_through_the_official_client(server):
    with server.client() as client:
        with pytest.raises(ollama.ResponseError) as unknown:
            client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(ollama.ResponseError) as bad_option:
            client.generate(model=MODEL, prompt="hi", options={"num_predict": -7})
    assert unknown.value.status_code == 404 and "no-such-model" in unknown.value.error
    assert bad_option.value.status_code == 400 and "num_predict" in bad_option.value.error


def test_oversized_body_is_413_and_wrong_method_405(server):
    huge = json.dumps({"model": MODEL, "prompt": "x" * (9 * 1024 * 1024)})
    reply = post(server, "/api/generate", huge, **{"content-type": "application/json"})
    assert reply.status_code == 413 and "too large" in reply.json()["error"]
    wrong = httpx.get(f"{server.url}/api/generate", timeout=30)
    assert wrong.status_code == 405 and wrong.json()["error"]
    assert httpx.get(server.url, timeout=30).status_code == 200  # still serving


def test_empty_prompt_loads_and_keep_alive_0_unloads(server, first_two):
    with server.client() as client:
        loaded = client.generate(model=MODEL, prompt="")
        assert loaded.done and loaded.done_reason == "load"
        gone = client.generate(model=MODEL, prompt="", keep_alive=0)
        assert gone.done_reason == "unload" and client.ps().models == []
        again = client.generate(model=MODEL, prompt=PROMPTS[0], options=GREEDY)
    assert again.response == first_two[0].response and again.load_duration > 0.3e9


def test_serve_refuses_a_busy_port_in_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "lljx.cli", "serve", "--port", str(port)], capture_output=True, text=True, timeout=120,
        )
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [f"lljx: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_sigterm_mid_stream_and_ctrl_c_shut_down_cleanly(tmp_path):
    running = start_server(tmp_path)
    body = {"model": MODEL, "prompt": "Count from 1 to 300, separated by commas.", "options": {"temperature": 0, "num_predict": 200}}
    received: list[str] = []

    def read() -> None:
        with httpx.Client(timeout=300) as http, http.stream("POST", f"{running.url}/api/generate", json=body) as reply:
            for line in reply.iter_lines():
                received.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 240
    while len(received) < 3 and time.monotonic() < deadline and reader.is_alive():
        time.sleep(0.05)
    assert len(received) >= 3
    stopped_at = time.monotonic()
    assert stop_server(running, signal.SIGTERM) == 0
    reader.join(60)
    assert time.monotonic() - stopped_at < 30
    assert not json.loads(received[-1]).get("done")  # cut short, not finished
    assert "lljx: stopped" in running.log_text() and "Traceback" not in running.log_text()

    (tmp_path / "idle").mkdir()
    idle = start_server(tmp_path / "idle", "--strategy", "jit-layer", OLLAMA_HOST="http://127.0.0.1:0")
    assert "strategy jit-layer" in idle.log_text()
    assert stop_server(idle, signal.SIGINT) == 0
    assert "Traceback" not in idle.log_text()


def test_serve_runs_with_its_malloc_tunables(server):
    """The server re-executes itself once with glibc's tunables (see lljx.server.malloc_tunables),
    keeping its pid, so `stop_server` and signals still reach it."""
    from lljx.server import malloc_tunables

    try:
        mode: str | None = Path(malloc_tunables.THP_MODE).read_text()
    except OSError:
        mode = None
    tunables = malloc_tunables.wanted(os.environ, mode, platform.libc_ver()[0])
    if not tunables:
        pytest.skip(f"the tunables would change nothing here (libc {platform.libc_ver()[0]!r}, "
                    f"GLIBC_TUNABLES {os.environ.get('GLIBC_TUNABLES')!r})")
    # glibc may split the variable in place where it parsed it (2.36 puts NULs for the colons).
    raw = Path(f"/proc/{server.process.pid}/environ").read_bytes().decode(errors="replace")
    items = set(raw.replace("GLIBC_TUNABLES=", "\0").replace(":", "\0").split("\0"))
    assert {f"{name}={value}" for name, value in tunables.items()} <= items


def test_malloc_tunables_respect_what_is_set():
    from lljx.server.malloc_tunables import HUGE_PAGES, KEEP_FREED, wanted, with_tunables

    madvise = "always [madvise] never\n"
    assert wanted({}, madvise, "glibc") == {**KEEP_FREED, **HUGE_PAGES}
    assert wanted({}, "[always] madvise never\n", "glibc") == KEEP_FREED  # already huge
    assert wanted({}, "always madvise [never]\n", "glibc") == KEEP_FREED
    assert wanted({}, None, "glibc") == KEEP_FREED
    assert wanted({}, madvise, "") == {}  # musl and others read no GLIBC_TUNABLES
    # The user's own choices stay; after the re-execution nothing is left to add.
    mine = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"}
    assert wanted(mine, madvise, "glibc") == KEEP_FREED
    assert wanted(with_tunables(mine, KEEP_FREED), madvise, "glibc") == {}
    assert with_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"}, {"glibc.malloc.hugetlb": "1"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "b",
    }
    assert with_tunables({}, HUGE_PAGES)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
