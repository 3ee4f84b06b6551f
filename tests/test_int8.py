"""Weight-only int8 (`--dtype int8`): llama.cpp's Q8_0 blocks exactly, its loaders, its errors, and its tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures.random_llama import (
    QUANTIZABLE,
    TINY,
    Dims,
    Q,
    from_interleaved,
    random_weights,
    small_vocab,
    write_gguf,
    write_hf,
    write_quantized_llama,
)
from lljx.config import ModelConfig
from lljx.core import linear
from lljx.models import ModelFileError, load_model, quantize
from lljx.params import Q8_BLOCK, Int8Weight, LayerParams, Params

PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
GGUF_NAMES = {
    "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
    "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down",
}  # fmt: skip


def unpack_blocks(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 bytes [rows, blocks * 34] -> (int8 values [in, out], f32 scales [in / 32, out]), written out by hand."""
    rows = packed.shape[0]
    b = np.asarray(packed, dtype=np.uint8).reshape(rows, -1, 34)
    scales = b[:, :, :2].copy().view(np.float16).reshape(rows, -1).astype(np.float32)
    values = b[:, :, 2:].copy().view(np.int8).reshape(rows, -1)
    return values.T, scales.T


def reference_q8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gguf.quants' Q8_0 of float rows [out, in], as (values [in, out], scales [in / 32, out])."""
    return unpack_blocks(gguf.quants.quantize(np.asarray(rows, np.float32), Q.Q8_0))


def assert_int8_equal(w: Int8Weight, values: np.ndarray, scales: np.ndarray, what: str = "") -> None:
    assert isinstance(w, Int8Weight), what
    assert w.values.dtype == jnp.int8 and w.scales.dtype == jnp.float32, what
    np.testing.assert_array_equal(np.asarray(w.values), values, err_msg=what)
    np.testing.assert_array_equal(np.asarray(w.scales), scales, err_msg=what)


def layer_tensor(reader: gguf.GGUFReader, name: str, dims: Dims | ModelConfig, leaf: str) -> np.ndarray:
    """A layer projection's packed rows from gguf's own reader, Q/K rows put in rotate-half order."""
    data = np.asarray({t.name: t for t in reader.tensors}[name].data)
    if leaf == "wq":
        return from_interleaved(data, dims.n_heads)
    if leaf == "wk":
        return from_interleaved(data, dims.n_kv_heads)
    return data


# The contract


def test_int8_config_computes_in_f32_and_unknown_dtypes_list_every_choice():
    config = ModelConfig(
        vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_head=16, d_ffn=64,
        rope_theta=1e4, norm_eps=1e-5, context_length=128, tie_embeddings=True, dtype="int8",
    )  # fmt: skip
    assert config.jnp_dtype == jnp.float32
    with pytest.raises(ValueError, match="expected one of auto, f32, bf16, f16, int8"):
        config.with_dtype("int4")
    with pytest.raises(ValueError, match="expected one of auto, f32, bf16, f16, int8"):
        load_model(None, dtype="q8")


