"""`lljx bench serve`: a serving load benchmark against any Ollama-API server, over a sweep of load levels."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

FORMAT_CHOICES = ["table", "md", "csv", "json"]


def parse_levels(text: str | None, kind: type, name: str) -> list[Any]:
    """'1,2,4' -> [1, 2, 4], every one positive."""
    if text is None:
        return []
    try:
        levels = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None
    if not levels or any(level <= 0 for level in levels):
        raise click.BadParameter(f"every level must be positive, got {text!r}", param_hint=name)
    return levels


@click.command("serve")
@click.option("--host", default=None, help="Server address [default: $OLLAMA_HOST, else 127.0.0.1:11434].")
@click.option("--model", "-m", "model", default="smollm2", show_default=True, help="Model name as the server knows it.")
@click.option("--rate", "rates", default=None, metavar="R[,R...]",
              help="Poisson arrival rates in requests per second, one point each (a sweep).")
@click.option("--concurrency", "concurrencies", default=None, metavar="C[,C...]",
              help="Fixed concurrency levels, one point each: C clients each send their next request when "
                   "the last one ends [default: 1,8 when no --rate].")
@click.option("--requests", "-n", "requests", type=click.IntRange(min=1), default=32, show_default=True,
              help="Requests per point.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="num_predict per request.")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), default=None,
              help="Use the first N built-in prompts [default: all 20], in turn.")
@click.option("--warmup", type=click.IntRange(min=0), default=8, show_default=True,
              help="Requests sent together before measuring (load, compile every batch size).")
@click.option("--ttft-target", type=float, default=1000.0, show_default=True, help="Goodput: TTFT target in ms.")
@click.option("--tpot-target", type=float, default=200.0, show_default=True, help="Goodput: time per output token target in ms.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Poisson arrivals.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds a request may take.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write load.json, points.csv, requests.csv, summary.md and latency.png here.")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default="table", show_default=True)
def serve_load(**options: Any) -> None:
    """Load an Ollama-API server (lljx serve or Ollama) with streaming requests at each level of a sweep.

    Reports per point: completed and failed requests, request throughput, output tok/s, goodput
    (requests per second meeting both latency targets), and TTFT, TPOT and ITL at p50/p90/p99.
    """
    from lljx.cli import one_line_errors

    one_line_errors(run)(**options)


def run(
    host: str | None, model: str, rates: str | None, concurrencies: str | None, requests: int, max_tokens: int,
    temperature: float, n_prompts: int | None, warmup: int, ttft_target: float, tpot_target: float, seed: int,
    timeout: float, out_dir: Path | None, fmt: str,
) -> None:
    from lljx.bench import load, load_report
    from lljx.bench import prompts as prompt_pool
    from lljx.bench.environment import collect, machine
    from lljx.server.cli import parse_host

    address, port = parse_host(host if host is not None else os.environ.get("OLLAMA_HOST", "") or "127.0.0.1:11434")
    url = f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"
    points = [load.Point(requests, rate=r) for r in parse_levels(rates, float, "--rate")]
    points += [load.Point(requests, concurrency=c) for c in parse_levels(concurrencies, int, "--concurrency")]
    if not points:
        points = [load.Point(requests, concurrency=c) for c in (1, 8)]
    texts = prompt_pool.select(n_prompts, None)
    options = {"temperature": temperature, "num_predict": max_tokens, "seed": seed}
    targets = load.Targets(ttft_target, tpot_target)

    async def sweep() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if warmup:
            click.echo(f"bench serve: warming up {url} ({model}) with {warmup} requests", err=True)
            timed, _ = await load.run_point(url, model, texts, load.Point(warmup, concurrency=warmup), options,
                                            seed=seed, timeout=timeout)
            failed = [t.error for t in timed if not t.ok]
            if len(failed) == len(timed):
                raise click.ClickException(f"the server answered no warm-up request: {failed[0] or 'no text'}")
            waited = await load.wait_for_compiles(url, model, timeout=timeout)
            if waited >= 1:
                click.echo(f"bench serve: waited {waited:.0f} s for the server's background compiles", err=True)
        summaries, rows = [], []
        for point in points:
            click.echo(f"bench serve: {point.label}, {point.requests} requests", err=True)
            timed, wall = await load.run_point(url, model, texts, point, options, seed=seed, timeout=timeout)
            summaries.append(load.summarize(point, timed, wall, targets))
            rows += [{"point": point.label, **t.row()} for t in timed]
        return summaries, rows

    summaries, rows = asyncio.run(sweep())
    click.echo(load_report.format_table(summaries, fmt))
    if out_dir is not None:
        environment = collect()
        environment["machine"] = machine(environment)
        document = {
            "command": shlex.join(["lljx", *sys.argv[1:]]),
            "setup": {"host": url, "model": model, "requests": requests, "max_tokens": max_tokens,
                      "temperature": temperature, "prompts": len(texts), "warmup": warmup, "seed": seed},
            "environment": environment,
            "points": summaries,
        }
        for path in load_report.write_outputs(out_dir, document, rows):
            click.echo(f"bench serve: wrote {path}", err=True)
