"""Plots of the benchmark results (matplotlib PNG, next to the JSON files they are drawn from).

- ``recall_vs_latency.png``: recall@10 vs exact search against single-thread p50 latency, one line per
  corpus, across the ``SearchParams`` sweep (nprobe x ndocs) each results file holds; the default
  parameters are circled.
- ``build_vs_size.png``: build time and peak RSS of the streaming build against the corpus size, from the
  scale runs (``scale_*.json``).

Usage::

    pip install matplotlib
    python bench/plots.py                      # reads and writes bench/results/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _pyplot():
    """``(matplotlib.pyplot, ScalarFormatter)``, with a clear error when matplotlib is missing (imported only
    once the command line is parsed, so ``--help`` works without it)."""
    try:
        import matplotlib
    except ImportError as e:
        raise SystemExit(f"bench/plots.py needs matplotlib: pip install matplotlib ({e})") from e
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    return plt, ScalarFormatter


def _sweep_lines(results: dict) -> dict[str, list[dict]]:
    """Sweep rows of one results file grouped into lines (one per nbits for bench/run.py files)."""
    lines: dict[str, list[dict]] = {}
    if "row" in results:  # bench/scale.py
        r = results["row"]
        label = f"{r['n_docs']:,} docs ({r['n_tokens'] / 1e6:.1f}M tokens), dim {r['dim']}, {r['nbits']} bits"
        lines[label] = results.get("sweep", [])
    else:  # bench/run.py
        n_docs = results["config"]["n_docs"]
        for row in results.get("sweep", []):
            label = f"{n_docs:,} docs, dim {row['dim']}, {row['nbits']} bits"
            lines.setdefault(label, []).append(row)
    return {k: v for k, v in lines.items() if v}


def recall_vs_latency(files: list[Path], out: Path) -> None:
    plt, ScalarFormatter = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in files:
        results = json.loads(path.read_text())
        env = results.get("env") or results["rows"][0]["env"]
        # the day matters as much as the commit: this VM's speed varies ~3x between days (bench/RESULTS.md)
        commit = f"{env['git_commit']}, {env.get('timestamp_utc', '?')[:10]}"
        for label, rows in _sweep_lines(results).items():
            rows = sorted(rows, key=lambda r: r["p50_ms"])
            x = [r["p50_ms"] for r in rows]
            y = [r["recall10_vs_exact"] for r in rows]
            (line,) = ax.plot(x, y, marker="o", label=f"{label} @ {commit}")
            for r in rows:
                ax.annotate(f"{r['nprobe']}/{r['ndocs']}", (r["p50_ms"], r["recall10_vs_exact"]), fontsize=7,
                            xytext=(3, -9), textcoords="offset points")  # fmt: skip
                if r.get("is_default"):
                    ax.plot(r["p50_ms"], r["recall10_vs_exact"], "o", ms=12, mfc="none", color=line.get_color())
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("single-query p50 latency, 1 thread (ms, log scale)")
    ax.set_ylabel("recall@10 vs exact MaxSim (search_exact)")
    ax.set_title("k=10, sweep of nprobe/ndocs (labels); circled: defaults", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_vs_size(files: list[Path], out: Path) -> None:
    rows = sorted((json.loads(p.read_text())["row"] for p in files), key=lambda r: r["n_tokens"])
    rows = [r for r in rows if "build_s" in r]
    if not rows:
        return
    tokens = [r["n_tokens"] / 1e6 for r in rows]
    plt, ScalarFormatter = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(tokens, [r["build_s"] / 60 for r in rows], "o-", color="tab:blue", label="build time")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("corpus size (million tokens, log)")
    ax.set_ylabel("build time (min, log)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(tokens, [r["peak_rss_gib_after_build"] for r in rows], "s--", color="tab:red", label="peak RSS")
    ax2.set_ylabel("peak RSS of the build (GiB)", color="tab:red")
    ax2.set_ylim(bottom=0)
    for r, t in zip(rows, tokens):
        ax.annotate(f"{r['n_docs']:,} docs, dim {r['dim']}", (t, r["build_s"] / 60), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_title("streaming build from a generator, 2-vCPU VM", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    _pyplot()
    files = sorted(args.results.glob("*.json"))
    with_sweep = [f for f in files if json.loads(f.read_text()).get("sweep")]
    recall_vs_latency(with_sweep, args.results / "recall_vs_latency.png")
    build_vs_size([f for f in files if f.name.startswith("scale_")], args.results / "build_vs_size.png")
    print(f"wrote {args.results / 'recall_vs_latency.png'} and {args.results / 'build_vs_size.png'}")


if __name__ == "__main__":
    main()