def random_int8(rng: np.random.Generator, n_in: int, n_out: int) -> Int8Weight:
    values = rng.integers(-127, 128, size=(n_in, n_out), dtype=np.int8)
    scales = rng.uniform(1e-3, 2e-2, size=(n_in // Q8_BLOCK, n_out)).astype(np.float16).astype(np.float32)
    return Int8Weight(jnp.asarray(values), jnp.asarray(scales))


def test_xla_projection_by_int8_blocks_is_x_times_the_dequantized_matrix():
    rng = np.random.default_rng(0)
    w = random_int8(rng, 96, 40)
    dense = np.asarray(w.values, np.float64) * np.repeat(np.asarray(w.scales, np.float64), Q8_BLOCK, axis=0)
    # dequantize is exact: one f32 product per weight, as ggml's dequantize_row_q8_0
    np.testing.assert_array_equal(np.asarray(linear.dequantize(w)), dense.astype(np.float32))
    x = rng.standard_normal((2, 3, 96)).astype(np.float32)
    want = x.astype(np.float64) @ dense
    bound = np.abs(x).astype(np.float64) @ np.abs(dense)  # the scale of f32 rounding in a dot product
    for got in (linear.xla_project(jnp.asarray(x), w), jax.jit(linear.project)(jnp.asarray(x), w)):
        assert got.dtype == jnp.float32 and got.shape == (2, 3, 40)
        assert np.all(np.abs(np.asarray(got, np.float64) - want) <= 96 * np.finfo(np.float32).eps * bound)
    half = linear.xla_project(jnp.asarray(x, jnp.bfloat16), w, jnp.float32)
    assert half.dtype == jnp.float32
    ids = jnp.asarray([[3, 0, 39]])
    np.testing.assert_array_equal(np.asarray(linear.take_columns(w, ids)), dense.T[np.asarray(ids)].astype(np.float32))


def test_quantize_rows_is_gguf_quants_and_zero_blocks_stay_zero():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((7, 128)).astype(np.float32) * rng.uniform(1e-4, 10, size=(7, 1)).astype(np.float32)
    rows[2, 32:64] = 0  # d == 0: scale and values 0
    rows[3, :32] = [0.5, -0.5, 1.5, -2.5] * 7 + [127, 0, 0, 0]  # d = 1: exact halves, rounded away from 0
    got = quantize.from_rows(rows)
    assert_int8_equal(got, *reference_q8(rows))
    assert not np.asarray(got.values)[32:64, 2].any() and not np.asarray(got.scales)[1, 2]
    assert list(np.asarray(got.values)[:4, 3]) == [1, -1, 2, -3] and np.asarray(got.scales)[0, 3] == 1


# Loading


QTYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K]


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_every_gguf_type_loads_as_its_dequantized_values_quantized_to_q8_0(tmp_path, monkeypatch, qtype):
    monkeypatch.setattr(quantize, "CHUNK_ELEMENTS", 3000)  # many chunks per tensor, the last one ragged
    path = write_quantized_llama(tmp_path / f"{qtype.name}.gguf", qtype)
    m, f32 = load_model(str(path), dtype="int8"), load_model(str(path), dtype="f32")
    assert m.config.dtype == "int8" and m.config.jnp_dtype == jnp.float32
    for i, (layer, ref) in enumerate(zip(m.params.layers, f32.params.layers, strict=True)):
        for leaf in LayerParams._fields:
            got, want = getattr(layer, leaf), np.asarray(getattr(ref, leaf))
            if leaf in PROJECTIONS:
                assert_int8_equal(got, *reference_q8(want.T), what=f"{i}.{leaf}")
            else:  # the norms stay f32
                np.testing.assert_array_equal(np.asarray(got), want)
    assert_int8_equal(m.params.head, *reference_q8(np.asarray(f32.params.head).T), what="head")
    # untied: the embedding table stays f32, as read
    assert m.params.embed.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(m.params.embed), np.asarray(f32.params.embed))


def test_a_q8_0_gguf_is_taken_verbatim(tmp_path, monkeypatch):
    path = write_quantized_llama(tmp_path / "q8.gguf", Q.Q8_0)
    reader = gguf.GGUFReader(path)

    def no_requantizing(rows):
        raise AssertionError("Q8_0 blocks were requantized")

    monkeypatch.setattr(quantize, "quantize_rows", no_requantizing)
    m = load_model(str(path), dtype="int8")
    for leaf in PROJECTIONS:
        packed = layer_tensor(reader, f"blk.0.{GGUF_NAMES[leaf]}.weight", QUANTIZABLE, leaf)
        assert_int8_equal(getattr(m.params.layers[0], leaf), *unpack_blocks(packed), what=leaf)
    head = {t.name: t for t in reader.tensors}["output.weight"].data
    assert_int8_equal(m.params.head, *unpack_blocks(head), what="head")


