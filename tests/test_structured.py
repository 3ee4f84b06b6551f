"""Structured output without running the model: format values, schema files, and the grammars the Rust
engine compiles over the embedded model's real vocabulary (what they allow, force, cache and refuse)."""

from __future__ import annotations

import json
import time

import pytest

from lljx import _native
from lljx.models import load_tokenizer
from lljx.structured import JSON_OBJECT, GrammarError, read_format, schema_for_format

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def stop_ids(tokenizer):
    return [tokenizer.eos_id, tokenizer.token_to_id("<|im_end|>")]


@pytest.fixture(scope="module")
def grammars(tokenizer, stop_ids):
    return _native.Grammars(tokenizer._native, stop_ids=stop_ids, vocab_size=tokenizer.vocab_size)


def compile_text(grammars, schema) -> tuple[_native.Grammar, int, bool]:
    return grammars.compile(json.dumps(schema))


def test_format_values_follow_ollama():
    assert schema_for_format(None) is None and schema_for_format("") is None
    assert schema_for_format("json") == JSON_OBJECT == {"type": "object"}
    assert schema_for_format(PERSON) is PERSON
    with pytest.raises(GrammarError, match='"json" or a JSON schema object, got "yaml"'):
        schema_for_format("yaml")


def test_command_line_formats_read_json_a_file_or_inline_text(tmp_path):
    assert read_format("json") == JSON_OBJECT
    assert read_format(' {"type": "array"} ') == {"type": "array"}
    path = tmp_path / "person.json"
    path.write_text(json.dumps(PERSON))
    assert read_format(str(path)) == PERSON
    with pytest.raises(GrammarError, match="No such file"):
        read_format(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GrammarError, match="bad.json is not valid JSON"):
        read_format(str(tmp_path / "bad.json"))
    with pytest.raises(GrammarError, match="must be a JSON object, got list"):
        read_format(str(path.with_name("list.json").write_text("[1]") and path.with_name("list.json")))
    with pytest.raises(GrammarError, match="inline schema is not valid JSON"):
        read_format('{"type": ')
    # What argv makes of bytes that are not UTF-8, and a file holding such bytes.
    with pytest.raises(GrammarError, match="inline schema is not valid UTF-8"):
        read_format('{"enum": ["\udcff"]}')
    (tmp_path / "latin1.json").write_bytes(b'{"enum": ["caf\xe9"]}')
    with pytest.raises(GrammarError, match="latin1.json: not a UTF-8 text file"):
        read_format(str(tmp_path / "latin1.json"))


def test_the_first_tokens_open_the_object_and_specials_never_appear(tokenizer, grammars, stop_ids):
    grammar, _, _ = compile_text(grammars, PERSON)
    first = grammar.allowed_after([])
    assert first, "something must be allowed"
    for token in first:
        text = tokenizer.token_bytes(token)
        assert text.lstrip(b" \n\t").startswith(b"{") or not text.strip(), text
    assert not set(first) & set(tokenizer.special_ids)
    assert grammar.mask_words == grammars.mask_words == -(-tokenizer.vocab_size // 32)


def test_a_whole_reply_walks_the_grammar_and_then_it_is_complete(tokenizer, grammars, stop_ids):
    grammar, _, _ = compile_text(grammars, PERSON)
    ids = tokenizer.encode('{"name": "Ada", "age": 36}')
    for i, token in enumerate(ids):
        assert token in grammar.allowed_after(ids[:i]), tokenizer.decode(ids[: i + 1])
    assert grammar.is_complete_after(ids)
    assert not grammar.is_complete_after(ids[:-1])
    # A property the schema does not have is refused at its first character.
    bad = tokenizer.encode('{"nam')
    assert tokenizer.encode('{"x')[-1] not in grammar.allowed_after(bad[:-1])


def test_stop_tokens_are_allowed_only_where_the_reply_may_end(tokenizer, grammars, stop_ids):
    grammar, _, _ = compile_text(grammars, {"type": "integer"})
    assert not set(stop_ids) & set(grammar.allowed_after([]))
    after = grammar.allowed_after(tokenizer.encode("42"))
    assert set(stop_ids) <= set(after) and tokenizer.encode("7")[0] in after


def test_a_const_forces_its_tokens(tokenizer, grammars):
    schema = {"type": "object", "properties": {"kind": {"const": "circle"}}, "required": ["kind"],
              "additionalProperties": False}
    grammar, _, _ = compile_text(grammars, schema)
    prefix = tokenizer.encode('{"kind": "')
    assert len(grammar.allowed_after(prefix)) == 1  # the token loop takes such a token without sampling


def test_schemas_compile_once_whatever_their_spacing(grammars):
    schema = {"type": "object", "properties": {"zz_unique": {"type": "boolean"}}}
    _, first_ns, cached = grammars.compile(json.dumps(schema))
    assert not cached
    _, again_ns, cached = grammars.compile(json.dumps(schema, indent=4))
    assert cached and again_ns < first_ns


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "strng"}, "strng"),
    ({"$ref": "#/$defs/nowhere"}, "nowhere"),
    ({"$ref": "https://example.com/person.json"}, "example.com"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}, "required": ["a"]},
     "required property 'a' is unsatisfiable"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"if": {"required": ["a"]}, "then": {"required": ["b"]}}, '"if", "then"'),
    ({"type": "string", "format": "shoe-size"}, "Unknown format: shoe-size"),
])
def test_schemas_the_engine_cannot_honour_are_refused_by_name(grammars, schema, fragment):
    with pytest.raises(GrammarError, match=fragment) as refused:
        compile_text(grammars, schema)
    assert "\n" not in str(refused.value)


def test_text_that_is_no_schema_is_refused(grammars):
    with pytest.raises(GrammarError, match="not valid JSON"):
        grammars.compile('{"type": ')
    with pytest.raises(GrammarError, match="must be an object, got an array"):
        grammars.compile("[]")


def test_too_large_and_too_slow_schemas_are_refused_in_time(tokenizer, stop_ids):
    small = _native.Grammars(tokenizer._native, stop_ids=stop_ids, vocab_size=tokenizer.vocab_size,
                             max_schema_bytes=1000)
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(200)}}
    with pytest.raises(GrammarError, match="more than the limit of 1000"):
        compile_text(small, huge)
    hurried = _native.Grammars(tokenizer._native, stop_ids=stop_ids, vocab_size=tokenizer.vocab_size,
                               compile_timeout_ms=5)
    slow = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "pattern": f"^[a-z]{{{i % 30}}}-[0-9]{{2,{i + 2}}}$"} for i in range(800)
    }}
    start = time.perf_counter()
    with pytest.raises(GrammarError, match="longer than 5 ms to compile"):
        compile_text(hurried, slow)
    assert time.perf_counter() - start < 1.0
