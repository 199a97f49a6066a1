#!/usr/bin/env python
"""Draw the six figures (accuracy per epoch, energy breakdown, accuracy vs energy, drift, ADC bits, by update rule).

    python experiments/make_figures.py runs/mnist_pcm_s0 runs/mnist_sweep_s0 --out docs/figures

Each RUN_DIR is a run directory (results.json + metrics.csv) or a sweep directory holding runs;
globs work too. See analogff/plots.py.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from analogff.plots import find_runs, save_all  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_figures.py", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run or sweep directories (or globs)")
    p.add_argument("--out", default="docs/figures", help="where to write the PNGs (default docs/figures)")
    p.add_argument("--dpi", type=int, default=120)
    args = p.parse_args(argv)
    try:
        runs = find_runs(args.run_dirs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"make_figures.py: error: {exc}", file=sys.stderr)
        return 2
    if not runs:
        print(f"make_figures.py: error: no run directories match {' '.join(args.run_dirs)}", file=sys.stderr)
        return 2
    for path in save_all(runs, args.out, dpi=args.dpi):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
