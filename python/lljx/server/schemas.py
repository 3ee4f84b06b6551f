"""Request bodies of the Ollama API parsed into plain records; every rejection names the field at fault."""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lljx.sampling import SamplerSettings, SamplingError

# Ollama's defaults (api.DefaultOptions); num_ctx is also capped by the model's own context.
DEFAULT_OPTIONS: dict[str, Any] = {
    "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "seed": -1, "num_predict": -1, "stop": [],
    "num_ctx": 4096,
}
# Options Ollama knows that lljx accepts and ignores (penalties, GPU and threading knobs...).
IGNORED_OPTIONS = frozenset({
    "num_keep", "typical_p", "repeat_last_n", "repeat_penalty", "presence_penalty", "frequency_penalty",
    "penalize_newline", "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "numa", "num_batch", "num_gpu",
    "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock", "num_thread",
    "draft_num_predict",
})
ROLES = ("system", "user", "assistant", "tool")


class RequestError(Exception):
    """A request the server answers with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad(message: str) -> RequestError:
    return RequestError(400, message)


@dataclass(frozen=True)
class Options:
    """The options lljx honours, checked; `seed` None means a fresh random seed per request."""

    temperature: float
    top_k: int
    top_p: float
    min_p: float
    seed: int | None
    num_predict: int | None  # None: until the context is full
    stop: tuple[str, ...]
    num_ctx: int

    def sampler(self) -> SamplerSettings:
        seed = secrets.randbelow(2**63) if self.seed is None else self.seed
        try:
            return SamplerSettings(self.temperature, self.top_k, self.top_p, self.min_p, seed)
        except SamplingError as error:
            raise bad(f"invalid option: {error}") from None


@dataclass(frozen=True)
class Common:
    """Fields shared by /api/generate and /api/chat."""

    model: str
    stream: bool
    schema: dict[str, Any] | None  # the reply's JSON schema: `format` as a schema, "json" as {"type": "object"}
    keep_alive: float | None  # seconds; None: the server's default (stay loaded)
    options: Mapping[str, Any]  # as sent; merged over the model's defaults by `parse_options`


@dataclass(frozen=True)
class GenerateRequest(Common):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    context: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChatRequest(Common):
    messages: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class ShowRequest:
    model: str
    verbose: bool = False


@dataclass
class Fields:
    """Typed getters over a request object; errors say which field and what was wrong."""

    body: Mapping[str, Any]
    prefix: str = ""
    used: set[str] = field(default_factory=set)

    def get(self, name: str, kinds: type | tuple[type, ...], default: Any, what: str) -> Any:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            raise bad(f"{self.prefix}{name} must be {what}, got {_show(value)}")
        return value

    def string(self, name: str, default: str | None = "") -> Any:
        return self.get(name, str, default, "a string")

    def flag(self, name: str, default: bool) -> bool:
        return bool(self.get(name, bool, default, "true or false"))


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad(f"invalid JSON in request body: {error}") from None
    if not isinstance(value, dict):
        raise bad(f"the request body must be a JSON object, got {type(value).__name__}")
    return replace_lone_surrogates(value)


def replace_lone_surrogates(value: Any) -> Any:
    """`value` with every lone UTF-16 surrogate escape (valid JSON, "\\ud800") in its strings
    replaced by U+FFFD, as Ollama's JSON decoder does; no tokenizer takes them as they are."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_lone_surrogates(v) for v in value]
    return value


def model_name(body: Mapping[str, Any], *, alias: str | None = None) -> str:
    fields = Fields(body)
    name = fields.string("model", None)
    if name is None and alias is not None:
        name = fields.string(alias, None)
    if not name or not name.strip():
        raise bad("model is required")
    return str(name).strip()


def common(body: Mapping[str, Any]) -> dict[str, Any]:
    fields = Fields(body)
    options = fields.get("options", dict, {}, "an object")
    think = body.get("think")
    if think not in (None, False, ""):
        raise bad("think: this model does not support thinking")
    return {
        "model": model_name(body),
        "stream": fields.flag("stream", True),
        "schema": parse_format(body.get("format")),
        "keep_alive": parse_keep_alive(body.get("keep_alive")),
        "options": options,
    }


