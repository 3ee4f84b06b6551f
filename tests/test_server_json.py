"""format=json without a model: the JSON prefix checker and the token chooser on the embedded vocabulary."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lljx.models import load_tokenizer
from lljx.sampling import SamplerSettings
from lljx.server import json_prefix
from lljx.server.json_decoder import NO_TOKEN, JsonChooser, top_indices
from lljx.server.json_prefix import INITIAL, completion, feed, is_done

scalars = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=8) | st.floats(
    allow_nan=False, allow_infinity=False
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)
objects = st.dictionaries(st.text(max_size=6), values, max_size=5)


@settings(max_examples=60, deadline=None)
@given(objects, st.sampled_from([None, 0, 2]), st.booleans())
def test_every_prefix_of_an_object_is_accepted_and_completes_to_valid_json(value, indent, ascii_only):
    data = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    state = INITIAL
    for cut in range(len(data)):
        json.loads(data[:cut] + completion(state))
        state = json_prefix.step(state, data[cut])
        assert state is not None, data[: cut + 1]
    assert is_done(state) and completion(state) == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=24) | st.text(alphabet='{}[]":,0123456789.eE+-tfnrulase \\u', max_size=24).map(str.encode))
def test_whatever_is_accepted_can_be_completed(data):
    state = feed(INITIAL, data)
    if state is not None:
        parsed = json.loads(data + completion(state))
        assert isinstance(parsed, dict)


@pytest.mark.parametrize("text", [
    "[1]", " {}", "{}x", "{} ", '{"a" 1}', '{"a":01}', '{"a":1.}', '{"a":-}', '{"a":tru}', "{,}", '{"a":1,}',
    '{"a":[1,]}', '{"\x01":1}', '{"a":"\\x"}', '{"a":"\\u12g4"}', '{"a":NaN}', "{'a':1}",
])
def test_invalid_text_is_refused(text):
    assert feed(INITIAL, text.encode()) is None


def test_utf8_inside_strings_only_and_whole():
    assert feed(INITIAL, '{"k":"日本"}'.encode()) is not None
    assert feed(INITIAL, b'{"k":"\xff"}') is None  # never valid in UTF-8
    assert feed(INITIAL, b'{"k":"\xed\xa0\x80"}') is None  # a surrogate
    assert feed(INITIAL, b'{"k":"\xc3"}') is None  # a character cut short
    half = feed(INITIAL, b'{"k":"\xe6\x97')
    assert half is not None and completion(half)[:1] == b"\x80"
    assert feed(INITIAL, "{é:1}".encode()) is None  # outside a string


def test_depth_and_whitespace_are_bounded():
    assert feed(INITIAL, b'{"a":' + b"[" * (json_prefix.MAX_DEPTH - 1)) is not None
    assert feed(INITIAL, b'{"a":' + b"[" * json_prefix.MAX_DEPTH) is None
    assert feed(INITIAL, b"{" + b" " * json_prefix.MAX_WHITESPACE) is not None
    assert feed(INITIAL, b"{" + b" " * (json_prefix.MAX_WHITESPACE + 1)) is None


def test_completion_is_short():
    assert completion(INITIAL) == b"{}"
    assert completion(feed(INITIAL, b'{"a":[{"b":tr')) == b'ue}]}'
    assert completion(feed(INITIAL, b'{"a":"x\\u1')) == b'000"}'
    assert completion(feed(INITIAL, b'{"a":1e')) == b"0}"
    assert completion(feed(INITIAL, b'{"a":1,')) == b'"":0}'


@pytest.fixture(scope="module")
def vocab():
    """The embedded model's tokenizer dressed as the engine fields the chooser reads."""
    tokenizer = load_tokenizer(None)
    pieces = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    return SimpleNamespace(
        tokenizer=tokenizer,
        token_bytes=pieces,
        banned={i for i, p in enumerate(pieces) if not p} | set(tokenizer.special_ids),
        byte_tokens={p[0]: i for i, p in enumerate(pieces) if len(p) == 1},
    )


def run_chooser(vocab, sampler: SamplerSettings, budget: int, seed: int) -> tuple[bytes, int]:
    """Random logits at every step (the worst case: the model wants nothing valid); returns (text, tokens)."""
    chooser = JsonChooser(vocab, sampler, budget)
    rng = np.random.default_rng(seed)
    out, count = b"", 0
    for _ in range(budget + 1):
        token = chooser.choose(rng.normal(size=len(vocab.token_bytes)).astype(np.float32))
        if token == NO_TOKEN:
            break
        out += vocab.token_bytes[token]
        count += 1
    return out, count


@pytest.mark.parametrize("budget", [1, 4, 30])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_chooser_always_ends_with_one_json_object_within_budget(vocab, budget, temperature):
    for seed in range(2):
        text, count = run_chooser(vocab, SamplerSettings(temperature=temperature, seed=seed), budget, seed)
        assert count <= budget
        assert isinstance(json.loads(text), dict), text


def test_chooser_stops_once_the_object_is_complete(vocab):
    chooser = JsonChooser(vocab, SamplerSettings(temperature=0), 50)
    close = vocab.tokenizer.encode("{}")[0]
    logits = np.zeros(len(vocab.token_bytes), np.float32)
    logits[close] = 10.0
    assert chooser.choose(logits) == close
    assert chooser.choose(logits) == NO_TOKEN


def test_top_indices_are_the_largest_in_order():
    logits = np.array([0.5, 3.0, -1.0, 2.0, 2.5], np.float32)
    assert top_indices(logits, 3).tolist() == [1, 4, 3]
    assert top_indices(logits, 5).tolist() == [1, 4, 3, 0, 2]
