"""`lljx serve` over several processes: process 0 relays every decoder call, the others replay it.

Only process 0 hears HTTP requests, yet every process must run each program on the mesh, in
the same order. So process 0 wraps each decoder it builds (`Relayed`): before each call it
publishes the call (the method, its host arguments, which earlier state it continues) in
JAX's coordination service, the key-value store every process already talks to; the other
processes (`follow`) read the calls in order and make them on their own decoders, built from
the same model file and strategy. Calls and their dispatch happen under one lock, so process
0 launches programs in the order it published them. Followers see only decoder calls, never
prompts' text: the Rust token loop, tokenizer and grammar run on process 0 alone.
A client that disconnects ends its stream, and the device work runs to its end as published.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import weakref
from collections import deque
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from lljx.sampling import SamplerSettings
from lljx.strategies.api import DecodePlan, Decoder

if TYPE_CHECKING:
    from lljx.models import Model
    from lljx.strategies.api import Strategy

log = logging.getLogger("lljx.server")

PREFIX = "lljx/relay/"
KEEP = 256  # published calls kept in the store; followers trail process 0 by a call or two
POLL_MS = 1000
STATES_KEPT = 8  # states a call may continue from (the loop always continues the newest)


def kv_client() -> Any:
    """JAX's coordination-service client (the key-value store of jax.distributed)."""
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("relaying decoder calls needs jax.distributed to be initialized")
    return client


