"""`lljx bench --cold`: pick what to spawn (lljx strategies, llama.cpp on the same file), spawn, print and write.

The parent never loads the weights: it only resolves the model (making a synthetic one if
needed), reads its header for the chat template and tokenizer, and converts the peer's file
when an explicit dtype asks for one, all before the first spawn.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click


def run_cold(strategy_names: tuple[str, ...], peers: tuple[str, ...], model_spec: str | None, dtype: str,
             prompt: str, spawns: int, out_dir: Path | None, fmt: str) -> None:
    from lljx.bench import cold
    from lljx.bench.cli import check_strategies
    from lljx.bench.environment import collect, machine, shown_path, threads
    from lljx.bench.peers import peer_file, peer_ftype
    from lljx.cli import default_dtype
    from lljx.models import resolve
    from lljx.models.synthetic import NOISE_NOTE

    names = list(dict.fromkeys(strategy_names)) or [default_strategy()]
    check_strategies(tuple(names))
    resolved = resolve(model_spec)
    compute = default_dtype() if dtype == "auto" else dtype
    n_threads = threads()
    systems = [cold.lljx_system(name, resolved.path, compute, prompt) for name in names]
    skipped: dict[str, str] = {}
    for peer in dict.fromkeys(peers):
        reason = peer_unavailable(peer, resolved.format)
        if reason:
            skipped[peer] = reason
            click.echo(f"{peer}: skipped ({reason})", err=True)
            continue
        ids, quantization = prompt_ids(resolved, prompt)
        target = peer_file(Path(resolved.path), peer_ftype(compute, quantization))
        systems.append(cold.llamacpp_system(str(target), n_threads, ids))

    rows = cold.measure(systems, spawns, n_threads, progress=lambda m: click.echo(f"bench --cold: {m}", err=True))
    summary = cold.summarize(rows)
    environment = collect()
    notes = [f"machine: {machine(environment)}",
             "files: " + "; ".join(f"{s.name} read {shown_path(s.file)}" for s in systems)]
    if resolved.origin == "synthetic":
        notes.append(f"{resolved.name} has {NOISE_NOTE}")
    click.echo(cold.format_cold(summary, fmt, notes))
    if out_dir is not None:
        document = {
            "command": "lljx " + shlex.join(sys.argv[1:]),
            "settings": {"model": resolved.name, "dtype": compute, "prompt": prompt, "spawns": spawns,
                         "threads": n_threads, "files": {s.name: shown_path(s.file) for s in systems}},
            "environment": environment, "skipped": skipped, "notes": notes,
        }
        written = cold.write_cold(out_dir, document, rows, summary)
        click.echo(f"bench: wrote {', '.join(str(p) for p in written)}", err=True)


def default_strategy() -> str:
    from lljx.strategies import registry

    return registry.default_strategy()


def peer_unavailable(peer: str, model_format: str) -> str | None:
    """Why a peer has no cold start here, or None."""
    if peer != "llama.cpp":
        return "cold starts are measured for lljx and llama.cpp only"
    try:
        import llama_cpp  # noqa: F401 - only asking whether it is there
    except ImportError:
        return "llama-cpp-python not installed"
    if model_format != "gguf":
        return "the model is not a GGUF file, so llama.cpp cannot read the same weights"
    return None


def prompt_ids(resolved: object, prompt: str) -> tuple[list[int], str]:
    """The chat-templated prompt ids lljx's generate computes, and the file's type, from the header alone."""
    from lljx.generation import chat_prompt_ids
    from lljx.models.gguf import load_gguf

    skeleton = load_gguf(resolved, "f32", abstract=True)  # type: ignore[arg-type]  # weights as shapes only
    return chat_prompt_ids(skeleton, prompt), skeleton.quantization
