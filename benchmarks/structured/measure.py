"""What a JSON schema costs: constrained against plain decode, and grammar compile time on new and cached schemas.

Decode: for each strategy, plain and constrained generations of the same prompt alternate in
one process (greedy, 64 tokens, no stop tokens for the plain run, `{"type": "object"}` for the
constrained one), so both see the same machine; medians of decode tok/s and their ratio.
Compile: every schema of the test corpus compiled new (a fresh cache each time) and cached;
median and worst of the time it adds before the first token. Run from the repository root:

    python benchmarks/structured/measure.py [--rounds N] [--strategy NAME ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lljx import _native
from lljx.generation import Generation, chat_prompt_ids
from lljx.models import load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry
from lljx.structured import compile_schema

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from schema_corpus import CORPUS  # noqa: E402

PROMPT = "Describe three fruits as JSON, with their colours, prices and origins."
TOKENS = 64


def decode_rates(model, name: str, rounds: int) -> dict[str, object]:
    settings = SamplerSettings(temperature=0)
    decoder = registry.load(name).build(model, settings)
    ids = chat_prompt_ids(model, PROMPT)

    def run(constrained: bool):
        grammar = compile_schema(model, {"type": "object"}) if constrained else None
        generation = Generation(model, decoder, ids, max_tokens=TOKENS, settings=settings, grammar=grammar)
        for _ in generation:
            pass
        return generation.stats

    run(False), run(True)  # compile and warm both paths
    plain, constrained, p50, p99 = [], [], [], []
    for _ in range(rounds):
        plain.append(run(False).decode_tps)
        stats = run(True)
        constrained.append(stats.decode_tps)
        p50.append(stats.mask_p50_ns / 1e3)
        p99.append(stats.mask_p99_ns / 1e3)
    return {
        "strategy": name, "plain_tps": statistics.median(plain), "constrained_tps": statistics.median(constrained),
        "ratio": statistics.median(c / p for c, p in zip(constrained, plain)),
        "mask_p50_us": statistics.median(p50), "mask_p99_us": statistics.median(p99),
        "plain_all": [round(x, 1) for x in plain], "constrained_all": [round(x, 1) for x in constrained],
    }


def compile_times(model) -> dict[str, float]:
    new, cached = [], []
    for _, schema in CORPUS.values():
        grammars = _native.Grammars(model.tokenizer._native, stop_ids=list(model.stop_token_ids),
                                    vocab_size=model.config.vocab_size)
        text = json.dumps(schema)
        new.append(grammars.compile(text)[1] / 1e6)
        cached.append(grammars.compile(text)[1] / 1e6)
    return {"schemas": len(new), "new_median_ms": statistics.median(new), "new_max_ms": max(new),
            "cached_median_ms": statistics.median(cached), "cached_max_ms": max(cached)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--strategy", action="append", default=None)
    args = parser.parse_args()
    model = load_model(None, dtype="f32")
    print(json.dumps({"compile": compile_times(model)}), flush=True)
    for name in args.strategy or ["native-token", "jit-token", "native-loop", "fused-loop"]:
        print(json.dumps(decode_rates(model, name, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
