"""Structured output: a reply constrained to a JSON schema, the grammar compiled once per (model, schema).

`format: "json"` (Ollama's word) means any JSON object, the schema `{"type": "object"}`; a
schema object constrains the whole reply to it. Grammars are compiled and enforced in Rust
(llguidance, through `lljx._native.Grammars`): the token loop computes each step's mask and
the device-side sampler applies it.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lljx import _native
from lljx._native import GrammarError

if TYPE_CHECKING:
    from lljx.models import Model

JSON_OBJECT: dict[str, Any] = {"type": "object"}

__all__ = ["JSON_OBJECT", "CompiledSchema", "GrammarError", "compile_schema", "grammars_for", "read_format",
           "schema_for_format"]


@dataclass(frozen=True)
class CompiledSchema:
    """A schema's grammar for one model, and what compiling it cost this request."""

    grammar: _native.Grammar
    compile_ns: int
    cached: bool


def schema_for_format(value: Any) -> dict[str, Any] | None:
    """The schema an Ollama `format` value stands for: None for none, `"json"` for any object."""
    if value is None or value == "":
        return None
    if value == "json":
        return dict(JSON_OBJECT)
    if isinstance(value, dict):
        return value
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool, list)) else repr(value)
    raise GrammarError(f'format must be "json" or a JSON schema object, got {shown[:40]}')


def read_format(text: str) -> dict[str, Any]:
    """A command-line format: `json`, a schema file, or a schema written inline."""
    stripped = text.strip()
    if stripped == "json":
        return dict(JSON_OBJECT)
    if stripped.startswith("{"):
        source, where = stripped, "the inline schema"
        try:
            source.encode("utf-8")  # argv hands bytes that are not UTF-8 over as lone surrogates
        except UnicodeEncodeError:
            raise GrammarError("the inline schema is not valid UTF-8") from None
    else:
        try:
            source, where = Path(text).read_text(encoding="utf-8"), text
        except OSError as error:
            raise GrammarError(f'{text}: {error.strerror or error} (give "json", a schema file or a schema)') from None
        except UnicodeDecodeError:
            raise GrammarError(f"{text}: not a UTF-8 text file") from None
    try:
        schema = json.loads(source)
    except json.JSONDecodeError as error:
        raise GrammarError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(schema, dict):
        raise GrammarError(f"{where} must be a JSON object, got {type(schema).__name__}")
    return schema


_GRAMMARS: weakref.WeakKeyDictionary[Model, _native.Grammars] = weakref.WeakKeyDictionary()


def grammars_for(model: Model) -> _native.Grammars:
    """The model's grammar cache, made on first use (its token trie takes a while for a big vocabulary)."""
    grammars = _GRAMMARS.get(model)
    if grammars is None:
        grammars = _native.Grammars(
            model.tokenizer._native, stop_ids=list(model.stop_token_ids), vocab_size=model.config.vocab_size
        )
        _GRAMMARS[model] = grammars
    return grammars


def compile_schema(model: Model, schema: Mapping[str, Any]) -> CompiledSchema:
    """The grammar of `schema` for `model`, compiled or from the cache; GrammarError names what is wrong.

    The first schema of a model also pays for setting up its grammar cache, and says so in compile_ns."""
    try:
        text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise GrammarError(f"the schema cannot be written as JSON: {error}") from None
    start = time.perf_counter_ns()
    grammars = grammars_for(model)
    setup_ns = time.perf_counter_ns() - start
    grammar, compile_ns, cached = grammars.compile(text)
    return CompiledSchema(grammar, setup_ns + compile_ns, cached)