def parse_format(value: Any) -> dict[str, Any] | None:
    """The schema the reply must follow: "json" is any object (as in Ollama), a dict is a schema.

    Whether the schema compiles is the model's grammar cache's to say (a 400 naming the fault)."""
    if value in (None, ""):
        return None
    if value == "json":
        return {"type": "object"}
    if isinstance(value, dict):
        return value
    raise bad(f'format must be "json" or a JSON schema object, got {_show(value)}')


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Seconds from a number or a Go duration ("5m", "1h30m", "-1"); negative means forever."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        parts = _DURATION_PART.findall(body)
        if parts and "".join(n + u for n, u in parts) == body:
            return sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    raise bad(f"keep_alive must be a duration like \"5m\" or a number of seconds, got {_show(value)}")


def parse_generate(body: Mapping[str, Any]) -> GenerateRequest:
    fields = Fields(body)
    for name, what in (("images", "images"), ("suffix", "a suffix (fill-in-the-middle)"), ("template", "a template")):
        if body.get(name):
            raise bad(f"{name}: this server does not support {what}")
    context = fields.get("context", list, [], "a list of token ids")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in context):
        raise bad("context must be a list of token ids (integers >= 0)")
    return GenerateRequest(
        **common(body),
        prompt=fields.string("prompt"),
        system=fields.string("system", None),
        raw=fields.flag("raw", False),
        context=tuple(context),
    )


def parse_chat(body: Mapping[str, Any]) -> ChatRequest:
    fields = Fields(body)
    messages = fields.get("messages", list, [], "a list of messages")
    tools = fields.get("tools", list, None, "a list of tools")
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        raise bad("tools must be a list of objects")
    return ChatRequest(
        **common(body),
        messages=tuple(parse_message(i, m) for i, m in enumerate(messages)),
        tools=tuple(tools) if tools else None,
    )


def parse_message(index: int, message: Any) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad(f"{where} must be an object, got {_show(message)}")
    fields = Fields(message, prefix=f"{where}.")
    role = fields.string("role", None)
    if not role:
        raise bad(f"{where}.role is required")
    if message.get("images"):
        raise bad(f"{where}.images: this server does not support images")
    out: dict[str, Any] = {"role": role, "content": fields.string("content")}
    if message.get("tool_calls"):
        out["tool_calls"] = fields.get("tool_calls", list, [], "a list")
    for name in ("tool_name", "name"):
        if message.get(name):
            out[name] = fields.string(name)
    return out


def parse_show(body: Mapping[str, Any]) -> ShowRequest:
    return ShowRequest(model_name(body, alias="name"), Fields(body).flag("verbose", False))


def parse_options(sent: Mapping[str, Any], model_defaults: Mapping[str, Any] | None = None) -> Options:
    """Ollama's defaults, then the model's (from an Ollama manifest), then the request's; each checked."""
    merged = {**DEFAULT_OPTIONS, **{k: v for k, v in (model_defaults or {}).items() if k in DEFAULT_OPTIONS}}
    merged.update({k: v for k, v in sent.items() if v is not None})
    for name in IGNORED_OPTIONS & sent.keys():
        if not isinstance(sent[name], (int, float, bool)):
            raise bad(f"invalid option {name}: expected a number or a boolean, got {_show(sent[name])}")
    seed = _integer(merged, "seed", None, 2**63 - 1)
    num_predict = _integer(merged, "num_predict", -2, None)
    return Options(
        temperature=_number(merged, "temperature"),
        top_k=_integer(merged, "top_k", 0, None),
        top_p=_number(merged, "top_p"),
        min_p=_number(merged, "min_p"),
        seed=None if seed < 0 else seed,
        num_predict=None if num_predict < 0 else num_predict,
        stop=_stops(merged["stop"]),
        num_ctx=_integer(merged, "num_ctx", 1, None),
    )


def _number(options: Mapping[str, Any], name: str) -> float:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"invalid option {name}: expected a finite number, got {_show(value)}")
    return float(value)


def _integer(options: Mapping[str, Any], name: str, low: int | None, high: int | None) -> int:
    value = options[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON clients may send 64.0
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"invalid option {name}: expected an integer, got {_show(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise bad(f"invalid option {name}: must be {bounds}, got {value}")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad(f"invalid option stop: expected a list of strings, got {_show(value)}")
    return tuple(s for s in items if s)
