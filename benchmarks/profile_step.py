"""Where one analog FF step's time goes: per-step times and a torch profile of the torch engine.

The main job's step of one 784 x 500 layer (as ``engine_speed.py`` times it): the forward MVM of 200
MNIST rows and the periphery's Adam step transferred row by row (``update_rows``). Prints the
wall-clock ms and the page faults of each of the first ``--steps`` steps (the first one compiles the
kernels, or loads their packages from the cache of ``analogff.engine.aot``: shown, not hidden), then, for the profiles named in ``--profile-ops``, torch.profiler tables of 5 more
steps sorted by device and by host time (on CUDA: GPU kernel time per step against host time, and
the number of launches). Like the main job, it calls ``experiment.keep_freed_memory()`` unless
``--no-keep-freed``.

Usage: ``python benchmarks/profile_step.py --profiles pcm,reram_sb --profile-ops reram_sb
[--torch-device cuda]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", default="reram_sb", help="comma list of devices/NAME.toml")
    p.add_argument("--profile-ops", default="", help="comma list of profiles to run torch.profiler on")
    p.add_argument("--steps", type=int, default=6, help="timed steps per profile")
    p.add_argument("--torch-device", default="cpu", help="cpu | cuda")
    p.add_argument("--no-keep-freed", action="store_true",
                   help="leave glibc's malloc as it is (no experiment.keep_freed_memory())")
    args = p.parse_args(argv)
    dev = torch.device(args.torch_device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--torch-device {args.torch_device}: torch sees no CUDA GPU here")
    names = [n for n in args.profiles.split(",") if n]
    for n in names:
        if not (ROOT / "devices" / f"{n}.toml").is_file():
            p.error(f"--profiles: no devices/{n}.toml")

    from analogff.crossbar import Crossbar
    from analogff.data import load_mnist
    from analogff.experiment import keep_freed_memory
    from analogff.ff import adam_direction

    if not args.no_keep_freed:
        keep_freed_memory()  # as the main job does

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(load_mnist("train")[0][:200]).float().to(dev)
    for name in names:
        xb = Crossbar(784, 500, device=ROOT / "devices" / f"{name}.toml", seed=0, engine="torch")
        xb.set_weights((torch.rand(500, 784, generator=g) * 2 - 1) / 28)
        xb.to(dev)
        eng = xb.engine
        m = torch.zeros(500, 784, device=dev)
        v = torch.zeros_like(m)
        d = torch.randn(200, 500, generator=g).to(dev) * 0.01

        def step(t: int) -> None:
            eng.forward(x, False)
            eng.update_rows(adam_direction(m, v, t, d.T @ x), 1e-3 / xb.w_scale)

        times, faults = [], []
        for t in range(1, args.steps + 1):
            sync()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            step(t)
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        print(name, f"ms per step, steps 1..{args.steps}:", " ".join(f"{t:.1f}" for t in times), flush=True)
        print(name, "page faults per step:", " ".join(str(f) for f in faults), flush=True)
        if name in args.profile_ops.split(","):
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with profile(activities=acts) as prof:
                for t in range(args.steps + 1, args.steps + 6):
                    step(t)
                sync()
            ka = prof.key_averages()
            if dev.type == "cuda":
                print(ka.table(sort_by="self_cuda_time_total", row_limit=12), flush=True)
            print(ka.table(sort_by="self_cpu_time_total", row_limit=12), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
