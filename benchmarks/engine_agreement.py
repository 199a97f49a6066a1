"""End-to-end check of the torch crossbar engine against aihwkit's own tiles (issue #7).

Trains the same analog Forward-Forward net (the main job's recipe: 784-500-500, SymBa, hard
negatives, the periphery's Adam update, lr 1e-3) on the first ``--train-samples`` real MNIST
training images, once with ``engine="aihwkit"`` (aihwkit's C++ tiles, the reference) and once with
``engine="torch"`` (analogff's batched engine), for several seeds, and prints the test accuracy of
both, their mean difference and its standard error. The engines draw different random numbers
(aihwkit's C++ generator is seeded from the clock), so single runs differ by their sampling noise;
the check is that the mean over seeds agrees within 1 pp.

    python benchmarks/engine_agreement.py                       # ecram, 3 seeds, 10k images
    python benchmarks/engine_agreement.py --devices ecram reram_sb --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analogff.devices import load_device  # noqa: E402
from analogff.ff import FFConfig, FFNet  # noqa: E402
from analogff.train import load_mnist_data, train_ff  # noqa: E402


def run(device: str, engine: str, seed: int, data: dict, dims: list[int], cfg: FFConfig,
        epochs: int = 1) -> tuple[float, float, float]:
    """(test accuracy by goodness, by the softmax head, seconds) of one short training run."""
    # like with like: aihwkit keeps a transfer compound's buffer H in float, so the torch engine does too
    # here ([periphery] buffer_bits is an analogff extension)
    profile = replace(load_device(ROOT / "devices" / f"{device}.toml"), buffer_bits=None)
    net = FFNet(dims, layer="analog", device=profile, config=replace(cfg, engine=engine, seed=seed))
    t = time.perf_counter()
    hist = train_ff(net, data, epochs=epochs, seed=seed, progress=False)
    return hist[-1]["test_acc_goodness"], hist[-1]["test_acc_softmax"], time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", nargs="+", default=["ecram"], help="profile names in devices/")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--test-samples", type=int, default=10000)
    p.add_argument("--dims", default="784,500,500")
    p.add_argument("--update", default="auto", help="analog update rule (auto: onarray on a transfer compound, else adam)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the rule's, analogff.ff.ANALOG_LR)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    for dev in args.devices:  # a bad profile: one line naming it, before any work
        try:
            load_device(ROOT / "devices" / f"{dev}.toml")
        except ValueError as exc:  # DeviceProfileError is a ValueError
            p.error(str(exc))
    torch.set_num_threads(args.threads)
    data = load_mnist_data()
    (x, y), (xt, yt) = data["train"], data["test"]
    data = {"train": (x[:args.train_samples], y[:args.train_samples]),
            "test": (xt[:args.test_samples], yt[:args.test_samples])}
    dims = [int(v) for v in args.dims.split(",")]
    from analogff.ff import ANALOG_LR, resolve_analog_update
    from analogff.engine.cells.transfer import algorithm_of

    rules = {dev: resolve_analog_update(args.update, algorithm_of(load_device(ROOT / "devices" / f"{dev}.toml")
                                                                  .rpu_config().device)) for dev in args.devices}

    print(f"# Engine agreement: analog FF {dims}, {args.update} update ({', '.join(f'{d}: {r}' for d, r in rules.items())}), "
          f"lr {args.lr or 'the rule default'}, {args.epochs} epoch(s) on "
          f"{args.train_samples} MNIST training images, {args.test_samples} test images, seeds {args.seeds}\n")
    print("| profile | seed | aihwkit acc (goodness / softmax) | torch acc (goodness / softmax) | "
          "aihwkit s | torch s |")
    print("|---|---:|---:|---:|---:|---:|")
    summary = []
    for dev in args.devices:
        rule = rules[dev]
        cfg = FFConfig(analog_update=rule, lr=args.lr if args.lr is not None else ANALOG_LR[rule], cooldown=0.0)
        diffs = []
        for seed in args.seeds:
            ga, sa, ta = run(dev, "aihwkit", seed, data, dims, cfg, args.epochs)
            gt, st, tt = run(dev, "torch", seed, data, dims, cfg, args.epochs)
            diffs.append(100 * (gt - ga))
            print(f"| {dev} | {seed} | {100 * ga:.2f} % / {100 * sa:.2f} % | {100 * gt:.2f} % / {100 * st:.2f} % | "
                  f"{ta:.0f} | {tt:.0f} |", flush=True)
        mean = statistics.fmean(diffs)
        sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        summary.append((dev, mean, sem, len(diffs)))
    print("\n| profile | seeds | torch - aihwkit, goodness accuracy (mean +- s.e.) | within 1 pp |")
    print("|---|---:|---:|---|")
    for dev, mean, sem, n in summary:
        print(f"| {dev} | {n} | {mean:+.2f} +- {sem:.2f} pp | {'yes' if abs(mean) < 1 else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
