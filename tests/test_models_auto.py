"""dtype auto: GGUF tensors kept in the file's formats as memory-mapped views, multiplied in place by lljx's kernels."""

from __future__ import annotations

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures.random_llama import (
    QUANTIZABLE,
    gguf_tensors,
    random_weights,
    small_vocab,
    write_gguf,
    write_quantized_llama,
)
from lljx.core import kv_cache, transformer
from lljx.models import ModelFileError, list_models, load_model
from lljx.models.dense import dense_model, has_file_formats
from lljx.models.gguf import interleaved_to_half
from lljx.models.gguf_file import read_gguf_header
from lljx.models.gguf_mapped import FormatFallbackWarning, MappedFile, kernel_types
from lljx.params import GGMLWeight
from lljx.sampling import SamplerSettings
from lljx.strategies import registry

Q = gguf.GGMLQuantizationType
# Every format the issue names, plus llama.cpp's fallbacks for rows that are not a multiple of 256.
KERNEL_FORMATS = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def test_the_kernels_cover_every_format_ollama_files_hold():
    assert set(KERNEL_FORMATS) <= set(kernel_types())


def test_embedded_model_at_auto_keeps_its_q4_1_and_q8_0_blocks():
    model = load_model(None, dtype="auto")
    assert model.config.dtype == "auto" and model.config.activation_dtype == jnp.float32
    layer = model.params.layers[0]
    for name in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
        w = getattr(layer, name)
        assert isinstance(w, GGMLWeight) and w.ggml_type == Q.Q4_1 and w.data.dtype == jnp.uint8
    assert layer.wq.shape == (576, 576) and layer.w_down.shape == (1536, 576)
    # Tied: the Q8_0 token_embd table is the head [vocab, d_model], and no separate embedding is kept.
    assert model.params.embed is None
    assert model.params.head.ggml_type == Q.Q8_0 and model.params.head.shape == (576, 49152)
    assert layer.attn_norm.dtype == jnp.float32


def mapped(path) -> tuple[MappedFile, gguf.GGUFReader]:
    return MappedFile(read_gguf_header(path), kernel_types()), gguf.GGUFReader(path)


def test_tensors_are_views_of_the_file_mapping_except_reordered_q_and_k(tmp_path):
    path = write_quantized_llama(tmp_path / "q4k.gguf", Q.Q4_K)
    files, reader = mapped(path)
    base = np.frombuffer(files.map, np.uint8).ctypes.data
    stored = {t.name: t for t in reader.tensors}
    up = files.gf.tensors["blk.0.ffn_up.weight"]
    w = files.weight(up)
    assert w.skip == up.offset % 64 and w.data.unsafe_buffer_pointer() == base + up.offset - w.skip
    np.testing.assert_array_equal(w.stored_rows().reshape(-1), np.asarray(stored[up.name].data).reshape(-1))
    q = files.gf.tensors["blk.0.attn_q.weight"]
    order = interleaved_to_half(QUANTIZABLE.n_heads, QUANTIZABLE.d_head)
    wq = files.weight(q, order)
    assert wq.skip == 0 and wq.data.unsafe_buffer_pointer() != base + q.offset
    rows = np.asarray(stored[q.name].data).reshape(wq.n_out, -1)
    np.testing.assert_array_equal(wq.stored_rows(), rows[order])
    assert files.copied_bytes == q.n_bytes


def test_a_tensor_the_file_does_not_align_to_64_bytes_is_a_view_from_the_boundary_before_it(tmp_path):
    # Three 32-byte tensors in a row (GGUF aligns to 32): at least one starts off a 64-byte boundary.
    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "llama")
    for i in range(3):
        writer.add_tensor(f"t{i}", np.arange(16, dtype=np.float16).reshape(2, 8) + i)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
    writer.close()
    files, _ = mapped(tmp_path / "odd.gguf")
    infos = list(files.gf.tensors.values())
    assert any(info.offset % 64 for info in infos)
    base = np.frombuffer(files.map, np.uint8).ctypes.data
    for i, info in enumerate(infos):
        w = files.weight(info)
        assert w.data.unsafe_buffer_pointer() % 64 == 0 and w.data.unsafe_buffer_pointer() == base + info.offset - w.skip
        np.testing.assert_array_equal(w.stored_rows().view(np.float16), np.arange(16, dtype=np.float16).reshape(2, 8) + i)
    assert files.copied_bytes == 0


def test_a_format_without_a_kernel_is_dequantized_to_f16_with_a_warning(tmp_path):
    unsupported = next(t for t in (Q.IQ4_NL, Q.IQ4_XS) if t not in kernel_types())
    path = write_quantized_llama(tmp_path / "iq.gguf", unsupported)
    with pytest.warns(FormatFallbackWarning, match=f"blk.0.attn_q.weight.*{unsupported.name}.*F16"):
        model = load_model(str(path), dtype="auto")
    w = model.params.layers[0].w_up
    assert w.ggml_type == Q.F16
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}["blk.0.ffn_up.weight"]
    expected = gguf.quants.dequantize(np.asarray(stored.data), unsupported).astype(np.float16)
    np.testing.assert_array_equal(w.stored_rows().view(np.float16), expected.reshape(w.n_out, w.n_in))


def test_a_truncated_file_is_a_clean_error_before_anything_is_mapped(tmp_path):
    path = write_quantized_llama(tmp_path / "q8.gguf", Q.Q8_0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="runs past the end of the file"):
        load_model(str(path), dtype="auto")


