"""Synthetic models: spec parsing, the shapes' numbers, the file's vocabulary and template, the cache, and llama.cpp on the same file."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lljx.models import ModelError, load_model, resolve, synthetic, synthetic_gguf
from lljx.models.gguf_file import read_gguf_header
from lljx.models.synthetic import SHAPES, SyntheticBuildError, SyntheticSpec, SyntheticSpecError, parse

TINY = SyntheticSpec("llama-tiny", "f16")
# Parameter counts of the Hugging Face models these shapes copy.
HF_PARAMS = {"llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824, "llama-3.1-8b": 8_030_261_248}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lljx's cache folder under a fresh XDG_CACHE_HOME, holding the tiny model at F16, made once per session."""
    cache = tmp_path_factory.mktemp("xdg") / "lljx"
    synthetic.ensure(TINY, cache=cache)
    return cache


def test_specs_parse_with_f16_by_default_and_any_case():
    assert parse("synthetic:llama-3.2-1b") == SyntheticSpec("llama-3.2-1b", "f16")
    assert parse(" Synthetic:LLAMA-3.1-8B:Q4_K_M ") == SyntheticSpec("llama-3.1-8b", "q4_k_m")
    assert parse("synthetic:llama-3.2-3b:q8_0").canonical == "synthetic:llama-3.2-3b:q8_0"
    assert synthetic.is_synthetic("synthetic:anything") and not synthetic.is_synthetic("llama3.2:3b")


def test_bad_shape_or_format_is_an_error_listing_the_valid_ones():
    with pytest.raises(SyntheticSpecError, match="unknown synthetic shape 'llama-9b'.*llama-3.2-1b, llama-3.2-3b"):
        parse("synthetic:llama-9b")
    with pytest.raises(SyntheticSpecError, match="unknown synthetic format 'q5_0'.*f16, bf16, q8_0, q4_k_m"):
        parse("synthetic:llama-tiny:q5_0")
    with pytest.raises(ModelError, match="expected one of"):
        resolve("synthetic:")


def test_shapes_have_the_hf_models_numbers_and_the_writer_plans_exactly_them():
    for name, count in HF_PARAMS.items():
        shape = SHAPES[name]
        assert shape.n_params == count
        plan = synthetic_gguf.tensors(shape)
        assert sum(t.rows * t.cols for t in plan if t.kind != "rope") == count
        assert ("output.weight" in {t.name for t in plan}) == (not shape.tied)
    assert SHAPES["llama-3.2-3b"].d_head * SHAPES["llama-3.2-3b"].n_heads == 3072
    assert SHAPES["llama-3.2-1b-2l"] == dataclasses.replace(SHAPES["llama-3.2-1b"], n_layers=2)
    # The embedded model's head layout, checked against the embedded file's own numbers.
    embedded = load_model(None, dtype="f32").config
    heads = SHAPES["smollm2-heads-2l"]
    assert (heads.d_model, heads.n_heads, heads.n_kv_heads, heads.d_head, heads.d_ffn, heads.n_layers) == (
        embedded.d_model, embedded.n_heads, embedded.n_kv_heads, embedded.d_head, embedded.d_ffn, 2)
    # K-quant rows for every shape users quantize (the heads shape is for F16 tests only).
    assert all(s.d_model % 256 == 0 and s.d_ffn % 256 == 0 for n, s in SHAPES.items() if n != "smollm2-heads-2l")


def test_the_file_carries_llama3s_metadata_and_loads_as_the_named_shape(tiny_cache):
    path = synthetic.cached_path(TINY, tiny_cache)
    gf = read_gguf_header(str(path))
    f = gf.fields
    assert (f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"]) == ("gpt2", "llama-bpe")
    assert len(f["tokenizer.ggml.tokens"]) == 128256 and len(f["tokenizer.ggml.merges"]) > 280_000
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.eot_token_id"]) == (
        128000, 128009, 128009)
    assert f["tokenizer.ggml.add_bos_token"] is True and "<|start_header_id|>" in f["tokenizer.chat_template"]
    assert f["tokenizer.ggml.tokens"][128008] == "<|eom_id|>" and f["tokenizer.ggml.token_type"][128008] == 3
    assert f["general.file_type"] == 1 and f["llama.context_length"] == 131072  # MOSTLY_F16
    assert {t.type_name for t in gf.tensors.values()} == {"F16", "F32"} and "rope_freqs.weight" in gf.tensors