def encode(message: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    packed = {
        name: {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(np.ascontiguousarray(a)).decode()}
        for name, a in arrays.items()
    }
    return json.dumps({**message, "arrays": packed})


def decode_message(text: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    message = json.loads(text)
    arrays = {
        name: np.frombuffer(base64.b64decode(a["data"]), dtype=np.dtype(a["dtype"])).reshape(a["shape"])
        for name, a in message.pop("arrays").items()
    }
    return message, arrays


class Publisher:
    """Process 0's side: numbered messages in the store, written under one lock."""

    def __init__(self, client: Any = None) -> None:
        self.client = client or kv_client()
        self.lock = threading.RLock()
        self.sequence = 0
        self.decoders = 0
        self.dropped: deque[int] = deque()  # decoders collected since the last message

    def publish(self, message: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        with self.lock:
            while self.dropped:
                self._put({"op": "drop", "decoder": self.dropped.popleft()}, {})
            self._put(message, arrays or {})

    def _put(self, message: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.client.key_value_set(f"{PREFIX}{self.sequence}", encode(message, arrays))
        if self.sequence >= KEEP:
            self.client.key_value_delete(f"{PREFIX}{self.sequence - KEEP}")
        self.sequence += 1

    def stop(self) -> None:
        self.publish({"op": "stop"})


_PUBLISHER: Publisher | None = None


def start_publishing() -> Publisher:
    """From now on (process 0 of `lljx serve`), every decoder built is relayed."""
    global _PUBLISHER
    _PUBLISHER = Publisher()
    return _PUBLISHER


def publisher() -> Publisher | None:
    return _PUBLISHER


def relayed(decoder: Decoder, strategy: Strategy, model: Model, settings: SamplerSettings) -> Decoder:
    """`decoder`, relayed when process 0 publishes (see `start_publishing`)."""
    if _PUBLISHER is None:
        return decoder
    return Relayed(decoder, _PUBLISHER, strategy, model, settings)  # type: ignore[return-value]


def model_identity(model: Model) -> dict[str, Any]:
    """What a follower needs to load the same model: the fields of its ResolvedModel."""
    return {
        "name": model.name, "source": model.source, "format": model.format, "path": model.path,
        "origin": model.origin, "file_size": model.file_size, "ollama_template": model.ollama_template,
        "ollama_params": model.ollama_params, "dtype": model.config.dtype,
    }


class Relayed:
    """A decoder whose every call is published first, then made, both under the publisher's lock."""

    def __init__(self, inner: Decoder, channel: Publisher, strategy: Strategy, model: Model,
                 settings: SamplerSettings) -> None:
        self.inner = inner
        self.channel = channel
        with channel.lock:
            self.id = channel.decoders
            channel.decoders += 1
            channel.publish({"op": "build", "decoder": self.id, "strategy": strategy.name,
                             "model": model_identity(model), "settings": asdict(settings)})
        # id of a recent state's cache -> (its number, the cache, held so the id stays its own)
        self._states: dict[int, tuple[int, Any]] = {}
        self._next_state = 0
        weakref.finalize(self, channel.dropped.append, self.id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prepare(self, plan: DecodePlan, batch: int = 1, *, masked: bool = False) -> None:
        with self.channel.lock:
            self.channel.publish({"op": "call", "decoder": self.id, "method": "prepare", "plan": plan_fields(plan),
                                  "batch": batch, "masked": masked, "state": None, "out": None})
            self.inner.prepare(plan, batch, masked=masked)

    def prefill(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> Any:
        return self._start("prefill", prompt_ids, plan, settings)

    def prefill_logits(self, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None = None) -> Any:
        return self._start("prefill_logits", prompt_ids, plan, settings)

    def _start(self, method: str, prompt_ids: np.ndarray, plan: DecodePlan, settings: SamplerSettings | None) -> Any:
        ids = np.asarray(prompt_ids, dtype=np.int32)
        with self.channel.lock:
            self.channel.publish(
                {"op": "call", "decoder": self.id, "method": method, "plan": plan_fields(plan),
                 "settings": None if settings is None else asdict(settings), "state": None, "out": self._next_state},
                {"ids": ids},
            )
            result = getattr(self.inner, method)(ids, plan, settings)
            return self._remember(result)

    def _continue(self, method: str, state: Any, arrays: dict[str, np.ndarray] | None = None) -> Any:
        with self.channel.lock:
            self.channel.publish(
                {"op": "call", "decoder": self.id, "method": method, "state": self._states[id(state.cache)][0],
                 "out": self._next_state},
                arrays,
            )
            extra = [arrays[name] for name in ("mask", "tokens") if arrays and name in arrays]
            return self._remember(getattr(self.inner, method)(state, *extra))

    def _remember(self, result: Any) -> Any:
        self._states.pop(id(result.cache), None)  # a forced token's state keeps its logits' cache
        self._states[id(result.cache)] = (self._next_state, result.cache)
        while len(self._states) > STATES_KEPT:
            del self._states[next(iter(self._states))]
        self._next_state += 1
        return result

    def decode(self, previous: Any) -> Any:
        return self._continue("decode", previous)

    def forward(self, previous: Any) -> Any:
        return self._continue("forward", previous)

    def sample(self, state: Any, mask: np.ndarray) -> Any:
        return self._continue("sample", state, {"mask": np.asarray(mask, dtype=np.uint32)})

    def force(self, state: Any, tokens: np.ndarray) -> Any:
        return self._continue("force", state, {"tokens": np.asarray(tokens, dtype=np.int32)})


def plan_fields(plan: DecodePlan) -> list[int]:
    return [plan.prompt_len, plan.cache_len]


class Follower:
    """A process other than 0: makes the published calls, in order, on decoders of its own."""

    def __init__(self, client: Any = None) -> None:
        self.client = client or kv_client()
        self.decoders: dict[int, Any] = {}
        self.states: dict[int, dict[int, Any]] = {}
        self.models: dict[tuple[str, str, str], Model] = {}

    def run(self) -> None:
        """Until process 0 says stop (or the run ends under it)."""
        sequence = 0
        while True:
            text = self._next(sequence)
            sequence += 1
            message, arrays = decode_message(text)
            if message["op"] == "stop":
                return
            try:
                self.handle(message, arrays)
            except Exception as error:  # noqa: BLE001 - process 0 made the same call and saw the same failure
                log.warning("a relayed %s failed here as well: %s", message.get("method", message["op"]), error)

    def _next(self, sequence: int) -> str:
        while True:
            try:
                return str(self.client.blocking_key_value_get(f"{PREFIX}{sequence}", POLL_MS))
            except Exception as error:  # noqa: BLE001 - a timeout says nothing came yet; anything else ends the run
                if "DEADLINE_EXCEEDED" not in str(error) and "timed out" not in str(error).lower():
                    raise

    def handle(self, message: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        op = message["op"]
        if op == "build":
            self.build(message)
        elif op == "drop":
            self.decoders.pop(message["decoder"], None)
            self.states.pop(message["decoder"], None)
        elif op == "call":
            self.call(message, arrays)

    def build(self, message: dict[str, Any]) -> None:
        from lljx.models import ResolvedModel, load_resolved
        from lljx.strategies import registry

        found = dict(message["model"])
        dtype = found.pop("dtype")
        key = (found["format"], found["path"], dtype)
        model = self.models.get(key)
        if model is None:
            model = self.models[key] = load_resolved(ResolvedModel(**found), dtype=dtype)
        strategy = registry.load(message["strategy"])
        self.decoders[message["decoder"]] = registry.build(strategy, model, SamplerSettings(**message["settings"]))
        self.states[message["decoder"]] = {}

    def call(self, message: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        decoder, states = self.decoders[message["decoder"]], self.states[message["decoder"]]
        method = message["method"]
        if method == "prepare":
            decoder.prepare(DecodePlan(*message["plan"]), message["batch"], masked=message["masked"])
            return
        if method in ("prefill", "prefill_logits"):
            settings = None if message["settings"] is None else SamplerSettings(**message["settings"])
            result = getattr(decoder, method)(arrays["ids"], DecodePlan(*message["plan"]), settings)
        else:
            extra = [arrays[name] for name in ("mask", "tokens") if name in arrays]
            result = getattr(decoder, method)(states[message["state"]], *extra)
        states[message["out"]] = result
        for old in [n for n in states if n <= message["out"] - STATES_KEPT]:
            del states[old]


def follow() -> None:
    """The body of `lljx serve` on a process other than 0."""
    Follower().run()
