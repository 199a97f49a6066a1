"""A row-by-row transfer (the periphery's Adam step onto the array, ``update_rows``): two moment
arrays split by sign in the device kernel (:class:`analogff.engine.moments.SignedMoments`, the
engine's path) against the four moment arrays written out first (``_rowwise_moments``, then
``DeviceArray.pulse``, or the PCM pair's four-array kernel).

Both paths give the same weights bit for bit (tests/test_engine_moments.py); this times them in
one process, interleaved, on a 784 x 500 layer of each profile, 1 thread, compiled kernels (warm-up
calls first)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/row_transfer_split.py --profiles ecram,reram_sb,pcm
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
    p.add_argument("--profiles", default="idealized,ecram,reram_sb,reram_es,pcm",
                   help="comma list of single-device or one-sided profiles in devices/")
    p.add_argument("--calls", type=int, default=40, help="timed calls per path")
    args = p.parse_args(argv)

    import torch

    from analogff import experiment
    from analogff.devices import load_device
    from analogff.engine import TorchPulsedEngine
    from analogff.engine.moments import _rowwise_moments

    torch.set_num_threads(1)
    experiment.keep_freed_memory()  # as the main job
    print(f"# row_transfer_split: torch {torch.__version__}, 1 thread, 784 x 500, medians of {args.calls} "
          "interleaved calls, ms per update_rows")
    print("| profile | signed moments (2 arrays) | four arrays | ratio |")
    print("|---|---:|---:|---:|")
    for name in [s.strip() for s in args.profiles.split(",") if s.strip()]:
        eng = TorchPulsedEngine(784, 500, load_device(ROOT / "devices" / f"{name}.toml").rpu_config(), seed=0)
        cell = eng.cell
        if not (hasattr(cell, "arr") or hasattr(cell, "devs")) or hasattr(cell, "chi"):
            print(f"| {name} | (not a single-device or one-sided cell) | | |")
            continue
        g = torch.Generator().manual_seed(5)
        eng.set_weights((torch.rand(500, 784, generator=g) - 0.5) * 0.2)
        u = torch.randn(500, 784, generator=g) * torch.rand(1, 784, generator=g) * 1e-3
        lr = 1.0

        def signed() -> None:
            cell.update_rows(u, lr, eng.rng)

        if hasattr(cell, "devs"):
            def four() -> None:
                cell._apply_moments(_rowwise_moments(u, lr, cell.up, cell.gran, cell.devs[0].k), u.shape[1], eng.rng,
                                    one_sign=True)
        else:
            def four() -> None:
                mu_u, mu_d, m2_u, m2_d, sc = _rowwise_moments(u, lr, cell.up, cell.gran, cell.arr.k)
                cell.arr.pulse(mu_u, mu_d, m2_u, m2_d, eng.rng, m2_scale=sc, post=True, one_sign=True)

        for f in (signed, four, signed, four):  # compile or load the packages
            f()
        times: dict[str, list[float]] = {"signed": [], "four": []}
        for i in range(args.calls):
            for key, f in ((("signed", signed), ("four", four)) if i % 2 else (("four", four), ("signed", signed))):
                t = time.perf_counter()
                f()
                times[key].append(time.perf_counter() - t)
        med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
        print(f"| {name} | {med['signed']:.2f} | {med['four']:.2f} | {med['four'] / med['signed']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
