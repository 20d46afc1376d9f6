"""Plot one backup cycle per engine and approach from bench_stall.py's JSON: each commit's
latency against the time it was issued, with the freeze and the hold marked.

One column per engine, one row per approach (default: the floor and `quiesce run`). The cycle
drawn is the one whose stall is the median of its approach (the lower middle one for an even
count). Time 0 is the first FIFREEZE of that cycle, so the rows line up on the freeze.

    .venv/bin/pip install -e '.[bench]'      # matplotlib
    .venv/bin/python bench/plot_stall.py [bench/results/stall.json] [-o stall.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_INPUT = HERE / "results" / "stall.json"
ENGINE_NAMES = {"postgresql": "PostgreSQL", "mysql": "MariaDB"}
TITLES = {
    "floor": "floor: sync + FIFREEZE + reflink copy + FITHAW, no lock",
    "run": "quiesce run (level full)",
    "run-auto": 'quiesce run, level = "auto"',
}
BEFORE_MS, AFTER_MS = 300.0, 250.0


def title(approach: str) -> str:
    if approach in TITLES:
        return TITLES[approach]
    if approach.startswith("azure-"):
        poll = approach.split("-")[1]
        level = ', level = "auto"' if approach.endswith("-auto") else ""
        return f"emulated Azure, poll {poll}{level}"
    return approach


def median_cycle(cycles: list[dict[str, Any]]) -> dict[str, Any] | None:
    ranked = sorted((c for c in cycles if c["stall_ms"] is not None),
                    key=lambda c: c["stall_ms"])
    return ranked[(len(ranked) - 1) // 2] if ranked else None


def draw(ax: Any, cycle: dict[str, Any]) -> None:
    marks = cycle["marks_ms"]
    zero = marks["freeze"][0] if "freeze" in marks else 0.0
    ends = [v[1] for k, v in marks.items() if k in ("freeze", "hold")]
    starts = [v[0] for k, v in marks.items() if k in ("freeze", "hold")]
    lo = min([zero - BEFORE_MS, *[s - 50 for s in starts]])
    hi = max([zero + 200, *[e + AFTER_MS for e in ends]])
    band = ax.get_xaxis_transform()  # x in data, y in axes fraction
    if "freeze" in marks:
        f0, f1 = marks["freeze"]
        ax.axvspan(f0 - zero, f1 - zero, color="tab:blue", alpha=0.2, lw=0,
                   label="freeze: first FIFREEZE to last FITHAW")
        ax.text((f0 + f1) / 2 - zero, 0.5, f"freeze\n{f1 - f0:.0f} ms", transform=band,
                ha="center", va="center", fontsize=7, color="tab:blue")
    if "hold" in marks:
        h0, h1 = marks["hold"]
        ax.fill_between([h0 - zero, h1 - zero], 0.9, 0.97, transform=band, color="tab:orange",
                        alpha=0.8, lw=0, label="hold: lock / backup mode held (run record)")
        ax.text(h1 - zero + 6, 0.935, f"hold {h1 - h0:.0f} ms", transform=band, ha="left",
                va="center", fontsize=7, color="tab:orange")
    if "commit-block" in marks:
        b0, b1 = marks["commit-block"]
        ax.fill_between([b0 - zero, b1 - zero], 0.82, 0.89, transform=band, color="tab:red",
                        alpha=0.6, lw=0, label="commit block: taken at the freeze (run record)")
    points = [(t - zero, lat) for t, lat in cycle["timeline"] if lo <= t <= hi]
    top = max([y for _, y in points] or [1.0])
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, ".", ms=3, color="black",
                label="one commit: latency (y) at the time it was issued (x)")
    if cycle.get("stall_at_ms"):
        a, b = cycle["stall_at_ms"]
        y = top * 1.12
        ax.annotate("", xy=(b - zero, y), xytext=(a - zero, y),
                    arrowprops={"arrowstyle": "<->", "color": "tab:red", "lw": 1.2})
        ax.text(a - zero - 6, y, f"stall {cycle['stall_ms']:.0f} ms", ha="right",
                va="center", color="tab:red", fontsize=8)
    ax.set_ylim(0, top * 1.45)
    ax.set_xlim(lo - zero, hi - zero)
    ax.grid(True, alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="PNG to write (default: the input's name with .png)")
    parser.add_argument("--approaches", default="floor,run",
                        help="rows, comma-separated (default floor,run)")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_stall: matplotlib is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    try:
        data = json.loads(args.input.read_text())
    except (OSError, ValueError) as exc:
        print(f"plot_stall: cannot read {args.input}: {exc}", file=sys.stderr)
        return 2
    engines = [e for e in data["engines"] if any(c["engine"] == e for c in data["cycles"])]
    rows = [a.strip() for a in args.approaches.split(",") if a.strip()]
    if not engines or not rows:
        print("plot_stall: nothing to plot", file=sys.stderr)
        return 2
    fig, axes = plt.subplots(len(rows), len(engines), figsize=(6.2 * len(engines),
                                                                2.6 * len(rows) + 0.8),
                             squeeze=False, sharex="col")
    legend: dict[str, Any] = {}
    for col, engine in enumerate(engines):
        version = data["engines"][engine].get("version") or ""
        for row, approach in enumerate(rows):
            ax = axes[row][col]
            cycle = median_cycle([c for c in data["cycles"]
                                  if c["engine"] == engine and c["approach"] == approach])
            head = f"{ENGINE_NAMES.get(engine, engine)}: {title(approach)}"
            if cycle is None:
                ax.set_title(f"{head}\n(not measured)", fontsize=9)
                continue
            levels = {lv.get("chosen") for lv in cycle["info"].get("levels", [])}
            extra = f", level chosen: {', '.join(sorted(levels))}" if levels - {None} else ""
            ax.set_title(f"{head}\nrun {cycle['run'] + 1}, median stall of its approach{extra}",
                         fontsize=9)
            draw(ax, cycle)
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
            if col == 0:
                ax.set_ylabel("commit latency (ms)")
            if row == len(rows) - 1:
                ax.set_xlabel(f"ms from the first FIFREEZE ({version})")
    fig.suptitle(f"Write stall of one backup cycle, {data.get('writer_rate_per_s', 200)} "
                 f"autocommit INSERTs/s\n{data['date']}, {data['runs']} paired run(s); red: "
                 "the longest gap between two completed commits",
                 fontsize=9)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=2, fontsize=7,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    output = args.output or args.input.with_suffix(".png")
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
