"""lljx bench on a synthetic model beside llama.cpp: made on first use, the files and machine named, the roofline a bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest



def has_file_format_kernels() -> bool:
    from lljx import _native

    return hasattr(_native, "block_kernel_types")


def test_llamacpp_runs_the_file_as_it_is_unless_a_dtype_asks_for_another_type():
    from lljx.bench.peers import peer_ftype

    assert peer_ftype("auto", "Q4_K_M") is None and peer_ftype("auto", "F16") is None
    assert peer_ftype("f16", "F16") is None and peer_ftype("bf16", "F16") is None  # the same weights again
    assert peer_ftype("int8", "F16") == "Q8_0" and peer_ftype("f32", "Q4_K_M") == "F32"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32", "auto"])
def test_bench_on_a_synthetic_shape_with_llamacpp(tmp_path, dtype):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[peers]')")
    if dtype == "auto" and not has_file_format_kernels():
        pytest.skip("this build of lljx has no kernels for weights in their file's format (dtype auto)")
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "lljx.cli", "bench", "--model", "synthetic:llama-tiny", "--peer", "llama.cpp",
         "-s", "native-token", "--dtype", dtype, "--prompts", "2", "--max-tokens", "16", "--out", str(out),
         "--format", "json"],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},  # nothing made or measured before
    )
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert [s["system"] for s in printed["systems"]] == ["native-token", "llama.cpp"]
    for s in printed["systems"]:
        assert s["gen_tokens_mean"] == 16  # random weights never end a turn: every run decodes its budget
        assert 0 < s["roofline_share"] <= 1.0 or printed["roofline"]["above"] == [s["system"]]
    bound = printed["roofline"]
    assert bound["level"] in ("L2", "L3", "DRAM") and bound["measured_bytes"] >= bound["bytes_per_token"] * 0.99
    table = "F16" if dtype == "auto" else "F32"
    assert set(bound["formats"]) == ({"F16", "F32"} if dtype == "auto" else {"F32"})
    assert bound["formats"][table] > 60e6  # the 128256-row table
    notes = "\n".join(printed["notes"])
    document = json.loads((out / "runs.json").read_text())
    model_file = str(tmp_path / "cache" / "lljx" / "synthetic" / "llama-tiny.f16.v1.gguf")
    assert document["settings"]["files"]["native-token"] == model_file
    peer_file = document["settings"]["files"]["llama.cpp"]
    if dtype == "auto":
        assert peer_file == model_file  # llama.cpp runs the file as it is
    else:
        assert peer_file.endswith(".F32.gguf") and peer_file != model_file  # rewritten at F32 by llama.cpp
    assert f"llama.cpp read {peer_file}" in notes and "machine: " in notes and "L3 " in notes
    assert "random weights: its text is noise" in notes
    assert "random weights: its text is noise" in (out / "summary.md").read_text()
    assert json.loads((tmp_path / "cache" / "lljx" / "bandwidth.json").read_text())  # measured, then cached
