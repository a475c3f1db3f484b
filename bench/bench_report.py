"""Report benchmark: the bundle of the W1 year run (CSVs, summary.json, report.html and its plots): time and peak memory.

Each measurement runs ``write_bundle`` in a fresh subprocess (so imports are counted once and the
peak RSS is the report's own), for a one-month run and the one-year run: time (target ≤ 15 s) and
peak RSS, whose ratio year / month says whether memory stays flat, and CPU time (user + system, all
threads: on a shared machine the wall time carries other processes' load). The runs are in the layout
the store writes (streamed batches: one file per table per 100,000 timesteps); with ``--sorted`` the
year is also measured on a copy rewritten by ``compact_run_sorted`` (one file per table).

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

    start = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = start.ru_utime + start.ru_stime  # the imports' CPU left out, as their time is
    t0 = time.perf_counter()
    bundle = write_bundle(root, RUN)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = usage.ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime - cpu0, "peak_rss_mb": peak_mb,
                      "timesteps": bundle.summary.timesteps,
                      "performance_mb": (bundle.directory / "performance.csv").stat().st_size / 1e6}))


def measure(root: Path) -> dict[str, float]:
    output = subprocess.run([sys.executable, __file__, "--child", str(root)], capture_output=True, text=True,
                            check=True, env={**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"})
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sorted", action="store_true", help="also the year rewritten by compact_run_sorted")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    year = ensure_w1(OUT / "w1-year", 525_600)
    month = ensure_w1(OUT / "w1-month", 43_200)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; each row: a fresh process, "
          "allocators as the CLI sets them")
    rows = {"one month (43,200 timesteps)": measure(month), "one year, as stored": measure(year)}
    if args.sorted:
        rows["one year, sorted copy"] = measure(ensure_sorted(year, OUT / "w1-year-sorted"))
    for name, r in rows.items():
        print(f"  {name:<30} {r['seconds']:6.1f} s  CPU {r['cpu_s']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  "
              f"{r['timesteps']:>9,.0f} timesteps  performance.csv {r['performance_mb']:.0f} MB")
    base = rows["one month (43,200 timesteps)"]["peak_rss_mb"]
    for name in list(rows)[1:]:
        r = rows[name]
        print(f"{name}: {r['seconds']:.1f} s, CPU {r['cpu_s']:.1f} s (target ≤ 15 s), peak RSS "
              f"{r['peak_rss_mb'] / base:.2f}× the month's (flat: ≈ 1)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
