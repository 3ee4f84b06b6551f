"""GGUF string arrays kept packed (vocabularies, merges): the same strings, tokenizer and errors as decoding each in Python."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from lljx import _native
from lljx.models import ModelFileError
from lljx.models import gguf_file
from lljx.models.gguf_file import GGUFStrings, read_gguf_header
from lljx.models.vocab import build_tokenizer, gguf_vocab
from lljx.tokenizer import Tokenizer

TEXTS = ["Hello, world!", "<|im_start|>user\nWhy is the sky blue?<|im_end|>", "  spaces\tand\nlines ✓ 日本語 🙂", ""]


@pytest.fixture(scope="module")
def embedded_path() -> str:
    from lljx.models.embedded import embedded_gguf_path

    return str(embedded_gguf_path())


def python_header(path: str, monkeypatch: pytest.MonkeyPatch) -> gguf_file.GGUFFile:
    with monkeypatch.context() as patched:
        patched.setattr(gguf_file, "PACKED_MIN", 1 << 62)
        return read_gguf_header(path)


def test_a_vocabulary_stays_packed_and_reads_as_the_python_decode(embedded_path, monkeypatch):
    packed, plain = read_gguf_header(embedded_path), python_header(embedded_path, monkeypatch)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        strings, expected = packed.fields[key], plain.fields[key]
        assert isinstance(strings, GGUFStrings) and isinstance(expected, list)
        assert len(strings) == len(expected) and strings.tolist() == expected and list(strings) == expected
        assert [strings[i] for i in (0, 1, len(expected) // 2, -1)] == [expected[i] for i in (0, 1, len(expected) // 2, -1)]
        assert strings[10:20] == expected[10:20] and strings == expected
    assert packed.data_offset == plain.data_offset and list(packed.tensors) == list(plain.tensors)


def test_the_tokenizer_built_from_packed_bytes_is_the_one_built_from_lists(embedded_path, monkeypatch):
    from_packed = build_tokenizer(gguf_vocab(read_gguf_header(embedded_path))[0])
    from_lists = build_tokenizer(gguf_vocab(python_header(embedded_path, monkeypatch))[0])
    for text in TEXTS:
        ids = from_lists.encode(text, parse_special=True)
        assert from_packed.encode(text, parse_special=True) == ids
        assert from_packed.decode(ids) == from_lists.decode(ids)
    assert from_packed.vocab_size == from_lists.vocab_size


def pack(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(item)) + item for item in items)


def test_invalid_utf8_reads_as_pythons_replacement_everywhere():
    items = [b"ok", b"\xff\xfe", b"\xe2\x82", b"a\xc3(b", "ĠHello".encode(), b""]
    packed = pack(items)
    starts, end = _native.gguf_string_starts(packed, 0, len(items))
    assert end == len(packed)
    strings = GGUFStrings(packed, np.frombuffer(starts, "<u8"))
    expected = [item.decode("utf-8", errors="replace") for item in items]
    assert strings.tolist() == expected and [strings[i] for i in range(len(items))] == expected
    tokens = [f"t{i}" for i in range(10)]
    native = _native.Tokenizer.from_gguf_vocab(
        model="gpt2", pre="default", tokens=(pack([t.encode() for t in tokens]), 10), merges=(b"", 0),
        token_types=[], bos_id=None, eos_id=None, add_bos=False,
    )
    assert [native.id_to_token(i) for i in range(10)] == tokens


def test_the_walk_reports_where_the_bytes_end():
    packed = pack([b"abc", b"defg"])
    with pytest.raises(ValueError) as info:
        _native.gguf_string_starts(packed[:-1], 0, 2)
    assert info.value.args == (19, 4)
    with pytest.raises(ValueError):
        _native.gguf_string_starts(packed, 0, 3)
    with pytest.raises(_native.TokenizerError, match="packed string array"):
        _native.Tokenizer.from_gguf_vocab(
            model="gpt2", pre="default", tokens=(packed[:-1], 2), merges=(b"", 0),
            token_types=[], bos_id=None, eos_id=None, add_bos=False,
        )


def test_a_file_cut_inside_its_vocabulary_names_the_same_place(embedded_path, tmp_path: Path, monkeypatch):
    data = Path(embedded_path).read_bytes()
    vocab_at = data.index(b"tokenizer.ggml.tokens")
    # Past the count check (every string needs its 8-byte length), inside the strings.
    for cut in (vocab_at + 450_000, vocab_at + 450_003, vocab_at + 600_001):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError) as packed:
            read_gguf_header(path)
        with pytest.raises(ModelFileError) as plain:
            python_header(str(path), monkeypatch)
        assert str(packed.value) == str(plain.value) and "truncated header" in str(packed.value)
