"""The `lljx bench` command: strategies side by side with llama.cpp and Ollama, with statistics, files and plots.

lljx.cli registers this command at its end, so lljx.cli is imported here only inside the
command (a top-level import would be circular under `python -m lljx.cli`), and so are the
heavy libraries, so `lljx --help` stays fast.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from lljx.parallel.options import mesh_click_options, on_mesh

DTYPE_CHOICES = ["auto", "f32", "bf16", "f16", "int8"]  # as for `generate`
DTYPE_HELP = "Compute dtype; int8 keeps the projections as llama.cpp's Q8_0 blocks and computes in f32 (llama.cpp runs Q8_0)."
PEER_CHOICES = ["llama.cpp", "ollama"]
FORMAT_CHOICES = ["table", "md", "csv", "json"]
EXCLUDED_BY_DEFAULT = {"no-jit"}  # every op dispatched eagerly: minutes per prompt, and it proves one point


@click.group(invoke_without_command=True)
@click.option("--strategy", "-s", "strategy_names", multiple=True,
              help="Strategy to run (repeatable; default: every installed one except no-jit).")
@click.option("--peer", "peers", multiple=True, type=click.Choice(PEER_CHOICES),
              help="Also measure llama.cpp (in process) or an Ollama server at OLLAMA_HOST (repeatable).")
@click.option("--model", "-m", "model_spec", default=None,
              help="GGUF file, HF folder, Ollama name, embedded model name or synthetic:<shape>[:<format>] "
                   "(random weights in a named Llama's shape, e.g. synthetic:llama-3.2-1b:q4_k_m).")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True, help=DTYPE_HELP)
@click.option("--prompts", "n_prompts", type=int, default=None, help="Run the first N prompts [default: all 20 built-in].")
@click.option("--prompts-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Prompts, one per line (a line may be a JSON string).")
@click.option("--prompt-tokens", type=int, default=None,
              help="Stretch every prompt to exactly N tokens, chat template included, continuing it with the "
                   "next prompts, to measure prefill on a long prompt.")
@click.option("--max-tokens", "-n", type=int, default=100, show_default=True, help="Token budget per prompt.")
@click.option("--repeat", "-r", type=int, default=1, show_default=True, help="Runs of every prompt.")
@click.option("--baseline", default=None, help="System the ratios are taken against [default: llama.cpp when run].")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampler seed (the runs are greedy).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write runs.csv, runs.json, summary.md and decode_tps.png here.")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default="table", show_default=True,
              help="How the summary prints on stdout.")
@click.option("--ollama-model", default=None, help="Model name for the Ollama peer [default: the Ollama name of --model].")
@click.option("--schema", "schema_spec", default=None, metavar="json|FILE.json|'{...}'",
              help="Also run every strategy with its replies constrained to this JSON schema ('json': any object), "
                   "as <strategy>+schema, to measure what the constraint costs (--format sets the summary's format).")
@click.option("--compare", "compare_paths", nargs=2, type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Print the change between two saved runs.json files (A then B) and exit.")
@click.option("--cold", is_flag=True,
              help="Measure cold starts instead: fresh `lljx generate -n 1` processes (and llama.cpp's equivalent "
                   "with --peer llama.cpp), time to first token and peak RSS.")
@click.option("--spawns", type=int, default=5, show_default=True, help="Timed spawns per system with --cold.")
@mesh_click_options
def bench(**options: Any) -> None:
    """Measure decode and prefill speed of lljx strategies and peers on the same prompts, greedy, with a memory-bandwidth roofline.

    Each system is warmed up once (compile and load times are reported apart), then every
    prompt runs --repeat times. Prefill is the time from the call to the first token;
    --prompt-tokens 512 makes it a long-prompt measurement. The summary goes to stdout,
    progress to stderr. With --tensor-parallel the strategies run sharded over a mesh, which
    the summary and runs.json record; with several processes every process runs the same
    command and process 0 reports. `lljx bench serve` measures a running server under load.
    """
    if click.get_current_context().invoked_subcommand is not None:
        return  # `lljx bench serve ...`: the subcommand does the work
    from lljx.cli import one_line_errors

    one_line_errors(on_mesh(run))(**options)


def run(
    strategy_names: tuple[str, ...], peers: tuple[str, ...], model_spec: str | None, dtype: str,
    n_prompts: int | None, prompts_file: Path | None, prompt_tokens: int | None, max_tokens: int, repeat: int,
    baseline: str | None, seed: int, out_dir: Path | None, fmt: str, ollama_model: str | None,
    schema_spec: str | None, compare_paths: tuple[Path, Path] | None, cold: bool, spawns: int,
) -> None:
    if compare_paths:
        from lljx.bench.compare import compare, format_compare, load_run

        a, b = (load_run(path) for path in compare_paths)
        click.echo(format_compare(compare(a, b), a, b, fmt))
        return
    if max_tokens < 1:
        raise click.BadParameter(f"must be at least 1, got {max_tokens}", param_hint="--max-tokens")
    if repeat < 1:
        raise click.BadParameter(f"must be at least 1, got {repeat}", param_hint="--repeat")
    if prompt_tokens is not None and prompt_tokens < 1:
        raise click.BadParameter(f"must be at least 1, got {prompt_tokens}", param_hint="--prompt-tokens")
    if spawns < 1:
        raise click.BadParameter(f"must be at least 1, got {spawns}", param_hint="--spawns")
    if cold and prompt_tokens is not None:
        raise click.BadParameter("cold starts run one built-in prompt as it is", param_hint="--prompt-tokens")
    check_mesh(cold, peers)
    from lljx.bench import prompts as prompt_pool

    texts = prompt_pool.select(n_prompts, prompts_file)
    if cold:
        from lljx.bench.cold_cli import run_cold

        run_cold(strategy_names, peers, model_spec, dtype, texts[0], spawns, out_dir, fmt)
        return
    names = check_strategies(strategy_names)
    from lljx.structured import read_format

    schema = None if schema_spec is None else read_format(schema_spec)
    from lljx.bench.environment import collect, shown_path
    from lljx.bench.environment import threads as thread_count
    from lljx.cli import default_dtype, enable_compile_cache
    from lljx.generation import chat_prompt_ids
    from lljx.models import load_model

    enable_compile_cache()
    start = time.perf_counter()
    model = load_model(model_spec, dtype=default_dtype() if dtype == "auto" else dtype)
    load_s = time.perf_counter() - start
    from lljx.bench.runner import Prompt

    if prompt_tokens is None:
        prompts = [Prompt(i, text, tuple(chat_prompt_ids(model, text))) for i, text in enumerate(texts)]
        warmup = Prompt(-1, prompt_pool.WARMUP, tuple(chat_prompt_ids(model, prompt_pool.WARMUP)))
    else:
        prompts, warmup = long_prompts(model, texts, prompt_pool.select(None, prompts_file), prompt_tokens)
    threads = thread_count()
    if schema is not None:
        from lljx.structured import compile_schema

        compile_schema(model, schema)  # a schema that does not compile fails here, before any measuring
    systems, skipped = make_systems(names, peers, model, prompts, warmup, max_tokens, seed, threads, load_s,
                                    ollama_model, schema)
    if baseline is not None and baseline not in [s.name for s in systems] + list(skipped):
        raise click.BadParameter(f"'{baseline}' is not among the systems run", param_hint="--baseline")

    rows = measure(systems, prompts, repeat)
    from lljx import parallel

    if not parallel.is_writer():
        return  # every process measured (the collectives need them all); process 0 reports
    ran = list(dict.fromkeys(row["system"] for row in rows))
    from lljx.bench import report

    chosen = report.pick_baseline(baseline, ran)
    if baseline is not None and chosen != baseline:
        click.echo(f"bench: baseline {baseline} did not run; ratios are to {chosen}", err=True)
    mean_prompt = sum(len(p.ids) for p in prompts) / len(prompts)
    mean_gen = sum(row["gen_tokens"] for row in rows) / len(rows) if rows else max_tokens
    # The mean context a decoded token attends over: the prompt plus half of the reply.
    bound, summary = decode_bound(model, rows, chosen, mean_prompt + mean_gen / 2, threads)
    environment = collect()
    notes = run_notes(model, systems, environment)
    click.echo(report.format_summary(summary, chosen, bound, fmt, notes))
    if out_dir is not None:
        from lljx.bench.plots import decode_plot

        document = {
            "command": "lljx " + shlex.join(sys.argv[1:]),
            "settings": {
                "model": model.name, "quantization": model.quantization, "dtype": model.config.dtype,
                "prompts": len(prompts), "prompts_file": prompts_file.name if prompts_file else None,
                "prompt_tokens": prompt_tokens,
                "max_tokens": max_tokens, "repeat": repeat, "seed": seed, "threads": threads,
                "sampling": "greedy (temperature 0), stopping at the model's end-of-turn tokens",
                "schema": schema_spec,
                "mesh": parallel.record(model.config),
                # With JAX's persistent cache on, compile_s is mostly the time to load cached executables.
                "jax_compile_cache": os.environ.get("LLJX_COMPILE_CACHE", "1") != "0",
                "files": {s.name: shown_path(s.file) if getattr(s, "file", None) else None for s in systems},
            },
            "environment": environment,
            "baseline": chosen,
            "skipped": skipped,
            "notes": notes,
            "prompts": [{"id": p.id, "text": p.text, "tokens": len(p.ids)} for p in prompts],
        }
        written = report.write_outputs(out_dir, document, rows, summary, bound)
        written.append(decode_plot(rows, summary, bound, out_dir / "decode_tps.png"))
        click.echo(f"bench: wrote {', '.join(str(p) for p in written)}", err=True)


def decode_bound(model: Any, rows: list[dict[str, Any]], baseline: str | None, context: float,
                 threads: int) -> tuple[Any, list[dict[str, Any]]]:
    """The roofline at the bandwidth of where this model's working set lives, and the summary against it;
    measured again when a system beats it (see roofline.recheck)."""
    from lljx.bench import bandwidth, report
    from lljx.bench.caches import cache_levels, describe_caches
    from lljx.bench.environment import cpu_model
    from lljx.bench.roofline import kv_bytes, recheck, roofline, weight_bytes

    levels = cache_levels()
    working_set = weight_bytes(model.params) + kv_bytes(model.config, context)
    click.echo("bench: memory read bandwidth over the working set (measured once per CPU and size, then cached)...",
               err=True)
    found = bandwidth.cached(cpu_model(), threads, working_set, levels)
    bound = roofline(model.config, model.params, context, found.gbs, level=found.level,
                     caches=describe_caches(levels), threads=threads, measured_bytes=found.bytes)

    def again() -> float:
        return bandwidth.remeasure(cpu_model(), threads, working_set, levels, found).gbs

    return recheck(bound, lambda b: report.summarize(rows, baseline, b), again, lambda m: click.echo(m, err=True))


def run_notes(model: Any, systems: list[Any], environment: dict[str, Any]) -> list[str]:
    """What every figure needs beside it: the machine, the mesh, the files each system read, and whether the text means anything."""
    from lljx import parallel
    from lljx.bench.environment import machine, shown_path
    from lljx.models.synthetic import NOISE_NOTE, is_synthetic_model

    notes = [f"machine: {machine(environment)}"]
    mesh = parallel.describe(model.config)
    if mesh is not None:
        notes.append(f"mesh: the strategies ran sharded, {mesh}")
    files: dict[str, list[str]] = {}
    for system in systems:
        if getattr(system, "file", None):
            files.setdefault(shown_path(system.file), []).append(system.name)
    if files:
        notes.append("files: " + "; ".join(f"{', '.join(names)} read {path}" for path, names in files.items()))
    for system in systems:
        if system.kind == "ollama":
            notes.append(f"ollama: the server at {system.host}, on its own machine's CPU")
    if is_synthetic_model(model):
        notes.append(f"{model.name} has {NOISE_NOTE}; only the speed of writing it is measured")
    return notes


def long_prompts(model: Any, texts: list[str], pool: list[str], n_tokens: int) -> tuple[list[Any], Any]:
    """The prompts, and a warm-up that runs the same prefill shape, each exactly n_tokens long."""
    from lljx.bench import prompts as prompt_pool
    from lljx.bench.runner import Prompt

    context = model.config.context_length
    if n_tokens >= context:
        raise click.BadParameter(f"must leave room for a reply in the model's context of {context}, got {n_tokens}",
                                 param_hint="--prompt-tokens")
    try:
        prompts = [Prompt(i, *prompt_pool.exact_length(model, pool, i, n_tokens)) for i in range(len(texts))]
        warmup = Prompt(-1, *prompt_pool.exact_length(model, prompt_pool.BUILTIN, 0, n_tokens))
    except prompt_pool.PromptError as error:
        raise click.BadParameter(str(error), param_hint="--prompt-tokens") from None
    return prompts, warmup


def check_strategies(names: tuple[str, ...]) -> list[str]:
    """The strategies to run: those named (each must load, and run on the mesh if there is one), or every
    installed one that loads, but no-jit (and on a mesh, those that cannot run on one)."""
    from lljx import parallel
    from lljx.strategies import registry

    mesh = parallel.active() is not None
    if names:
        for name in dict.fromkeys(names):
            strategy = registry.load(name)  # an unknown or broken name fails here, before minutes of measuring
            if mesh:
                parallel.check_strategy(strategy)
        return list(dict.fromkeys(names))
    chosen = []
    for info in registry.available():
        if info.error is not None:
            click.echo(f"{info.name}: skipped (failed to load: {info.error})", err=True)
        elif mesh and parallel.refuses(registry.load(info.name)):
            click.echo(f"{info.name}: skipped (its kernels run on one device, not on a mesh)", err=True)
        elif info.name not in EXCLUDED_BY_DEFAULT:
            chosen.append(info.name)
    return chosen


def check_mesh(cold: bool, peers: tuple[str, ...]) -> None:
    """What a sharded or multi-process bench cannot measure, refused before anything loads."""
    from lljx import parallel
    from lljx.parallel.distributed import started

    if cold and (parallel.active() is not None or started()):
        raise click.UsageError("--cold measures fresh one-device processes; it takes no --tensor-parallel or processes")
    if peers and started():
        raise click.UsageError(
            "--peer runs in one process: with several processes every process would run it, on shared cores; "
            "measure peers in a run of one process"
        )


def make_systems(
    names: list[str], peers: tuple[str, ...], model: Any, prompts: list[Any], warmup: Any, max_tokens: int,
    seed: int, threads: int, load_s: float, ollama_model: str | None, schema: dict[str, Any] | None = None,
) -> tuple[list[Any], dict[str, str]]:
    """Strategies first (each also constrained to `schema` when there is one), then the peers
    (never constrained); a peer that cannot run here is skipped, saying why."""
    from lljx.bench.peers import LlamaCppSystem, OllamaSystem, Skipped, ollama_name
    from lljx.bench.runner import StrategySystem

    systems: list[Any] = [
        StrategySystem(name, model, prompts=prompts, warmup=warmup, max_tokens=max_tokens, seed=seed,
                       threads=threads, load_s=load_s, schema=constraint)
        for name in names
        for constraint in ([None] if schema is None else [None, schema])
    ]
    skipped: dict[str, str] = {}
    for peer in dict.fromkeys(peers):
        try:
            if peer == "llama.cpp":
                systems.append(LlamaCppSystem(model, prompts=prompts, warmup=warmup, max_tokens=max_tokens,
                                              seed=seed, threads=threads))
            else:
                systems.append(OllamaSystem(ollama_model or ollama_name(model), warmup=warmup,
                                            max_tokens=max_tokens, seed=seed))
        except Skipped as reason:
            skipped[peer] = str(reason)
            click.echo(f"{peer}: skipped ({reason})", err=True)
    return systems, skipped


def measure(systems: list[Any], prompts: list[Any], repeat: int) -> list[dict[str, Any]]:
    """Every system in turn, with a progress bar on stderr naming the system and the prompt."""
    from lljx.bench.runner import run_system

    rows: list[dict[str, Any]] = []
    width = max((len(s.name) for s in systems), default=0)
    for system in systems:
        with click.progressbar(
            length=len(prompts) * repeat, label=system.name.ljust(width), file=sys.stderr, show_pos=True,
            item_show_func=lambda item: item,
        ) as bar:
            bar.update(0, "warming up")

            def progress(prompt: Any, r: int, bar: Any = bar) -> None:
                bar.update(0, f"prompt {prompt.id + 1}/{len(prompts)}" + (f" repeat {r + 1}/{repeat}" if repeat > 1 else ""))

            try:
                for row in run_system(system, prompts, repeat, progress):
                    rows.append(row)
                    bar.update(1)
            finally:
                system.close()
    return rows


def _add_subcommands() -> None:
    from lljx.bench.serve_cli import serve_load

    bench.add_command(serve_load)


_add_subcommands()