def test_gguf_and_hf_twins_give_the_same_int8_weights(random_llama):
    gguf_path, hf_dir = random_llama
    g, h = load_model(str(gguf_path), dtype="int8"), load_model(str(hf_dir), dtype="int8")
    assert g.params.embed is None and h.params.embed is None  # tied: embeddings come from the int8 head
    pairs = [(g.params.head, h.params.head)] + [
        (getattr(a, leaf), getattr(b, leaf))
        for a, b in zip(g.params.layers, h.params.layers, strict=True)
        for leaf in LayerParams._fields
    ]
    for a, b in pairs:
        assert type(a) is type(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    wq = np.asarray(random_weights(TINY)["model.layers.0.self_attn.q_proj.weight"])  # HF [out, in], rotate-half
    assert_int8_equal(g.params.layers[0].wq, *reference_q8(wq))


ODD = {
    "d_model": (Dims(d_model=48, n_heads=3, n_kv_heads=1, d_head=16, d_ffn=96), "attn_q", "self_attn.q_proj"),
    "d_ffn": (Dims(d_ffn=80), "ffn_down", "mlp.down_proj"),
}


@pytest.mark.parametrize("case", ODD)
def test_inputs_not_a_multiple_of_32_fail_in_one_line_naming_the_tensor(tmp_path, case):
    dims, gguf_name, hf_name = ODD[case]
    weights, vocab = random_weights(dims), small_vocab()
    gguf_path = write_gguf(tmp_path / "odd.gguf", weights, vocab, dims)
    hf_dir = write_hf(tmp_path / "odd-hf", weights, vocab, dims)
    for path, name in [(gguf_path, f"blk.0.{gguf_name}.weight"), (hf_dir, f"model.layers.0.{hf_name}.weight")]:
        load_model(str(path), dtype="f32")  # a valid model, only not int8-able
        with pytest.raises(ModelFileError) as caught:
            load_model(str(path), dtype="int8")
        message = str(caught.value)
        assert isinstance(caught.value, ValueError) and "\n" not in message
        assert repr(name) in message and "multiple of 32" in message and str(path) in message


# Bench: the llama.cpp peer and the roofline


def test_the_llamacpp_peer_runs_q8_0_for_int8(monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from lljx.bench import peers
    from lljx.bench.requantize import FTYPES, GGUF_TYPE
    from lljx.bench.runner import Prompt

    assert GGUF_TYPE["int8"] == "Q8_0" and FTYPES["Q8_0"] == "LLAMA_FTYPE_MOSTLY_Q8_0"
    model = SimpleNamespace(
        format="gguf", path="/m.gguf", name="m", quantization="Q4_1",
        config=SimpleNamespace(dtype="int8", context_length=2048),
    )
    prompt = Prompt(0, "hi", (1, 2, 3))
    system = peers.LlamaCppSystem(model, prompts=[prompt], warmup=prompt, max_tokens=4, seed=0, threads=1)
    assert system.ftype == "Q8_0" and system.dtype == "q8_0"


def test_roofline_reads_one_byte_per_int8_weight_plus_its_f32_scales():
    from lljx.bench.roofline import weight_bytes

    rng = np.random.default_rng(0)
    d, f, v = 64, 96, 100
    layer = LayerParams(
        attn_norm=np.ones(d, np.float32), wq=random_int8(rng, d, d), wk=random_int8(rng, d, 32),
        wv=random_int8(rng, d, 32), wo=random_int8(rng, d, d), ffn_norm=np.ones(d, np.float32),
        w_gate=random_int8(rng, d, f), w_up=random_int8(rng, d, f), w_down=random_int8(rng, f, d),
    )  # fmt: skip
    tied = Params(embed=None, layers=(layer, layer), final_norm=np.ones(d, np.float32), head=random_int8(rng, d, v))
    weights = 2 * (d * d + 2 * d * 32 + d * d + 3 * d * f) + d * v
    norms = 4 * (2 * 2 * d + d)
    assert weight_bytes(tied) == weights + 4 * weights // Q8_BLOCK + norms
    untied = tied._replace(embed=np.ones((v, d), np.float32))
    assert weight_bytes(untied) == weight_bytes(tied) + 4 * d  # one f32 row of the table per token


# End to end


@pytest.mark.slow
def test_generate_with_int8_on_the_command_line(random_llama, tmp_path):
    gguf_path, _ = random_llama
    env = {**os.environ, "LLJX_COMPILE_CACHE": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "lljx.cli", "generate", "--model", str(gguf_path), "--dtype", "int8",
         "--temperature", "0", "-n", "4", "--raw", "hello"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    dims = ODD["d_model"][0]
    odd = write_gguf(tmp_path / "odd.gguf", random_weights(dims), small_vocab(), dims)
    run = subprocess.run(
        [sys.executable, "-m", "lljx.cli", "generate", "--model", str(odd), "--dtype", "int8", "hi"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and run.stdout == "" and len(lines) == 1, run.stderr
    assert lines[0].startswith("lljx: error: ") and "'blk.0.attn_q.weight'" in lines[0]


@pytest.mark.parametrize("command", ["generate", "bench", "profile", "serve"])
def test_every_dtype_option_offers_int8(command):
    from click.testing import CliRunner

    from lljx.cli import main

    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "int8" in result.output and "Q8_0" in result.output


# The embedded model against llama.cpp's own Q8_0


@pytest.fixture(scope="module")
def embedded_int8():
    return load_model(None, dtype="int8")


@pytest.fixture(scope="module")
def llamacpp_q8_0(embedded_int8):
    """The embedded GGUF requantized to Q8_0 by llama.cpp's quantizer (the bench peer's file for int8)."""
    oracle = pytest.importorskip("llamacpp_oracle")
    from lljx.bench.requantize import requantized

    return requantized(Path(embedded_int8.path), "Q8_0", cache=oracle.cache_dir())


@pytest.mark.slow
def test_int8_blocks_are_the_ones_llamacpp_writes_for_q8_0(embedded_int8, llamacpp_q8_0):
    """Every projection and the head: our values and scales are the bytes of llama.cpp's Q8_0 GGUF."""
    reader = gguf.GGUFReader(llamacpp_q8_0)
    tensors = {t.name: t for t in reader.tensors}
    config = embedded_int8.config
    for i, layer in enumerate(embedded_int8.params.layers):
        for leaf in PROJECTIONS:
            name = f"blk.{i}.{GGUF_NAMES[leaf]}.weight"
            assert tensors[name].tensor_type == Q.Q8_0
            assert_int8_equal(getattr(layer, leaf), *unpack_blocks(layer_tensor(reader, name, config, leaf)), what=name)
    assert config.tie_embeddings
    assert_int8_equal(embedded_int8.params.head, *unpack_blocks(tensors["token_embd.weight"].data), what="head")


@pytest.mark.slow
def test_loading_llamacpps_q8_0_file_gives_the_same_int8_weights(embedded_int8, llamacpp_q8_0):
    q8 = load_model(str(llamacpp_q8_0), dtype="int8")
    assert q8.quantization == "Q8_0"
    for a, b in zip(jax.tree.leaves(q8.params), jax.tree.leaves(embedded_int8.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Verbatim or requantized from its own f32 values, Q8_0 blocks come out the same.
    f32 = load_model(str(llamacpp_q8_0), dtype="f32")
    for leaf in ("wq", "w_down"):
        assert_int8_equal(
            getattr(q8.params.layers[3], leaf), *reference_q8(np.asarray(getattr(f32.params.layers[3], leaf)).T)
        )


# Greedy tokens. llama.cpp's Q8_0 matmul also rounds the activations to 8 bits, while int8 keeps them
# f32, so the exact oracle is llama.cpp running the same Q8_0 weights dequantized to F32 (its
# quantizer's F32 copy of the Q8_0 file): same weights, same f32 arithmetic. On the first 10 bench
# prompts the 32-token greedy text of int8 equals that oracle's on all 10, f32's on 7 (the same 7
# where llama.cpp's F32-of-Q8_0 equals its F32), and llama.cpp Q8_0's on 2; against Q8_0 itself
# the texts agree for 29, 4, 7, 10, 32, 11, 1, 32, 27, 19 tokens. "How do black holes form?"
# already differs from f32 at the first token, "What causes the ocean tides?" at the 17th.
SAME_ARITHMETIC_PROMPTS = ["How do black holes form?", "What causes the ocean tides?"]
# Prompts where llama.cpp's 8-bit activations do not change the first 16 tokens (27 or more agree).
Q8_0_PROMPTS = ["Why is the sky blue?", "What is the Pythagorean theorem?", "Why do magnets attract iron?"]
Q8_0_AGREE = 16


@pytest.fixture(scope="module")
def llamacpp_f32_of_q8_0(llamacpp_q8_0):
    import llamacpp_oracle as oracle

    from lljx.bench.requantize import requantized

    return oracle.load(requantized(llamacpp_q8_0, "F32", cache=oracle.cache_dir()), n_ctx=256, logits_all=True)


@pytest.fixture(scope="module")
def int8_decoder(embedded_int8):
    from lljx.sampling import SamplerSettings
    from lljx.strategies import registry

    return registry.load(registry.DEFAULT_STRATEGY).build(embedded_int8, SamplerSettings(temperature=0))


def int8_greedy(model, decoder, prompt: str, n: int) -> list[int]:
    from lljx.generation import Generation, chat_prompt_ids

    generation = Generation(
        model, decoder, chat_prompt_ids(model, prompt), max_tokens=n, stop_token_ids=model.stop_token_ids
    )
    "".join(generation)
    return generation.token_ids


@pytest.mark.slow
def test_int8_logits_are_llamacpps_on_the_same_weights_in_f32(embedded_int8, llamacpp_f32_of_q8_0):
    import llamacpp_oracle as oracle

    from lljx.core import kv_cache, transformer
    from lljx.generation import chat_prompt_ids

    for prompt in SAME_ARITHMETIC_PROMPTS:
        ids = chat_prompt_ids(embedded_int8, prompt)
        theirs = oracle.all_logits(llamacpp_f32_of_q8_0, ids)[-1]
        ours, _ = transformer.forward(
            embedded_int8.config, embedded_int8.params, jnp.asarray([ids]), jnp.arange(len(ids))[None],
            kv_cache.create(embedded_int8.config, 1, 128), jnp.array([len(ids) - 1]),
        )  # fmt: skip
        ours = np.asarray(ours[0])
        assert np.max(np.abs(ours - theirs)) < 1e-3 * float(theirs.max() - theirs.min())
        assert int(np.argmax(ours)) == int(np.argmax(theirs))


@pytest.mark.slow
def test_int8_greedy_tokens_equal_llamacpps_on_the_same_weights_in_f32(
    embedded_int8, int8_decoder, llamacpp_f32_of_q8_0
):
    import llamacpp_oracle as oracle

    from lljx.generation import chat_prompt_ids

    for prompt in SAME_ARITHMETIC_PROMPTS:
        theirs = oracle.greedy_tokens(llamacpp_f32_of_q8_0, chat_prompt_ids(embedded_int8, prompt), 32)
        assert int8_greedy(embedded_int8, int8_decoder, prompt, 32) == theirs, prompt


@pytest.mark.slow
def test_int8_greedy_tokens_start_like_llamacpp_q8_0(embedded_int8, int8_decoder, llamacpp_q8_0):
    import llamacpp_oracle as oracle

    from lljx.generation import chat_prompt_ids

    from lljx import _native

    if not _native.int8_dot_kernel_available():
        # Without the kernel, int8 keeps activations f32: the test above is its oracle, and
        # llama.cpp's 8-bit activations already move the first token of these prompts (Zen 3).
        pytest.skip("this CPU has no AVX-512 VNNI for the int8 dot-product kernel, which rounds activations as Q8_0 does")
    llama = oracle.load(llamacpp_q8_0, n_ctx=256)
    for prompt in Q8_0_PROMPTS:
        theirs = oracle.greedy_tokens(llama, chat_prompt_ids(embedded_int8, prompt), Q8_0_AGREE)
        assert int8_greedy(embedded_int8, int8_decoder, prompt, Q8_0_AGREE) == theirs, prompt


# llama.cpp's Q8_0 path quantizes activations to 8 bits per block of 32, and so does lljx's int8
# dot-product kernel (native strategies on CPUs with AVX-512 VNNI). Measured on the first 10 bench
# prompts, 32 greedy tokens: its text equals f32's on 7 (as the unquantized int8 path's does) and
# llama.cpp Q8_0's on these 3, where both agree for all 32 tokens.
INT8_DOT_PROMPTS = ["Why does ice float on water?", "What is the Pythagorean theorem?", "Why do magnets attract iron?"]
# On an Intel Xeon (AVX-512 FP16, AMX) one of them first differs at a token where llama.cpp's
# logits for the whole prefix put ours level with its own pick (llamacpp_oracle.assert_greedy_agrees).
NEAR_TIE = 0.25


@pytest.mark.slow
def test_native_int8_dot_kernel_greedy_tokens_equal_llamacpp_q8_0(embedded_int8, llamacpp_q8_0):
    import llamacpp_oracle as oracle

    from lljx import _native
    from lljx.generation import chat_prompt_ids
    from lljx.params import TiledInt8Weight
    from lljx.sampling import SamplerSettings
    from lljx.strategies import registry

    if not _native.int8_dot_kernel_available():
        pytest.skip("this CPU has no AVX-512 VNNI for the int8 dot-product kernel")
    decoder = registry.load("native-token").build(embedded_int8, SamplerSettings(temperature=0))
    assert isinstance(decoder.params.layers[0].wq.kernel_weight(), TiledInt8Weight)
    llama = oracle.load(llamacpp_q8_0, n_ctx=256, logits_all=True)
    for prompt in INT8_DOT_PROMPTS:
        ids = chat_prompt_ids(embedded_int8, prompt)
        ours = int8_greedy(embedded_int8, decoder, prompt, 32)
        oracle.assert_greedy_agrees(llama, ids, ours, 32, near_tie=NEAR_TIE)
