"""One half batch's pulses on a transfer compound's fast array: signed moments
(``DeviceArray.pulse_signed`` on :class:`SignedMoments`, the kernel forms the four moment arrays)
against the four arrays written out first (``DeviceArray.pulse`` after ``split_by_sign``).

Both paths give the same weights (tests/test_engine_moments.py); this times them in one process,
interleaved, on the 784 x 500 fast array of a profile, 1 thread::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fast_array_split.py --profile ecram_cttv2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="ecram_cttv2", help="a transfer compound in devices/")
    p.add_argument("--calls", type=int, default=30, help="timed calls per path and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from analogff.crossbar import Crossbar
    from analogff.engine.moments import SignedMoments, split_by_sign
    from analogff.experiment import keep_freed_memory

    keep_freed_memory()  # as the main job does
    xbar = Crossbar(784, 500, device=ROOT / "devices" / f"{args.profile}.toml", seed=0, engine="torch")
    arr = getattr(xbar.engine.cell, "fast", None)
    if arr is None:
        p.error(f"--profile {args.profile}: not a transfer compound (no fast array); try ecram_cttv2")
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(arr.shape, generator=g) * 0.3
    m2 = mu * 0.1
    mu = torch.where(torch.rand(arr.shape[1], generator=g) < 0.5, mu, -mu)  # the sign set by the column
    m2_scale = 3.125  # FF's half batch of 100 over its 32 second-moment samples
    rng = xbar.engine.rng

    def four() -> None:
        arr.pulse(*split_by_sign(mu, m2), rng, m2_scale=m2_scale)

    def signed() -> None:
        arr.pulse_signed(SignedMoments(mu, m2, m2_scale), rng)

    for f in (four, signed):  # untimed: compilation or the package cache's load
        for _ in range(3):
            f()
    print(f"# {args.profile}: one half batch's pulses on the {arr.shape[0]} x {arr.shape[1]} fast array, "
          f"ms per call (mean of {args.calls}), torch {torch.__version__}, 1 thread")
    for r in range(args.rounds):
        res = []
        for f in (four, signed):
            t = time.perf_counter()
            for _ in range(args.calls):
                f()
            res.append((time.perf_counter() - t) / args.calls * 1e3)
        print(f"round {r + 1}: four arrays {res[0]:.2f} ms, signed {res[1]:.2f} ms ({res[0] / res[1]:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
