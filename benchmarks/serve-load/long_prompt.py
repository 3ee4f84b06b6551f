"""A 2,000-token prompt arriving while 4 streams run: the longest gap between two tokens of those streams.

Usage: python benchmarks/serve-load/long_prompt.py --host 127.0.0.1:11500 [--model smollm2] [--rounds 3] [--warmup 1]
Against a running `lljx serve` (default flags). Each round starts 4 greedy streams (up to 1,200
tokens each, a reply that does not stop on its own), waits until all four stream, sends one
~2,000-token prompt (a new one each round), and records every token arrival; it reports, per
round, the worst gap in each stream before the long prompt arrived and across its prefill
window (from the last token before it arrived to the first token after its own first token),
the long prompt's TTFT, and how many streams were still running when its first token came (4,
or the window says little).
The `--warmup` rounds run first and are not reported: the first long prompt a server sees
compiles its prompt bucket's chunk programs while the streams run, which is measured apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

import ollama

# Greedy replies to this run to the token limit (a counting prompt that ends by itself ended
# before the long prompt's prefill did once decode got faster).
STREAM = "Write the numbers from 1 to 1000, one per line."
STREAM_TOKENS = 1200


def long_prompt(items: int = 180) -> str:
    """About 2,000 tokens with the chat template (a bucket of 2,048), opening with a number drawn
    afresh each time: a server that keeps prompts it has read (as `lljx serve` does) must read
    this one whole, not find it in a kept scratch."""
    opening = f"List {random.randrange(10**9)}."
    return opening + " " + " ".join(f"Item {i} is a kind of fruit." for i in range(items)) + " Which item is last?"


async def stream(client: ollama.AsyncClient, model: str, prompt: str, options: dict, arrivals: list[float]) -> int:
    count = 0
    async for part in await client.generate(model=model, prompt=prompt, options=options, stream=True):
        if part.response:
            arrivals.append(time.monotonic())
        if part.done:
            count = part.prompt_eval_count or 0
    return count


def worst_gap(arrivals: list[float], start: float, end: float) -> float:
    """The longest gap between two tokens across [start, end], the gaps that cross either edge
    included (a stream frozen over the whole window counts)."""
    before = [t for t in arrivals if t < start][-1:]
    after = [t for t in arrivals if t > end][:1]
    inside = before + [t for t in arrivals if start <= t <= end] + after
    return max((b - a for a, b in zip(inside, inside[1:])), default=0.0)


async def one_round(host: str, model: str) -> dict:
    async with ollama.AsyncClient(host=host) as client:
        runs: list[list[float]] = [[] for _ in range(4)]
        greedy = {"temperature": 0, "num_predict": STREAM_TOKENS}
        tasks = [asyncio.create_task(stream(client, model, STREAM, greedy, r)) for r in runs]
        while not all(len(r) >= 5 for r in runs):
            await asyncio.sleep(0.01)
        before = time.monotonic()
        await asyncio.sleep(1.0)
        sent = time.monotonic()
        long_arrivals: list[float] = []
        prompt_tokens = await stream(client, model, long_prompt(), {"temperature": 0, "num_predict": 1}, long_arrivals)
        first = long_arrivals[0] if long_arrivals else time.monotonic()
        await asyncio.sleep(0.5)  # the streams' next tokens, which close the window's last gap
        running = sum(not task.done() for task in tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "prompt_tokens": prompt_tokens,
        "ttft_s": round(first - sent, 3),
        "streams_running_after": running,
        "worst_gap_before_ms": round(1e3 * max(worst_gap(r, before, sent) for r in runs), 1),
        "worst_gap_during_ms": round(1e3 * max(worst_gap(r, sent, first) for r in runs), 1),
        "median_gap_during_ms": round(1e3 * statistics.median(
            [b - a for r in runs for a, b in zip([t for t in r if sent <= t <= first], [t for t in r if sent <= t <= first][1:])] or [0.0]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1:11434")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    host = args.host if args.host.startswith("http") else f"http://{args.host}"
    warmup = [asyncio.run(one_round(host, args.model)) for _ in range(args.warmup)]
    rounds = [asyncio.run(one_round(host, args.model)) for _ in range(args.rounds)]
    print(json.dumps({"warmup_rounds": warmup, "rounds": rounds,
                      "worst_gap_during_ms_median": statistics.median(r["worst_gap_during_ms"] for r in rounds)}, indent=1))


if __name__ == "__main__":
    main()
