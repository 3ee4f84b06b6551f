"""What the mesh tests share: forced host devices, several lljx processes on loopback, and a greedy run to compare.

Run as a script, it prints one JSON object: the greedy tokens of each strategy on one device
(DEVICES 1) or sharded over DEVICES forced host devices, plus a constrained reply, the KV
cache's and the weights' shardings:

    python mesh_runs.py DEVICES MODEL DTYPE TOKENS [--plain] STRATEGY...

(--plain: greedy text only, no constrained reply.)
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Sequence

FORCE = "--xla_force_host_platform_device_count"
PROMPTS = ["Why is the sky blue?", "What is the speed of light?"]
CONSTRAINED = {"jit-token", "jit-split", "fused-loop"}  # the compiled, eager and K-token decoders' split steps
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def forced_devices(n: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with XLA_FLAGS giving n host devices; any other flag set there is kept."""
    env = dict(os.environ if env is None else env)
    kept = re.sub(rf"{FORCE}=\S+", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([*kept, f"{FORCE}={n}"])
    return env


def one_device(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    env["XLA_FLAGS"] = re.sub(rf"{FORCE}=\S+", "", env.get("XLA_FLAGS", "")).strip()
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lljx(*args: str) -> list[str]:
    return [sys.executable, "-m", "lljx.cli", *args]


def processes(args: Sequence[str], n: int = 2, *, env: dict[str, str] | None = None, peer_timeout: int = 10,
              stdouts: Sequence[object] | None = None, **popen: object) -> list[subprocess.Popen[str]]:
    """n processes of `lljx <args>` joined on a free loopback port, process 0 first (stdout: `stdouts[i]`)."""
    port = free_port()
    return [
        subprocess.Popen(  # type: ignore[call-overload]
            lljx(*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i),
                 "--peer-timeout", str(peer_timeout)),
            env={**one_device(env), "LLJX_COMPILE_CACHE": "0"}, text=True,
            **({"stdout": stdouts[i]} if stdouts is not None else {}), **popen,
        )
        for i in range(n)
    ]


def run_greedy(devices: int, model_spec: str, tokens: int, strategies: Sequence[str], dtype: str = "f32",
               timeout: int = 1200, constrained: bool = True) -> dict:
    """This file as a script in a fresh process with `devices` forced host devices."""
    env = forced_devices(devices) if devices > 1 else one_device()
    env["LLJX_COMPILE_CACHE"] = "0"
    run = subprocess.run(
        [sys.executable, __file__, str(devices), model_spec, dtype, str(tokens), *([] if constrained else ["--plain"]),
         *strategies],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def main(devices: int, model_spec: str, dtype: str, tokens: int, strategies: Sequence[str],
         constrained: bool = True) -> dict:
    import jax

    from lljx import parallel
    from lljx.generation import Generation, chat_prompt_ids
    from lljx.models import load_model
    from lljx.sampling import SamplerSettings
    from lljx.strategies import registry
    from lljx.strategies.api import plan_for
    from lljx.structured import compile_schema

    model = load_model(None if model_spec == "embedded" else model_spec, dtype=dtype)
    if devices > 1:
        parallel.configure(devices)
    result: dict = {"devices": jax.device_count(), "tokens": {}, "constrained": {}, "cache": {}, "weights": {}}
    for name in strategies:
        decoder = registry.build(registry.load(name), model, SamplerSettings(temperature=0))
        runs = []
        for prompt in PROMPTS:
            generation = Generation(model, decoder, chat_prompt_ids(model, prompt), max_tokens=tokens,
                                    stop_token_ids=model.stop_token_ids)
            "".join(generation)
            runs.append(generation.token_ids)
        result["tokens"][name] = runs
        if constrained and name in CONSTRAINED:
            generation = Generation(model, decoder, chat_prompt_ids(model, "Name a cat, in JSON."), max_tokens=tokens,
                                    stop_token_ids=model.stop_token_ids, grammar=compile_schema(model, SCHEMA))
            result["constrained"][name] = "".join(generation)
        ids = chat_prompt_ids(model, PROMPTS[0])
        state = decoder.prefill(ids, plan_for(len(ids), 8, model.config.context_length))
        k = state.cache.k[0] if isinstance(state.cache.k, tuple) else state.cache.k
        result["cache"][name] = [str(k.sharding.spec) if hasattr(k.sharding, "spec") else "one device", list(k.shape)]
        wq = jax.tree.leaves(getattr(decoder, "params", model.params).layers)[1]
        result["weights"][name] = str(wq.sharding.spec) if hasattr(wq.sharding, "spec") else "one device"
    return result


if __name__ == "__main__":
    n, spec, dt, count, *names = sys.argv[1:]
    plain = names[:1] == ["--plain"]
    print(json.dumps(main(int(n), spec, dt, int(count), names[plain:], constrained=not plain)))
