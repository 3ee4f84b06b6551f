"""The cost per token of tensor parallelism's collectives on CPU: the collectives alone, and decode end to end.

    python benchmarks/mesh/collectives.py [--rounds 3] [--out benchmarks/mesh]

Two measurements, each as A/B medians run interleaved, so that a moment when another process
had the cores falls on both sides alike:
- the collectives alone: those XLA puts in jit-token's sharded decode step (an all-reduce of
  one row of d_model floats for the embedding and two per layer; all-gathers of each device's
  best logit and its index for greedy sampling), timed against the same program
  with each collective replaced by a local multiply, over 2 forced host devices in one process
  and over 2 processes (gloo on loopback), at the embedded model's and Llama 3.2 1B's shapes;
- decode end to end: `lljx bench -s jit-token --dtype f32` on one device, on 2 forced devices
  (--tensor-parallel 2) and on 2 processes, in turn, each round a fresh process.
Writes summary.md and runs.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORCE = "--xla_force_host_platform_device_count"
# (d_model, layers, vocabulary): SmolLM2-135M (the embedded model) and Llama 3.2 1B.
SHAPES = {"embedded": (576, 30, 49152), "llama-3.2-1b": (2048, 16, 128256)}
REPS = 200


def all_reduces(layers: int) -> int:
    """What XLA compiles into jit-token's sharded decode step (its HLO, embedded model at tp=2: 61 all-reduces of
    one d_model row, two all-gathers of one value per device)."""
    return 2 * layers + 1


def collectives_alone(size: int, reps: int) -> dict[str, dict[str, float]]:
    """Per shape: median ms per token of the decode step's collectives and of the same step without them."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lljx import parallel

    layout = parallel.configure(size)
    assert layout is not None
    mesh, axis = layout.mesh, parallel.AXIS
    results = {}
    for name, (d_model, layers, vocab) in SHAPES.items():

        def step(x, collective):
            # The embedding row, then attention's output projection and the FFN's down projection in each layer.
            for _ in range(all_reduces(layers)):
                x = (jax.lax.psum(x, axis) if collective else x * size) * (1.0 / size)
            # Greedy sampling over a vocabulary split by device: each device's best logit and its index, gathered.
            logits = x[0, :1] * jnp.arange(vocab // size, dtype=x.dtype)
            best, where = jnp.max(logits, keepdims=True), jnp.argmax(logits, keepdims=True)
            if collective:
                best, where = (jax.lax.all_gather(v, axis, tiled=True) for v in (best, where))
            return x, where[jnp.argmax(best)][None]

        programs = {
            label: jax.jit(jax.shard_map(lambda x, c=collective: step(x, c), mesh=mesh, in_specs=P(axis),
                                         out_specs=(P(axis), P(axis)), check_vma=False))
            for label, collective in (("with", True), ("without", False))
        }
        x = jax.make_array_from_callback(
            (size, d_model), NamedSharding(mesh, P(axis)), lambda index: np.ones((1, d_model), np.float32)[index[1:]]
        )
        for program in programs.values():
            jax.block_until_ready(program(x))
        times: dict[str, list[float]] = {label: [] for label in programs}
        for _ in range(reps):
            for label, program in programs.items():
                start = time.perf_counter()
                jax.block_until_ready(program(x))
                times[label].append(time.perf_counter() - start)
        results[name] = {label: statistics.median(t) * 1000 for label, t in times.items()}
        results[name]["collectives_ms"] = results[name]["with"] - results[name]["without"]
        results[name]["all_reduces"] = all_reduces(layers)
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_with(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["LLJX_COMPILE_CACHE"] = "0"
    if devices > 1:
        env["XLA_FLAGS"] = f"{FORCE}={devices}"
    return env


def run_alone(where: str, reps: int) -> dict:
    """`collectives_alone` over 2 forced devices ('devices') or 2 processes ('processes'), in fresh processes."""
    me = [sys.executable, __file__, "--worker"]
    if where == "devices":
        out = subprocess.run([*me, "0", "1", "0", str(reps)], env=env_with(2), capture_output=True, text=True,
                             timeout=900, check=True).stdout
        return json.loads(out.splitlines()[-1])
    port = free_port()
    procs = [subprocess.Popen([*me, str(port), "2", str(i), str(reps)], env=env_with(1), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    return json.loads(outs[0].splitlines()[-1])


def worker(port: int, processes: int, process_id: int, reps: int) -> None:
    if processes > 1:
        from lljx.parallel.distributed import Cluster, start

        start(Cluster(f"127.0.0.1:{port}", processes, process_id, peer_timeout=60))
    result = collectives_alone(2, reps)
    if process_id == 0:
        print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # JAX's shutdown barrier adds nothing here


def decode_ms(where: str, out: Path, prompts: int, tokens: int) -> float:
    """Median ms per decoded token of `lljx bench -s jit-token --dtype f32` on one device, 2 devices or 2 processes."""
    args = ["bench", "-s", "jit-token", "--dtype", "f32", "--prompts", str(prompts), "-n", str(tokens), "--out", str(out)]
    cli = [sys.executable, "-m", "lljx.cli"]
    if where == "one device":
        subprocess.run([*cli, *args], env=env_with(1), capture_output=True, timeout=900, check=True)
    elif where == "2 devices":
        subprocess.run([*cli, *args, "-tp", "2"], env=env_with(2), capture_output=True, timeout=900, check=True)
    else:
        port = free_port()
        procs = [subprocess.Popen([*cli, *args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                   "--process-id", str(i)], env=env_with(1), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for i in range(2)]
        assert [p.wait(timeout=900) for p in procs] == [0, 0]
    rows = json.loads((out / "runs.json").read_text())["rows"]
    return 1000 / statistics.median(row["decode_tps"] for row in rows if row.get("decode_tps"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    wheres = ["one device", "2 devices", "2 processes"]
    decode: dict[str, list[float]] = {w: [] for w in wheres}
    alone: dict[str, list[dict]] = {"devices": [], "processes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for where in wheres:
                decode[where].append(decode_ms(where, Path(tmp) / f"{round_}-{where}", args.prompts, args.tokens))
                print(f"round {round_}: decode {where}: {decode[where][-1]:.2f} ms/token", file=sys.stderr)
            for where in alone:
                alone[where].append(run_alone(where, REPS))
                print(f"round {round_}: collectives over 2 {where}: {alone[where][-1]}", file=sys.stderr)
    summary = summarize(decode, alone)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(summary)
    (args.out / "runs.json").write_text(json.dumps({"decode_ms": decode, "collectives": alone, "machine": machine()},
                                                   indent=1))
    print(summary)


def machine() -> str:
    from lljx.bench.environment import collect, machine as describe

    return describe(collect())


def summarize(decode: dict[str, list[float]], alone: dict[str, list[dict]]) -> str:
    lines = [f"`python benchmarks/mesh/collectives.py --rounds {len(next(iter(decode.values())))}`. Machine: {machine()}, "
             "shared with other work while this ran: on CPU a mesh is for correctness, not speed. Medians over rounds "
             "run in turn; one round is one fresh process per figure.", "",
             "Decode, embedded model (SmolLM2-135M), jit-token, f32, ms per token:", "",
             "| where | median | rounds |", "|---|---|---|"]
    for where, values in decode.items():
        lines.append(f"| {where} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    lines += ["", "The collectives alone, ms per token (an all-reduce of a d_model row for the embedding and two per "
              "layer, two all-gathers of one value per device for greedy sampling), against the same program "
              "without them:", "",
              "| shape | over | all-reduces | collectives, median | per all-reduce (µs) | rounds |",
              "|---|---|---|---|---|---|"]
    for where, rounds in alone.items():
        for shape in SHAPES:
            costs = [r[shape]["collectives_ms"] for r in rounds]
            cost, count = statistics.median(costs), rounds[0][shape]["all_reduces"]
            lines.append(f"| {shape} | 2 {where} | {count} | {cost:.2f} | {cost / count * 1000:.0f} | "
                         f"{', '.join(f'{c:.2f}' for c in costs)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(*(int(a) for a in sys.argv[2:6]))
    else:
        main()
