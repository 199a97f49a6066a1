"""Digests of the main job's analog FF weights and counters after a few steps, on every profile.

For every profile in ``devices/*.toml`` this builds the main job's analog FF net
(``FFNet([784, 500, 500], layer="analog", device=profile, config=FFConfig())``), runs ``--steps``
``train_step`` calls on the first ``steps * batch`` real MNIST training images (batch 100,
``torch.Generator().manual_seed(0)``, one torch thread) and prints, per profile, an md5 of all layer
weights (``layer.xbar.get_weights()``, float32 bytes in layer order) and an md5 of the counters
(``net.total_counts().as_dict()``, its non-zero entries as JSON with sorted keys, so that a new
counter that stays 0 leaves the digest as it was), an md5 of the crossbars' own counters (the
analog work: MVMs, conversions, reads, read V^2 G, pulses), then the counters themselves.

Two runs of this script at two commits print the same weight digests when a change preserves the
simulation bit for bit (a refactor, a counting fix); the counter digest tells whether the counts moved.

    python benchmarks/weights_digest.py > benchmarks/results/weights_digest_$(git rev-parse --short HEAD).txt
    python benchmarks/weights_digest.py --profiles pcm ecram --compile 0

``--compile`` sets ``ANALOGFF_COMPILE`` (default ``auto``, as the main job: the 784 x 500 tiles are
compiled); eager and compiled kernels agree only up to float rounding, so compare runs of one mode.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", nargs="*", default=None, help="profile names (default: all of devices/*.toml)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--compile", default="auto", choices=("auto", "0", "1"), help="ANALOGFF_COMPILE")
    args = p.parse_args(argv)
    os.environ["ANALOGFF_COMPILE"] = args.compile

    import torch

    torch.set_num_threads(1)
    from analogff.data import load_mnist
    from analogff.experiment import keep_freed_memory
    from analogff.ff import FFConfig, FFNet

    keep_freed_memory()  # as the main job (does not change any number)
    names = args.profiles or sorted(q.stem for q in (ROOT / "devices").glob("*.toml"))
    n = args.steps * args.batch
    xs, ys = load_mnist("train")
    x_all, y_all = torch.from_numpy(xs[:n]).float(), torch.from_numpy(ys[:n]).long()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "analogff"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        sha, dirty = "unknown", False
    print(f"# weights_digest at {sha}{' (analogff/ modified)' if dirty else ''}: {args.steps} train_steps of "
          f"batch {args.batch}, FFNet([784, 500, 500], analog, FFConfig()), threads 1, "
          f"ANALOGFF_COMPILE={args.compile}, torch {torch.__version__}")
    for name in names:
        t0 = time.perf_counter()
        net = FFNet([784, 500, 500], layer="analog", device=ROOT / "devices" / f"{name}.toml", config=FFConfig())
        gen = torch.Generator().manual_seed(0)
        for s in range(args.steps):
            lo, hi = s * args.batch, (s + 1) * args.batch
            net.train_step(x_all[lo:hi], y_all[lo:hi], gen)
        h = hashlib.md5()
        for layer in net.layers:
            h.update(layer.xbar.get_weights().detach().cpu().float().contiguous().numpy().tobytes())
        counts = net.total_counts().as_dict()
        xbar = {}  # the crossbars' own counters (analog work; the rest is the periphery's)
        for layer in net.layers:
            for k, v in layer.xbar.counters.as_dict().items():
                xbar[k] = xbar.get(k, 0) + v

        def md5(c: dict) -> str:
            return hashlib.md5(json.dumps({k: v for k, v in c.items() if v}, sort_keys=True).encode()).hexdigest()

        print(f"{name:14s} weights {h.hexdigest()}  counts {md5(counts)}  xbar {md5(xbar)}  "
              f"({time.perf_counter() - t0:.1f} s)")
        print(f"{'':14s} counts {json.dumps(counts, sort_keys=True)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
