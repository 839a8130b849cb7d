"""One PNG of the latency distributions the benchmarks measured, so a reader sees the
tail at a glance.

    python3 bench/plot.py [--out PNG] [JSON ...]

Reads the ``"samples": {"series name": [ms, ...]}`` of each benchmark's ``--json`` file
(default: every bench/out/*.json) and draws one row a series, grouped by file (under the
file's ``"title"``, else its name): a box (quartiles, whiskers at 1.5 IQR), every
sample as a dot, p50 as a black bar, p99 as a red one, the target of the median (a
``"checks"`` entry whose ``series`` names it, with a ``limit``) as a dashed orange one,
and n, p50 and p99 written beside; milliseconds on a log scale. Creates are blue;
destroys and reads (a name with ``destroy``, or starting ``get``/``list``) green;
baselines (a name starting ``baseline`` or ``raw``, the tools by hand) grey. A file
without samples is named and passed over.
Writes bench/out/latency.png unless told otherwise and prints its path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
# The files of `make bench`, in its order, then others.
ORDER = ["run", "create_api", "pause_local", "fork", "compose", "fleet"]
# (label, {series: samples}, {series: target in ms})
Sources = list[tuple[str, dict[str, list[float]], dict[str, float]]]


def colour(name: str) -> str:
    low = name.lower()
    if low.startswith(("baseline", "raw")):
        return "0.6"
    if "destroy" in low or low.startswith(("get", "list")):
        return "tab:green"
    return "tab:blue"


def load(paths: list[Path]) -> Sources:
    """(label, series) per file that has samples; the others are named on stderr."""
    sources: Sources = []
    rank = {stem: i for i, stem in enumerate(ORDER)}
    for path in sorted(paths, key=lambda p: (rank.get(p.stem, len(ORDER)), p.name)):
        if not path.is_file():  # a shell's unmatched glob: no benchmark wrote a file
            print(f"bench/plot.py: {path}: no such file", file=sys.stderr)
            continue
        doc = json.loads(path.read_text())
        samples = {name: [float(x) for x in values]
                   for name, values in (doc.get("samples") or {}).items() if values}
        if samples:
            limits = {c["series"]: float(c["limit"]) for c in doc.get("checks") or []
                      if isinstance(c, dict) and c.get("series") in samples
                      and c.get("limit") is not None}
            sources.append((str(doc.get("title") or path.stem), samples, limits))
        else:
            print(f"bench/plot.py: {path} has no samples; not drawn", file=sys.stderr)
    return sources


def render(sources: Sources, out: Path, title: str | None = None) -> Path:
    """Draw ``sources`` into the PNG ``out`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows: list[tuple[str, str, list[float], float | None]] = [
        (label, name, values, limits.get(name))
        for label, series, limits in sources for name, values in series.items()]
    if not rows:
        raise SystemExit("bench/plot.py: no samples to draw (run the benchmarks with --json)")
    fig, ax = plt.subplots(figsize=(13, 1.4 + 0.42 * len(rows) + 0.3 * len(sources)))
    rng = np.random.default_rng(0)
    ticks: list[float] = []
    names: list[str] = []
    y, previous = 0.0, None
    lo = min(min(v) for _l, _n, v, _t in rows)
    hi = max(max(v) for _l, _n, v, _t in rows)
    for label, name, values, target in rows:
        if label != previous:
            y -= 0.5 if previous is not None else 0
            ax.text(lo, y - 0.15, label, fontweight="bold", va="bottom", fontsize=9)
            y -= 0.45
            previous = label
        data = np.asarray(values)
        c = colour(name)
        ax.boxplot([data], positions=[y], orientation="horizontal", widths=0.5, showfliers=False,
                   manage_ticks=False, patch_artist=True,
                   boxprops={"facecolor": "none", "edgecolor": c},
                   whiskerprops={"color": c}, capprops={"color": c},
                   medianprops={"color": "none"})
        ax.scatter(data, y + rng.uniform(-0.18, 0.18, len(data)), s=9, alpha=0.55,
                   color=c, linewidths=0, zorder=3)
        p50, p99 = np.percentile(data, [50, 99])
        ax.vlines(p50, y - 0.32, y + 0.32, color="black", linewidth=2, zorder=4)
        ax.vlines(p99, y - 0.32, y + 0.32, color="tab:red", linewidth=2, zorder=4)
        if target is not None:
            ax.vlines(target, y - 0.45, y + 0.45, color="tab:orange", linewidth=1.5,
                      linestyles="dashed", zorder=2)
        ax.text(hi * 1.25, y, f"n={len(data)}  p50 {p50:.1f}  p99 {p99:.1f} ms",
                va="center", fontsize=8)
        ticks.append(y)
        names.append(name)
        y -= 1
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.3, hi * 9)
    ax.set_ylim(y + 0.4, 0.3)
    ax.set_xlabel("milliseconds (log scale); black bar p50, red bar p99, "
                  "dashed orange the median's target")
    ax.grid(axis="x", which="both", alpha=0.25)
    ax.set_title(title or "sand-boxer latency distributions (create, destroy, baselines)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("files", nargs="*", type=Path,
                        help="benchmark JSON files (default: bench/out/*.json)")
    parser.add_argument("--out", type=Path, default=OUT / "latency.png", help="the PNG")
    args = parser.parse_args(argv)
    files: list[Path] = args.files or sorted(OUT.glob("*.json"))
    if not files:
        print(f"bench/plot.py: no JSON files in {OUT}; run `make bench` first",
              file=sys.stderr)
        return 1
    print(render(load(files), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
