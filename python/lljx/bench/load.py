"""Load on an Ollama-API server (lljx serve or Ollama): Poisson arrivals or fixed concurrency, every request timed per token.

A point is one load level: `rate` requests per second arriving as a Poisson process, or
`concurrency` clients each sending its next request when the last one ends. Every request
streams through the official `ollama` AsyncClient; its send time, each chunk's arrival and
the server's counts are kept, and `summarize` turns a point's requests into TTFT, time per
output token (TPOT) and inter-token latency (ITL) percentiles, throughput and goodput.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Point:
    """One load level: exactly one of rate (requests/s, Poisson) and concurrency is set."""

    requests: int
    rate: float | None = None
    concurrency: int | None = None

    @property
    def label(self) -> str:
        return f"rate {self.rate:g}/s" if self.rate is not None else f"concurrency {self.concurrency}"


@dataclass(frozen=True)
class Targets:
    """Latency targets a request must meet to count towards goodput (milliseconds)."""

    ttft_ms: float = 1000.0
    tpot_ms: float = 200.0


@dataclass
class Timed:
    """One request as the client saw it (seconds since the point started, monotonic)."""

    index: int
    prompt: int
    sent: float = 0.0
    chunks: list[float] = field(default_factory=list)  # arrivals of chunks that carried text
    ended: float = 0.0
    output_tokens: int = 0  # the server's eval_count
    prompt_tokens: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.chunks)

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.sent if self.chunks else 0.0

    @property
    def tpot(self) -> float:
        """Decode time per output token after the first (0 for a one-token reply)."""
        if len(self.chunks) < 2 or self.output_tokens < 2:
            return 0.0
        return (self.chunks[-1] - self.chunks[0]) / (self.output_tokens - 1)

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:])]

    def row(self) -> dict[str, Any]:
        return {
            "index": self.index, "prompt": self.prompt, "sent_s": round(self.sent, 6), "ok": self.ok,
            "ttft_ms": round(self.ttft * 1e3, 3), "tpot_ms": round(self.tpot * 1e3, 3),
            "latency_ms": round((self.ended - self.sent) * 1e3, 3), "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens, "error": self.error,
        }


async def one_request(
    client: Any, model: str, prompt: str, options: dict[str, Any], timed: Timed, start: float, timeout: float,
) -> None:
    """Stream one reply, recording arrivals; a failure is recorded on `timed`, never raised."""
    timed.sent = time.monotonic() - start
    try:
        async with asyncio.timeout(timeout):
            async for part in await client.generate(model=model, prompt=prompt, options=options, stream=True):
                if part.response:
                    timed.chunks.append(time.monotonic() - start)
                if part.done:
                    timed.output_tokens = part.eval_count or len(timed.chunks)
                    timed.prompt_tokens = part.prompt_eval_count or 0
    except TimeoutError:
        timed.error = f"no reply within {timeout:g} s"
    except Exception as error:  # noqa: BLE001 - a failed request is a measurement, not the end of the run
        status = getattr(error, "status_code", None)
        timed.error = f"{status}: {getattr(error, 'error', error)}" if status else f"{type(error).__name__}: {error}"
    timed.ended = time.monotonic() - start


async def wait_for_compiles(host: str, model: str, *, timeout: float, poll: float = 0.5) -> float:
    """Seconds spent waiting until `host`'s /api/ps shows no batch shape compiling for `model`
    (an lljx server compiles its common shapes in the background after a load; other servers
    report nothing, so this returns at once)."""
    import httpx

    start = time.monotonic()
    async with httpx.AsyncClient(base_url=host, timeout=timeout) as client:
        while time.monotonic() - start < timeout:
            reply = await client.get("/api/ps")
            reply.raise_for_status()
            rows = [row for row in reply.json().get("models") or [] if {row.get("name"), row.get("model")} & {model, f"{model}:latest"}]
            if not any(row.get("compiling") for row in rows):
                break
            await asyncio.sleep(poll)
    return time.monotonic() - start


async def run_point(
    host: str, model: str, prompts: Sequence[str], point: Point, options: dict[str, Any], *, seed: int, timeout: float,
) -> tuple[list[Timed], float]:
    """Every request of one point, and the point's wall time (first send to last end)."""
    import ollama

    rng = random.Random(seed)
    timed = [Timed(i, i % len(prompts)) for i in range(point.requests)]
    async with ollama.AsyncClient(host=host, timeout=timeout) as client:
        start = time.monotonic()

        def send(t: Timed) -> asyncio.Task[None]:
            return asyncio.create_task(one_request(client, model, prompts[t.prompt], options, t, start, timeout))

        if point.rate is not None:
            tasks, due = [], 0.0
            for t in timed:
                await asyncio.sleep(max(0.0, due - (time.monotonic() - start)))
                tasks.append(send(t))
                due += rng.expovariate(point.rate)
            await asyncio.gather(*tasks)
        else:
            pending = iter(timed)

            async def client_loop() -> None:
                for t in pending:
                    await send(t)

            await asyncio.gather(*(client_loop() for _ in range(point.concurrency or 1)))
        wall = time.monotonic() - start
    return timed, wall


def percentiles(values: Sequence[float], scale: float = 1e3) -> dict[str, float | None]:
    """p50, p90, p99 (linear interpolation) of `values`, scaled (seconds to ms by default)."""
    import numpy as np

    if not values:
        return {"p50": None, "p90": None, "p99": None}
    found = np.percentile(np.asarray(values, dtype=np.float64) * scale, [50, 90, 99])
    return {f"p{q}": round(float(v), 3) for q, v in zip((50, 90, 99), found)}


def summarize(point: Point, timed: Sequence[Timed], wall: float, targets: Targets) -> dict[str, Any]:
    """A point's figures: throughput over its wall time, latency percentiles over its completed requests."""
    done = [t for t in timed if t.ok]
    good = [t for t in done if t.ttft * 1e3 <= targets.ttft_ms and t.tpot * 1e3 <= targets.tpot_ms]
    tokens = sum(t.output_tokens for t in done)
    wall = max(wall, 1e-9)
    return {
        "point": point.label, "rate": point.rate, "concurrency": point.concurrency, "requests": len(timed),
        "completed": len(done), "failed": len(timed) - len(done), "wall_s": round(wall, 3),
        "request_throughput": round(len(done) / wall, 4), "output_tok_s": round(tokens / wall, 3),
        "goodput": round(len(good) / wall, 4), "good_fraction": round(len(good) / max(1, len(timed)), 4),
        "ttft_ms": percentiles([t.ttft for t in done]),
        "tpot_ms": percentiles([t.tpot for t in done if t.tpot > 0]),
        "itl_ms": percentiles([gap for t in done for gap in t.itl]),
        "errors": sorted({t.error for t in timed if t.error})[:5],
        "targets": asdict(targets),
    }
