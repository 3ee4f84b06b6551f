"""GGUF loading: config from metadata, our header reader against GGUFReader, every quant type against gguf.quants."""

from __future__ import annotations

import os

import gguf
import ml_dtypes
import numpy as np
import pytest
from fixtures.random_llama import (
    QUANTIZABLE,
    TINY,
    Dims,
    Q,
    from_interleaved,
    llama3_rope_factors,
    to_interleaved,
    write_quantized_llama,
)
from lljx.config import ModelConfig
from lljx.models import dequant, load_model
from lljx.models.embedded import embedded_gguf_path
from lljx.models.gguf import interleaved_to_half
from lljx.models.gguf_file import TensorInfo, read_gguf_header

EMBEDDED = embedded_gguf_path()


@pytest.fixture(scope="module")
def embedded_f32():
    return load_model(None, dtype="f32")


@pytest.fixture(scope="module")
def embedded_reader():
    return gguf.GGUFReader(EMBEDDED)


def reference_layers(
    reader: gguf.GGUFReader, dims: Dims, layers: tuple[int, ...] | None = None
) -> dict[str, np.ndarray]:
    """What the loader should produce, built only from gguf's own reader and dequantizer: [in, out], rotate-half Q/K."""
    tensors = {t.name: t for t in reader.tensors}

    def raw(name: str) -> np.ndarray:  # [out, in] (ggml ne reversed), f32
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type)

    out = {"final_norm": raw("output_norm.weight")}
    if "output.weight" in tensors:
        out["embed"], out["head"] = raw("token_embd.weight"), raw("output.weight").T
    else:
        out["head"] = raw("token_embd.weight").T
    for i in range(dims.n_layers) if layers is None else layers:
        b = f"blk.{i}."
        out |= {
            f"{i}.attn_norm": raw(b + "attn_norm.weight"),
            f"{i}.wq": from_interleaved(raw(b + "attn_q.weight"), dims.n_heads).T,
            f"{i}.wk": from_interleaved(raw(b + "attn_k.weight"), dims.n_kv_heads).T,
            f"{i}.wv": raw(b + "attn_v.weight").T,
            f"{i}.wo": raw(b + "attn_output.weight").T,
            f"{i}.ffn_norm": raw(b + "ffn_norm.weight"),
            f"{i}.w_gate": raw(b + "ffn_gate.weight").T,
            f"{i}.w_up": raw(b + "ffn_up.weight").T,
            f"{i}.w_down": raw(b + "ffn_down.weight").T,
        }
    return out


def loaded_layers(params, layers: range | tuple[int, ...]) -> dict[str, np.ndarray]:
    out = {"final_norm": params.final_norm, "head": params.head}
    if params.embed is not None:
        out["embed"] = params.embed
    for i in layers:
        out |= {f"{i}.{leaf}": getattr(params.layers[i], leaf) for leaf in params.layers[i]._fields}
    return {k: np.asarray(v) for k, v in out.items()}


def assert_params_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray], dtype=np.float32) -> None:
    for key, expected in want.items():
        norm = key == "final_norm" or key.endswith("_norm")
        expected = expected.astype(np.float32 if norm else dtype)
        assert got[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)


