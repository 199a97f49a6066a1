#!/usr/bin/env python
"""The main job, ``analogff run`` under its old name: Forward-Forward on a simulated analog crossbar
next to digital FF and backprop, priced in joules.

    python experiments/mnist_analog.py                       # = analogff run (the ecram profile, real MNIST)
    python experiments/mnist_analog.py --device pcm --epochs 5
    python experiments/mnist_analog.py --help

Every flag is analogff run's (analogff/cli.py); see analogff/experiment.py for what is written
(results.json, metrics.csv).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from analogff.cli import run_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(prog="mnist_analog.py"))
