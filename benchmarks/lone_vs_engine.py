"""One request alone: decode tok/s of a lone `Generation` (the queue path) against one request through `BatchEngine`, in pairs.

Usage: python benchmarks/lone_vs_engine.py [MODEL] [--max-tokens 64] [--rounds 4]

MODEL is anything `lljx.models.load_model` takes (default: the embedded model), loaded at
`--dtype auto`, with the `native-token` strategy, greedy. Decode speed on a shared VM drifts by
10-15% within minutes, so the two paths alternate prompt by prompt (which goes first alternates
too) and the figure is the median of the per-pair ratios, with its quartiles. Compile time is
kept out: every shape is compiled and each path runs every prompt once before timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

from lljx.batching import BatchEngine
from lljx.bench import prompts
from lljx.cli import enable_compile_cache
from lljx.generation import Generation, chat_prompt_ids
from lljx.models import load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry

GREEDY = SamplerSettings(temperature=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    enable_compile_cache()
    model = load_model(args.model, dtype="auto")
    strategy = registry.load("native-token")
    ids = [chat_prompt_ids(model, text) for text in prompts.select(8, None)]
    lone_decoder = registry.build(strategy, model, GREEDY)
    engine = BatchEngine(model, registry.build_slots(strategy, model), slots=8)
    engine.warm_up([len(i) + args.max_tokens for i in ids])
    while engine.compiling:
        time.sleep(0.2)

    def lone(prompt: list[int]) -> float:
        generation = Generation(model, lone_decoder, prompt, max_tokens=args.max_tokens, settings=GREEDY)
        for _ in generation:
            pass
        return generation.stats.decode_tps

    def through_engine(prompt: list[int]) -> float:
        stream = engine.stream(prompt, max_tokens=args.max_tokens, settings=GREEDY)
        for _ in stream:
            pass
        return stream.finished.stats.decode_tps

    try:
        for prompt in ids:
            lone(prompt), through_engine(prompt)
        lone_tps, engine_tps, ratios = [], [], []
        for round_ in range(args.rounds):
            for i, prompt in enumerate(ids):
                if (round_ + i) % 2 == 0:
                    a = lone(prompt)
                    b = through_engine(prompt)
                else:
                    b = through_engine(prompt)
                    a = lone(prompt)
                lone_tps.append(a)
                engine_tps.append(b)
                ratios.append(b / a)
    finally:
        engine.close()
    low, _, high = statistics.quantiles(ratios, n=4)
    print(f"{model.name}, {args.max_tokens} tokens, {len(ratios)} pairs: lone {statistics.median(lone_tps):.1f} tok/s, "
          f"engine {statistics.median(engine_tps):.1f} tok/s; engine / lone per pair: median "
          f"{statistics.median(ratios):.3f} (quartiles {low:.3f}-{high:.3f})")


if __name__ == "__main__":
    main()
