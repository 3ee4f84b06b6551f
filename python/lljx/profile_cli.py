"""The `lljx profile` command: pyinstrument flamegraphs of each strategy, a jax.profiler trace on demand."""

from __future__ import annotations

from pathlib import Path

import click

from lljx.cli import DTYPE_CHOICES, DTYPE_HELP, default_dtype, enable_compile_cache, one_line_errors
from lljx.parallel.options import mesh_options

DEFAULT_OUT = "profiles"
EXCLUDED_BY_DEFAULT = {"no-jit"}  # every op dispatched eagerly: slow, and its profile is all dispatch


@click.command()
@click.option("--strategy", "-s", "strategy_names", multiple=True,
              help="Strategy to profile (repeatable; default: every installed one except no-jit).")
@click.option("--model", "-m", "model_spec", default=None,
              help="GGUF file, HF folder, Ollama name, embedded model name or synthetic:<shape>[:<format>].")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True, help=DTYPE_HELP)
@click.option("--prompts", "n_prompts", type=int, default=3, show_default=True, help="How many prompts to run.")
@click.option("--max-tokens", "-n", type=int, default=64, show_default=True, help="Most tokens per prompt.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help=f"Output folder [default: {DEFAULT_OUT}/, or the session's folder with --load].")
@click.option("--interval", type=float, default=0.001, show_default=True, help="pyinstrument's sampling interval, seconds.")
@click.option("--jax-trace", is_flag=True, help="Also record a jax.profiler trace (Perfetto) of the same run.")
@click.option("--open", "open_html", is_flag=True, help="Open the HTML profiles in the browser.")
@click.option("--load", "load_path", type=click.Path(dir_okay=False), default=None,
              help="Re-render a saved .pyisession instead of profiling.")
@one_line_errors
@mesh_options
def profile(
    strategy_names: tuple[str, ...],
    model_spec: str | None,
    dtype: str,
    n_prompts: int,
    max_tokens: int,
    out_dir: str | None,
    interval: float,
    jax_trace: bool,
    open_html: bool,
    load_path: str | None,
) -> None:
    """Profile generation per strategy: HTML, speedscope flamegraph, session and collapsed stacks, plus a summary."""
    if load_path is not None:
        if strategy_names or model_spec or jax_trace:
            raise click.UsageError("--load re-renders a saved session; it takes no --strategy, --model or --jax-trace")
        rerender(Path(load_path), Path(out_dir) if out_dir else None, open_html)
        return
    if n_prompts <= 0:
        raise click.BadParameter(f"must be at least 1, got {n_prompts}", param_hint="--prompts")
    if max_tokens <= 0:
        raise click.BadParameter(f"must be at least 1, got {max_tokens}", param_hint="--max-tokens")
    if not interval > 0:
        raise click.BadParameter(f"must be positive, got {interval}", param_hint="--interval")

    from lljx.models import load_model
    from lljx.profile import builtin_prompts, profile_strategy
    from lljx.profile_report import summary, write_profile
    from lljx.strategies import registry

    from lljx import parallel

    names = list(dict.fromkeys(strategy_names)) or default_strategies()
    strategies = [registry.load(name) for name in names]  # an unknown name fails before any model loads
    if parallel.active() is not None:
        for strategy in strategies:
            parallel.check_strategy(strategy)
    pool = builtin_prompts()
    prompts = [pool[i % len(pool)] for i in range(n_prompts)]
    out = Path(out_dir or DEFAULT_OUT)
    enable_compile_cache()
    model = load_model(model_spec, dtype=default_dtype() if dtype == "auto" else dtype)
    for strategy in strategies:
        trace_dir = out / f"{strategy.name}.jax-trace" if jax_trace else None
        result = profile_strategy(model, strategy, prompts, max_tokens=max_tokens, interval=interval, jax_trace_dir=trace_dir)
        if not parallel.is_writer():
            continue  # every process ran the profiled generations (the collectives need them all); process 0 writes
        files = write_profile(result.session, result.meta, out, strategy.name)
        click.echo(summary(result.session, result.meta, files))
        if trace_dir is not None:
            click.echo(f"  jax trace: {trace_dir} (open the perfetto_trace.json.gz in ui.perfetto.dev)")
        if open_html:
            open_in_browser(files["html"])


def default_strategies() -> list[str]:
    from lljx import parallel
    from lljx.strategies.registry import available, load

    names = [info.name for info in available() if info.error is None and info.name not in EXCLUDED_BY_DEFAULT]
    if parallel.active() is not None:
        names = [name for name in names if not parallel.refuses(load(name))]
    if not names:
        raise click.ClickException("no strategies are installed (see `lljx strategies`)")
    return names


def rerender(path: Path, out_dir: Path | None, open_html: bool) -> None:
    from lljx.profile_report import SUFFIXES, load_profile, summary, write_profile

    session, meta = load_profile(path)
    stem = path.name.removesuffix(SUFFIXES["session"]).removesuffix(".json")
    files = write_profile(session, meta, out_dir or path.parent, stem, keep=path)
    click.echo(summary(session, meta, files))
    if open_html:
        open_in_browser(files["html"])


def open_in_browser(path: Path) -> None:
    import webbrowser

    webbrowser.open(path.resolve().as_uri())
