"""Broken and hostile model files: each fails fast with a one-line ModelFileError naming the file, never hangs."""

from __future__ import annotations

import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures.random_llama import (
    TINY,
    random_weights,
    small_vocab,
    write_gguf,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lljx.models import ModelError, ModelFileError, load_model
from lljx.models.gguf_file import read_gguf_header


@contextmanager
def deadline(seconds: float):
    """Fail instead of hanging: a hostile file must be rejected in well under a second."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def expect_file_error(path: Path, *fragments: str) -> ModelFileError:
    with deadline(10), pytest.raises(ModelFileError) as info:
        load_model(str(path), dtype="f32")
    message = str(info.value)
    assert message.startswith(str(path) + ": ") and message.count(str(path)) == 1, message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def s(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + struct.pack("<II", 4, value)


def tensor_info(name: str, shape: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    return (
        s(name)
        + struct.pack("<I", len(shape))
        + struct.pack(f"<{len(shape)}Q", *shape)
        + struct.pack("<IQ", ggml_type, offset)
    )


def write(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def value_offset(data: bytes, key: str) -> int:
    """Offset of a key/value's value (after its type field) in a GGUF file."""
    at = data.index(s(key))
    return at + len(s(key)) + 4


def tensor_fields(data: bytes, name: str) -> tuple[int, int]:
    """Offsets of a tensor's type and data-offset fields in the directory."""
    at = data.index(s(name)) + len(s(name))
    n_dims = struct.unpack_from("<I", data, at)[0]
    type_at = at + 4 + 8 * n_dims
    return type_at, type_at + 4


@pytest.fixture
def good(random_llama) -> bytes:
    return random_llama[0].read_bytes()


HOSTILE_HEADERS = {
    "bad magic": (b"GGML" + bytes(60), "not a GGUF file"),
    "version 1": (header(0, 0, version=1), "unsupported GGUF version 1"),
    "version 4": (header(0, 0, version=4), "unsupported GGUF version 4"),
    "big endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    "absurd tensor count": (header(1 << 62, 0), "tensor count"),
    "absurd kv count": (header(0, 1 << 40), "key/value count"),
    "huge key length": (header(0, 1) + struct.pack("<Q", 1 << 63) + bytes(64), "truncated header"),
    "huge array": (header(0, 1) + s("a") + struct.pack("<IIQ", 9, 8, 1 << 60), "array length"),
    "huge array of u8": (header(0, 1) + s("a") + struct.pack("<IIQ", 9, 0, 1 << 60), "array length"),
    "huge string": (header(0, 1) + s("a") + struct.pack("<IQ", 8, 1 << 62) + bytes(64), "truncated header"),
    "unknown value type": (header(0, 1) + s("a") + struct.pack("<I", 99) + bytes(8), "unknown value type 99"),
    "deeply nested arrays": (
        header(0, 1)
        + s("a")
        + struct.pack("<IIQ", 9, 9, 1)
        + struct.pack("<IQ", 9, 1)
        + struct.pack("<IQ", 9, 1)
        + bytes(16),
        "nests arrays",
    ),
    "duplicate key": (header(0, 2) + kv_u32("a", 1) + kv_u32("a", 2) + bytes(64), "duplicate key 'a'"),
    "non-utf8 key": (header(0, 1) + s(b"\xff\xfe") + struct.pack("<II", 4, 1) + bytes(64), "not UTF-8"),
    "bad alignment": (header(0, 1) + kv_u32("general.alignment", 3) + bytes(64), "power-of-two"),
    "five dimensions": (header(1, 0) + tensor_info("t", (1, 1, 1, 1, 1)) + bytes(64), "5 dimensions"),
    "unknown tensor type": (header(1, 0) + tensor_info("t", (4,), ggml_type=99) + bytes(64), "unknown type 99"),
    "overflowing shape": (header(1, 0) + tensor_info("t", (1 << 40, 1 << 40)) + bytes(64), "absurdly large"),
    "ragged quant rows": (header(1, 0) + tensor_info("t", (30, 2), ggml_type=2) + bytes(64), "not a multiple"),
    "misaligned tensor": (header(1, 0) + tensor_info("t", (4,), offset=3) + bytes(64), "not aligned"),
    "tensor past end": (header(1, 0) + tensor_info("t", (4,), offset=1 << 20) + bytes(64), "past the end of the file"),
    "duplicate tensor": (
        header(2, 0) + tensor_info("t", (4,)) + tensor_info("t", (4,), offset=32) + bytes(128),
        "duplicate tensor",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
def test_hostile_headers_are_rejected_quickly(tmp_path, case):
    data, fragment = HOSTILE_HEADERS[case]
    expect_file_error(write(tmp_path, data), fragment)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelError) as info:
        load_model(str(tmp_path / "absent.gguf"))
    assert "absent.gguf" in str(info.value)
    expect_file_error(write(tmp_path, b""), "empty file")
    with pytest.raises(ModelFileError, match="no such file"):
        read_gguf_header(tmp_path / "absent.gguf")


def test_truncated_anywhere(tmp_path, good):
    data_offset = read_gguf_header(write(tmp_path, good, "whole.gguf")).data_offset
    for cut in [
        1,
        3,
        4,
        6,
        8,
        16,
        23,
        24,
        40,
        500,
        5000,
        data_offset - 1,
        data_offset,
        data_offset + 100,
        len(good) - 1,
    ]:
        message = str(expect_file_error(write(tmp_path, good[:cut], f"cut{cut}.gguf")))
        assert "truncated" in message or "past the end" in message or "not a GGUF" in message, message


def test_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "qwen.gguf", random_weights(TINY), small_vocab(), arch="qwen2")
    expect_file_error(path, "architecture 'qwen2' is not supported")


def test_unsupported_tensor_type(tmp_path, good):
    type_at, _ = tensor_fields(good, "blk.0.attn_q.weight")
    data = patch(good, type_at, struct.pack("<I", 26))  # I32: same size as F32, but not a weight format
    expect_file_error(write(tmp_path, data), "'blk.0.attn_q.weight' has unsupported type I32")


def test_missing_tensor(tmp_path, good):
    data = good.replace(s("blk.1.ffn_up.weight"), s("blk.1.ffn_up.weighX"))
    expect_file_error(write(tmp_path, data), "missing tensor 'blk.1.ffn_up.weight'")


def test_missing_metadata_key(tmp_path, good):
    data = good.replace(s("llama.embedding_length"), s("llama.embedding_lengtX"))
    expect_file_error(write(tmp_path, data), "missing metadata key 'llama.embedding_length'")


def test_wrongly_typed_metadata(tmp_path, good):
    at = value_offset(good, "llama.block_count")
    data = patch(good, at - 4, struct.pack("<I", 6))  # now a float32
    expect_file_error(write(tmp_path, data), "'llama.block_count' should be int")


def test_shape_disagreeing_with_metadata(tmp_path, good):
    data = patch(good, value_offset(good, "llama.feed_forward_length"), struct.pack("<I", 96))
    expect_file_error(write(tmp_path, data), "'blk.0.ffn_gate.weight' has shape [64, 128], expected [64, 96]")


def test_bad_attention_shape(tmp_path, good):
    data = patch(good, value_offset(good, "llama.attention.head_count_kv"), struct.pack("<I", 3))
    expect_file_error(write(tmp_path, data), "not a valid attention shape")


def test_token_id_outside_vocabulary(tmp_path, good):
    data = patch(good, value_offset(good, "tokenizer.ggml.eos_token_id"), struct.pack("<I", 100000))
    expect_file_error(write(tmp_path, data), "tokenizer.ggml.eos_token_id = 100000 is outside the vocabulary")


def test_tensor_offset_past_end_of_file(tmp_path, good):
    _, offset_at = tensor_fields(good, "output_norm.weight")
    expect_file_error(
        write(tmp_path, patch(good, offset_at, struct.pack("<Q", 1 << 40))), "'output_norm.weight' data", "past the end"
    )


def test_non_gguf_file_without_suffix(tmp_path):
    path = write(tmp_path, b"hello", "notes.txt")
    expect_file_error(path, "not a GGUF file")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_is_a_model_file_error_or_loads(tmp_path, good, data):
    """Flipped bytes in the header, or a cut anywhere: a clean ModelFileError or a model, nothing else."""
    blob = bytearray(good)
    header_end = read_gguf_header(write(tmp_path, good, "orig.gguf")).data_offset
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, header_end - 1))
        blob[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = write(tmp_path, bytes(blob), "fuzzed.gguf")
    with deadline(10):
        try:
            model = load_model(str(path), dtype="f32")
        except ModelFileError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            return
    assert len(model.params.layers) == model.config.n_layers
