"""Reply objects shaped as Ollama's: stream chunks, final objects with metrics, /api/ps rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lljx.generation import Stats
from lljx.server.catalog import details, digest, timestamp
from lljx.server.pool import Loaded


@dataclass(frozen=True)
class Shape:
    """How /api/generate and /api/chat differ: where the text goes, and whether `context` is returned."""

    chat: bool

    def chunk(self, model: str, text: str) -> dict[str, Any]:
        return {"model": model, "created_at": timestamp(), **self._text(text), "done": False}

    def final(self, model: str, text: str, done_reason: str, metrics: dict[str, int], context: list[int] | None = None):
        out: dict[str, Any] = {"model": model, "created_at": timestamp(), **self._text(text), "done": True}
        out["done_reason"] = done_reason
        if context is not None and not self.chat:
            out["context"] = context
        return {**out, **metrics}

    def _text(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if self.chat else {"response": text}


GENERATE = Shape(chat=False)
CHAT = Shape(chat=True)


def metrics(stats: Stats | None, *, total_ns: int, load_ns: int) -> dict[str, int]:
    """Ollama's Metrics in nanoseconds; like Go's omitempty, zero values are left out.

    load_duration counts loading the model and compiling for this request's shapes, the two
    things that make a first request slow; prompt_eval covers prefill up to the first token,
    eval the tokens after it, as the Rust loop timed them. prompt_eval_count is the whole
    prompt, as Ollama counts it, and prompt_eval_cached_count (the name Ollama's open proposal
    uses) the positions of it taken from the cache rather than computed. A reply under a `format` adds
    lljx's own grammar_duration (compiling its schema, or finding it compiled) and the
    time its grammar took per token to compute a mask, at the median and the 99th percentile.
    """
    values = {"total_duration": total_ns, "load_duration": load_ns + (stats.compile_ns if stats else 0)}
    if stats is not None:
        values |= {
            "prompt_eval_count": stats.prompt_tokens,
            "prompt_eval_cached_count": stats.prompt_cached,
            "prompt_eval_duration": stats.prefill_ns,
            "eval_count": stats.gen_tokens,
            "eval_duration": stats.decode_ns,
            "grammar_duration": stats.grammar_ns,
            "mask_duration_p50": stats.mask_p50_ns,
            "mask_duration_p99": stats.mask_p99_ns,
        }
    return {key: int(value) for key, value in values.items() if value}


def ps_entry(loaded: Loaded, on_accelerator: bool) -> dict[str, Any]:
    """Ollama's row, plus lljx's slots: how many requests run at once (`parallel`), how many
    hold a slot now, how many wait for one, and how many batch shapes still compile in the
    background (`compiling`; a load test waits for 0)."""
    from lljx.models.inventory import describe

    size = loaded.size
    in_use = min(loaded.pending, 1) if loaded.engine is None else loaded.engine.in_slots
    return {
        "name": loaded.resolved.name,
        "model": loaded.resolved.name,
        "size": size,
        "digest": digest(loaded.resolved.path),
        "details": details(describe(loaded.resolved)),
        "size_vram": size if on_accelerator else 0,
        "context_length": loaded.model.config.context_length,
        "parallel": loaded.slots,
        "slots_in_use": in_use,
        "queued": max(0, loaded.pending - in_use),
        "compiling": 0 if loaded.engine is None else loaded.engine.compiling,
    }
