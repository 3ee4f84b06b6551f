"""Tensor parallelism over forced host devices (fresh processes): the same greedy text as one device,
for every XLA strategy and plugin and for a Llama-3.2-1B-shaped model, with the KV cache and weights sharded;
bench and profile record the mesh."""

from __future__ import annotations

import json
import subprocess

import pytest

from lljx.strategies import registry
from mesh_runs import forced_devices, lljx, one_device, run_greedy

pytestmark = pytest.mark.slow

TOKENS = 24
# Every installed strategy that can run on a mesh: the XLA built-ins and plugins (scan-unroll).
STRATEGIES = sorted(
    info.name for info in registry.available()
    if info.error is None and info.name != "no-jit" and not registry.reads_file_formats(registry.load(info.name))
)


# The embedded model's heads (9 query / 3 KV, width 576) in two layers: every layer splits as the thirty do,
# unevenly (3 KV heads repeated to 6 or 12), and each strategy compiles two layers instead of thirty. The embedded
# model itself runs sharded below (test_generate_on_forced_devices_prints_one_devices_text) and in test_parallel_processes.
HEADS = "synthetic:smollm2-heads-2l"


@pytest.fixture(scope="module")
def one_device_run():
    # One strategy is enough here: on one device every strategy gives the same greedy tokens, and
    # every constrained reply is the same whichever strategy runs it (test_strategy_parity, test_structured*).
    return run_greedy(1, HEADS, TOKENS, ["jit-token"])


def test_every_xla_strategy_and_plugin_is_checked():
    assert {"jit-token", "jit-split", "jit-layer", "scan", "fused-loop"} <= set(STRATEGIES)


# Every strategy on two devices; on four, the default and the K-token device loop (a step per token, K
# tokens per call): the same split code with another factor, where each further strategy cost CI a compile.
ON_DEVICES = {2: STRATEGIES, 4: ["jit-token", "fused-loop"]}


@pytest.mark.parametrize("devices", [2, 4])
def test_greedy_text_equals_one_devices(one_device_run, devices):
    strategies = ON_DEVICES[devices]
    sharded = run_greedy(devices, HEADS, TOKENS, strategies)
    assert sharded["devices"] == devices
    expected = one_device_run["tokens"]["jit-token"]
    for name in strategies:
        assert sharded["tokens"][name] == expected, name
    for name, reply in sharded["constrained"].items():
        assert reply == one_device_run["constrained"]["jit-token"], name
    # 3 KV heads repeated to 6 (2 devices) or 12 (4), the cache split by KV head; the weights split too.
    kv_heads = {2: 6, 4: 12}[devices]
    for name in strategies:
        spec, shape = sharded["cache"][name]
        assert "'tp'" in spec and kv_heads in shape, (name, spec, shape)
        assert "'tp'" in sharded["weights"][name], name
    assert one_device_run["cache"]["jit-token"][0] == "one device"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lljx(*args), capture_output=True, text=True, timeout=600, env={**env, "LLJX_COMPILE_CACHE": "0"})


def test_generate_on_forced_devices_prints_one_devices_text():
    args = ("generate", "--dtype", "f32", "--temperature", "0", "-n", "16", "-s", "jit-token", "Why is the sky blue?")
    alone = run(*args, env=one_device())
    sharded = run(*args, "--tensor-parallel", "2", env=forced_devices(2))
    assert alone.returncode == 0 and sharded.returncode == 0, sharded.stderr
    assert sharded.stdout == alone.stdout and sharded.stdout.strip()


def test_default_strategy_on_a_mesh_is_jit_token():
    sharded = run("generate", "--temperature", "0", "-n", "4", "-tp", "2", "--stats", "Hi", env=forced_devices(2))
    assert sharded.returncode == 0, sharded.stderr


def test_bench_and_profile_record_the_mesh(tmp_path):
    bench = run("bench", "-tp", "2", "-s", "jit-token", "--prompts", "1", "-n", "8", "--out", str(tmp_path / "bench"),
                env=forced_devices(2))
    assert bench.returncode == 0, bench.stderr
    assert "mesh: the strategies ran sharded, tp=2 over 2 cpu devices in 1 process" in bench.stdout
    mesh = json.loads((tmp_path / "bench" / "runs.json").read_text())["settings"]["mesh"]
    assert mesh["tensor_parallel"] == 2 and mesh["kv_heads"] == 6 and mesh["heads"] == 12 and mesh["processes"] == 1
    profile = run("profile", "-tp", "2", "-s", "jit-token", "--prompts", "1", "-n", "8", "--out", str(tmp_path / "prof"),
                  env=forced_devices(2))
    assert profile.returncode == 0, profile.stderr
    assert "mesh: tp=2 over cpu devices" in profile.stdout
    meta = json.loads((tmp_path / "prof" / "jit-token.pyisession").read_text())["lljx"]
    assert meta["mesh"]["tensor_parallel"] == 2 and meta["mesh"]["kv_heads"] == 6


# Two of Llama 3.2 1B's layers: each splits as the sixteen do (32 query / 8 KV heads, FFN 8192), with its
# vocabulary, at an eighth of the weights; sixteen only multiplied the time (minutes of CI on 2 cores).
LLAMA_1B = "synthetic:llama-3.2-1b-2l"
LLAMA_1B_TOKENS = 8


@pytest.fixture(scope="module")
def llama_1b_alone():
    return run_greedy(1, LLAMA_1B, LLAMA_1B_TOKENS, ["jit-token"], dtype="auto", constrained=False)


# Two devices only at this scale: four (minutes of CI on a 2-core machine) split the same way,
# and test_greedy_text_equals_one_devices[4] checks four devices on the embedded model.
@pytest.mark.parametrize("devices", [2])
def test_llama_1b_shape_on_forced_devices_equals_one_device(llama_1b_alone, devices):
    # Random weights in Llama 3.2 1B's layer shapes (32 query / 8 KV heads, FFN 8192, vocabulary 128256), the
    # f16 file's weights made f32 on one device and on several.
    sharded = run_greedy(devices, LLAMA_1B, LLAMA_1B_TOKENS, ["jit-token"], dtype="auto", constrained=False)
    tokens = llama_1b_alone["tokens"]["jit-token"]
    assert sharded["tokens"]["jit-token"] == tokens and all(len(run) == LLAMA_1B_TOKENS for run in tokens)
    split, shape = sharded["cache"]["jit-token"]
    assert "'tp'" in split and shape[1] == 8, (split, shape)  # 8 KV heads split evenly
