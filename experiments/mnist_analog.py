#!/usr/bin/env python
"""Train Forward-Forward on a simulated analog crossbar next to digital FF and backprop; price it in joules.

    python experiments/mnist_analog.py                       # default profile, real MNIST
    python experiments/mnist_analog.py --device devices/pcm.toml --epochs 5
    python experiments/mnist_analog.py --help

See analogff/experiment.py for what is written (results.json, metrics.csv).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from analogff.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
