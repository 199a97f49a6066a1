"""Wall time of a 4-cell sweep with ``--jobs 2`` against the same cells one after another.

    python benchmarks/sweep_speed.py                       # 4 seeds of the quick recipe (full MNIST, 1 epoch)
    python benchmarks/sweep_speed.py --train-limit 10000   # smaller cells (process start-up weighs more)

Each variant runs as its own ``analogff sweep`` process into a fresh directory: ``--jobs 1
--threads-per-cell 1`` (one process, one thread), ``--jobs 2`` (two worker processes, one torch
thread each) and, with ``--two-threads``, ``--jobs 1`` with two threads. Prints the wall times, the ratio of
``--jobs 2`` to the faster one-process run (target: at most 0.75x on two cores), the load average
before and after (other work on the machine changes the numbers), and whether the variants gave
the same accuracies. Compilation is not timed: an untimed one-cell warm-up sweep (200 training
images) first fills the kernel package cache (``analogff.engine.aot``) for each thread count used.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(out: Path, jobs: int, cell: list[str], grid: list[str], threads: int | None = None) -> float:
    cmd = [sys.executable, "-m", "analogff.cli", "-q", "sweep", *cell, "--grid", *grid, "--jobs", str(jobs),
           "--out", str(out)] + ([] if threads is None else ["--threads-per-cell", str(threads)])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def accuracies(out: Path) -> dict[tuple[str, str], str]:
    with (out / "summary.csv").open() as fh:
        return {(r["cell"], r["method"]): r["test_accuracy"] for r in csv.DictReader(fh)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-limit", default=None, help="training images per cell (default: all 60000)")
    p.add_argument("--test-limit", default=None, help="test images per cell (default: all 10000)")
    p.add_argument("--two-threads", action="store_true",
                   help="also time --jobs 1 with 2 threads per cell (oversubscribed when the machine is busy)")
    p.add_argument("--methods", default="analog_ff,digital_ff")
    p.add_argument("--device", default="ecram")
    p.add_argument("--keep", metavar="DIR", help="keep the sweep directories here")
    args = p.parse_args(argv)
    cell = ["--recipe", "quick", "--methods", args.methods, "--device", args.device, "--drift-times", ""]
    tiny = cell + ["--train-limit", "200", "--test-limit", "100"]
    cell += ["--train-limit", args.train_limit] if args.train_limit else []
    cell += ["--test-limit", args.test_limit] if args.test_limit else []
    grid = ["seed=0,1,2,3"]
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sweep_speed_"))
    print(f"# sweep speed: 4 cells (seed=0,1,2,3) of analogff run {' '.join(c or repr(c) for c in cell)}")
    print(f"# {os.cpu_count()} cores, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    load0 = os.getloadavg()
    print(f"# load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    for threads in ((1, 2) if args.two_threads else (1,)):  # untimed: compiles the kernels once
        sweep(base / f"warmup_t{threads}", 1, tiny, ["seed=0"], threads=threads)
    seq = None
    if args.two_threads:
        seq = sweep(base / "jobs1", 1, cell, grid, threads=2)
        print(f"--jobs 1 --threads-per-cell 2 (one process, 2 threads): {seq:.1f} s", flush=True)
    seq1 = sweep(base / "jobs1_t1", 1, cell, grid, threads=1)
    print(f"--jobs 1 --threads-per-cell 1 (one process, 1 thread): {seq1:.1f} s", flush=True)
    par = sweep(base / "jobs2", 2, cell, grid, threads=1)
    print(f"--jobs 2 (two processes, 1 thread each): {par:.1f} s", flush=True)
    load1 = os.getloadavg()
    same = accuracies(base / "jobs1_t1") == accuracies(base / "jobs2")
    print(f"# load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(f"# same accuracies in --jobs 1 and --jobs 2 (1 thread each): {same}")
    best = min(seq1, seq) if seq else seq1
    ratio = par / best
    print(f"ratio jobs2 / jobs1 (the faster one-process run): {ratio:.2f}x (target <= 0.75x): "
          f"{'met' if ratio <= 0.75 else 'NOT met'}" + (f"; against 2 threads {par / seq:.2f}x" if seq else ""))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
