"""`format` on a real `lljx serve`: the seed's PromptPool flow through the official client, a corpus of
schemas run greedy and sampled, streaming and not, every reply that ends by itself valid (checked by
the `jsonschema` package), and bad schemas answered with a 400 that names the fault."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import ollama
import pytest
from pydantic import BaseModel, Field

from schema_corpus import CORPUS
from serve_process import Server, start_server, stop_server

pytestmark = pytest.mark.slow

MODEL = "smollm2"
BUDGET = 32
SETTINGS = {"greedy": {"temperature": 0}, "sampled": {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "seed": 7}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve-structured"), "--port", "0", "--dtype", "auto")
    yield running
    stop_server(running)


def generate(client: ollama.Client, prompt: str, schema: dict[str, Any], options: dict[str, Any], stream: bool
             ) -> tuple[str, dict[str, Any]]:
    """The reply's text and its final object (metrics, done_reason), streamed or not."""
    options = {**options, "num_predict": BUDGET}
    if not stream:
        reply = client.chat(model=MODEL, messages=[{"role": "user", "content": prompt}], format=schema, options=options)
        return reply.message.content, reply.model_dump()
    parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": prompt}], format=schema,
                             options=options, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    return "".join(p.message.content for p in parts), parts[-1].model_dump()


@pytest.fixture(scope="module")
def replies(server: Server) -> dict[tuple[str, str, bool], tuple[str, dict[str, Any]]]:
    """Every corpus schema, greedy and sampled, streamed and not: 4 replies each."""
    out = {}
    with server.client() as client:
        for name, (prompt, schema) in CORPUS.items():
            for setting, options in SETTINGS.items():
                for stream in (False, True):
                    out[name, setting, stream] = generate(client, prompt, schema, options, stream)
    return out


def test_the_corpus_covers_the_schema_kinds():
    assert len(CORPUS) >= 20
    text = json.dumps([schema for _, schema in CORPUS.values()])
    for keyword in ("anyOf", "oneOf", "allOf", "enum", "const", "pattern", "minLength", "maxLength", "minItems",
                    "maxItems", "minimum", "exclusiveMinimum", "maximum", "required", '"additionalProperties": false',
                    '"$ref": "#/$defs/', "format"):
        assert keyword in text, keyword


@pytest.mark.parametrize("name", list(CORPUS))
def test_every_reply_that_ends_by_itself_follows_its_schema(replies, name):
    schema = CORPUS[name][1]
    for setting in SETTINGS:
        text, final = replies[name, setting, False]
        streamed, streamed_final = replies[name, setting, True]
        assert streamed == text, (setting, "a stream must carry the same reply")
        assert final["done_reason"] == streamed_final["done_reason"] in ("stop", "length")
        assert final["eval_count"] <= BUDGET
        if final["done_reason"] == "stop":
            jsonschema.validate(json.loads(text), schema)
        else:
            assert final["eval_count"] == BUDGET


def test_most_replies_end_by_themselves_within_the_budget(replies):
    ended = [key for key, (_, final) in replies.items() if final["done_reason"] == "stop"]
    assert len(ended) >= len(replies) // 2, sorted(set(replies) - set(ended))


def test_replies_report_their_grammar_and_mask_times(server):
    raw = {"model": MODEL, "messages": [{"role": "user", "content": "Give a score."}], "stream": False,
           "format": {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]},
           "options": {"temperature": 0, "num_predict": BUDGET}}
    final = httpx.post(f"{server.url}/api/chat", json=raw, timeout=300).json()
    assert final["grammar_duration"] > 0 and final["mask_duration_p99"] >= final["mask_duration_p50"] > 0
    plain = httpx.post(f"{server.url}/api/chat", json={**raw, "format": None}, timeout=300).json()
    assert "mask_duration_p50" not in plain and "grammar_duration" not in plain


def test_the_seed_prompt_pool_flow_parses_with_pydantic(server):
    n_prompts = 3

    # A 135M model does not stop a list by itself the way the seed's 3B one does, so the list is bounded.
    class PromptPool(BaseModel):
        prompts: list[str] = Field(max_length=n_prompts)

    prompt = (f"Generate {n_prompts} LLM prompts. Each prompt should pose an interesting question about math and "
              "science in 3 to 6 words.\nYour response must be formatted as JSON.")
    with server.client() as client:
        response = client.chat(model=MODEL, messages=[{"role": "user", "content": prompt}],
                               format=PromptPool.model_json_schema(), options={"temperature": 0, "num_predict": 200})
    prompt_pool = PromptPool.model_validate_json(response.message.content)
    assert response.done_reason == "stop" and 1 <= len(prompt_pool.prompts) <= n_prompts


def test_format_json_is_any_object_and_a_short_budget_ends_with_length(server):
    prompt, greedy = "Describe a dog in JSON with two keys.", {"temperature": 0}
    with server.client() as client:
        reply = client.generate(model=MODEL, prompt=prompt, format="json", options={**greedy, "num_predict": 60})
        short = client.generate(model=MODEL, prompt=prompt, format="json", options={**greedy, "num_predict": 5})
    assert reply.response.startswith("{") and reply.eval_count > 5
    if reply.done_reason == "stop":
        assert isinstance(json.loads(reply.response), dict)
    # Cut off as Ollama cuts it: the same reply's first tokens, done_reason "length".
    assert short.done_reason == "length" and short.eval_count == 5 and reply.response.startswith(short.response)


@pytest.mark.parametrize(("fmt", "fragment"), [
    ({"type": "strng"}, "strng"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}, "missing"),
    ({"$ref": "https://example.com/schema.json"}, "example.com"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 64} for i in range(4000)}},
     "more than the limit"),
    ("yaml", 'format must be "json" or a JSON schema object'),
])
def test_bad_schemas_get_a_400_naming_the_fault(server, fmt, fragment):
    body = {"model": MODEL, "prompt": "hi", "format": fmt, "stream": False}
    reply = httpx.post(f"{server.url}/api/generate", json=body, timeout=120)
    assert reply.status_code == 400 and fragment in reply.json()["error"], reply.text
    if not isinstance(fmt, dict):
        return  # the official client refuses such a format itself
    with server.client() as client, pytest.raises(ollama.ResponseError) as refused:
        list(client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], format=fmt, stream=True))
    assert refused.value.status_code == 400 and fragment in refused.value.error
