"""Where the device kernels' time goes: memory traffic, random numbers, and the device math.

For each profile this captures the device kernels of one main-job step of a 784 x 500 tile, the
step that ``engine_speed.py`` times (forward of 2 x 100 MNIST rows, then the periphery's Adam step
transferred row by row, or on a transfer compound the on-array update at lr 0.01). It then times
each captured call (kernels are pure functions of their arguments, so a call can be repeated),
compiled with ``torch.compile`` as the engine compiles it (small flat subsets run eagerly, as in
the engine), three ways, interleaved in ``--rounds`` rounds (the least round median is kept):

- *kernel*: the kernel as it is;
- *no random*: the same kernel with its random numbers made by stand-ins that do no hashing and no
  Box-Muller (the counter xor the key; a uniform and two "normals" linear in those bits), through a
  copy of its module's functions (the engine's own are untouched). The difference to *kernel* is
  what the counter-based bits and their normals cost;
- *memory*: one pass that reads every tensor argument of the call and writes as many arrays as the
  kernel returns: the floor of the kernel's memory traffic.

A kernel's arithmetic and its memory traffic overlap, so *no random* - *memory* is a lower bound
on the device math (the closed forms, the pulse draw, the bridge). Prints ms per call and their sum
per step, 1 thread::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kernel_split.py --profiles ecram,reram_es,pcm,ecram_cttv2

Each kernel is compiled three times here (seconds each, untimed). The engine runs the same
kernels from AOTInductor packages (``analogff.engine.aot``), the same inductor code.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _bits_free(key, like, draws: int = 1):
    """Stand-in for :func:`analogff.engine.rng._bits`: the counter xor the key, no mixing."""
    import torch

    i = torch.arange(draws * like.numel(), device=like.device, dtype=torch.int64) ^ key
    return i.view((draws,) + tuple(like.shape)) if draws > 1 else i.view(like.shape)


def _unpack_free(bits):
    """Stand-in for :func:`analogff.engine.rng._unpack`: the same bit fields, no log, sqrt, cos or sin."""
    import torch

    u = ((bits & 0xFFFFFF).to(torch.float32) + 0.5) * (2.0**-24)
    z1 = ((bits >> 24) & 0xFFFFFF).to(torch.float32) * (2.0**-23) - 1.0
    z2 = ((bits >> 48) & 0x7FFF).to(torch.float32) * (2.0**-14) - 1.0
    return u, z1, z2


def _memory_pass(n_out: int) -> Callable:
    """A function that reads every tensor argument once and writes ``n_out`` arrays of the largest size."""
    import torch

    def f(*ts):
        big = max(t.numel() for t in ts)
        acc = None
        small = []
        for t in ts:
            if t.numel() == big:
                v = t.reshape(-1).to(torch.float32)
                acc = v if acc is None else acc + v
            else:
                small.append(t.to(torch.float32).sum())
        return tuple(acc * float(k + 1) for k in range(n_out)) + tuple(small)

    return f


def _median_ms(fn: Callable[[], Any], calls: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _capture_step(profile: str) -> list[tuple[Callable, tuple, dict]]:
    """The kernel calls of one main-job step (after 4 untimed steps) of a 784 x 500 tile."""
    import torch

    import engine_speed as es
    from analogff.crossbar import Crossbar
    from analogff.engine.kernels import Kernels
    from analogff.ff import adam_direction

    es.bind_analogff()
    gen = torch.Generator().manual_seed(0)
    x, _ = es.mnist_batch(gen)
    w = (torch.rand(500, es.IN, generator=gen) * 2 - 1) / es.IN**0.5
    xbar = Crossbar(es.IN, 500, device=ROOT / "devices" / f"{profile}.toml", seed=0, engine="torch")
    xbar.set_weights(w)
    eng = xbar.engine
    onarray = hasattr(eng.cell, "fast")
    d = es.layer_error(x, w, "onarray" if onarray else "adam")
    m, v = torch.zeros(500, es.IN), torch.zeros(500, es.IN)

    def step(t: int) -> None:
        eng.forward(x, False)
        if onarray:
            eng.update(x, d, 0.01 / xbar.w_scale)
        else:
            eng.update_rows(adam_direction(m, v, t, d.T @ x), 1e-3 / xbar.w_scale)

    for t in range(1, 5):
        step(t)
    calls: list[tuple[Callable, tuple, dict]] = []
    orig = Kernels.__call__

    def record(self, fn, *args, **kwargs):
        calls.append((fn, args, kwargs))
        return orig(self, fn, *args, **kwargs)

    Kernels.__call__ = record
    try:
        step(5)
    finally:
        Kernels.__call__ = orig
    return calls


def _fresh(fn: Callable) -> Callable:
    """``fn`` with a new code object: torch.compile keys its cache on the code (and assumes the
    globals it was compiled with), so every call timed here gets its own compilation."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _without_random(fn: Callable) -> Callable:
    """``fn`` with the stand-in random numbers: a copy of its module's functions whose globals see
    :func:`_bits_free` and :func:`_unpack_free` (the engine's own functions are left as they are)."""
    mod = sys.modules[fn.__module__]
    g = dict(mod.__dict__)
    for name, f in mod.__dict__.items():
        if isinstance(f, types.FunctionType) and f.__module__ == mod.__name__:
            g[name] = types.FunctionType(f.__code__.replace(), g, f.__name__, f.__defaults__, f.__closure__)
    if "_bits" in g:
        g["_bits"], g["_unpack"] = _bits_free, _unpack_free
    return g[fn.__name__]