def test_models_lists_bytes_per_format(tmp_path):
    path = write_quantized_llama(tmp_path / "q6.gguf", Q.Q6_K)
    (row,) = list_models([str(path)], include_embedded=False)
    header = read_gguf_header(path)
    assert set(row.formats) == {"Q6_K", "F32"}
    assert sum(row.formats.values()) == sum(t.n_bytes for t in header.tensors.values())
    assert row.as_dict()["stored"].startswith("Q6_K ")


def test_hf_folder_at_auto_keeps_its_torch_dtype(random_llama):
    _, folder = random_llama
    assert load_model(str(folder), dtype="auto").config.dtype == "f32"


def test_xla_strategies_build_on_a_dense_twin_and_say_so():
    model = load_model(None, dtype="auto")
    decoder = registry.build(registry.load("jit-token"), model, SamplerSettings(temperature=0))
    assert not has_file_formats(decoder.params) and decoder.params.head.dtype == jnp.float32
    native = registry.build(registry.load("native-token"), model, SamplerSettings(temperature=0))
    assert has_file_formats(native.params)
    weights = {info.name: info.weights for info in registry.available()}
    assert weights["native-token"] == registry.WEIGHTS_IN_PLACE and weights["jit-token"] == registry.WEIGHTS_DEQUANTIZED


@pytest.mark.parametrize("qtype", KERNEL_FORMATS, ids=lambda t: t.name)
def test_kernel_logits_follow_the_dequantized_weights_for_every_format(tmp_path, qtype):
    """Every position's logits through lljx's block kernels (prompt GEMM path) against XLA on the same
    weights dequantized to f32: they differ only by the activations' rounding to the format's input type."""
    path = write_quantized_llama(tmp_path / f"{qtype.name}.gguf", qtype)
    auto = load_model(str(path), dtype="auto")
    dense = dense_model(auto)
    tokens = jnp.asarray([[1, 17, 99, 200, 31, 5, 77, 300, 12, 8, 400, 2]], jnp.int32)
    cache = kv_cache.create(auto.config, 1, 16)
    got = np.asarray(jax.jit(transformer.all_logits, static_argnums=0)(auto.config, auto.params, tokens, cache))
    want = np.asarray(transformer.all_logits(dense.config, dense.params, tokens, kv_cache.create(dense.config, 1, 16)))
    exact = qtype == Q.F32
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= (1e-5 if exact else 0.03) * scale
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("qtype", [Q.F16, Q.Q4_K], ids=lambda t: t.name)
def test_a_padded_prompt_gives_the_logits_and_cache_of_the_exact_one(tmp_path, qtype):
    """Prompts run at bucketed lengths and the kernels skip the padding: the last real token's
    logits and every real position's keys and values match an unpadded run's. (Not bit for bit:
    XLA's prompt attention may sum in another order at another length.)"""
    auto = load_model(str(write_quantized_llama(tmp_path / f"{qtype.name}.gguf", qtype)), dtype="auto")
    ids = [1, 17, 99, 200, 31, 5, 77, 300, 12]
    forward = jax.jit(transformer.forward, static_argnums=0)

    def run(length: int):
        tokens = jnp.asarray([ids + [0] * (length - len(ids))], jnp.int32)
        cache = kv_cache.create(auto.config, 1, 32)
        return forward(auto.config, auto.params, tokens, jnp.arange(length)[None], cache, jnp.asarray([len(ids) - 1]))

    (exact, exact_cache), (padded, padded_cache) = run(len(ids)), run(16)
    exact, padded = np.asarray(exact), np.asarray(padded)
    assert np.isfinite(padded).all() and padded.argmax() == exact.argmax()
    np.testing.assert_allclose(padded, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
    for k_exact, k_padded in zip(exact_cache.k, padded_cache.k):
        a, b = np.asarray(k_exact)[..., : len(ids), :], np.asarray(k_padded)[..., : len(ids), :]
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    for v_exact, v_padded in zip(exact_cache.v, padded_cache.v):
        a, b = np.asarray(v_exact)[..., : len(ids)], np.asarray(v_padded)[..., : len(ids)]
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_the_native_kernels_are_what_the_auto_path_compiles_to():
    model = load_model(None, dtype="auto")
    decoder = registry.build(registry.load("native-token"), model, SamplerSettings(temperature=0))
    ids = jnp.zeros((1, 16), jnp.int32)
    text = decoder._prefill_jit.lower(256, decoder.params, ids, jnp.ones(1, jnp.int32), jnp.zeros(2, jnp.uint32),
                                      SamplerSettings(temperature=0).knobs()).as_text()
    assert "lljx_block_matmul" in text and "lljx_block_rows" in text
    # No weight is dequantized or converted inside the program: no f32 copy of a projection appears.
    assert "tensor<576x576xf32>" not in text


def test_untied_tables_stay_blocks_and_their_rows_are_the_dequantized_rows(tmp_path):
    weights, vocab = random_weights(QUANTIZABLE), small_vocab()
    tensors = {n: a.astype(np.float16) if a.ndim == 2 else a for n, a in gguf_tensors(weights, QUANTIZABLE).items()}
    path = write_gguf(tmp_path / "f16.gguf", weights, vocab, QUANTIZABLE, tensors=tensors, file_type=None)
    model = load_model(str(path), dtype="auto")
    assert isinstance(model.params.embed, GGMLWeight) and model.params.embed.ggml_type == Q.F16
    from lljx.core import embeddings

    rows = np.asarray(jax.jit(embeddings.forward)(model.params, jnp.asarray([[3, 0, 511]])))
    table = weights["model.embed_tokens.weight"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(rows[0], table[[3, 0, 511]])
