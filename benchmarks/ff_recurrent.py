"""Hinton's recurrent top-down FF net (analogff.recurrent) on real MNIST, digital or on crossbars.

    python benchmarks/ff_recurrent.py --hidden 500 500 --epochs 4                    # digital
    python benchmarks/ff_recurrent.py --hidden 200 200 --epochs 1 --train-limit 10000 \\
        --device devices/ecram.toml                                                  # analog

Trains with :func:`analogff.train.train_ff` on the MNIST training set (its first ``--train-limit``
images), evaluates on the 10,000-image test set (or its first ``--test-limit``) after every epoch (10 label trials x 5
iterations per image), and prints per epoch: test error, training energy per training sample so
far, evaluation energy per test image (``analogff.energy.EnergyModel``: ``from_profile`` for the
crossbars, the default digital model otherwise, as the main job prices them) and the wall time.
The paper's figure for comparison: 1.31 % test error after 60 epochs, 784-2000-2000(-2000)-10.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from analogff.energy import EnergyModel  # noqa: E402
from analogff.ff import FFConfig  # noqa: E402
from analogff.recurrent import RecurrentFFNet  # noqa: E402
from analogff.train import load_mnist_data, train_ff  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ff_recurrent.py", description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[500, 500], help="hidden layer sizes")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="test on the first N test images (default: all 10,000)")
    p.add_argument("--device", default=None, help="device profile TOML (analog layers); none: digital")
    p.add_argument("--analog-update", default="auto", help="FFConfig.analog_update")
    p.add_argument("--lr", type=float, default=None, help="FF learning rate (default: FFConfig's, 1e-3)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--negatives", choices=("hard", "random"), default="hard")
    p.add_argument("--cooldown", type=float, default=0.5, help="FFConfig.cooldown (last fraction: lr decays)")
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--train-iterations", type=int, nargs="+", default=None, help="default: all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the printed lines to this file")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs {args.epochs}; choose >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    data = load_mnist_data()
    if args.train_limit is not None:
        x, y = data["train"]
        data["train"] = (x[:args.train_limit], y[:args.train_limit])
    if args.test_limit is not None:
        x, y = data["test"]
        data["test"] = (x[:args.test_limit], y[:args.test_limit])
    n_train, n_test = len(data["train"][1]), len(data["test"][1])
    cfg_kw = {"negatives": args.negatives, "cooldown": args.cooldown, "seed": args.seed,
              "analog_update": args.analog_update}
    if args.lr is not None:
        cfg_kw["lr"] = args.lr
    cfg = FFConfig(**cfg_kw)
    dims = [784, *args.hidden, cfg.num_classes]
    layer = "digital" if args.device is None else "analog"
    profile = None
    if args.device is not None:
        from analogff.devices import load_device

        profile = load_device(args.device)
    net = RecurrentFFNet(dims, layer=layer, device=profile, config=cfg, iterations=args.iterations,
                         train_iterations=args.train_iterations)
    model = EnergyModel.from_profile(profile) if profile is not None else EnergyModel()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    say(f"# benchmarks/ff_recurrent.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    say(f"# commit {commit}  torch {torch.__version__}  {platform.processor() or platform.machine()}  "
        f"threads {torch.get_num_threads()}")
    say(f"# RecurrentFFNet dims={dims} layer={layer} device={getattr(profile, 'name', None)} "
        f"iterations={net.iterations} damping={net.damping} train_iterations={net.train_iterations} "
        f"readout={net.readout_iterations} predict_iterations={net.predict_iterations}")
    say(f"# FFConfig loss={cfg.loss} alpha={cfg.alpha} goodness={cfg.goodness} lr={cfg.lr} "
        f"optimizer={cfg.optimizer} analog_update={getattr(net.up[0], 'update', None) or cfg.optimizer} "
        f"negatives={cfg.negatives} cooldown={cfg.cooldown} batch={args.batch_size} train images={n_train} test images={n_test}")
    say("epoch  test_err_%  train_J/sample  eval_J/test_image  backward_adc  epoch_s  wall_s")
    t0 = time.perf_counter()
    done = {"eval": 0}

    def on_epoch(m: dict) -> None:
        e = m["epoch"]
        train = model.energy(net.total_counts()).per_sample(n_train * e).total_J
        done["eval"] += m["eval_samples"]
        ev = model.energy(net.eval_counters).per_sample(max(1, done["eval"])).total_J
        err = 100 * (1 - m["test_acc_goodness"])
        bwd = net.total_counts().backward_adc_conversions + net.eval_counters.backward_adc_conversions
        say(f"{e:5d}  {err:9.2f}  {train:14.3e}  {ev:17.3e}  {bwd:12d}  {m['train_time_s'] + m['eval_time_s']:7.1f}"
            f"  {time.perf_counter() - t0:6.1f}")

    train_ff(net, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, on_epoch=on_epoch,
             progress=False)
    c = net.total_counts().scaled(1.0 / (n_train * args.epochs))
    say("# training counts per sample: " + ", ".join(f"{k}={v:.4g}" for k, v in c.as_dict().items() if v))
    parts = model.energy(net.total_counts()).per_sample(n_train * args.epochs).breakdown_J
    say("# training energy per sample by part, J: " + ", ".join(
        f"{k}={v:.3g}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
