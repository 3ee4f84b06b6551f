"""Per-system statistics of a run and the files it leaves: a summary table, runs.csv, runs.json, summary.md."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lljx.bench.roofline import Roofline
from lljx.bench.runner import ALL_COLUMNS

FORMATS = ("table", "md", "csv", "json")
DEFAULT_BASELINE = "llama.cpp"


def pick_baseline(requested: str | None, systems: Sequence[str]) -> str | None:
    """The requested system, else llama.cpp when it ran, else the first system."""
    if requested is not None and requested in systems:
        return requested
    if DEFAULT_BASELINE in systems:
        return DEFAULT_BASELINE
    return systems[0] if systems else None


def number(value: Any) -> float | None:
    """A finite float, or None (pandas turns missing values into NaN, JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def first(group: Any, column: str) -> Any:
    """A per-system constant (kind, dtype, compile time), or None in rows that lack it."""
    if column not in group:
        return None
    value = group[column].iloc[0]
    return None if isinstance(value, float) and math.isnan(value) else value


def summarize(rows: Sequence[dict[str, Any]], baseline: str | None, roofline: Roofline | None) -> list[dict[str, Any]]:
    """One record per system, in the order the systems ran."""
    import pandas as pd  # type: ignore[import-untyped]  # no stubs needed to run

    if not rows:
        return []
    frame = pd.DataFrame(list(rows))
    summary = []
    for system, group in frame.groupby("system", sort=False):
        decode = group["decode_tps"].astype(float)
        summary.append({
            "system": system,
            "kind": first(group, "kind"),
            "dtype": first(group, "dtype"),
            "runs": len(group),
            "n": int(decode.count()),
            "decode_mean": number(decode.mean()),
            "decode_sd": number(decode.std()),  # sample sd; None with one run
            "decode_min": number(decode.min()),
            "decode_median": number(decode.median()),
            "decode_max": number(decode.max()),
            "ttft_median_s": number(group["ttft_s"].astype(float).median()),
            "prefill_median_tps": number(group["prefill_tps"].astype(float).median()),
            "e2e_median_tps": number(group["e2e_tps"].astype(float).median()),
            "gen_tokens_mean": number(group["gen_tokens"].astype(float).mean()),
            "compile_s": number(first(group, "compile_s")),
            "load_s": number(first(group, "load_s")),
            # Constrained systems: the median run's median mask time, and the worst run's 99th percentile.
            "mask_p50_us": number(group["mask_p50_us"].astype(float).median()) if "mask_p50_us" in group else None,
            "mask_p99_us": number(group["mask_p99_us"].astype(float).max()) if "mask_p99_us" in group else None,
        })
    by_name = {s["system"]: s for s in summary}
    base = by_name.get(baseline, {}) if baseline is not None else {}
    for s in summary:
        median = s["decode_median"]
        s["vs_baseline"] = ratio(median, base.get("decode_median"))
        s["prefill_vs_baseline"] = ratio(s["prefill_median_tps"], base.get("prefill_median_tps"))
        bound = roofline.bound_tps if roofline is not None else 0.0
        s["roofline_share"] = median / bound if median is not None and bound else None
    return summary


def ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def fixed(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def display(summary: Sequence[dict[str, Any]], baseline: str | None) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the human-readable summary."""
    headers = [
        "system", "dtype", "n", "decode tok/s (mean ± sd)", "min", "median", "max", "ttft s (median)",
        "prefill tok/s", f"prefill × {baseline or 'baseline'}", "e2e tok/s", f"× {baseline or 'baseline'}",
        "of roofline", "compile s",
    ]
    cells = []
    for s in summary:
        mean = fixed(s["decode_mean"]) + ("" if s["decode_sd"] is None else f" ± {s['decode_sd']:.1f}")
        share = "-" if s["roofline_share"] is None else f"{s['roofline_share']:.0%}"
        share += " (above!)" if (s["roofline_share"] or 0.0) > 1.0 else ""  # the roofline's note says why
        cells.append([
            s["system"], str(s["dtype"] or "-"), str(s["n"]), mean, fixed(s["decode_min"]), fixed(s["decode_median"]),
            fixed(s["decode_max"]), fixed(s["ttft_median_s"], 3), fixed(s["prefill_median_tps"]),
            fixed(s["prefill_vs_baseline"], 2), fixed(s["e2e_median_tps"]), fixed(s["vs_baseline"], 2), share,
            fixed(s["compile_s"], 2),
        ])
    if any(s.get("mask_p50_us") is not None for s in summary):
        headers.append("mask µs p50 / p99")
        for s, row in zip(summary, cells):
            p50, p99 = s.get("mask_p50_us"), s.get("mask_p99_us")
            row.append("-" if p50 is None else f"{p50:.0f} / {fixed(p99, 0)}")
    return headers, cells


def aligned(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """Plain columns: text left-aligned, numbers right-aligned."""
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [all(looks_numeric(row[i]) for row in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def looks_numeric(text: str) -> bool:
    """A number as `display` writes it: 12.3, 12.3 ± 0.4, 85%, +4.0%, or - for none."""
    core = text.replace(" ± ", "")
    return text == "-" or (any(c.isdigit() for c in core) and all(c.isdigit() or c in ".+-%" for c in core))


def markdown(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    align = ["---" if not all(looks_numeric(row[i]) for row in cells) else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def as_csv(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def format_summary(
    summary: Sequence[dict[str, Any]], baseline: str | None, roofline: Roofline | None, fmt: str = "table",
    notes: Sequence[str] = (),
) -> str:
    """The summary as a table (or md, csv, json) with its notes: ratios, the roofline, then `notes`."""
    if fmt == "json":
        document = {"baseline": baseline, "roofline": roofline.as_dict() if roofline else None, "systems": summary,
                    "notes": list(notes)}
        return json.dumps(document, indent=2)
    if fmt == "csv":
        return as_csv(summary, list(summary[0]) if summary else ["system"]).rstrip("\n")
    headers, cells = display(summary, baseline)
    lines = [f"× {baseline}: median decode tok/s over {baseline}'s; prefill × {baseline}: the same for prefill."] \
        if baseline else []
    lines.append(roofline.describe() + "; 'of roofline' is each median's share of that." if roofline
                 else "decode roofline: not measured")
    lines += notes
    if fmt == "md":
        return "\n\n".join([markdown(headers, cells), *lines])
    return "\n".join([aligned(headers, cells), "", *lines])


def row_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The protocol's columns first, then whatever else the rows carry, in first-seen order."""
    seen = dict.fromkeys(ALL_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def summary_markdown(document: dict[str, Any], summary: Sequence[dict[str, Any]], roofline: Roofline | None) -> str:
    env = document["environment"]
    settings = document["settings"]
    lines = [
        f"# lljx bench: {settings['model']} at {settings['dtype']}",
        "",
        f"Command: `{document['command']}`",
        "",
        format_summary(summary, document["baseline"], roofline, "md", document.get("notes", ())),
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    if document.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in document["skipped"].items())]
    lines += ["", "| environment | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in env.items()]
    return "\n".join(lines) + "\n"


def write_outputs(
    out: Path, document: dict[str, Any], rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]],
    roofline: Roofline | None,
) -> list[Path]:
    """runs.csv and runs.json (every row plus the environment) and summary.md; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    columns = row_columns(rows)
    paths = [out / "runs.csv", out / "runs.json", out / "summary.md"]
    paths[0].write_text(as_csv(rows, columns), encoding="utf-8")
    full = {
        **document, "roofline": roofline.as_dict() if roofline else None, "summary": list(summary),
        "columns": columns, "rows": list(rows),
    }
    paths[1].write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
    paths[2].write_text(summary_markdown(document, summary, roofline), encoding="utf-8")
    return paths
