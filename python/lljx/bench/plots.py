"""decode_tps.png: a histogram of decode tok/s per system (as in the original notebook) and medians against the roofline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lljx.bench.roofline import Roofline


def decode_plot(
    rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], roofline: Roofline | None, path: Path
) -> Path:
    import numpy as np

    # The object API, not pyplot: no global figure state and no GUI backend, so it runs headless.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 5), layout="constrained")
    hist_ax, bar_ax = fig.subplots(1, 2, width_ratios=[3, 2])
    names = [s["system"] for s in summary]
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}  # one color per system in both panels
    values = {name: [r["decode_tps"] for r in rows if r["system"] == name and r["decode_tps"]] for name in names}
    measured = [name for name in names if values[name]]
    if measured:
        every = np.concatenate([values[name] for name in measured])
        bins = np.histogram_bin_edges(every, bins=min(20, max(5, len(every) // 4)))
        # One bar per system side by side in each bin, like seaborn's multiple="dodge".
        hist_ax.hist([values[name] for name in measured], bins=bins, label=measured,
                     color=[colors[name] for name in measured])
        hist_ax.legend(fontsize="small")
        hist_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        hist_ax.text(0.5, 0.5, "no decode measurements", ha="center", va="center", transform=hist_ax.transAxes)
    hist_ax.set(xlabel="decode tok/s", ylabel="runs (prompt × repeat)", title="decode tok/s per run")

    medians = [s["decode_median"] or 0.0 for s in summary]
    spreads = [s["decode_sd"] or 0.0 for s in summary]
    positions = np.arange(len(names))
    bars = bar_ax.bar(positions, medians, yerr=spreads, capsize=3, color=[colors[name] for name in names])
    bar_ax.bar_label(bars, labels=[f"{m:.1f}" for m in medians], padding=2, fontsize="small")
    bar_ax.set_xticks(positions, names, rotation=30, ha="right")
    if roofline is not None and roofline.bound_tps > 0:
        bar_ax.axhline(roofline.bound_tps, color="tab:red", linestyle="--",
                       label=f"roofline {roofline.bound_tps:.0f} tok/s ({roofline.bandwidth_gbs:.0f} GB/s)")
        bar_ax.legend(fontsize="small", loc="upper right")
        bar_ax.set_ylim(0, max([roofline.bound_tps, *medians]) * 1.15)
    bar_ax.set(ylabel="median decode tok/s (± sd)", title="medians against the memory-bandwidth bound")
    fig.savefig(path, dpi=110)
    return path
