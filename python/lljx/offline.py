"""`lljx generate --jsonl`: many prompts run together on a batch engine, one JSON line out per prompt.

Input lines are a JSON string (the prompt) or an object {"prompt": ..., "id": ..., "system": ...};
blank lines are skipped. The whole input is read and checked before the model loads, so bad
input is one error and no output. Results are written in input order, each as soon as it and
every line before it are done: {"id", "text", "stats"} on success (ids default to line numbers), {"id", "error"} when that
prompt alone failed (its prompt did not fit the context, say).
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import click

from lljx.generation import GenerationError


@dataclass(frozen=True)
class Item:
    id: Any
    prompt: str
    system: str | None = None


def read_items(path: str) -> list[Item]:
    """Every item of a JSONL file ('-': stdin), or a one-line `ClickException` naming the line."""
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    except OSError as error:
        raise click.ClickException(f"{path}: {error.strerror}") from None
    with stream:
        try:
            lines = stream.readlines()
        except UnicodeDecodeError:
            raise click.ClickException(f"{path}: not UTF-8 text") from None
    items = [item_of(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise click.ClickException(f"{path}: no prompts (one JSON string or object per line)")
    return items


def item_of(path: str, number: int, line: str) -> Item:
    where = f"{path}:{number}"
    try:
        # stdin hands bytes that are not UTF-8 over as lone surrogates rather than failing.
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise click.ClickException(f"{where}: not UTF-8 text") from None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise click.ClickException(f"{where}: not valid JSON ({error.msg})") from None
    if isinstance(value, str):
        return Item(number, value)
    if not isinstance(value, dict):
        raise click.ClickException(f"{where}: expected a JSON string or object, got {type(value).__name__}")
    unknown = set(value) - {"id", "prompt", "system"}
    if unknown:
        raise click.ClickException(f"{where}: unknown field {sorted(unknown)[0]!r} (expected id, prompt, system)")
    prompt, system = value.get("prompt"), value.get("system")
    if not isinstance(prompt, str):
        raise click.ClickException(f"{where}: 'prompt' must be a string")
    if system is not None and not isinstance(system, str):
        raise click.ClickException(f"{where}: 'system' must be a string")
    return Item(value.get("id", number), prompt, system)


def stats_record(stats: Any) -> dict[str, Any]:
    """The stats a reader wants per prompt (durations in nanoseconds, as Ollama reports them)."""
    return {
        "prompt_tokens": stats.prompt_tokens, "prompt_cached": stats.prompt_cached, "gen_tokens": stats.gen_tokens,
        "stop_reason": stats.stop_reason,
        "queue_ns": stats.queue_ns, "ttft_ns": stats.ttft_ns, "prefill_ns": stats.prefill_ns,
        "decode_ns": stats.decode_ns, "total_ns": stats.total_ns, "decode_tps": round(stats.decode_tps, 2),
    }


class InOrder:
    """Writes results in input order as they become available (any thread may call `put`)."""

    def __init__(self, out: IO[str], count: int) -> None:
        self.out = out
        self.results: dict[int, dict[str, Any]] = {}
        self.next = 0
        self.count = count
        self.failures = 0
        self.lock = threading.Condition()

    def put(self, index: int, record: dict[str, Any]) -> None:
        with self.lock:
            self.failures += "error" in record
            self.results[index] = record
            while self.next in self.results:
                self.out.write(json.dumps(self.results.pop(self.next), ensure_ascii=False) + "\n")
                self.out.flush()
                self.next += 1
            self.lock.notify_all()

    def wait(self) -> None:
        with self.lock:
            while self.next < self.count:
                self.lock.wait()


def run_jsonl(
    items: Iterable[Item], *, model: Any, strategy: Any, slots: int | None, max_tokens: int, settings: Any,
    stop_strings: tuple[str, ...], grammar: Any, raw: bool, seeded: bool, system: str | None, out: IO[str],
) -> int:
    """Run every item on a batch engine; returns how many failed. `seeded` False: each prompt
    draws its own random seed (a given seed is every prompt's, so a line's reply does not
    depend on where it sits in the file)."""
    from dataclasses import replace

    from lljx.batching import BatchEngine, slots_for
    from lljx.generation import chat_prompt_ids
    from lljx.strategies import registry

    decoder = registry.build_slots(strategy, model)
    if decoder is None:
        raise click.ClickException(f"strategy {strategy.name} serves one request at a time here (it has no slots, or runs on a mesh); --jsonl needs slots")
    items = list(items)
    engine = BatchEngine(model, decoder, slots=slots_for(decoder, slots), name="lljx-jsonl")
    writer = InOrder(out, len(items))
    try:
        for index, item in enumerate(items):
            done = Collect(writer, index, item)
            try:
                ids = chat_prompt_ids(model, item.prompt, system=system if item.system is None else item.system, raw=raw)
                own = settings if seeded else replace(settings, seed=secrets.randbelow(2**63))
                engine.submit(ids, max_tokens=max_tokens, settings=own, callback=done,
                              stop_strings=() if grammar is not None else stop_strings, grammar=grammar)
            except GenerationError as error:
                writer.put(index, {"id": item.id, "error": str(error)})
        writer.wait()
    finally:
        engine.close("stopped", timeout=30)
    return writer.failures


class Collect:
    """One prompt's callback on the engine thread: gathers its text, hands its record to the writer."""

    def __init__(self, writer: InOrder, index: int, item: Item) -> None:
        self.writer, self.index, self.item = writer, index, item
        self.parts: list[str] = []

    def __call__(self, text: str, end: str, detail: Any) -> None:
        self.parts.append(text)
        if end == "done":
            self.writer.put(self.index, {"id": self.item.id, "text": "".join(self.parts), "stats": stats_record(detail.stats)})
        elif end:
            self.writer.put(self.index, {"id": self.item.id, "error": str(detail) if end == "failed" else "cancelled"})
