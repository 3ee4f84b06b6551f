"""Conversations' time to first token turn by turn, with the engine starting each prompt after the last one and its reply, and without.

Usage: python benchmarks/conversation_turns.py [MODEL] [--turns 6] [--reply-tokens 32] [--rounds 3] [--clients 1]

MODEL is anything `lljx.models.load_model` takes (default: the embedded model), loaded at
`--dtype auto`, with the `native-token` strategy, greedy. Each turn asks three of the built-in
questions at once and keeps the reply in the history, as a chat client does; `--clients`
conversations run at once, each sending its next turn when its reply ends. The engines (one
decoder) take turns round by round, each round with other questions: prompts reused with a
scratch kept per slot (the default), with none kept beside the one prefilled last (with more
than one client), and not reused. Two first rounds compile what a conversation meets and are
not counted. Printed: per turn, the prompt's tokens, the positions reused, and the median
first-token time of each engine over clients and rounds.
"""

from __future__ import annotations

import argparse
import statistics
import threading

from lljx.batching import BatchEngine
from lljx.bench import prompts
from lljx.cli import enable_compile_cache
from lljx.generation import messages_prompt_ids
from lljx.models import Model, load_model
from lljx.sampling import SamplerSettings
from lljx.strategies import registry

GREEDY = SamplerSettings(temperature=0.0)


def conversation(engine: BatchEngine, model: Model, turns: int, reply_tokens: int, offset: int) -> list[tuple[int, int, float]]:
    """(prompt tokens, positions reused, first-token ms) per turn."""
    questions = prompts.BUILTIN
    messages: list[dict[str, str]] = []
    rows = []
    for turn in range(turns):
        asked = " ".join(questions[(offset + 3 * turn + k) % len(questions)] for k in range(3))
        messages.append({"role": "user", "content": asked})
        ids = messages_prompt_ids(model, messages)
        stream = engine.stream(ids, max_tokens=reply_tokens, settings=GREEDY)
        reply = "".join(stream)
        assert stream.finished is not None
        stats = stream.finished.stats
        rows.append((len(ids), stats.prompt_cached, stats.ttft_ns / 1e6))
        messages.append({"role": "assistant", "content": reply})
    return rows


def clients(engine: BatchEngine, model: Model, count: int, turns: int, reply_tokens: int, offset: int) -> list[list[tuple[int, int, float]]]:
    """`count` conversations at once, each on other questions: their rows, per client."""
    results: list[list[tuple[int, int, float]]] = [[] for _ in range(count)]

    def run(client: int) -> None:
        results[client] = conversation(engine, model, turns, reply_tokens, offset + 7 * client)

    threads = [threading.Thread(target=run, args=(client,)) for client in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(rows) == turns for rows in results), "a conversation failed"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--reply-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    enable_compile_cache()
    model = load_model(args.model, dtype="auto")
    decoder = registry.build_slots(registry.load("native-token"), model)
    # What the server's warm-up compiles for this: a reply's row copied out of each batch size,
    # and the scratch moved between neighbouring prompt buckets.
    slots = max(4, args.clients)
    for length in (256, 512, 1024):
        for batch in (1, 2, 4, 8, 16):
            if batch < 2 * slots:
                decoder.prepare("extract", batch, length)
    for bucket in (16, 32, 64, 128, 256, 512):
        decoder.prepare("rebucket", bucket, 2 * bucket)
        decoder.prepare("rebucket", 2 * bucket, bucket)
    engines = {"reused": BatchEngine(model, decoder, slots=slots)}
    if args.clients > 1:
        engines["one scratch"] = BatchEngine(model, decoder, slots=slots, kept_prompts=0)
    engines["fresh"] = BatchEngine(model, decoder, slots=slots, reuse_prompts=False)
    try:
        for engine in engines.values():
            for offset in (0, -1):  # compiles: the first starts on an empty scratch, the second does not
                clients(engine, model, args.clients, args.turns, args.reply_tokens, offset=offset)
        runs: dict[str, list[list[tuple[int, int, float]]]] = {name: [] for name in engines}
        for round_ in range(1, args.rounds + 1):
            for name, engine in engines.items():
                runs[name] += clients(engine, model, args.clients, args.turns, args.reply_tokens, offset=round_)
    finally:
        for engine in engines.values():
            engine.close()
    print(f"model {args.model or 'embedded'}, {args.clients} client(s), {args.reply_tokens}-token replies, "
          f"median of {args.rounds} rounds")
    names = list(engines)
    print("| turn | prompt tokens | " + " | ".join(f"{name}: reused | {name}: first token (ms)" for name in names) + " |")
    print("|---:|---:|" + "---:|---:|" * len(names))
    for turn in range(args.turns):
        tokens = statistics.median(run[turn][0] for run in runs[names[0]])
        cells = []
        for name in names:
            rows = [run[turn] for run in runs[name]]
            cells.append(f"{statistics.median(r[1] for r in rows):.0f} | {statistics.median(r[2] for r in rows):.0f}")
        print(f"| {turn + 1} | {tokens:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
