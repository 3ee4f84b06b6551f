"""Where a batched decode step's time goes: whole `native-token` steps at B = 1, 2, 4, 8, and each kernel alone at 1 and 8 rows.

Usage: python benchmarks/batch_rows.py [MODEL] [--switch ENV_VAR] [--rounds N] [--steps N]

MODEL is anything `lljx.models.load_model` takes (default: the embedded model), loaded at
`--dtype auto`. Timings on a shared machine are noisy, so every figure is a median over
rounds that interleave the batch sizes (and, with --switch, runs with ENV_VAR unset and
set to 1, for kernels that read it on each call): compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lljx import native_kernels
from lljx.models import load_model
from lljx.params import GGMLWeight
from lljx.strategies import registry
from lljx.strategies.slots import _rows

CACHE_LEN = 256
POSITION = 100
BATCHES = (1, 2, 4, 8)


def step_programs(model):
    """A compiled decode step and its state for each batch size."""
    decoder = registry.build_slots(registry.load("native-token"), model)
    runs = {}
    for b in BATCHES:
        rows = _rows(dict(keys=[[0, i] for i in range(b)], counters=[0] * b, temperature=[0.0] * b,
                          top_k=[0] * b, top_p=[1.0] * b, min_p=[0.0] * b))
        decoder.prepare("decode", b, CACHE_LEN)
        state = decoder.empty(b, CACHE_LEN)
        program = decoder._adopt(("decode", b, CACHE_LEN))
        positions = np.full(b, POSITION, np.int32)
        active = np.ones(b, bool)
        box = [state.tokens, state.cache]

        def step(program=program, box=box, positions=positions, active=active, rows=rows):
            box[0], box[1] = program(decoder.params, box[0], box[1], positions, active, rows)
            jax.block_until_ready(box[0])

        runs[b] = step
    return runs


def layer_weights(model) -> dict[str, GGMLWeight]:
    """One GGUF-format weight of each shape and type (a layer's set, and the output head), by tree path."""
    leaves = jax.tree_util.tree_leaves_with_path(model.params, is_leaf=lambda x: isinstance(x, GGMLWeight))
    shapes, picked = set(), {}
    for path, w in leaves:
        if isinstance(w, GGMLWeight) and w.data.ndim == 1 and (w.n_in, w.n_out, w.ggml_type) not in shapes:
            shapes.add((w.n_in, w.n_out, w.ggml_type))
            picked[jax.tree_util.keystr(path)] = w
    return picked


def kernel_calls(model):
    """Jitted single-kernel calls at 1 and 8 rows: each product shape, and decode attention."""
    calls = {}
    rng = np.random.default_rng(0)
    for name, w in layer_weights(model).items():
        for rows in (1, 8):
            x = jnp.asarray(rng.standard_normal((rows, w.n_in)), jnp.float32)
            f = jax.jit(lambda x, w=w: native_kernels.block_matmul(x, [w])[0])
            calls[f"{name} {w.n_out}x{w.n_in} t{w.ggml_type} rows={rows}"] = (f, (x,))
    c = model.config
    for rows in (1, 8):
        q = jnp.asarray(rng.standard_normal((rows, c.n_heads, c.d_head)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((rows, c.n_kv_heads, CACHE_LEN, c.d_head)), jnp.float16)
        v = jnp.asarray(rng.standard_normal((rows, c.n_kv_heads, c.d_head, CACHE_LEN)), jnp.float16)
        new = jnp.asarray(rng.standard_normal((rows, c.n_kv_heads, c.d_head)), jnp.float32)
        pos = jnp.full((rows,), POSITION, jnp.int32)
        table = jnp.full((rows, c.d_head // 2), 0.5, jnp.float32)
        calls[f"attend (one layer, f16 cache) rows={rows}"] = (attend_in_place(q, new, k, v, pos, table), ())
    return calls


def attend_in_place(q, new, k, v, positions, table):
    """Decode attention over a donated cache, written in place as in a decode step (an undonated
    cache would be copied on every call)."""
    step = jax.jit(native_kernels.attend, donate_argnums=(3, 4))
    box = [k, v]

    def run():
        out, box[0], box[1] = step(q, new, new, box[0], box[1], positions, table, table)
        return out

    return run


def timed(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--switch", help="an env var the kernels read on each call: A/B with it unset and set")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-kernels", action="store_true")
    args = parser.parse_args()
    model = load_model(args.model, dtype="auto")
    modes = ["unset", "set"] if args.switch else ["as built"]

    def set_mode(mode: str) -> None:
        if args.switch:
            if mode == "set":
                os.environ[args.switch] = "1"
            else:
                os.environ.pop(args.switch, None)

    steps = step_programs(model)
    calls = {} if args.no_kernels else kernel_calls(model)
    for fn, a in calls.values():
        jax.block_until_ready(fn(*a))
    for step in steps.values():
        for _ in range(3):
            step()
    step_ms = {(m, b): [] for m in modes for b in BATCHES}
    kernel_ms = {(m, k): [] for m in modes for k in calls}
    for _ in range(args.rounds):
        for mode in modes:
            set_mode(mode)
            for b, step in steps.items():
                step_ms[mode, b].append(timed(step, args.steps))
            for key, (fn, a) in calls.items():
                kernel_ms[mode, key].append(timed(lambda fn=fn, a=a: jax.block_until_ready(fn(*a)), 20))
    set_mode("unset")
    for mode in modes:
        one = statistics.median(step_ms[mode, 1])
        line = ", ".join(f"B={b} {statistics.median(step_ms[mode, b]):.2f} ms ({statistics.median(step_ms[mode, b]) / one:.2f}x)"
                         for b in BATCHES)
        print(f"[{mode}] step: {line}")
    for key in calls:
        print("  " + key + ": " + ", ".join(f"[{m}] {statistics.median(kernel_ms[m, key]) * 1e3:.0f} us" for m in modes))


if __name__ == "__main__":
    main()
