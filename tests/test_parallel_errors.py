"""Meshes and runs of several processes that cannot work: each ends in one line and a non-zero exit, within a timeout."""

from __future__ import annotations

import subprocess
import time

import pytest

from mesh_runs import forced_devices, free_port, lljx, one_device, processes

pytestmark = pytest.mark.slow

TIMEOUT = 120  # seconds; a run that has not ended by then hangs, which is the failure these tests look for


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lljx(*args), capture_output=True, text=True, timeout=TIMEOUT,
                          env={**env, "LLJX_COMPILE_CACHE": "0"})


def one_line_error(code: int, out: str, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and out == "", (code, out)
    assert len(lines) == 1 and lines[0].startswith("lljx: error: "), err[-3000:]
    return lines[0]


@pytest.mark.parametrize("command", [
    ["generate", "hi"],
    ["bench", "--prompts", "1", "-n", "2"],
    ["profile", "--prompts", "1", "-n", "2"],
    ["serve", "--port", "0"],
])
def test_more_devices_than_there_are(command):
    result = run(*command, "--tensor-parallel", "2", env=one_device())
    line = one_line_error(result.returncode, result.stdout, result.stderr)
    assert "--tensor-parallel 2 needs 2 devices; this run sees 1 cpu device" in line
    assert "--xla_force_host_platform_device_count=2" in line  # how to get them on CPU


@pytest.mark.parametrize("command", [["generate", "hi"], ["serve", "--port", "0"], ["bench", "--prompts", "1"]])
@pytest.mark.parametrize("strategy", ["native-token", "native-loop"])
def test_native_strategies_refuse_a_mesh_before_loading_or_listening(command, strategy):
    result = run(*command, "-tp", "2", "-s", strategy, env=forced_devices(2))
    line = one_line_error(result.returncode, result.stdout, result.stderr)
    assert f"strategy '{strategy}' multiplies with lljx's CPU kernels, which run on one device" in line


def test_cold_starts_take_no_mesh():
    result = run("bench", "--cold", "-tp", "2", env=forced_devices(2))
    line = one_line_error(result.returncode, result.stdout, result.stderr)
    assert "--cold measures fresh one-device processes; it takes no --tensor-parallel or processes" in line


@pytest.mark.parametrize(("args", "message"), [
    (["-tp", "0"], "Invalid value for --tensor-parallel: must be at least 1, got 0"),
    (["--coordinator", "127.0.0.1:1234"], "several processes need --coordinator HOST:PORT, --num-processes N and --process-id I"),
    (["--coordinator", "nowhere", "--num-processes", "2", "--process-id", "0"], "--coordinator must be HOST:PORT, got 'nowhere'"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1 for 2 processes, got 2"),
    (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "--num-processes must be at least 1, got 0"),
    (["--distributed", "--peer-timeout", "0"], "--peer-timeout must be at least 1 second, got 0"),
    (["--distributed", "--join-timeout", "0"], "--join-timeout must be at least 1 second, got 0"),
    (["--distributed"], "--distributed found no cluster in the environment that jax.distributed detects"),
])
def test_options_that_do_not_make_a_run(args, message):
    result = run("generate", *args, "hi", env=one_device())
    assert message in one_line_error(result.returncode, result.stdout, result.stderr)


def finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    """Each process's exit code, stdout and stderr; all are killed if any outlives `timeout`."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("process_id", [0, 1])
def test_a_process_whose_peers_never_come_gives_up_after_the_join_timeout(process_id):
    args = ["generate", "hi", "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2",
            "--process-id", str(process_id), "--join-timeout", "3"]
    start = time.monotonic()
    result = run(*args, env=one_device())
    assert time.monotonic() - start < 60
    line = one_line_error(result.returncode, result.stdout, result.stderr)
    assert f"process {process_id} of 2 could not join the run: not every process reached the coordinator" in line


def test_processes_given_different_commands_refuse_to_run():
    port = free_port()
    procs = [
        subprocess.Popen(lljx("generate", "-n", str(n), "hi", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                              "--process-id", str(i)),
                         env={**one_device(), "LLJX_COMPILE_CACHE": "0"}, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i, n in [(0, 4), (1, 5)]
    ]
    (code0, out0, err0), (code1, out1, err1) = finish(procs, TIMEOUT)
    assert "process 0 of 2 was given a different command from process 1 (max_tokens 4 here, 5 there)" in \
        one_line_error(code0, out0, err0)
    assert "process 1 of 2 was given a different command from process 0 (max_tokens 5 here, 4 there)" in \
        one_line_error(code1, out1, err1)


def test_two_processes_of_one_device_cannot_hold_four():
    procs = processes(["generate", "-tp", "4", "hi"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for code, out, err in finish(procs, TIMEOUT):
        line = one_line_error(code, out, err)
        assert "--tensor-parallel 4 needs 4 devices; this run sees 2 cpu devices (1 in the process with fewest" in line
