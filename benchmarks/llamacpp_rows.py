"""llama.cpp's batched decode step beside lljx's: one token for each of B sequences at once, B = 1, 2, 4, 8, at the same position and cache length as `batch_rows.py`.

Usage: python benchmarks/llamacpp_rows.py [MODEL] [--threads 2] [--rounds 7] [--steps 20]

MODEL is anything lljx resolves to a GGUF file (default: the
embedded model). llama.cpp (through llama-cpp-python's C API) loads the file as the bench's
peer does (repacking where it runs here), in one context of 8 sequences of 256 positions
each. Every sequence first reads the same 100-token prompt, so each step attends 100-odd
positions, as `batch_rows.py` does. A step is one `llama_decode` of B tokens, all with
logits. Rounds interleave the batch sizes; figures are medians. The ratios to B = 1 are what
to compare with `batch_rows.py`'s, which run the same shapes through lljx's slots.
"""

from __future__ import annotations

import argparse
import statistics
import time

from lljx.bench import llamacpp_load
from lljx.models.errors import ModelError
from lljx.models.resolver import resolve

BATCHES = (1, 2, 4, 8)
CACHE_LEN = 256
PROMPT_LEN = 100


def context(llm, threads: int, sequences: int):
    """A second llama.cpp context on `llm`'s weights holding `sequences` sequences of CACHE_LEN positions."""
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx = CACHE_LEN * sequences
    params.n_batch = params.n_ubatch = max(512, PROMPT_LEN * sequences)
    params.n_seq_max = sequences
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if not ctx:
        raise SystemExit("llama.cpp could not make a context of that size")
    return ctx


def fill(batch, entries: list[tuple[int, int, int, bool]]) -> None:
    """Write (token, position, sequence, logits) entries into a llama_batch."""
    for i, (token, position, sequence, logits) in enumerate(entries):
        batch.token[i] = token
        batch.pos[i] = position
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = sequence
        batch.logits[i] = logits
    batch.n_tokens = len(entries)


def decode(ctx, batch) -> None:
    import llama_cpp

    status = llama_cpp.llama_decode(ctx, batch)
    if status != 0:
        raise SystemExit(f"llama_decode returned {status}")
    llama_cpp.llama_synchronize(ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import llama_cpp

    try:
        resolved = resolve(args.model)
    except ModelError as e:
        raise SystemExit(str(e)) from None
    if resolved.format != "gguf":
        raise SystemExit(f"{resolved.name}: llama.cpp reads GGUF files, not {resolved.format}")
    path = resolved.path
    llm = llamacpp_load.Llama(path, n_ctx=CACHE_LEN, n_threads=args.threads, verbose=False)
    sequences = max(BATCHES)
    ctx = context(llm, args.threads, sequences)
    batch = llama_cpp.llama_batch_init(max(512, PROMPT_LEN * sequences), 0, sequences)
    memory = llama_cpp.llama_get_memory(ctx)
    prompt = [(i * 7919) % 1000 + 100 for i in range(PROMPT_LEN)]
    fill(batch, [(t, p, s, p == PROMPT_LEN - 1) for s in range(sequences) for p, t in enumerate(prompt)])
    decode(ctx, batch)
    times: dict[int, list[float]] = {b: [] for b in BATCHES}
    for round_ in range(args.rounds + 1):
        for b in BATCHES if round_ % 2 == 0 else BATCHES[::-1]:
            steps = []
            for step in range(args.steps):
                position = PROMPT_LEN + step
                fill(batch, [(1000 + s, position, s, True) for s in range(b)])
                started = time.perf_counter()
                decode(ctx, batch)
                steps.append(time.perf_counter() - started)
            for s in range(b):  # every sequence back to its prompt for the next round
                llama_cpp.llama_memory_seq_rm(memory, s, PROMPT_LEN, -1)
            if round_:  # the first round warms up
                times[b].append(statistics.median(steps))
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    one = statistics.median(times[1])
    print(f"llama.cpp {llama_cpp.__version__}, {args.threads} threads, {path}")
    print("step: " + ", ".join(
        f"B={b} {statistics.median(t) * 1e3:.2f} ms ({statistics.median(t) / one:.2f}x)" for b, t in times.items()
    ))
    print("aggregate over one sequence: " + ", ".join(
        f"B={b} {b * one / statistics.median(t):.2f}x" for b, t in times.items()
    ))


if __name__ == "__main__":
    main()
