"""Unsupervised Forward-Forward (hybrid negatives, linear softmax head) on the real MNIST.

    python benchmarks/ff_unsupervised.py --hidden 1000 1000 1000 1000 --epochs 10
    python benchmarks/ff_unsupervised.py --arch hinton_local --epochs 10
    python benchmarks/ff_unsupervised.py --hidden 500 500 500 --device devices/ecram.toml --epochs 2 --train-limit 10000

Trains :class:`analogff.unsupervised.UnsupervisedFFNet` with :func:`analogff.train.train_ff` on
MNIST (``analogff.train.load_mnist_data``; the full test set unless --test-limit) and prints, per
epoch: the head's test error, the training energy per sample so far and the inference energy per
test sample of that epoch's evaluation (``analogff.energy.EnergyModel``: the device profile's model
for analog layers, the default digital model otherwise, as ``analogff.experiment`` prices runs), the
layer losses and the wall time. ``--save FILE`` appends the same lines to FILE.

Hinton (arXiv 2212.13345) reports 1.37 % with 4 x 2000 ReLUs after 100 epochs (softmax on layers
2-4) and 1.16 % with local receptive fields after 60 epochs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from analogff.energy import EnergyModel, OpCounts, total_counts  # noqa: E402
from analogff.ff import FFConfig  # noqa: E402
from analogff.locally_connected import LOCAL_ARCHITECTURES  # noqa: E402
from analogff.train import load_mnist_data, train_ff  # noqa: E402
from analogff.unsupervised import UnsupervisedFFNet  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ff_unsupervised.py", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--hidden", type=int, nargs="+", help="fully connected hidden sizes (default 1000 1000 1000 1000)")
    g.add_argument("--arch", choices=sorted(LOCAL_ARCHITECTURES), help="a locally connected architecture")
    p.add_argument("--device", help="device profile TOML: analog layers (default: digital)")
    p.add_argument("--analog-update", default="auto", help="AnalogLayer update rule (FFConfig.analog_update)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-limit", type=int, help="train on the first N images")
    p.add_argument("--test-limit", type=int, help="test on the first N images (default: all 10,000)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, help="FF layer learning rate (default: FFConfig's, analog: 1e-3)")
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=("symba", "hinton"), default="symba")
    p.add_argument("--alpha", type=float, default=None, help="SymBa scale (default FFConfig's)")
    p.add_argument("--theta", type=float, default=None, help="Hinton threshold (default FFConfig's)")
    p.add_argument("--goodness", choices=("sum", "mean"), default="sum")
    p.add_argument("--head-from", type=int, default=1, help="head reads layers >= this (0-based)")
    p.add_argument("--blurs", type=int, default=6, help="blurring passes of the masks")
    p.add_argument("--cooldown", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", help="also append the output to this file")
    return p.parse_args(argv)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out = open(args.save, "a") if args.save else None

    def say(line: str) -> None:
        print(line, flush=True)
        if out is not None:
            out.write(line + "\n")
            out.flush()

    layer = "analog" if args.device else "digital"
    extra = {k: v for k, v in (("alpha", args.alpha), ("theta", args.theta)) if v is not None}
    lr = args.lr if args.lr is not None else 1e-3
    cfg = FFConfig(loss=args.loss, goodness=args.goodness, lr=lr, head_lr=args.head_lr, cooldown=args.cooldown,
                   analog_update=args.analog_update, seed=args.seed, **extra)
    if args.arch:
        net = UnsupervisedFFNet.from_architecture(args.arch, layer, device=args.device, config=cfg,
                                                  head_from=args.head_from, blurs=args.blurs)
    else:
        hidden = args.hidden or [1000, 1000, 1000, 1000]
        net = UnsupervisedFFNet([784, *hidden], layer, device=args.device, config=cfg, head_from=args.head_from,
                                blurs=args.blurs)
    data = load_mnist_data()
    if args.train_limit:
        data["train"] = tuple(t[:args.train_limit] for t in data["train"])
    if args.test_limit:
        data["test"] = tuple(t[:args.test_limit] for t in data["test"])
    n_train, n_test = len(data["train"][1]), len(data["test"][1])
    if args.device:
        from analogff.devices import load_device

        model = EnergyModel.from_profile(load_device(args.device))
    else:
        model = EnergyModel()
    say(f"# ff_unsupervised.py {' '.join(sys.argv[1:] if argv is None else argv)}  (commit {commit()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch threads {args.threads}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    say(f"# net: {net.architecture} dims {net.dims} layer {layer}{' ' + args.device if args.device else ''} "
        f"head on layers >= {net.head_from}; train {n_train}, test {n_test}; config loss={cfg.loss} "
        f"alpha={cfg.alpha} theta={cfg.theta} goodness={cfg.goodness} lr={cfg.lr} head_lr={cfg.head_lr} "
        f"batch {args.batch_size} blurs {args.blurs} cooldown {cfg.cooldown} seed {cfg.seed}")
    say(f"{'epoch':>5} {'test err %':>10} {'train J/sample':>15} {'infer J/sample':>15} {'wall s':>8}  "
        "losses (sum of layers, head)")
    t0 = time.perf_counter()
    state = {"eval": OpCounts()}

    def on_epoch(m: dict) -> None:
        samples = n_train * m["epoch"]
        train_J = model.energy(total_counts(net)).per_sample(samples).total_J
        ev = net.eval_counters.copy()
        delta = OpCounts(**{k: v - state["eval"].as_dict()[k] for k, v in ev.as_dict().items()})
        state["eval"] = ev
        infer_J = model.energy(delta).per_sample(n_test).total_J
        err = 100 * (1 - m["test_acc_softmax"])
        say(f"{m['epoch']:5d} {err:10.2f} {train_J:15.3e} {infer_J:15.3e} {time.perf_counter() - t0:8.1f}  "
            f"loss {m['train_loss']:.4f} head {m['head_loss']:.4f}")

    history = train_ff(net, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       on_epoch=on_epoch, progress=False)
    best = min(100 * (1 - h["test_acc_softmax"]) for h in history)
    say(f"# final test error {100 * (1 - history[-1]['test_acc_softmax']):.2f} % (best {best:.2f} %) after "
        f"{args.epochs} epochs, {time.perf_counter() - t0:.0f} s")
    if out is not None:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
