"""llama.cpp loaded for the bench and the oracle: its weight repacking probed in a child, turned off only where it crashes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lljx.bench import llamacpp_load
from lljx.bench.cache import read_json
from lljx.models.embedded import embedded_gguf_path

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[test]')")


def test_without_repacking_turns_extra_buffer_types_off_then_restores_the_default():
    from lljx.bench.llamacpp_child import without_repacking

    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts
    with without_repacking():
        assert not llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts


@pytest.mark.parametrize("mode", [[], ["no-repack"]])
def test_child_prints_the_first_greedy_token_with_and_without_repacking(mode):
    run = subprocess.run(
        [sys.executable, str(llamacpp_load.CHILD), str(embedded_gguf_path()), "2", "64", json.dumps([1, 2, 3, 4]), *mode],
        capture_output=True, text=True, timeout=300,
    )
    if mode == [] and not llamacpp_load.repacking_runs(embedded_gguf_path()):
        assert run.returncode != 0  # the probe's verdict: repacking crashes llama.cpp on this CPU
        return
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[0]) >= 0


def test_llama_evaluates_a_quantized_file_and_caches_the_probe(tmp_path, monkeypatch):
    path = embedded_gguf_path()  # before the cache moves: the embedded model lives there
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    llm = llamacpp_load.Llama(path, n_ctx=64, n_threads=2, verbose=False)
    llm.eval(list(range(1, 17)))  # a prompt batch: where the repacked kernels would run
    assert llm.n_tokens == 16
    verdicts = read_json(tmp_path / "lljx" / llamacpp_load.PROBES)
    if llamacpp_load.cpu_has_amx():
        assert verdicts == {llamacpp_load.probe_key(path): llamacpp_load.probe(path)}
    else:
        assert verdicts is None  # nothing to probe without AMX