def _time_call(fn: Callable, args: tuple, kwargs: dict, calls: int, rounds: int) -> dict[str, float]:
    """The three ways of one kernel call, interleaved over ``rounds`` (each the median of ``calls``
    calls); the least round median of each way."""
    import torch

    from analogff.engine.kernels import _small_call

    eager = _small_call(args)
    result = fn(*args, **kwargs)
    n_out = sum(1 for r in (result if isinstance(result, tuple) else (result,))
                if isinstance(r, torch.Tensor) and r.dim() > 0)
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0]
    ways = {"kernel": _fresh(fn), "no random": _without_random(fn), "memory": _fresh(_memory_pass(max(n_out, 1)))}
    if not eager:  # each its own code object: compiled once for this call's shapes
        ways = {k: torch.compile(f, dynamic=False) for k, f in ways.items()}
    runs = {"kernel": lambda: ways["kernel"](*args, **kwargs), "no random": lambda: ways["no random"](*args, **kwargs),
            "memory": lambda: ways["memory"](*tensors)}
    best = {k: float("inf") for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            best[k] = min(best[k], _median_ms(run, calls))
    best["devices"] = max((a.numel() for a in tensors), default=0)
    best["eager"] = float(eager)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profiles", default="ecram,reram_es,pcm,ecram_cttv2", help="comma list of devices/NAME.toml")
    p.add_argument("--calls", type=int, default=10, help="timed calls per kernel, way and round")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the three ways, interleaved")
    args = p.parse_args(argv)
    names = [n for n in args.profiles.split(",") if n]
    for n in names:
        if not (ROOT / "devices" / f"{n}.toml").is_file():
            p.error(f"--profiles: no devices/{n}.toml (see devices/ for the profiles)")

    import torch

    from analogff.experiment import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()  # as the main job does
    print(f"# kernel_split: ms per call (least of {args.rounds} interleaved rounds' medians of {args.calls}), torch {torch.__version__}, 1 thread; "
          "'no random': the same kernel with stand-in random numbers (no hashing, no Box-Muller); "
          "'memory': one pass reading the call's tensor arguments and writing its outputs", flush=True)
    for name in names:
        tot = {"kernel": 0.0, "no random": 0.0, "memory": 0.0}
        for fn, a, kw in _capture_step(name):
            r = _time_call(fn, a, kw, args.calls, args.rounds)
            for k in tot:
                tot[k] += r[k]
            print(f"{name:16s} {fn.__name__:28s} {int(r['devices']):7d} devices{' (eager)' if r['eager'] else '        '}"
                  f"  kernel {r['kernel']:6.2f}  no random {r['no random']:6.2f}  memory {r['memory']:5.2f}", flush=True)
        print(f"{name:16s} {'per step':28s} {'':23s}  kernel {tot['kernel']:6.2f}  no random {tot['no random']:6.2f}  "
              f"memory {tot['memory']:5.2f}  -> random numbers {tot['kernel'] - tot['no random']:.2f}, "
              f"device math {tot['no random'] - tot['memory']:.2f}, memory {tot['memory']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
