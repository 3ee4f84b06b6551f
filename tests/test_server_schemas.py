"""Request checks, option merging, budgets and host parsing of `lljx serve`, without a server."""

from __future__ import annotations

import asyncio
import socket

import click
import pytest

from lljx.server.cli import listen, parse_host
from lljx.server.jobs import budget_for
from lljx.server.schemas import (
    RequestError,
    parse_body,
    parse_chat,
    parse_generate,
    parse_keep_alive,
    parse_options,
    parse_show,
)


def rejected(call, *args) -> RequestError:
    with pytest.raises(RequestError) as caught:
        call(*args)
    return caught.value


def test_body_must_be_a_json_object():
    assert rejected(parse_body, b"{nope").status == 400
    assert "invalid JSON" in rejected(parse_body, b"{nope").message
    assert "object" in rejected(parse_body, b"[1, 2]").message
    assert "invalid JSON" in rejected(parse_body, b"\xff\xfe").message


def test_lone_surrogate_escapes_become_replacement_characters_as_in_ollama():
    body = parse_body(rb'{"prompt": "\ud800 a \ud83e\udd16 b", "messages": [{"content": "\udfff"}]}')
    assert body == {"prompt": "\ufffd a \U0001f916 b", "messages": [{"content": "\ufffd"}]}
    body["prompt"].encode("utf-8")  # what the tokenizer needs


def test_generate_defaults_and_field_errors():
    parsed = parse_generate({"model": "smollm2", "prompt": "hi"})
    assert parsed.stream is True and parsed.schema is None and parsed.raw is False and parsed.options == {}
    assert rejected(parse_generate, {"prompt": "hi"}).message == "model is required"
    assert "prompt must be a string" in rejected(parse_generate, {"model": "m", "prompt": 5}).message
    assert "stream must be true or false" in rejected(parse_generate, {"model": "m", "stream": "yes"}).message
    assert "options must be an object" in rejected(parse_generate, {"model": "m", "options": [1]}).message
    assert 'format must be "json" or a JSON schema object, got "xml"' == rejected(
        parse_generate, {"model": "m", "format": "xml"}).message
    assert "format" in rejected(parse_generate, {"model": "m", "format": ["json"]}).message
    assert "images" in rejected(parse_generate, {"model": "m", "images": ["aGk="]}).message
    assert "context" in rejected(parse_generate, {"model": "m", "context": [1, -2]}).message
    assert "think" in rejected(parse_generate, {"model": "m", "think": True}).message
    assert parse_generate({"model": "m", "format": "json", "context": [1, 2]}).schema == {"type": "object"}
    person = {"type": "object", "properties": {"name": {"type": "string"}}}
    assert parse_chat({"model": "m", "format": person}).schema == person


def test_chat_messages_are_checked_by_index():
    parsed = parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})
    assert parsed.messages[1] == {"role": "assistant", "content": ""}
    assert "messages must be a list" in rejected(parse_chat, {"model": "m", "messages": "hi"}).message
    assert "messages[0].role is required" in rejected(parse_chat, {"model": "m", "messages": [{"content": "x"}]}).message
    assert "messages[1] must be an object" in rejected(parse_chat, {"model": "m", "messages": [{"role": "user"}, 3]}).message
    message = rejected(parse_chat, {"model": "m", "messages": [{"role": "user", "content": 7}]}).message
    assert "messages[0].content must be a string" in message


def test_show_accepts_the_old_name_field():
    assert parse_show({"name": "smollm2"}).model == "smollm2"
    assert parse_show({"model": "x", "verbose": True}).verbose


def test_options_merge_ollama_defaults_model_defaults_and_request():
    options = parse_options({})
    assert (options.temperature, options.top_k, options.top_p, options.seed, options.num_predict) == (0.8, 40, 0.9, None, None)
    options = parse_options({"temperature": 0, "stop": "END", "num_predict": 64.0}, {"temperature": 0.5, "stop": ["x"]})
    assert options.temperature == 0 and options.stop == ("END",) and options.num_predict == 64
    assert parse_options({}, {"stop": ["<|end|>"], "num_ctx": 2048}).stop == ("<|end|>",)
    assert parse_options({"seed": -1}).seed is None and parse_options({"seed": 7}).seed == 7
    assert parse_options({"repeat_penalty": 1.1, "num_thread": 2, "unknown_knob": "x"}).top_k == 40


@pytest.mark.parametrize(("options", "fragment"), [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"top_k": -3}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_p": 0}, "top_p"),
    ({"min_p": 2}, "min_p"),
    ({"seed": 2**64}, "seed"),
    ({"num_predict": -5}, "num_predict"),
    ({"num_predict": True}, "num_predict"),
    ({"stop": [1]}, "stop"),
    ({"num_ctx": 0}, "num_ctx"),
    ({"repeat_penalty": "high"}, "repeat_penalty"),
])
def test_bad_option_values_are_400_naming_the_option(options, fragment):
    error = rejected(lambda: parse_options(options).sampler())
    assert error.status == 400 and fragment in error.message


def test_keep_alive_durations():
    assert parse_keep_alive("5m") == 300 and parse_keep_alive("1h30m") == 5400 and parse_keep_alive(0) == 0
    assert parse_keep_alive("-1") == -1 and parse_keep_alive("-1m") == -60 and parse_keep_alive(None) is None
    assert "keep_alive" in rejected(parse_keep_alive, "soon").message


def test_budget_respects_num_predict_num_ctx_and_the_model():
    options = parse_options({"num_predict": 100})
    assert budget_for(options, 30, 8192) == (4096, 100)
    assert budget_for(parse_options({}), 30, 8192) == (4096, 4066)
    assert budget_for(parse_options({"num_ctx": 100000}), 30, 8192) == (8192, 8162)
    error = rejected(budget_for, parse_options({"num_ctx": 20}), 30, 8192)
    assert "num_ctx" in error.message and "30 tokens" in error.message


@pytest.mark.parametrize(("value", "expected"), [
    ("", ("127.0.0.1", 11434)),
    ("0.0.0.0", ("0.0.0.0", 11434)),
    ("0.0.0.0:8080", ("0.0.0.0", 8080)),
    (":9000", ("127.0.0.1", 9000)),
    ("http://localhost:1234/", ("localhost", 1234)),
    ("http://example.com", ("example.com", 80)),
    ("https://example.com", ("example.com", 443)),
    ("[::1]:5000", ("::1", 5000)),
    ("::1", ("::1", 11434)),
])
def test_host_is_read_like_ollama_host(value, expected):
    assert parse_host(value) == expected


@pytest.mark.parametrize("value", ["localhost:99999", "localhost:http", "ftp://x"])
def test_bad_hosts_are_refused(value):
    with pytest.raises(click.BadParameter):
        parse_host(value)


def test_connections_to_the_listening_socket_send_at_once():
    """Each streamed chunk leaves when written: asyncio sets TCP_NODELAY on what `listen` accepts."""

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listen("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
