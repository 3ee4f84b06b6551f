"""Prompts arriving together at an idle engine: first tokens and aggregate tok/s with their last chunks read in one pass, and one by one.

Usage: python benchmarks/prompts_together.py [MODEL] [--clients 8] [--max-tokens 64] [--rounds 5]

MODEL is anything `lljx.models.load_model` takes (default: the embedded model), loaded at
`--dtype auto`, with the `native-token` strategy, greedy, in one `BatchEngine` of `--clients`
slots, warmed up for short replies first. Each wave submits `--clients` built-in prompts at
once (each prefixed with the wave's number, so no wave finds another's prompts in a kept
scratch; all share the system prompt). Waves alternate between packing on and off (which
goes first alternates too), and the first round is a warm-up: figures are medians over the
rest. Compare the two within one run only.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time

from lljx.batching import BatchEngine
from lljx.bench import prompts
from lljx.cli import enable_compile_cache
from lljx.generation import chat_prompt_ids
from lljx.models import load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry

GREEDY = SamplerSettings(temperature=0.0)


def wave(engine: BatchEngine, ids: list[list[int]], max_tokens: int) -> tuple[float, int, list[float]]:
    """Submit every prompt at once; (seconds until the last reply ended, tokens, first-token seconds)."""
    done = threading.Event()
    lock = threading.Lock()
    firsts: list[float] = []
    counts = {"left": len(ids), "tokens": 0}

    def listener():
        seen = [False]

        def on_event(text, end, detail):
            if not seen[0]:
                seen[0] = True
                firsts.append(time.perf_counter() - start)
            if end:
                with lock:
                    counts["tokens"] += len(detail.token_ids) if end == "done" else 0
                    counts["left"] -= 1
                    if counts["left"] == 0:
                        done.set()

        return on_event

    start = time.perf_counter()
    with engine._inbox.lock:  # every prompt is there before the engine plans its next step
        for prompt in ids:
            engine.submit(prompt, max_tokens=max_tokens, settings=GREEDY, callback=listener())
    done.wait()
    return time.perf_counter() - start, counts["tokens"], firsts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    enable_compile_cache()
    model = load_model(args.model, dtype="auto")
    decoder = registry.build_slots(registry.load("native-token"), model)
    engine = BatchEngine(model, decoder, slots=args.clients)
    started = time.perf_counter()
    engine.warm_up(needs=[256], long_prompts=False)
    while engine.compiling:
        time.sleep(0.1)
    print(f"warm-up: {time.perf_counter() - started:.1f} s", flush=True)
    packed_rows = decoder.packed_rows
    texts = itertools.cycle(prompts.BUILTIN)
    results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    try:
        for round_ in range(args.rounds):
            for packing in (True, False) if round_ % 2 == 0 else (False, True):
                decoder.packed_rows = packed_rows if packing else (lambda bucket, size: 0)  # type: ignore[method-assign]
                number = 2 * round_ + packing
                ids = [chat_prompt_ids(model, f"({number}) {next(texts)}") for _ in range(args.clients)]
                before = decoder.packed_prompts
                seconds, tokens, firsts = wave(engine, ids, args.max_tokens)
                row = (tokens / seconds, statistics.median(firsts), max(firsts))
                if round_:
                    results[packing].append(row)
                print(
                    f"round {round_} packing {'on ' if packing else 'off'}: {tokens} tokens in {seconds * 1e3:.0f} ms "
                    f"({row[0]:.1f} tok/s), first token median {row[1] * 1e3:.0f} ms, worst {row[2] * 1e3:.0f} ms, "
                    f"{decoder.packed_prompts - before} prompts packed",
                    flush=True,
                )
    finally:
        engine.close(timeout=60)
    for packing, rows in results.items():
        print(
            f"packing {'on ' if packing else 'off'} (median of {len(rows)} waves): "
            f"{statistics.median(r[0] for r in rows):.1f} tok/s, first token median "
            f"{statistics.median(r[1] for r in rows) * 1e3:.0f} ms, worst {statistics.median(r[2] for r in rows) * 1e3:.0f} ms"
        )


if __name__ == "__main__":
    main()