def test_embedded_config_and_fields(embedded_f32):
    m = embedded_f32
    assert m.config == ModelConfig(
        vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_head=64, d_ffn=1536,
        rope_theta=100000.0, norm_eps=1e-5, context_length=8192, tie_embeddings=True, dtype="f32",
    )  # fmt: skip
    assert (m.name, m.source, m.format, m.origin, m.quantization) == (
        "smollm2-135m-instruct",
        "smollm2-135m-instruct",
        "gguf",
        "embedded",
        "Q4_1",
    )
    assert m.path == EMBEDDED and m.file_size == os.path.getsize(EMBEDDED)
    assert (m.bos_token, m.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert m.stop_token_ids == (2, 0)  # <|im_end|> (eos), then <|endoftext|>
    assert m.chat_template is not None and "<|im_start|>" in m.chat_template
    assert m.metadata["llama.block_count"] == 30 and m.metadata["general.architecture"] == "llama"
    assert not {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"} & set(m.metadata)
    vocab = m.tokenizer_spec
    assert (vocab.model, vocab.pre, vocab.bos_id, vocab.eos_id, vocab.add_bos) == ("gpt2", "smollm", 1, 2, False)
    assert len(vocab.tokens) == len(vocab.token_types) == 49152 and len(vocab.merges) == 48900
    p = m.params
    assert p.embed is None and p.head.shape == (576, 49152) and len(p.layers) == 30
    assert (
        p.layers[0].wq.shape == (576, 576)
        and p.layers[0].wk.shape == (576, 192)
        and p.layers[0].w_down.shape == (1536, 576)
    )
    assert p.layers[0].wq.dtype == np.float32 and p.layers[0].attn_norm.dtype == np.float32


def test_embedded_weights_equal_gguf_reader_dequantized_and_repermuted(embedded_f32, embedded_reader):
    dims = Dims(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_head=64, d_ffn=1536)
    layers = (0, 13, 29)
    want = reference_layers(embedded_reader, dims, layers)
    assert_params_equal(loaded_layers(embedded_f32.params, layers), want)


@pytest.mark.parametrize("which", ["embedded", "fixture"])
def test_header_reader_agrees_with_gguf_reader(which, embedded_reader, random_llama):
    reader = embedded_reader if which == "embedded" else gguf.GGUFReader(random_llama[0])
    ours = read_gguf_header(reader.data.filename)
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = ours.fields[key]
        value = value.tolist() if isinstance(value, np.ndarray) else value
        expected = field.contents()
        if field.types == [gguf.GGUFValueType.FLOAT32]:
            assert np.float32(value) == np.float32(expected), key
        else:
            assert value == expected, key
    assert set(ours.fields) == {k for k in reader.fields if not k.startswith("GGUF.")}
    assert ours.data_offset == reader.data_offset and ours.version == reader.fields["GGUF.version"].contents()
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = ours.tensors[t.name]
        assert (info.ggml_type, list(info.shape), info.offset, info.n_bytes) == (
            t.tensor_type,
            t.shape.tolist(),
            t.data_offset,
            t.n_bytes,
        )


def test_fixture_config_has_llama3_rope_factors_gqa_and_tying(random_llama):
    m = load_model(str(random_llama[0]), dtype="f32")
    c = m.config
    assert (c.n_heads, c.n_kv_heads, c.d_head, c.vocab_size, c.tie_embeddings) == (4, 2, 16, 512, True)
    assert c.rope_freq_factors == tuple(float(x) for x in llama3_rope_factors(16))
    assert c.rope_freq_factors[0] == 1.0 and c.rope_freq_factors[-1] == 32.0 and 1.0 < c.rope_freq_factors[4] < 32.0
    assert c.rope_scaling is None and c.rope_theta == 500000.0 and c.norm_eps == 1e-5
    assert m.quantization == "F32" and m.name == "random-llama"
    assert m.stop_token_ids == (2, 0)


def test_interleaved_to_half_undoes_the_converter_permutation():
    rng = np.random.default_rng(1)
    for heads, d in [(1, 2), (3, 8), (9, 64)]:
        hf = rng.standard_normal((heads * d, 5))
        np.testing.assert_array_equal(to_interleaved(hf, heads)[interleaved_to_half(heads, d)], hf)


QTYPES = [
    Q.F32,
    Q.F16,
    Q.BF16,
    Q.Q8_0,
    Q.Q4_0,
    Q.Q4_1,
    Q.Q5_0,
    Q.Q5_1,
    Q.Q2_K,
    Q.Q3_K,
    Q.Q4_K,
    Q.Q5_K,
    Q.Q6_K,
    Q.IQ4_NL,
    Q.IQ4_XS,
    Q.TQ2_0,
    Q.MXFP4,
]


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_every_quant_type_loads_like_gguf_quants(tmp_path, monkeypatch, qtype):
    monkeypatch.setattr(dequant, "CHUNK_ELEMENTS", 3000)  # many chunks per tensor, the last one ragged
    path = write_quantized_llama(tmp_path / f"{qtype.name}.gguf", qtype)
    m = load_model(str(path), dtype="f32")
    assert m.quantization == qtype.name  # no general.file_type: the commonest matrix type
    assert not m.config.tie_embeddings and m.params.embed is not None
    want = reference_layers(gguf.GGUFReader(path), QUANTIZABLE)
    assert_params_equal(loaded_layers(m.params, range(QUANTIZABLE.n_layers)), want)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("qtype", [Q.F32, Q.BF16, Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_compute_dtype_is_the_f32_values_rounded_once(tmp_path, qtype, dtype):
    path = write_quantized_llama(tmp_path / f"{qtype.name}.gguf", qtype)
    m = load_model(str(path), dtype=dtype)
    assert m.config.dtype == dtype
    np_dtype = {"bf16": ml_dtypes.bfloat16, "f16": np.float16}[dtype]
    want = reference_layers(gguf.GGUFReader(path), QUANTIZABLE)
    assert_params_equal(loaded_layers(m.params, range(QUANTIZABLE.n_layers)), want, dtype=np_dtype)


# Largest error of a round trip, relative to the largest |x|: half a quantization step.
ROUND_TRIP_TOLERANCE = {
    Q.F16: 1e-3,
    Q.BF16: 5e-3,
    Q.Q8_0: 5e-3,
    Q.Q5_0: 0.035,
    Q.Q5_1: 0.035,
    Q.Q4_0: 0.07,
    Q.Q4_1: 0.07,
}


@pytest.mark.parametrize("qtype", list(ROUND_TRIP_TOLERANCE), ids=lambda q: q.name)
def test_decode_round_trips_gguf_quantize(qtype):
    rng = np.random.default_rng(7)
    rows, row_length = 37, 256
    x = rng.standard_normal((rows, row_length)).astype(np.float32)
    packed = gguf.quants.quantize(x, qtype)
    reference = gguf.quants.dequantize(packed, qtype)
    raw = packed.view(np.uint8).reshape(-1)
    info = TensorInfo("t", qtype, (row_length, rows), 0, raw.size)

    plain = dequant.decode(raw, info, np.empty((rows, row_length), np.float32))
    np.testing.assert_array_equal(plain, reference)
    assert np.abs(plain - x).max() <= ROUND_TRIP_TOLERANCE[qtype] * np.abs(x).max()

    order = rng.permutation(rows)
    moved = dequant.decode(raw, info, np.empty((row_length, rows), np.float32), transpose=True, row_order=order)
    np.testing.assert_array_equal(moved, reference[order].T)


def test_supported_types_cover_the_usual_formats():
    names = set(dequant.supported_types())
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q5_K", "Q2_K", "Q3_K"} <= names
    assert not {"I32", "Q8_1", "Q8_K"} & names


def test_tiny_fixture_keeps_llama32_features():
    assert TINY.n_heads != TINY.n_kv_heads and TINY.tied and TINY.d_head >= 16


def test_vocab_size_falls_back_to_the_token_list(tmp_path, random_llama):
    data = random_llama[0].read_bytes()
    key = b"llama.vocab_size"
    renamed = tmp_path / "no-vocab-key.gguf"
    renamed.write_bytes(data.replace(key, b"llama.vocab_sizX"))
    assert load_model(str(renamed)).config.vocab_size == 512


def test_embedded_tokenizer_and_chat_template_match_llama_cpp(embedded_f32):
    pytest.importorskip("lljx.tokenizer")
    llama_cpp = pytest.importorskip("llama_cpp")
    m = embedded_f32
    prompt = m.chat.render([{"role": "user", "content": "Why is the sky blue? 42"}], add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    llm = llama_cpp.Llama(model_path=EMBEDDED, n_ctx=64, verbose=False, vocab_only=True)
    assert m.tokenizer.encode(prompt, parse_special=True) == llm.tokenize(prompt.encode(), add_bos=False, special=True)
    assert (m.tokenizer.bos_id, m.tokenizer.eos_id, m.tokenizer.add_bos) == (1, 2, False)


def test_a_mapping_populates_its_pages_and_keeps_its_bytes(tmp_path):
    import mmap

    from lljx import _native
    from lljx.models.gguf_mapped import map_file

    data = np.random.default_rng(0).integers(0, 256, size=3 * 4096 + 123, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        plain = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        # This kernel or an older one: either it maps the pages, or says it cannot.
        assert isinstance(_native.populate_pages(plain), bool)
        assert plain[:] == data
        plain.close()
        mapped = map_file(f, len(data))
    assert mapped[:] == data and len(mapped) == len(data)
    mapped.close()
