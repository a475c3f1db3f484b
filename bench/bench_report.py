"""Report benchmark: the bundle of the W1 year run (CSVs, summary.json, report.html and its plots): time and peak memory.

Each measurement runs ``write_bundle`` in a fresh subprocess (so imports are counted once and the
peak RSS is the report's own), for a one-month run and the one-year run: time (target ≤ 15 s) and
peak RSS, whose ratio year / month says whether memory stays flat. The year is measured for the
layout the store writes today (optimize, interleaved) and the sorted one (``compact_run_sorted``).

Run: ``.venv/bin/python bench/bench_report.py`` (builds W1 and a one-month run under bench/out/ first if needed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_query import OUT, RUN, ensure_sorted, ensure_w1  # noqa: E402


def child(root: Path) -> None:
    from results_store.report import write_bundle

    t0 = time.perf_counter()
    bundle = write_bundle(root, RUN)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "timesteps": bundle.summary.timesteps,
                      "performance_mb": (bundle.directory / "performance.csv").stat().st_size / 1e6}))


def measure(root: Path) -> dict[str, float]:
    output = subprocess.run([sys.executable, __file__, "--child", str(root)], capture_output=True, text=True,
                            check=True, env={**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"})
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    year = ensure_w1(OUT / "w1-year", 525_600)
    year_sorted = ensure_sorted(year, OUT / "w1-year-sorted")
    month = ensure_w1(OUT / "w1-month", 43_200)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; each row: a fresh process, "
          "allocators as the CLI sets them")
    rows = {"one month (43,200 timesteps)": measure(month),
            "one year, as stored today (interleaved)": measure(year),
            "one year, sorted layout": measure(year_sorted)}
    for name, r in rows.items():
        print(f"  {name:<42} {r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
              f"{r['timesteps']:>9,.0f} timesteps  performance.csv {r['performance_mb']:.0f} MB")
    base = rows["one month (43,200 timesteps)"]["peak_rss_mb"]
    for name in ("one year, as stored today (interleaved)", "one year, sorted layout"):
        r = rows[name]
        print(f"{name}: {r['seconds']:.1f} s (target ≤ 15 s), peak RSS {r['peak_rss_mb'] / base:.2f}× the month's "
              "(flat: ≈ 1)")


if __name__ == "__main__":
    main()
