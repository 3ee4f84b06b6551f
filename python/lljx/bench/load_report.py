"""`lljx bench serve` outputs: a summary table, requests.csv, points.csv, load.json and latency.png (latency against throughput)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lljx.bench.report import aligned, as_csv, markdown

HEADERS = ["point", "done", "failed", "req/s", "tok/s", "goodput/s", "TTFT p50", "p90", "p99",
           "TPOT p50", "p90", "p99", "ITL p50", "p90", "p99"]
REQUEST_COLUMNS = ["point", "index", "prompt", "sent_s", "ok", "ttft_ms", "tpot_ms", "latency_ms",
                   "output_tokens", "prompt_tokens", "error"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(points: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cells = []
    for p in points:
        cells.append([
            p["point"], str(p["completed"]), str(p["failed"]), f"{p['request_throughput']:.2f}",
            f"{p['output_tok_s']:.1f}", f"{p['goodput']:.2f}",
            *(_ms(p[metric][q]) for metric in ("ttft_ms", "tpot_ms", "itl_ms") for q in ("p50", "p90", "p99")),
        ])
    return HEADERS, cells


def format_table(points: Sequence[dict[str, Any]], fmt: str) -> str:
    headers, cells = table(points)
    if fmt == "md":
        return markdown(headers, cells)
    if fmt == "json":
        return json.dumps(list(points), indent=2)
    if fmt == "csv":
        return as_csv(flat_points(points), list(flat_points(points)[0]))
    return aligned(headers, cells)


def flat_points(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat record per point (percentiles as their own columns), for CSV."""
    flat = []
    for p in points:
        record = {k: v for k, v in p.items() if not isinstance(v, (dict, list))}
        for metric in ("ttft_ms", "tpot_ms", "itl_ms"):
            for q, value in p[metric].items():
                record[f"{metric.removesuffix('_ms')}_{q}_ms"] = value
        flat.append(record)
    return flat


def summary_markdown(document: dict[str, Any]) -> str:
    setup = document["setup"]
    targets = document["points"][0]["targets"] if document["points"] else {}
    lines = [
        f"# Serving load: {setup['model']} at {setup['host']}", "",
        f"- command: `{document['command']}`",
        f"- {setup['requests']} requests per point, {setup['max_tokens']} output tokens at most, temperature "
        f"{setup['temperature']}, built-in prompts ({setup['prompts']}), arrival seed {setup['seed']}",
        f"- goodput: completed requests per second with TTFT <= {targets.get('ttft_ms')} ms and "
        f"TPOT <= {targets.get('tpot_ms')} ms",
        f"- machine: {document['environment'].get('machine', '?')}",
        "", "Latencies in ms (TTFT: time to first token; TPOT: time per output token after the first; "
        "ITL: time between two streamed chunks).", "",
        markdown(*table(document["points"])), "",
    ]
    return "\n".join(lines)


def latency_plot(points: Sequence[dict[str, Any]], path: Path) -> Path:
    """TTFT and TPOT percentiles against the output throughput each point reached."""
    from matplotlib.figure import Figure  # the object API: no global state, no GUI backend

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    throughput = [p["output_tok_s"] for p in points]
    for ax, metric, title in ((axes[0], "ttft_ms", "time to first token"), (axes[1], "tpot_ms", "time per output token")):
        for q, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            values = [p[metric][q] for p in points]
            shown = [(x, y) for x, y in zip(throughput, values) if y is not None]
            if shown:
                ax.plot(*zip(*shown), style, label=q)
        for p, x in zip(points, throughput):
            if p[metric]["p50"] is not None:
                ax.annotate(p["point"], (x, p[metric]["p50"]), fontsize="x-small", textcoords="offset points", xytext=(4, 4))
        ax.set(xlabel="output tok/s (all requests)", ylabel="ms", title=f"{title} against throughput")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path


def write_outputs(out_dir: Path, document: dict[str, Any], requests: Sequence[dict[str, Any]]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("load.json", json.dumps(document, indent=2) + "\n"),
        ("points.csv", as_csv(flat_points(document["points"]), list(flat_points(document["points"])[0]))),
        ("requests.csv", as_csv(requests, REQUEST_COLUMNS)),
        ("summary.md", summary_markdown(document)),
    ):
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    written.append(latency_plot(document["points"], out_dir / "latency.png"))
    return written
