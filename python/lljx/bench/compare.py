"""`lljx bench --compare A.json B.json`: per system, how median decode tok/s, ttft and prefill moved from A to B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lljx.bench.report import aligned, as_csv, fixed, markdown, summarize


class CompareError(ValueError):
    """A file that is not a runs.json from `lljx bench`."""


def load_run(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CompareError(f"{path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CompareError(f"{path}: not valid JSON ({error.msg})") from None
    if not isinstance(document, dict) or not isinstance(document.get("rows"), list):
        raise CompareError(f"{path}: not a runs.json written by `lljx bench` (no rows)")
    return document


def change(before: float | None, after: float | None) -> float | None:
    return after / before - 1 if before and after is not None else None


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per system in either run, A's order first; a side that lacks the system is None."""
    before = {s["system"]: s for s in summarize(a["rows"], None, None)}
    after = {s["system"]: s for s in summarize(b["rows"], None, None)}
    records = []
    for system in dict.fromkeys([*before, *after]):
        x, y = before.get(system, {}), after.get(system, {})
        records.append({
            "system": system,
            "a_decode_median": x.get("decode_median"), "b_decode_median": y.get("decode_median"),
            "decode_change": change(x.get("decode_median"), y.get("decode_median")),
            "a_ttft_median_s": x.get("ttft_median_s"), "b_ttft_median_s": y.get("ttft_median_s"),
            "ttft_change": change(x.get("ttft_median_s"), y.get("ttft_median_s")),
            "a_prefill_median_tps": x.get("prefill_median_tps"), "b_prefill_median_tps": y.get("prefill_median_tps"),
            "prefill_change": change(x.get("prefill_median_tps"), y.get("prefill_median_tps")),
        })
    return records


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def describe(document: dict[str, Any]) -> str:
    env = document.get("environment") or {}
    settings = document.get("settings") or {}
    parts = [settings.get("model"), settings.get("dtype"), env.get("date"), env.get("git_commit"), env.get("cpu")]
    return ", ".join(str(p) for p in parts if p)


def format_compare(records: list[dict[str, Any]], a: dict[str, Any], b: dict[str, Any], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps({"a": describe(a), "b": describe(b), "systems": records}, indent=2)
    if fmt == "csv":
        return as_csv(records, list(records[0]) if records else ["system"]).rstrip("\n")
    headers = ["system", "decode A", "decode B", "change", "ttft A", "ttft B", "change", "prefill A", "prefill B",
               "change"]
    cells = [[
        r["system"], fixed(r["a_decode_median"]), fixed(r["b_decode_median"]), percent(r["decode_change"]),
        fixed(r["a_ttft_median_s"], 3), fixed(r["b_ttft_median_s"], 3), percent(r["ttft_change"]),
        fixed(r["a_prefill_median_tps"]), fixed(r["b_prefill_median_tps"]), percent(r["prefill_change"]),
    ] for r in records]
    table = markdown(headers, cells) if fmt == "md" else aligned(headers, cells)
    return f"A: {describe(a)}\nB: {describe(b)}\nmedians per system (decode and prefill in tok/s, ttft in s)\n\n{table}"