def test_the_vocabulary_tokenizes_as_hf_tokenizers_does():
    tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is not installed (pip install '.[test]')")
    from lljx.models.vocab import GGUFVocab, build_tokenizer

    vocab = synthetic_gguf.llama3_vocab()
    ours = build_tokenizer(GGUFVocab("gpt2", "llama-bpe", vocab.tokens, vocab.merges, vocab.token_types,
                                     128000, 128009, True))
    hf = tokenizers.Tokenizer.from_file(str(synthetic_gguf.llama3_tokenizer_json()))
    for text in ["Why is the sky blue?", "  indented\n\ttabs 12345 ünïcödé 日本語 🙂", "don't we'll I'M", ""]:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_made_once_then_read_from_the_cache(tiny_cache, monkeypatch):
    path = synthetic.cached_path(TINY, tiny_cache)
    before = path.stat()

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cached file was written again")

    monkeypatch.setattr(synthetic, "build_f16", no_rebuild)
    assert synthetic.ensure(TINY, cache=tiny_cache) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert sorted(p.name for p in tiny_cache.glob("synthetic/*")) == [path.name, path.name + ".lock"]


def test_a_failed_write_leaves_no_file_and_a_killed_writers_partial_is_removed(tmp_path, monkeypatch):
    def full_disk(path: Path, *args: object, **kwargs: object) -> None:
        path.write_bytes(b"GGUF" + bytes(1000))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synthetic_gguf, "write_f16", full_disk)
    target = synthetic.cached_path(TINY, tmp_path)
    stale = target.with_name(target.name + ".12345.partial")
    stale.write_bytes(b"half a model")
    with pytest.raises(SyntheticBuildError, match="could not write .*No space left on device"):
        synthetic.ensure(TINY, cache=tmp_path)
    assert [p.name for p in target.parent.iterdir()] == [target.name + ".lock"]


def test_quantized_formats_need_llama_cpp(tiny_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(SyntheticBuildError, match=r"llama.cpp's quantizer.*pip install 'lljx\[peers\]'"):
        synthetic.ensure(SyntheticSpec("llama-tiny", "q4_k_m"), cache=tiny_cache)
    assert not synthetic.cached_path(SyntheticSpec("llama-tiny", "q4_k_m"), tiny_cache).exists()


def lljx(*args: str, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """The CLI with `cache` as lljx's cache folder."""
    return subprocess.run([sys.executable, "-m", "lljx.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache.parent)}, check=False)


def test_lljx_models_describes_a_shape_without_making_it(tmp_path):
    cache = tmp_path / "lljx"
    run = lljx("models", "--json", "synthetic:llama-3.1-8b:q4_k_m", "synthetic:nope", cache=cache)
    assert run.returncode == 0, run.stderr
    import json

    rows = {row["source"]: row for row in json.loads(run.stdout)}
    eight = rows["synthetic:llama-3.1-8b:q4_k_m"]
    assert eight["n_params"] == HF_PARAMS["llama-3.1-8b"] and eight["quantization"] == "Q4_K_M"
    assert eight["path"].endswith("(made on first use)") and eight["context_length"] == 131072
    assert "unknown synthetic shape 'nope'" in rows["synthetic:nope"]["error"]
    assert not list((cache / "synthetic").glob("*.gguf"))


@pytest.mark.slow
def test_generate_says_the_text_is_noise_and_bad_names_are_one_line_errors(tiny_cache):
    run = lljx("generate", "-n", "4", "--temperature", "0", "--dtype", "f32", "--model", "synthetic:llama-tiny",
               "Hi", cache=tiny_cache)
    assert run.returncode == 0, run.stderr
    assert "random weights: its text is noise" in run.stderr and run.stdout.endswith("\n")
    bad = lljx("generate", "--model", "synthetic:llama-3.2-2b", "Hi", cache=tiny_cache)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 1 and len(lines) == 1 and "expected one of llama-3.2-1b" in lines[0]
