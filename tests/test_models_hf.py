"""HF safetensors folders: the fixture's twin loads to the GGUF's params and logits, and both match llama.cpp."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from fixtures.random_llama import (
    TINY,
    Dims,
    hf_config,
    random_weights,
    small_vocab,
    write_gguf,
    write_hf,
)
from lljx.core import kv_cache, transformer
from lljx.core.rope import inverse_frequencies
from lljx.models import ModelFileError, load_model
from lljx.models.vocab import TokenizerFile
from safetensors.numpy import save_file

PROMPT = [1, 300, 45, 400, 17, 99, 5, 260, 33, 34, 0, 2]


def leaves(params) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def assert_same_params(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def logits(model, ids=PROMPT) -> np.ndarray:
    cache = kv_cache.create(model.config, 1, 64)
    return np.asarray(transformer.all_logits(model.config, model.params, jnp.asarray([ids]), cache)[0])


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_hf_twin_loads_the_same_params_as_the_gguf(random_llama, dtype):
    gguf_path, hf_dir = random_llama
    g, h = load_model(str(gguf_path), dtype=dtype), load_model(str(hf_dir), dtype=dtype)
    assert_same_params(g.params, h.params)
    assert h.params.embed is None and h.params.head.shape == (TINY.d_model, TINY.vocab_size)
    # The GGUF carries explicit divisors, config.json the Llama 3 rule: the same frequencies either way.
    assert h.config.rope_scaling is not None and h.config.rope_freq_factors is None
    assert dataclasses.replace(g.config, rope_freq_factors=None) == dataclasses.replace(h.config, rope_scaling=None)
    np.testing.assert_allclose(inverse_frequencies(g.config), inverse_frequencies(h.config), rtol=1e-6)


def test_twins_match_llama_cpp_logits(random_llama):
    pytest.importorskip("llama_cpp")
    gguf_path, hf_dir = random_llama
    # f32 KV cache (type 0): llama.cpp's default f16 cache would add ~1e-2 of its own error.
    from lljx.bench.llamacpp_load import Llama

    llm = Llama(
        gguf_path, n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0, n_threads=2
    )
    llm.eval(PROMPT)
    expected = np.array(llm.scores[: len(PROMPT)], dtype=np.float32)
    assert np.abs(expected).max() > 1.0  # random weights, but not degenerate
    for path in (gguf_path, hf_dir):
        np.testing.assert_allclose(logits(load_model(str(path), dtype="f32")), expected, atol=2e-4, rtol=1e-4)


def test_hf_model_fields(random_llama):
    _, hf_dir = random_llama
    m = load_model(str(hf_dir), dtype="f32")
    assert (m.format, m.origin, m.name, m.quantization) == ("hf", "folder", "random-llama-hf", "F32")
    assert (m.bos_token, m.eos_token, m.stop_token_ids) == ("<|im_start|>", "<|im_end|>", (2, 0))
    assert m.chat_template == small_vocab()["chat_template"]
    assert m.tokenizer_spec == TokenizerFile(str(hf_dir / "tokenizer.json"), "<|im_start|>", "<|im_end|>", False)
    assert m.metadata == json.loads((hf_dir / "config.json").read_text())
    assert m.file_size == (hf_dir / "model.safetensors").stat().st_size


def test_both_tokenizers_match_llama_cpp(random_llama):
    pytest.importorskip("lljx.tokenizer")
    llama_cpp = pytest.importorskip("llama_cpp")
    gguf_path, hf_dir = random_llama
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=64, verbose=False, vocab_only=True)
    text = "Hello world 123, the sky is blue!\n\tit's  here"
    expected = llm.tokenize(text.encode(), add_bos=False, special=False)
    for path in (gguf_path, hf_dir):
        assert load_model(str(path)).tokenizer.encode(text) == expected


def variant(
    tmp_path: Path, random_llama, *, config: dict | None = None, weights: dict | None = None, name: str = "variant"
) -> Path:
    """A copy of the fixture folder with config.json keys changed and/or other weights."""
    folder = tmp_path / name
    shutil.copytree(random_llama[1], folder)
    if config is not None:
        cfg = json.loads((folder / "config.json").read_text()) | config
        (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    if weights is not None:
        (folder / "model.safetensors").unlink()
        save_file(weights, str(folder / "model.safetensors"))
    return folder


def test_sharded_bf16_folder(tmp_path, random_llama):
    weights = {k: v.astype(ml_dtypes.bfloat16) for k, v in random_weights(TINY).items()}
    folder = variant(tmp_path, random_llama, config={"torch_dtype": "bfloat16"})
    (folder / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    m = load_model(str(folder), dtype="f32")
    assert m.quantization == "BF16"
    reference = load_model(str(random_llama[1]), dtype="f32")
    for got, want in zip(leaves(m.params), leaves(reference.params), strict=True):
        np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert m.file_size == sum((folder / s).stat().st_size for s in shards)


def test_untied_twins_keep_embed_and_head(tmp_path):
    dims = Dims(tied=False)
    weights, vocab = random_weights(dims, seed=3), small_vocab()
    g = load_model(str(write_gguf(tmp_path / "untied.gguf", weights, vocab, dims)))
    h = load_model(str(write_hf(tmp_path / "untied-hf", weights, vocab, dims)))
    assert_same_params(g.params, h.params)
    assert not h.config.tie_embeddings
    np.testing.assert_array_equal(h.params.embed, weights["model.embed_tokens.weight"])
    np.testing.assert_array_equal(h.params.head, weights["lm_head.weight"].T)


def test_generation_config_eos_list_and_template_file(tmp_path, random_llama):
    folder = variant(tmp_path, random_llama)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7, 5]}))
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    m = load_model(str(folder))
    assert m.stop_token_ids == (2, 7, 5, 0) and m.chat_template == "{{ messages }}"


def test_named_template_list_and_dict_tokens(tmp_path, random_llama):
    folder = variant(tmp_path, random_llama)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    cfg["eos_token"] = {"content": "<|endoftext|>", "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    m = load_model(str(folder))
    assert (m.chat_template, m.eos_token, m.stop_token_ids) == ("D", "<|endoftext|>", (0, 2))


def test_linear_rope_scaling_becomes_uniform_factors(tmp_path, random_llama):
    m = load_model(
        str(variant(tmp_path, random_llama, config={"rope_scaling": {"rope_type": "linear", "factor": 4.0}}))
    )
    assert m.config.rope_freq_factors == (4.0,) * (TINY.d_head // 2) and m.config.rope_scaling is None


def expect_error(folder: Path, *fragments: str) -> str:
    with pytest.raises(ModelFileError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert str(folder) in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(
    "change, fragment",
    [
        (
            {"architectures": ["MistralForCausalLM"], "model_type": "mistral"},
            "architecture ['MistralForCausalLM'] is not supported",
        ),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling type 'yarn' is not supported"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "incomplete llama3 rope_scaling"),
        ({"attention_bias": True}, "biases are not supported"),
        ({"hidden_size": "64"}, "'hidden_size' should be int"),
        ({"num_key_value_heads": 3}, "is not a multiple of n_kv_heads"),
        ({"num_key_value_heads": 0}, "'num_key_value_heads' = 0 is out of range"),
        ({"intermediate_size": 96}, "has shape [128, 64], expected [96, 64]"),
        ({"vocab_size": None}, "missing 'vocab_size'"),
    ],
)
def test_bad_config(tmp_path, random_llama, change, fragment):
    expect_error(
        variant(tmp_path, random_llama, config=change),
        "config.json" if "shape" not in fragment else "model.safetensors",
        fragment,
    )


def test_broken_files(tmp_path, random_llama):
    folder = variant(tmp_path, random_llama, name="json")
    (folder / "config.json").write_text("{not json")
    expect_error(folder, "config.json", "not valid JSON")

    folder = variant(tmp_path, random_llama, name="tok")
    (folder / "tokenizer.json").unlink()
    expect_error(folder, "tokenizer.json: missing")

    folder = variant(tmp_path, random_llama, name="garbage")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    expect_error(folder, "not a readable safetensors file")

    weights = random_weights(TINY)
    del weights["model.layers.1.mlp.up_proj.weight"]
    expect_error(
        variant(tmp_path, random_llama, weights=weights, name="missing"),
        "missing tensor 'model.layers.1.mlp.up_proj.weight'",
    )

    weights = random_weights(TINY) | {"model.norm.weight": np.ones(TINY.d_model, np.int8)}
    expect_error(variant(tmp_path, random_llama, weights=weights, name="int8"), "unsupported dtype I8")

    folder = variant(tmp_path, random_llama, name="index")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.safetensors"}}))
    expect_error(folder, "shard '../elsewhere.safetensors' is missing")


def test_folder_without_weights_or_config(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", "no config.json")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(hf_config(small_vocab())))
    expect_error(tmp_path / "noweights", "no *.safetensors")
