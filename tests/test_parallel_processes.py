"""Several lljx processes on loopback (jax.distributed, gloo): one device's text (from explicit coordinates
and from a Slurm environment), a server whose other process replays its calls, a process that dies ending
the others in one line, a mesh the processes cannot share."""

from __future__ import annotations

import random
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from lljx.generation import Generation, chat_prompt_ids
from lljx.models import load_model
from lljx.models.synthetic import NOISE_NOTE
from lljx.sampling import SamplerSettings
from lljx.strategies import registry
from lljx.structured import compile_schema
from mesh_runs import SCHEMA, lljx, one_device, processes

pytestmark = pytest.mark.slow

PROMPT = "Why is the sky blue?"
TOKENS = 24
PEER_TIMEOUT = 10  # seconds; every failure below must end well inside a minute


# The embedded model's heads (9 query / 3 KV, width 576) in two of its layers, with Llama 3's vocabulary: the
# runs that check text split as the embedded model does but compile two layers in each process, not thirty.
# The embedded model itself runs on two forced devices in `test_parallel_mesh`.
HEADS = "synthetic:smollm2-heads-2l"


def greedy_text(model_spec: str) -> Callable[..., str]:
    """One device's greedy text (jit-token, f32): what every run of several processes must print."""
    model = load_model(model_spec, dtype="f32")
    decoder = registry.build(registry.load("jit-token"), model, SamplerSettings(temperature=0))

    def text(prompt: str, tokens: int = TOKENS, schema: dict | None = None) -> str:
        grammar = None if schema is None else compile_schema(model, schema)
        return "".join(Generation(model, decoder, chat_prompt_ids(model, prompt), max_tokens=tokens,
                                  stop_token_ids=model.stop_token_ids, grammar=grammar))

    return text


@pytest.fixture(scope="module")
def heads_alone() -> Callable[..., str]:
    return greedy_text(HEADS)


def finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    """Each process's exit code, stdout and stderr; all are killed if any outlives `timeout`."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((proc.returncode, out or "", err or ""))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def one_line_error(stderr: str) -> str:
    # A synthetic model's notice that its text is noise comes before any error; nothing else may.
    lines = [line for line in stderr.splitlines() if line.strip() and not line.endswith(NOISE_NOTE)]
    assert len(lines) == 1 and lines[0].startswith("lljx: error: "), stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


# The default, a K-token device loop and a program per layer: each its own pattern of collective programs.
@pytest.mark.parametrize("strategy", ["jit-token", "fused-loop", "jit-layer"])
def test_two_processes_print_one_devices_text(heads_alone, strategy):
    procs = processes(["generate", "-m", HEADS, "-s", strategy, "--dtype", "f32", "--temperature", "0", "-n", str(TOKENS),
                       PROMPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    (code0, out0, err0), (code1, out1, err1) = finish(procs, 600)
    assert code0 == 0 and code1 == 0, err0 + err1
    assert out0 == heads_alone(PROMPT) + "\n"
    assert out1 == "" and err1 == ""  # only process 0 writes output
    assert "Gloo" not in out0 + err0  # gloo's connection notice never reaches the text


def first_output(proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait until `proc` has written something on stdout (its generation is under way)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    proc.stdout.read(1)


@pytest.mark.parametrize("victim", [1, 0])
def test_a_process_killed_mid_generation_ends_the_other_in_one_line(victim):
    procs = processes(["generate", "-m", HEADS, "--dtype", "f32", "--temperature", "0", "-n", "2000", "Tell a very long story."],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    survivor = procs[1 - victim]
    try:
        first_output(procs[0], 300)
        procs[victim].kill()
        start = time.monotonic()
        (code, _, err), = finish([survivor], 90)
    finally:
        finish(procs, 5)
    assert code != 0 and time.monotonic() - start < 60
    line = one_line_error(err)
    assert f"process {1 - victim} of 2" in line, line


def test_several_processes_refuse_a_mesh_they_cannot_share():
    procs = processes(["generate", "-tp", "3", "hi"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for code, out, err in finish(procs, 300):
        assert code != 0 and out == ""
        assert "--tensor-parallel 3 cannot be shared evenly by 2 processes" in one_line_error(err)


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, list[subprocess.Popen[str]], list[Path]]]:
    """`lljx serve` as two processes: process 0 listens, process 1 replays; logs in files."""
    logs = [tmp_path / "serve0.log", tmp_path / "serve1.log"]
    handles = [open(log, "w") for log in logs]  # noqa: SIM115 - closed below
    procs = processes(["serve", "--model", HEADS, "--dtype", "f32", "--port", "0"], peer_timeout=PEER_TIMEOUT, stdouts=handles,
                      stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", logs[0].read_text())
            if found and httpx.get(found.group(1), timeout=5).status_code == 200:
                break
            assert all(p.poll() is None for p in procs), logs[0].read_text() + logs[1].read_text()
            time.sleep(0.3)
        else:
            pytest.fail("lljx serve did not start: " + logs[0].read_text())
        yield found.group(1), procs, logs
    finally:
        finish(procs, 5)
        for handle in handles:
            handle.close()


def test_serve_relays_every_call_to_the_other_process(served, heads_alone):
    url, procs, logs = served
    with ollama.Client(host=url, timeout=300) as client:
        options = {"temperature": 0, "num_predict": TOKENS}
        assert client.generate(model=HEADS, prompt=PROMPT, options=options).response == heads_alone(PROMPT)
        # A constrained reply runs the split step (forward, then a masked sample), relayed call by call.
        reply = client.generate(model=HEADS, prompt="Name a cat, in JSON.", format=SCHEMA, options=options).response
        assert reply == heads_alone("Name a cat, in JSON.", schema=SCHEMA)
        # A client that goes away mid-stream: process 0 stops dispatching, so process 1 has nothing more to replay.
        with httpx.stream("POST", f"{url}/api/generate", json={"model": HEADS, "prompt": "Tell a long story.",
                                                                "options": {"num_predict": 500}}, timeout=300) as stream:
            for _ in zip(range(3), stream.iter_lines()):
                pass
        assert client.generate(model=HEADS, prompt=PROMPT, options=options).response == heads_alone(PROMPT)
    procs[0].send_signal(signal.SIGTERM)
    results = finish(procs, 60)
    assert [code for code, _, _ in results] == [0, 0], logs[0].read_text() + logs[1].read_text()
    assert "error" not in logs[1].read_text()  # the other process left quietly with process 0


def test_serve_ends_in_one_line_when_its_other_process_dies(served):
    url, procs, logs = served
    procs[1].kill()
    start = time.monotonic()
    (code, _, _), = finish([procs[0]], 6 * PEER_TIMEOUT)
    assert code != 0 and time.monotonic() - start < 6 * PEER_TIMEOUT
    errors = [line for line in logs[0].read_text().splitlines() if "error" in line.lower()]
    assert errors == ["lljx: error: process 0 of 2 stopped: process 1 of this run stopped responding "
                      "(JAX's distributed service ended the run)"], logs[0].read_text()


def test_two_processes_print_one_devices_text_for_a_llama_1b_shape():
    # Random weights in two of Llama 3.2 1B's layers with its vocabulary, the f16 file's weights made f32: each
    # layer splits as the sixteen do, and three processes of the full model took minutes and 15 GB here.
    args = ["generate", "-m", "synthetic:llama-3.2-1b-2l", "-s", "jit-token", "--temperature", "0", "-n", "8", PROMPT]
    alone = subprocess.run(lljx(*args), capture_output=True, text=True, timeout=600,
                           env={**one_device(), "LLJX_COMPILE_CACHE": "0"})
    assert alone.returncode == 0 and alone.stdout.strip(), alone.stderr[-3000:]
    # Each process makes its f32 weights on a loaded 2-core CI machine: one missed 10 s of
    # heartbeats there with the full 1B shape (AMD EPYC Zen 3), so this run, which tests the text, allows a minute.
    procs = processes(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, peer_timeout=60)
    (code0, out0, err0), (code1, out1, err1) = finish(procs, 600)
    assert code0 == 0 and code1 == 0, err0 + err1
    assert out0 == alone.stdout and out1 == ""


def slurm_job_port() -> int:
    """A free port where jax.distributed's Slurm detection puts the coordinator (job id mod 4096 above 61439)."""
    for port in range(61440 + random.randrange(4096), 65536):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in the range Slurm's coordinator uses")


def test_distributed_takes_the_run_from_a_slurm_environment(heads_alone):
    # What srun sets for each of two tasks on one node; jax.distributed finds the coordinator and ranks there.
    port = slurm_job_port()
    procs = [
        subprocess.Popen(
            lljx("generate", "-m", HEADS, "--distributed", "--peer-timeout", str(PEER_TIMEOUT), "--dtype", "f32",
                 "--temperature", "0", "-n", str(TOKENS), PROMPT),
            env={**one_device(), "LLJX_COMPILE_CACHE": "0", "SLURM_JOB_ID": str(port - 61440),
                 "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    (code0, out0, err0), (code1, out1, err1) = finish(procs, 600)
    assert code0 == 0 and code1 == 0, err0 + err1
    assert out0 == heads_alone(PROMPT) + "\n" and out1 == ""
