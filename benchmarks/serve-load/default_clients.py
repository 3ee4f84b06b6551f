"""Clients with Ollama's default options (no num_predict, so a reply may fill the context): gaps between tokens, TTFT and the server's memory.

Usage: python benchmarks/serve-load/default_clients.py --host 127.0.0.1:11500 [--model smollm2]
[--clients 8] [--requests 24] [--pid PID]
Against a running server. `--clients` greedy chat streams each send the built-in prompts in
turn until `--requests` have ended (after one warm-up request per client, not counted). It
reports aggregate output tok/s, each reply's length, TTFT at p50 and worst, the gaps between two
tokens of one stream at p50, p99 and worst, and, given the server's `--pid` (on Linux), its peak
resident memory over the run (sampled every 0.2 s).
A server that sizes each request's KV cache for all it may fill copies the whole context on
every join and leave; one whose cache follows what its rows filled does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import ollama

from lljx.bench.prompts import BUILTIN


def resident_mb(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


async def chat(client: ollama.AsyncClient, model: str, prompt: str) -> dict:
    sent = time.monotonic()
    arrivals: list[float] = []
    tokens = 0
    messages = [{"role": "user", "content": prompt}]
    async for part in await client.chat(model=model, messages=messages, options={"temperature": 0}, stream=True):
        if part.message.content:
            arrivals.append(time.monotonic())
        if part.done:
            tokens = part.eval_count or 0
    return {"ttft": arrivals[0] - sent if arrivals else None, "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])], "tokens": tokens}


async def run(host: str, model: str, clients: int, requests: int, pid: int | None) -> dict:
    peak = [0]

    async def watch() -> None:
        while True:
            peak[0] = max(peak[0], resident_mb(pid))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    results: list[dict] = []
    async with ollama.AsyncClient(host=host, timeout=900) as client:
        await asyncio.gather(*(chat(client, model, BUILTIN[i % len(BUILTIN)]) for i in range(clients)))
        queue = list(range(requests))
        started = time.monotonic()

        async def worker() -> None:
            while queue:
                i = queue.pop(0)
                results.append(await chat(client, model, BUILTIN[(i + clients) % len(BUILTIN)]))

        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.monotonic() - started
    watcher.cancel()
    gaps = sorted(g for r in results for g in r["gaps"])
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]

    def gap_ms(q: float) -> float:
        return round(1e3 * gaps[min(len(gaps) - 1, int(q * len(gaps)))], 1) if gaps else 0.0

    return {
        "clients": clients, "requests": requests, "output_tok_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "reply_tokens": sorted(r["tokens"] for r in results),
        "ttft_p50_s": round(statistics.median(ttfts), 3), "ttft_max_s": round(max(ttfts), 3),
        "gap_p50_ms": gap_ms(0.5), "gap_p99_ms": gap_ms(0.99), "gap_max_ms": round(1e3 * gaps[-1], 1) if gaps else 0.0,
        "peak_rss_mb": peak[0] or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1:11434")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--pid", type=int, default=None, help="the server's process id, for its peak memory")
    args = parser.parse_args()
    host = args.host if args.host.startswith("http") else f"http://{args.host}"
    print(json.dumps(asyncio.run(run(host, args.model, args.clients, args.requests, args.pid)), indent=1))


if __name__ == "__main__":
    main()
